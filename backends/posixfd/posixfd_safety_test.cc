// Safety of the posixfd protocol under concurrency, with a witness: several
// processes, each with several owner threads, acquire and convert one
// resource in random modes while every holder records itself in shared
// memory. No two owners may ever hold conflicting modes, exclusive fencing
// tokens must strictly grow, and waiters must sleep, not spin.
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/backend.h"
#include "core/plugin_loader.h"
#include "gtest/gtest.h"
#include "tools/cpp/runfiles/runfiles.h"

namespace latchkey {
namespace {

using ::bazel::tools::cpp::runfiles::Runfiles;

// Lives in MAP_SHARED memory, seen by every process.
struct Witness {
  std::atomic<int> holders[4];  // by LockMode number
  std::atomic<int> violations;
  std::atomic<uint64_t> last_exclusive_token;
  std::atomic<int> token_regressions;
  std::atomic<int> grants[4];
  std::atomic<int> conversions;
};

std::string PluginDir() {
  std::string error;
  std::unique_ptr<Runfiles> rf(Runfiles::CreateForTest(&error));
  const std::string so = rf->Rlocation("latchkey/backends/posixfd/latchkey-posixfd.so");
  return so.substr(0, so.rfind('/'));
}

std::unique_ptr<Backend> Open(const std::string& lock_dir) {
  Config c;
  c.Set(ConfigEntry{"lock_dir", ConfigValue::String(lock_dir), "<test>", 1});
  absl::StatusOr<std::unique_ptr<Backend>> b = LoadBackend({PluginDir()}, "posixfd", c);
  if (!b.ok()) {
    fprintf(stderr, "load: %s\n", std::string(b.status().message()).c_str());
    return nullptr;
  }
  return *std::move(b);
}

// Checks the matrix against everyone else currently holding, then enters.
void Enter(Witness* w, LockMode m) {
  const int sr = w->holders[1].load(), sw = w->holders[2].load(), ex = w->holders[3].load();
  bool ok = ex == 0;
  if (m == LockMode::kSharedRead) ok = ok && sw == 0;
  if (m == LockMode::kSharedWrite) ok = ok && sr == 0;
  if (m == LockMode::kExclusive) ok = ok && sr == 0 && sw == 0;
  if (!ok) w->violations++;
  w->holders[static_cast<int>(m)]++;
}
void Leave(Witness* w, LockMode m) { w->holders[static_cast<int>(m)]--; }

void Worker(Witness* w, Backend* b, int seed, int rounds) {
  std::mt19937 rng(seed);
  const Owner me = OwnerForThisProcess(RandomUuid(), absl::StrCat("owner-", seed));
  const Resource res = *Resource::Lease("safety", "contended");
  const LockMode modes[] = {LockMode::kSharedRead, LockMode::kSharedWrite, LockMode::kExclusive};
  for (int i = 0; i < rounds; ++i) {
    LockMode m = modes[rng() % 3];
    AcquireOptions opts{(rng() % 2) == 0, absl::Milliseconds(rng() % 20), std::nullopt};
    absl::StatusOr<Grant> g = b->Acquire(me, res, m, opts);
    if (!g.ok()) continue;
    // Witness entry happens after the grant; a conflicting holder still
    // inside would be caught here.
    Enter(w, m);
    w->grants[static_cast<int>(m)]++;
    if (m == LockMode::kExclusive) {
      uint64_t last = w->last_exclusive_token.load();
      if (g->fencing_token <= last) w->token_regressions++;
      w->last_exclusive_token = std::max(last, g->fencing_token);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 300));
    if (rng() % 3 == 0) {
      const LockMode to = modes[rng() % 3];
      // Leave first, re-enter after: during the conversion the lock is
      // never weaker than one of the two modes, and the witness checks the
      // new one on entry.
      Leave(w, m);
      absl::StatusOr<Grant> c = b->Convert(me, res, to, {});
      if (c.ok()) {
        Enter(w, to);
        w->conversions++;
        m = to;
      } else {
        Enter(w, m);
      }
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 200));
    }
    Leave(w, m);
    if (!b->Release(me, res).ok()) w->violations++;
  }
}

