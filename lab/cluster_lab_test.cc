// The cluster lab itself (lab/uml/uml-cluster with --storage): three nodes
// and a storage node on two wires. Checks that the shared storage is what
// the backends will rely on (one LUN seen as the same device by every node,
// SCSI-3 persistent reservations from each node, one NFS export whose locks
// conflict across nodes, one disk identity on every node), and that every
// fault command has the effect it claims and is written to the event log.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lab/cluster_lab.h"
#include "nlohmann/json.hpp"

namespace latchkey {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using lab::ClusterLab;
using lab::Runfile;
using lab::kStorage;
using json = nlohmann::json;


ClusterLab* g_lab = nullptr;

class ClusterLabTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    lab::ClusterLabOptions o;
    o.nodes = 3;
    o.storage = true;
    o.luns = {"lease:64", "vm:256"};
    o.sanlock = true;
    absl::StatusOr<std::unique_ptr<ClusterLab>> lab = ClusterLab::Start(o);
    ASSERT_TRUE(lab.ok()) << lab.status();
    g_lab = lab->release();
    ASSERT_TRUE(g_lab->Install({Runfile("tools/latchctl")}).ok());
  }

  static void TearDownTestSuite() {
    if (g_lab == nullptr) return;
    (void)g_lab->CollectLogs();  // into the test's saved outputs
    EXPECT_TRUE(g_lab->Stop().ok());
    delete g_lab;
    g_lab = nullptr;
  }

  // A test that failed may have left a fault or a dead node: the next one
  // starts from a reset lab, so one failure does not take the rest along.
  void SetUp() override {
    ASSERT_NE(g_lab, nullptr) << "the lab did not start";
    if (last_failed_) {
      absl::Status st = g_lab->Reset();
      ASSERT_TRUE(st.ok()) << "resetting the lab after a failed test: " << st;
      last_failed_ = false;
    }
  }
  void TearDown() override {
    if (HasFailure()) last_failed_ = true;
  }
  static bool last_failed_;

  // The script's stdout on the node; a test failure (and "") otherwise.
  static std::string Sh(int node, const std::string& script,
                        absl::Duration timeout = absl::Seconds(60)) {
    absl::StatusOr<std::string> r = g_lab->Sh(node, script, timeout);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? std::string(absl::StripAsciiWhitespace(*r)) : "";
  }
  // The exit status of the script on the node.
  static int Status(int node, const std::string& script,
                    absl::Duration timeout = absl::Seconds(60)) {
    absl::StatusOr<ClusterLab::Result> r = g_lab->Run(node, {"/bin/sh", "-c", script}, timeout);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->status : -1;
  }
  // Waits until the cluster is whole and settled: node1's corosync counts 3
  // votes, its dlm_controld 3 members and no fence in progress, twice 4 s
  // apart (a membership change ends token + consensus, ~8 s, after its
  // fault, and a removed node merges back ~3 s after that).
  static void ExpectWholeCluster() {
    absl::StatusOr<ClusterLab::Result> r = g_lab->Run(
        1,
        {"/bin/sh", "-c",
         "whole() { corosync-quorumtool -s | grep -q '^Total votes: *3$' && "
         "s=$(dlm_tool status) && [ $(echo \"$s\" | grep -c '^node [0-9]* M ') -eq 3 ] && "
         "! echo \"$s\" | grep -q '^fence '; }; "
         "for i in $(seq 30); do whole && sleep 4 && whole && exit 0; sleep 1; done; "
         "corosync-quorumtool -s; dlm_tool status; exit 1"},
        absl::Seconds(200));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 0) << "the cluster is not whole (node1's view):\n" << r->out << r->err;
  }
  // Whether node1 sees, right now, 3 corosync votes and 3 DLM members with
  // no fence in progress.
  static bool WholeNow() {
    absl::StatusOr<ClusterLab::Result> r = g_lab->Run(
        1,
        {"/bin/sh", "-c",
         "corosync-quorumtool -s | grep -q '^Total votes: *3$' && s=$(dlm_tool status) && "
         "[ $(echo \"$s\" | grep -c '^node [0-9]* M ') -eq 3 ] && ! echo \"$s\" | grep -q '^fence '"},
        absl::Seconds(30));
    return r.ok() && r->status == 0;
  }
  // Whether `node` gets an answer to one ping of addr within 2 s.
  static bool Reaches(int node, const std::string& addr) {
    return Status(node, absl::StrCat("ping -c 1 -W 2 ", addr, " >/dev/null 2>&1")) == 0;
  }
  // The last event of the log, which must be `event` on `target`. (Fence
  // events are the DLM's answers to a fault, logged when they come: skipped
  // unless asked for.)
  static void ExpectLastEvent(const std::string& event, const std::string& target) {
    absl::StatusOr<std::vector<lab::LabEvent>> ev = g_lab->Events();
    ASSERT_TRUE(ev.ok()) << ev.status();
    while (!ev->empty() && event != "fence" && ev->back().event == "fence") ev->pop_back();
    ASSERT_FALSE(ev->empty());
    EXPECT_EQ(ev->back().event, event);
    EXPECT_EQ(ev->back().target, target);
    EXPECT_NEAR(static_cast<double>(ev->back().unix_ms),
                static_cast<double>(absl::ToUnixMillis(absl::Now())), 60000.0);
  }
};

