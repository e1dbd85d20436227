// The sanlock backend on the cluster lab: a sanlock daemon and wdmd (on
// UML's harddog) in each of three User-Mode-Linux nodes, the lockspace on
// the shared iSCSI LUN "lease", automatic leases on the NFS export, and one
// real latchd per node started from lab/examples/latchd-sanlock.conf,
// driven with latchctl. The contract suite runs on a node. Node and storage
// failures come last: they change the lab.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lab/cluster_lab.h"
#include "lab/node_contract.h"
#include "lab/node_latchd.h"

namespace latchkey {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using lab::ClusterLab;
using lab::NodeLatchd;
using lab::Runfile;
using Vm = NodeLatchd::Vm;

// The lockspace's io_timeout (lab/uml/guest/sanlock.sh): a host's renewal
// fails 8 x 2 = 16 s after its storage stops answering; another host may
// take its leases when it is dead: 16 s + 60 s of watchdog after its last
// renewal.
constexpr int kIoTimeout = 2;

ClusterLab* g_lab = nullptr;
NodeLatchd* g_latchd = nullptr;

std::string Conf(int node) { return absl::StrCat("/shared/latchd-sanlock-", node, ".conf"); }
std::string Log(int node) { return absl::StrCat("/shared/node", node, "/latchd-sanlock.log"); }

// Waits until latchd on `node` shows its lockspace joined (checks every
// 0.5 s for `seconds`); an error with its status otherwise.
absl::Status WaitJoined(int node, int seconds) {
  absl::StatusOr<std::string> joined = g_lab->Sh(
      node, absl::StrCat("for i in $(seq ", 2 * seconds, "); do latchctl --socket ",
                         g_latchd->socket(),
                         " status | grep -q '\"state\":\"joined\"' && exit 0; sleep 0.5; done; "
                         "latchctl --socket ", g_latchd->socket(), " status >&2; exit 1"),
      absl::Seconds(seconds + 60));
  return joined.ok() ? absl::OkStatus() : joined.status();
}

// latchd on `node`, and its lockspace joined (a join takes 2 x io_timeout + 1 s).
void StartLatchd(int node) {
  absl::Status s = g_latchd->Start(node, Conf(node), Log(node));
  ASSERT_TRUE(s.ok()) << s;
  s = WaitJoined(node, 30);
  ASSERT_TRUE(s.ok()) << s;
}

class SanlockClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    lab::ClusterLabOptions o;
    o.nodes = 3;
    o.storage = true;
    o.sanlock = true;
    absl::StatusOr<std::unique_ptr<ClusterLab>> lab = ClusterLab::Start(o);
    ASSERT_TRUE(lab.ok()) << lab.status();
    g_lab = lab->release();
    g_latchd = new NodeLatchd(g_lab, "/run/latchkey-sanlock/latchd.sock");
    ASSERT_TRUE(g_lab->Install({Runfile("agent/latchd"), Runfile("tools/latchctl")}).ok());
    absl::Status s = lab::InstallContractSuite(g_lab, "backends/sanlock/latchkey-sanlock.so");
    ASSERT_TRUE(s.ok()) << s;
    // The shipped example, with each node's host_id, as its comment says.
    for (int n = 1; n <= 3; ++n) {
      ASSERT_EQ(system(absl::StrCat("sed 's/^sanlock_host_id = .*/sanlock_host_id = ", n, "/' ",
                                    Runfile("lab/examples/latchd-sanlock.conf"), " >",
                                    g_lab->shared(), "/latchd-sanlock-", n, ".conf")
                           .c_str()),
                0);
    }
    for (int n = 1; n <= 3; ++n) StartLatchd(n);
  }

  static void TearDownTestSuite() {
    if (g_lab == nullptr) return;
    const char* out = getenv("TEST_UNDECLARED_OUTPUTS_DIR");
    if (out != nullptr) (void)g_lab->CollectLogs(absl::StrCat(out, "/lab-logs"));
    EXPECT_TRUE(g_lab->Stop().ok());
    delete g_latchd;
    delete g_lab;
    g_lab = nullptr;
  }

  void SetUp() override { ASSERT_NE(g_lab, nullptr) << "the lab did not start"; }

  static ClusterLab::Result Ctl(int node, const std::vector<std::string>& args) {
    return g_latchd->Ctl(node, args);
  }
  static ClusterLab::Result Acquire(const Vm& vm, const std::string& img,
                                    const std::string& mode = "exclusive") {
    return Ctl(vm.node, {"acquire", "--disk", img, "--mode", mode, "--uuid", vm.uuid});
  }
  static ClusterLab::Result ReleaseAll(const Vm& vm) {
    return Ctl(vm.node, {"release", "--uuid", vm.uuid});
  }
  // A fresh disk image on the NFS export, seen by every node.
  static std::string Image(const std::string& base) {
    const std::string path =
        absl::StrCat("/mnt/nfs/", base, "-", absl::ToUnixMicros(absl::Now()) % 100000000, ".img");
    EXPECT_TRUE(g_lab->Sh(1, absl::StrCat("truncate -s 1M ", path)).ok());
    return path;
  }
};

