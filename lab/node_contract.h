// The backend contract suite (//tests/contract) run inside a cluster lab
// node, against the node's real daemons and storage: each backend's cluster
// suite installs it once and runs it with the backend's settings.
#ifndef LATCHKEY_LAB_NODE_CONTRACT_H_
#define LATCHKEY_LAB_NODE_CONTRACT_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lab/cluster_lab.h"

namespace latchkey {
namespace lab {

// Installs the suite, its lock holder, the plugin (a runfile path such as
// "backends/dlm/latchkey-dlm.so") and the fixture plugin the suite looks
// for under $TEST_SRCDIR (/shared/srcdir in the nodes). The test must list
// //tests/contract:contract_suite_main, //tests/contract:lock_holder and
// //tests/testdata:latchkey-badabi.so in its data.
absl::Status InstallContractSuite(ClusterLab* lab, const std::string& plugin_runfile);

// Runs the suite on `node` for `backend` (its plugin installed as
// /shared/bin/latchkey-BACKEND.so) with `settings` (conf text; @TMP@ is a
// fresh directory per case, made under a new directory in `tmp_parent`,
// which is removed afterwards). Up to 10 minutes.
absl::StatusOr<ClusterLab::Result> RunContractSuite(ClusterLab* lab, int node,
                                                    const std::string& backend,
                                                    const std::string& settings,
                                                    const std::string& tmp_parent = "/tmp");

}  // namespace lab
}  // namespace latchkey

#endif  // LATCHKEY_LAB_NODE_CONTRACT_H_
