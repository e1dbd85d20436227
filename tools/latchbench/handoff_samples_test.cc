#include "tools/latchbench/handoff_samples.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace latchkey {
namespace bench {
namespace {

using ::testing::DoubleNear;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr int64_t kMs = 1000000;

TEST(HandoffSamplesTest, MapsNode2OntoNode1sClockAndTimesEveryGrantAfterTheOthersRelease) {
  // Node 2's clock is 500 ms ahead. Node 1 holds 0-20, node 2 3 ms later
  // holds 23-43 (node 1's clock), node 1 again 5 ms later.
  std::vector<HandoffEvent> e;
  ASSERT_TRUE(ParseHandoffLog("grant 0\nrelease 20000000\ngrant 48000000\nrelease 60000000\ndone\n", 1, "node1", &e)
                  .ok());
  ASSERT_TRUE(ParseHandoffLog("grant 523000000\nrelease 543000000\ndone\n", 2, "node2", &e).ok());
  absl::StatusOr<std::vector<double>> s = HandoffSamples(e, 500 * kMs, kMs, "l");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_THAT(*s, ElementsAre(DoubleNear(0.003, 1e-9), DoubleNear(0.005, 1e-9)));
}

TEST(HandoffSamplesTest, ANodeThatTakesTheLeaseAgainIsNotAHandOff) {
  std::vector<HandoffEvent> e = {{0, 1, true}, {10, 1, false}, {20, 1, true}, {30, 1, false},
                                 {40, 2, true}, {50, 2, false}};
  absl::StatusOr<std::vector<double>> s = HandoffSamples(e, 0, 0, "l");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_THAT(*s, ElementsAre(DoubleNear(10e-9, 1e-12)));
}

TEST(HandoffSamplesTest, AnOverlapBeyondTheClocksUncertaintyIsTwoHolders) {
  // Node 2 granted at 15 while node 1 holds until 20: 5 ms of overlap.
  std::vector<HandoffEvent> e = {{0, 1, true}, {20 * kMs, 1, false}, {15 * kMs, 2, true},
                                 {30 * kMs, 2, false}};
  absl::StatusOr<std::vector<double>> s = HandoffSamples(e, 0, 2 * kMs, "lease-7");
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.status().message(), HasSubstr("two holders at once: node2 was granted lease-7"));
  EXPECT_THAT(s.status().message(), HasSubstr("for 5 ms more"));
  // Within a 6 ms uncertainty the same stamps are a hand-off of -5 ms.
  s = HandoffSamples(e, 0, 6 * kMs, "lease-7");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_THAT(*s, ElementsAre(DoubleNear(-0.005, 1e-9)));
}

TEST(HandoffSamplesTest, AHolderThatNeverReleasesWhileTheOtherIsGranted) {
  std::vector<HandoffEvent> e = {{0, 1, true}, {5, 2, true}, {9, 2, false}};
  absl::StatusOr<std::vector<double>> s = HandoffSamples(e, 0, kMs, "l");
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.status().message(), HasSubstr("for the rest of the run"));
}

TEST(HandoffSamplesTest, LogsThatAreNotTheLoopsAreRefusedNamingTheLine) {
  std::vector<HandoffEvent> e;
  absl::Status s = ParseHandoffLog("grant 1\nrelease x\ndone\n", 2, "node2", &e);
  EXPECT_THAT(s.message(), HasSubstr("node2's hand-off log, line 2: 'release x'"));
  s = ParseHandoffLog("grant 1\ngrant 2 3\n", 1, "node1", &e);
  EXPECT_THAT(s.message(), HasSubstr("line 2"));
  s = ParseHandoffLog("grant 1\nrelease 2\n", 1, "node1", &e);
  EXPECT_THAT(s.message(), HasSubstr("ends without 'done' (2 lines)"));
  s = ParseHandoffLog("grant 1\nerror latchd: no such backend 'x'\n", 1, "node1", &e);
  EXPECT_THAT(s.message(), HasSubstr("node1: latchd: no such backend 'x'"));
  s = ParseHandoffLog("", 1, "node1", &e);
  EXPECT_THAT(s.message(), HasSubstr("ends without 'done' (0 lines)"));
}

}  // namespace
}  // namespace bench
}  // namespace latchkey
