#include "agent/server.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "absl/strings/ascii.h"
#include "agent/request_check.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace latchkey {
namespace {

using nlohmann::json;

// A waiting acquire may name at most 30 days.
constexpr int64_t kMaxTimeoutMs = int64_t{30} * 24 * 3600 * 1000;

std::string CodeName(absl::StatusCode code) {
  return absl::AsciiStrToLower(absl::StatusCodeToString(code));
}

// Reads the fields of one JSON object, each with a clear error naming it,
// and refuses fields nobody read (typos must not pass silently).
class Fields {
 public:
  Fields(const json& obj, std::string where) : obj_(obj), where_(std::move(where)) {}

  bool Has(const char* key) const { return obj_.contains(key) && !obj_[key].is_null(); }

  absl::Status String(const char* key, std::string* out, bool required) {
    used_.insert(key);
    if (!Has(key)) return required ? Missing(key) : absl::OkStatus();
    const json& v = obj_[key];
    if (!v.is_string()) return Wrong(key, "a string");
    *out = v.get<std::string>();
    return absl::OkStatus();
  }

  // An integer from `min` to `max`; anything else (a fraction, a number
  // out of range) is refused naming the range, never clamped.
  absl::Status Int(const char* key, int64_t* out, bool required, int64_t min, int64_t max) {
    used_.insert(key);
    if (!Has(key)) return required ? Missing(key) : absl::OkStatus();
    const json& v = obj_[key];
    const std::string range = absl::StrCat("an integer from ", min, " to ", max);
    if (!v.is_number_integer()) return Wrong(key, range.c_str());
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      return Wrong(key, range.c_str());
    }
    const int64_t n = v.get<int64_t>();
    if (n < min || n > max) return Wrong(key, range.c_str());
    *out = n;
    return absl::OkStatus();
  }

  absl::Status Uint(const char* key, uint64_t* out, bool required) {
    used_.insert(key);
    if (!Has(key)) return required ? Missing(key) : absl::OkStatus();
    const json& v = obj_[key];
    if (!v.is_number_unsigned()) return Wrong(key, "a non-negative integer");
    *out = v.get<uint64_t>();
    return absl::OkStatus();
  }

  absl::Status Bool(const char* key, bool* out) {
    used_.insert(key);
    if (!Has(key)) return absl::OkStatus();
    if (!obj_[key].is_boolean()) return Wrong(key, "true or false");
    *out = obj_[key].get<bool>();
    return absl::OkStatus();
  }

  const json* Object(const char* key) {
    used_.insert(key);
    return Has(key) ? &obj_[key] : nullptr;
  }

  absl::Status CheckUnknown() const {
    for (auto it = obj_.begin(); it != obj_.end(); ++it) {
      if (used_.count(it.key()) == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("unknown field '", Name(it.key().c_str()), "'"));
      }
    }
    return absl::OkStatus();
  }

  std::string Name(const char* key) const {
    return where_.empty() ? key : absl::StrCat(where_, ".", key);
  }

 private:
  absl::Status Missing(const char* key) const {
    return absl::InvalidArgumentError(absl::StrCat("missing field '", Name(key), "'"));
  }
  absl::Status Wrong(const char* key, const char* what) const {
    return absl::InvalidArgumentError(absl::StrCat("field '", Name(key), "' must be ", what));
  }

  const json& obj_;
  const std::string where_;
  std::set<std::string> used_;
};

absl::Status ParseOwner(const json& j, Owner* out) {
  if (!j.is_object()) return absl::InvalidArgumentError("field 'owner' must be an object");
  Fields f(j, "owner");
  int64_t pid = 0;
  uint64_t start = 0;
  absl::Status s = f.String("uuid", &out->uuid, true);
  if (s.ok()) s = f.String("name", &out->name, true);
  if (s.ok()) s = f.Int("pid", &pid, true, 1, kMaxPid);
  if (s.ok()) s = f.Uint("start_time", &start, false);
  if (s.ok()) s = f.CheckUnknown();
  out->pid = pid;
  out->start_time = start;
  return s;
}

