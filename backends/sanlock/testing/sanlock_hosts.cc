#include "backends/sanlock/testing/sanlock_hosts.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace latchkey {
namespace testing {

absl::Status SanlockHosts::Start(const lab::SanlockLabOptions& options, ConfigFn config) {
  absl::StatusOr<std::unique_ptr<lab::SanlockLab>> l = lab::SanlockLab::Start(options);
  if (!l.ok()) return l.status();
  lab_ = std::move(*l);
  for (int h = 1; h <= lab_->hosts(); ++h) {
    latchd_.push_back(std::make_unique<LatchdProcess>(TempDir(absl::StrCat("host", h)),
                                                      config(h, *lab_)));
    if (absl::Status s = latchd_.back()->Start(); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("latchd of host", h, ": ", s.message(), "\n",
                                                  latchd_.back()->Log()));
    }
  }
  for (auto& d : latchd_) WaitJoined(*d);
  return absl::OkStatus();
}

absl::Status SanlockHosts::Stop() {
  for (auto& d : latchd_) {
    if (d->running()) d->Kill(SIGKILL);
  }
  latchd_.clear();
  absl::Status s;
  if (lab_ != nullptr) s = lab_->Stop();
  lab_.reset();
  return s;
}

void SanlockHosts::PrintLogsIfFailed() const {
  if (!::testing::Test::HasFailure()) return;
  for (size_t i = 0; i < latchd_.size(); ++i) {
    fprintf(stderr, "== latchd host%zu log:\n%s\n", i + 1, latchd_[i]->Log().c_str());
  }
}

std::string SanlockHosts::BaseConfig(const lab::SanlockLab& lab, int h) {
  return absl::StrCat("backends = [ \"sanlock\", \"posixfd\" ]\nlockspace = \"",
                      lab.options().lockspace, "\"\nsanlock_run_dir = \"", lab.RunDir(h),
                      "\"\nsanlock_host_id = ", h, "\nsanlock_io_timeout = 1\n",
                      "sanlock_lockspaces = [ \"", lab.LockspaceSpec(), "\" ]\n",
                      "sanlock_notify_dir = \"/tmp\"\nsanlock_poll_ms = 50\n");
}

absl::StatusOr<SanlockHosts::Json> SanlockHosts::Call(LatchdProcess& d, Json request,
                                                      absl::Duration timeout) {
  absl::StatusOr<LatchdClient> c = d.Connect();
  if (!c.ok()) return c.status();
  return c->Call(request, timeout);
}

SanlockHosts::Json SanlockHosts::LockspaceState(LatchdProcess& d) {
  absl::StatusOr<Json> st = Call(d, {{"op", "status"}});
  if (!st.ok()) return Json();
  for (const Json& b : (*st)["backends"]) {
    if (b["name"] == "sanlock") return b["state"]["lockspaces"][0];
  }
  return Json();
}

void SanlockHosts::WaitJoined(LatchdProcess& d, absl::Duration limit) {
  const absl::Time deadline = absl::Now() + limit;
  Json ls;
  while (absl::Now() < deadline) {
    ls = LockspaceState(d);
    if (ls.is_object() && ls["state"] == "joined") return;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ADD_FAILURE() << "did not join: " << ls.dump() << "\n" << d.Log();
}

void SanlockHosts::Register(LatchdProcess& d, const Vm& vm, const std::string& policy) {
  absl::StatusOr<Json> r =
      Call(d, {{"op", "register"}, {"owner", vm.Owner()}, {"policy", policy}, {"grace_ms", 2000}});
  ASSERT_TRUE(r.ok()) << r.status();
}

absl::StatusOr<SanlockHosts::Json> SanlockHosts::Acquire(LatchdProcess& d, const Vm& vm,
                                                         Json resources) {
  return Call(d, {{"op", "acquire"}, {"uuid", vm.uuid}, {"resources", resources}});
}

absl::StatusOr<SanlockHosts::Json> SanlockHosts::Release(LatchdProcess& d, const Vm& vm,
                                                         Json resources) {
  return Call(d, {{"op", "release"}, {"uuid", vm.uuid}, {"resources", resources}});
}

absl::StatusOr<SanlockHosts::Json> SanlockHosts::Admin(LatchdProcess& d, Json request) {
  absl::StatusOr<Json> r =
      Call(d, {{"op", "backend_admin"}, {"backend", "sanlock"}, {"request", request}});
  if (!r.ok()) return r.status();
  return (*r)["result"];
}

}  // namespace testing
}  // namespace latchkey
