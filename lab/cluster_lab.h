// The DLM cluster lab from C++: N User-Mode-Linux nodes running corosync and
// dlm_controld with the kernel DLM, driven through lab/uml/uml-cluster (see
// docs/lab.md). Tests and benchmarks start one, install their binaries into
// the nodes' shared folder (/shared/bin), run commands on nodes, inject
// faults, and always stop it (the destructor stops a lab that is still up).
//
// Example:
//   absl::StatusOr<std::unique_ptr<DlmLab>> lab = DlmLab::Start({});
//   (*lab)->Install({"bazel-bin/agent/latchd"});
//   absl::StatusOr<DlmLab::Result> r = (*lab)->Run(1, {"dlm_tool", "ls"});
//   (*lab)->Kill(3);
#ifndef LATCHKEY_LAB_DLM_LAB_H_
#define LATCHKEY_LAB_DLM_LAB_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace latchkey {
namespace lab {

struct DlmLabOptions {
  // The lab's directory; empty: a private /tmp/lk-dlm.XXXXXX, removed at Stop.
  std::string dir;
  int nodes = 3;
  // lab/uml/uml-cluster; empty: $LATCHKEY_UML_CLUSTER, else the runfiles' copy.
  std::string tool;
};

class DlmLab {
 public:
  struct Result {
    int status = 0;  // the command's exit status (124: timed out)
    std::string out;
    std::string err;
  };

  static absl::StatusOr<std::unique_ptr<DlmLab>> Start(const DlmLabOptions& options);
  ~DlmLab();
  DlmLab(const DlmLab&) = delete;
  DlmLab& operator=(const DlmLab&) = delete;

  // Tears every node down (by PID), keeps DIR/logs. Idempotent.
  absl::Status Stop();

  // Runs argv on node `node` (1-based); returns whatever its exit status.
  absl::StatusOr<Result> Run(int node, const std::vector<std::string>& argv,
                             absl::Duration timeout = absl::Seconds(120));
  // Runs a shell script on the node; an error (with its output) unless it
  // exits 0. Returns its stdout.
  absl::StatusOr<std::string> Sh(int node, const std::string& script,
                                 absl::Duration timeout = absl::Seconds(120));
  // Copies files (and the libraries they need) into the nodes' /shared/bin.
  absl::Status Install(const std::vector<std::string>& files);

  absl::Status Freeze(int node);
  absl::Status Thaw(int node);
  absl::Status Kill(int node);
  absl::Status Restart(int node);
  absl::Status Cut(int node);
  absl::Status Heal(int node);
  // Every node's logs into `out` (default DIR/logs).
  absl::Status CollectLogs(const std::string& out = "");

  const std::string& dir() const { return dir_; }
  int nodes() const { return nodes_; }
  // The host path of the nodes' /shared.
  std::string shared() const { return dir_ + "/shared"; }

 private:
  DlmLab() = default;
  absl::StatusOr<Result> Tool(const std::vector<std::string>& args);
  absl::Status ToolOk(const std::vector<std::string>& args);

  std::string tool_;
  std::string dir_;
  bool own_dir_ = false;
  int nodes_ = 0;
  bool running_ = false;
};

// Runs argv on the host with stdout and stderr captured apart.
absl::StatusOr<DlmLab::Result> RunCaptured(const std::vector<std::string>& argv);

}  // namespace lab
}  // namespace latchkey

#endif  // LATCHKEY_LAB_DLM_LAB_H_
