// The "probe" fixture: echoes its inputs so tests can check that every field
// crosses the C ABI intact, and fails on request to check error transport.
#include <atomic>
#include <memory>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "core/plugin_export.h"

namespace latchkey {
namespace {

class ProbeBackend final : public Backend {
 public:
  ProbeBackend(std::string greeting, bool fail_prepare_exec, bool fencing)
      : greeting_(std::move(greeting)), fail_prepare_exec_(fail_prepare_exec), fencing_(fencing) {}
  std::string name() const override { return "probe"; }
  Capabilities capabilities() const override;

  absl::StatusOr<Grant> Acquire(const Owner& owner, const Resource& resource, LockMode mode,
                                const AcquireOptions& options) override {
    if (owner.name == "throw") throw std::runtime_error("probe was told to throw");
    if (owner.name == "busy") {
      return absl::UnavailableError(absl::StrCat(resource.Describe(), " is held by someone"));
    }
    Grant g;
    g.mode = mode;
    g.fencing_token = static_cast<uint64_t>(owner.pid) * 1000 + owner.start_time;
    g.backend_token = absl::StrCat(greeting_, "|", owner.uuid, "|", owner.host, "|",
                                   resource.Key(), "|", resource.path, "|", resource.offset,
                                   "|", options.wait ? "wait" : "nowait", "|",
                                   options.timeout == absl::InfiniteDuration()
                                       ? "forever"
                                       : absl::StrCat(absl::ToInt64Milliseconds(options.timeout)),
                                   "|",
                                   options.expect_token.has_value()
                                       ? absl::StrCat("expect=", *options.expect_token)
                                       : "noexpect");
    return g;
  }
  absl::StatusOr<Grant> Convert(const Owner& owner, const Resource& resource, LockMode mode,
                                const AcquireOptions& options) override {
    return Acquire(owner, resource, mode, options);
  }
  absl::Status Release(const Owner& owner, const Resource& resource) override {
    return absl::NotFoundError(absl::StrCat(owner.name, " holds no lock on ", resource.Key()));
  }
  absl::StatusOr<std::vector<HolderInfo>> Inquire(
      const std::optional<Resource>& resource) override {
    HolderInfo h;
    h.owner.name = "echo";
    h.resource = resource.value_or(Resource{});
    if (!resource.has_value()) h.resource.name = "all";
    h.mode = LockMode::kSharedRead;
    h.fencing_token = 42;
    return std::vector<HolderInfo>{h, h};
  }
  // The backend token says how many PrepareExec calls came before.
  absl::StatusOr<Grant> Adopt(const LockRecord& record) override {
    if (adoption_finished_) {
      return absl::FailedPreconditionError(
          absl::StrCat("probe: adoption of ", record.resource.Key(), " after finish_adoption"));
    }
    Grant g;
    g.mode = record.mode;
    g.fencing_token = record.fencing_token + 1;
    g.backend_token = absl::StrCat(record.backend_token, "|prepared=", prepare_exec_calls_.load());
    return g;
  }
  absl::Status Health() override { return absl::OkStatus(); }
  absl::Status PrepareExec() override {
    if (fail_prepare_exec_) return absl::FailedPreconditionError("probe was told to refuse exec");
    ++prepare_exec_calls_;
    return absl::OkStatus();
  }
  void FinishAdoption() override { adoption_finished_ = true; }

 private:
  std::string greeting_;
  const bool fail_prepare_exec_;
  const bool fencing_;  // what capabilities() says; the descriptor always says yes
  std::atomic<int> prepare_exec_calls_{0};
  std::atomic<bool> adoption_finished_{false};
};

absl::StatusOr<std::unique_ptr<Backend>> NewProbe(const Config& settings) {
  if (absl::Status s =
          settings.CheckKeys({"greeting", "fail_open", "fail_prepare_exec", "fencing_tokens"});
      !s.ok()) {
    return s;
  }
  absl::StatusOr<bool> fail = settings.GetBool("fail_open", false);
  if (!fail.ok()) return fail.status();
  if (*fail) {
    return absl::FailedPreconditionError(
        absl::StrCat(settings.Find("fail_open")->Where(), ": told to fail"));
  }
  absl::StatusOr<std::string> greeting = settings.GetString("greeting", "hello");
  if (!greeting.ok()) return greeting.status();
  absl::StatusOr<bool> fail_prepare_exec = settings.GetBool("fail_prepare_exec", false);
  if (!fail_prepare_exec.ok()) return fail_prepare_exec.status();
  absl::StatusOr<bool> fencing = settings.GetBool("fencing_tokens", true);
  if (!fencing.ok()) return fencing.status();
  return std::unique_ptr<Backend>(new ProbeBackend(*greeting, *fail_prepare_exec, *fencing));
}

constexpr lk_capabilities kProbeCaps = {
    (1u << LK_MODE_SHARED_READ) | (1u << LK_MODE_EXCLUSIVE), LK_CAP_FENCING_TOKENS, 16, ""};

Capabilities ProbeBackend::capabilities() const {
  Capabilities caps = plugin_export::CapabilitiesFromAbi(kProbeCaps);
  caps.fencing_tokens = fencing_;
  return caps;
}

}  // namespace
}  // namespace latchkey

LATCHKEY_EXPORT_BACKEND("probe", "ABI echo fixture for tests", latchkey::kProbeCaps,
                        latchkey::NewProbe);
