#include "libvirt-adapter/adapter.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "agent/client.h"
#include "core/config.h"
#include "core/disk_identity.h"
#include "core/lock_mode.h"
#include "core/owner.h"
#include "core/resource.h"
#include "core/utf8.h"

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
  return absl::StrCat("domain '", EscapeForMessage(d.name), "'");
}

// Every string value (and list item) of `conf` must be UTF-8; the message
// shows the bad bytes escaped, never raw.
absl::Status CheckUtf8Values(const Config& conf) {
  for (const ConfigEntry& e : conf.entries()) {
    std::vector<ConfigValue> values = {e.value};
    if (e.value.type() == ConfigValue::Type::kList) values = e.value.list();
    for (const ConfigValue& v : values) {
      if (v.type() == ConfigValue::Type::kString && !IsValidUtf8(v.str())) {
        return absl::InvalidArgumentError(
            absl::StrCat(e.Where(), ": '", e.key, "' is not valid UTF-8: \"",
                         EscapeForMessage(v.str()), "\""));
      }
    }
  }
  return absl::OkStatus();
}

// latchd's socket: an absolute path that fits in a Unix socket address.
absl::Status CheckSocketPath(const std::string& path) {
  constexpr size_t kMax = sizeof(sockaddr_un::sun_path) - 1;
  if (path.empty()) return absl::InvalidArgumentError("'socket' is empty");
  if (path[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("'socket' must be an absolute path, not \"", EscapeForMessage(path), "\""));
  }
  if (path.size() > kMax) {
    return absl::InvalidArgumentError(absl::StrCat("'socket' is ", path.size(),
                                                   " bytes long; a Unix socket path holds at most ",
                                                   kMax));
  }
  for (unsigned char c : path) {
    if (c < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'socket' \"", EscapeForMessage(path), "\" has a control character"));
    }
  }
  return absl::OkStatus();
}

const char* FileKind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "not a regular file";
}

absl::Status Unreadable(const std::string& path, const std::string& what, int err) {
  const std::string msg = absl::StrCat(path, ": cannot ", what, ": ", strerror(err));
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(msg);
  return absl::FailedPreconditionError(msg);
}

}  // namespace

std::string EscapeForMessage(const std::string& text) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  absl::string_view rest = text;
  while (!rest.empty()) {
    const size_t bad = FirstInvalidUtf8(rest);
    const size_t good = bad == absl::string_view::npos ? rest.size() : bad;
    // Control characters are ASCII, never inside a multi-byte sequence.
    for (size_t i = 0; i <= good && i < rest.size(); ++i) {
      const unsigned char c = static_cast<unsigned char>(rest[i]);
      if (i == good || c < 0x20 || c == 0x7f) {
        out += {'\\', 'x', kHex[c >> 4], kHex[c & 15]};
      } else {
        out += rest[i];
      }
    }
    rest.remove_prefix(std::min(good + 1, rest.size()));
  }
  return out;
}

absl::StatusOr<AdapterConfig> AdapterConfig::Load(const std::string& path) {
  // Checked before opening: opening a FIFO or a device may block or act.
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT && lstat(path.c_str(), &st) == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          path, " is a symbolic link to a missing file; fix the link or remove it (no file "
                "means the defaults)"));
    }
    if (err == ENOENT) {
      AdapterConfig c;
      c.file = path;
      c.file_missing = true;
      c.require_lease_for_disks = !c.auto_disk_leases;
      return c;
    }
    return Unreadable(path, "read it", err);
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, " is ", FileKind(st.st_mode),
        ", not a regular file; qemu-latchkey.conf must be a file (or absent: the defaults)"));
  }
  // O_NONBLOCK: if a FIFO replaced the file meanwhile, fstat says so below.
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return Unreadable(path, "open it", errno);
  std::string text;
  absl::Status read_status;
  if (fstat(fd, &st) != 0) {
    read_status = Unreadable(path, "read it", errno);
  } else if (!S_ISREG(st.st_mode)) {
    read_status = absl::FailedPreconditionError(
        absl::StrCat(path, " is ", FileKind(st.st_mode), ", not a regular file"));
  } else {
    char buf[8192];
    for (;;) {
      const ssize_t n = read(fd, buf, sizeof(buf));
      if (n > 0) {
        text.append(buf, static_cast<size_t>(n));
      } else if (n == 0) {
        break;
      } else if (errno != EINTR) {
        read_status = Unreadable(path, "read it", errno);
        break;
      }
    }
  }
  close(fd);
  if (!read_status.ok()) return read_status;
  return Parse(text, path);
}

