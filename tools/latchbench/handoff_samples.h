// The hand-off scenario's samples from two nodes' logs: each node notes
// "grant NS" once it has the lease and "release NS" before it lets go, on
// its own clock (latchbench-node handoff). HandoffSamples maps node 2's
// stamps onto node 1's clock with the measured offset (clock_sync.h) and
// returns, for every grant that follows the other node's release, the time
// between them in seconds. Used by the lab and by real hosts alike.
//
//   std::vector<HandoffEvent> e;
//   ParseHandoffLog(log_of_node1, 1, "node1", &e);
//   ParseHandoffLog(log_of_node2, 2, "node2", &e);
//   absl::StatusOr<std::vector<double>> s = HandoffSamples(e, offset, uncertainty, "lease-1");
#ifndef LATCHKEY_TOOLS_LATCHBENCH_HANDOFF_SAMPLES_H_
#define LATCHKEY_TOOLS_LATCHBENCH_HANDOFF_SAMPLES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace latchkey {
namespace bench {

struct HandoffEvent {
  int64_t ns;  // CLOCK_REALTIME of the node that noted it
  int node;    // 1 or 2
  bool grant;  // false: release
};

// Appends the events of node `node`'s log ("grant NS" / "release NS"
// lines, then "done"); `name` ("node2", "host2 (b)") is what messages call
// it. An error naming the line when one is neither, or when the log does
// not end with "done" (the loop's "error MESSAGE" is returned as the
// error).
absl::Status ParseHandoffLog(const std::string& log, int node, const std::string& name,
                             std::vector<HandoffEvent>* events);

// `offset_ns`: node 2's clock minus node 1's, known within +-`uncertainty_ns`.
// The samples may be < 0 by at most the uncertainty (a release and the
// next grant closer than the clocks are known). An error when the two
// nodes' holding intervals overlap by more than the uncertainty: two
// holders at once.
absl::StatusOr<std::vector<double>> HandoffSamples(std::vector<HandoffEvent> events,
                                                   int64_t offset_ns, int64_t uncertainty_ns,
                                                   const std::string& lease);

}  // namespace bench
}  // namespace latchkey

#endif  // LATCHKEY_TOOLS_LATCHBENCH_HANDOFF_SAMPLES_H_