bool ClusterLabTest::last_failed_ = false;

TEST_F(ClusterLabTest, EveryNodeSeesEachLunAsOneDeviceWithPersistentReservations) {
  std::set<std::string> wwids;
  for (int n = 1; n <= 3; ++n) {
    const std::string wwid = Sh(n, "cat /sys/block/$(basename $(readlink /dev/lab/vm))/device/wwid");
    EXPECT_TRUE(absl::StartsWith(wwid, "naa.6001405")) << "node" << n << ": " << wwid;
    wwids.insert(wwid);
  }
  EXPECT_EQ(wwids.size(), 1u) << "the nodes see different devices";
  // A write on one node is read on another (one device, no cache between).
  Sh(1, "echo lab-block-$$ > /tmp/m; dd if=/tmp/m of=/dev/lab/vm bs=512 count=1 conv=sync "
        "oflag=direct 2>/dev/null; cat /tmp/m");
  const std::string written = Sh(1, "dd if=/dev/lab/vm bs=512 count=1 iflag=direct 2>/dev/null | head -c 40 | tr -d '\\0'");
  EXPECT_EQ(Sh(3, "dd if=/dev/lab/vm bs=512 count=1 iflag=direct 2>/dev/null | head -c 40 | tr -d '\\0'"),
            written);
  // SCSI-3 PR, on the LUN "vm" (the LUN "lease" holds the lab's sanlock
  // lockspace, whose renewals a reservation would stop): every node
  // registers its own key; every node reads all three. PR OUT commands are
  // retried once: the first command after another node's PR change gets a
  // unit attention.
  auto pr = [](int node, const std::string& args) {
    return Sh(node, absl::StrCat("sg_persist ", args, " /dev/lab/vm || sg_persist ", args,
                                 " /dev/lab/vm"));
  };
  for (int n = 1; n <= 3; ++n) pr(n, absl::StrCat("--out --register --param-sark=0x1a", n));
  for (int n = 1; n <= 3; ++n) {
    const std::string keys = pr(n, "--in --read-keys");
    EXPECT_THAT(keys, HasSubstr("0x1a1")) << "node" << n;
    EXPECT_THAT(keys, HasSubstr("0x1a2")) << "node" << n;
    EXPECT_THAT(keys, HasSubstr("0x1a3")) << "node" << n;
  }
  // A write-exclusive-registrants-only reservation by node1, then node3
  // preempts node2's registration (what fence_scsi does to a lost node):
  // node2 can no longer write, node3 still can. Writes go 4 MiB in.
  const std::string write = "dd if=/dev/zero of=/dev/lab/vm bs=512 seek=8192 count=1 oflag=direct 2>/dev/null";
  pr(1, "--out --reserve --param-rk=0x1a1 --prout-type=5");
  EXPECT_THAT(pr(2, "--in --read-reservation"), HasSubstr("0x1a1"));
  EXPECT_EQ(Status(2, write), 0) << "a registrant could not write";
  pr(3, "--out --preempt-abort --param-rk=0x1a3 --param-sark=0x1a2 --prout-type=5");
  EXPECT_NE(Status(2, write), 0) << "a preempted node could still write";
  EXPECT_EQ(Status(3, write), 0);
  EXPECT_THAT(pr(1, "--in --read-keys"), Not(HasSubstr("0x1a2")));
  // Clean up: the holder (node3 since the preempt) clears every registration.
  pr(3, "--out --clear --param-rk=0x1a3");
  EXPECT_THAT(pr(1, "--in --read-keys"), HasSubstr("NO registered"));
  EXPECT_EQ(Status(2, write), 0) << "node2 still fenced after the clear";
}

