// The lease area's format and allocator on their own, over a file, with
// an in-process stand-in for sanlock's leases (a mutex per lease). The
// real leases across hosts: sanlock_slots_test.cc and the cluster lab.
#include "backends/sanlock/lease_area.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace latchkey {
namespace sanlockbe {
namespace {

using ::testing::HasSubstr;

// Exclusive leases as in-process locks; WriteLease records what was written.
class FakeOps final : public LeaseOps {
 public:
  absl::Status TryLockExclusive(const std::string& name, uint64_t offset) override {
    std::lock_guard<std::mutex> l(mu_);
    if (!held_.insert(std::make_pair(name, offset)).second) {
      ++busy_;
      return absl::UnavailableError("busy");
    }
    return absl::OkStatus();
  }
  void Unlock(const std::string& name, uint64_t offset) override {
    std::lock_guard<std::mutex> l(mu_);
    held_.erase(std::make_pair(name, offset));
  }
  absl::Status WriteLease(const std::string& name, uint64_t offset) override {
    std::lock_guard<std::mutex> l(mu_);
    written_[offset] = name;
    ++writes_;
    return absl::OkStatus();
  }
  std::map<uint64_t, std::string> written() {
    std::lock_guard<std::mutex> l(mu_);
    return written_;
  }
  int writes() {
    std::lock_guard<std::mutex> l(mu_);
    return writes_;
  }

 private:
  std::mutex mu_;
  int busy_ = 0;
  std::set<std::pair<std::string, uint64_t>> held_;
  std::map<uint64_t, std::string> written_;
  int writes_ = 0;
};

absl::Time Forever() { return absl::InfiniteFuture(); }

class LeaseAreaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A disk file system (direct I/O), not tmpfs.
    const char* dir = getenv("TEST_TMPDIR");
    std::string tmpl = absl::StrCat(dir ? dir : "/var/tmp", "/lease-area-test.XXXXXX");
    const int fd = mkstemp(tmpl.data());
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, 40 * kMiB), 0);
    close(fd);
    path_ = tmpl;
    conf_ = AreaConf{"ls", path_, 4 * kMiB, 12 * kMiB};
  }
  void TearDown() override { unlink(path_.c_str()); }

  std::string path_;
  AreaConf conf_;
};

TEST_F(LeaseAreaTest, ParsesSpecsAndNamesWhatIsWrong) {
  absl::StatusOr<AreaConf> c = AreaConf::Parse("vms:/dev/lab/lease:16M:1G");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->lockspace, "vms");
  EXPECT_EQ(c->offset, 16 * kMiB);
  EXPECT_EQ(c->size, 1024 * kMiB);
  for (const char* bad : {"vms:/dev/x:0", "vms:dev/x:0:1M", ":/dev/x:0:1M", "vms:/dev/x:1:8M",
                          "vms:/dev/x:0:lots", "vms:/dev/x:99999999999999999G:1M"}) {
    EXPECT_FALSE(AreaConf::Parse(bad).ok()) << bad;
  }
}

TEST_F(LeaseAreaTest, BlankIsNotFormattedAndFormatWritesAVersionedHeader) {
  absl::StatusOr<LeaseArea> a = LeaseArea::Open(conf_);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kNotFound) << a.status();
  a = LeaseArea::Format(conf_, Geometry{512, kMiB}, "hostA", false);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->slots(), 10u);  // 12 units: header, allocator, 10 slots
  EXPECT_EQ(a->created_by(), "hostA");
  EXPECT_EQ(a->AllocatorOffset(), 5 * kMiB);
  EXPECT_EQ(a->SlotOffset(0), 6 * kMiB);
  absl::StatusOr<LeaseArea> again = LeaseArea::Open(conf_);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->id(), a->id());
  // A second format refuses (the area is in use) unless forced.
  absl::StatusOr<LeaseArea> twice = LeaseArea::Format(conf_, Geometry{512, kMiB}, "hostB", false);
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(twice.status().message(), HasSubstr("not blank"));
  // Another lockspace's view, or a smaller configured size, is refused.
  AreaConf other = conf_;
  other.lockspace = "other";
  EXPECT_THAT(LeaseArea::Open(other).status().message(), HasSubstr("belongs to lockspace 'ls'"));
  AreaConf small = conf_;
  small.size = 6 * kMiB;
  EXPECT_THAT(LeaseArea::Open(small).status().message(), HasSubstr("every host must configure"));
}

TEST_F(LeaseAreaTest, ForeignDataIsNeverTakenForAnArea) {
  const int fd = open(path_.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, "xfs superblock?", 15, static_cast<off_t>(conf_.offset)), 15);
  close(fd);
  absl::StatusOr<LeaseArea> a = LeaseArea::Open(conf_);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(a.status().message(), HasSubstr("not a latchkey lease area"));
  EXPECT_FALSE(LeaseArea::Format(conf_, Geometry{512, kMiB}, "h", false).ok());
  EXPECT_TRUE(LeaseArea::Format(conf_, Geometry{512, kMiB}, "h", true).ok());
}

