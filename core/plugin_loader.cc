#include "core/plugin_loader.h"

#include <dirent.h>
#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <deque>
#include <map>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "core/abi_types.h"
#include "core/plugin_abi.h"

namespace latchkey {
namespace {

constexpr char kPrefix[] = "latchkey-";
constexpr char kSuffix[] = ".so";

absl::Status ValidateBackendName(const std::string& name) {
  if (name.empty() || name.size() > 32) {
    return absl::InvalidArgumentError(
        absl::StrCat("backend name '", name.substr(0, 40), "' must be 1..32 characters"));
  }
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) {
      return absl::InvalidArgumentError(absl::StrCat(
          "backend name '", absl::CHexEscape(name), "' may only contain [a-z0-9_]"));
    }
  }
  return absl::OkStatus();
}

bool IsFile(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// dlopen handles by file; see the header for why they are never closed.
absl::Mutex g_mu;
std::map<std::string, const lk_backend_descriptor*>* g_loaded ABSL_GUARDED_BY(g_mu) = nullptr;

absl::StatusOr<const lk_backend_descriptor*> LoadDescriptor(const std::string& file) {
  absl::MutexLock lock(&g_mu);
  if (g_loaded == nullptr) g_loaded = new std::map<std::string, const lk_backend_descriptor*>;
  if (auto it = g_loaded->find(file); it != g_loaded->end()) return it->second;

  void* handle = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot load backend plugin ", file, ": ", dlerror()));
  }
  dlerror();
  void* sym = dlsym(handle, LK_BACKEND_SYMBOL);
  if (sym == nullptr) {
    dlclose(handle);  // Nothing of it ran yet but its constructors.
    return absl::FailedPreconditionError(absl::StrCat(
        "backend plugin ", file, " does not export the symbol '", LK_BACKEND_SYMBOL,
        "': not a latchkey backend"));
  }
  const auto* d = static_cast<const lk_backend_descriptor*>(sym);
  // Copy what messages need before dlclose unmaps the descriptor.
  const uint32_t version = d->abi_version;
  if (version != LK_BACKEND_ABI_VERSION) {
    dlclose(handle);
    return absl::FailedPreconditionError(absl::StrCat(
        "backend plugin ", file, " was built for plugin ABI version ", version,
        "; this latchkey speaks version ", LK_BACKEND_ABI_VERSION, ": rebuild the plugin"));
  }
  const uint32_t size = d->struct_size;
  if (size < sizeof(lk_backend_descriptor)) {
    dlclose(handle);
    return absl::FailedPreconditionError(
        absl::StrCat("backend plugin ", file, " has a descriptor of ", size,
                     " bytes; expected ", sizeof(lk_backend_descriptor)));
  }
  const std::pair<const char*, bool> entries[] = {
      {"name", d->name != nullptr},
      {"open", d->open != nullptr},
      {"close", d->close != nullptr},
      {"acquire", d->acquire != nullptr},
      {"convert", d->convert != nullptr},
      {"release", d->release != nullptr},
      {"inquire", d->inquire != nullptr},
      {"adopt", d->adopt != nullptr},
      {"health", d->health != nullptr},
      {"prepare_exec", d->prepare_exec != nullptr},
      {"finish_adoption", d->finish_adoption != nullptr},
      {"describe_state", d->describe_state != nullptr},
      {"watch_events", d->watch_events != nullptr},
      {"admin", d->admin != nullptr},
      {"check_succession", d->check_succession != nullptr},
  };
  for (const auto& [entry, present] : entries) {
    if (!present) {
      dlclose(handle);
      return absl::FailedPreconditionError(absl::StrCat(
          "backend plugin ", file, " leaves entry point '", entry, "' of its descriptor NULL"));
    }
  }
  (*g_loaded)[file] = d;
  return d;
}