TEST_F(SanlockClusterTest, ContractSuitePassesOnALabNode) {
  // A lockspace of its own, 8 MiB into the LUN "lease", so the suite's
  // joins and leaves never touch latchd's "latchkey".
  constexpr char kLs[] = "contract:2:/dev/lab/lease:8388608";
  ASSERT_TRUE(g_lab
                  ->Sh(2, absl::StrCat("sanlock direct init -o ", kIoTimeout,
                                       " -s contract:0:/dev/lab/lease:8388608 >/dev/null"))
                  .ok());
  absl::StatusOr<ClusterLab::Result> r = lab::RunContractSuite(
      g_lab, 2, "sanlock",
      absl::StrCat("host_id = 2\nio_timeout = ", kIoTimeout,
                   "\nlockspaces = [ \"contract:/dev/lab/lease:8388608\" ]\n"
                   "lease_dir = \"@TMP@\"\nnotify_dir = \"/tmp\""));
  ASSERT_TRUE(r.ok()) << r.status();
  std::printf("%s\n", r->out.c_str());
  EXPECT_EQ(r->status, 0) << r->out << r->err;
  EXPECT_THAT(r->out, HasSubstr("[  PASSED  ]"));
  EXPECT_THAT(r->out, Not(HasSubstr("[  FAILED  ]")));
  // Leave it, so later storage faults fail only latchd's lockspace.
  EXPECT_TRUE(g_lab->Sh(2, absl::StrCat("sanlock client rem_lockspace -s ", kLs,
                                        " >/dev/null 2>&1; true"))
                  .ok());
}

TEST_F(SanlockClusterTest, ExclusiveConflictAcrossNodesNamesTheHolder) {
  const std::string img = Image("ex");
  Vm a = g_latchd->NewVm(1, "vm-alpha");
  Vm b = g_latchd->NewVm(2, "vm-bravo");
  ClusterLab::Result g = Acquire(a, img);
  ASSERT_EQ(g.status, 0) << g.err;
  EXPECT_THAT(g.out, HasSubstr("backend sanlock"));
  ClusterLab::Result refused = Acquire(b, img);
  EXPECT_EQ(refused.status, 1) << refused.out << refused.err;
  EXPECT_THAT(refused.err, HasSubstr(img));
  EXPECT_THAT(refused.err, HasSubstr("node1 (host_id 1)"));
  refused = Acquire(b, img, "shared-read");
  EXPECT_EQ(refused.status, 1) << refused.err;
  EXPECT_EQ(ReleaseAll(a).status, 0);
  g = Acquire(b, img);
  EXPECT_EQ(g.status, 0) << g.err;
  EXPECT_EQ(ReleaseAll(b).status, 0);
}

