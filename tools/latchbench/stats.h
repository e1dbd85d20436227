// latchbench's statistics: what every figure in a result and a report is
// made of (docs/latchbench.md, "Summaries").
//
// A figure is a set of samples (seconds, bytes, counts). Its summary gives
// the order statistics people quote (median, p90, p99, max) and a spread.
// A figure measured in several runs of one invocation is judged: when the
// runs' medians disagree by more than a limit, the figure is flagged as too
// noisy to compare, and the report says so instead of ranking it.
//
//   Summary s = Summarize(latencies_s);
//   Verdict v = JudgeRuns({run1, run2, run3}, 0.25);
//   if (!v.trusted) report << v.why;
#ifndef LATCHKEY_TOOLS_LATCHBENCH_STATS_H_
#define LATCHKEY_TOOLS_LATCHBENCH_STATS_H_

#include <cstddef>
#include <string>
#include <vector>

namespace latchkey {
namespace bench {

struct Summary {
  size_t n = 0;  // samples; every other field is 0 when n == 0
  double min = 0;
  double median = 0;
  double p90 = 0;
  double p99 = 0;
  double max = 0;
  double mean = 0;
  // (p90 - p10) / median: how wide the middle 80% is against the typical
  // value; 0 when the median is 0.
  double spread = 0;
};

// The p-th percentile (0 <= p <= 100) of `sorted` (ascending, non-empty) by
// the nearest-rank method: the smallest sample with at least p% of the
// samples at or below it. No interpolation: every figure is a measured one.
double Percentile(const std::vector<double>& sorted, double p);

// The summary of `samples` (any order; NaN samples are not allowed and are
// dropped, counted in `dropped` when given).
Summary Summarize(std::vector<double> samples, size_t* dropped = nullptr);

// Whether a figure measured in several runs of one invocation can be
// trusted: the runs' medians must lie within `max_relative` of their own
// median ((max - min) / median of medians). One run is trusted by
// definition only when it has samples; `why` says what was found either way.
struct Verdict {
  bool trusted = false;
  double relative = 0;  // (max - min) / median of the runs' medians
  std::string why;
};
Verdict JudgeRuns(const std::vector<Summary>& runs, double max_relative);

}  // namespace bench
}  // namespace latchkey

#endif  // LATCHKEY_TOOLS_LATCHBENCH_STATS_H_
