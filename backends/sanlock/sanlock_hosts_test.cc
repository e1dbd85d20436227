// The sanlock backend across hosts: a sanlock lab of three real daemons
// (lab/sanlock_lab.h) over one lease file, with one real latchd per "host"
// joining the lockspace itself. Owners are real processes.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "agent/client.h"
#include "agent/testing/latchd_process.h"
#include "core/owner.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lab/sanlock_lab.h"

namespace latchkey {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;
using lab::SanlockLab;
using testing::KillAndReap;
using testing::LatchdProcess;
using testing::SpawnSleeper;
using testing::TempDir;
using testing::Vm;

constexpr int kHosts = 3;


std::string ErrorCode(const absl::Status& s) { return s.ok() ? "ok" : std::string(s.message()); }

class SanlockHostsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    lab::SanlockLabOptions o;  // dir empty: a private one, removed at Stop
    o.hosts = kHosts;
    o.lockspace = "lab";
    o.io_timeout = 1;
    o.resources = 4;
    absl::StatusOr<std::unique_ptr<SanlockLab>> l = SanlockLab::Start(o);
    ASSERT_TRUE(l.ok()) << l.status();
    lab_ = l->release();
    for (int h = 1; h <= kHosts; ++h) {
      latchd_[h] = new LatchdProcess(TempDir(absl::StrCat("host", h)), Config(h));
    }
    // The latchds join the lockspace themselves, all at once.
    for (int h = 1; h <= kHosts; ++h) {
      absl::Status s = latchd_[h]->Start();
      ASSERT_TRUE(s.ok()) << s << latchd_[h]->Log();
    }
    for (int h = 1; h <= kHosts; ++h) WaitJoined(h);
  }

  static void TearDownTestSuite() {
    for (int h = 1; h <= kHosts; ++h) {
      if (latchd_[h] != nullptr && latchd_[h]->running()) latchd_[h]->Kill(SIGKILL);
      delete latchd_[h];
      latchd_[h] = nullptr;
    }
    if (lab_ != nullptr) {
      EXPECT_TRUE(lab_->Stop().ok());
      delete lab_;
      lab_ = nullptr;
    }
  }

  void TearDown() override {
    if (HasFailure()) {
      for (int h = 1; h <= kHosts; ++h) {
        if (latchd_[h]) fprintf(stderr, "== latchd host%d log:\n%s\n", h, latchd_[h]->Log().c_str());
      }
    }
  }

  static std::string Config(int h) {
    return absl::StrCat("backends = [ \"sanlock\", \"posixfd\" ]\nlockspace = \"lab\"\n",
                        "sanlock_run_dir = \"", lab_->RunDir(h), "\"\n",
                        "sanlock_host_id = ", h, "\nsanlock_io_timeout = 1\n",
                        "sanlock_lockspaces = [ \"", lab_->LockspaceSpec(), "\" ]\n",
                        "sanlock_lease_dir = \"", lab_->LeaseDir(), "\"\n",
                        "sanlock_notify_dir = \"/tmp\"\nsanlock_poll_ms = 50\n");
  }

  static absl::StatusOr<json> Call(int h, json req,
                                   absl::Duration timeout = absl::Seconds(30)) {
    absl::StatusOr<LatchdClient> c = latchd_[h]->Connect();
    if (!c.ok()) return c.status();
    return c->Call(req, timeout);
  }

  // The sanlock lockspace state latchd reports for host h.
  static json LockspaceState(int h) {
    absl::StatusOr<json> st = Call(h, {{"op", "status"}});
    if (!st.ok()) return json();
    for (const json& b : (*st)["backends"]) {
      if (b["name"] == "sanlock") return b["state"]["lockspaces"][0];
    }
    return json();
  }

  static void WaitJoined(int h, absl::Duration limit = absl::Seconds(30)) {
    const absl::Time deadline = absl::Now() + limit;
    json ls;
    while (absl::Now() < deadline) {
      ls = LockspaceState(h);
      if (ls.is_object() && ls["state"] == "joined") return;
      absl::SleepFor(absl::Milliseconds(50));
    }
    FAIL() << "host" << h << " did not join: " << ls.dump();
  }

  static void Register(int h, const Vm& vm, const std::string& policy = "terminate") {
    absl::StatusOr<json> r =
        Call(h, {{"op", "register"}, {"owner", vm.Owner()}, {"policy", policy}, {"grace_ms", 2000}});
    ASSERT_TRUE(r.ok()) << r.status();
  }

  static absl::StatusOr<json> Acquire(int h, const Vm& vm, json resources, json extra = {}) {
    json req = {{"op", "acquire"}, {"uuid", vm.uuid}, {"resources", resources}};
    if (extra.is_object()) req.update(extra);
    return Call(h, req, absl::Seconds(200));
  }
  static absl::StatusOr<json> Release(int h, const Vm& vm, json resources) {
    return Call(h, {{"op", "release"}, {"uuid", vm.uuid}, {"resources", resources}});
  }
  // Manual lease res<i> of the lab.
  static json ManualLease(int i, const std::string& mode = "exclusive") {
    return {{"lease", absl::StrCat("res", i)}, {"path", lab_->LeasePath()},
            {"offset", lab_->ResourceOffset(i)}, {"mode", mode}};
  }
  static std::string Disk(const std::string& n) { return lab_->options().dir + "/" + n + ".img"; }

  static SanlockLab* lab_;
  static LatchdProcess* latchd_[kHosts + 1];
};

