// The posixfd backend across hosts: latchd on three cluster lab nodes, its
// locks on the storage node's NFSv4 export (lab/examples/
// latchd-posixfd-nfs.conf: lock_target = "image", disk images on /mnt/nfs),
// driven with latchctl. What libvirt's lockd deployment relies on: POSIX
// locks that one NFS server grants to every host. Then the same on GFS2 on
// a shared LUN, whose POSIX locks are DLM plocks (dlm_controld).
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

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
using lab::ClusterLab;
using lab::NodeLatchd;
using lab::Runfile;
using Vm = NodeLatchd::Vm;

constexpr char kSocket[] = "/run/latchkey-posixfd/latchd.sock";
constexpr char kGfsSocket[] = "/run/latchkey-gfs/latchd.sock";  // the GFS2 latchd


ClusterLab* g_lab = nullptr;

class PosixfdClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    lab::ClusterLabOptions o;
    o.nodes = 3;
    o.storage = true;
    o.luns = {"lease:64", "vm:256", "gfs:256"};
    absl::StatusOr<std::unique_ptr<ClusterLab>> lab = ClusterLab::Start(o);
    ASSERT_TRUE(lab.ok()) << lab.status();
    g_lab = lab->release();
    ASSERT_TRUE(g_lab->Install({Runfile("agent/latchd"), Runfile("tools/latchctl")}).ok());
    absl::Status s = lab::InstallContractSuite(g_lab, "backends/posixfd/latchkey-posixfd.so");
    ASSERT_TRUE(s.ok()) << s;
    // The shipped example, as a researcher would use it.
    ASSERT_EQ(system(absl::StrCat("cp ", Runfile("lab/examples/latchd-posixfd-nfs.conf"), " ",
                                  g_lab->shared(), "/")
                         .c_str()),
              0);
    StartLatchds("latchd-posixfd-nfs", kSocket);
  }

  static void TearDownTestSuite() {
    if (g_lab == nullptr) return;
    for (int n = 1; n <= 3; ++n) {
      (void)g_lab->Sh(n, "pkill -x latchd; for i in $(seq 50); do pgrep -x latchd >/dev/null || break; "
                         "sleep 0.1; done; umount /mnt/gfs 2>/dev/null; true");
    }
    const char* out = getenv("TEST_UNDECLARED_OUTPUTS_DIR");
    if (out != nullptr) (void)g_lab->CollectLogs(absl::StrCat(out, "/lab-logs"));
    EXPECT_TRUE(g_lab->Stop().ok());
    delete g_lab;
    g_lab = nullptr;
  }

  void SetUp() override { ASSERT_NE(g_lab, nullptr) << "the lab did not start"; }

 public:
  // latchd on every node with /shared/NAME.conf, logging to
  // /shared/nodeK/NAME.log; returns when each answers at `socket`.
  static void StartLatchds(const std::string& name, const std::string& socket) {
    for (int n = 1; n <= 3; ++n) {
      absl::Status s = NodeLatchd(g_lab, socket).Start(
          n, absl::StrCat("/shared/", name, ".conf"), absl::StrCat("/shared/node", n, "/", name, ".log"));
      ASSERT_TRUE(s.ok()) << s;
    }
  }

 protected:
  // latchctl on the node, against the latchd at `socket` (default: the NFS one).
  static ClusterLab::Result Ctl(int node, const std::vector<std::string>& args,
                                const std::string& socket = kSocket) {
    return NodeLatchd(g_lab, socket).Ctl(node, args);
  }
  static Vm NewVm(int node, const std::string& name, const std::string& socket = kSocket) {
    return NodeLatchd(g_lab, socket).NewVm(node, name);
  }
  // `latchctl acquire --wait` of `img` for `vm`, in the background on its
  // node; WaiterStatus reads its exit status ("none" while it waits).
  static void StartWaiter(const Vm& vm, const std::string& img, int wait_seconds) {
    absl::Status s = NodeLatchd(g_lab, kSocket).StartWaiter(vm, {"--disk", img}, wait_seconds, "waiter");
    ASSERT_TRUE(s.ok()) << s;
  }
  static std::string WaiterStatus(const Vm& vm, absl::Duration within) {
    return NodeLatchd(g_lab, kSocket).WaiterStatus(vm, "waiter", within);
  }
  static std::string Image(const std::string& base) {
    const std::string path =
        absl::StrCat("/mnt/nfs/", base, "-", absl::ToUnixMicros(absl::Now()) % 100000000, ".img");
    EXPECT_TRUE(g_lab->Sh(1, absl::StrCat("truncate -s 1M ", path)).ok());
    return path;
  }
};

