// The failover scenario's lab-free part (failover.h).
#include "tools/latchbench/failover.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace latchkey {
namespace bench {

using json = nlohmann::json;

const FaultInfo kFaults[] = {
    {"node-kill", "the holder's node killed: every host process of its UML machine, SIGKILL"},
    {"node-freeze",
     "the holder's node frozen (mconsole stop): its processes and timers stop, its sockets and "
     "disks stay open"},
    {"cut", "the holder's node cut off both wires (cluster and storage): every packet dropped"},
    {"partition", "the cluster wire split: the holder's node alone, the other two together"},
    {"storage-stall", "the holder's node's storage traffic (iSCSI, NFS) dropped"},
    {"daemon-kill",
     "the backend's lock daemon on the holder's node killed -9 (dlm: corosync; sanlock: sanlock)"},
    {"owner-kill", "the owner (the process holding the lease through latchd) killed -9"},
    {"latchd-kill",
     "latchd on the holder's node killed -9 and started again at once, as a service manager "
     "would; its owner lives, so the lock must stay (no grant expected)"},
};
const int kFaultCount = sizeof kFaults / sizeof kFaults[0];

bool KnownFault(const std::string& fault) {
  for (const FaultInfo& f : kFaults) {
    if (fault == f.name) return true;
  }
  return false;
}

std::string LockDaemon(const std::string& backend) {
  if (backend == "dlm") return "corosync";
  if (backend == "sanlock") return "sanlock";
  return "";
}

std::vector<std::string> FaultsFor(const std::string& backend) {
  std::vector<std::string> out;
  if (backend != "dlm" && backend != "sanlock" && backend != "posixfd") return out;
  for (const FaultInfo& f : kFaults) {
    const std::string name = f.name;
    if (name == "storage-stall" && backend == "dlm") continue;
    if (name == "daemon-kill" && LockDaemon(backend).empty()) continue;
    out.push_back(name);
  }
  return out;
}

std::string Expected(const std::string& fault, bool locks_survive_holder) {
  if (fault != "latchd-kill") return "grant";
  return locks_survive_holder ? "kept" : "lost";
}

std::string KnownLimit(const std::string& backend, const std::string& fault,
                       bool locks_survive_holder) {
  if (Expected(fault, locks_survive_holder) != "lost") return "";
  return absl::StrCat(
      backend, " declares that its locks do not survive the process holding them (no "
      "LK_CAP_SURVIVES_HOLDER_DEATH), and latchd is that process",
      backend == "posixfd" ? " (its OFD locks are latchd's open files)" : "",
      ": another host can take the lease before the restarted latchd takes it again, which "
      "then applies the owner's lock-failure policy (docs/libvirt.md, posixfd and latchd's "
      "kill -9)");
}

std::string DetectorScript(const std::string& backend, int holder, const std::string& lockspace,
                           const std::string& out) {
  if (backend == "dlm") {
    // corosync keeps a member that left as "left".
    return absl::StrCat("while :; do case \"$(corosync-cmapctl -g runtime.members.", holder,
                        ".status 2>/dev/null)\" in *left*) echo \"left $(date +%s%N)\" >>", out,
                        "; exit 0;; esac; sleep 0.05; done");
  }
  if (backend == "sanlock") {
    // `gets -h 1`: "s LOCKSPACE:..." lines, each followed by its hosts,
    // "h ID gen G timestamp T LIVE|FAIL|DEAD|UNKNOWN|FREE".
    return absl::StrCat(
        "f=; while :; do l=$(sanlock client gets -h 1 2>/dev/null | awk '/^s /{on=index($2,\"",
        lockspace, ":\")==1} on && $1==\"h\" && $2==\"", holder,
        "\"'); case \"$l\" in *FAIL*) [ -n \"$f\" ] || { echo \"fail $(date +%s%N)\" >>", out,
        "; f=1; };; *DEAD*) [ -n \"$f\" ] || echo \"fail $(date +%s%N)\" >>", out,
        "; echo \"dead $(date +%s%N)\" >>", out, "; exit 0;; esac; sleep 0.2; done");
  }
  return "";
}

json TrialRecord(const TrialStamps& s) {
  const auto since = [&](int64_t t) -> json {
    if (t == 0 || s.injected == 0) return nullptr;
    return static_cast<double>(t - s.injected) / 1e9;
  };
  const std::string expected = Expected(s.fault, s.locks_survive_holder);
  std::string outcome;
  if (s.granted != 0) {
    outcome = "granted";
  } else if (s.fault == "latchd-kill") {
    outcome = "kept";
  } else {
    outcome = absl::StrFormat("not granted in %.0f s", s.limit_s);
  }
  json events = json::array();
  for (const TrialStamps::Event& e : s.events) {
    events.push_back({{"at_s", s.injected == 0 ? 0.0 : (e.unix_ms * 1e6 - s.injected) / 1e9},
                      {"event", e.event},
                      {"target", e.target},
                      {"rest", e.rest}});
  }
  json r = {{"backend", s.backend},
            {"path", s.path},
            {"fault", s.fault},
            {"expected", expected},
            {"outcome", outcome},
            {"as_expected", expected == "kept" ? s.granted == 0 : s.granted != 0},
            {"known_limit", KnownLimit(s.backend, s.fault, s.locks_survive_holder)},
            {"limit_s", s.limit_s},
            {"grant_s", since(s.granted)},
            {"detection_s", since(s.detected)},
            {"detected_as", s.detected_as},
            {"dead_s", since(s.dead)},
            {"holder_down_s", since(s.holder_down)},
            {"window_s", since(s.ended)},
            {"events", events}};
  // Detection, and the grant after it, where both were seen in order.
  if (s.granted != 0 && s.detected != 0 && s.detected <= s.granted) {
    r["grant_after_detection_s"] = static_cast<double>(s.granted - s.detected) / 1e9;
  } else {
    r["grant_after_detection_s"] = nullptr;
  }
  return r;
}

}  // namespace bench
}  // namespace latchkey
