// latchbench on the cluster lab: starts a lab (or attaches to a running
// one), installs latchbench-node, latchd and the plugins into the nodes,
// starts a latchd on every node for the backends measured, and runs timed
// blocks on a node (docs/latchbench.md, "The lab").
//
//   absl::StatusOr<std::unique_ptr<LabRunner>> lab = LabRunner::Start(setup);
//   absl::StatusOr<std::vector<double>> s =
//       (*lab)->Cycles(1, "dlm", "raw", LockMode::kExclusive, "lease-1", 20, 200);
#ifndef LATCHKEY_TOOLS_LATCHBENCH_LAB_RUNNER_H_
#define LATCHKEY_TOOLS_LATCHBENCH_LAB_RUNNER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/lock_mode.h"
#include "lab/cluster_lab.h"
#include "nlohmann/json.hpp"
#include "tools/latchbench/contention.h"

namespace latchkey {
namespace bench {

struct LabSetup {
  std::string attach;                  // a running lab's directory; empty: start one
  std::string uml_cluster;             // lab/uml/uml-cluster
  std::vector<std::string> install;    // latchbench-node, latchd, latchctl, plugins
  std::vector<std::string> backends;   // dlm, sanlock, posixfd, nop
};

class LabRunner {
 public:
  // The DLM lockspace, and sanlock's lockspace and lease area on the LUN
  // "lease" (below the lab's own lockspace, apart from the test suites').
  static constexpr char kDlmLockspace[] = "latchbench";
  static constexpr char kSanlockLockspace[] = "latchbench";
  static constexpr char kSocket[] = "/run/latchbench/latchd.sock";
  static constexpr int kSanlockIoTimeout = 2;

  static absl::StatusOr<std::unique_ptr<LabRunner>> Start(const LabSetup& setup);
  // Stops every latchd it started (by PID), has each node's sanlock leave
  // latchbench's lockspace, and stops the lab (resets it when attached).
  ~LabRunner();
  LabRunner(const LabRunner&) = delete;
  LabRunner& operator=(const LabRunner&) = delete;

  // One block of uncontended cycles on `node` (latchbench-node cycles).
  absl::StatusOr<std::vector<double>> Cycles(int node, const std::string& backend,
                                             const std::string& path, LockMode mode,
                                             const std::string& lease, int warmup, int cycles,
                                             double max_seconds);
  // What the last Cycles block's timed cycles cost its node
  // (cost_counters.h: CostDelta, plus "node"); null if not reported.
  nlohmann::json LastCost() const { return last_cost_; }
  // Hand-offs of `lease` between node1 and node2 on `backend` and `path`:
  // both run `latchbench-node handoff` at once (ROUNDS each, holding
  // `hold_ms`, at most `max_seconds` each when > 0); a sample is the time
  // from one node's release to the other node's next grant, in seconds, on
  // node 1's clock (node 2's timestamps corrected by the measured offset,
  // MeasureClocks; measured first if it was not). An error when the two
  // nodes' holding intervals overlap by more than the offset's uncertainty.
  absl::StatusOr<std::vector<double>> Handoffs(const std::string& backend,
                                               const std::string& path,
                                               const std::string& lease, int rounds, int hold_ms,
                                               double max_seconds);
  // The contended scenario on nodes 1..`nodes` at once: each runs
  // `latchbench-node contend` with `owners` owners on leases PREFIX-1..K;
  // they start together (a go file on /shared once every node is ready).
  // Every owner's tally, node 1's owners first.
  absl::StatusOr<std::vector<OwnerTally>> Contend(const std::string& backend,
                                                  const std::string& path, int nodes, int owners,
                                                  const std::string& prefix, int resources,
                                                  bool hot, double seconds, uint64_t seed,
                                                  int hold_us);
  // One failover trial (failover.h): node 2 holds `lease` exclusively on
  // `backend` and `path`, node 3 waits for it, `fault` strikes node 2, and
  // node 3's grant is awaited for `limit_s` (20 s at most for latchd-kill,
  // where none is expected). Returns the trial's record (TrialRecord);
  // afterwards the lab is reset (dead nodes restarted) and every latchd is
  // running again. An error when the trial could not be set up, or when
  // node 3 was granted the lease before the fault.
  absl::StatusOr<nlohmann::json> Failover(const std::string& backend, const std::string& path,
                                          const std::string& fault, const std::string& lease,
                                          double limit_s);
  // The scale scenario on node 1 through latchd: one owner takes `locks`
  // exclusive leases PREFIX-0.. on `backend` (requests of 500), latchd is
  // killed -9 and started again (it adopts them), the owner is
  // unregistered (they are released). Times (in the node), latchd's
  // adoption line, and memory before, holding, adopted and after (latchd's
  // and sanlock's resident set, latchd's open files, the kernel DLM's lock
  // and resource objects). A refusal while taking them is recorded in
  // "outcome", not returned as an error.
  absl::StatusOr<nlohmann::json> Scale(const std::string& backend, int locks,
                                       const std::string& prefix);
  // The free slots of latchbench's sanlock lease area (latchctl leases).
  absl::StatusOr<int> SanlockFreeSlots();
  // Has `node` master the DLM resources `names` (an NL lock on each, held
  // until the runner ends).
  absl::Status MasterOn(int node, const std::vector<std::string>& names);
  // Every node's clock against node 1's (node K's minus node 1's), measured
  // over the cluster wire (clock_sync.h): {"reference": "node1", "nodes":
  // [{"node": K, "offset_ns", "uncertainty_ns", "min_rtt_ns", "samples"}],
  // "measured_at": host ns}; kept for Handoffs.
  absl::StatusOr<nlohmann::json> MeasureClocks();
  // Whether `backend`'s locks outlive the process holding them (latchd):
  // its plugin's LK_CAP_SURVIVES_HOLDER_DEATH, read in node 1 (`latchctl
  // backends --json`, kept in Topology()["capabilities"]).
  bool LocksSurviveHolder(const std::string& backend) const {
    return topology_["capabilities"].value(backend, nlohmann::json::object())
        .value("survives_holder_death", false);
  }
  // The lockspace a backend's leases are named in.
  static std::string Lockspace(const std::string& backend);
  // What the lab is: nodes, storage, each backend's storage and timeouts
  // (corosync token read from node 1), the lab directory.
  nlohmann::json Topology() const { return topology_; }
  // latchd's hello on node 1.
  nlohmann::json Hello() const { return hello_; }

 private:
  LabRunner() = default;
  absl::Status Prepare(const LabSetup& setup);
  // Starts (or starts again) node n's latchd and waits for its answer.
  absl::Status StartLatchd(int n);
  // `reset` (when `reset`: it also ends every command the lab started,
  // latchd too), the trial's holders stopped, and every node's latchd
  // started again where it is gone.
  absl::Status RestoreAfterFault(bool reset);
  // The last line written so far to `out` (a path under /shared) by a
  // latchbench-node loop; "" while there is none.
  std::string LastLine(const std::string& out) const;

  std::unique_ptr<lab::ClusterLab> lab_;
  std::vector<std::string> backends_;
  std::vector<std::pair<int, int>> latchds_;  // node, pid in the node
  std::vector<std::pair<int, int>> holders_;  // node, pid of hold-nl
  std::map<int, int64_t> clock_offsets_;      // node K's clock minus node 1's, ns
  std::map<int, int64_t> clock_uncertainty_;  // +- ns
  nlohmann::json topology_, hello_, last_cost_;
};

}  // namespace bench
}  // namespace latchkey

#endif  // LATCHKEY_TOOLS_LATCHBENCH_LAB_RUNNER_H_
