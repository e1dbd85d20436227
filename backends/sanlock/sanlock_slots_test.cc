// Automatic leases as slots of a lease area (lease_area.h), across hosts: a
// sanlock lab of three real daemons over one shared loop device holding the
// lockspace and the area, one real latchd per host. Concurrent creation,
// the layout every host must agree on, freeing and reusing slots.
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/client.h"
#include "agent/testing/latchd_process.h"
#include "backends/sanlock/lease_area.h"
#include "backends/sanlock/testing/sanlock_hosts.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lab/sanlock_lab.h"

namespace latchkey {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;
using lab::SanlockLab;
using testing::LatchdProcess;
using testing::SanlockHosts;
using testing::TempDir;
using testing::Vm;

constexpr int kHosts = 3;
constexpr uint64_t kAreaOffset = 16 * lab::kMiB;
constexpr uint64_t kAreaSize = 64 * lab::kMiB;  // header, allocator, 62 slots

class SanlockSlotsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    lab::SanlockLabOptions o;
    o.hosts = kHosts;
    o.lockspace = "lab";
    o.io_timeout = 1;
    o.resources = 1;
    o.size_mib = 128;
    o.loop_device = true;
    hosts_ = new SanlockHosts();
    absl::Status s = hosts_->Start(o, [](int h, const SanlockLab& lab) {
      return Config(lab, h, absl::StrCat("lab:", lab.LeasePath(), ":", kAreaOffset, ":", kAreaSize));
    });
    ASSERT_TRUE(s.ok()) << s;
    lab_ = &hosts_->lab();
    for (int h = 1; h <= kHosts; ++h) latchd_[h] = &hosts_->latchd(h);
  }

  static void TearDownTestSuite() {
    if (hosts_ != nullptr) {
      EXPECT_TRUE(hosts_->Stop().ok());
    }
    delete hosts_;
    hosts_ = nullptr;
  }

  void TearDown() override { hosts_->PrintLogsIfFailed(); }

  static std::string Area(uint64_t offset = kAreaOffset) {
    return absl::StrCat("lab:", lab_->LeasePath(), ":", offset, ":", kAreaSize);
  }

  // area empty: lease files in the lab's lease_dir. One name per disk (its
  // identity), so one slot per disk.
  static std::string Config(const SanlockLab& lab, int h, const std::string& area) {
    return absl::StrCat(SanlockHosts::BaseConfig(lab, h), "disk_names = \"identity\"\n",
                        area.empty() ? "" : absl::StrCat("sanlock_lease_areas = [ \"", area, "\" ]\n"),
                        "sanlock_lease_dir = \"", lab.LeaseDir(), "\"\n");
  }
  static std::string Config(int h, const std::string& area) { return Config(*lab_, h, area); }

  static absl::StatusOr<json> Call(LatchdProcess& d, json req) { return SanlockHosts::Call(d, req); }
  static absl::StatusOr<json> Admin(LatchdProcess& d, json request) {
    return SanlockHosts::Admin(d, request);
  }
  static void WaitJoined(LatchdProcess& d) { SanlockHosts::WaitJoined(d); }
  static void Register(LatchdProcess& d, const Vm& vm) { SanlockHosts::Register(d, vm); }
  static absl::StatusOr<json> Acquire(LatchdProcess& d, const Vm& vm, json resources) {
    return SanlockHosts::Acquire(d, vm, resources);
  }
  static absl::StatusOr<json> Release(LatchdProcess& d, const Vm& vm, json resources) {
    return SanlockHosts::Release(d, vm, resources);
  }
  static json Disk(const std::string& n) {
    return json::array({{{"disk", absl::StrCat(lab_->options().dir, "/", n, ".img")}}});
  }

  // Frees every slot nobody holds: clean passes (the first notes, the next
  // frees) until the area is empty. A just-released lease can still show
  // its holder for a moment (sanlock releases asynchronously), so it may
  // take a pass more. Returns how many were freed.
  static size_t FreeAll() {
    size_t freed = 0;
    for (int pass = 0; pass < 10; ++pass) {
      absl::StatusOr<json> c = Admin(*latchd_[1], {{"command", "clean"}, {"unused_for_s", 0}});
      EXPECT_TRUE(c.ok()) << c.status();
      if (c.ok()) freed += (*c)["freed"].size();
      if (pass >= 1 && SlotsByName().empty()) break;
      absl::SleepFor(absl::Milliseconds(200));
    }
    return freed;
  }

  // Waits until the lease `name` shows no holder.
  static void WaitUnheld(const std::string& name) {
    json ls;
    for (int i = 0; i < 100; ++i) {
      SlotsByName(&ls);
      bool held = false;
      for (const json& l : ls.value("leases", json::array())) {
        if (l["name"] == name && l.value("held", false)) held = true;
      }
      if (!held) return;
      absl::SleepFor(absl::Milliseconds(50));
    }
    ADD_FAILURE() << name << " still shows a holder: " << ls.dump();
  }

  // Name -> slots of the area, from host 1's `leases`.
  static std::map<std::string, std::vector<int>> SlotsByName(json* leases = nullptr) {
    std::map<std::string, std::vector<int>> out;
    absl::StatusOr<json> r = Admin(*latchd_[1], {{"command", "leases"}});
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return out;
    const json& ls = (*r)["lockspaces"][0];
    if (leases) *leases = ls;
    for (const json& l : ls.value("leases", json::array())) {
      out[l["name"].get<std::string>()].push_back(l["slot"].get<int>());
    }
    return out;
  }

  static SanlockHosts* hosts_;
  static SanlockLab* lab_;
  static LatchdProcess* latchd_[kHosts + 1];
};

