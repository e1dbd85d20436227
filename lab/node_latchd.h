// latchd on cluster lab nodes, driven with latchctl as the cluster suites
// drive it: start one per node, register owner processes ("VMs"), acquire
// and release, and wait for a background acquire while a fault runs.
//
//   lab::NodeLatchd latchd(lab, "/run/latchkey-sanlock/latchd.sock");
//   ASSERT_TRUE(latchd.Start(1, "/shared/latchd-sanlock-1.conf", "/shared/node1/latchd.log").ok());
//   lab::NodeLatchd::Vm vm = latchd.NewVm(1, "vm-a");
//   ClusterLab::Result r = latchd.Ctl(1, {"acquire", "--disk", img, "--uuid", vm.uuid});
#ifndef LATCHKEY_LAB_NODE_LATCHD_H_
#define LATCHKEY_LAB_NODE_LATCHD_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "lab/cluster_lab.h"

namespace latchkey {
namespace lab {

class NodeLatchd {
 public:
  // `socket`: the latchd socket path in the nodes (its config's `socket`).
  NodeLatchd(ClusterLab* lab, std::string socket) : lab_(lab), socket_(std::move(socket)) {}

  // Spawns latchd --config `conf` on `node` (paths in the node), output
  // appended to `log`; returns once `latchctl status` answers (10 s), or an
  // error with the log's tail.
  absl::Status Start(int node, const std::string& conf, const std::string& log) const;

  // latchctl --socket SOCKET ARGS... on `node`; a failure to run it is
  // reported as status -1 (and a test failure).
  ClusterLab::Result Ctl(int node, const std::vector<std::string>& args) const;

  // A `sleep` process on `node` registered as owner `name` (a fresh UUID)
  // with `policy`.
  struct Vm {
    int node = 0;
    std::string uuid;
    int pid = 0;
  };
  Vm NewVm(int node, const std::string& name, const std::string& policy = "terminate") const;
  // Whether the VM's process still runs.
  bool Alive(const Vm& vm) const;

  // `latchctl acquire WHAT... --uuid VM --wait SECONDS` in the background on
  // the VM's node; its exit status and the node's clock at its end go to
  // /tmp/TAG.rc and /tmp/TAG.at.
  absl::Status StartWaiter(const Vm& vm, const std::vector<std::string>& what, int wait_seconds,
                           const std::string& tag) const;
  // The waiter's exit status ("0" granted, ...), or "none" if it still
  // waits after `within`.
  std::string WaiterStatus(const Vm& vm, const std::string& tag, absl::Duration within) const;
  // When the waiter ended, on the node's own clock. A node's clock is the
  // host's at its boot and then its own: nodes differ from each other by
  // tens of ms (docs/latchbench.md, "Clocks"); fine for the failover times
  // of seconds it is used for, not for milliseconds.
  absl::Time WaiterEndedAt(const Vm& vm, const std::string& tag) const;

  const std::string& socket() const { return socket_; }

 private:
  ClusterLab* lab_;
  std::string socket_;
};

}  // namespace lab
}  // namespace latchkey

#endif  // LATCHKEY_LAB_NODE_LATCHD_H_
