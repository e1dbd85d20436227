#include "tools/latchbench/contention.h"

#include <mutex>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace latchkey {
namespace bench {
namespace {

using ::testing::HasSubstr;

// A lock of this process standing in for a backend (the contract suite
// tests the real ones): one mutex per resource, and a check that nobody
// else holds it when it is granted.
struct FakeResource {
  std::mutex mu;
  std::atomic<int> holder{-1};
  std::atomic<int> overlaps{0};
};

class FakePath : public CyclePath {
 public:
  FakePath(FakeResource* r, int owner, bool fail = false) : r_(r), owner_(owner), fail_(fail) {}
  absl::Status Acquire(LockMode) override {  // no wait: refused while someone holds it
    if (fail_) return absl::UnavailableError("the fake refuses");
    if (!r_->mu.try_lock()) return absl::UnavailableError("held");
    if (r_->holder.exchange(owner_) != -1) ++r_->overlaps;
    return absl::OkStatus();
  }
  absl::Status AcquireWaiting(LockMode, absl::Duration) override {
    if (fail_) return absl::UnavailableError("the fake refuses");
    r_->mu.lock();
    if (r_->holder.exchange(owner_) != -1) ++r_->overlaps;
    return absl::OkStatus();
  }
  absl::Status Release() override {
    r_->holder = -1;
    r_->mu.unlock();
    return absl::OkStatus();
  }

 private:
  FakeResource* r_;
  int owner_;
  bool fail_;
};

TEST(ContentionTest, OwnersTakeTurnsAndEveryGrantIsCountedWithItsWait) {
  FakeResource res[3];
  ContendOptions o;
  o.owners = 4;
  o.resources = 3;
  o.seconds = 0.5;
  o.hold_us = 100;
  int readied = 0;
  absl::StatusOr<std::vector<OwnerTally>> t = RunContention(
      o, [&](int owner, int k) -> absl::StatusOr<std::unique_ptr<CyclePath>> {
        return std::make_unique<FakePath>(&res[k], owner);
      },
      [&] { ++readied; }, nullptr);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(readied, 1);
  ASSERT_EQ(t->size(), 4u);
  std::vector<int64_t> grants;
  for (const OwnerTally& x : *t) {
    EXPECT_GT(x.grants, 10);
    EXPECT_EQ(x.waits.size(), static_cast<size_t>(x.grants));
    grants.push_back(x.grants);
  }
  for (FakeResource& r : res) EXPECT_EQ(r.overlaps, 0);
  // The fake's no-wait acquire refuses while another owner holds.
  FakePath first(&res[0], 0), second(&res[0], 1);
  ASSERT_TRUE(first.Acquire(LockMode::kExclusive).ok());
  EXPECT_FALSE(second.Acquire(LockMode::kExclusive).ok());
  ASSERT_TRUE(first.Release().ok());
  ASSERT_TRUE(second.Acquire(LockMode::kExclusive).ok());
  ASSERT_TRUE(second.Release().ok());
  const double j = JainIndex(grants);
  EXPECT_GT(j, 0.25);
  EXPECT_LE(j, 1.0);
  // The JSON form round-trips.
  absl::StatusOr<std::vector<OwnerTally>> back = TalliesFromJson(TalliesToJson(*t));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ((*back)[2].grants, (*t)[2].grants);
  EXPECT_EQ((*back)[2].waits, (*t)[2].waits);
}

TEST(ContentionTest, HotSpotSendsFourFifthsToResourceZeroAndSeedsRepeat) {
  uint64_t s1 = 7, s2 = 7;
  int zero = 0, hits[5] = {};
  for (int i = 0; i < 10000; ++i) {
    const int k = PickResource(&s1, 5, /*hot_spot=*/true);
    EXPECT_EQ(k, PickResource(&s2, 5, true));  // the same seed, the same picks
    ASSERT_GE(k, 0);
    ASSERT_LT(k, 5);
    zero += k == 0;
  }
  EXPECT_NEAR(zero / 10000.0, 0.8, 0.02);
  uint64_t s3 = 1;
  for (int i = 0; i < 10000; ++i) ++hits[PickResource(&s3, 5, false)];
  for (int h : hits) EXPECT_NEAR(h / 10000.0, 0.2, 0.02);
  uint64_t s4 = 1;
  EXPECT_EQ(PickResource(&s4, 1, true), 0);
}

TEST(ContentionTest, JainIndexFromEqualToOneTakingAll) {
  EXPECT_DOUBLE_EQ(JainIndex({5, 5, 5, 5}), 1.0);
  EXPECT_DOUBLE_EQ(JainIndex({8, 0, 0, 0}), 0.25);
  EXPECT_DOUBLE_EQ(JainIndex({}), 1.0);
  EXPECT_DOUBLE_EQ(JainIndex({0, 0}), 1.0);
  EXPECT_NEAR(JainIndex({1, 3}), 16.0 / 20.0, 1e-12);
}

TEST(ContentionTest, FailuresStopEveryoneAndNameTheOwner) {
  FakeResource res[2];
  ContendOptions o;
  o.owners = 3;
  o.resources = 2;
  o.seconds = 30;  // the failure must end it long before
  absl::StatusOr<std::vector<OwnerTally>> t = RunContention(
      o, [&](int owner, int k) -> absl::StatusOr<std::unique_ptr<CyclePath>> {
        return std::make_unique<FakePath>(&res[k], owner, /*fail=*/owner == 1);
      },
      nullptr, nullptr);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("owner 2: the fake refuses"));
  // A path that cannot be made, and bad options.
  t = RunContention(
      o, [&](int owner, int k) -> absl::StatusOr<std::unique_ptr<CyclePath>> {
        if (owner == 2 && k == 1) return absl::NotFoundError("no such lease");
        return std::make_unique<FakePath>(&res[k], owner);
      },
      nullptr, nullptr);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("owner 3, resource 2: no such lease"));
  o.owners = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(RunContention(o, nullptr, nullptr, nullptr).status()));
  // Interrupted.
  o.owners = 2;
  std::atomic<bool> stop{true};
  t = RunContention(
      o, [&](int owner, int k) -> absl::StatusOr<std::unique_ptr<CyclePath>> {
        return std::make_unique<FakePath>(&res[k], owner);
      },
      nullptr, &stop);
  EXPECT_TRUE(absl::IsCancelled(t.status())) << t.status();
  EXPECT_FALSE(TalliesFromJson(nlohmann::json::parse(R"({"owners":[{"grants":1}]})")).ok());
  EXPECT_FALSE(TalliesFromJson(nlohmann::json::parse("[]")).ok());
}

}  // namespace
}  // namespace bench
}  // namespace latchkey