SanlockHosts* SanlockSlotsTest::hosts_ = nullptr;
SanlockLab* SanlockSlotsTest::lab_ = nullptr;
LatchdProcess* SanlockSlotsTest::latchd_[kHosts + 1] = {};

// Until the area is formatted, automatic leases are refused, saying how to
// format it; manual leases work meanwhile. Format is refused to a caller
// without a lockspace, and a second format does not wipe the area.
TEST_F(SanlockSlotsTest, AFormatOnceThenEveryHostUsesTheArea) {
  Vm a("vm-a");
  Register(*latchd_[2], a);
  absl::StatusOr<json> r = Acquire(*latchd_[2], a, Disk("before-format"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("leases-format --lockspace lab"));
  json manual = {{{"lease", "res0"}, {"path", lab_->LeasePath()}, {"offset", lab_->ResourceOffset(0)}}};
  ASSERT_TRUE(Acquire(*latchd_[2], a, manual).ok());
  ASSERT_TRUE(Release(*latchd_[2], a, manual).ok());

  absl::StatusOr<json> f = Admin(*latchd_[1], {{"command", "format"}});
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << f.status();
  f = Admin(*latchd_[1], {{"command", "format"}, {"lockspace", "lab"}});
  ASSERT_TRUE(f.ok()) << f.status();
  const std::string id = (*f)["formatted"];
  EXPECT_EQ(id.size(), 32u);
  // The other hosts see the record at their next automatic lease.
  Vm b("vm-b");
  Register(*latchd_[2], b);
  r = Acquire(*latchd_[2], b, Disk("after-format"));
  ASSERT_TRUE(r.ok()) << r.status();
  // Formatting again keeps the area (same id) and its leases.
  f = Admin(*latchd_[3], {{"command", "format"}, {"lockspace", "lab"}});
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)["formatted"], id);
  json ls;
  std::map<std::string, std::vector<int>> slots = SlotsByName(&ls);
  EXPECT_EQ(slots.size(), 1u) << ls.dump();
  EXPECT_EQ(ls["slots"], 62) << ls.dump();
  EXPECT_EQ(ls["geometry"], "512-byte sectors, 1 MiB alignment");
  ASSERT_EQ(ls["leases"].size(), 1u);
  EXPECT_EQ(ls["leases"][0]["held"], true);
  EXPECT_EQ(ls["leases"][0]["last_holder"], "host2 (host_id 2)");
  EXPECT_TRUE(Release(*latchd_[2], b, Disk("after-format")).ok());
}