// The contract suite on node2 with its lock directories (and the images of
// its disk cases) on the NFS export.
TEST_F(PosixfdClusterTest, ContractSuitePassesOnALabNodeOverNfs) {
  absl::StatusOr<ClusterLab::Result> r =
      lab::RunContractSuite(g_lab, 2, "posixfd", "lock_dir = \"@TMP@\"", "/mnt/nfs");
  ASSERT_TRUE(r.ok()) << r.status();
  std::printf("%s\n", r->out.c_str());
  EXPECT_EQ(r->status, 0) << r->out << r->err;
  EXPECT_THAT(r->out, HasSubstr("[  PASSED  ]"));
  EXPECT_THAT(r->out, testing::Not(HasSubstr("[  FAILED  ]")));
}

TEST_F(PosixfdClusterTest, ExclusiveConflictAcrossNodesThenGrantAfterRelease) {
  const std::string img = Image("ex");
  Vm a = NewVm(1, "vm-alpha");
  Vm b = NewVm(2, "vm-bravo");
  ClusterLab::Result g = Ctl(1, {"acquire", "--disk", img, "--uuid", a.uuid});
  ASSERT_EQ(g.status, 0) << g.err;
  ClusterLab::Result refused = Ctl(2, {"acquire", "--disk", img, "--uuid", b.uuid});
  EXPECT_EQ(refused.status, 1) << refused.out << refused.err;
  EXPECT_THAT(refused.err, HasSubstr(img));
  // Shared-read is refused too.
  refused = Ctl(2, {"acquire", "--disk", img, "--mode", "shared-read", "--uuid", b.uuid});
  EXPECT_EQ(refused.status, 1) << refused.err;
  EXPECT_EQ(Ctl(1, {"release", "--uuid", a.uuid}).status, 0);
  g = Ctl(2, {"acquire", "--disk", img, "--uuid", b.uuid});
  EXPECT_EQ(g.status, 0) << g.err;
  EXPECT_EQ(Ctl(2, {"release", "--uuid", b.uuid}).status, 0);
}

TEST_F(PosixfdClusterTest, SharedReadersOnThreeNodesExcludeAWriter) {
  const std::string img = Image("sh");
  Vm a = NewVm(1, "reader-1"), b = NewVm(2, "reader-2"), c = NewVm(3, "writer-3");
  EXPECT_EQ(Ctl(1, {"acquire", "--disk", img, "--mode", "shared-read", "--uuid", a.uuid}).status, 0);
  EXPECT_EQ(Ctl(2, {"acquire", "--disk", img, "--mode", "shared-read", "--uuid", b.uuid}).status, 0);
  ClusterLab::Result w = Ctl(3, {"acquire", "--disk", img, "--uuid", c.uuid});
  EXPECT_EQ(w.status, 1) << w.err;
  for (const Vm* vm : {&a, &b}) EXPECT_EQ(Ctl(vm->node, {"release", "--uuid", vm->uuid}).status, 0);
  EXPECT_EQ(Ctl(3, {"acquire", "--disk", img, "--uuid", c.uuid}).status, 0);
  EXPECT_EQ(Ctl(3, {"release", "--uuid", c.uuid}).status, 0);
}

TEST_F(PosixfdClusterTest, AnotherMountOfTheExportIsTheSameDisk) {
  // node2 reaches the image through a second mount under another path and
  // server name: the disk identity (NFS file handle) makes it one lock.
  const std::string img = Image("alias");
  const std::string alias = "/mnt/alias/" + img.substr(std::string("/mnt/nfs/").size());
  ASSERT_TRUE(g_lab->Sh(2, "mkdir -p /mnt/alias && mount -t nfs4 -o vers=4.2 storage:/srv/nfs /mnt/alias").ok());
  Vm a = NewVm(1, "vm-owner");
  Vm b = NewVm(2, "vm-alias");
  ASSERT_EQ(Ctl(1, {"acquire", "--disk", img, "--uuid", a.uuid}).status, 0);
  ClusterLab::Result refused = Ctl(2, {"acquire", "--disk", alias, "--uuid", b.uuid});
  EXPECT_EQ(refused.status, 1) << "another spelling of a held disk was granted: " << refused.out;
  EXPECT_EQ(Ctl(1, {"release", "--uuid", a.uuid}).status, 0);
  EXPECT_EQ(Ctl(2, {"acquire", "--disk", alias, "--uuid", b.uuid}).status, 0);
  EXPECT_EQ(Ctl(2, {"release", "--uuid", b.uuid}).status, 0);
  EXPECT_TRUE(g_lab->Sh(2, "umount /mnt/alias").ok());
}