TEST_F(ClusterLabTest, NfsExportIsSharedAndLocksConflictAcrossNodes) {
  const std::string file =
      absl::StrCat("/mnt/nfs/shared-", absl::ToUnixMicros(absl::Now()) % 1000000000, ".txt");
  Sh(1, absl::StrCat("echo from-node1 > ", file));
  EXPECT_EQ(Sh(2, absl::StrCat("cat ", file)), "from-node1");
  // node1 holds a POSIX lock (flock(2) is a whole-file POSIX lock on NFS)
  // and says so once it has it; then node2 is refused, and granted once
  // node1 lets go.
  absl::StatusOr<int> holder = g_lab->Spawn(
      1, "/shared/node1/flock.log",
      {"flock", "-x", file, "sh", "-c", "echo held >/tmp/nfs-lock-held; exec sleep 600"});
  ASSERT_TRUE(holder.ok()) << holder.status();
  ASSERT_EQ(Status(1, "for i in $(seq 100); do [ -e /tmp/nfs-lock-held ] && exit 0; sleep 0.1; done; exit 1"),
            0)
      << "node1 did not get the lock within 10 s";
  EXPECT_EQ(Status(2, absl::StrCat("flock -n -x ", file, " true")), 1)
      << "node2 took the lock node1 holds";
  Sh(1, absl::StrCat("kill ", *holder, "; pkill -x sleep; rm -f /tmp/nfs-lock-held; true"));
  EXPECT_EQ(Status(2, absl::StrCat("flock -w 20 -x ", file, " true")), 0);
}

TEST_F(ClusterLabTest, DiskIdentityIsTheSameOnEveryNodeWhateverThePath) {
  auto identify = [](int node, const std::string& path) {
    const std::string out =
        Sh(node, absl::StrCat("latchctl identify --disk ", path, " --json"));
    json j = json::parse(out, nullptr, false);
    if (!j.is_array() || j.empty()) {
      ADD_FAILURE() << "node" << node << ": " << out;
      return json::object();
    }
    return j[0];
  };
  // One LUN: its stable path on node1, its /dev/sdX on node2 (whatever
  // letter it got there), its by-wwn path on node3.
  const json a = identify(1, "/dev/lab/vm");
  const json b = identify(2, "$(readlink /dev/lab/vm)");
  const json c = identify(3, "/dev/lab/by-wwn/$(cat /sys/block/$(basename $(readlink /dev/lab/vm))/device/wwid)");
  EXPECT_EQ(a.value("identity_kind", ""), "wwid");
  EXPECT_EQ(a.value("identity", "a"), b.value("identity", "b"));
  EXPECT_EQ(a.value("identity", "a"), c.value("identity", "c"));
  EXPECT_FALSE(a.contains("identity_weak"));
  // One NFS file, reached through the export's mount on node1 and through a
  // second mount under another path and server name on node2.
  Sh(1, "dd if=/dev/zero of=/mnt/nfs/disk.img bs=1M count=1 2>/dev/null");
  Sh(2, "mkdir -p /mnt/other && mount -t nfs4 -o vers=4.2 storage:/srv/nfs /mnt/other");
  const json f1 = identify(1, "/mnt/nfs/disk.img");
  const json f2 = identify(2, "/mnt/other/disk.img");
  EXPECT_EQ(f1.value("identity_kind", ""), "nfs-file");
  EXPECT_EQ(f1.value("identity", "1"), f2.value("identity", "2"));
  EXPECT_FALSE(f1.contains("identity_weak"));
  Sh(2, "umount /mnt/other");
}

