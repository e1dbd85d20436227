// How far apart two machines' clocks are, measured over the network the way
// NTP does it (docs/latchbench.md, "Clocks"): one side answers probes with
// its own receive and send times, the other keeps the exchange with the
// shortest round trip. Each UML lab node keeps its own CLOCK_REALTIME
// (taken from the host at boot, then ticking on its own), so figures that
// compare one node's timestamps with another's need this offset and carry
// its uncertainty.
#ifndef LATCHKEY_TOOLS_LATCHBENCH_CLOCK_SYNC_H_
#define LATCHKEY_TOOLS_LATCHBENCH_CLOCK_SYNC_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace latchkey {
namespace bench {

// CLOCK_REALTIME in nanoseconds.
int64_t RealtimeNs();

// One measurement: remote clock minus local clock. The true offset lies
// within offset_ns +- uncertainty_ns (half the best exchange's round trip,
// less the time the server spent between receiving and answering).
struct ClockOffset {
  int64_t offset_ns = 0;
  int64_t uncertainty_ns = 0;
  int64_t min_rtt_ns = 0;
  int samples = 0;  // exchanges that were answered
  nlohmann::json ToJson() const;
};

// Answers probes on UDP `port` (all addresses) until *stop. Prints nothing;
// an error if the port cannot be bound.
absl::Status ServeClock(int port, const std::atomic<bool>* stop);

// Sends `probes` probes to address:port, one every `gap_ms`; each waits up
// to 500 ms for its answer. Fails when fewer than a quarter are answered.
absl::StatusOr<ClockOffset> ProbeClock(const std::string& address, int port, int probes,
                                       int gap_ms);

// The offset from one exchange (t1 sent, t2 received remotely, t3 answered
// remotely, t4 received; ns): exposed for tests.
ClockOffset FromExchange(int64_t t1, int64_t t2, int64_t t3, int64_t t4);

}  // namespace bench
}  // namespace latchkey

#endif  // LATCHKEY_TOOLS_LATCHBENCH_CLOCK_SYNC_H_
