// The nop backend: grants every request and excludes nobody. It keeps only
// the table of who holds what (so Release, Convert, Inquire and latchd's
// status behave as with a real backend) and never touches a kernel lock, a
// daemon or storage. It is the floor of latchbench's comparisons: what a
// lock operation costs in latchkey itself (plugin ABI, latchd, journal).
//
// It declares LK_CAP_NO_EXCLUSION; latchd refuses to load it unless the
// configuration lists it in benchmark_backends. It has no settings.
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/backend.h"
#include "core/plugin_export.h"

namespace latchkey {
namespace nop {
namespace {

constexpr lk_capabilities kCapabilities = {
    (1u << LK_MODE_SHARED_READ) | (1u << LK_MODE_SHARED_WRITE) | (1u << LK_MODE_EXCLUSIVE),
    LK_CAP_HOLDER_IDENTITY | LK_CAP_NO_EXCLUSION,
    64,
    "",
};

struct Held {
  Owner owner;
  Resource resource;
  LockMode mode;
};

class NopBackend final : public Backend {
 public:
  std::string name() const override { return "nop"; }
  Capabilities capabilities() const override {
    return plugin_export::CapabilitiesFromAbi(kCapabilities);
  }

  absl::StatusOr<Grant> Acquire(const Owner& owner, const Resource& resource, LockMode mode,
                                const AcquireOptions& options) override {
    if (absl::Status s = Check(owner, resource, options); !s.ok()) return s;
    absl::MutexLock l(&mu_);
    std::vector<Held>& holders = held_[resource.Key()];
    if (Find(holders, owner) != nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          owner.Describe(), " already holds ", resource.Describe(), " (use convert)"));
    }
    holders.push_back(Held{owner, resource, mode});
    return Grant{mode, 0, ""};
  }

  absl::StatusOr<Grant> Convert(const Owner& owner, const Resource& resource, LockMode new_mode,
                                const AcquireOptions& options) override {
    if (absl::Status s = Check(owner, resource, options); !s.ok()) return s;
    absl::MutexLock l(&mu_);
    auto it = held_.find(resource.Key());
    Held* h = it == held_.end() ? nullptr : Find(it->second, owner);
    if (h == nullptr) return NotHeld(owner, resource);
    h->mode = new_mode;
    return Grant{new_mode, 0, ""};
  }

  absl::Status Release(const Owner& owner, const Resource& resource) override {
    if (absl::Status s = Check(owner, resource, AcquireOptions{}); !s.ok()) return s;
    absl::MutexLock l(&mu_);
    auto it = held_.find(resource.Key());
    if (it == held_.end() || it->second.empty()) return NotHeld(owner, resource);
    std::vector<Held>& holders = it->second;
    for (size_t i = 0; i < holders.size(); ++i) {
      if (SameOwner(holders[i].owner, owner)) {
        holders.erase(holders.begin() + static_cast<std::ptrdiff_t>(i));
        if (holders.empty()) held_.erase(it);
        return absl::OkStatus();
      }
    }
    return absl::PermissionDeniedError(absl::StrCat(
        owner.Describe(), " does not hold ", resource.Describe(), "; it is held by ",
        holders.front().owner.Describe()));
  }

  absl::StatusOr<std::vector<HolderInfo>> Inquire(
      const std::optional<Resource>& resource) override {
    if (resource.has_value()) {
      if (absl::Status s = resource->Validate(kCapabilities.max_name_len); !s.ok()) return s;
    }
    std::vector<HolderInfo> out;
    absl::MutexLock l(&mu_);
    for (const auto& [key, holders] : held_) {
      if (resource.has_value() && key != resource->Key()) continue;
      for (const Held& h : holders) out.push_back(HolderInfo{h.owner, h.resource, h.mode, 0});
    }
    return out;
  }

  // Nothing outlives the process, so adoption re-registers the record
  // (after a planned exec; nobody could have been refused meanwhile).
  absl::StatusOr<Grant> Adopt(const LockRecord& record) override {
    AcquireOptions o;
    absl::StatusOr<Grant> g = Acquire(record.owner, record.resource, record.mode, o);
    if (!g.ok() && g.status().code() == absl::StatusCode::kFailedPrecondition) {
      return Grant{record.mode, 0, ""};
    }
    return g;
  }

  absl::Status Health() override { return absl::OkStatus(); }
  absl::Status PrepareExec() override { return absl::OkStatus(); }
  void FinishAdoption() override {}

  std::string StateJson() override {
    absl::MutexLock l(&mu_);
    size_t locks = 0;
    for (const auto& [key, holders] : held_) locks += holders.size();
    return absl::StrCat("{\"excludes\":false,\"resources\":", held_.size(), ",\"locks\":", locks,
                        "}");
  }

 private:
  // What every backend refuses: bad owners and names, a hand-off check
  // (it needs fencing tokens, which nop does not keep).
  static absl::Status Check(const Owner& owner, const Resource& resource,
                            const AcquireOptions& options) {
    if (absl::Status s = owner.Validate(); !s.ok()) return s;
    if (absl::Status s = resource.Validate(kCapabilities.max_name_len); !s.ok()) return s;
    if (options.expect_token.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("backend nop keeps no fencing tokens: cannot check a hand-off on ",
                       resource.Describe()));
    }
    return absl::OkStatus();
  }
  static bool SameOwner(const Owner& a, const Owner& b) {
    return absl::AsciiStrToLower(a.uuid) == absl::AsciiStrToLower(b.uuid);
  }
  static Held* Find(std::vector<Held>& holders, const Owner& owner) {
    for (Held& h : holders) {
      if (SameOwner(h.owner, owner)) return &h;
    }
    return nullptr;
  }
  static absl::Status NotHeld(const Owner& owner, const Resource& resource) {
    return absl::NotFoundError(
        absl::StrCat(owner.Describe(), " holds no lock on ", resource.Describe()));
  }

  absl::Mutex mu_;
  std::map<std::string, std::vector<Held>> held_ ABSL_GUARDED_BY(mu_);
};

absl::StatusOr<std::unique_ptr<Backend>> NewNopBackend(const Config& settings) {
  if (absl::Status s = settings.CheckKeys({}); !s.ok()) return s;
  return std::unique_ptr<Backend>(new NopBackend());
}

}  // namespace
}  // namespace nop
}  // namespace latchkey

LATCHKEY_EXPORT_BACKEND("nop",
                        "grants every request, excludes nobody: latchkey's own cost (benchmarks only)",
                        latchkey::nop::kCapabilities, latchkey::nop::NewNopBackend);