TEST_F(SanlockClusterTest, SharedReadersOnThreeNodesExcludeAWriter) {
  const std::string img = Image("sh");
  Vm a = g_latchd->NewVm(1, "reader-1"), b = g_latchd->NewVm(2, "reader-2"),
     c = g_latchd->NewVm(3, "writer-3");
  EXPECT_EQ(Acquire(a, img, "shared-read").status, 0);
  EXPECT_EQ(Acquire(b, img, "shared-read").status, 0);
  ClusterLab::Result w = Acquire(c, img);
  EXPECT_EQ(w.status, 1) << w.err;
  EXPECT_THAT(w.err, HasSubstr("shared"));
  // sanlock folds shared-write onto SH too: a writer in shared-write mode
  // joins the readers (capabilities say so).
  EXPECT_EQ(Acquire(c, img, "shared-write").status, 0);
  for (const Vm* vm : {&a, &b, &c}) EXPECT_EQ(ReleaseAll(*vm).status, 0);
  EXPECT_EQ(Acquire(c, img).status, 0);
  EXPECT_EQ(ReleaseAll(c).status, 0);
}

TEST_F(SanlockClusterTest, WaitingAcquireIsGrantedWhenTheOtherNodeReleases) {
  const std::string img = Image("wait");
  Vm a = g_latchd->NewVm(1, "vm-holder");
  Vm b = g_latchd->NewVm(3, "vm-waiter");
  ASSERT_EQ(Acquire(a, img).status, 0);
  ASSERT_TRUE(g_latchd->StartWaiter(b, {"--disk", img}, 60, "wait").ok());
  EXPECT_EQ(g_latchd->WaiterStatus(b, "wait", absl::Seconds(2)), "none") << "granted while held";
  // Slow storage for the waiter's node, past io_timeout (its retries read
  // the lease and time out, SANLK_AIO_TIMEOUT), briefly enough that its own
  // lockspace renewal does not fail: the wait goes on.
  auto timeouts = [] {  // acquires that failed with SANLK_AIO_TIMEOUT on node3
    absl::StatusOr<std::string> n =
        g_lab->Sh(3, "grep -c 'cmd_acquire.*result -202' /shared/node3/sanlock.log || true");
    int v = 0;
    EXPECT_TRUE(n.ok() && absl::SimpleAtoi(absl::StripAsciiWhitespace(*n), &v)) << n.status();
    return v;
  };
  const int timeouts_before = timeouts();
  ASSERT_TRUE(g_lab->Netem(3, "storage", {"delay", "2500ms"}).ok());
  absl::SleepFor(absl::Seconds(5));
  ASSERT_TRUE(g_lab->NetemClear(3, "storage").ok());
  EXPECT_GT(timeouts(), timeouts_before) << "the slow storage never timed an acquire out";
  EXPECT_EQ(g_latchd->WaiterStatus(b, "wait", absl::Seconds(1)), "none")
      << "the waiter ended while its storage was slow";
  const absl::Time released = absl::Now();
  ASSERT_EQ(ReleaseAll(a).status, 0);
  EXPECT_EQ(g_latchd->WaiterStatus(b, "wait", absl::Seconds(30)), "0");
  std::printf("sanlock: waiter on node3 granted %.2f s after node1's release (poll 200 ms)\n",
              absl::ToDoubleSeconds(g_latchd->WaiterEndedAt(b, "wait") - released));
  EXPECT_EQ(ReleaseAll(b).status, 0);
}