absl::Status ParseSpec(const json& j, const std::string& where, ResourceSpec* out) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("'", where, "' must be an object"));
  }
  Fields f(j, where);
  std::string disk, lease, mode = "exclusive";
  absl::Status s = f.String("disk", &disk, false);
  if (s.ok()) s = f.String("lease", &lease, false);
  if (s.ok()) s = f.String("lockspace", &out->lockspace, false);
  if (s.ok()) s = f.String("backend", &out->backend, false);
  if (s.ok()) s = f.String("path", &out->lease_path, false);
  if (s.ok()) s = f.Uint("offset", &out->lease_offset, false);
  if (s.ok()) s = f.String("mode", &mode, false);
  if (s.ok()) s = f.String("identity", &out->identity, false);
  if (s.ok()) s = f.String("identity_kind", &out->identity_kind, false);
  if (s.ok()) s = f.CheckUnknown();
  if (!s.ok()) return s;
  if ((f.Has("identity") || f.Has("identity_kind")) && !f.Has("disk")) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", where, "': 'identity' and 'identity_kind' belong to disks"));
  }
  if (f.Has("identity") != f.Has("identity_kind")) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", where, "': 'identity' and 'identity_kind' come together"));
  }
  if (absl::Status v = ValidateClientIdentity(out->identity, out->identity_kind); !v.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", v.message()));
  }
  if (f.Has("disk") == f.Has("lease")) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", where, "' must have exactly one of 'disk' and 'lease'"));
  }
  if (f.Has("disk") && (f.Has("path") || f.Has("offset"))) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", where, "': 'path' and 'offset' belong to leases, not disks"));
  }
  out->kind = f.Has("disk") ? ResourceKind::kDisk : ResourceKind::kLease;
  out->target = f.Has("disk") ? disk : lease;
  absl::StatusOr<LockMode> m = ParseLockMode(mode);
  if (!m.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".mode: ", m.status().message()));
  }
  out->mode = *m;
  return absl::OkStatus();
}

absl::Status ParseSpecs(const json* arr, std::vector<ResourceSpec>* out) {
  if (arr == nullptr) return absl::InvalidArgumentError("missing field 'resources'");
  if (!arr->is_array()) return absl::InvalidArgumentError("field 'resources' must be an array");
  if (arr->size() > 4096) {
    return absl::ResourceExhaustedError("a request may name at most 4096 resources");
  }
  for (size_t i = 0; i < arr->size(); ++i) {
    ResourceSpec spec;
    if (absl::Status s = ParseSpec((*arr)[i], absl::StrCat("resources[", i, "]"), &spec);
        !s.ok()) {
      return s;
    }
    out->push_back(std::move(spec));
  }
  return absl::OkStatus();
}

json LockJson(const LockView& l) {
  json j{{"backend", l.backend},
         {"kind", ResourceKindName(l.resource.kind)},
         {"lockspace", l.resource.lockspace},
         {"name", l.resource.name},
         {"path", l.resource.path},
         {"offset", l.resource.offset},
         {"mode", LockModeName(l.mode)},
         {"fencing_token", l.fencing_token}};
  if (l.queued) j["queued"] = true;
  if (l.resource.kind == ResourceKind::kDisk) {
    // Which scheme made the name, and what the disk is (docs/disk-identity.md).
    j["naming"] = DiskNamingName(l.resource.naming);
    if (!l.path_name.empty()) j["path_name"] = l.path_name;
    j["identity"] = l.resource.identity;
    j["identity_kind"] = l.resource.identity_kind;
    if (!l.resource.identity_reason.empty()) {
      j[l.resource.identity_kind == "path" ? "identity_weak" : "identity_note"] =
          l.resource.identity_reason;
    }
  }
  return j;
}

json LocksJson(const std::vector<LockView>& locks) {
  json arr = json::array();
  for (const LockView& l : locks) arr.push_back(LockJson(l));
  return arr;
}