// The Backend the host sees: forwards every call through the C table.
class PluginBackend final : public Backend {
 public:
  PluginBackend(const lk_backend_descriptor* d, lk_backend* handle)
      : d_(d), handle_(handle), caps_(abi::FromAbi(d->capabilities)) {}
  ~PluginBackend() override {
    if (loss_handler_ != nullptr) d_->watch_events(handle_, nullptr, nullptr);
    d_->close(handle_);
  }

  std::string name() const override { return d_->name; }
  Capabilities capabilities() const override { return caps_; }

  absl::StatusOr<Grant> Acquire(const Owner& owner, const Resource& resource, LockMode mode,
                                const AcquireOptions& options) override {
    return AcquireOrConvert(d_->acquire, owner, resource, mode, options);
  }

  absl::StatusOr<Grant> Convert(const Owner& owner, const Resource& resource, LockMode mode,
                                const AcquireOptions& options) override {
    return AcquireOrConvert(d_->convert, owner, resource, mode, options);
  }

  absl::Status Release(const Owner& owner, const Resource& resource) override {
    const lk_owner o = abi::ToAbi(owner);
    const lk_resource r = abi::ToAbi(resource);
    lk_error err{};
    return abi::ErrorToStatus(d_->release(handle_, &o, &r, &err), err);
  }

  absl::StatusOr<std::vector<HolderInfo>> Inquire(
      const std::optional<Resource>& resource) override {
    struct Ctx {
      std::vector<HolderInfo> holders;
      absl::Status status;
    } ctx;
    auto emit = [](void* p, const lk_holder* h) {
      auto* c = static_cast<Ctx*>(p);
      HolderInfo info;
      absl::StatusOr<Owner> o = abi::FromAbi(&h->owner);
      absl::StatusOr<Resource> r = abi::FromAbi(&h->resource);
      absl::StatusOr<LockMode> m = LockModeFromInt(h->mode);
      if (!o.ok() || !r.ok() || !m.ok()) {
        c->status = absl::InternalError("backend plugin reported a malformed holder");
        return;
      }
      info.owner = *o;
      info.resource = *r;
      info.mode = *m;
      info.fencing_token = h->fencing_token;
      c->holders.push_back(std::move(info));
    };
    lk_resource r;
    if (resource.has_value()) r = abi::ToAbi(*resource);
    lk_error err{};
    const int rc = d_->inquire(handle_, resource.has_value() ? &r : nullptr, emit, &ctx, &err);
    if (absl::Status s = abi::ErrorToStatus(rc, err); !s.ok()) return s;
    if (!ctx.status.ok()) return ctx.status;
    return std::move(ctx.holders);
  }

  absl::StatusOr<Grant> Adopt(const LockRecord& record) override {
    lk_record rec;
    rec.owner = abi::ToAbi(record.owner);
    rec.resource = abi::ToAbi(record.resource);
    rec.mode = static_cast<uint32_t>(record.mode);
    rec.fencing_token = record.fencing_token;
    rec.backend_token = record.backend_token.c_str();
    lk_grant out{};
    lk_error err{};
    if (absl::Status s = abi::ErrorToStatus(d_->adopt(handle_, &rec, &out, &err), err); !s.ok()) {
      return s;
    }
    return abi::GrantFromAbi(out);
  }

  absl::Status Health() override {
    lk_error err{};
    return abi::ErrorToStatus(d_->health(handle_, &err), err);
  }

  absl::Status PrepareExec() override {
    lk_error err{};
    return abi::ErrorToStatus(d_->prepare_exec(handle_, &err), err);
  }

  void FinishAdoption() override { d_->finish_adoption(handle_); }

  std::string StateJson() override {
    std::string text = "{}";
    lk_error err{};
    const int rc = d_->describe_state(
        handle_, [](void* ctx, const char* t) { *static_cast<std::string*>(ctx) = t ? t : "{}"; },
        &text, &err);
    if (rc != 0) return "{}";
    return text;
  }