TEST_F(ClusterLabTest, NetworkFaultsHitOneWireAndAreLogged) {
  const std::string node1 = "10.77.0.1", node2 = "10.77.0.2", node3 = "10.77.0.3",
                    storage = "10.78.0.100";
  // This checks the faults themselves: the DLM must not fence node3 for the
  // partition (a fence request is acknowledged, nothing killed).
  ASSERT_TRUE(g_lab->SetFencing(false).ok());
  ASSERT_TRUE(Reaches(3, node1));
  const absl::Time partitioned = absl::Now();
  ASSERT_TRUE(g_lab->Partition({{1, 2}, {3}}).ok());
  ExpectLastEvent("partition", "1,2|3");
  EXPECT_FALSE(Reaches(3, node1)) << "the partition let node3 through";
  EXPECT_FALSE(Reaches(1, node3));
  EXPECT_TRUE(Reaches(3, storage)) << "the partition cut the storage wire";
  EXPECT_TRUE(Reaches(2, node1)) << "the partition split one side";
  ASSERT_TRUE(g_lab->Unpartition().ok());
  ExpectLastEvent("unpartition", "all");
  EXPECT_TRUE(Reaches(3, node1));

  // A storage-wire cut leaves the cluster wire alone.
  ASSERT_TRUE(g_lab->Cut(3, "storage").ok());
  ExpectLastEvent("cut", "node3");
  EXPECT_FALSE(Reaches(3, storage));
  EXPECT_TRUE(Reaches(3, node1));
  ASSERT_TRUE(g_lab->Heal(3, "storage").ok());
  ExpectLastEvent("heal", "node3");
  EXPECT_TRUE(Reaches(3, storage));

  // netem: node2 delays every packet it sends on the cluster wire by 300 ms;
  // its storage wire is untouched.
  auto rtt_ms = [](int from, const std::string& to) {
    const std::string out = Sh(from, absl::StrCat(
        "ping -c 3 -i 0.2 -q ", to, " | sed -n 's|.*= [0-9.]*/\\([0-9.]*\\)/.*|\\1|p'"));
    double v = -1;
    EXPECT_TRUE(absl::SimpleAtod(out, &v)) << "ping summary: " << out;
    return v;
  };
  ASSERT_TRUE(g_lab->Netem(2, "cluster", {"delay", "300ms"}).ok());
  ExpectLastEvent("netem", "node2");
  EXPECT_GE(rtt_ms(1, node2), 290.0);
  EXPECT_LT(rtt_ms(2, storage), 200.0);
  ASSERT_TRUE(g_lab->NetemClear(2, "cluster").ok());
  ExpectLastEvent("netem-clear", "node2");
  EXPECT_LT(rtt_ms(1, node2), 200.0);
  // Bad input is refused and changes nothing.
  EXPECT_FALSE(g_lab->Netem(2, "cluster", {"delay;reboot"}).ok());
  EXPECT_FALSE(g_lab->Partition({{1, 2}}).ok()) << "a partition that leaves node3 out";
  EXPECT_TRUE(Reaches(3, node1));
  // The partition's membership changes come for up to ~20 s after it: the
  // survivors remove a node (~8 s), it merges back after the unpartition,
  // and dlm_controld kicks a daemon that rejoins with old state ("needs
  // fencing"), which leaves and is fenced again (the failure is acked) — 17 s
  // after the partition in one CI run. Such a node cannot merge back, so it
  // is rebooted, as a real cluster's fencing would have done. Which node the
  // survivors remove is theirs to decide: node3 usually, but node2 was
  // removed once (the netem delay came during the merge). Every node fenced
  // since the partition is rebooted as its fence comes, until the cluster is
  // whole and no fence came for 12 s (at least 20 s after the partition),
  // before fencing is on again (a node kicked from the cluster fails again
  // and would be killed). A kick does not always come with a fence event
  // for the kicked node (one CI run: node1's corosync was gone, no fence
  // logged, and the cluster never became whole), so a node whose corosync
  // or dlm_controld is no longer running is rebooted too.
  std::set<std::string> restarted;
  std::map<int, absl::Time> booted;  // nodes restarted here, and when
  absl::Time quiet_since = absl::Now();
  const absl::Time settle_by = partitioned + absl::Seconds(90);
  auto restart = [&](int n, const std::string& why) {
    std::printf("node%d %s %.1f s after the partition: restarting it\n", n, why.c_str(),
                absl::ToDoubleSeconds(absl::Now() - partitioned));
    absl::Status st = g_lab->Restart(n);
    ASSERT_TRUE(st.ok()) << st;
    restarted.insert(absl::StrCat("node", n));
    booted[n] = absl::Now();
    quiet_since = absl::Now();
  };
  while (absl::Now() < settle_by) {
    absl::StatusOr<std::vector<lab::LabEvent>> ev = g_lab->Events();
    ASSERT_TRUE(ev.ok()) << ev.status();
    for (const lab::LabEvent& e : *ev) {
      if (e.event != "fence" || absl::FromUnixMillis(e.unix_ms) < partitioned ||
          restarted.count(e.target) != 0) {
        continue;
      }
      int n = 0;
      ASSERT_TRUE(absl::SimpleAtoi(absl::StripPrefix(e.target, "node"), &n)) << e.target;
      restart(n, absl::StrFormat("was fenced at %.1f s; now",
                                 absl::ToDoubleSeconds(absl::FromUnixMillis(e.unix_ms) -
                                                       partitioned)));
      if (HasFatalFailure()) return;
    }
    if (absl::Now() - partitioned < absl::Seconds(20)) {
      absl::SleepFor(absl::Seconds(1));
      continue;
    }
    if (absl::Now() - quiet_since >= absl::Seconds(12) && WholeNow()) break;
    // A node kicked out of the cluster: its daemons exited (or the node is
    // gone). Nodes rebooted here get 40 s to bring theirs up.
    for (int n = 1; n <= 3; ++n) {
      auto b = booted.find(n);
      if (b != booted.end() && absl::Now() - b->second < absl::Seconds(40)) continue;
      absl::StatusOr<ClusterLab::Result> r = g_lab->Run(
          n, {"/bin/sh", "-c", "pidof corosync >/dev/null && pidof dlm_controld >/dev/null"},
          absl::Seconds(20));
      if (r.ok() && r->status == 0) continue;
      restart(n, r.ok() ? "has no corosync or dlm_controld (kicked from the cluster)"
                        : absl::StrCat("does not answer (", r.status().ToString(), ")"));
      if (HasFatalFailure()) return;
    }
    absl::SleepFor(absl::Seconds(1));
  }
  ExpectWholeCluster();
  ASSERT_TRUE(g_lab->SetFencing(true).ok());
}