json OwnerJson(const Owner& o) {
  return json{{"uuid", o.uuid},
              {"name", o.name},
              {"pid", o.pid},
              {"start_time", o.start_time},
              {"host", o.host}};
}

absl::Status ParsePolicy(Fields& f, std::optional<FailurePolicy>* policy,
                         std::optional<absl::Duration>* grace) {
  std::string p;
  int64_t grace_ms = -1;
  absl::Status s = f.String("policy", &p, false);
  if (s.ok()) s = f.Int("grace_ms", &grace_ms, false, 0, kMaxGraceMs);
  if (!s.ok()) return s;
  if (f.Has("policy")) {
    absl::StatusOr<FailurePolicy> fp = ParseFailurePolicy(p);
    if (!fp.ok()) return fp.status();
    *policy = *fp;
  }
  if (f.Has("grace_ms")) *grace = absl::Milliseconds(grace_ms);
  return absl::OkStatus();
}

absl::StatusOr<json> Dispatch(Agent* agent, const std::string& op, Fields& f,
                              const Caller& caller, int cancel_fd, bool* reexec) {
  if (op == "hello") {
    if (absl::Status s = f.CheckUnknown(); !s.ok()) return s;
    json names = json::array();
    for (const std::string& b : agent->BackendNames()) names.push_back(b);
    return json{{"server", "latchd"},
                {"protocol", kProtocolVersion},
                {"backends", names},
                {"default_backend", names.empty() ? json() : names[0]}};
  }
  if (op == "status") {
    if (absl::Status s = f.CheckUnknown(); !s.ok()) return s;
    AgentStatus st = agent->Status();
    json backends = json::array();
    for (const BackendView& b : st.backends) {
      json state = json::parse(b.state_json, nullptr, /*allow_exceptions=*/false);
      if (state.is_discarded()) state = json{{"unparsable", b.state_json}};
      backends.push_back(json{{"name", b.name},
                              {"healthy", b.health.ok()},
                              {"message", std::string(b.health.message())},
                              {"state", state}});
    }
    json owners = json::array();
    for (const OwnerView& o : st.owners) {
      owners.push_back(json{{"owner", OwnerJson(o.owner)},
                            {"policy", FailurePolicyName(o.policy)},
                            {"grace_ms", absl::ToInt64Milliseconds(o.grace)},
                            {"alive", o.alive},
                            {"locks", LocksJson(o.locks)}});
    }
    return json{{"host", st.host},
                {"pid", static_cast<int64_t>(getpid())},
                {"boot_id", st.boot_id},
                {"journal", st.journal_path},
                {"disk_names", DiskNamesName(st.disk_names)},
                {"backends", backends},
                {"owners", owners}};
  }
  if (op == "register") {
    Owner owner;
    std::optional<FailurePolicy> policy;
    std::optional<absl::Duration> grace;
    const json* o = f.Object("owner");
    if (o == nullptr) return absl::InvalidArgumentError("missing field 'owner'");
    absl::Status s = ParseOwner(*o, &owner);
    if (s.ok()) s = ParsePolicy(f, &policy, &grace);
    if (s.ok()) s = f.CheckUnknown();
    if (!s.ok()) return s;
    absl::StatusOr<OwnerView> v = agent->Register(owner, policy, grace, caller);
    if (!v.ok()) return v.status();
    return json{{"owner", OwnerJson(v->owner)},
                {"policy", FailurePolicyName(v->policy)},
                {"grace_ms", absl::ToInt64Milliseconds(v->grace)},
                {"locks", LocksJson(v->locks)}};
  }
  if (op == "holders") {
    std::vector<ResourceSpec> specs;
    absl::Status s = ParseSpecs(f.Object("resources"), &specs);
    if (s.ok()) s = f.CheckUnknown();
    if (!s.ok()) return s;
    absl::StatusOr<std::vector<HoldersView>> views = agent->Holders(specs);
    if (!views.ok()) return views.status();
    json out = json::array();
    for (const HoldersView& v : *views) {
      json holders = json::array();
      for (const HolderInfo& h : v.holders) {
        json one{{"owner", OwnerJson(h.owner)},
                 {"mode", LockModeName(h.mode)},
                 {"fencing_token", h.fencing_token}};
        if (auto p = v.local_paths.find(h.owner.uuid); p != v.local_paths.end()) {
          one["path"] = p->second;
        }
        holders.push_back(std::move(one));
      }
      json r = LockJson(LockView{v.backend, v.resource, LockMode::kExclusive, 0, "", 0});
      r.erase("mode");
      r.erase("fencing_token");
      out.push_back(json{{"request_index", v.request_index}, {"resource", r}, {"holders", holders}});
    }
    return json{{"resources", out}};
  }
  if (op == "backend_admin") {
    std::string backend;
    absl::Status s = f.String("backend", &backend, false);
    const json* req = f.Object("request");
    if (s.ok() && (req == nullptr || !req->is_object())) {
      s = absl::InvalidArgumentError("field 'request' must be an object {\"command\": ...}");
    }
    if (s.ok()) s = f.CheckUnknown();
    if (!s.ok()) return s;
    absl::StatusOr<std::string> out = agent->BackendAdmin(backend, req->dump(), caller);
    if (!out.ok()) return out.status();
    json result = json::parse(*out, nullptr, /*allow_exceptions=*/false);
    if (result.is_discarded()) {
      return absl::InternalError("the backend's command gave a result that is not JSON");
    }
    return json{{"result", result}};
  }
  std::string uuid;
  if (op == "reexec") {
    if (absl::Status s = f.CheckUnknown(); !s.ok()) return s;
    if (!caller.privileged) {
      return absl::PermissionDeniedError(
          absl::StrCat("uid ", caller.uid, " may not restart latchd (root or latchd's uid may)"));
    }
    if (absl::Status s = agent->PrepareExec(absl::Seconds(5)); !s.ok()) return s;
    *reexec = true;
    return json::object();
  }
  if (op != "set_policy" && op != "acquire" && op != "queue" && op != "release" &&
      op != "inquire" && op != "unregister") {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown op '", op,
        "' (expected hello, register, set_policy, acquire, queue, release, inquire, unregister, "
        "holders, status, backend_admin or reexec)"));
  }
  if (absl::Status s = f.String("uuid", &uuid, true); !s.ok()) return s;
  if (op == "set_policy") {
    std::optional<FailurePolicy> policy;
    std::optional<absl::Duration> grace;
    absl::Status s = ParsePolicy(f, &policy, &grace);
    if (s.ok()) s = f.CheckUnknown();
    if (s.ok() && !policy) s = absl::InvalidArgumentError("missing field 'policy'");
    if (s.ok()) s = agent->SetPolicy(uuid, *policy, grace, caller);
    if (!s.ok()) return s;
    return json{{"policy", FailurePolicyName(*policy)}};
  }
  if (op == "acquire") {
    std::vector<ResourceSpec> specs;
    bool wait = false;
    int64_t timeout_ms = -1;
    std::string state;
    absl::Status s = ParseSpecs(f.Object("resources"), &specs);
    if (s.ok()) s = f.Bool("wait", &wait);
    if (s.ok()) s = f.Int("timeout_ms", &timeout_ms, false, -1, kMaxTimeoutMs);
    if (s.ok()) s = f.String("state", &state, false);
    if (s.ok()) s = f.CheckUnknown();
    if (!s.ok()) return s;
    AcquireOptions opts;
    opts.wait = wait;
    opts.timeout = timeout_ms < 0 ? absl::InfiniteDuration() : absl::Milliseconds(timeout_ms);
    opts.cancel_fd = cancel_fd;
    std::optional<std::string> st;
    if (f.Has("state")) st = state;
    absl::StatusOr<std::vector<LockView>> locks = agent->Acquire(uuid, specs, opts, st, caller);
    if (!locks.ok()) return locks.status();
    return json{{"locks", LocksJson(*locks)}};
  }
  if (op == "queue") {
    std::vector<ResourceSpec> specs;
    absl::Status s = ParseSpecs(f.Object("resources"), &specs);
    if (s.ok()) s = f.CheckUnknown();
    if (s.ok()) s = agent->Queue(uuid, specs, caller);
    if (!s.ok()) return s;
    return json{{"queued", true}};
  }
  if (op == "release" || op == "unregister") {
    std::optional<std::vector<ResourceSpec>> specs;
    if (op == "release" && f.Has("resources")) {
      specs.emplace();
      if (absl::Status s = ParseSpecs(f.Object("resources"), &*specs); !s.ok()) return s;
    }
    if (absl::Status s = f.CheckUnknown(); !s.ok()) return s;
    absl::StatusOr<ReleaseResult> r =
        op == "release" ? agent->Release(uuid, specs, caller) : agent->Unregister(uuid, caller);
    if (!r.ok()) return r.status();
    return json{{"released", LocksJson(r->released)}, {"state", r->state}};
  }
  // inquire
  if (absl::Status s = f.CheckUnknown(); !s.ok()) return s;
  absl::StatusOr<OwnerView> v = agent->Inquire(uuid);
  if (!v.ok()) return v.status();
  return json{{"owner", OwnerJson(v->owner)},
              {"policy", FailurePolicyName(v->policy)},
              {"alive", v->alive},
              {"locks", LocksJson(v->locks)},
              {"state", HandoffState(v->locks)}};
}