  absl::StatusOr<std::string> Admin(const std::string& request) override {
    std::string text;
    lk_error err{};
    const int rc = d_->admin(
        handle_, request.c_str(),
        [](void* ctx, const char* t) { *static_cast<std::string*>(ctx) = t ? t : "null"; }, &text,
        &err);
    if (rc != 0) return abi::ErrorToStatus(rc, err);
    return text;
  }

  absl::Status CheckSuccession(const Owner& owner, const Resource& resource, LockMode mode,
                               uint64_t since_token, uint64_t granted_token) override {
    const lk_owner o = abi::ToAbi(owner);
    const lk_resource r = abi::ToAbi(resource);
    lk_error err{};
    return abi::ErrorToStatus(
        d_->check_succession(handle_, &o, &r, static_cast<uint32_t>(mode), since_token,
                             granted_token, &err),
        err);
  }

  void WatchLockLoss(LockLossHandler handler) override {
    if (!handler) {
      d_->watch_events(handle_, nullptr, nullptr);
      loss_handler_.reset();
      return;
    }
    // The plugin keeps `ctx` until told to stop: it must outlive the calls.
    auto next = std::make_unique<LockLossHandler>(std::move(handler));
    d_->watch_events(
        handle_,
        [](void* ctx, const lk_event* e) {
          if (e == nullptr || e->kind != LK_EVENT_LOCK_LOST) return;
          absl::StatusOr<Owner> o = abi::FromAbi(&e->owner);
          absl::StatusOr<Resource> r = abi::FromAbi(&e->resource);
          if (!r.ok()) return;
          LockLoss loss;
          if (o.ok()) loss.owner = *o;
          loss.resource = *r;
          loss.reason = e->reason ? e->reason : "";
          (*static_cast<LockLossHandler*>(ctx))(loss);
        },
        next.get());
    loss_handler_ = std::move(next);
  }

 private:
  using Fn = int (*)(lk_backend*, const lk_owner*, const lk_resource*, uint32_t,
                     const lk_acquire_options*, lk_grant*, lk_error*);

  absl::StatusOr<Grant> AcquireOrConvert(Fn fn, const Owner& owner, const Resource& resource,
                                         LockMode mode, const AcquireOptions& options) {
    const lk_owner o = abi::ToAbi(owner);
    const lk_resource r = abi::ToAbi(resource);
    const lk_acquire_options opts = abi::ToAbi(options);
    lk_grant out{};
    lk_error err{};
    const int rc = fn(handle_, &o, &r, static_cast<uint32_t>(mode), &opts, &out, &err);
    if (absl::Status s = abi::ErrorToStatus(rc, err); !s.ok()) return s;
    return abi::GrantFromAbi(out);
  }

  const lk_backend_descriptor* d_;
  lk_backend* handle_;
  std::unique_ptr<LockLossHandler> loss_handler_;
  Capabilities caps_;
};

std::vector<std::string> Candidates(const std::vector<std::string>& path,
                                    const std::string& name) {
  std::vector<std::string> out;
  const std::string file = absl::StrCat(kPrefix, name, kSuffix);
  for (const std::string& dir : path) {
    if (dir.empty()) continue;
    out.push_back(absl::StrCat(dir, "/", file));
    out.push_back(absl::StrCat(dir, "/", name, "/", file));
  }
  return out;
}

}  // namespace

std::vector<std::string> DefaultPluginPath() {
  if (const char* env = getenv("LATCHKEY_PLUGIN_PATH"); env != nullptr && *env != '\0') {
    return absl::StrSplit(env, ':', absl::SkipEmpty());
  }
  std::vector<std::string> out;
  char exe[4096];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = '\0';
    std::string dir(exe);
    dir = dir.substr(0, dir.rfind('/'));              // .../tools
    dir = dir.substr(0, dir.rfind('/'));              // ...
    out.push_back(absl::StrCat(dir, "/backends"));  // .../backends
  }
  out.push_back(kSystemPluginDir);
  return out;
}