TEST_F(PosixfdClusterTest, WaitingAcquireIsGrantedWhenTheOtherNodeReleases) {
  const std::string img = Image("wait");
  Vm a = NewVm(1, "vm-holder");
  Vm b = NewVm(3, "vm-waiter");
  ASSERT_EQ(Ctl(1, {"acquire", "--disk", img, "--uuid", a.uuid}).status, 0);
  StartWaiter(b, img, 60);
  EXPECT_EQ(WaiterStatus(b, absl::Seconds(2)), "none") << "granted while held";
  const absl::Time released = absl::Now();
  ASSERT_EQ(Ctl(1, {"release", "--uuid", a.uuid}).status, 0);
  EXPECT_EQ(WaiterStatus(b, absl::Seconds(30)), "0");
  std::printf("posixfd on NFS: waiter on node3 granted %.1f s after node1's release\n",
              absl::ToDoubleSeconds(absl::Now() - released));
  EXPECT_EQ(Ctl(3, {"release", "--uuid", b.uuid}).status, 0);
}

// GFS2 on the LUN "gfs", mounted on every node, a second latchd per node
// with posixfd's lock directory on it. Made once, by the first GFS2 case.
void MakeGfs2Once() {
  static bool made = false;
  if (made) return;
  made = true;
  ASSERT_TRUE(g_lab->Sh(1, "mkfs.gfs2 -O -p lock_dlm -t latchkey:gfs0 -j 3 -J 16 /dev/lab/gfs "
                           ">/dev/null 2>&1 || { echo mkfs.gfs2 failed >&2; exit 1; }")
                  .ok());
  for (int n = 1; n <= 3; ++n) {
    absl::StatusOr<std::string> m = g_lab->Sh(
        n, "mkdir -p /mnt/gfs && mount -t gfs2 /dev/lab/gfs /mnt/gfs && mkdir -p /mnt/gfs/locks");
    ASSERT_TRUE(m.ok()) << m.status();
  }
  ASSERT_EQ(system(absl::StrCat(
                "sed -e 's|/run/latchkey-posixfd|/run/latchkey-gfs|g' -e "
                "'s|^posixfd_lock_dir = .*|posixfd_lock_dir = \"/mnt/gfs/locks\"|' -e "
                "'s|^posixfd_lock_target = .*|posixfd_lock_target = \"lockdir\"|' ",
                Runfile("lab/examples/latchd-posixfd-nfs.conf"), " >", g_lab->shared(),
                "/latchd-gfs.conf")
                .c_str()),
            0);
  PosixfdClusterTest::StartLatchds("latchd-gfs", kGfsSocket);
}

TEST_F(PosixfdClusterTest, OnGfs2TheLocksAreDlmPlocksThatConflictAcrossNodes) {
  MakeGfs2Once();
  const std::string img =
      absl::StrCat("/mnt/gfs/disk-", absl::ToUnixMicros(absl::Now()) % 100000000, ".img");
  ASSERT_TRUE(g_lab->Sh(1, absl::StrCat("truncate -s 1M ", img)).ok());
  Vm a = NewVm(1, "gfs-alpha", kGfsSocket), b = NewVm(2, "gfs-bravo", kGfsSocket);
  ClusterLab::Result g = Ctl(1, {"acquire", "--disk", img, "--uuid", a.uuid}, kGfsSocket);
  ASSERT_EQ(g.status, 0) << g.err;
  EXPECT_THAT(g.out, HasSubstr("identity: file"));  // GFS2's UUID + the file handle
  ClusterLab::Result refused = Ctl(2, {"acquire", "--disk", img, "--uuid", b.uuid}, kGfsSocket);
  EXPECT_EQ(refused.status, 1) << refused.out << refused.err;
  EXPECT_THAT(refused.err, HasSubstr("gfs-alpha"));
  EXPECT_THAT(refused.err, HasSubstr("node1"));
  EXPECT_EQ(Ctl(1, {"release", "--uuid", a.uuid}, kGfsSocket).status, 0);
  EXPECT_EQ(Ctl(2, {"acquire", "--disk", img, "--uuid", b.uuid}, kGfsSocket).status, 0);
  EXPECT_EQ(Ctl(2, {"release", "--uuid", b.uuid}, kGfsSocket).status, 0);
}