// Every response goes out through here: a value latchd could not print
// (bytes that are not UTF-8, from a backend's state or an old journal row)
// is replaced, never thrown.
std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json ErrorJson(const json& id, const absl::Status& s) {
  return json{{"v", kProtocolVersion},
              {"id", id},
              {"ok", false},
              {"error", {{"code", CodeName(s.code())}, {"message", std::string(s.message())}}}};
}

bool WriteAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    // SO_SNDTIMEO bounds each send: a peer that does not read its answers
    // loses its connection instead of holding a thread forever.
    const ssize_t n = send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

std::string Refusal(const absl::Status& s) { return Dump(ErrorJson(nullptr, s)) + "\n"; }

int Millis(absl::Duration d) {
  if (d <= absl::ZeroDuration()) return 0;
  return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(d) + 1, INT32_MAX));
}

}  // namespace

// One client connection. Fields other than fd, caller are guarded by
// Server::conn_mu_.
struct Server::Conn {
  int fd = -1;
  Caller caller;
  bool busy = false;     // a request is being answered
  bool partial = false;  // part of a request line has arrived
  bool evicted = false;  // closed to make room; answer nothing more
  absl::Time last = absl::Now();
};

std::string Server::TooLong() const {
  return Refusal(absl::ResourceExhaustedError(
      absl::StrCat("request exceeds ", options_.max_request_bytes, " bytes")));
}

