// Automatic sanlock leases in a lease area on shared block storage with
// 4096-byte sectors, across the cluster lab's nodes: the lockspace "vms"
// and its area on the iSCSI LUN "lease4k" (LIO exports it with 4096-byte
// logical sectors; 1 MiB alignment, see the example's header), one latchd per node started from
// lab/examples/latchd-sanlock-slots.conf and driven with latchctl. Last,
// the sanlock daemon of a node is killed while an owner holds a lease:
// latchd stops the owner at once, wdmd lets the watchdog reset the node.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lab/cluster_lab.h"
#include "lab/node_latchd.h"
#include "nlohmann/json.hpp"

namespace latchkey {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;
using lab::ClusterLab;
using lab::NodeLatchd;
using lab::Runfile;
using Vm = NodeLatchd::Vm;

constexpr int kIoTimeout = 2;
constexpr char kSocket[] = "/run/latchkey-slots/latchd.sock";
constexpr char kLun[] = "/dev/lab/lease4k";

ClusterLab* g_lab = nullptr;
NodeLatchd* g_latchd = nullptr;

std::string Conf(int node) { return absl::StrCat("/shared/latchd-slots-", node, ".conf"); }
std::string Log(int node) { return absl::StrCat("/shared/node", node, "/latchd-slots.log"); }

absl::Status WaitJoined(int node, int seconds) {
  absl::StatusOr<std::string> joined = g_lab->Sh(
      node, absl::StrCat("for i in $(seq ", 2 * seconds, "); do latchctl --socket ", kSocket,
                         " status | grep -q '\"state\":\"joined\"' && exit 0; sleep 0.5; done; "
                         "latchctl --socket ", kSocket, " status >&2; exit 1"),
      absl::Seconds(seconds + 60));
  return joined.ok() ? absl::OkStatus() : joined.status();
}

void StartLatchd(int node) {
  absl::Status s = g_latchd->Start(node, Conf(node), Log(node));
  ASSERT_TRUE(s.ok()) << s;
  s = WaitJoined(node, 40);
  ASSERT_TRUE(s.ok()) << s;
}

class SanlockAreaClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    lab::ClusterLabOptions o;
    o.nodes = 3;
    o.storage = true;
    o.sanlock = true;
    o.luns = {"lease:256", "lease4k:1024:4096"};
    absl::StatusOr<std::unique_ptr<ClusterLab>> lab = ClusterLab::Start(o);
    ASSERT_TRUE(lab.ok()) << lab.status();
    g_lab = lab->release();
    g_latchd = new NodeLatchd(g_lab, kSocket);
    ASSERT_TRUE(g_lab
                    ->Install({Runfile("agent/latchd"), Runfile("tools/latchctl"),
                               Runfile("backends/sanlock/latchkey-sanlock.so")})
                    .ok());
    // A fresh lockspace and area each run (the LUN outlives suites), left
    // by every daemon first.
    for (int n = 1; n <= 3; ++n) {
      LeaveLockspace(n);
      // Still joined (orphan leases of a killed latchd keep it in use, as
      // designed): only a restart of the node lets go of it.
      absl::StatusOr<std::string> st = g_lab->Sh(n, "sanlock client status | grep -c '^s vms:' || true");
      if (st.ok() && *st != "0\n") {
        ASSERT_TRUE(g_lab->Restart(n).ok());
      }
    }
    absl::StatusOr<std::string> init = g_lab->Sh(
        1, absl::StrCat("dd if=/dev/zero of=", kLun, " bs=8M count=5 oflag=direct 2>&1 && "
                        "sanlock direct init -o ", kIoTimeout, " -Z 4096 -A 1M -s vms:0:", kLun,
                        ":0"));
    ASSERT_TRUE(init.ok()) << init.status();
    for (int n = 1; n <= 3; ++n) {
      ASSERT_EQ(system(absl::StrCat("sed 's/^sanlock_host_id = .*/sanlock_host_id = ", n, "/' ",
                                    Runfile("lab/examples/latchd-sanlock-slots.conf"), " >",
                                    g_lab->shared(), "/latchd-slots-", n, ".conf")
                           .c_str()),
                0);
    }
    for (int n = 1; n <= 3; ++n) StartLatchd(n);
  }

  static void TearDownTestSuite() {
    if (g_lab == nullptr) return;
    const char* out = getenv("TEST_UNDECLARED_OUTPUTS_DIR");
    if (out != nullptr) (void)g_lab->CollectLogs(absl::StrCat(out, "/lab-logs"));
    // Leave the lockspace where the node still runs, so later suites'
    // storage faults touch only their own.
    for (int n = 1; n <= 3; ++n) LeaveLockspace(n);
    EXPECT_TRUE(g_lab->Stop().ok());
    delete g_latchd;
    delete g_lab;
    g_lab = nullptr;
  }

  void SetUp() override { ASSERT_NE(g_lab, nullptr) << "the lab did not start"; }

  // Stops the node's slots latchd and has its daemon leave "vms" (where the
  // node runs), so other suites' storage faults touch only their own.
  static void LeaveLockspace(int n) {
    (void)g_lab->Sh(n, absl::StrCat("pkill -f 'latchd --config /shared/latchd-slot[s]'; sleep 0.5; "
                                    "sanlock client rem_lockspace -s vms:", n, ":", kLun,
                                    ":0 >/dev/null 2>&1; true"),
                    absl::Seconds(40));
  }

  static ClusterLab::Result Ctl(int node, const std::vector<std::string>& args) {
    return g_latchd->Ctl(node, args);
  }
  static ClusterLab::Result Acquire(const Vm& vm, const std::string& img) {
    return Ctl(vm.node, {"acquire", "--disk", img, "--uuid", vm.uuid});
  }
  static ClusterLab::Result ReleaseAll(const Vm& vm) {
    return Ctl(vm.node, {"release", "--uuid", vm.uuid});
  }
  static std::string Image(const std::string& base) {
    const std::string path =
        absl::StrCat("/mnt/nfs/", base, "-", absl::ToUnixMicros(absl::Now()) % 100000000, ".img");
    EXPECT_TRUE(g_lab->Sh(1, absl::StrCat("truncate -s 1M ", path)).ok());
    return path;
  }
  static json Leases(int node) {
    ClusterLab::Result r = Ctl(node, {"leases", "--json"});
    EXPECT_EQ(r.status, 0) << r.err;
    json j = json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << r.out;
    return j.is_discarded() ? json() : j["lockspaces"][0];
  }
};