TEST(PosixFdSafetyTest, NoConflictingHoldersUnderContention) {
  auto* w = static_cast<Witness*>(mmap(nullptr, sizeof(Witness), PROT_READ | PROT_WRITE,
                                       MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(w, MAP_FAILED);
  new (w) Witness{};
  const std::string dir = absl::StrCat(getenv("TEST_TMPDIR"), "/safety");
  constexpr int kProcesses = 3, kThreads = 3, kRounds = 150;
  std::vector<pid_t> children;
  for (int p = 0; p < kProcesses; ++p) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      // Each process loads its own backend; each thread is its own owner.
      std::unique_ptr<Backend> b = Open(dir);
      if (b == nullptr) _exit(2);
      std::vector<std::thread> threads;
      for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back(Worker, w, b.get(), 1000 + p * 10 + t, kRounds);
      }
      for (auto& t : threads) t.join();
      _exit(0);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  }
  EXPECT_EQ(w->violations.load(), 0);
  EXPECT_EQ(w->token_regressions.load(), 0);
  // The run exercised every mode and conversions, not just refusals.
  EXPECT_GT(w->grants[1].load(), 20);
  EXPECT_GT(w->grants[2].load(), 20);
  EXPECT_GT(w->grants[3].load(), 20);
  EXPECT_GT(w->conversions.load(), 10);
  printf("grants: shared-read %d, shared-write %d, exclusive %d; conversions %d\n",
         w->grants[1].load(), w->grants[2].load(), w->grants[3].load(), w->conversions.load());
}

double CpuSeconds() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

TEST(PosixFdSafetyTest, WaitersSleepInsteadOfSpinning) {
  const std::string dir = absl::StrCat(getenv("TEST_TMPDIR"), "/sleep");
  std::unique_ptr<Backend> b = Open(dir);
  ASSERT_NE(b, nullptr);
  const Resource res = *Resource::Lease("safety", "sleepy");
  const Owner holder = OwnerForThisProcess(RandomUuid(), "holder");
  const Owner waiter = OwnerForThisProcess(RandomUuid(), "waiter");
  ASSERT_TRUE(b->Acquire(holder, res, LockMode::kExclusive, {}).ok());
  const double cpu0 = CpuSeconds();
  absl::StatusOr<Grant> g =
      b->Acquire(waiter, res, LockMode::kExclusive, {true, absl::Seconds(1), std::nullopt});
  const double cpu = CpuSeconds() - cpu0;
  EXPECT_EQ(g.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(cpu, 0.2) << "a 1 s wait used " << cpu << " s of CPU";
  EXPECT_TRUE(b->Release(holder, res).ok());
}

TEST(PosixFdSafetyTest, CrashBeforeFirstHeaderLeavesAUsableFile) {
  const std::string dir = absl::StrCat(getenv("TEST_TMPDIR"), "/crash");
  std::unique_ptr<Backend> b = Open(dir);
  ASSERT_NE(b, nullptr);
  // As if a first grant died after writing the path, before the header.
  {
    std::ofstream f(dir + "/safety:fresh", std::ios::binary);
    f << std::string(1024, '\0') << "/some/path";
  }
  const Owner o = OwnerForThisProcess(RandomUuid(), "vm");
  const Resource res = *Resource::Lease("safety", "fresh");
  absl::StatusOr<Grant> g = b->Acquire(o, res, LockMode::kExclusive, {});
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->fencing_token, 1u);
  EXPECT_TRUE(b->Release(o, res).ok());
  // A file that is not ours is refused, not overwritten.
  std::ofstream(dir + "/safety:foreign", std::ios::binary) << "not a lock file at all........";
  g = b->Acquire(o, *Resource::Lease("safety", "foreign"), LockMode::kExclusive, {});
  EXPECT_EQ(g.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(std::string(g.status().message()).find("bad magic"), std::string::npos);
}

}  // namespace
}  // namespace latchkey