std::string Server::HandleLine(const std::string& line, const Caller& caller, int cancel_fd,
                               bool* reexec) {
  *reexec = false;
  try {
    return Handle(line, caller, cancel_fd, reexec);
  } catch (const std::exception& e) {
    // Nothing should throw past Handle's own handler; if something does,
    // the peer gets an error and latchd lives on.
    spdlog::error("request handler threw: {}", e.what());
    return Dump(ErrorJson(nullptr, absl::InternalError(absl::StrCat(
                                       "latchd failed to answer: ", e.what()))));
  } catch (...) {
    spdlog::error("request handler threw a non-exception");
    return Dump(ErrorJson(nullptr, absl::InternalError("latchd failed to answer")));
  }
}

std::string Server::Handle(const std::string& line, const Caller& caller, int cancel_fd,
                           bool* reexec) {
  // Bound the input before anything walks it: the parser, the copy of the
  // id and the response's printer would otherwise follow any nesting.
  if (absl::Status s = CheckRequestLine(line); !s.ok()) return Dump(ErrorJson(nullptr, s));
  const json req = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (req.is_discarded()) {
    return Dump(ErrorJson(nullptr, absl::InvalidArgumentError("request is not valid JSON")));
  }
  if (!req.is_object()) {
    return Dump(ErrorJson(nullptr, absl::InvalidArgumentError("request must be a JSON object")));
  }
  const json id = req.contains("id") ? req["id"] : json();
  Fields f(req, "");
  f.Object("id");
  int64_t v = 0;
  std::string op;
  absl::Status s = f.Int("v", &v, true, INT64_MIN, INT64_MAX);
  if (s.ok() && v != kProtocolVersion) {
    s = absl::InvalidArgumentError(
        absl::StrCat("protocol version ", v, " is not spoken here (latchd speaks version ",
                     kProtocolVersion, ")"));
  }
  if (s.ok()) s = f.String("op", &op, true);
  if (!s.ok()) return Dump(ErrorJson(id, s));
  absl::StatusOr<json> result;
  try {
    result = Dispatch(agent_, op, f, caller, cancel_fd, reexec);
  } catch (const std::exception& e) {
    // nlohmann throws on type confusion we did not foresee; never let one
    // take latchd down.
    result = absl::InvalidArgumentError(absl::StrCat("malformed request: ", e.what()));
  }
  if (!result.ok()) {
    spdlog::debug("{} refused: {}", op, result.status().ToString());
    return Dump(ErrorJson(id, result.status()));
  }
  // One line per change that succeeded, with its caller: the lab measures
  // hand-off windows between nodes from these (docs/libvirt.md).
  if (op == "acquire" || op == "release" || op == "queue" || op == "register" ||
      op == "unregister") {
    spdlog::debug("{} done for pid {}", op, caller.pid);
  }
  json out = {{"v", kProtocolVersion}, {"id", id}, {"ok", true}};
  out.update(*result);
  return Dump(out);
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(Agent* agent, ServerOptions options,
                                                      std::function<void()> on_reexec) {
  int fd = options.inherited_fd;
  if (fd < 0) {
    sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    if (options.socket_path.size() >= sizeof(addr.sun_path)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "socket path ", options.socket_path, " is longer than ", sizeof(addr.sun_path) - 1,
          " bytes"));
    }
    memcpy(addr.sun_path, options.socket_path.c_str(), options.socket_path.size() + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
    // Someone answering there is another latchd: never steal its socket.
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      close(fd);
      return absl::FailedPreconditionError(
          absl::StrCat("another latchd is serving ", options.socket_path));
    }
    close(fd);
    unlink(options.socket_path.c_str());
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const mode_t old = umask(0177);  // The socket file is born 0600.
    const int rc = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    const int err = errno;
    umask(old);
    if (rc != 0) {
      close(fd);
      return absl::FailedPreconditionError(
          absl::StrCat("cannot bind ", options.socket_path, ": ", strerror(err)));
    }
    if (listen(fd, 256) != 0) {
      close(fd);
      return absl::InternalError(absl::StrCat("listen: ", strerror(errno)));
    }
  }
  std::unique_ptr<Server> s(new Server(agent, std::move(options), std::move(on_reexec), fd));
  s->stop_fd_ = eventfd(0, EFD_CLOEXEC);
  s->accept_thread_ = std::thread([p = s.get()] { p->AcceptLoop(); });
  return s;
}