TEST_F(SanlockAreaClusterTest, ALunHasItsSectorSizeOnEveryNode) {
  for (int n = 1; n <= 3; ++n) {
    absl::StatusOr<std::string> ss =
        g_lab->Sh(n, absl::StrCat("blockdev --getss ", kLun, " /dev/lab/lease"));
    ASSERT_TRUE(ss.ok()) << ss.status();
    EXPECT_EQ(*ss, "4096\n512\n") << "node" << n;
  }
}

// Until the area is formatted automatic leases are refused, saying how;
// formatted once from one node, every node uses it: conflicts name the
// holder's host (read at 4096-byte steps), a waiter is granted on release.
TEST_F(SanlockAreaClusterTest, BFormatOnceThenEveryNodeUsesTheArea) {
  const std::string img = Image("area");
  Vm a = g_latchd->NewVm(2, "vm-a");
  Vm b = g_latchd->NewVm(3, "vm-b");
  ClusterLab::Result r = Acquire(a, img);
  EXPECT_EQ(r.status, 3) << r.out << r.err;
  EXPECT_THAT(r.err, HasSubstr("leases-format --lockspace vms"));
  r = Ctl(1, {"leases-format", "--lockspace", "vms"});
  ASSERT_EQ(r.status, 0) << r.err;
  r = Ctl(2, {"leases"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("4096-byte sectors, 1 MiB alignment: 0 of 990 slots used"));
  std::printf("%s", r.out.c_str());
  ASSERT_EQ(Acquire(a, img).status, 0);
  r = Acquire(b, img);
  EXPECT_EQ(r.status, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("node2 (host_id 2)"));
  ASSERT_TRUE(g_latchd->StartWaiter(b, {"--disk", img}, 60, "area").ok());
  EXPECT_EQ(g_latchd->WaiterStatus(b, "area", absl::Seconds(1)), "none");
  const absl::Time released = absl::Now();
  ASSERT_EQ(ReleaseAll(a).status, 0);
  EXPECT_EQ(g_latchd->WaiterStatus(b, "area", absl::Seconds(30)), "0");
  std::printf("sanlock slots on 4K: waiter granted %.1f s after the release\n",
              absl::ToDoubleSeconds(g_latchd->WaiterEndedAt(b, "area") - released));
  json ls = Leases(1);
  ASSERT_EQ(ls["leases"].size(), 1u) << ls.dump();
  EXPECT_EQ(ls["leases"][0]["held"], true);
  EXPECT_EQ(ls["leases"][0]["last_holder"], "node3 (host_id 3)");
  EXPECT_EQ(ls["leases"][0]["allocated_by"], "node2 (host_id 2)");
  EXPECT_EQ(ReleaseAll(b).status, 0);
}

// 50 rounds (or LATCHKEY_SLOT_ROUNDS): in each, all three nodes create the
// same new disk's lease at once. One lease per disk, one winner per round.
TEST_F(SanlockAreaClusterTest, CRoundsOfEveryNodeCreatingOneDiskAtOnce) {
  // 50 rounds (about 1.4 s each here); LATCHKEY_SLOT_ROUNDS (1..500)
  // changes it.
  int kRounds = 50;
  if (const char* e = getenv("LATCHKEY_SLOT_ROUNDS")) kRounds = std::clamp(atoi(e), 1, 500);
  const std::string base = Image("race");
  ASSERT_TRUE(g_lab
                  ->Sh(1, absl::StrCat("for i in $(seq 0 ", kRounds - 1, "); do truncate -s 1M ",
                                       base, ".$i; done"))
                  .ok());
  std::vector<Vm> vms;
  for (int n = 1; n <= 3; ++n) vms.push_back(g_latchd->NewVm(n, absl::StrCat("racer", n)));
  const size_t before = Leases(1)["leases"].size();
  int wins[4] = {};
  const absl::Time start = absl::Now();
  for (int round = 0; round < kRounds; ++round) {
    const std::string img = absl::StrCat(base, ".", round);
    ClusterLab::Result res[3];
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < 3; ++i) {
      threads.emplace_back([&, i] {
        ++ready;
        while (ready < 3) {
        }
        res[i] = Acquire(vms[i], img);
      });
    }
    for (std::thread& t : threads) t.join();
    int winners = 0;
    for (int i = 0; i < 3; ++i) {
      if (res[i].status == 0) {
        ++winners;
        ++wins[i + 1];
        continue;
      }
      EXPECT_EQ(res[i].status, 1) << "round " << round << " node" << i + 1 << ": " << res[i].err;
      EXPECT_THAT(res[i].err, HasSubstr("(host_id ")) << "round " << round;
    }
    ASSERT_EQ(winners, 1) << "round " << round;
    for (int i = 0; i < 3; ++i) {
      if (res[i].status == 0) {
        ASSERT_EQ(ReleaseAll(vms[i]).status, 0);
      }
    }
  }
  const absl::Duration took = absl::Now() - start;
  std::printf("sanlock slots on 4K: %d rounds of 3 nodes creating one disk at once in %.1f s "
              "(%.2f s a round, with the release); wins node1 %d, node2 %d, node3 %d\n",
              kRounds, absl::ToDoubleSeconds(took), absl::ToDoubleSeconds(took) / kRounds,
              wins[1], wins[2], wins[3]);
  json ls = Leases(3);
  std::map<std::string, int> per_name;
  std::set<int> slots;
  for (const json& l : ls["leases"]) {
    ++per_name[l["name"].get<std::string>()];
    EXPECT_TRUE(slots.insert(l["slot"].get<int>()).second) << "slot twice: " << l.dump();
  }
  for (const auto& [name, n] : per_name) EXPECT_EQ(n, 1) << name;
  EXPECT_EQ(ls["leases"].size(), before + kRounds) << ls.dump();
}