// 50 rounds; in each, every host creates the same new disk's lease at
// once: one lease per name, one winner per round, the others refused
// naming the winner.
TEST_F(SanlockSlotsTest, BConcurrentCreationMakesOneLeasePerNameAndOneWinner) {
  constexpr int kRounds = 50;
  Vm vms[kHosts + 1] = {Vm("x"), Vm("vm1"), Vm("vm2"), Vm("vm3")};
  for (int h = 1; h <= kHosts; ++h) Register(*latchd_[h], vms[h]);
  std::map<std::string, std::vector<int>> before = SlotsByName();
  int wins[kHosts + 1] = {};
  for (int round = 0; round < kRounds; ++round) {
    const json disk = Disk(absl::StrCat("race", round));
    absl::StatusOr<json> res[kHosts + 1];
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int h = 1; h <= kHosts; ++h) {
      threads.emplace_back([&, h] {
        ++ready;
        while (ready < kHosts) {
        }
        res[h] = Acquire(*latchd_[h], vms[h], disk);
      });
    }
    for (std::thread& t : threads) t.join();
    int winners = 0;
    for (int h = 1; h <= kHosts; ++h) {
      if (res[h].ok()) {
        ++winners;
        ++wins[h];
      } else {
        EXPECT_EQ(res[h].status().code(), absl::StatusCode::kUnavailable)
            << "round " << round << " host" << h << ": " << res[h].status();
        EXPECT_THAT(res[h].status().message(), HasSubstr("(host_id "));
      }
    }
    ASSERT_EQ(winners, 1) << "round " << round;
    for (int h = 1; h <= kHosts; ++h) {
      if (res[h].ok()) {
        ASSERT_TRUE(Release(*latchd_[h], vms[h], disk).ok());
      }
    }
    if (round == 19) {
      // Freeing between rounds: these 20 (and test A's) go.
      EXPECT_GE(FreeAll(), 20u);
    }
  }
  fprintf(stderr, "wins per host: %d %d %d\n", wins[1], wins[2], wins[3]);
  std::map<std::string, std::vector<int>> after = SlotsByName();
  std::set<int> slots_seen;
  for (const auto& [name, slots] : after) {
    EXPECT_EQ(slots.size(), 1u) << name << " has " << slots.size() << " slots";
    for (int s : slots) EXPECT_TRUE(slots_seen.insert(s).second) << "slot " << s << " twice";
  }
  EXPECT_GE(after.size(), 30u);  // rounds 20..49
}

// A host configured for lease files, or with another area, while the
// lockspace records this area: refused automatic leases, naming the area.
TEST_F(SanlockSlotsTest, CHostsThatDisagreeOnTheLayoutAreRefused) {
  for (const std::string& area : {std::string(), Area(96 * lab::kMiB)}) {
    LatchdProcess other(TempDir("other"), Config(1, area));
    ASSERT_TRUE(other.Start().ok()) << other.Log();
    WaitJoined(other);
    Vm a("vm-a");
    Register(other, a);
    absl::StatusOr<json> r = Acquire(other, a, Disk("disagree"));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
    EXPECT_THAT(r.status().message(), HasSubstr("automatic leases are refused"));
    EXPECT_THAT(r.status().message(), HasSubstr("slots of lease area"));
    other.Kill(SIGTERM);
  }
}

// Freeing: a held lease is never freed; released, it is freed by name, or
// once unused long enough as one host saw it; a freed slot is reused, and
// a freed disk gets a lease again on its next use.
// Whether a clean result freed `name`, and why it kept it ("" if it did not).
bool Freed(const json& c, const std::string& name) {
  for (const json& f : c["freed"]) {
    if (f["name"] == name) return true;
  }
  return false;
}
std::string Why(const json& c, const std::string& name) {
  for (const json& k : c["kept"]) {
    if (k["name"] == name) return k["why"];
  }
  return "";
}

