#include "tools/latchbench/stats.h"

#include <cmath>
#include <limits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace latchkey {
namespace bench {
namespace {

using ::testing::HasSubstr;

TEST(PercentileTest, NearestRankWithoutInterpolation) {
  const std::vector<double> v = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  EXPECT_EQ(Percentile(v, 0), 1);
  EXPECT_EQ(Percentile(v, 10), 1);
  EXPECT_EQ(Percentile(v, 11), 2);
  EXPECT_EQ(Percentile(v, 50), 5);
  EXPECT_EQ(Percentile(v, 90), 9);
  EXPECT_EQ(Percentile(v, 99), 10);
  EXPECT_EQ(Percentile(v, 100), 10);
  EXPECT_EQ(Percentile(v, 250), 10);  // clamped
  EXPECT_EQ(Percentile(v, -3), 1);
  EXPECT_EQ(Percentile({}, 50), 0);
  EXPECT_EQ(Percentile({42}, 99), 42);
}

TEST(SummarizeTest, OrderStatisticsOfUnsortedSamples) {
  std::vector<double> v;
  for (int i = 100; i >= 1; --i) v.push_back(i);  // 100..1
  Summary s = Summarize(v);
  EXPECT_EQ(s.n, 100u);
  EXPECT_EQ(s.min, 1);
  EXPECT_EQ(s.median, 50);
  EXPECT_EQ(s.p90, 90);
  EXPECT_EQ(s.p99, 99);
  EXPECT_EQ(s.max, 100);
  EXPECT_DOUBLE_EQ(s.mean, 50.5);
  EXPECT_DOUBLE_EQ(s.spread, (90.0 - 10.0) / 50.0);
}

TEST(SummarizeTest, EmptyAndNanSamples) {
  Summary e = Summarize({});
  EXPECT_EQ(e.n, 0u);
  EXPECT_EQ(e.median, 0);
  size_t dropped = 0;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  Summary s = Summarize({nan, 3, nan, 1, 2}, &dropped);
  EXPECT_EQ(dropped, 2u);
  EXPECT_EQ(s.n, 3u);
  EXPECT_EQ(s.median, 2);
  EXPECT_FALSE(std::isnan(s.mean));
  Summary zero = Summarize({0, 0, 0});
  EXPECT_EQ(zero.spread, 0);  // no division by a zero median
}

TEST(JudgeRunsTest, AgreeingRunsAreTrustedAndNoisyOnesFlagged) {
  auto run = [](double median) {
    Summary s;
    s.n = 10;
    s.median = median;
    return s;
  };
  Verdict ok = JudgeRuns({run(100), run(104), run(98)}, 0.25);
  EXPECT_TRUE(ok.trusted) << ok.why;
  EXPECT_NEAR(ok.relative, 0.06, 1e-9);
  EXPECT_THAT(ok.why, HasSubstr("3 runs within 6%"));
  Verdict noisy = JudgeRuns({run(100), run(160), run(98)}, 0.25);
  EXPECT_FALSE(noisy.trusted);
  EXPECT_THAT(noisy.why, HasSubstr("too noisy to compare"));
  Verdict one = JudgeRuns({run(5)}, 0.25);
  EXPECT_TRUE(one.trusted);
  EXPECT_THAT(one.why, HasSubstr("one run"));
  Verdict missing = JudgeRuns({run(5), Summary{}}, 0.25);
  EXPECT_FALSE(missing.trusted);
  EXPECT_THAT(missing.why, HasSubstr("1 of 2 runs have no samples"));
  EXPECT_FALSE(JudgeRuns({}, 0.25).trusted);
}

}  // namespace
}  // namespace bench
}  // namespace latchkey
