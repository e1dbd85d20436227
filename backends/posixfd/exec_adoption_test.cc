// Exec adoption: locks survive PrepareExec + execve() with no window.
//
// Three processes, all this binary:
//   - the holder (--hold) plays latchd before a restart: it takes locks in
//     every mode, through a lock_target = "lockdir" and an "image" backend,
//     writes their records, calls PrepareExec and execs itself as
//   - the adopter (--adopt), the restarted latchd: it loads the plugin
//     afresh, waits a while (a window a contender would use, were there
//     one), adopts all records but two, checks the fencing tokens did not
//     move, is refused the two others when its records for them do not
//     match the inherited locks, calls FinishAdoption and checks those two
//     are free;
//   - the contender (--contend) hammers non-waiting conflicting acquires on
//     every adopted resource from before the exec until the adoption is
//     done, and must never be granted one.
// The negative control runs the same without PrepareExec: then the
// contender does get in, so the test can fail.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "core/backend.h"
#include "core/config.h"
#include "core/plugin_loader.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/cpp/runfiles/runfiles.h"

namespace latchkey {
namespace {

constexpr int64_t kLockBase = int64_t{0x4C4B} << 32;  // lock_file.h
constexpr int64_t kLockEnd = kLockBase + 16 + 128;

// How long the adopter waits after the exec before adopting: a window the
// contender would find, were the locks not carried across.
constexpr absl::Duration kAdoptDelay = absl::Milliseconds(300);

// ---------------------------------------------------------------- the plan

// One lock the holder takes. `backend` 0 is lock_target = "lockdir", 1 is
// "image". `convert_to`, when set, is converted to after the acquire (so an
// adopted lock may come from a conversion). `adopt` false: the adopter
// leaves it, so FinishAdoption must release it.
struct Planned {
  int backend;
  const char* owner_name;
  const char* kind;  // "lease" or "disk"
  const char* name;  // lease key or image file name in the work directory
  LockMode mode;
  std::optional<LockMode> convert_to;
  bool adopt;
};

const std::vector<Planned>& Plan() {
  static const auto* plan = new std::vector<Planned>{
      {0, "vm-ex", "lease", "ex1", LockMode::kExclusive, std::nullopt, true},
      {0, "vm-reader1", "lease", "sh1", LockMode::kSharedRead, std::nullopt, true},
      {0, "vm-reader2", "lease", "sh1", LockMode::kSharedRead, std::nullopt, true},
      {0, "vm-writer", "lease", "sw1", LockMode::kExclusive, LockMode::kSharedWrite, true},
      {0, "vm-disk", "disk", "lockdir.img", LockMode::kExclusive, std::nullopt, true},
      {0, "vm-left", "lease", "left1", LockMode::kExclusive, std::nullopt, false},
      {1, "vm-img-ex", "disk", "a.img", LockMode::kExclusive, std::nullopt, true},
      {1, "vm-img-r1", "disk", "b.img", LockMode::kSharedWrite, LockMode::kSharedRead, true},
      {1, "vm-img-r2", "disk", "b.img", LockMode::kSharedRead, std::nullopt, true},
      {1, "vm-img-w", "disk", "c.img", LockMode::kSharedWrite, std::nullopt, true},
      {1, "vm-img-left", "disk", "d.img", LockMode::kSharedWrite, std::nullopt, false},
  };
  return *plan;
}

// A record as the holder hands it to the adopter and the contender, one
// line each in WORK/records: "index uuid token backend_token".
struct Handed {
  std::string uuid;
  uint64_t token = 0;
  std::string backend_token;
};

std::string Say(const std::string& line) {
  const std::string out = line + "\n";
  if (write(1, out.data(), out.size()) < 0) _exit(3);
  return line;
}

[[noreturn]] void Die(const std::string& what) {
  Say("fatal " + what);
  _exit(1);
}

std::vector<std::unique_ptr<Backend>> OpenBackends(const std::string& plugin_dir,
                                                   const std::string& work) {
  std::vector<std::unique_ptr<Backend>> out;
  for (const char* target : {"lockdir", "image"}) {
    Config c;
    c.Set(ConfigEntry{"lock_dir", ConfigValue::String(absl::StrCat(work, "/locks-", target)),
                      "<test>", 1});
    c.Set(ConfigEntry{"lock_target", ConfigValue::String(target), "<test>", 2});
    absl::StatusOr<std::unique_ptr<Backend>> b = LoadBackend({plugin_dir}, "posixfd", c);
    if (!b.ok()) Die(absl::StrCat("load: ", b.status().ToString()));
    out.push_back(*std::move(b));
  }
  return out;
}

Resource ResourceOf(const Planned& p, const std::string& work) {
  absl::StatusOr<Resource> r = std::string(p.kind) == "disk"
                                   ? Resource::Disk(absl::StrCat(work, "/", p.name), "exec")
                                   : Resource::Lease("exec", p.name);
  if (!r.ok()) Die(r.status().ToString());
  return *r;
}

LockMode FinalMode(const Planned& p) { return p.convert_to.value_or(p.mode); }

std::vector<Handed> ReadHanded(const std::string& work) {
  std::vector<Handed> out(Plan().size());
  std::ifstream in(work + "/records");
  size_t i;
  Handed h;
  while (in >> i >> h.uuid >> h.token) {
    std::getline(in, h.backend_token);
    if (!h.backend_token.empty()) h.backend_token.erase(0, 1);  // the separating space
    if (i < out.size()) out[i] = h;
  }
  return out;
}

std::string ReadLine(int fd) {
  std::string line;
  char c;
  while (read(fd, &c, 1) == 1 && c != '\n') line.push_back(c);
  return line;
}

// Protocol-lock descriptors of this process: (fd, FD_CLOEXEC set).
std::vector<std::pair<int, bool>> ProtocolLockFds() {
  std::vector<std::pair<int, bool>> out;
  for (int fd = 0; fd < 1024; ++fd) {
    const int flags = fcntl(fd, F_GETFD);
    if (flags < 0) continue;
    std::ifstream info(absl::StrCat("/proc/self/fdinfo/", fd));
    std::string line;
    bool holds = false;
    while (std::getline(info, line)) {
      if (!absl::StartsWith(line, "lock:") || !absl::StrContains(line, "OFDLCK")) continue;
      std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
      int64_t start;
      if (f.size() >= 2 && absl::SimpleAtoi(f[f.size() - 2], &start) && start >= kLockBase &&
          start < kLockEnd) {
        holds = true;
      }
    }
    if (holds) out.emplace_back(fd, (flags & FD_CLOEXEC) != 0);
  }
  return out;
}

// ----------------------------------------------------------- the processes

// latchd before its restart.
int HoldMain(const std::string& plugin_dir, const std::string& work, bool prepare) {
  std::vector<std::unique_ptr<Backend>> backends = OpenBackends(plugin_dir, work);
  std::ofstream records(work + "/records");
  for (size_t i = 0; i < Plan().size(); ++i) {
    const Planned& p = Plan()[i];
    const Owner owner = OwnerForThisProcess(RandomUuid(), p.owner_name);
    const Resource r = ResourceOf(p, work);
    absl::StatusOr<Grant> g = backends[p.backend]->Acquire(owner, r, p.mode, {});
    if (g.ok() && p.convert_to.has_value()) {
      g = backends[p.backend]->Convert(owner, r, *p.convert_to, {});
    }
    if (!g.ok()) Die(absl::StrCat("acquire ", i, ": ", g.status().ToString()));
    records << i << " " << owner.uuid << " " << g->fencing_token << " " << g->backend_token << "\n";
  }
  records.close();
  Say("held");
  if (ReadLine(0) != "exec") Die("no exec order");
  if (prepare) {
    for (int round = 0; round < 2; ++round) {  // Twice: it is idempotent.
      if (absl::Status s = backends[0]->PrepareExec(); !s.ok()) Die(s.ToString());
      if (absl::Status s = backends[1]->PrepareExec(); !s.ok()) Die(s.ToString());
    }
    // Backends opened now, in the same program image, must not mistake the
    // prepared descriptors for inherited ones: finishing their adoption
    // and closing them releases nothing.
    for (std::unique_ptr<Backend>& b : OpenBackends(plugin_dir, work)) b->FinishAdoption();
  }
  // The backends are not closed: execve() ends this program image as is.
  const char* argv[] = {"exec_adoption_test", "--adopt", plugin_dir.c_str(), work.c_str(), nullptr};
  execv("/proc/self/exe", const_cast<char**>(argv));
  Die(absl::StrCat("execv: ", strerror(errno)));
}

// latchd after its restart.
int AdoptMain(const std::string& plugin_dir, const std::string& work) {
  std::vector<std::unique_ptr<Backend>> backends = OpenBackends(plugin_dir, work);
  const std::vector<Handed> handed = ReadHanded(work);
  absl::SleepFor(kAdoptDelay);
  std::vector<bool> adopted(Plan().size(), false);
  for (size_t i = 0; i < Plan().size(); ++i) {
    const Planned& p = Plan()[i];
    if (!p.adopt) {
      // A record that does not match the inherited lock (a stale token, or
      // another mode) is refused, and the lock left to FinishAdoption.
      const bool by_token = p.mode == LockMode::kExclusive;
      const LockRecord wrong{OwnerForThisProcess(handed[i].uuid, p.owner_name), ResourceOf(p, work),
                             by_token ? p.mode : LockMode::kSharedRead,
                             handed[i].token + (by_token ? 1 : 0), handed[i].backend_token};
      absl::StatusOr<Grant> g = backends[p.backend]->Adopt(wrong);
      Say(absl::StrCat("mismatch ", i, " ", g.ok() ? "adopted" : g.status().ToString()));
      continue;
    }
    const LockRecord rec{OwnerForThisProcess(handed[i].uuid, p.owner_name), ResourceOf(p, work),
                         FinalMode(p), handed[i].token, handed[i].backend_token};
    absl::StatusOr<Grant> g = backends[p.backend]->Adopt(rec);
    if (!g.ok()) {
      Say(absl::StrCat("adopt ", i, " error ", g.status().ToString()));
      continue;
    }
    adopted[i] = true;
    Say(absl::StrCat("adopt ", i, " ok ", g->fencing_token, " ", LockModeName(g->mode)));
    // What the backend reports agrees: same holder, mode and token.
    absl::StatusOr<std::vector<HolderInfo>> holders = backends[p.backend]->Inquire(rec.resource);
    bool seen = false;
    for (const HolderInfo& h : holders.value_or(std::vector<HolderInfo>{})) {
      seen = seen || (h.owner.uuid == rec.owner.uuid && h.mode == rec.mode &&
                      h.fencing_token == rec.fencing_token);
    }
    Say(absl::StrCat("inquire ", i, seen ? " ok" : " missing"));
  }
  backends[0]->FinishAdoption();
  backends[1]->FinishAdoption();
  // What nobody adopted is free now.
  for (size_t i = 0; i < Plan().size(); ++i) {
    const Planned& p = Plan()[i];
    if (p.adopt) continue;
    const Owner taker = OwnerForThisProcess(RandomUuid(), "vm-taker");
    const Resource r = ResourceOf(p, work);
    absl::StatusOr<Grant> g = backends[p.backend]->Acquire(taker, r, LockMode::kExclusive, {});
    Say(absl::StrCat("free ", i, g.ok() ? " ok" : " " + g.status().ToString()));
    if (g.ok()) backends[p.backend]->Release(taker, r).IgnoreError();
  }
  // Only adopted locks' descriptors are left, and none leaks into children.
  int kept = 0, inheritable = 0;
  for (const auto& [fd, cloexec] : ProtocolLockFds()) {
    ++kept;
    if (!cloexec) ++inheritable;
  }
  Say(absl::StrCat("descriptors ", kept, " inheritable ", inheritable));
  // Each of two shared holders of one resource got its own lock: releasing
  // one leaves exactly the other.
  for (size_t i : {1, 7}) {
    const Planned& p = Plan()[i];
    const Resource r = ResourceOf(p, work);
    if (!adopted[i] || !adopted[i + 1]) continue;
    absl::Status s =
        backends[p.backend]->Release(OwnerForThisProcess(handed[i].uuid, p.owner_name), r);
    adopted[i] = !s.ok();
    absl::StatusOr<std::vector<HolderInfo>> holders = backends[p.backend]->Inquire(r);
    const bool only_other = s.ok() && holders.ok() && holders->size() == 1 &&
                            (*holders)[0].owner.uuid == handed[i + 1].uuid &&
                            (*holders)[0].fencing_token == handed[i + 1].token;
    Say(absl::StrCat("partial release ", i, only_other ? " ok" : " wrong"));
  }
  // An adopted lock works like any other: convert it and back.
  if (adopted[0]) {
    const Planned& p = Plan()[0];
    const Owner o = OwnerForThisProcess(handed[0].uuid, p.owner_name);
    absl::StatusOr<Grant> down =
        backends[p.backend]->Convert(o, ResourceOf(p, work), LockMode::kSharedWrite, {});
    absl::StatusOr<Grant> up =
        down.ok() ? backends[p.backend]->Convert(o, ResourceOf(p, work), LockMode::kExclusive, {})
                  : down;
    Say(absl::StrCat("convert ", up.ok() ? "ok" : up.status().ToString()));
  }
  Say("adopted");
  if (ReadLine(0) != "release") Die("no release order");
  for (size_t i = 0; i < Plan().size(); ++i) {
    if (!adopted[i]) continue;
    const Planned& p = Plan()[i];
    const Owner o = OwnerForThisProcess(handed[i].uuid, p.owner_name);
    absl::Status s = backends[p.backend]->Release(o, ResourceOf(p, work));
    if (!s.ok()) Say(absl::StrCat("release ", i, " ", s.ToString()));
  }
  Say("released");
  return 0;
}

// Hammers conflicting non-waiting acquires until its stdin closes.
int ContendMain(const std::string& plugin_dir, const std::string& work) {
  std::vector<std::unique_ptr<Backend>> backends = OpenBackends(plugin_dir, work);
  const Owner me = OwnerForThisProcess(RandomUuid(), "vm-contender");
  struct Target {
    size_t index;
    Resource resource;
    LockMode mode;
  };
  std::vector<Target> targets;
  for (size_t i = 0; i < Plan().size(); ++i) {
    const Planned& p = Plan()[i];
    if (!p.adopt) continue;  // Free after FinishAdoption: not the contender's business.
    const LockMode held = FinalMode(p);
    // Exclusive conflicts with all; the other shared class with a shared holder.
    const Resource r = ResourceOf(p, work);
    targets.push_back({i, r, LockMode::kExclusive});
    if (held == LockMode::kSharedRead) targets.push_back({i, r, LockMode::kSharedWrite});
    if (held == LockMode::kSharedWrite) targets.push_back({i, r, LockMode::kSharedRead});
  }
  long attempts = 0, granted = 0, other_errors = 0;
  std::string first_grant, first_error;
  for (bool ready = false;; ready = true) {
    for (const Target& t : targets) {
      Backend* b = backends[Plan()[t.index].backend].get();
      absl::StatusOr<Grant> g = b->Acquire(me, t.resource, t.mode, {});
      ++attempts;
      if (g.ok()) {
        if (granted++ == 0) first_grant = absl::StrCat(t.index, " ", LockModeName(t.mode));
        b->Release(me, t.resource).IgnoreError();
      } else if (!IsLockBusy(g.status())) {
        if (other_errors++ == 0) first_error = g.status().ToString();
      }
    }
    if (!ready) Say("ready");
    struct pollfd in = {0, POLLIN, 0};
    if (poll(&in, 1, 0) > 0) break;  // The parent closed our stdin.
  }
  Say(absl::StrCat("contended ", attempts, " ", granted, " ", other_errors,
                   " first grant: ", first_grant, " first error: ", first_error));
  return 0;
}

// ----------------------------------------------------------------- the test

// A child process of this binary, talking over its stdin and stdout.
class Child {
 public:
  explicit Child(const std::vector<std::string>& args) {
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) abort();
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      dup2(in[0], 0);
      dup2(out[1], 1);
      execv("/proc/self/exe", argv.data());
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    to_ = in[1];
    from_ = out[0];
  }
  ~Child() {
    if (to_ >= 0) close(to_);
    if (from_ >= 0) close(from_);
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  std::string Read() { return ReadLine(from_); }
  // Lines up to and including `last` (or end of output).
  std::vector<std::string> ReadUntil(const std::string& last) {
    std::vector<std::string> lines;
    while (true) {
      std::string line = Read();
      if (line.empty()) return lines;  // It died.
      lines.push_back(line);
      if (line == last || absl::StartsWith(line, "fatal ")) return lines;
    }
  }
  void Write(const std::string& line) {
    const std::string out = line + "\n";
    ASSERT_EQ(write(to_, out.data(), out.size()), static_cast<ssize_t>(out.size()));
  }
  void CloseStdin() {
    close(to_);
    to_ = -1;
  }
  int Wait() {
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
  int to_ = -1, from_ = -1;
};

std::string PluginDir() {
  std::string error;
  std::unique_ptr<bazel::tools::cpp::runfiles::Runfiles> rf(
      bazel::tools::cpp::runfiles::Runfiles::CreateForTest(&error));
  if (rf == nullptr) return "";
  const std::string so = rf->Rlocation("latchkey/backends/posixfd/latchkey-posixfd.so");
  return so.substr(0, so.rfind('/'));
}

struct Outcome {
  std::vector<std::string> adopter;  // every line of the holder, then the adopter
  std::string contender;             // its "contended ..." line
  long attempts = -1, granted = -1, other_errors = -1;
  std::vector<Handed> handed;
};

Outcome RunRestart(bool prepare) {
  static int run = 0;
  const std::string work = absl::StrCat(getenv("TEST_TMPDIR"), "/run", ++run);
  EXPECT_EQ(mkdir(work.c_str(), 0700), 0);
  for (const Planned& p : Plan()) {
    if (std::string(p.kind) == "disk") std::ofstream(absl::StrCat(work, "/", p.name)) << "disk";
  }
  const std::string plugin_dir = PluginDir();
  Outcome out;
  std::vector<std::string> hold_args = {"exec_adoption_test", "--hold", plugin_dir, work};
  if (!prepare) hold_args.push_back("--no-prepare");
  Child holder(hold_args);
  EXPECT_EQ(holder.Read(), "held");
  out.handed = ReadHanded(work);
  Child contender({"exec_adoption_test", "--contend", plugin_dir, work});
  EXPECT_EQ(contender.Read(), "ready");
  holder.Write("exec");
  out.adopter = holder.ReadUntil("adopted");
  contender.CloseStdin();
  out.contender = contender.Read();
  std::vector<std::string> f = absl::StrSplit(out.contender, ' ');
  if (f.size() >= 4 && f[0] == "contended") {
    EXPECT_TRUE(absl::SimpleAtoi(f[1], &out.attempts));
    EXPECT_TRUE(absl::SimpleAtoi(f[2], &out.granted));
    EXPECT_TRUE(absl::SimpleAtoi(f[3], &out.other_errors));
  }
  EXPECT_EQ(contender.Wait(), 0);
  holder.Write("release");
  std::vector<std::string> tail = holder.ReadUntil("released");
  out.adopter.insert(out.adopter.end(), tail.begin(), tail.end());
  EXPECT_EQ(holder.Wait(), 0);
  printf("%s run, adopter:\n  %s\ncontender: %s\n", prepare ? "PrepareExec" : "no-PrepareExec",
         absl::StrJoin(out.adopter, "\n  ").c_str(), out.contender.c_str());
  return out;
}

bool Has(const std::vector<std::string>& lines, const std::string& line) {
  for (const std::string& l : lines) {
    if (l == line) return true;
  }
  return false;
}

TEST(ExecAdoptionTest, LocksSurviveExecWithNoWindow) {
  const Outcome out = RunRestart(/*prepare=*/true);
  SCOPED_TRACE(absl::StrCat("adopter said:\n", absl::StrJoin(out.adopter, "\n"),
                            "\ncontender said: ", out.contender));
  int adoptable = 0;
  for (size_t i = 0; i < Plan().size(); ++i) {
    const Planned& p = Plan()[i];
    if (!p.adopt) {
      bool refused = false;
      for (const std::string& l : out.adopter) {
        refused = refused || (absl::StartsWith(l, absl::StrCat("mismatch ", i, " ABORTED: ")) &&
                              absl::StrContains(l, "held before the exec"));
      }
      EXPECT_TRUE(refused) << "lock " << i;
      EXPECT_TRUE(Has(out.adopter, absl::StrCat("free ", i, " ok"))) << "lock " << i;
      continue;
    }
    ++adoptable;
    // Taken over as it was: the very same fencing token, no new grant.
    EXPECT_TRUE(Has(out.adopter, absl::StrCat("adopt ", i, " ok ", out.handed[i].token, " ",
                                              LockModeName(FinalMode(p)))))
        << "lock " << i;
    EXPECT_TRUE(Has(out.adopter, absl::StrCat("inquire ", i, " ok"))) << "lock " << i;
  }
  EXPECT_TRUE(Has(out.adopter, absl::StrCat("descriptors ", adoptable, " inheritable 0")));
  EXPECT_TRUE(Has(out.adopter, "partial release 1 ok"));
  EXPECT_TRUE(Has(out.adopter, "partial release 7 ok"));
  EXPECT_TRUE(Has(out.adopter, "convert ok"));
  EXPECT_TRUE(Has(out.adopter, "released"));
  // The contender hammered all along and never got in.
  EXPECT_GT(out.attempts, 100);
  EXPECT_EQ(out.granted, 0);
  EXPECT_EQ(out.other_errors, 0);
}

TEST(ExecAdoptionTest, WithoutPrepareExecTheContenderGetsIn) {
  // The negative control: the same run, but the descriptors close at exec.
  const Outcome out = RunRestart(/*prepare=*/false);
  SCOPED_TRACE(absl::StrCat("adopter said:\n", absl::StrJoin(out.adopter, "\n"),
                            "\ncontender said: ", out.contender));
  EXPECT_GT(out.granted, 0) << "the contender must find the window";
  // And no adoption can claim the old fencing token.
  for (size_t i = 0; i < Plan().size(); ++i) {
    if (!Plan()[i].adopt) continue;
    EXPECT_FALSE(Has(out.adopter, absl::StrCat("adopt ", i, " ok ", out.handed[i].token, " ",
                                               LockModeName(FinalMode(Plan()[i])))))
        << "lock " << i;
  }
}

}  // namespace
}  // namespace latchkey

int main(int argc, char** argv) {
  using namespace latchkey;
  if (argc >= 4 && std::string(argv[1]) == "--hold") {
    return HoldMain(argv[2], argv[3], !(argc >= 5 && std::string(argv[4]) == "--no-prepare"));
  }
  if (argc == 4 && std::string(argv[1]) == "--adopt") return AdoptMain(argv[2], argv[3]);
  if (argc == 4 && std::string(argv[1]) == "--contend") return ContendMain(argv[2], argv[3]);
  ::testing::InitGoogleMock(&argc, argv);
  return RUN_ALL_TESTS();
}
