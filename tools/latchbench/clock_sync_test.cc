#include "tools/latchbench/clock_sync.h"

#include <atomic>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace latchkey {
namespace bench {
namespace {

using ::testing::HasSubstr;

TEST(ClockSyncTest, OneExchangeGivesOffsetAndHalfTheRoundTrip) {
  // The remote clock is 1000 ns ahead; 100 ns each way; 30 ns in the server.
  const ClockOffset o = FromExchange(/*t1=*/0, /*t2=*/1100, /*t3=*/1130, /*t4=*/230);
  EXPECT_EQ(o.offset_ns, 1000);
  EXPECT_EQ(o.min_rtt_ns, 200);
  EXPECT_EQ(o.uncertainty_ns, 100);
  // Asymmetric paths move the estimate, never beyond the uncertainty.
  const ClockOffset a = FromExchange(0, 1010, 1010, 200);  // 10 ns out, 190 back
  EXPECT_LE(std::abs(a.offset_ns - 1000), a.uncertainty_ns);
  const ClockOffset behind = FromExchange(5000, 4100, 4100, 5200);
  EXPECT_EQ(behind.offset_ns, -1000);
}

TEST(ClockSyncTest, ProbingThisMachinesOwnServerFindsNoOffset) {
  std::atomic<bool> stop{false};
  const int port = 20000 + getpid() % 20000;
  absl::Status served;
  std::thread server([&] { served = ServeClock(port, &stop); });
  absl::StatusOr<ClockOffset> o = ProbeClock("127.0.0.1", port, 50, 1);
  stop = true;
  server.join();
  ASSERT_TRUE(served.ok()) << served;
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_GE(o->samples, 13);
  EXPECT_GT(o->min_rtt_ns, 0);
  // One clock: the true offset is 0, and it lies within the uncertainty.
  EXPECT_LE(std::abs(o->offset_ns), o->uncertainty_ns + 1);
  printf("loopback: %s\n", o->ToJson().dump().c_str());
}

TEST(ClockSyncTest, NobodyAnsweringAndBadArgumentsAreErrors) {
  absl::StatusOr<ClockOffset> o = ProbeClock("127.0.0.1", 9, 4, 0);  // discard: no answer
  ASSERT_FALSE(o.ok());
  EXPECT_THAT(o.status().message(), HasSubstr("only 0 of 4 clock probes"));
  EXPECT_TRUE(absl::IsInvalidArgument(ProbeClock("node1", 7411, 4, 0).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ProbeClock("127.0.0.1", 70000, 4, 0).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ProbeClock("127.0.0.1", 7411, 0, 0).status()));
  std::atomic<bool> stop{true};
  EXPECT_TRUE(absl::IsInvalidArgument(ServeClock(0, &stop)));
}

}  // namespace
}  // namespace bench
}  // namespace latchkey
