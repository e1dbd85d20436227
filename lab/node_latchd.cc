#include "lab/node_latchd.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "core/owner.h"
#include "gtest/gtest.h"

namespace latchkey {
namespace lab {

absl::Status NodeLatchd::Start(int node, const std::string& conf, const std::string& log) const {
  absl::StatusOr<int> pid = lab_->Spawn(node, log, {"latchd", "--config", conf});
  if (!pid.ok()) return pid.status();
  absl::StatusOr<std::string> up = lab_->Sh(
      node, absl::StrCat("for i in $(seq 100); do latchctl --socket ", socket_,
                         " status >/dev/null 2>&1 && exit 0; sleep 0.1; done; "
                         "echo 'latchd did not answer in 10 s:' >&2; tail -n 20 ",
                         log, " >&2; exit 1"));
  return up.ok() ? absl::OkStatus() : up.status();
}

ClusterLab::Result NodeLatchd::Ctl(int node, const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {"/shared/bin/latchctl", "--socket", socket_};
  argv.insert(argv.end(), args.begin(), args.end());
  absl::StatusOr<ClusterLab::Result> r = lab_->Run(node, argv);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : ClusterLab::Result{-1, "", r.status().ToString()};
}

NodeLatchd::Vm NodeLatchd::NewVm(int node, const std::string& name,
                                 const std::string& policy) const {
  Vm vm{node, RandomUuid(), 0};
  absl::StatusOr<int> pid = lab_->Spawn(node, "/dev/null", {"sleep", "100000"});
  EXPECT_TRUE(pid.ok()) << pid.status();
  vm.pid = pid.ok() ? *pid : 0;
  ClusterLab::Result r = Ctl(node, {"register", "--owner", name, "--uuid", vm.uuid, "--pid",
                                    absl::StrCat(vm.pid), "--policy", policy});
  EXPECT_EQ(r.status, 0) << r.err;
  return vm;
}

bool NodeLatchd::Alive(const Vm& vm) const {
  absl::StatusOr<ClusterLab::Result> r =
      lab_->Run(vm.node, {"kill", "-0", absl::StrCat(vm.pid)});
  return r.ok() && r->status == 0;
}

absl::Status NodeLatchd::StartWaiter(const Vm& vm, const std::vector<std::string>& what,
                                     int wait_seconds, const std::string& tag) const {
  std::string cmd = absl::StrCat("rm -f /tmp/", tag, ".rc /tmp/", tag, ".at; latchctl --socket ",
                                 socket_, " acquire");
  for (const std::string& w : what) absl::StrAppend(&cmd, " '", w, "'");
  absl::StrAppend(&cmd, " --uuid ", vm.uuid, " --wait ", wait_seconds, "; rc=$?; date +%s.%N >/tmp/",
                  tag, ".at; echo $rc >/tmp/", tag, ".rc");
  absl::StatusOr<int> pid =
      lab_->Spawn(vm.node, absl::StrCat("/tmp/", tag, ".log"), {"sh", "-c", cmd});
  return pid.ok() ? absl::OkStatus() : pid.status();
}

std::string NodeLatchd::WaiterStatus(const Vm& vm, const std::string& tag,
                                     absl::Duration within) const {
  absl::StatusOr<std::string> rc = lab_->Sh(
      vm.node,
      absl::StrCat("for i in $(seq ", std::max<int64_t>(1, absl::ToInt64Milliseconds(within) / 100),
                   "); do [ -s /tmp/", tag, ".rc ] && { cat /tmp/", tag,
                   ".rc; exit 0; }; sleep 0.1; done; echo none"),
      within + absl::Seconds(60));
  EXPECT_TRUE(rc.ok()) << rc.status();
  return std::string(absl::StripAsciiWhitespace(rc.ok() ? *rc : ""));
}

absl::Time NodeLatchd::WaiterEndedAt(const Vm& vm, const std::string& tag) const {
  absl::StatusOr<std::string> at = lab_->Sh(vm.node, absl::StrCat("cat /tmp/", tag, ".at"));
  double secs = 0;
  if (!at.ok() || !absl::SimpleAtod(absl::StripAsciiWhitespace(*at), &secs)) {
    ADD_FAILURE() << "no end time for waiter " << tag << ": " << at.status();
    return absl::InfiniteFuture();
  }
  return absl::FromUnixMicros(static_cast<int64_t>(secs * 1e6));
}

}  // namespace lab
}  // namespace latchkey