TEST_F(SanlockClusterTest, LatchdKilledWhileHoldingAdoptsItsLeaseWithoutAWindow) {
  const std::string img = Image("adopt");
  Vm a = g_latchd->NewVm(1, "vm-survivor");
  Vm b = g_latchd->NewVm(2, "vm-thief");
  ASSERT_EQ(Acquire(a, img).status, 0);
  // A thief on node 2 tries all the while latchd on node 1 is down.
  ASSERT_TRUE(g_lab
                  ->Spawn(2, "/tmp/thief.log",
                          {"sh", "-c",
                           absl::StrCat("n=0; ok=0; end=$(( $(date +%s) + 8 )); while [ "
                                        "$(date +%s) -lt $end ]; do n=$((n+1)); latchctl --socket ",
                                        g_latchd->socket(), " acquire --disk ", img, " --uuid ",
                                        b.uuid,
                                        " >/dev/null 2>&1 && ok=$((ok+1)); done; echo \"$n $ok\" "
                                        ">/tmp/thief.out")})
                  .ok());
  ASSERT_TRUE(g_lab->Sh(1, "kill -9 $(pidof latchd); sleep 1").ok());
  StartLatchd(1);
  ClusterLab::Result st = Ctl(1, {"status"});
  EXPECT_THAT(st.out, HasSubstr("vm-survivor"));
  EXPECT_THAT(st.out, HasSubstr(img));
  absl::StatusOr<std::string> thief = g_lab->Sh(
      2, "for i in $(seq 200); do [ -s /tmp/thief.out ] && { cat /tmp/thief.out; exit 0; }; "
         "sleep 0.1; done; exit 1");
  ASSERT_TRUE(thief.ok()) << thief.status();
  std::printf("sanlock: thief on node2: '%s' (attempts, grants) while node1's latchd was "
              "killed and restarted\n", std::string(absl::StripAsciiWhitespace(*thief)).c_str());
  EXPECT_THAT(*thief, testing::EndsWith(" 0\n"));
  EXPECT_THAT(*thief, Not(testing::StartsWith("0 ")));
  EXPECT_EQ(Acquire(b, img).status, 1) << "granted to node2 after the adoption";
  EXPECT_EQ(ReleaseAll(a).status, 0);
  EXPECT_EQ(Acquire(b, img).status, 0);
  EXPECT_EQ(ReleaseAll(b).status, 0);
}

// Storage faults and dead nodes: the lab changes from here on.

// node1's storage stops answering: sanlock cannot renew its delta lease,
// fails the lockspace after 8 x io_timeout and runs latchd's killpath;
// latchd drops the leases (no I/O) and applies the owner's policy. Its
// lease holders are gone in time, so the watchdog does not fire, and once
// storage is back latchd joins the lockspace again.
TEST_F(SanlockClusterTest, AStalledNodeLosesItsLeasesAndStopsTheirOwner) {
  const std::string img = Image("stall");
  Vm a = g_latchd->NewVm(1, "vm-stalled", "terminate");
  ASSERT_EQ(Acquire(a, img).status, 0);
  const absl::Time stalled = absl::Now();
  ASSERT_TRUE(g_lab->StorageStall(1).ok());
  absl::Duration stopped_after = absl::InfiniteDuration();
  while (absl::Now() - stalled < absl::Seconds(60)) {
    if (!g_latchd->Alive(a)) {
      stopped_after = absl::Now() - stalled;
      break;
    }
    absl::SleepFor(absl::Milliseconds(250));
  }
  std::printf("sanlock: node1's storage stalled; lease loss reported and its owner stopped "
              "after %.1f s (io_timeout %d s: renewal fails after %d s)\n",
              absl::ToDoubleSeconds(stopped_after), kIoTimeout, 8 * kIoTimeout);
  EXPECT_LE(stopped_after, absl::Seconds(8 * kIoTimeout + 10)) << "the owner outlived its lease";
  EXPECT_GE(stopped_after, absl::Seconds(4 * kIoTimeout)) << "stopped before a renewal could fail";
  absl::StatusOr<std::string> log =
      g_lab->Sh(1, absl::StrCat("grep -h 'LOCK FAILURE' ", Log(1), " | tail -n 1"));
  ASSERT_TRUE(log.ok());
  EXPECT_THAT(*log, HasSubstr("vm-stalled"));
  EXPECT_THAT(*log, HasSubstr("renewal was missed"));
  ASSERT_TRUE(g_lab->StorageResume(1).ok());
  const absl::Time resumed = absl::Now();
  const absl::Status joined = WaitJoined(1, 60);
  EXPECT_TRUE(joined.ok()) << "latchd did not join the lockspace again: " << joined;
  std::printf("sanlock: lockspace joined again %.1f s after storage came back\n",
              absl::ToDoubleSeconds(absl::Now() - resumed));
  absl::StatusOr<std::string> st = g_lab->Status();
  ASSERT_TRUE(st.ok());
  EXPECT_THAT(*st, HasSubstr("node1 running")) << "the watchdog fired though nothing was held";
}