SanlockLab* SanlockHostsTest::lab_ = nullptr;
LatchdProcess* SanlockHostsTest::latchd_[kHosts + 1] = {};

TEST_F(SanlockHostsTest, StatusShowsJoinedLockspaceAndLiveHosts) {
  json ls = LockspaceState(1);
  ASSERT_TRUE(ls.is_object());
  EXPECT_EQ(ls["name"], "lab");
  EXPECT_EQ(ls["host_id"], 1);
  EXPECT_GE(ls.value("join_took_ms", int64_t{0}), 1000) << "a real join takes seconds: " << ls.dump();
  // Every daemon's host slot: its name (the daemon's -e) and a state. The
  // daemon reports hosts once it has read the slots (a renewal or two).
  std::set<std::string> names;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (names.size() < 3 && absl::Now() < deadline) {
    names.clear();
    ls = LockspaceState(1);
    if (ls.contains("hosts")) {
      for (const json& h : ls["hosts"]) {
        if (h["state"] == "live") names.insert(h["name"].get<std::string>());
      }
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(names, (std::set<std::string>{"host1", "host2", "host3"})) << ls.dump();
}

TEST_F(SanlockHostsTest, ExclusiveConflictNamesTheHoldingHostAndWaiterIsGranted) {
  Vm a("vm-a"), b("vm-b");
  Register(1, a);
  Register(2, b);
  const json disk = {{{"disk", Disk("one")}}};
  absl::StatusOr<json> first = Acquire(1, a, disk);
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<json> refused = Acquire(2, b, disk);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("host1 (host_id 1)"));
  // A waiting acquire on host2 is granted once host1 releases.
  std::atomic<bool> granted{false};
  absl::StatusOr<json> waited;
  std::thread waiter([&] {
    waited = Acquire(2, b, disk, {{"wait", true}, {"timeout_ms", 20000}});
    granted = true;
  });
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_FALSE(granted);
  const absl::Time released = absl::Now();
  ASSERT_TRUE(Release(1, a, disk).ok());
  waiter.join();
  ASSERT_TRUE(waited.ok()) << waited.status();
  EXPECT_LT(absl::Now() - released, absl::Seconds(3));
  EXPECT_GT((*waited)["locks"][0]["fencing_token"].get<uint64_t>(),
            (*first)["locks"][0]["fencing_token"].get<uint64_t>());
  // And back: release, re-acquire on host1.
  ASSERT_TRUE(Release(2, b, disk).ok());
  ASSERT_TRUE(Acquire(1, a, disk).ok());
  ASSERT_TRUE(Release(1, a, disk).ok());
}

TEST_F(SanlockHostsTest, SharedOnThreeHostsExcludesExclusive) {
  Vm a("vm-a"), b("vm-b"), c("vm-c"), d("vm-d");
  Register(1, a);
  Register(2, b);
  Register(3, c);
  Register(3, d);
  ASSERT_TRUE(Acquire(1, a, {ManualLease(0, "shared-write")}).ok());
  ASSERT_TRUE(Acquire(2, b, {ManualLease(0, "shared-write")}).ok());
  ASSERT_TRUE(Acquire(3, c, {ManualLease(0, "shared-read")}).ok());  // folded: SH too
  absl::StatusOr<json> ex = Acquire(3, d, {ManualLease(0)});
  EXPECT_EQ(ex.status().code(), absl::StatusCode::kUnavailable) << ex.status();
  ASSERT_TRUE(Release(3, c, {ManualLease(0)}).ok());
  ex = Acquire(3, d, {ManualLease(0)});
  EXPECT_EQ(ex.status().code(), absl::StatusCode::kUnavailable) << ex.status();
  EXPECT_THAT(ex.status().message(), HasSubstr("shared"));
  ASSERT_TRUE(Release(1, a, {ManualLease(0)}).ok());
  ASSERT_TRUE(Release(2, b, {ManualLease(0)}).ok());
  ex = Acquire(3, d, {ManualLease(0)});
  EXPECT_TRUE(ex.ok()) << ex.status();
  ASSERT_TRUE(Release(3, d, {ManualLease(0)}).ok());
}

TEST_F(SanlockHostsTest, TwoHostsCreatingOneAutomaticLeaseAtOnce) {
  // Both hosts use a new disk at the same moment: one lease file results,
  // both hosts lock the same lease, no temporary file is left.
  for (int round = 0; round < 5; ++round) {
    Vm a("vm-a"), b("vm-b");
    Register(1, a);
    Register(2, b);
    const json disk = {{{"disk", Disk(absl::StrCat("race", round))}}};
    absl::StatusOr<json> ra, rb;
    std::atomic<bool> go{false};
    std::thread ta([&] { while (!go) {} ra = Acquire(1, a, disk); });
    std::thread tb([&] { while (!go) {} rb = Acquire(2, b, disk); });
    go = true;
    ta.join();
    tb.join();
    EXPECT_NE(ra.ok(), rb.ok()) << "round " << round << ": " << ErrorCode(ra.status()) << " / "
                                << ErrorCode(rb.status());
    if (ra.ok()) EXPECT_TRUE(Release(1, a, disk).ok());
    if (rb.ok()) EXPECT_TRUE(Release(2, b, disk).ok());
  }
  int files = 0, temps = 0;
  const std::string out = *lab::RunCommand({"/bin/ls", "-A", lab_->LeaseDir() + "/lab"});
  for (absl::string_view f : absl::StrSplit(out, '\n', absl::SkipEmpty())) {
    (f[0] == '.' ? temps : files)++;
  }
  EXPECT_EQ(temps, 0) << out;
  EXPECT_GE(files, 5);
}

TEST_F(SanlockHostsTest, KilledLatchdLeavesOrphansThatItsRestartAdopts) {
  Vm a("vm-a"), b("vm-b"), thief("vm-thief");
  Register(1, a);
  Register(1, b);
  Register(2, thief);
  const json res = {ManualLease(1), {{"disk", Disk("adopt")}, {"mode", "shared-write"}}};
  ASSERT_TRUE(Acquire(1, a, res).ok());
  ASSERT_TRUE(Acquire(1, b, {{{"disk", Disk("adopt")}, {"mode", "shared-read"}}}).ok());
  absl::StatusOr<json> before = Call(1, {{"op", "inquire"}, {"uuid", a.uuid}});
  ASSERT_TRUE(before.ok()) << before.status();
  latchd_[1]->Kill(SIGKILL);
  // While latchd is down another host never gets the leases.
  int attempts = 0, grants = 0;
  const absl::Time until = absl::Now() + absl::Seconds(2);
  while (absl::Now() < until) {
    for (const json& r : {ManualLease(1), json{{"disk", Disk("adopt")}}}) {
      ++attempts;
      absl::StatusOr<json> g = Acquire(2, thief, {r});
      if (g.ok()) {
        ++grants;
        Release(2, thief, {r}).IgnoreError();
      }
    }
  }
  ASSERT_TRUE(latchd_[1]->Start().ok()) << latchd_[1]->Log();
  absl::StatusOr<json> after = Call(1, {{"op", "inquire"}, {"uuid", a.uuid}});
  ASSERT_TRUE(after.ok()) << after.status();
  // The same locks, names and tokens. A disk's identity is not looked up
  // again at adoption (docs/disk-identity.md), so those fields differ.
  auto locks_of = [](json locks) {
    for (json& l : locks) {
      for (const char* f : {"identity", "identity_kind", "identity_weak", "identity_note"}) {
        l.erase(f);
      }
    }
    return locks;
  };
  EXPECT_EQ(locks_of((*after)["locks"]), locks_of((*before)["locks"]))
      << "adopted with the same tokens";
  for (const json& r : {ManualLease(1), json{{"disk", Disk("adopt")}}}) {
    ++attempts;
    absl::StatusOr<json> g = Acquire(2, thief, {r});
    if (g.ok()) ++grants;
  }
  EXPECT_EQ(grants, 0) << "of " << attempts << " attempts while latchd was down or adopting";
  EXPECT_GT(attempts, 10);
  ASSERT_TRUE(Release(1, a, res).ok());
  ASSERT_TRUE(Release(1, b, {{{"disk", Disk("adopt")}}}).ok());
  EXPECT_TRUE(Acquire(2, thief, {ManualLease(1)}).ok());
  EXPECT_TRUE(Release(2, thief, {ManualLease(1)}).ok());
}

TEST_F(SanlockHostsTest, HandOffStateIsVerifiedAcrossHosts) {
  Vm src("vm-src"), dst("vm-dst"), other("vm-other");
  Register(1, src);
  Register(2, dst);
  Register(3, other);
  ASSERT_TRUE(Acquire(1, src, {ManualLease(2)}).ok());
  absl::StatusOr<json> rel = Release(1, src, {ManualLease(2)});
  ASSERT_TRUE(rel.ok());
  const std::string state = (*rel)["state"];
  // Someone takes it in between: the destination is refused.
  ASSERT_TRUE(Acquire(3, other, {ManualLease(2)}).ok());
  ASSERT_TRUE(Release(3, other, {ManualLease(2)}).ok());
  absl::StatusOr<json> refused = Acquire(2, dst, {ManualLease(2)}, {{"state", state}});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kAborted) << refused.status();
  // Without anyone in between, the hand-off goes through.
  ASSERT_TRUE(Acquire(1, src, {ManualLease(2)}).ok());
  rel = Release(1, src, {ManualLease(2)});
  ASSERT_TRUE(rel.ok());
  absl::StatusOr<json> ok = Acquire(2, dst, {ManualLease(2)}, {{"state", (*rel)["state"]}});
  EXPECT_TRUE(ok.ok()) << ok.status();
  ASSERT_TRUE(Release(2, dst, {ManualLease(2)}).ok());
}