// node1's storage wire stalls past its NFSv4 lease while it holds a disk;
// node2 asks for it, and the server gives it away. When node1 reaches the
// server again its client finds the lock lost; latchd's checker must see
// it and apply the owner's policy (terminate), since fcntl still says held.
TEST_F(PosixfdClusterTest, ALockLostWithAnExpiredNfsLeaseStopsItsOwner) {
  const std::string img = Image("lease");
  NodeLatchd latchd(g_lab, kSocket);
  Vm a = NewVm(1, "vm-lost-lease");
  Vm b = NewVm(2, "vm-taker");
  ASSERT_EQ(Ctl(1, {"acquire", "--disk", img, "--uuid", a.uuid}).status, 0);
  const absl::Time stalled = absl::Now();
  ASSERT_TRUE(g_lab->StorageStall(1).ok());
  StartWaiter(b, img, 120);
  EXPECT_EQ(WaiterStatus(b, absl::Seconds(90)), "0") << "node2 never got the disk";
  const absl::Duration granted = latchd.WaiterEndedAt(b, "waiter") - stalled;
  EXPECT_GE(granted, absl::Seconds(5)) << "granted before node1's lease could expire";
  EXPECT_TRUE(latchd.Alive(a)) << "node1's owner stopped while its storage was stalled";
  const absl::Time resumed = absl::Now();
  ASSERT_TRUE(g_lab->StorageResume(1).ok());
  absl::Duration stopped_after = absl::InfiniteDuration();
  while (absl::Now() - resumed < absl::Seconds(90)) {
    if (!latchd.Alive(a)) {
      stopped_after = absl::Now() - resumed;
      break;
    }
    absl::SleepFor(absl::Milliseconds(250));
  }
  std::printf("posixfd on NFS: node1 stalled holding a disk; node2 granted %.1f s after the stall "
              "(NFSv4 lease 10 s); node1's owner stopped %.1f s after its storage came back "
              "(check_ms 2000)\n",
              absl::ToDoubleSeconds(granted), absl::ToDoubleSeconds(stopped_after));
  EXPECT_LT(stopped_after, absl::Seconds(60)) << "latchd never noticed the lost lock";
  absl::StatusOr<std::string> log = g_lab->Sh(
      1, "grep -h 'LOCK FAILURE' /shared/node1/latchd-posixfd-nfs.log | tail -n 1");
  ASSERT_TRUE(log.ok());
  EXPECT_THAT(*log, HasSubstr("vm-lost-lease"));
  EXPECT_THAT(*log, HasSubstr("no longer honours the lock"));
  // node1 holds nothing now; node2 still does.
  ClusterLab::Result st = Ctl(1, {"status"});
  EXPECT_THAT(st.out, testing::Not(HasSubstr(img)));
  ClusterLab::Result refused = Ctl(1, {"acquire", "--disk", img, "--uuid", NewVm(1, "vm-again").uuid});
  EXPECT_EQ(refused.status, 1) << refused.out << refused.err;
  EXPECT_EQ(Ctl(2, {"release", "--uuid", b.uuid}).status, 0);
}

// Node failure comes last: it changes the lab (Stop's reset restarts it).
// A killed node cannot unlock; the NFS server frees its locks when its
// NFSv4 lease expires (the lab's: 10 s), and a waiter on another node is
// granted then.
TEST_F(PosixfdClusterTest, AKilledNodesLocksAreFreedWhenItsNfsLeaseExpires) {
  const std::string img = Image("kill");
  Vm a = NewVm(1, "vm-on-killed-node");
  Vm b = NewVm(2, "vm-survivor");
  ASSERT_EQ(Ctl(1, {"acquire", "--disk", img, "--uuid", a.uuid}).status, 0);
  StartWaiter(b, img, 120);
  EXPECT_EQ(WaiterStatus(b, absl::Seconds(1)), "none") << "granted while held";
  const absl::Time killed = absl::Now();
  ASSERT_TRUE(g_lab->Kill(1).ok());
  EXPECT_EQ(WaiterStatus(b, absl::Seconds(120)), "0");
  const absl::Duration after = absl::Now() - killed;
  std::printf("posixfd on NFS: node1 killed while holding; node2's waiter granted %.1f s later "
              "(NFSv4 lease 10 s)\n", absl::ToDoubleSeconds(after));
  // Not before the server could have known: a lease has to run out.
  EXPECT_GE(after, absl::Seconds(5));
  EXPECT_EQ(Ctl(2, {"release", "--uuid", b.uuid}).status, 0);
  ASSERT_TRUE(g_lab->Restart(1).ok());
}

}  // namespace
}  // namespace latchkey
