// The contended scenario's loop (docs/latchbench.md, "contended"): several
// owners in one process, each on its own thread, take one of K resources
// (picked by a seeded generator: uniformly, or a hot spot), waiting for it
// when someone else holds it, hold it a moment, release it, and again,
// until the time is up. Per owner: how many grants it got and how long each
// waited. Run on one node by latchbench-node, on several at once by the lab.
//
//   ContendOptions o{.owners = 4, .resources = 8, .seconds = 10, ...};
//   absl::StatusOr<std::vector<OwnerTally>> t = RunContention(o, make_path, nullptr);
#ifndef LATCHKEY_TOOLS_LATCHBENCH_CONTENTION_H_
#define LATCHKEY_TOOLS_LATCHBENCH_CONTENTION_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/lock_mode.h"
#include "nlohmann/json.hpp"
#include "tools/latchbench/cycle_paths.h"

namespace latchkey {
namespace bench {

struct ContendOptions {
  int owners = 1;      // threads, one owner each
  int resources = 1;   // K
  double seconds = 5;  // how long every owner keeps going
  uint64_t seed = 1;   // the generator of owner i is seeded with seed + i
  bool hot_spot = false;  // 80% of picks go to resource 0, the rest uniform
  LockMode mode = LockMode::kExclusive;
  int hold_us = 0;  // how long a grant is held before the release
  absl::Duration wait_timeout = absl::Seconds(60);
};

struct OwnerTally {
  int64_t grants = 0;
  std::vector<double> waits;  // seconds from asking to the grant, per grant
};

// Which resource an owner's generator picks next (exposed for tests).
int PickResource(uint64_t* state, int resources, bool hot_spot);

// The path of owner `owner` on resource `resource` (made before the clock
// starts; each is used by one thread only).
using PathMaker = std::function<absl::StatusOr<std::unique_ptr<CyclePath>>(int owner,
                                                                           int resource)>;

// Makes every path, calls `ready` (may be empty: e.g. a barrier with other
// nodes), then runs every owner for o.seconds. The first failure (a path
// that cannot be made, a failed acquire or release) ends every owner and is
// returned; *stop ends them with Cancelled.
absl::StatusOr<std::vector<OwnerTally>> RunContention(const ContendOptions& o,
                                                      const PathMaker& make_path,
                                                      const std::function<void()>& ready,
                                                      const std::atomic<bool>* stop);

// Jain's fairness index of the owners' grants: 1 when all got the same, 1/n
// when one got everything; 1 for no grants at all.
double JainIndex(const std::vector<int64_t>& grants);

// {"owners": [{"grants": n, "waits": [s, ...]}, ...]}, and back.
nlohmann::json TalliesToJson(const std::vector<OwnerTally>& t);
absl::StatusOr<std::vector<OwnerTally>> TalliesFromJson(const nlohmann::json& j);

}  // namespace bench
}  // namespace latchkey

#endif  // LATCHKEY_TOOLS_LATCHBENCH_CONTENTION_H_