Server::Server(Agent* agent, ServerOptions options, std::function<void()> on_reexec, int fd)
    : agent_(agent), options_(std::move(options)), on_reexec_(std::move(on_reexec)),
      listen_fd_(fd) {}

void Server::Stop(bool keep_listening) {
  const uint64_t one = 1;
  (void)!write(stop_fd_, &one, sizeof(one));
  if (accept_thread_.joinable()) accept_thread_.join();
  {
    std::lock_guard<std::mutex> l(conn_mu_);
    for (auto& [fd, c] : conns_) {
      c->evicted = true;
      shutdown(fd, SHUT_RDWR);
    }
  }
  if (!keep_listening) {
    close(listen_fd_);
    unlink(options_.socket_path.c_str());
  }
}

std::shared_ptr<Server::Conn> Server::IdlestLocked(const Caller& newcomer, bool any_uid) const {
  // `last` is when the connection was accepted or last had a request
  // answered: an idle connection and one trickling a request in age alike,
  // and a client that just connected is the last to go. Never closed to
  // make room: a connection whose request is being answered, one whose
  // bytes have arrived but not yet been read (its request is on the way
  // in: a client that connected and wrote at once, like `latchctl status`,
  // must not lose to a flood that connects faster than latchd reads), and a
  // privileged peer's connection for an unprivileged newcomer.
  std::shared_ptr<Conn> best;
  for (const auto& [fd, c] : conns_) {
    if (c->busy || c->evicted || (!any_uid && c->caller.uid != newcomer.uid)) continue;
    if (c->caller.privileged && !newcomer.privileged) continue;
    int unread = 0;
    if (ioctl(fd, FIONREAD, &unread) == 0 && unread > 0) continue;
    if (best == nullptr || c->last < best->last) best = c;
  }
  return best;
}