// The same stall, but latchd on node1 is stopped (SIGSTOP): nothing releases
// its lease, so wdmd stops petting the watchdog and the host kills the
// node. Another node is granted the lease only when sanlock counts node1
// dead, which must not come before the watchdog has fired.
TEST_F(SanlockClusterTest, AStalledNodeThatKeepsItsLeaseIsResetByItsWatchdog) {
  const std::string img = Image("wd");
  Vm a = g_latchd->NewVm(1, "vm-stuck");
  Vm b = g_latchd->NewVm(2, "vm-next");
  ASSERT_EQ(Acquire(a, img).status, 0);
  ASSERT_TRUE(g_lab->Sh(1, "kill -STOP $(pidof latchd)").ok());
  ASSERT_TRUE(g_latchd->StartWaiter(b, {"--disk", img}, 200, "wd").ok());
  const absl::Time stalled = absl::Now();
  ASSERT_TRUE(g_lab->StorageStall(1).ok());
  const absl::Duration dead = g_lab->WaitDead(1, stalled, absl::Seconds(150));
  EXPECT_EQ(g_latchd->WaiterStatus(b, "wd", absl::Seconds(120)), "0");
  const absl::Duration granted = g_latchd->WaiterEndedAt(b, "wd") - stalled;
  std::printf("sanlock: node1 stalled holding a lease it cannot release: killed by its watchdog "
              "after %.1f s; node2 granted after %.1f s\n",
              absl::ToDoubleSeconds(dead), absl::ToDoubleSeconds(granted));
  EXPECT_LE(dead, absl::Seconds(8 * kIoTimeout + 60 + 10)) << "the watchdog never fired";
  EXPECT_GE(dead, absl::Seconds(8 * kIoTimeout + 30)) << "killed too early for the watchdog";
  EXPECT_GE(granted, dead) << "node2 was granted while node1 and its lease holder still ran";
  EXPECT_EQ(ReleaseAll(b).status, 0);
  ASSERT_TRUE(g_lab->Restart(1).ok());
  StartLatchd(1);
}

// A node killed outright: its lease can be taken once sanlock counts the
// host dead (no renewal for 8 x io_timeout + 60 s).
TEST_F(SanlockClusterTest, AKilledNodesLeaseIsTakenOverWhenItsHostIsDead) {
  const std::string img = Image("kill");
  Vm a = g_latchd->NewVm(3, "vm-on-node3");
  Vm b = g_latchd->NewVm(1, "vm-survivor");
  ASSERT_EQ(Acquire(a, img).status, 0);
  ASSERT_TRUE(g_latchd->StartWaiter(b, {"--disk", img}, 200, "kill").ok());
  EXPECT_EQ(g_latchd->WaiterStatus(b, "kill", absl::Seconds(1)), "none") << "granted while held";
  const absl::Time killed = absl::Now();
  ASSERT_TRUE(g_lab->Kill(3).ok());
  EXPECT_EQ(g_latchd->WaiterStatus(b, "kill", absl::Seconds(150)), "0");
  const absl::Duration granted = g_latchd->WaiterEndedAt(b, "kill") - killed;
  std::printf("sanlock: node3 killed while holding: node1 granted after %.1f s\n",
              absl::ToDoubleSeconds(granted));
  EXPECT_GE(granted, absl::Seconds(60)) << "taken before node3 could be counted dead";
  EXPECT_EQ(ReleaseAll(b).status, 0);
  ASSERT_TRUE(g_lab->Restart(3).ok());
  StartLatchd(3);
}

}  // namespace
}  // namespace latchkey
