#include "tools/latchbench/handoff_samples.h"

#include <algorithm>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace latchkey {
namespace bench {

absl::Status ParseHandoffLog(const std::string& log, int node, const std::string& name,
                             std::vector<HandoffEvent>* events) {
  std::istringstream in(log);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    const absl::string_view l = absl::StripAsciiWhitespace(line);
    if (l.empty()) continue;
    if (l == "done") return absl::OkStatus();
    if (absl::StartsWith(l, "error ")) {
      return absl::InternalError(absl::StrCat(name, ": ", l.substr(6)));
    }
    std::vector<absl::string_view> f = absl::StrSplit(l, ' ');
    int64_t ns = 0;
    if (f.size() != 2 || (f[0] != "grant" && f[0] != "release") || !absl::SimpleAtoi(f[1], &ns)) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, "'s hand-off log, line ", n, ": '", l.substr(0, 80),
          "' is not 'grant NS' or 'release NS'"));
    }
    events->push_back({ns, node, f[0] == "grant"});
  }
  return absl::InternalError(
      absl::StrCat(name, "'s hand-off log ends without 'done' (", n, " lines)"));
}

absl::StatusOr<std::vector<double>> HandoffSamples(std::vector<HandoffEvent> events,
                                                   int64_t offset_ns, int64_t uncertainty_ns,
                                                   const std::string& lease) {
  for (HandoffEvent& e : events) {
    if (e.node == 2) e.ns -= offset_ns;
  }
  std::stable_sort(events.begin(), events.end(),
                   [](const HandoffEvent& a, const HandoffEvent& b) { return a.ns < b.ns; });
  // The holder's release at or after index `from`; nullptr when it has none.
  const auto release_of = [&](int holder, size_t from) -> const HandoffEvent* {
    for (size_t k = from; k < events.size(); ++k) {
      if (events[k].node == holder && !events[k].grant) return &events[k];
    }
    return nullptr;
  };
  std::vector<double> samples;
  const HandoffEvent* last_release = nullptr;
  int holder = 0;
  int64_t held_since = 0;
  for (size_t i = 0; i < events.size(); ++i) {
    const HandoffEvent& e = events[i];
    if (!e.grant) {
      if (e.node == holder) holder = 0;
      last_release = &e;
      continue;
    }
    if (holder != 0 && holder != e.node) {
      // The holder's release comes later in this order: by how much.
      const HandoffEvent* r = release_of(holder, i + 1);
      const int64_t overlap = r == nullptr ? -1 : r->ns - e.ns;
      if (overlap < 0 || overlap > uncertainty_ns) {
        return absl::InternalError(absl::StrCat(
            "two holders at once: node", e.node, " was granted ", lease, " while node", holder,
            " held it (since ", held_since, " ns on node1's clock) for ",
            overlap < 0 ? std::string("the rest of the run")
                        : absl::StrCat(overlap / 1e6, " ms more"),
            ", beyond the clocks' uncertainty of ", uncertainty_ns / 1e6, " ms"));
      }
      last_release = r;  // within the uncertainty: the release was first
    }
    if (last_release != nullptr && last_release->node != e.node) {
      samples.push_back((e.ns - last_release->ns) / 1e9);
    }
    holder = e.node;
    held_since = e.ns;
  }
  return samples;
}

}  // namespace bench
}  // namespace latchkey
