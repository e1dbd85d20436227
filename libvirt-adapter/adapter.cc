#include "libvirt-adapter/adapter.h"

#include <sys/stat.h>

#include <cerrno>
#include <map>

#include <utility>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "agent/client.h"
#include "core/config.h"
#include "core/lock_mode.h"
#include "core/resource.h"

namespace latchkey {
namespace libvirt {
namespace {

using json = nlohmann::json;

const std::vector<std::string> kKeys = {
    "socket",         "backend",           "lockspace",           "auto_disk_leases",
    "require_lease_for_disks", "readonly_disks", "lock_failure_policy",
    "terminate_grace_ms", "timeout_ms"};

// Keeps the status code, puts `prefix` before the message.
absl::Status Prefixed(const absl::Status& s, const std::string& prefix) {
  return absl::Status(s.code(), absl::StrCat(prefix, s.message()));
}

std::string DomainLabel(const Domain& d) {
  return absl::StrCat("domain '", d.name, "'");
}

}  // namespace

absl::StatusOr<AdapterConfig> AdapterConfig::Load(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0 && errno == ENOENT) {
    AdapterConfig c;
    c.file = path;
    c.require_lease_for_disks = !c.auto_disk_leases;
    return c;
  }
  absl::StatusOr<Config> parsed = Config::ParseFile(path);
  if (!parsed.ok()) return parsed.status();
  return FromConfig(*parsed, path);
}

absl::StatusOr<AdapterConfig> AdapterConfig::Parse(const std::string& text,
                                                   const std::string& origin) {
  absl::StatusOr<Config> parsed = Config::ParseText(text, origin);
  if (!parsed.ok()) return parsed.status();
  return FromConfig(*parsed, origin);
}

absl::StatusOr<AdapterConfig> AdapterConfig::FromConfig(const Config& conf,
                                                        const std::string& origin) {
  if (absl::Status s = conf.CheckKeys(kKeys); !s.ok()) return s;
  AdapterConfig c;
  c.file = origin;
  absl::StatusOr<std::string> socket = conf.GetString("socket", c.socket);
  absl::StatusOr<std::string> backend = conf.GetString("backend", "");
  absl::StatusOr<std::string> lockspace = conf.GetString("lockspace", "");
  absl::StatusOr<bool> auto_disk = conf.GetBool("auto_disk_leases", true);
  if (!socket.ok()) return socket.status();
  if (!backend.ok()) return backend.status();
  if (!lockspace.ok()) return lockspace.status();
  if (!auto_disk.ok()) return auto_disk.status();
  absl::StatusOr<bool> require = conf.GetBool("require_lease_for_disks", !*auto_disk);
  absl::StatusOr<std::string> readonly =
      conf.GetChoice("readonly_disks", "unlocked", {"unlocked", "shared-read"});
  absl::StatusOr<std::string> policy =
      conf.GetChoice("lock_failure_policy", c.lock_failure_policy, {"terminate", "pause", "ignore"});
  absl::StatusOr<int64_t> grace = conf.GetInt("terminate_grace_ms", c.terminate_grace_ms, 0, 3600000);
  absl::StatusOr<int64_t> timeout = conf.GetInt("timeout_ms", c.timeout_ms, 100, 3600000);
  if (!require.ok()) return require.status();
  if (!readonly.ok()) return readonly.status();
  if (!policy.ok()) return policy.status();
  if (!grace.ok()) return grace.status();
  if (!timeout.ok()) return timeout.status();
  if (socket->empty()) return absl::InvalidArgumentError(absl::StrCat(origin, ": socket is empty"));
  if (!lockspace->empty()) {
    if (absl::Status s = ValidateName("lockspace", *lockspace); !s.ok()) {
      return Prefixed(s, absl::StrCat(conf.Find("lockspace")->Where(), ": "));
    }
  }
  c.socket = *socket;
  c.backend = *backend;
  c.lockspace = *lockspace;
  c.auto_disk_leases = *auto_disk;
  c.require_lease_for_disks = *require;
  c.readonly_disks = *readonly == "shared-read" ? ReadonlyDisks::kSharedRead : ReadonlyDisks::kUnlocked;
  c.lock_failure_policy = *policy;
  c.terminate_grace_ms = *grace;
  c.timeout_ms = *timeout;
  return c;
}

namespace {

// A connection to latchd whose failures read well in libvirt's messages.
class Session {
 public:
  static absl::StatusOr<Session> Open(const AdapterConfig& c) {
    absl::StatusOr<LatchdClient> client =
        LatchdClient::Connect(c.socket, absl::Milliseconds(c.timeout_ms));
    if (!client.ok()) {
      if (absl::StartsWith(client.status().message(), "latchd is not running")) {
        return absl::FailedPreconditionError(absl::StrCat(
            "latchd is not running at ", c.socket, "; start latchd on this host, or set 'socket' in ",
            c.file.empty() ? "qemu-latchkey.conf" : c.file));
      }
      return client.status();
    }
    return Session(*std::move(client));
  }