std::shared_ptr<Server::Conn> Server::Admit(int fd, const Caller& caller, std::string* refusal) {
  std::lock_guard<std::mutex> l(conn_mu_);
  const size_t reserve = caller.privileged ? kAdminReserve : 0;
  size_t& mine = per_uid_[caller.uid];
  // Room for a connection: close the idlest one (of this uid when it is the
  // uid's limit that is reached) rather than refuse a peer that has work.
  for (;;) {
    const bool uid_full = mine >= options_.max_clients_per_uid;
    const bool all_full = conns_.size() >= options_.max_clients;
    if (!uid_full && !all_full) break;
    std::shared_ptr<Conn> victim = IdlestLocked(caller, /*any_uid=*/!uid_full);
    if (victim == nullptr) break;
    spdlog::info("closing an idle connection of uid {} to make room for uid {} (pid {})",
                 victim->caller.uid, caller.uid, caller.pid);
    victim->evicted = true;
    shutdown(victim->fd, SHUT_RDWR);
    // Its thread removes it when it sees the shutdown; count it gone now.
    --per_uid_[victim->caller.uid];
    conns_.erase(victim->fd);
  }
  if (mine >= options_.max_clients_per_uid + reserve ||
      conns_.size() >= options_.max_clients + reserve) {
    *refusal = absl::StrCat("latchd serves at most ", options_.max_clients,
                            " connections, ", options_.max_clients_per_uid,
                            " per uid; uid ", caller.uid, " has ", mine,
                            " and none of them is idle");
    return nullptr;
  }
  auto c = std::make_shared<Conn>();
  c->fd = fd;
  c->caller = caller;
  ++mine;
  conns_[fd] = c;
  return c;
}

void Server::AcceptLoop() {
  for (;;) {
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::critical("poll on the listening socket: {}", strerror(errno));
      return;
    }
    if (p[1].revents != 0) return;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) {
        spdlog::error("accept: {}", strerror(errno));
        if (errno == EMFILE || errno == ENFILE) usleep(100000);
      }
      continue;
    }
    const timeval send_timeout = absl::ToTimeval(options_.send_timeout);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof(send_timeout));
    ucred cred = {};
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
        std::find(options_.allowed_uids.begin(), options_.allowed_uids.end(), cred.uid) ==
            options_.allowed_uids.end()) {
      spdlog::warn("refused a client with uid {} (pid {}): not in allowed_uids", cred.uid,
                   cred.pid);
      WriteAll(fd, Refusal(absl::PermissionDeniedError(
                       absl::StrCat("uid ", cred.uid, " may not use latchd"))));
      close(fd);
      continue;
    }
    Caller caller;
    caller.uid = cred.uid;
    caller.pid = cred.pid;
    caller.privileged = cred.uid == 0 || cred.uid == geteuid();
    std::string refusal;
    std::shared_ptr<Conn> conn = Admit(fd, caller, &refusal);
    if (conn == nullptr) {
      spdlog::warn("refused a client with uid {} (pid {}): {}", cred.uid, cred.pid, refusal);
      WriteAll(fd, Refusal(absl::ResourceExhaustedError(refusal)));
      close(fd);
      continue;
    }
    std::thread([this, conn] { Serve(conn); }).detach();
  }
}