TEST_F(SanlockSlotsTest, DSlotsAreFreedOnlyWhenUnusedAndThenReused) {
  Vm a("vm-a"), b("vm-b");
  Register(*latchd_[2], a);
  Register(*latchd_[3], b);
  FreeAll();
  // What the earlier tests left that could not be freed, and why (seen in
  // CI once: a slot still kept after ten passes; the checks below look
  // only at this test's own lease).
  absl::StatusOr<json> left = Admin(*latchd_[1], {{"command", "clean"}, {"unused_for_s", 0},
                                                  {"dry_run", true}});
  if (left.ok() && !SlotsByName().empty()) {
    fprintf(stderr, "slots left after freeing: %s\n", left->dump().c_str());
  }
  absl::StatusOr<json> g = Acquire(*latchd_[2], a, Disk("keep"));
  ASSERT_TRUE(g.ok()) << g.status();
  const std::string name = (*g)["locks"][0]["name"];
  ASSERT_EQ(SlotsByName()[name].size(), 1u);
  const int slot = SlotsByName()[name][0];
  // Held: kept, by name or by age.
  absl::StatusOr<json> c = Admin(*latchd_[1], {{"command", "clean"}, {"remove", {name}}});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(Freed(*c, name)) << c->dump();
  EXPECT_THAT(Why(*c, name), HasSubstr("held by host2")) << c->dump();
  c = Admin(*latchd_[1], {{"command", "clean"}, {"unused_for_s", 0}});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(Freed(*c, name)) << c->dump();
  // Released, unused for 2 s: the first pass notes it, a later one frees it.
  ASSERT_TRUE(Release(*latchd_[2], a, Disk("keep")).ok());
  WaitUnheld(name);
  c = Admin(*latchd_[1], {{"command", "clean"}, {"unused_for_s", 2}});
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(Freed(*c, name)) << c->dump();
  EXPECT_EQ(Why(*c, name), "first seen unused now") << c->dump();
  // Used meanwhile (its lease version moves): noted afresh, not freed.
  ASSERT_TRUE(Acquire(*latchd_[3], b, Disk("keep")).ok());
  ASSERT_TRUE(Release(*latchd_[3], b, Disk("keep")).ok());
  WaitUnheld(name);
  absl::SleepFor(absl::Seconds(3));
  c = Admin(*latchd_[1], {{"command", "clean"}, {"unused_for_s", 2}});
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(Freed(*c, name)) << c->dump();
  EXPECT_EQ(Why(*c, name), "first seen unused now") << c->dump();
  absl::SleepFor(absl::Seconds(3));
  c = Admin(*latchd_[1], {{"command", "clean"}, {"unused_for_s", 2}, {"dry_run", true}});
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(Freed(*c, name)) << c->dump();
  EXPECT_EQ(SlotsByName().count(name), 1u) << "a dry run frees nothing";
  c = Admin(*latchd_[1], {{"command", "clean"}, {"unused_for_s", 2}});
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(Freed(*c, name)) << c->dump();
  EXPECT_EQ(SlotsByName().count(name), 0u);
  // The freed slot serves the next new disk; the freed disk gets a slot again.
  g = Acquire(*latchd_[3], b, Disk("newcomer"));
  ASSERT_TRUE(g.ok()) << g.status();
  // (the lowest free slot: ours, unless an earlier test left a lower one)
  EXPECT_LE(SlotsByName()[(*g)["locks"][0]["name"].get<std::string>()][0], slot);
  absl::StatusOr<json> again = Acquire(*latchd_[2], a, Disk("keep"));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(SlotsByName()[name].size(), 1u);
  ASSERT_TRUE(Release(*latchd_[2], a, Disk("keep")).ok());
  ASSERT_TRUE(Release(*latchd_[3], b, Disk("newcomer")).ok());
  // Unknown names and bad requests get clear answers.
  c = Admin(*latchd_[1], {{"command", "clean"}, {"remove", {"nosuch"}}});
  EXPECT_EQ((*c)["kept"][0]["why"], "no such lease");
  EXPECT_EQ(Admin(*latchd_[1], {{"command", "clean"}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Admin(*latchd_[1], {{"command", "nosuch"}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Admin(*latchd_[1], {{"command", "leases"}, {"bogus", 1}}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A full area refuses new disks with what to do, and keeps every held lease.
TEST_F(SanlockSlotsTest, EAFullAreaSaysSo) {
  Vm a("vm-a");
  Register(*latchd_[1], a);
  std::vector<json> held;
  absl::Status last;
  for (int i = 0; i < 70; ++i) {
    absl::StatusOr<json> g = Acquire(*latchd_[1], a, Disk(absl::StrCat("fill", i)));
    if (!g.ok()) {
      last = g.status();
      break;
    }
    held.push_back(Disk(absl::StrCat("fill", i)));
  }
  EXPECT_EQ(last.code(), absl::StatusCode::kResourceExhausted) << last;
  EXPECT_THAT(last.message(), HasSubstr("is full (62 slots)"));
  EXPECT_THAT(last.message(), HasSubstr("leases-clean"));
  absl::StatusOr<json> inq = Call(*latchd_[1], {{"op", "inquire"}, {"uuid", a.uuid}});
  ASSERT_TRUE(inq.ok());
  EXPECT_EQ((*inq)["locks"].size(), held.size());
  for (const json& d : held) EXPECT_TRUE(Release(*latchd_[1], a, d).ok());
}

}  // namespace
}  // namespace latchkey
