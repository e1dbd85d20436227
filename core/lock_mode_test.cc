#include "core/lock_mode.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace latchkey {
namespace {

using ::testing::HasSubstr;

constexpr LockMode kSR = LockMode::kSharedRead;
constexpr LockMode kSW = LockMode::kSharedWrite;
constexpr LockMode kEX = LockMode::kExclusive;

TEST(LockModeTest, MatrixIsDlmPrCwEx) {
  EXPECT_TRUE(ModesCompatible(kSR, kSR));
  EXPECT_TRUE(ModesCompatible(kSW, kSW));
  EXPECT_FALSE(ModesCompatible(kSR, kSW));
  EXPECT_FALSE(ModesCompatible(kSW, kSR));
  for (LockMode m : {kSR, kSW, kEX}) {
    EXPECT_FALSE(ModesCompatible(kEX, m)) << LockModeName(m);
    EXPECT_FALSE(ModesCompatible(m, kEX)) << LockModeName(m);
  }
}

TEST(LockModeTest, NamesRoundTrip) {
  for (LockMode m : {kSR, kSW, kEX}) {
    absl::StatusOr<LockMode> parsed = ParseLockMode(LockModeName(m));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, m);
  }
  EXPECT_EQ(*ParseLockMode("EX"), kEX);
  EXPECT_EQ(*ParseLockMode("sr"), kSR);
}

TEST(LockModeTest, UnknownModeIsClearError) {
  absl::StatusOr<LockMode> m = ParseLockMode("upgrade");
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m.status().message(), HasSubstr("'upgrade'"));
  EXPECT_FALSE(LockModeFromInt(0).ok());
  EXPECT_FALSE(LockModeFromInt(4).ok());
  EXPECT_EQ(*LockModeFromInt(2), kSW);
}

}  // namespace
}  // namespace latchkey
