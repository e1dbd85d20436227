// A recorded history of lock operations (issue 19's safety campaigns;
// docs/lockcheck.md): one JSON object per line, in the order the recorder
// wrote them. Each operation is an "invoke" event, then one completion:
// "ok", "fail" (it did not happen) or "info" (unknown: the caller lost track
// of it). A "lost" event says a backend reported an owner's lock gone.
//
//   {"type": "invoke", "process": "node1/o3", "op": "acquire", "resource": "r1",
//    "mode": "exclusive", "time_ns": 1765000000000, "uncertainty_ns": 300000}
//   {"type": "ok", "process": "node1/o3", "op": "acquire", "resource": "r1",
//    "mode": "exclusive", "token": 17, "time_ns": ..., "uncertainty_ns": ...}
//   {"type": "invoke", "process": "node1/o3", "op": "release", "resource": "r1", ...}
//   {"type": "lost", "process": "node2/o1", "resource": "r1", "time_ns": ...}
//
// time_ns is on one reference clock (the recorder maps each node's clock
// onto it); uncertainty_ns bounds that mapping's error (0 when unknown).
// op is "acquire", "convert" (mode: the new one) or "release".
#ifndef LATCHKEY_TOOLS_LOCKCHECK_HISTORY_H_
#define LATCHKEY_TOOLS_LOCKCHECK_HISTORY_H_

#include <cstdint>
#include <istream>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/lock_mode.h"

namespace latchkey {
namespace lockcheck {

enum class EventType { kInvoke, kOk, kFail, kInfo, kLost };
enum class Op { kAcquire, kConvert, kRelease, kNone };

struct Event {
  size_t line = 0;  // 1-based line in the history
  EventType type = EventType::kInvoke;
  std::string process;
  Op op = Op::kNone;
  std::string resource;
  LockMode mode = LockMode::kExclusive;
  std::optional<uint64_t> token;
  int64_t time_ns = 0;
  int64_t uncertainty_ns = 0;
  std::string text;  // the line as read
};

// Reads a history; an error names the line and what is wrong with it.
// Blank lines are skipped; at most `max_events` are read.
absl::StatusOr<std::vector<Event>> ReadHistory(std::istream& in, size_t max_events = 50'000'000);

}  // namespace lockcheck
}  // namespace latchkey

#endif  // LATCHKEY_TOOLS_LOCKCHECK_HISTORY_H_
