// The cluster lab from C++: N User-Mode-Linux nodes running corosync and
// dlm_controld with the kernel DLM, and optionally a storage node serving
// iSCSI LUNs and an NFSv4 export on a storage wire of its own, driven through
// lab/uml/uml-cluster (see docs/lab.md). Tests and benchmarks start one (or
// attach to the one a test run shares), install their binaries into the
// nodes' shared folder (/shared/bin), run commands on nodes, inject faults,
// and always stop what they started.
//
// Machines are numbered as the CLI numbers them: nodes 1..N, the storage
// node 0 (kStorage).
//
// Example:
//   absl::StatusOr<std::unique_ptr<ClusterLab>> lab = ClusterLab::Start({});
//   (*lab)->Install({"bazel-bin/agent/latchd"});
//   absl::StatusOr<ClusterLab::Result> r = (*lab)->Run(1, {"dlm_tool", "ls"});
//   (*lab)->Kill(3);
#ifndef LATCHKEY_LAB_CLUSTER_LAB_H_
#define LATCHKEY_LAB_CLUSTER_LAB_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace latchkey {
namespace lab {

struct ClusterLabOptions {
  // The lab's directory; empty: a private /tmp/lk-lab.XXXXXX, removed at Stop.
  std::string dir;
  int nodes = 3;
  // A storage node with these LUNs ("NAME:MIB"; none: the CLI's default)
  // and an NFSv4 export with this lease time.
  bool storage = false;
  std::vector<std::string> luns;
  int nfs_lease_seconds = 10;
  // wdmd (on UML's harddog) and a sanlock daemon in every node, the
  // lockspace "latchkey" at offset 0 of the LUN "lease" (needs storage).
  bool sanlock = false;
  // lab/uml/uml-cluster; empty: $LATCHKEY_UML_CLUSTER, else the runfiles' copy.
  std::string tool;
};

// One line of DIR/events.log.
struct LabEvent {
  int64_t unix_ms = 0;
  std::string event;   // "partition", "storage-stall", ...
  std::string target;  // "node2", "storage", "node1,node2|node3", "lab"
  std::string rest;    // key=value words, as logged
};

inline constexpr int kStorage = 0;

class ClusterLab {
 public:
  struct Result {
    int status = 0;  // the command's exit status (124: timed out)
    std::string out;
    std::string err;
  };

  // Starts a lab, or, when options.dir is empty and $LATCHKEY_LAB_DIR names
  // a running lab that fits the options (same nodes; storage, LUNs and NFS
  // lease if asked), uses that one after `reset`; Stop then resets it
  // instead of stopping it. A lab that does not fit is named on stderr and
  // a private one started.
  static absl::StatusOr<std::unique_ptr<ClusterLab>> Start(const ClusterLabOptions& options);
  ~ClusterLab();
  ClusterLab(const ClusterLab&) = delete;
  ClusterLab& operator=(const ClusterLab&) = delete;

  // Tears every machine down (by PID), keeps DIR/logs; a shared lab is
  // reset instead. Idempotent.
  absl::Status Stop();

  // Runs argv on machine `node`; returns whatever its exit status.
  absl::StatusOr<Result> Run(int node, const std::vector<std::string>& argv,
                             absl::Duration timeout = absl::Seconds(120));
  // Runs a shell script on the machine; an error (with its output) unless it
  // exits 0. Returns its stdout.
  absl::StatusOr<std::string> Sh(int node, const std::string& script,
                                 absl::Duration timeout = absl::Seconds(120));
  // Starts a daemon on the machine (own session, output appended to `log`,
  // a path in the node); returns its pid in the node.
  absl::StatusOr<int> Spawn(int node, const std::string& log,
                            const std::vector<std::string>& argv);
  // Copies files (and the libraries they need) into the nodes' /shared/bin.
  absl::Status Install(const std::vector<std::string>& files);

  // `uml-cluster reset`: every fault lifted, leftover commands killed, dead
  // or damaged machines restarted, the cluster whole again.
  absl::Status Reset();

  // Node faults.
  absl::Status Freeze(int node);
  absl::Status Thaw(int node);
  absl::Status Kill(int node);
  absl::Status Restart(int node);
  // Network faults; `wire` is "cluster", "storage" or "both".
  absl::Status Cut(int node, const std::string& wire = "");
  absl::Status Heal(int node, const std::string& wire = "");
  absl::Status Partition(const std::vector<std::vector<int>>& sides);
  absl::Status Unpartition();
  absl::Status Netem(int node, const std::string& wire, const std::vector<std::string>& spec);
  absl::Status NetemClear(int node, const std::string& wire);
  // Storage, daemon and clock faults.
  absl::Status StorageStall(int node);
  absl::Status StorageResume(int node);
  absl::Status StorageErrors(int node, const std::string& lun = "");
  absl::Status StorageErrorsClear(int node, const std::string& lun = "");
  absl::Status DaemonKill(int node, const std::string& name, const std::string& signal = "");
  absl::Status NfsRestart();
  absl::Status ClockJump(int node, int64_t seconds);
  // DLM fencing (lab/uml/lib/fencing.sh): on (the default, and after every
  // reset), a failed node is killed by the host before the survivors'
  // dlm_controld recovers its locks; off, fence requests are acknowledged
  // without killing anything (as without fencing).
  absl::Status SetFencing(bool on);

  // `uml-cluster status`: one line per machine ("node3 dead ...").
  absl::StatusOr<std::string> Status();
  // Polls Status() every 250 ms until `node` is dead; returns how long after
  // `since` that was seen, or InfiniteDuration() if not within `limit`.
  absl::Duration WaitDead(int node, absl::Time since, absl::Duration limit);
  // Every node's logs into `out`. By default: a test's saved outputs
  // ($TEST_UNDECLARED_OUTPUTS_DIR/lab-logs) under Bazel, else DIR/logs.
  absl::Status CollectLogs(const std::string& out = "");
  // DIR/events.log, oldest first.
  absl::StatusOr<std::vector<LabEvent>> Events() const;

  const std::string& dir() const { return dir_; }
  int nodes() const { return nodes_; }
  // The host path of the nodes' /shared.
  std::string shared() const { return dir_ + "/shared"; }

 private:
  ClusterLab() = default;
  absl::StatusOr<Result> Tool(const std::vector<std::string>& args);
  absl::Status ToolOk(const std::vector<std::string>& args);

  std::string tool_;
  std::string dir_;
  bool own_dir_ = false;
  bool shared_ = false;  // $LATCHKEY_LAB_DIR's: reset, never stopped
  int nodes_ = 0;
  bool running_ = false;
};

// The path of a file of this workspace in the runfiles of the running test
// or `bazel run` binary ($TEST_SRCDIR or $RUNFILES_DIR), e.g.
// Runfile("agent/latchd"); `rel` itself when neither is set.
std::string Runfile(const std::string& rel);

// Runs argv on the host with stdout and stderr captured apart.
absl::StatusOr<ClusterLab::Result> RunCaptured(const std::vector<std::string>& argv);

}  // namespace lab
}  // namespace latchkey

#endif  // LATCHKEY_LAB_CLUSTER_LAB_H_
