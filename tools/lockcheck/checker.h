// Checks a recorded history (history.h) for what a lock manager promises
// (docs/lockcheck.md):
//   - mutual exclusion: no two processes surely hold conflicting modes of
//     one resource at once (the mode matrix of core/lock_mode.h);
//   - fencing tokens only grow: an exclusive grant's token is above every
//     token granted surely before it; a shared grant's is at least every
//     exclusive token granted surely before it;
//   - nothing granted after a loss: once a process's lock is reported lost,
//     it gets no conversion or release "ok" on it before acquiring again.
// "Surely": a process surely holds a lock from its grant's completion to
// the invocation of its release (or conversion, or the loss), each time
// widened inward by its uncertainty; two events are surely ordered when
// their uncertainty windows do not meet. An "info" completion leaves the
// state unknown and claims nothing.
#ifndef LATCHKEY_TOOLS_LOCKCHECK_CHECKER_H_
#define LATCHKEY_TOOLS_LOCKCHECK_CHECKER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "tools/lockcheck/history.h"

namespace latchkey {
namespace lockcheck {

struct Violation {
  std::string kind;  // "mutual-exclusion", "token-order", "grant-after-loss"
  std::string resource;
  std::string what;           // one sentence
  std::vector<size_t> lines;  // the minimal slice: history lines that show it
};

struct Report {
  size_t events = 0, operations = 0, grants = 0, losses = 0, unknown = 0;
  std::vector<Violation> violations;
  nlohmann::json ToJson(const std::vector<Event>& history) const;
};

Report Check(const std::vector<Event>& history);

}  // namespace lockcheck
}  // namespace latchkey

#endif  // LATCHKEY_TOOLS_LOCKCHECK_CHECKER_H_