TEST_F(LeaseAreaTest, TooSmallOrMisalignedAreasAreRefused) {
  AreaConf tiny = conf_;
  tiny.size = 2 * kMiB;
  EXPECT_THAT(LeaseArea::Format(tiny, Geometry{512, kMiB}, "h", false).status().message(),
              HasSubstr("hold no slot"));
  EXPECT_THAT(LeaseArea::Format(conf_, Geometry{4096, 8 * kMiB}, "h", false).status().message(),
              HasSubstr("multiple of 8 MiB"));
  AreaConf beyond = conf_;
  beyond.size = 64 * kMiB;
  EXPECT_THAT(LeaseArea::Format(beyond, Geometry{512, kMiB}, "h", false).status().message(),
              HasSubstr("too small"));
}

// Eight "hosts" (threads, each with its own LeaseArea over the file)
// create the same 10 names at once: one slot per name, one lease write per
// name, and everyone agrees on the slot.
TEST_F(LeaseAreaTest, ConcurrentCreatorsAgreeOnOneSlotPerName) {
  ASSERT_TRUE(LeaseArea::Format(conf_, Geometry{512, kMiB}, "h", false).ok());
  FakeOps ops;
  std::map<std::string, std::set<uint32_t>> seen;
  std::mutex seen_mu;
  std::vector<std::thread> hosts;
  for (int h = 1; h <= 8; ++h) {
    hosts.emplace_back([&, h] {
      absl::StatusOr<LeaseArea> area = LeaseArea::Open(conf_);
      ASSERT_TRUE(area.ok()) << area.status();
      for (int n = 0; n < 10; ++n) {
        const std::string name = absl::StrCat("disk", (n + h) % 10);
        absl::StatusOr<SlotEntry> e = FindOrAllocate(*area, ops, name, h, true, Forever());
        ASSERT_TRUE(e.ok()) << e.status();
        std::lock_guard<std::mutex> l(seen_mu);
        seen[name].insert(e->slot);
      }
    });
  }
  for (std::thread& t : hosts) t.join();
  ASSERT_EQ(seen.size(), 10u);
  std::set<uint32_t> slots;
  for (const auto& [name, s] : seen) {
    EXPECT_EQ(s.size(), 1u) << name;
    slots.insert(*s.begin());
  }
  EXPECT_EQ(slots.size(), 10u);
  EXPECT_EQ(ops.writes(), 10);
  absl::StatusOr<LeaseArea> area = LeaseArea::Open(conf_);
  absl::StatusOr<SlotEntry> extra = FindOrAllocate(*area, ops, "disk10", 1, true, Forever());
  EXPECT_EQ(extra.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(extra.status().message(), HasSubstr("is full (10 slots)"));
}

// A slot found before it was freed and reused fails verification; the
// freed name gets a slot again; a free of a changed entry does nothing.
TEST_F(LeaseAreaTest, VerifyCatchesASlotFreedOrReusedMeanwhile) {
  absl::StatusOr<LeaseArea> area = LeaseArea::Format(conf_, Geometry{512, kMiB}, "h", false);
  ASSERT_TRUE(area.ok());
  FakeOps ops;
  absl::StatusOr<SlotEntry> found = FindOrAllocate(*area, ops, "a", 1, true, Forever());
  ASSERT_TRUE(found.ok());
  EXPECT_TRUE(Verify(*area, *found).ok());
  EXPECT_EQ(FindOrAllocate(*area, ops, "nope", 1, false, Forever()).status().code(),
            absl::StatusCode::kNotFound);
  ASSERT_TRUE(FreeSlot(*area, ops, *found, Forever()).ok());
  EXPECT_EQ(Verify(*area, *found).code(), absl::StatusCode::kAborted);
  absl::StatusOr<SlotEntry> reused = FindOrAllocate(*area, ops, "b", 2, true, Forever());
  ASSERT_TRUE(reused.ok());
  EXPECT_EQ(reused->slot, found->slot);
  EXPECT_EQ(reused->generation, found->generation + 1);
  EXPECT_EQ(Verify(*area, *found).code(), absl::StatusCode::kAborted);
  EXPECT_EQ(FreeSlot(*area, ops, *found, Forever()).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Verify(*area, *reused).ok());
  absl::StatusOr<SlotEntry> back = FindOrAllocate(*area, ops, "a", 3, true, Forever());
  ASSERT_TRUE(back.ok());
  EXPECT_NE(back->slot, reused->slot);
  EXPECT_EQ(ops.written()[area->SlotOffset(back->slot)], "a");
}

TEST_F(LeaseAreaTest, LayoutRecordRoundTripsInTheLockspacesLastSector) {
  const Geometry geo{512, kMiB};
  absl::StatusOr<LayoutRecord> r = ReadLayout(path_, 0, geo);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kind, LayoutRecord::Kind::kNone);
  LayoutRecord w;
  w.kind = LayoutRecord::Kind::kSlots;
  w.area_id = "00112233445566778899aabbccddeeff";
  w.area_path = "/dev/lab/lease";
  w.area_offset = 16 * kMiB;
  w.written_by = "node1";
  ASSERT_TRUE(WriteLayout(path_, 0, geo, w).ok());
  r = ReadLayout(path_, 0, geo);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kind, LayoutRecord::Kind::kSlots);
  EXPECT_EQ(r->area_id, w.area_id);
  EXPECT_THAT(r->Describe(), HasSubstr("/dev/lab/lease:16777216"));
  // Only the last sector of the first MiB: sanlock's host records are not.
  absl::StatusOr<std::string> first = ReadSectors(path_, 0, kMiB - 512, 512);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->find_first_not_of('\0'), std::string::npos);
}

}  // namespace
}  // namespace sanlockbe
}  // namespace latchkey
