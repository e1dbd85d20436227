// The ways latchbench takes and drops a lease, and the timed loop over them,
// shared by latchbench (on this host) and latchbench-node (in a lab node).
//
//   raw         the backend's raw API doing what its grant must do at the
//               least (posixfd: OFD calls; dlm: libdlm's asynchronous calls;
//               sanlock: libsanlock's acquire and release)
//   in-process  the plugin loaded in this process, through the plugin ABI
//   latchd      requests to a latchd, one connection, one registered owner
//
//   std::unique_ptr<CyclePath> p = InProcessPath(backend, owner, resource);
//   absl::StatusOr<std::vector<double>> s = TimeCycles(*p, LockMode::kExclusive, 20, 200, &stop, {});
#ifndef LATCHKEY_TOOLS_LATCHBENCH_CYCLE_PATHS_H_
#define LATCHKEY_TOOLS_LATCHBENCH_CYCLE_PATHS_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/backend.h"
#include "core/lock_mode.h"
#include "core/owner.h"
#include "core/resource.h"

namespace latchkey {
namespace bench {

class CyclePath {
 public:
  virtual ~CyclePath() = default;
  // Takes the lease; refused at once when someone holds a conflicting lock.
  virtual absl::Status Acquire(LockMode mode) = 0;
  // Takes the lease, waiting up to `timeout` for a conflicting holder to
  // let go (hand-off: the grant comes as soon as the holder releases).
  virtual absl::Status AcquireWaiting(LockMode mode, absl::Duration timeout) = 0;
  virtual absl::Status Release() = 0;
};

// `backend` must outlive the path.
std::unique_ptr<CyclePath> InProcessPath(Backend* backend, Owner owner, Resource resource);
// posixfd's minimum on the lock file `file` (created): exclusive only.
std::unique_ptr<CyclePath> RawPosixfdPath(std::string file);
// A raw libdlm lock on `name` in `lockspace` (opened, or created).
absl::StatusOr<std::unique_ptr<CyclePath>> RawDlmPath(const std::string& lockspace,
                                                      const std::string& name);
// A raw libsanlock lease in `lockspace` (which the node's sanlock daemon
// has joined), `spec` NAME:PATH:OFFSET of a lease made with `sanlock direct
// init -r` (1 MiB aligned, 512-byte sectors): this process registers with
// the daemon; exclusive only.
absl::StatusOr<std::unique_ptr<CyclePath>> RawSanlockPath(const std::string& lockspace,
                                                         const std::string& spec);
// Registers this process as an owner (policy "ignore") with the latchd at
// `socket`; each cycle acquires and releases `lease` of `lockspace` on
// `backend`. Unregisters when destroyed.
absl::StatusOr<std::unique_ptr<CyclePath>> LatchdPath(const std::string& socket,
                                                      const std::string& backend,
                                                      const std::string& lockspace,
                                                      const std::string& lease);

// Runs `warmup` untimed and then `cycles` timed acquire+release cycles, each
// timed alone with a monotonic clock; the samples in seconds. With
// `max_seconds` > 0 the timed part also ends once it has run that long and
// has at least 5 samples (slow backends: a sanlock cycle takes ~0.3 s in the
// lab). Calls `progress(done, total)` after each cycle (may be empty). Stops
// with Cancelled when *stop becomes true, and with the failing call's error
// (naming the cycle) otherwise.
absl::StatusOr<std::vector<double>> TimeCycles(CyclePath& path, LockMode mode, int warmup,
                                               int cycles, double max_seconds,
                                               const std::atomic<bool>* stop,
                                               const std::function<void(int, int)>& progress);

// Ignores SIGPIPE, and has SIGINT, SIGTERM and SIGHUP set *stop (which
// must live as long as the program): a run then ends after the cycle in
// progress and cleans up. For latchbench and latchbench-node alike.
void StopOnSignals(std::atomic<bool>* stop);

// What one uncontended cycle is on `path` ("raw", "in-process", "latchd")
// for `backend`.
std::string CycleText(const std::string& backend, const std::string& path);

}  // namespace bench
}  // namespace latchkey

#endif  // LATCHKEY_TOOLS_LATCHBENCH_CYCLE_PATHS_H_
