// posixfd acquire+release through the framework vs the same work done with
// raw OFD calls, in one run. Prints both medians and their ratio.
//
//   bazel run -c opt //backends/posixfd:posixfd_benchmark
//
// The raw baseline does by hand what an exclusive posixfd grant must do at
// the least: open the lock file, take an OFD write lock, read the fencing
// token, write the new token and the holder record, close (which releases).
// The framework path adds the plugin ABI crossing, input validation, the
// owner table and the record encoding.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "core/backend.h"
#include "core/config.h"
#include "core/plugin_loader.h"
#include "tools/cpp/runfiles/runfiles.h"

namespace latchkey {
namespace {

std::string g_dir;
std::unique_ptr<Backend> g_backend;

void BM_RawOfd(benchmark::State& state) {
  const std::string path = g_dir + "/raw.lock";
  unsigned char token_and_record[8 + 536] = {};
  uint64_t token = 0;
  for (auto _ : state) {
    const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    struct flock fl = {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = off_t{0x4C4B} << 32;
    fl.l_len = 3;
    if (fd < 0 || fcntl(fd, F_OFD_SETLK, &fl) != 0) state.SkipWithError("raw lock failed");
    unsigned char header[32];
    if (pread(fd, header, sizeof header, 0) < 0) state.SkipWithError("pread failed");
    ++token;
    memcpy(token_and_record, &token, 8);
    if (pwrite(fd, token_and_record + 8, 536, 8) != 536) state.SkipWithError("pwrite failed");
    close(fd);
  }
}

void Cycle(benchmark::State& state, LockMode mode) {
  const Owner owner = OwnerForThisProcess(RandomUuid(), "bench-vm");
  const Resource res = *Resource::Lease("bench", "res");
  for (auto _ : state) {
    absl::StatusOr<Grant> g = g_backend->Acquire(owner, res, mode, {});
    if (!g.ok()) {
      state.SkipWithError(std::string(g.status().message()).c_str());
      break;
    }
    if (!g_backend->Release(owner, res).ok()) state.SkipWithError("release failed");
  }
}

void BM_FrameworkExclusive(benchmark::State& state) { Cycle(state, LockMode::kExclusive); }
void BM_FrameworkSharedRead(benchmark::State& state) { Cycle(state, LockMode::kSharedRead); }

BENCHMARK(BM_RawOfd)->Repetitions(15)->ReportAggregatesOnly(true);
BENCHMARK(BM_FrameworkExclusive)->Repetitions(15)->ReportAggregatesOnly(true);
BENCHMARK(BM_FrameworkSharedRead)->Repetitions(15)->ReportAggregatesOnly(true);

// Prints as usual and keeps each benchmark's median time per iteration.
class MedianReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      if (r.aggregate_name == "median") medians[r.run_name.function_name] = r.GetAdjustedRealTime();
    }
  }
  std::map<std::string, double> medians;  // in the reporter's time unit (ns)
};

}  // namespace
}  // namespace latchkey

int main(int argc, char** argv) {
  using namespace latchkey;
  std::string error;
  std::unique_ptr<bazel::tools::cpp::runfiles::Runfiles> rf(
      bazel::tools::cpp::runfiles::Runfiles::Create(argv[0], &error));
  if (rf == nullptr) {
    fprintf(stderr, "posixfd_benchmark: %s\n", error.c_str());
    return 1;
  }
  const std::string plugin = rf->Rlocation("latchkey/backends/posixfd/latchkey-posixfd.so");
  char tmpl[] = "/tmp/latchkey-bench-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return 1;
  g_dir = tmpl;
  Config settings;
  settings.Set(ConfigEntry{"lock_dir", ConfigValue::String(g_dir + "/locks"), "<bench>", 1});
  absl::StatusOr<std::unique_ptr<Backend>> b =
      LoadBackend({plugin.substr(0, plugin.rfind('/'))}, "posixfd", settings);
  if (!b.ok()) {
    fprintf(stderr, "posixfd_benchmark: %s\n", std::string(b.status().message()).c_str());
    return 1;
  }
  g_backend = *std::move(b);

  benchmark::Initialize(&argc, argv);
  MedianReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  g_backend.reset();
  if (system(absl::StrCat("rm -rf '", g_dir, "'").c_str()) != 0) {
    fprintf(stderr, "posixfd_benchmark: could not remove %s\n", g_dir.c_str());
  }

  const double raw = reporter.medians["BM_RawOfd"];
  const double ex = reporter.medians["BM_FrameworkExclusive"];
  const double sr = reporter.medians["BM_FrameworkSharedRead"];
  if (raw <= 0 || ex <= 0) {
    fprintf(stderr, "posixfd_benchmark: missing results (filtered out?)\n");
    return 1;
  }
  printf("\nmedian acquire+release: raw OFD %.2f us, framework exclusive %.2f us, "
         "framework shared-read %.2f us\n",
         raw / 1000, ex / 1000, sr / 1000);
  printf("framework/raw (exclusive) = %.3f (target <= 1.10)\n", ex / raw);
  return 0;
}