// A held lease is never freed; released, it is freed by name and its disk
// gets a slot again on its next use.
TEST_F(SanlockAreaClusterTest, DSlotsAreFreedOnlyWhenNobodyHoldsThem) {
  const std::string img = Image("free");
  Vm a = g_latchd->NewVm(1, "vm-free");
  ASSERT_EQ(Acquire(a, img).status, 0);
  ClusterLab::Result inq = Ctl(1, {"inquire", "--uuid", a.uuid, "--json"});
  json locks = json::parse(inq.out, nullptr, false);
  ASSERT_FALSE(locks.is_discarded()) << inq.out;
  const std::string name = locks["locks"][0]["name"];
  ClusterLab::Result r = Ctl(2, {"leases-clean", "--remove", name});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("held by node1 (host_id 1)"));
  ASSERT_EQ(ReleaseAll(a).status, 0);
  // sanlock releases asynchronously: the lease may show its holder a moment.
  for (int i = 0; i < 20; ++i) {
    r = Ctl(2, {"leases-clean", "--remove", name});
    if (r.status != 0 || r.out.find("freed vms/") != std::string::npos) break;
    absl::SleepFor(absl::Milliseconds(250));
  }
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("freed vms/", name)));
  ClusterLab::Result again = Acquire(a, img);
  ASSERT_EQ(again.status, 0) << again.err;
  const json ls = Leases(3);
  bool found = false;
  for (const json& l : ls["leases"]) found = found || l["name"] == name;
  EXPECT_TRUE(found) << name << " not in " << ls.dump() << "\n" << again.out;
  EXPECT_EQ(ReleaseAll(a).status, 0);
}