TEST_F(SanlockHostsTest, BadInputGetsClearErrorsAndHeldLocksStay) {
  Vm a("vm-a"), b("vm-b");
  Register(1, a);
  Register(1, b);
  ASSERT_TRUE(Acquire(1, a, {ManualLease(3)}).ok());
  absl::StatusOr<json> r = Acquire(1, b, {{{"disk", Disk("x")}, {"lockspace", "nosuch"}}});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("lockspace 'nosuch' is not configured"));
  r = Acquire(1, b, {{{"lease", "mis"}, {"path", lab_->LeasePath()}, {"offset", 4096}}});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("not a multiple of the lease alignment"));
  const std::string small = lab_->options().dir + "/small.leases";
  std::ofstream(small) << std::string(4096, '\0');
  r = Acquire(1, b, {{{"lease", "small"}, {"path", small}, {"offset", 0}}});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("too small"));
  // A lease area nobody initialised.
  r = Acquire(1, b, {{{"lease", "blank"}, {"path", lab_->LeasePath()},
                      {"offset", lab_->ResourceOffset(30)}}});
  EXPECT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("no usable lease"));
  r = Acquire(1, b, {{{"lease", std::string(48, 'x')}}});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  // The held lock is intact: host2 is still refused.
  Vm c("vm-c");
  Register(2, c);
  EXPECT_EQ(Acquire(2, c, {ManualLease(3)}).status().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(Release(1, a, {ManualLease(3)}).ok());

  // A latchd whose sanlock daemon is not running, or with a host_id out of
  // range, refuses to start and says why.
  LatchdProcess no_daemon(TempDir("nodaemon"),
                          absl::StrCat("backends = [ \"sanlock\", \"posixfd\" ]\nsanlock_run_dir = \"",
                                       lab_->options().dir, "/nowhere\"\nsanlock_host_id = 1\n"));
  absl::Status s = no_daemon.Start({}, absl::Seconds(5));
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(no_daemon.Log(), HasSubstr("the sanlock daemon does not answer"));
  LatchdProcess bad_id(TempDir("badid"), absl::StrCat("backends = [ \"sanlock\", \"posixfd\" ]\n"
                                                      "sanlock_host_id = 2001\n"));
  s = bad_id.Start({}, absl::Seconds(5));
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(bad_id.Log(), HasSubstr("host_id"));
}