void Server::Serve(std::shared_ptr<Conn> conn) {
  const int fd = conn->fd;
  std::string buf;
  bool discarding = false;  // skipping the rest of an oversized line
  char chunk[16384];
  bool open = true;
  // When the request line now in `buf` began to arrive.
  absl::Time line_start = absl::InfiniteFuture();
  while (open) {
    const absl::Time now = absl::Now();
    const bool mid_line = !buf.empty() || discarding;
    const absl::Duration wait =
        mid_line ? line_start + options_.request_timeout - now : options_.idle_timeout;
    pollfd p = {fd, POLLIN, 0};
    const int ready = poll(&p, 1, Millis(wait));
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) {
      if (mid_line) {
        spdlog::info("uid {} (pid {}): request incomplete after {}; closing", conn->caller.uid,
                     conn->caller.pid, absl::FormatDuration(options_.request_timeout));
        WriteAll(fd, Refusal(absl::DeadlineExceededError(
                         absl::StrCat("request line incomplete after ",
                                      absl::FormatDuration(options_.request_timeout),
                                      "; closing the connection"))));
      } else {
        spdlog::debug("uid {} (pid {}): idle for {}; closing", conn->caller.uid,
                      conn->caller.pid, absl::FormatDuration(options_.idle_timeout));
      }
      break;
    }
    const ssize_t n = ready < 0 ? -1 : recv(fd, chunk, sizeof(chunk), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (!mid_line) line_start = absl::Now();
    buf.append(chunk, static_cast<size_t>(n));
    size_t start = 0;
    for (;;) {
      const size_t nl = buf.find('\n', start);
      if (nl == std::string::npos) break;
      if (discarding) {
        discarding = false;
        start = nl + 1;
        line_start = absl::Now();
        continue;
      }
      const std::string line = buf.substr(start, nl - start);
      start = nl + 1;
      line_start = absl::Now();  // the next line, if any, starts now
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      {
        std::lock_guard<std::mutex> l(conn_mu_);
        if (conn->evicted) {
          open = false;
          break;
        }
        conn->busy = true;
      }
      bool reexec = false;
      const std::string response = line.size() + 1 > options_.max_request_bytes
                                       ? TooLong()
                                       : HandleLine(line, conn->caller, fd, &reexec) + "\n";
      const bool written = WriteAll(fd, response);
      {
        // Busy until the answer is out: eviction must not cut it off.
        std::lock_guard<std::mutex> l(conn_mu_);
        conn->busy = false;
        conn->last = absl::Now();
      }
      if (reexec) {
        // Prepared: exec whether or not the client took the answer, or
        // latchd would stay with its gate closed and its journal shut.
        on_reexec_();
        open = false;
        break;
      }
      if (!written) {
        open = false;
        break;
      }
      line_start = absl::Now();  // a partial line behind it waits from now
    }
    buf.erase(0, start);
    if (discarding) {
      buf.clear();  // Still inside the oversized line.
    } else if (open && buf.size() > options_.max_request_bytes) {
      // Answer now, then skip the rest of that line whatever its length.
      open = WriteAll(fd, TooLong());
      buf.clear();
      discarding = true;
    }
    std::lock_guard<std::mutex> l(conn_mu_);
    conn->partial = !buf.empty() || discarding;
  }
  {
    std::lock_guard<std::mutex> l(conn_mu_);
    auto it = conns_.find(fd);
    if (it != conns_.end() && it->second == conn) {
      conns_.erase(it);
      --per_uid_[conn->caller.uid];
    }
    // Closed under the lock: Admit and Stop shut descriptors down only
    // while they are registered, so they can never hit a reused number.
    close(fd);
  }
}

}  // namespace latchkey