// The sanlock daemon of node3 is killed while an owner holds a lease: its
// latchd notices the broken connection and stops the owner at once; wdmd,
// its sanlock client gone, lets the watchdog reset the node; node1 is
// granted the lease only after that. Last: node3 stays down.
TEST_F(SanlockAreaClusterTest, ZKilledDaemonStopsTheOwnerAndTheWatchdogResetsTheNode) {
  const std::string img = Image("daemon");
  Vm a = g_latchd->NewVm(3, "vm-doomed");
  Vm b = g_latchd->NewVm(1, "vm-next");
  ASSERT_EQ(Acquire(a, img).status, 0);
  ASSERT_TRUE(g_latchd->StartWaiter(b, {"--disk", img}, 200, "daemon").ok());
  const absl::Time killed = absl::Now();
  ASSERT_TRUE(g_lab->DaemonKill(3, "sanlock", "KILL").ok());
  absl::Duration stopped = absl::InfiniteDuration();
  while (absl::Now() - killed < absl::Seconds(20)) {
    if (!g_latchd->Alive(a)) {
      stopped = absl::Now() - killed;
      break;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  const absl::Duration dead = g_lab->WaitDead(3, killed, absl::Seconds(150));
  EXPECT_EQ(g_latchd->WaiterStatus(b, "daemon", absl::Seconds(120)), "0");
  const absl::Duration granted = g_latchd->WaiterEndedAt(b, "daemon") - killed;
  std::printf("sanlock daemon killed on node3: its owner stopped after %.1f s, the node reset "
              "by its watchdog after %.1f s, node1 granted after %.1f s\n",
              absl::ToDoubleSeconds(stopped), absl::ToDoubleSeconds(dead),
              absl::ToDoubleSeconds(granted));
  EXPECT_LT(stopped, absl::Seconds(5)) << "latchd did not notice the daemon's death";
  EXPECT_LE(dead, absl::Seconds(8 * kIoTimeout + 60 + 10)) << "the watchdog never fired";
  EXPECT_GE(granted, dead) << "node1 was granted while node3 still ran";
  absl::StatusOr<std::string> log = g_lab->Sh(1, absl::StrCat("cat /shared/node3/latchd-slots.log"));
  ASSERT_TRUE(log.ok());
  EXPECT_THAT(*log, HasSubstr("the sanlock daemon died"));
  EXPECT_EQ(ReleaseAll(b).status, 0);
}

}  // namespace
}  // namespace latchkey
