// The failover scenario (docs/latchbench.md, "Failover"): node 2 holds a
// lease, node 3 waits for it, a fault strikes node 2, and the time from the
// fault to node 3's grant is measured on the host's clock, split into
// detection (the survivor's view of the holder changes: corosync membership
// for the DLM, the holder's host lease FAIL for sanlock) and the rest
// (fencing, recovery, the grant). This file holds what does not need a lab:
// the faults, what each backend is expected to do, the shell of the
// survivor's detector, and the trial's record from its time stamps; the
// lab's part is LabRunner::Failover.
#ifndef LATCHKEY_TOOLS_LATCHBENCH_FAILOVER_H_
#define LATCHKEY_TOOLS_LATCHBENCH_FAILOVER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace latchkey {
namespace bench {

struct FaultInfo {
  const char* name;
  const char* what;
};
// Every fault the scenario knows, in the default order.
extern const FaultInfo kFaults[];
extern const int kFaultCount;

// Whether `fault` is one of kFaults.
bool KnownFault(const std::string& fault);
// The faults that apply to `backend` (dlm, sanlock, posixfd; nop excludes
// nobody and has none): a storage stall does not touch a DLM lock, and only
// the DLM and sanlock have a lock daemon of their own.
std::vector<std::string> FaultsFor(const std::string& backend);
// The process `daemon-kill` kills for `backend` ("" when it has none).
std::string LockDaemon(const std::string& backend);
// What a correct stack does after `fault`: "grant" (the survivor gets the
// lease), "kept" (it must not: latchd killed and restarted while its owner
// lives, so the owner still holds the lock), or "lost" where the backend
// declares it cannot keep it: its locks do not survive the process holding
// them (`locks_survive_holder`, the plugin's LK_CAP_SURVIVES_HOLDER_DEATH),
// and that process is latchd (posixfd: its OFD locks close with latchd's
// files, docs/libvirt.md; the restarted latchd then applies the owner's
// lock-failure policy).
std::string Expected(const std::string& fault, bool locks_survive_holder);
// Why "lost" is expected, for the record; "" otherwise.
std::string KnownLimit(const std::string& backend, const std::string& fault,
                       bool locks_survive_holder);

// A shell script for the survivor's node that watches node `holder` as
// `backend` sees it and appends "EVENT NS" lines (NS: that node's
// CLOCK_REALTIME) to `out` when it changes: "left" (corosync membership
// without the holder; dlm), "fail" and "dead" (sanlock's host state of the
// holder in `lockspace`). Empty for a backend with nothing to watch
// (posixfd: the NFS server's lease expiry is not visible from a client).
std::string DetectorScript(const std::string& backend, int holder, const std::string& lockspace,
                           const std::string& out);

// One trial's time stamps, host CLOCK_REALTIME in ns (0: did not happen).
struct TrialStamps {
  std::string backend, path, fault;
  bool locks_survive_holder = true;  // the backend's capability (Expected)
  int64_t injected = 0;  // the fault took effect (the lab's event, or the command's return)
  int64_t detected = 0;  // first detector event
  std::string detected_as;  // its name ("left", "fail")
  int64_t dead = 0;         // sanlock: the holder's host DEAD
  int64_t holder_down = 0;  // the holder's node seen dead by the host (fenced, watchdog, killed)
  int64_t granted = 0;      // the survivor's grant, as the host saw its line
  int64_t ended = 0;        // the trial's window closed
  double limit_s = 0;       // the window
  // The lab's events during the trial (fence, ...): host ms, name, rest.
  struct Event {
    int64_t unix_ms;
    std::string event, target, rest;
  };
  std::vector<Event> events;
};

// The trial's record (docs/latchbench.md): seconds from the fault to each
// stamp, "detection_s", "grant_after_detection_s", "outcome" ("granted",
// "kept", "not granted in N s") and "as_expected".
nlohmann::json TrialRecord(const TrialStamps& s);

}  // namespace bench
}  // namespace latchkey

#endif  // LATCHKEY_TOOLS_LATCHBENCH_FAILOVER_H_