absl::StatusOr<AdapterConfig> AdapterConfig::Parse(const std::string& text,
                                                   const std::string& origin) {
  absl::StatusOr<Config> parsed = Config::ParseText(text, origin);
  if (!parsed.ok()) return parsed.status();
  return FromConfig(*parsed, origin);
}

absl::StatusOr<AdapterConfig> AdapterConfig::FromConfig(const Config& conf,
                                                        const std::string& origin) {
  // First, so that no later message quotes invalid UTF-8.
  if (absl::Status s = CheckUtf8Values(conf); !s.ok()) return s;
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
  // Where a key is set, for messages ("FILE" when it is not).
  auto where = [&](const char* key) {
    const ConfigEntry* e = conf.Find(key);
    return e != nullptr ? e->Where() : origin;
  };
  if (absl::Status s = CheckSocketPath(*socket); !s.ok()) {
    return Prefixed(s, where("socket") + ": ");
  }
  // Names follow the project's rules (core/resource.h); whether latchd loads
  // the backend is checked when a domain starts (CheckBackend).
  if (!backend->empty()) {
    if (absl::Status s = ValidateName("backend", *backend); !s.ok()) {
      return Prefixed(s, where("backend") + ": ");
    }
  }
  if (!lockspace->empty()) {
    if (absl::Status s = ValidateName("lockspace", *lockspace); !s.ok()) {
      return Prefixed(s, where("lockspace") + ": ");
    }
  }
  c.socket = *socket;
  c.backend = *backend;
  c.backend_where = where("backend");
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
      // A connect that timed out is latchd failing, not a busy resource.
      if (client.status().code() == absl::StatusCode::kDeadlineExceeded) {
        return absl::InternalError(client.status().message());
      }
      return client.status();
    }
    return Session(*std::move(client));
  }

  // A transport failure (no answer in time, connection closed) is latchd
  // failing: Internal, whatever code the client gave it.
  absl::StatusOr<json> Call(json request) {
    absl::StatusOr<json> r = client_.Call(request);
    if (!r.ok() && !client_.connected()) {
      return absl::InternalError(
          absl::StrCat("latchd failed while serving the request: ", r.status().message()));
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
      return absl::UnimplementedError(
          "<on_lockfailure>restart</on_lockfailure> is not supported by latchkey: latchd can "
          "power the domain off, pause it or ignore the failure");
    default:
      return absl::UnimplementedError(
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
    // What the disk is, found here, in libvirtd's mount namespace, where
    // QEMU will open it (latchd may not see this path the same way).
    if (absl::StatusOr<std::string> canonical = CanonicalImagePath(r.name); canonical.ok()) {
      absl::StatusOr<DiskIdentity> id = IdentifyDisk(*canonical);
      if (id.ok() && !id->weak()) {
        spec["identity"] = id->id;
        spec["identity_kind"] = id->kind;
      }
    }
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
  if (!canonical.ok()) return false;
  if (l.value("path", "") == *canonical) return true;
  // The same disk reached by another spelling (docs/disk-identity.md).
  const std::string held = l.contains("identity") && l["identity"].is_string()
                               ? l["identity"].get<std::string>()
                               : std::string();
  if (held.empty()) return false;
  absl::StatusOr<DiskIdentity> id = IdentifyDisk(*canonical);
  return id.ok() && !id->weak() && id->id == held;
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

// Fields of latchd's answers, read without throwing on a wrong type.
std::string Text(const json& j, const char* key) {
  if (!j.is_object()) return "";
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}
int64_t Number(const json& j, const char* key) {
  if (!j.is_object()) return 0;
  auto it = j.find(key);
  return it != j.end() && it->is_number_integer() ? it->get<int64_t>() : 0;
}

// True when the owner's process runs on this host and is libvirt's QEMU for
// the owner's uuid (libvirt starts every QEMU with "-uuid UUID"). latchd
// does not record what registered an owner, and `latchctl run` commands
// register too, so an owner is called a domain only on this evidence.
bool IsLocalLibvirtDomain(const json& owner) {
  const std::string uuid = Text(owner, "uuid");
  const int64_t pid = Number(owner, "pid");
  if (uuid.empty() || pid <= 0) return false;
  // Another host's pid, or a reused one, has another start time.
  const uint64_t start = owner.is_object() && owner.contains("start_time") &&
                                 owner["start_time"].is_number_unsigned()
                             ? owner["start_time"].get<uint64_t>()
                             : 0;
  if (!ProcessIsAlive(static_cast<pid_t>(pid), start)) return false;
  std::ifstream in(absl::StrCat("/proc/", pid, "/cmdline"), std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  const std::vector<std::string> args = absl::StrSplit(text.str(), '\0');
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == "-uuid" && absl::EqualsIgnoreCase(args[i + 1], uuid)) return true;
  }
  return false;
}

// How a refusal names a holder: a domain only when it is one (see above).
std::string HolderLabel(const json& owner) {
  const std::string name = EscapeForMessage(Text(owner, "name"));
  const std::string host = Text(owner, "host").empty() ? "?" : Text(owner, "host");
  if (IsLocalLibvirtDomain(owner)) {
    return absl::StrCat("domain '", name, "' (uuid ", Text(owner, "uuid"), ", pid ",
                        Number(owner, "pid"), ") on host ", host);
  }
  return absl::StrCat("owner '", name, "' (uuid ", Text(owner, "uuid"), ", pid ",
                      Number(owner, "pid"), " on host ", host, "), not a libvirt domain of this host");
}

// The backends latchd loads (its hello answer).
absl::StatusOr<std::vector<std::string>> LoadedBackends(Session& s) {
  absl::StatusOr<json> r = s.Call({{"op", "hello"}});
  if (!r.ok()) return Prefixed(r.status(), "cannot ask latchd which backends it loads: ");
  std::vector<std::string> names;
  if (r->contains("backends") && (*r)["backends"].is_array()) {
    for (const json& b : (*r)["backends"]) {
      if (b.is_string()) names.push_back(b.get<std::string>());
    }
  }
  return names;
}

// The backend named in qemu-latchkey.conf must be one latchd loads: only
// latchd knows, so this is checked when a domain starts, not at load.
absl::StatusOr<std::vector<std::string>> CheckBackend(Session& s, const AdapterConfig& c) {
  absl::StatusOr<std::vector<std::string>> loaded = LoadedBackends(s);
  if (!loaded.ok() || c.backend.empty()) return loaded;
  for (const std::string& b : *loaded) {
    if (b == c.backend) return loaded;
  }
  return absl::UnimplementedError(absl::StrCat(
      "latchd at ", c.socket, " does not load backend '", c.backend, "' (it loads: ",
      loaded->empty() ? "none" : absl::StrJoin(*loaded, ", "), "); set 'backend' in ",
      c.backend_where, " to one of them, or add it to latchd's 'backends'"));
}

// Text libvirt hands over must be UTF-8 before it goes into a request.
absl::Status CheckDomainText(const Domain& d) {
  if (!IsValidUtf8(d.name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        DomainLabel(d), ": the name is not valid UTF-8; latchd's protocol carries UTF-8 only"));
  }
  for (const DomainResource& r : d.resources) {
    for (const auto& [what, text] :
         std::vector<std::pair<const char*, const std::string*>>{
             {r.lease ? "lease key" : "disk path", &r.name},
             {"lease lockspace", &r.lease_lockspace},
             {"lease path", &r.lease_path}}) {
      if (!IsValidUtf8(*text)) {
        return absl::InvalidArgumentError(absl::StrCat(
            DomainLabel(d), ": ", what, " '", EscapeForMessage(*text),
            "' is not valid UTF-8; latchd's protocol carries UTF-8 only, so latchkey cannot lock it"));
      }
    }
  }
  return absl::OkStatus();
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
  const json views = r->contains("resources") ? (*r)["resources"] : json::array();
  for (size_t v = 0; views.is_array() && v < views.size(); ++v) {
    if (!views[v].is_object() || !views[v].contains("holders") ||
        !views[v]["holders"].is_array()) {
      continue;
    }
    // A disk may stand for two backend resources (its identity and path
    // names): request_index says which of ours each view is.
    const size_t i = views[v].contains("request_index")
                         ? static_cast<size_t>(std::max<int64_t>(0, Number(views[v], "request_index")))
                         : v;
    if (i >= modes.size()) continue;
    for (const json& h : views[v]["holders"]) {
      if (!h.is_object() || !h.contains("owner")) continue;
      const json& o = h["owner"];
      const std::string uuid = Text(o, "uuid");
      if (uuid.empty() || uuid == d.uuid) continue;
      absl::StatusOr<LockMode> held = ParseLockMode(Text(h, "mode"));
      if (held.ok() && ModesCompatible(*held, modes[i])) continue;
      const json res = views[v].contains("resource") ? views[v]["resource"] : json::object();
      std::string what = Text(res, "kind") == "disk"
                             ? absl::StrCat("disk ", Text(res, "path"))
                             : absl::StrCat("lease ", Text(res, "lockspace"), "/",
                                            Text(res, "name"));
      // The holder reached it by another spelling: say so.
      if (Text(res, "kind") == "disk" && !Text(h, "path").empty() &&
          Text(h, "path") != Text(res, "path")) {
        what = absl::StrCat(what, " (the same disk as ", Text(h, "path"), ", ",
                            Text(res, "identity_kind"), " identity)");
      }
      return absl::UnavailableError(absl::StrCat(
          DomainLabel(d), " cannot lock ", what, " ", LockModeName(modes[i]), ": it is held ",
          Text(h, "mode").empty() ? "?" : Text(h, "mode"), " by ", HolderLabel(o)));
    }
  }
  return absl::OkStatus();
}

// Where the backend queues (the DLM), asks latchd to queue the domain's
// requests now, at the register-only acquire in the QEMU child: for an
// incoming migration the source still holds the disk, and a request queued
// before it lets go is granted before anyone asking later, so the window
// between the source's release and the destination's acquire is closed.
// The queue belongs to the registered owner (this QEMU) and ends with it;
// the daemon-side acquire claims it (checking the migration state's tokens)
// or, if it is not granted, gives it up and is refused as usual. Failures
// change nothing: the acquire then asks as before.
void QueueAhead(Session& s, const AdapterConfig& c, const Domain& d) {
  json specs = json::array();
  for (const DomainResource& r : d.resources) {
    if (std::optional<json> spec = SpecFor(c, r)) specs.push_back(*std::move(spec));
  }
  if (specs.empty()) return;
  (void)s.Call({{"op", "queue"}, {"uuid", d.uuid}, {"resources", specs}});
}

// Checks the domain's text and lock-failure policy, connects, checks the
// backend (when the config names one) and registers the domain.
absl::StatusOr<Session> OpenRegistered(const AdapterConfig& c, const Domain& d, int on_failure) {
  if (absl::Status st = CheckDomainText(d); !st.ok()) return st;
  absl::StatusOr<std::string> policy = PolicyFor(c, on_failure);
  if (!policy.ok()) return Prefixed(policy.status(), DomainLabel(d) + ": ");
  absl::StatusOr<Session> s = Session::Open(c);
  if (!s.ok()) return s.status();
  if (!c.backend.empty()) {
    if (absl::Status st = CheckBackend(*s, c).status(); !st.ok()) return st;
  }
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
      return absl::UnimplementedError(absl::StrCat(
          DomainLabel(d), " has read/write disks but no <lease>, and require_lease_for_disks = 1 in ",
          config_.file));
    }
  }
  absl::StatusOr<Session> s = OpenRegistered(config_, d, on_failure);
  if (!s.ok()) return s.status();
  if (absl::Status st = CheckFree(*s, config_, d); !st.ok()) return st;
  QueueAhead(*s, config_, d);
  return absl::OkStatus();
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
      // A lock granted from the queue is claimed by acquiring it again.
      for (const json& l : (**held)["locks"]) {
        already |= Matches(config_, l, r) && !l.value("queued", false);
      }
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

absl::StatusOr<std::vector<std::string>> Adapter::CheckLatchd() const {
  absl::StatusOr<Session> s = Session::Open(config_);
  if (!s.ok()) return s.status();
  return CheckBackend(*s, config_);
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
