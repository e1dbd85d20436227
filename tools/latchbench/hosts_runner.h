// latchbench on real hosts that run latchd (latchbench run --hosts): no
// lab, no faults; the hosts are reached through a remote shell
// (remote_shell.h), latchbench-node is copied into a private directory on
// each (removed at the end), and it talks to the host's own latchd at the
// socket given. Measures what needs only latchd: uncontended cycles on the
// first host, hand-offs between the first two (docs/latchbench.md, "Real
// hosts").
//
//   absl::StatusOr<std::vector<HostSpec>> hosts = ParseHosts("a,b=/run/l.sock");
//   absl::StatusOr<std::unique_ptr<HostsRunner>> r = HostsRunner::Start(setup);
//   absl::StatusOr<std::vector<double>> s =
//       (*r)->Cycles(1, "dlm", LockMode::kExclusive, "lease-1", 20, 200, 5);
#ifndef LATCHKEY_TOOLS_LATCHBENCH_HOSTS_RUNNER_H_
#define LATCHKEY_TOOLS_LATCHBENCH_HOSTS_RUNNER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/lock_mode.h"
#include "nlohmann/json.hpp"
#include "tools/latchbench/remote_shell.h"

namespace latchkey {
namespace bench {

struct HostSpec {
  std::string host;    // as the remote shell names it ([user@]name)
  std::string socket;  // latchd's socket on that host
};

// "HOST[=SOCKET],..." (SOCKET defaults to latchd's, /run/latchkey/latchd.sock).
// An error names the bad entry: an empty host, a socket that is not an
// absolute path, a host or socket with characters a shell or the template
// would read (anything but letters, digits and ._-@:/+).
absl::StatusOr<std::vector<HostSpec>> ParseHosts(const std::string& list);

struct HostsSetup {
  std::vector<HostSpec> hosts;
  std::string rsh = "ssh -o BatchMode=yes {}";
  std::string node_binary;  // latchbench-node on this machine, copied to every host
  int clock_port = 7718;    // UDP, host 1's clock server (hand-off)
};

class HostsRunner {
 public:
  // Copies latchbench-node to every host and asks each host's latchd for
  // its `hello`. The error names the host and what failed.
  static absl::StatusOr<std::unique_ptr<HostsRunner>> Start(const HostsSetup& setup);
  // Removes latchbench-node's directory from every host.
  ~HostsRunner();
  HostsRunner(const HostsRunner&) = delete;
  HostsRunner& operator=(const HostsRunner&) = delete;

  // One block of uncontended cycles through host `host`'s latchd (1-based).
  absl::StatusOr<std::vector<double>> Cycles(int host, const std::string& backend, LockMode mode,
                                             const std::string& lease, int warmup, int cycles,
                                             double max_seconds);
  // What the last Cycles block cost its host (cost_counters.h), or null.
  nlohmann::json LastCost() const { return last_cost_; }
  // Hand-offs of `lease` between hosts 1 and 2 (handoff_samples.h), on host
  // 1's clock; the clocks are measured first when they were not.
  absl::StatusOr<std::vector<double>> Handoffs(const std::string& backend,
                                               const std::string& lease, int rounds, int hold_ms,
                                               double max_seconds);
  // Host K's clock against host 1's, K = 2..: host 1 serves clock probes on
  // UDP clock_port, the others probe it at its name (the part after '@').
  // As LabRunner::MeasureClocks, with "host" for "node".
  absl::StatusOr<nlohmann::json> MeasureClocks();
  // The backends every host's latchd has (the first host's order).
  std::vector<std::string> Backends() const;
  // {"rsh", "hosts": [{"host", "socket", "hostname", "kernel", "cpus", "hello"}]}.
  nlohmann::json Topology() const { return topology_; }
  int hosts() const { return static_cast<int>(setup_.hosts.size()); }

 private:
  HostsRunner(HostsSetup setup, RemoteShell sh) : setup_(std::move(setup)), sh_(std::move(sh)) {}
  // The command to run latchbench-node on host `i` (0-based) with `args`
  // (each quoted).
  std::string Node(size_t i, const std::vector<std::string>& args) const;
  std::string Where(size_t i) const;

  HostsSetup setup_;
  RemoteShell sh_;
  std::vector<std::string> dirs_;  // per host: latchbench-node's directory there
  int64_t clock_offset_ = 0, clock_uncertainty_ = 0;
  bool clocks_measured_ = false;
  nlohmann::json topology_, last_cost_;
};

}  // namespace bench
}  // namespace latchkey

#endif  // LATCHKEY_TOOLS_LATCHBENCH_HOSTS_RUNNER_H_