  absl::StatusOr<json> Call(json request) {
    absl::StatusOr<json> r = client_.Call(request);
    if (!r.ok() && !client_.connected()) {
      return Prefixed(r.status(), "latchd failed while serving the request: ");
    }
    return r;
  }

 private:
  explicit Session(LatchdClient c) : client_(std::move(c)) {}
  LatchdClient client_;
};

absl::StatusOr<std::string> PolicyFor(const AdapterConfig& c, int on_failure) {
  switch (on_failure) {
    case 0:  // <on_lockfailure> not set
      return c.lock_failure_policy;
    case 1:  // poweroff
      return std::string("terminate");
    case 3:
      return std::string("pause");
    case 4:
      return std::string("ignore");
    case 2:
      return absl::InvalidArgumentError(
          "<on_lockfailure>restart</on_lockfailure> is not supported by latchkey: latchd can "
          "power the domain off, pause it or ignore the failure");
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unknown <on_lockfailure> action ", on_failure));
  }
}

absl::Status RegisterOn(Session& s, const AdapterConfig& c, const Domain& d,
                        const std::string& policy) {
  json req = {{"op", "register"},
              {"owner", {{"uuid", d.uuid}, {"name", d.name}, {"pid", d.pid}}},
              {"policy", policy},
              {"grace_ms", c.terminate_grace_ms}};
  absl::StatusOr<json> r = s.Call(req);
  if (!r.ok()) return Prefixed(r.status(), absl::StrCat("cannot register ", DomainLabel(d), ": "));
  return absl::OkStatus();
}

// The request spec for `r`, or nullopt when the config leaves it unlocked.
std::optional<json> SpecFor(const AdapterConfig& c, const DomainResource& r) {
  json spec;
  if (r.lease) {
    spec = {{"lease", r.name},
            {"lockspace", r.lease_lockspace.empty() ? c.lockspace : r.lease_lockspace},
            {"mode", "exclusive"}};
    if (spec["lockspace"] == "") spec.erase("lockspace");
    if (!r.lease_path.empty()) {
      spec["path"] = r.lease_path;
      spec["offset"] = r.lease_offset;
    }
  } else {
    if (!c.auto_disk_leases) return std::nullopt;
    std::string mode = "exclusive";
    if (r.readonly) {
      if (c.readonly_disks == ReadonlyDisks::kUnlocked) return std::nullopt;
      mode = "shared-read";
    } else if (r.shared) {
      mode = "shared-write";
    }
    spec = {{"disk", r.name}, {"mode", mode}};
    if (!c.lockspace.empty()) spec["lockspace"] = c.lockspace;
  }
  if (!c.backend.empty()) spec["backend"] = c.backend;
  return spec;
}

// True when latchd's lock record `l` is the resource `r`.
bool Matches(const AdapterConfig& c, const json& l, const DomainResource& r) {
  if (!c.backend.empty() && l.value("backend", "") != c.backend) return false;
  if (r.lease) {
    const std::string ls = r.lease_lockspace.empty() ? c.lockspace : r.lease_lockspace;
    return l.value("kind", "") == "lease" && l.value("name", "") == r.name &&
           (ls.empty() || l.value("lockspace", "") == ls);
  }
  if (l.value("kind", "") != "disk") return false;
  if (!c.lockspace.empty() && l.value("lockspace", "") != c.lockspace) return false;
  absl::StatusOr<std::string> canonical = CanonicalImagePath(r.name);
  return canonical.ok() && l.value("path", "") == *canonical;
}

// latchd's inquire result for the domain's owner; nullopt when latchd does
// not know the owner.
absl::StatusOr<std::optional<json>> InquireOn(Session& s, const Domain& d) {
  absl::StatusOr<json> r = s.Call({{"op", "inquire"}, {"uuid", d.uuid}});
  if (!r.ok()) {
    if (r.status().code() == absl::StatusCode::kNotFound) return std::optional<json>();
    return Prefixed(r.status(), absl::StrCat("cannot inquire the locks of ", DomainLabel(d), ": "));
  }
  return std::optional<json>(*std::move(r));
}

// Refuses early, before QEMU opens anything, when another domain known by
// identity holds one of the resources in a conflicting mode. A holder whose
// identity the backend cannot tell (another host's sanlock lease) may be
// this domain's own migration source, so the daemon-side acquire decides.
absl::Status CheckFree(Session& s, const AdapterConfig& c, const Domain& d) {
  json specs = json::array();
  std::vector<LockMode> modes;
  for (const DomainResource& r : d.resources) {
    std::optional<json> spec = SpecFor(c, r);
    if (!spec) continue;
    modes.push_back(*ParseLockMode((*spec)["mode"].get<std::string>()));
    specs.push_back(*std::move(spec));
  }
  if (specs.empty()) return absl::OkStatus();
  absl::StatusOr<json> r = s.Call({{"op", "holders"}, {"resources", specs}});
  if (!r.ok()) {
    return Prefixed(r.status(), absl::StrCat("cannot check the resources of ", DomainLabel(d), ": "));
  }
  const json& views = (*r)["resources"];
  for (size_t i = 0; i < views.size() && i < modes.size(); ++i) {
    for (const json& h : views[i]["holders"]) {
      const json& o = h["owner"];
      const std::string uuid = o.value("uuid", "");
      if (uuid.empty() || uuid == d.uuid) continue;
      absl::StatusOr<LockMode> held = ParseLockMode(h.value("mode", ""));
      if (held.ok() && ModesCompatible(*held, modes[i])) continue;
      const json& res = views[i]["resource"];
      const std::string what = res.value("kind", "") == "disk"
                                   ? absl::StrCat("disk ", res.value("path", ""))
                                   : absl::StrCat("lease ", res.value("lockspace", ""), "/",
                                                  res.value("name", ""));
      return absl::UnavailableError(absl::StrCat(
          DomainLabel(d), " cannot lock ", what, " ", LockModeName(modes[i]), ": it is held ",
          h.value("mode", "?"), " by domain '", o.value("name", "?"), "' (uuid ", uuid, ", pid ",
          o.value("pid", 0), ") on host ", o.value("host", "?")));
    }
  }
  return absl::OkStatus();
}

// Checks the lock-failure policy, connects and registers the domain.
absl::StatusOr<Session> OpenRegistered(const AdapterConfig& c, const Domain& d, int on_failure) {
  absl::StatusOr<std::string> policy = PolicyFor(c, on_failure);
  if (!policy.ok()) return Prefixed(policy.status(), DomainLabel(d) + ": ");
  absl::StatusOr<Session> s = Session::Open(c);
  if (!s.ok()) return s.status();
  if (absl::Status st = RegisterOn(*s, c, d, *policy); !st.ok()) return st;
  return s;
}

}  // namespace

namespace {

// libvirt releases a pausing domain twice and keeps the second answer as the
// domain's lock state; the second finds nothing held. So the state of each
// domain's last release is remembered here (in libvirtd) until the domain
// acquires again, and a release that finds nothing returns it.
absl::Mutex g_released_mu;
std::map<std::string, std::string>& ReleasedStates() {
  static auto* m = new std::map<std::string, std::string>;
  return *m;
}

std::optional<std::string> LastReleased(const std::string& uuid) {
  absl::MutexLock l(&g_released_mu);
  auto it = ReleasedStates().find(uuid);
  if (it == ReleasedStates().end()) return std::nullopt;
  return it->second;
}

void RememberReleased(const std::string& uuid, std::optional<std::string> state) {
  absl::MutexLock l(&g_released_mu);
  if (state) {
    ReleasedStates()[uuid] = *std::move(state);
  } else {
    ReleasedStates().erase(uuid);
  }
}

}  // namespace

absl::Status Adapter::Register(const Domain& d, int on_failure) const {
  if (config_.require_lease_for_disks) {
    bool has_lease = false, has_rw_disk = false;
    for (const DomainResource& r : d.resources) {
      has_lease |= r.lease;
      has_rw_disk |= !r.lease && !r.readonly && !r.shared;
    }
    if (has_rw_disk && !has_lease) {
      return absl::FailedPreconditionError(absl::StrCat(
          DomainLabel(d), " has read/write disks but no <lease>, and require_lease_for_disks = 1 in ",
          config_.file));
    }
  }
  absl::StatusOr<Session> s = OpenRegistered(config_, d, on_failure);
  if (!s.ok()) return s.status();
  return CheckFree(*s, config_, d);
}

absl::Status Adapter::Acquire(const Domain& d, const std::string& state, int on_failure) const {
  absl::StatusOr<Session> s = OpenRegistered(config_, d, on_failure);
  if (!s.ok()) return s.status();
  absl::StatusOr<std::optional<json>> held = InquireOn(*s, d);
  if (!held.ok()) return held.status();

  json specs = json::array();
  std::vector<std::string> what;
  for (const DomainResource& r : d.resources) {
    std::optional<json> spec = SpecFor(config_, r);
    if (!spec) continue;
    bool already = false;
    if (held->has_value()) {
      for (const json& l : (**held)["locks"]) already |= Matches(config_, l, r);
    }
    if (already) continue;
    what.push_back(absl::StrCat(r.lease ? "lease " : "disk ", r.name, " ",
                                (*spec)["mode"].get<std::string>()));
    specs.push_back(*std::move(spec));
  }
  if (specs.empty()) return absl::OkStatus();
  json req = {{"op", "acquire"}, {"uuid", d.uuid}, {"resources", specs}};
  if (!state.empty()) req["state"] = state;
  absl::StatusOr<json> r = s->Call(req);
  if (!r.ok()) {
    return Prefixed(r.status(), absl::StrCat(DomainLabel(d), " cannot lock ",
                                             absl::StrJoin(what, ", "), ": "));
  }
  RememberReleased(d.uuid, std::nullopt);
  return absl::OkStatus();
}

absl::StatusOr<std::optional<std::string>> Adapter::Release(const Domain& d) const {
  absl::StatusOr<Session> s = Session::Open(config_);
  if (!s.ok()) return s.status();
  absl::StatusOr<std::optional<json>> held = InquireOn(*s, d);
  if (!held.ok()) return held.status();
  if (!held->has_value()) return LastReleased(d.uuid);

  // Release exactly the domain's resources this owner holds, named as latchd
  // recorded them.
  json specs = json::array();
  for (const json& l : (**held)["locks"]) {
    bool ours = false;
    for (const DomainResource& r : d.resources) ours |= Matches(config_, l, r);
    if (!ours) continue;
    json spec = {{"backend", l["backend"]}, {"lockspace", l["lockspace"]}};
    if (l.value("kind", "") == "lease") {
      spec["lease"] = l["name"];
      if (!l.value("path", "").empty()) {
        spec["path"] = l["path"];
        spec["offset"] = l["offset"];
      }
    } else {
      spec["disk"] = l["path"];
    }
    specs.push_back(std::move(spec));
  }
  if (specs.empty()) return LastReleased(d.uuid);
  absl::StatusOr<json> r = s->Call({{"op", "release"}, {"uuid", d.uuid}, {"resources", specs}});
  if (!r.ok()) {
    return Prefixed(r.status(), absl::StrCat("cannot release the locks of ", DomainLabel(d), ": "));
  }
  std::optional<std::string> state = r->value("state", "");
  RememberReleased(d.uuid, state);
  return state;
}

absl::StatusOr<std::optional<std::string>> Adapter::Inquire(const Domain& d) const {
  absl::StatusOr<Session> s = Session::Open(config_);
  if (!s.ok()) return s.status();
  absl::StatusOr<std::optional<json>> held = InquireOn(*s, d);
  if (!held.ok()) return held.status();
  if (!held->has_value()) return std::optional<std::string>();
  return std::optional<std::string>((**held).value("state", ""));
}

}  // namespace libvirt
}  // namespace latchkey
