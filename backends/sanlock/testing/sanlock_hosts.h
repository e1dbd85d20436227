// Test helpers for the sanlock suites that play several hosts on one
// machine: a sanlock lab (lab/sanlock_lab.h) with one real latchd per host,
// and the requests those suites send. Used by sanlock_4k_test and
// sanlock_slots_test.
//
// Example:
//   SanlockHosts hosts;
//   ASSERT_TRUE(hosts.Start(lab_options, [](int h, const SanlockLab& lab) {
//     return absl::StrCat(SanlockHosts::BaseConfig(lab, h), "sanlock_lease_dir = ...\n");
//   }).ok());
//   Vm a("vm-a");
//   hosts.Register(1, a);
//   absl::StatusOr<nlohmann::json> g = hosts.Acquire(1, a, {{{"disk", "/x.img"}}});
//
// Thread safety: thread-compatible; Call and the requests may run from
// several threads at once (one connection each).
#ifndef LATCHKEY_BACKENDS_SANLOCK_TESTING_SANLOCK_HOSTS_H_
#define LATCHKEY_BACKENDS_SANLOCK_TESTING_SANLOCK_HOSTS_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/testing/latchd_process.h"
#include "lab/sanlock_lab.h"
#include "nlohmann/json.hpp"

namespace latchkey {
namespace testing {

class SanlockHosts {
 public:
  using Json = nlohmann::json;
  using ConfigFn = std::function<std::string(int host, const lab::SanlockLab& lab)>;

  ~SanlockHosts() { Stop(); }

  // Starts the lab and one latchd per host with config(h, lab), and waits
  // until every latchd has joined its (first) sanlock lockspace.
  absl::Status Start(const lab::SanlockLabOptions& options, ConfigFn config);
  // Kills every latchd (SIGKILL) and stops the lab.
  absl::Status Stop();
  void PrintLogsIfFailed() const;  // every latchd's log, when the test failed

  // The settings every host needs (both backends, the lab's lockspace,
  // io_timeout 1 s, fast polls); append the rest.
  static std::string BaseConfig(const lab::SanlockLab& lab, int host);

  lab::SanlockLab& lab() const { return *lab_; }
  LatchdProcess& latchd(int host) const { return *latchd_[host - 1]; }

  static absl::StatusOr<Json> Call(LatchdProcess& d, Json request,
                                   absl::Duration timeout = absl::Seconds(120));
  // The state latchd reports for its first sanlock lockspace (null if none).
  static Json LockspaceState(LatchdProcess& d);
  // Fails the test unless `d` shows its lockspace joined within `limit`.
  static void WaitJoined(LatchdProcess& d, absl::Duration limit = absl::Seconds(40));
  static void Register(LatchdProcess& d, const Vm& vm, const std::string& policy = "terminate");
  static absl::StatusOr<Json> Acquire(LatchdProcess& d, const Vm& vm, Json resources);
  static absl::StatusOr<Json> Release(LatchdProcess& d, const Vm& vm, Json resources);
  // The sanlock backend's administrative command (latchctl leases*).
  static absl::StatusOr<Json> Admin(LatchdProcess& d, Json request);

 private:
  std::unique_ptr<lab::SanlockLab> lab_;
  std::vector<std::unique_ptr<LatchdProcess>> latchd_;
};

}  // namespace testing
}  // namespace latchkey

#endif  // LATCHKEY_BACKENDS_SANLOCK_TESTING_SANLOCK_HOSTS_H_