absl::StatusOr<PluginInfo> ProbePlugin(const std::string& file) {
  absl::StatusOr<const lk_backend_descriptor*> d = LoadDescriptor(file);
  if (!d.ok()) return d.status();
  PluginInfo info;
  info.name = (*d)->name;
  info.file = file;
  info.description = (*d)->description == nullptr ? "" : (*d)->description;
  info.capabilities = abi::FromAbi((*d)->capabilities);
  return info;
}

absl::StatusOr<std::unique_ptr<Backend>> LoadBackend(const std::vector<std::string>& plugin_path,
                                                     const std::string& name,
                                                     const Config& settings) {
  if (absl::Status s = ValidateBackendName(name); !s.ok()) return s;
  const std::vector<std::string> candidates = Candidates(plugin_path, name);
  for (const std::string& file : candidates) {
    if (!IsFile(file)) continue;
    absl::StatusOr<const lk_backend_descriptor*> d = LoadDescriptor(file);
    if (!d.ok()) return d.status();
    if (name != (*d)->name) {
      return absl::FailedPreconditionError(absl::StrCat(
          "backend plugin ", file, " calls itself '", (*d)->name, "', not '", name, "'"));
    }
    std::deque<std::string> storage;
    const std::vector<lk_setting> s = abi::SettingsToAbi(settings, &storage);
    lk_backend* handle = nullptr;
    lk_error err{};
    const int rc = (*d)->open(s.data(), s.size(), &handle, &err);
    if (absl::Status st = abi::ErrorToStatus(rc, err); !st.ok()) {
      return absl::Status(st.code(), absl::StrCat("backend ", name, ": ", st.message()));
    }
    if (handle == nullptr) {
      return absl::InternalError(absl::StrCat("backend plugin ", file, " opened no backend"));
    }
    return std::unique_ptr<Backend>(new PluginBackend(*d, handle));
  }
  std::vector<std::string> available;
  for (const PluginInfo& p : ListPlugins(plugin_path)) available.push_back(p.name);
  return absl::NotFoundError(absl::StrCat(
      "unknown backend '", name, "': no plugin at ", absl::StrJoin(candidates, " or "),
      "; available: ", available.empty() ? "none" : absl::StrJoin(available, ", ")));
}

std::vector<PluginInfo> ListPlugins(const std::vector<std::string>& plugin_path,
                                    std::vector<std::string>* errors) {
  std::vector<PluginInfo> out;
  std::vector<std::string> files;  // in plugin-path order, sorted per directory
  for (const std::string& dir : plugin_path) {
    // Both layouts: DIR/latchkey-X.so and DIR/X/latchkey-X.so.
    std::vector<std::string> dirs = {dir};
    std::vector<std::string> here;
    if (DIR* d = opendir(dir.c_str()); d != nullptr) {
      while (dirent* e = readdir(d)) {
        if (e->d_name[0] != '.') dirs.push_back(absl::StrCat(dir, "/", e->d_name));
      }
      closedir(d);
    }
    for (const std::string& sub : dirs) {
      DIR* d = opendir(sub.c_str());
      if (d == nullptr) continue;
      while (dirent* e = readdir(d)) {
        const std::string n = e->d_name;
        if (absl::StartsWith(n, kPrefix) && absl::EndsWith(n, kSuffix)) {
          here.push_back(absl::StrCat(sub, "/", n));
        }
      }
      closedir(d);
    }
    std::sort(here.begin(), here.end());
    files.insert(files.end(), here.begin(), here.end());
  }
  for (const std::string& f : files) {
    if (!IsFile(f)) continue;
    absl::StatusOr<PluginInfo> info = ProbePlugin(f);
    if (!info.ok()) {
      if (errors != nullptr) errors->push_back(std::string(info.status().message()));
      continue;
    }
    bool seen = false;
    for (const PluginInfo& p : out) seen = seen || p.name == info->name;
    if (!seen) out.push_back(*std::move(info));
  }
  return out;
}

}  // namespace latchkey