// The DLM's fencing: every node's dlm_controld runs the lab's agent
// (guest/fence-agent) for a failed node; it asks the host, whose fencer
// kills the node (lib/fencing.sh). A node cut off from the cluster wire is
// killed; `fence` spares an incarnation booted after the failure, and with
// fencing off only acknowledges.
TEST_F(ClusterLabTest, TheDlmFencesAFailedNodeThroughTheHost) {
  ExpectWholeCluster();
  if (HasFailure()) return;
  absl::StatusOr<std::string> st = g_lab->Status();
  ASSERT_TRUE(st.ok());
  EXPECT_THAT(*st, HasSubstr("fencing on fencer=up"));
  const absl::Time cut = absl::Now();
  ASSERT_TRUE(g_lab->Cut(2, "cluster").ok());
  const absl::Duration dead_after = g_lab->WaitDead(2, cut, absl::Seconds(60));
  std::printf("node2 cut off the cluster wire: fenced (killed by the host) after %.1f s "
              "(corosync token 3000 ms)\n", absl::ToDoubleSeconds(dead_after));
  EXPECT_LT(dead_after, absl::Seconds(30)) << "the cut node was never fenced";
  // The host logs the event, and the agent its answer, just after the kill.
  absl::StatusOr<std::vector<lab::LabEvent>> ev;
  for (int i = 0; i < 50; ++i) {
    ev = g_lab->Events();
    ASSERT_TRUE(ev.ok());
    if (!ev->empty() && ev->back().event == "fence") break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ExpectLastEvent("fence", "node2");
  EXPECT_THAT(ev->back().rest, HasSubstr("result=killed"));
  EXPECT_THAT(ev->back().rest, testing::ContainsRegex("by=node[13]"));
  // The agent's side, in the node that ran it (lines since the cut).
  EXPECT_THAT(Sh(1, absl::StrCat("for i in $(seq 50); do cat /shared/node1/fence.log "
                                 "/shared/node3/fence.log 2>/dev/null | awk -v t=",
                                 absl::ToUnixSeconds(cut),
                                 " '$1 >= t' | grep 'node2: fenced' && exit 0; sleep 0.1; done")),
              HasSubstr("node2: fenced (ok: node2 killed)"));
  ASSERT_TRUE(g_lab->Restart(2).ok());

  // A failure from before node2's last boot: that incarnation is gone.
  absl::StatusOr<ClusterLab::Result> r = lab::RunCaptured(
      {Runfile("lab/uml/uml-cluster"), "fence", g_lab->dir(), "2", "--failed-at",
       absl::StrCat(absl::ToUnixSeconds(cut)), "--by", "test"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 0) << r->err;
  EXPECT_THAT(r->out, HasSubstr("that incarnation is gone"));
  ExpectLastEvent("fence", "node2");
  st = g_lab->Status();
  ASSERT_TRUE(st.ok());
  EXPECT_THAT(*st, HasSubstr("node2 running"));
  // Fencing off: acknowledged, nothing killed.
  ASSERT_TRUE(g_lab->SetFencing(false).ok());
  r = lab::RunCaptured({Runfile("lab/uml/uml-cluster"), "fence", g_lab->dir(), "2"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 0) << r->err;
  ev = g_lab->Events();
  ASSERT_TRUE(ev.ok());
  EXPECT_THAT(ev->back().rest, HasSubstr("result=acked"));
  const int64_t off_at = absl::ToUnixSeconds(absl::Now());
  ASSERT_TRUE(g_lab->SetFencing(true).ok());
  // A failure reported late, from while fencing was off: still acknowledged.
  r = lab::RunCaptured({Runfile("lab/uml/uml-cluster"), "fence", g_lab->dir(), "2",
                        "--failed-at", absl::StrCat(off_at), "--by", "node1"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 0) << r->err;
  EXPECT_THAT(r->out, HasSubstr("while fencing was off"));
  st = g_lab->Status();
  ASSERT_TRUE(st.ok());
  EXPECT_THAT(*st, HasSubstr("node2 running"));
}

TEST_F(ClusterLabTest, StorageFaultsStallOrFailTheNodesIoAndAreLogged) {
  const std::string read = "dd if=/dev/lab/vm of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null";
  ASSERT_EQ(Status(2, read), 0);
  // A stall: node2's reads hang (not fail) while node1's go on.
  ASSERT_TRUE(g_lab->StorageStall(2).ok());
  ExpectLastEvent("storage-stall", "node2");
  EXPECT_EQ(Status(2, absl::StrCat("timeout 3 ", read)), 124) << "a stalled read returned";
  EXPECT_EQ(Status(1, read), 0);
  ASSERT_TRUE(g_lab->StorageResume(2).ok());
  ExpectLastEvent("storage-resume", "node2");
  // The session comes back (a read queued meanwhile may have failed, if the
  // stall outlasted the replacement timeout).
  EXPECT_EQ(Status(2, absl::StrCat("for i in $(seq 30); do ", read, " && exit 0; sleep 1; done; exit 1"),
                   absl::Seconds(60)),
            0)
      << "node2's I/O did not come back";
  // Errors: node2's reads of one LUN fail at once; the other LUN works.
  ASSERT_TRUE(g_lab->StorageErrors(2, "vm").ok());
  ExpectLastEvent("storage-errors", "node2");
  EXPECT_NE(Status(2, absl::StrCat("timeout 5 ", read)), 0);
  EXPECT_NE(Status(2, absl::StrCat("timeout 5 ", read)), 124) << "an offline device hung";
  EXPECT_EQ(Status(2, "dd if=/dev/lab/lease of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null"), 0);
  ASSERT_TRUE(g_lab->StorageErrorsClear(2, "vm").ok());
  ExpectLastEvent("storage-errors-clear", "node2");
  EXPECT_EQ(Status(2, read), 0);
  EXPECT_FALSE(g_lab->StorageErrors(2, "no-such-lun").ok());
}

TEST_F(ClusterLabTest, DaemonClockAndNfsServerFaultsAreLogged) {
  // daemon-kill: the named process is gone; a missing one is an error.
  ASSERT_EQ(Status(3, "pgrep -x iscsid >/dev/null"), 0);
  ASSERT_TRUE(g_lab->DaemonKill(3, "iscsid").ok());
  ExpectLastEvent("daemon-kill", "node3");
  EXPECT_NE(Status(3, "pgrep -x iscsid >/dev/null"), 0);
  EXPECT_FALSE(g_lab->DaemonKill(3, "iscsid").ok()) << "killing what is not running succeeded";
  ASSERT_TRUE(g_lab->Spawn(3, "/shared/node3/iscsid.log", {"iscsid", "-f"}).ok());
  // clock-jump: node3's clock moves, node1's does not.
  const auto clock = [](int n) {
    int64_t t = 0;
    EXPECT_TRUE(absl::SimpleAtoi(Sh(n, "date +%s"), &t));
    return t;
  };
  ASSERT_TRUE(g_lab->ClockJump(3, 3600).ok());
  ExpectLastEvent("clock-jump", "node3");
  EXPECT_NEAR(static_cast<double>(clock(3) - clock(1)), 3600.0, 30.0);
  ASSERT_TRUE(g_lab->ClockJump(3, -3600).ok());
  EXPECT_NEAR(static_cast<double>(clock(3) - clock(1)), 0.0, 30.0);
  // nfs-restart: the server comes back and the clients' mounts work again.
  ASSERT_TRUE(g_lab->NfsRestart().ok());
  ExpectLastEvent("nfs-restart", "storage");
  EXPECT_EQ(Status(1, "timeout 60 sh -c 'echo after > /mnt/nfs/after-restart.txt'"), 0);
  EXPECT_EQ(Sh(2, "cat /mnt/nfs/after-restart.txt"), "after");
}

// UML's harddog: wdmd pets it from inside the node, its timer runs in a host
// process (uml_watchdog). A frozen node cannot pet it, and the host kills
// the node about 60 s after the last pet: what resets a node whose sanlock
// leases cannot be renewed, even when its kernel is stuck.
TEST_F(ClusterLabTest, AFrozenNodeIsKilledByItsWatchdogFromTheHost) {
  ASSERT_EQ(Status(3, "pgrep -x wdmd >/dev/null"), 0) << "wdmd is not running on node3";
  // The DLM would fence the frozen node within seconds: only the watchdog here.
  ASSERT_TRUE(g_lab->SetFencing(false).ok());
  const absl::Time frozen = absl::Now();
  ASSERT_TRUE(g_lab->Freeze(3).ok());
  const absl::Duration dead_after = g_lab->WaitDead(3, frozen, absl::Seconds(150));
  std::printf("node3 frozen: killed by its watchdog after %.1f s (harddog timeout 60 s, wdmd "
              "pets every 10 s)\n", absl::ToDoubleSeconds(dead_after));
  EXPECT_GE(dead_after, absl::Seconds(49)) << "killed before the watchdog could have fired";
  EXPECT_LE(dead_after, absl::Seconds(75)) << "the watchdog did not kill the frozen node";
  ASSERT_TRUE(g_lab->SetFencing(true).ok());
  ASSERT_TRUE(g_lab->Restart(3).ok());
  EXPECT_EQ(Status(3, "pgrep -x wdmd >/dev/null"), 0);
}

}  // namespace
}  // namespace latchkey
