#include "tools/latchbench/stats.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"

namespace latchkey {
namespace bench {

double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  p = std::clamp(p, 0.0, 100.0);
  const size_t n = sorted.size();
  // Nearest rank: ceil(p/100 * n), 1-based; p = 0 is the minimum.
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(n)));
  rank = std::clamp<size_t>(rank, 1, n);
  return sorted[rank - 1];
}

Summary Summarize(std::vector<double> samples, size_t* dropped) {
  const size_t before = samples.size();
  samples.erase(std::remove_if(samples.begin(), samples.end(),
                               [](double v) { return std::isnan(v); }),
                samples.end());
  if (dropped != nullptr) *dropped = before - samples.size();
  Summary s;
  s.n = samples.size();
  if (s.n == 0) return s;
  std::sort(samples.begin(), samples.end());
  s.min = samples.front();
  s.max = samples.back();
  s.median = Percentile(samples, 50);
  s.p90 = Percentile(samples, 90);
  s.p99 = Percentile(samples, 99);
  double sum = 0;
  for (double v : samples) sum += v;
  s.mean = sum / static_cast<double>(s.n);
  const double p10 = Percentile(samples, 10);
  s.spread = s.median != 0 ? (s.p90 - p10) / std::fabs(s.median) : 0;
  return s;
}

Verdict JudgeRuns(const std::vector<Summary>& runs, double max_relative) {
  Verdict v;
  std::vector<double> medians;
  for (const Summary& r : runs) {
    if (r.n > 0) medians.push_back(r.median);
  }
  if (medians.empty()) {
    v.why = "no samples in any run";
    return v;
  }
  if (medians.size() < runs.size()) {
    v.why = absl::StrFormat("%d of %d runs have no samples", runs.size() - medians.size(),
                            runs.size());
    return v;
  }
  std::sort(medians.begin(), medians.end());
  const double mid = Percentile(medians, 50);
  v.relative = mid != 0 ? (medians.back() - medians.front()) / std::fabs(mid) : 0;
  if (medians.size() == 1) {
    v.trusted = true;
    v.why = "one run: its spread between runs is unknown";
    return v;
  }
  v.trusted = v.relative <= max_relative;
  v.why = absl::StrFormat("medians of %d runs within %.0f%% of their median (limit %.0f%%)%s",
                          medians.size(), 100 * v.relative, 100 * max_relative,
                          v.trusted ? "" : ": too noisy to compare");
  return v;
}

}  // namespace bench
}  // namespace latchkey