// The sanlock daemon dies (kill -9, no watchdog in this lab) while owners
// hold leases through latchd: the broken client connection tells latchd at
// once, it applies each owner's policy long before another host could take
// the lease (8 * io_timeout + 60 s), says so in its log and status, and
// rejoins when the daemon is back.
TEST_F(SanlockHostsTest, KilledDaemonTerminatesItsOwnersAtOnceAndLatchdRejoins) {
  Vm a("vm-a"), b("vm-b");
  Register(2, a, "terminate");
  Register(2, b, "terminate");
  ASSERT_TRUE(Acquire(2, a, {ManualLease(3)}).ok());
  ASSERT_TRUE(Acquire(2, b, {{{"disk", Disk("daemon-death")}, {"mode", "shared-write"}}}).ok());
  ASSERT_TRUE(lab_->KillDaemon(2).ok());
  const absl::Time killed = absl::Now();
  for (Vm* vm : {&a, &b}) {
    int status = 0;
    bool exited = false;
    while (absl::Now() - killed < absl::Seconds(20)) {
      if (waitpid(vm->pid, &status, WNOHANG) == vm->pid) {
        exited = true;
        break;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    ASSERT_TRUE(exited) << vm->uuid << " should be terminated when the daemon dies";
    vm->pid = -1;
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) << status;
  }
  const absl::Duration took = absl::Now() - killed;
  fprintf(stderr, "owners terminated %.2f s after the daemon was killed\n",
          absl::ToDoubleSeconds(took));
  // The grace is 2 s (SIGTERM first): well under the 8 s before this host's
  // lease even fails, let alone the 68 s before another host may take it.
  EXPECT_LT(took, absl::Seconds(5));
  EXPECT_THAT(latchd_[2]->Log(), HasSubstr("the sanlock daemon died"));
  EXPECT_THAT(latchd_[2]->Log(), HasSubstr("LOCK FAILURE"));
  json ls = LockspaceState(2);
  EXPECT_NE(ls.value("state", ""), "joined") << ls.dump();
  EXPECT_THAT(ls.value("last_loss", ""), HasSubstr("sanlock daemon died")) << ls.dump();
  EXPECT_TRUE(latchd_[2]->running());
  // The daemon is back: latchd joins again by itself and serves.
  ASSERT_TRUE(lab_->RestartDaemon(2).ok());
  WaitJoined(2, absl::Seconds(60));
  Vm c("vm-c");
  Register(2, c);
  absl::StatusOr<json> r = Acquire(2, c, {ManualLease(3)}, {{"wait", true}, {"timeout_ms", 30000}});
  EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(Release(2, c, {ManualLease(3)}).ok());
}

// Lease loss: host2's daemon is frozen past its renewal deadline (8 s at
// io_timeout 1). On thaw sanlock fails the lockspace and runs the killpath;
// latchd applies the owner's policy (terminate) and rejoins.
TEST_F(SanlockHostsTest, FrozenDaemonLosesTheLeaseAndTheOwnerIsTerminated) {
  Vm a("vm-a");
  Register(2, a, "terminate");
  ASSERT_TRUE(Acquire(2, a, {ManualLease(0)}).ok());
  ASSERT_TRUE(lab_->Freeze(2).ok());
  absl::SleepFor(absl::Seconds(10));
  ASSERT_TRUE(lab_->Thaw(2).ok());
  const absl::Time thawed = absl::Now();
  int status = 0;
  bool exited = false;
  while (absl::Now() - thawed < absl::Seconds(20)) {
    if (waitpid(a.pid, &status, WNOHANG) == a.pid) {
      exited = true;
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE(exited) << "the owner should be terminated after the lease loss";
  a.pid = -1;
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) << status;
  EXPECT_LT(absl::Now() - thawed, absl::Seconds(10));
  EXPECT_THAT(latchd_[2]->Log(), HasSubstr("LOCK FAILURE"));
  EXPECT_TRUE(latchd_[2]->running());
  // latchd rejoins the lockspace by itself.
  WaitJoined(2, absl::Seconds(40));
  Vm b("vm-b");
  Register(1, b);
  EXPECT_TRUE(Acquire(1, b, {ManualLease(0)}).ok()) << "host2's lease is gone";
  EXPECT_TRUE(Release(1, b, {ManualLease(0)}).ok());
}

// A real dead host, no fencing: host2's daemon and latchd are killed while
// it holds a lease. Another host may take the lease only once host2's delta
// lease has expired: 8 * io_timeout + 60 s after its last renewal (~70 s).
TEST_F(SanlockHostsTest, YDeadHostLeaseIsTakenOverAfterTheHostDeadTimeout) {
  Vm a("vm-a"), b("vm-b");
  Register(2, a);
  Register(1, b);
  ASSERT_TRUE(Acquire(2, a, {ManualLease(1)}).ok());
  latchd_[2]->Kill(SIGKILL);
  ASSERT_TRUE(lab_->KillDaemon(2).ok());
  const absl::Time died = absl::Now();
  absl::StatusOr<json> r = Acquire(1, b, {ManualLease(1)});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  r = Acquire(1, b, {ManualLease(1)}, {{"wait", true}, {"timeout_ms", 150000}});
  ASSERT_TRUE(r.ok()) << r.status();
  const absl::Duration took = absl::Now() - died;
  fprintf(stderr, "dead host takeover after %.1f s\n", absl::ToDoubleSeconds(took));
  EXPECT_GT(took, absl::Seconds(60)) << "taken before host2 could be dead";
  EXPECT_LT(took, absl::Seconds(100));
  ASSERT_TRUE(Release(1, b, {ManualLease(1)}).ok());
}

// Host failure: host3's daemon and latchd are killed while it holds a
// lease. Fencing it (release_id) frees the lease at once. Last: host3 stays
// down.
TEST_F(SanlockHostsTest, ZFencedHostLeaseIsTakenOverAtOnce) {
  Vm a("vm-a"), b("vm-b");
  Register(3, a);
  Register(1, b);
  ASSERT_TRUE(Acquire(3, a, {ManualLease(2)}).ok());
  latchd_[3]->Kill(SIGKILL);
  ASSERT_TRUE(lab_->KillDaemon(3).ok());
  absl::StatusOr<json> r = Acquire(1, b, {ManualLease(2)});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("host3"));
  ASSERT_TRUE(lab_->Fence(3).ok());
  const absl::Time fenced = absl::Now();
  r = Acquire(1, b, {ManualLease(2)}, {{"wait", true}, {"timeout_ms", 10000}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_LT(absl::Now() - fenced, absl::Seconds(2));
  ASSERT_TRUE(Release(1, b, {ManualLease(2)}).ok());
}

}  // namespace
}  // namespace latchkey
