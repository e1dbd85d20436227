// latchctl: the command line for latchd, the per-host lock agent.
//
// latchd holds every lock, for a registered owner (a VM's process, or the
// command `latchctl run` starts); latchctl only sends requests
// (docs/protocol.md) over latchd's socket. Two commands work without latchd:
// `backends` probes the plugins, `journal` reads latchd's journal file.
// Run `latchctl help` for usage.
#include <signal.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "agent/client.h"
#include "core/disk_identity.h"
#include "core/journal.h"
#include "core/lock_mode.h"
#include "core/owner.h"
#include "core/plugin_loader.h"
#include "core/resource.h"
#include "libvirt-adapter/adapter.h"

namespace latchkey {
namespace {

// Keep in sync with the latchctl section of README.md.
constexpr char kUsage[] = R"(usage: latchctl [--socket PATH] COMMAND [OPTIONS]

latchd, the per-host agent, holds every lock for a registered owner (a VM's
process, or the command 'latchctl run' starts); latchctl talks to it.

Global options:
  --socket PATH        latchd's socket (default: $LATCHD_SOCKET, else
                       /run/latchkey/latchd.sock)
  --plugin-path DIRS   colon-separated plugin directories, for 'backends'
                       (default: $LATCHKEY_PLUGIN_PATH, the build tree,
                       /usr/lib/latchkey/backends)
  --timeout SECONDS    how long latchd may take to accept and answer a
                       request (default 30; --wait comes on top)

Commands:
  status [--json]      owners and locks latchd holds
  run RESOURCE... [--wait SECONDS] [--owner NAME] [--uuid UUID] [--grace-ms N] -- CMD [ARG...]
                       start CMD held before exec, register it as the owner,
                       take the locks, then let it run; they are released when
                       CMD ends; exit with CMD's status (128+N if signal N
                       killed it). SIGINT/SIGTERM are passed on to it.
                       Owner name default: CMD's base name; uuid: random
  register --owner NAME --uuid UUID --pid PID [--policy POLICY] [--grace-ms N]
                       make a process an owner that can lock
  set-policy --uuid UUID --policy POLICY [--grace-ms N]
  unregister --uuid UUID [--json]
                       release every lock of the owner and forget it
  acquire RESOURCE... --uuid UUID [--wait SECONDS] [--state STATE] [--json]
                       take all the resources for the owner, or none
  queue RESOURCE... --uuid UUID
                       queue requests for the owner, granted in the background
                       as soon as the resources are free, before anyone asking
                       later (backends with ordered queues: dlm); the owner's
                       next acquire of them claims the grant (with --state:
                       only if it is the first one since the state's tokens);
                       given up when the owner exits
  release [RESOURCE...] --uuid UUID [--json]
                       release them (default: every lock of the owner) and
                       print the state string (for 'acquire --state')
  inquire --uuid UUID [--json]
                       the owner's policy, locks and state string
  journal [--state-dir DIR | --journal FILE] [--json]
                       dump latchd's journal, read-only, also while latchd is
                       down (default: /run/latchkey/journal.db; DIR/journal.db)
  backends [--json]    backend plugins found locally, with their capabilities
  identify --disk PATH... [--json]
                       what each disk is, as latchd names it here (its identity:
                       WWID, device-mapper UUID, file system + file handle, ...;
                       or only its path, and why); docs/disk-identity.md
  libvirt-check [--conf FILE] [--offline]
                       check qemu-latchkey.conf (default
                       /etc/libvirt/qemu-latchkey.conf) as latchkey.so reads
                       it when libvirtd starts, and that the latchd at its
                       socket loads its backend (not with --offline)
  reexec               restart latchd in place (upgrade), keeping every lock
  leases [--lockspace LS] [--backend sanlock] [--json]
                       automatic sanlock leases: where they live, and for a
                       lease area its slots used and free, each disk's slot,
                       lease version, whether held, the last holder
  leases-format --lockspace LS [--force]
                       format the lockspace's lease area (sanlock_lease_areas)
                       and record it in the lockspace; once, from one host
  leases-clean [--lockspace LS] (--unused-for DURATION | --remove NAME) [--dry-run] [--json]
                       free the slots of leases nobody holds: those unused for
                       DURATION as this host saw them (run it again later:
                       the first run only notes them), or the named one now
  help                 this text

RESOURCE: --disk PATH                  a disk (image file or block device), named by its identity
          --lease KEY [--lease-path PATH] [--lease-offset N]
  Each --disk or --lease starts a resource; --mode MODE, --lockspace LS and
  --backend NAME after it apply to that resource, and before the first one to
  every resource. Defaults: exclusive, latchd's lockspace and first backend.
MODE:     shared-read | shared-write | exclusive
POLICY:   what latchd does to the owner's process when a lock is lost:
          terminate (SIGTERM, SIGKILL after --grace-ms; default) | pause | ignore
SECONDS:  how long to wait for a conflicting lock to go: a number, or
          'forever'; without --wait (or 0) a conflict is refused at once

Exit status: 0 done; 1 refused (held by another owner, wait timed out, lock
lost or hand-off check failed); 2 bad usage or input (also: unknown owner or
lock, a bad qemu-latchkey.conf); 3 error (latchd not running, permission
denied, latchd did not answer in time or closed the connection, latchd or
backend failure).
)";

enum Exit { kOk = 0, kRefused = 1, kBadUsage = 2, kError = 3 };

// How long to wait for latchd to accept and answer an ordinary request
// (--timeout changes it).
constexpr absl::Duration kCallTimeout = absl::Seconds(30);

// A failure of latchd itself (it did not answer in time, closed the
// connection): an error (3), whatever code the client gave it. Only
// latchd's own answers may say "refused" (1).
absl::Status LatchdFailure(const absl::Status& s) {
  return absl::InternalError(s.message());
}

int ExitCodeFor(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kOk:
      return kOk;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kAborted:
      return kRefused;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kOutOfRange:
      return kBadUsage;
    default:
      return kError;
  }
}

int Fail(const absl::Status& s) {
  fprintf(stderr, "latchctl: %s\n", std::string(s.message()).c_str());
  return ExitCodeFor(s);
}

int UsageError(const std::string& what) {
  fprintf(stderr, "latchctl: %s (see 'latchctl help')\n", what.c_str());
  return kBadUsage;
}

// ---------------------------------------------------------------------------
// Arguments: options in the order given (resources depend on it), the
// command word, and what follows "--".

struct Opt {
  std::string name;   // "--disk"
  std::string value;  // "" for a bare flag
};

struct Args {
  std::vector<std::string> positional;
  std::vector<Opt> opts;
  std::vector<std::string> command;  // after "--"
  bool dashdash = false;
};

const std::vector<std::string> kBareFlags = {"--json", "--offline", "--force", "--dry-run"};
const std::vector<std::string> kValued = {
    "--socket", "--plugin-path", "--owner",     "--uuid",  "--pid",       "--policy",
    "--grace-ms", "--wait",      "--state",     "--disk",  "--lease",     "--lockspace",
    "--lease-path", "--lease-offset", "--mode", "--backend", "--state-dir", "--journal",
    "--timeout", "--conf", "--unused-for", "--remove"};
// May be given once per resource.
const std::vector<std::string> kResourceOpts = {"--disk", "--lease", "--mode", "--lockspace",
                                                "--lease-path", "--lease-offset", "--backend"};
const std::vector<std::string> kGlobalOpts = {"--socket", "--plugin-path", "--timeout"};

bool Contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

absl::StatusOr<Args> ParseArgs(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--") {
      a.dashdash = true;
      a.command.assign(argv + i + 1, argv + argc);
      break;
    }
    if (arg == "-h" || arg == "--help") {
      a.positional.push_back("help");
      continue;
    }
    if (arg.size() < 2 || arg[0] != '-') {
      a.positional.push_back(arg);
      continue;
    }
    std::optional<std::string> inline_value;
    if (const size_t eq = arg.find('='); eq != std::string::npos && arg.rfind("--", 0) == 0) {
      inline_value = arg.substr(eq + 1);
      arg.resize(eq);
    }
    if (Contains(kBareFlags, arg)) {
      if (inline_value) return absl::InvalidArgumentError(absl::StrCat(arg, " takes no value"));
      a.opts.push_back({arg, ""});
    } else if (Contains(kValued, arg)) {
      if (inline_value) {
        a.opts.push_back({arg, *inline_value});
      } else if (i + 1 >= argc) {
        return absl::InvalidArgumentError(absl::StrCat(arg, " needs a value"));
      } else {
        a.opts.push_back({arg, argv[++i]});
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown option ", arg));
    }
  }
  return a;
}

// ---------------------------------------------------------------------------
// Reading latchd's JSON leniently: a missing field prints as "-".

std::string Str(const nlohmann::json& j, const char* key, const std::string& dflt = "-") {
  if (!j.is_object()) return dflt;
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_boolean()) return it->get<bool>() ? "yes" : "no";
  return it->dump();
}

const nlohmann::json& Field(const nlohmann::json& j, const char* key) {
  static const nlohmann::json kNull;
  if (!j.is_object()) return kNull;
  const auto it = j.find(key);
  return it == j.end() ? kNull : *it;
}

// "/img/a.qcow2" for a disk, "lease LS/KEY" (plus its storage) for a lease.
std::string DescribeLock(const nlohmann::json& lock) {
  if (Str(lock, "kind") == "disk") {
    // What the disk is known as (docs/disk-identity.md); a lock named only
    // by its path is only as strong as that path, so say so.
    std::string d = Str(lock, "path");
    const std::string kind = Str(lock, "identity_kind", "");
    const std::string weak = Str(lock, "identity_weak", "");
    if (!weak.empty()) {
      absl::StrAppend(&d, " [identity: the path only (", weak, ")]");
    } else if (!kind.empty()) {
      absl::StrAppend(&d, " [identity: ", kind, "]");
    }
    if (Str(lock, "naming", "") == "path") absl::StrAppend(&d, " [locked by path name only]");
    return d;
  }
  std::string d = absl::StrCat("lease ", Str(lock, "lockspace"), "/", Str(lock, "name"));
  const std::string path = Str(lock, "path", "");
  if (!path.empty()) absl::StrAppend(&d, " at ", path, ":", Str(lock, "offset", "0"));
  return d;
}

std::string DescribeOwner(const nlohmann::json& owner) {
  return absl::StrCat(Str(owner, "name"), " (uuid ", Str(owner, "uuid"), ", pid ",
                      Str(owner, "pid"), ")");
}

void PrintLocks(FILE* out, const char* verb, const nlohmann::json& locks) {
  if (!locks.is_array()) return;
  for (const nlohmann::json& l : locks) {
    fprintf(out, "%s %s %s, fencing token %s (backend %s, lockspace %s)%s\n", verb,
            Str(l, "mode").c_str(), DescribeLock(l).c_str(), Str(l, "fencing_token").c_str(),
            Str(l, "backend").c_str(), Str(l, "lockspace").c_str(),
            l.value("queued", false) ? ", from the queue (claim it with acquire)" : "");
  }
}

void PrintJson(const nlohmann::json& j) { printf("%s\n", j.dump().c_str()); }

// ---------------------------------------------------------------------------

class Ctl {
 public:
  explicit Ctl(Args args) : args_(std::move(args)) {}

  int Run() {
    if (args_.positional.empty()) return UsageError("no command given");
    const std::string cmd = args_.positional[0];
    if (args_.positional.size() > 1) {
      return UsageError(absl::StrCat("unexpected argument '", args_.positional[1], "'"));
    }
    struct Command {
      const char* name;
      std::vector<std::string> options;
      bool resources;
      int (Ctl::*run)();
    };
    const std::vector<Command> commands = {
        {"help", {}, false, &Ctl::Help},
        {"backends", {"--json"}, false, &Ctl::Backends},
        {"identify", {"--json"}, true, &Ctl::Identify},
        {"status", {"--json"}, false, &Ctl::Status},
        {"run", {"--wait", "--owner", "--uuid", "--grace-ms"}, true, &Ctl::RunCmd},
        {"register", {"--owner", "--uuid", "--pid", "--policy", "--grace-ms"}, false,
         &Ctl::Register},
        {"set-policy", {"--uuid", "--policy", "--grace-ms"}, false, &Ctl::SetPolicy},
        {"unregister", {"--uuid", "--json"}, false, &Ctl::Unregister},
        {"acquire", {"--uuid", "--wait", "--state", "--json"}, true, &Ctl::Acquire},
        {"release", {"--uuid", "--json"}, true, &Ctl::Release},
        {"queue", {"--uuid"}, true, &Ctl::Queue},
        {"inquire", {"--uuid", "--json"}, false, &Ctl::Inquire},
        {"journal", {"--state-dir", "--journal", "--json"}, false, &Ctl::JournalCmd},
        {"reexec", {}, false, &Ctl::Reexec},
        {"leases", {"--lockspace", "--backend", "--json"}, false, &Ctl::Leases},
        {"leases-format", {"--lockspace", "--backend", "--force", "--json"}, false,
         &Ctl::LeasesFormat},
        {"leases-clean",
         {"--lockspace", "--backend", "--unused-for", "--remove", "--dry-run", "--json"},
         false,
         &Ctl::LeasesClean},
        {"libvirt-check", {"--conf", "--offline"}, false, &Ctl::LibvirtCheck},
    };
    const Command* c = nullptr;
    for (const Command& k : commands) {
      if (cmd == k.name) c = &k;
    }
    if (c == nullptr) return UsageError(absl::StrCat("unknown command '", cmd, "'"));
    if (args_.dashdash && cmd != "run") {
      return UsageError(absl::StrCat("'", cmd, "' takes no command after --"));
    }
    // Every option must belong to the command; only resource options repeat.
    for (size_t i = 0; i < args_.opts.size(); ++i) {
      const std::string& name = args_.opts[i].name;
      const bool resource_opt = Contains(kResourceOpts, name);
      if (!Contains(kGlobalOpts, name) && !Contains(c->options, name) &&
          !(resource_opt && c->resources)) {
        return UsageError(absl::StrCat("option ", name, " does not apply to '", cmd, "'"));
      }
      if (resource_opt) continue;
      for (size_t k = 0; k < i; ++k) {
        if (args_.opts[k].name == name) return UsageError(absl::StrCat(name, " given twice"));
      }
    }
    if (const std::string* t = Get("--timeout")) {
      double secs = 0;
      if (!absl::SimpleAtod(*t, &secs) || !std::isfinite(secs) || secs <= 0 || secs > 1e6) {
        return UsageError(absl::StrCat("--timeout '", *t, "' is not a positive number of seconds"));
      }
      call_timeout_ = absl::Milliseconds(std::ceil(secs * 1000));
    }
    return (this->*(c->run))();
  }

 private:
  const std::string* Get(const std::string& name) const {
    for (const Opt& o : args_.opts) {
      if (o.name == name) return &o.value;
    }
    return nullptr;
  }

  absl::StatusOr<std::string> Need(const std::string& name, const char* what) const {
    const std::string* v = Get(name);
    if (v == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", args_.positional[0], "' needs ", name, " ", what));
    }
    return *v;
  }

  static absl::StatusOr<int64_t> Int(const std::string& name, const std::string& value) {
    int64_t n = 0;
    if (!absl::SimpleAtoi(value, &n) || n < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " '", value, "' is not a non-negative integer"));
    }
    return n;
  }

  std::string SocketPath() const {
    const std::string* s = Get("--socket");
    return s != nullptr ? *s : DefaultSocketPath();
  }

  absl::Status Connect() {
    if (client_.has_value()) return absl::OkStatus();
    absl::StatusOr<LatchdClient> c = LatchdClient::Connect(SocketPath(), call_timeout_);
    if (!c.ok()) {
      // Not accepted in time: latchd is stuck, which is no refusal.
      if (c.status().code() == absl::StatusCode::kDeadlineExceeded) return LatchdFailure(c.status());
      return c.status();
    }
    client_.emplace(*std::move(c));
    return absl::OkStatus();
  }

  // Connects if needed and sends `request` (waiting `timeout`, default
  // --timeout). A transport failure closes the client's connection: then
  // the error is latchd's failure, never a refusal.
  absl::StatusOr<nlohmann::json> Call(const nlohmann::json& request,
                                      std::optional<absl::Duration> timeout = std::nullopt) {
    if (absl::Status s = Connect(); !s.ok()) return s;
    absl::StatusOr<nlohmann::json> r = client_->Call(request, timeout.value_or(call_timeout_));
    if (!r.ok() && !client_->connected()) return LatchdFailure(r.status());
    return r;
  }

  // Sends a request whose answer is only printed: as JSON with --json, else
  // through `print`.
  template <typename Print>
  int Simple(const nlohmann::json& request, Print print) {
    absl::StatusOr<nlohmann::json> r = Call(request);
    if (!r.ok()) return Fail(r.status());
    if (Get("--json") != nullptr) {
      PrintJson(*r);
    } else {
      print(*r);
    }
    return kOk;
  }

  // The resource specs of the request, from --disk/--lease groups.
  absl::StatusOr<nlohmann::json> Resources(bool required) const {
    std::map<std::string, std::string> defaults;
    std::vector<std::map<std::string, std::string>> groups;
    for (const Opt& o : args_.opts) {
      if (!Contains(kResourceOpts, o.name)) continue;
      if (o.name == "--disk" || o.name == "--lease") {
        groups.push_back({{o.name, o.value}});
        continue;
      }
      auto& target = groups.empty() ? defaults : groups.back();
      if (!target.emplace(o.name, o.value).second) {
        return absl::InvalidArgumentError(
            groups.empty() ? absl::StrCat(o.name, " given twice before the first resource")
                           : absl::StrCat(o.name, " given twice for one resource"));
      }
    }
    if (groups.empty()) {
      if (required) {
        return absl::InvalidArgumentError(absl::StrCat(
            "'", args_.positional[0], "' needs a resource: --disk PATH or --lease KEY"));
      }
      if (!defaults.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(defaults.begin()->first, " given without --disk or --lease"));
      }
      return nlohmann::json(nullptr);
    }
    nlohmann::json specs = nlohmann::json::array();
    for (std::map<std::string, std::string> g : groups) {
      for (const auto& [k, v] : defaults) g.emplace(k, v);
      nlohmann::json spec = nlohmann::json::object();
      if (auto d = g.find("--disk"); d != g.end()) {
        for (const char* lease_only : {"--lease-path", "--lease-offset"}) {
          if (g.count(lease_only)) {
            return absl::InvalidArgumentError(
                absl::StrCat(lease_only, " applies to --lease, not to --disk ", d->second));
          }
        }
        // latchd resolves paths in its own directory: send an absolute one.
        absl::StatusOr<std::string> path = CanonicalImagePath(d->second);
        if (!path.ok()) return path.status();
        spec["disk"] = *path;
      } else {
        spec["lease"] = g["--lease"];
        if (auto p = g.find("--lease-path"); p != g.end()) spec["path"] = p->second;
        if (auto o = g.find("--lease-offset"); o != g.end()) {
          absl::StatusOr<int64_t> off = Int("--lease-offset", o->second);
          if (!off.ok()) return off.status();
          spec["offset"] = *off;
        }
      }
      if (auto m = g.find("--mode"); m != g.end()) {
        absl::StatusOr<LockMode> mode = ParseLockMode(m->second);
        if (!mode.ok()) {
          return absl::InvalidArgumentError(absl::StrCat("--mode: ", mode.status().message()));
        }
        spec["mode"] = LockModeName(*mode);
      }
      if (auto l = g.find("--lockspace"); l != g.end()) spec["lockspace"] = l->second;
      if (auto b = g.find("--backend"); b != g.end()) spec["backend"] = b->second;
      specs.push_back(std::move(spec));
    }
    return specs;
  }

  // Adds "wait"/"timeout_ms" from --wait to an acquire request and returns
  // how long to wait for latchd's answer.
  absl::StatusOr<absl::Duration> AddWait(nlohmann::json* request) const {
    const std::string* w = Get("--wait");
    if (w == nullptr) return call_timeout_;
    if (*w == "forever") {
      (*request)["wait"] = true;
      return absl::InfiniteDuration();
    }
    double secs = 0;
    if (!absl::SimpleAtod(*w, &secs) || !std::isfinite(secs) || secs < 0 || secs > 1e9) {
      return absl::InvalidArgumentError(
          absl::StrCat("--wait '", *w, "' is not a number of seconds or 'forever'"));
    }
    const int64_t ms = static_cast<int64_t>(std::ceil(secs * 1000));
    if (ms == 0) return call_timeout_;  // refuse at once
    (*request)["wait"] = true;
    (*request)["timeout_ms"] = ms;
    return absl::Milliseconds(ms) + call_timeout_;
  }

  absl::StatusOr<nlohmann::json> Policy(nlohmann::json request) const {
    if (const std::string* p = Get("--policy")) request["policy"] = *p;
    if (const std::string* g = Get("--grace-ms")) {
      absl::StatusOr<int64_t> ms = Int("--grace-ms", *g);
      if (!ms.ok()) return ms.status();
      request["grace_ms"] = *ms;
    }
    return request;
  }

  // ---- commands

  int Help() {
    fputs(kUsage, stdout);
    return kOk;
  }

  int Identify() {
    absl::StatusOr<nlohmann::json> specs = Resources(true);
    if (!specs.ok()) return Fail(specs.status());
    nlohmann::json out = nlohmann::json::array();
    for (const nlohmann::json& spec : *specs) {
      if (!spec.contains("disk")) {
        return Fail(absl::InvalidArgumentError("identify takes --disk PATH, not --lease"));
      }
      const std::string path = spec["disk"].get<std::string>();
      absl::StatusOr<DiskIdentity> id = IdentifyDisk(path);
      if (!id.ok()) return Fail(id.status());
      out.push_back({{"path", path},
                     {"identity", id->id},
                     {"identity_kind", id->kind},
                     {"anchor", id->anchor},
                     {"name", DiskIdentityName(id->id, kMaxNameLen)},
                     {"path_name", DiskResourceName(path)}});
      if (id->weak()) out.back()["identity_weak"] = id->reason;
    }
    if (Get("--json") != nullptr) {
      PrintJson(out);
      return kOk;
    }
    for (const nlohmann::json& d : out) {
      printf("%s\n  identity  %s (%s)\n  locks     %s\n", Str(d, "path").c_str(),
             Str(d, "identity").c_str(), Str(d, "identity_kind").c_str(),
             Str(d, "anchor").c_str());
      if (d.contains("identity_weak")) {
        printf("  WEAK      only as strong as the path: %s\n", Str(d, "identity_weak").c_str());
      }
    }
    return kOk;
  }

  int Backends() {
    std::vector<std::string> path = DefaultPluginPath();
    if (const std::string* p = Get("--plugin-path")) {
      path = absl::StrSplit(*p, ':', absl::SkipEmpty());
    }
    std::vector<std::string> errors;
    std::vector<PluginInfo> plugins = ListPlugins(path, &errors);
    for (const std::string& e : errors) fprintf(stderr, "latchctl: skipped: %s\n", e.c_str());
    if (plugins.empty()) {
      fprintf(stderr, "latchctl: no backend plugins in %s\n", absl::StrJoin(path, ":").c_str());
      return kError;
    }
    const auto modes_of = [](const Capabilities& c) {
      std::vector<std::string> modes;
      for (LockMode m : {LockMode::kSharedRead, LockMode::kSharedWrite, LockMode::kExclusive}) {
        if (c.modes & LockModeBit(m)) modes.push_back(std::string(LockModeName(m)));
      }
      return modes;
    };
    if (Get("--json") != nullptr) {
      nlohmann::json out = nlohmann::json::array();
      for (const PluginInfo& p : plugins) {
        const Capabilities& c = p.capabilities;
        const std::vector<std::string> modes = modes_of(c);
        out.push_back({{"name", p.name},
                       {"description", p.description},
                       {"file", p.file},
                       {"modes", modes},
                       {"folded_modes", c.folded_modes},
                       {"survives_holder_death", c.survives_holder_death},
                       {"orphan_adoption", c.orphan_adoption},
                       {"holder_identity", c.holder_identity},
                       {"fencing_tokens", c.fencing_tokens},
                       {"queues", c.queues},
                       {"no_exclusion", c.no_exclusion},
                       {"max_name_len", c.max_name_len}});
      }
      PrintJson(out);
      return kOk;
    }
    for (const PluginInfo& p : plugins) {
      const Capabilities& c = p.capabilities;
      const std::vector<std::string> modes = modes_of(c);
      printf("%s\t%s\n  file: %s\n  modes: %s%s\n", p.name.c_str(), p.description.c_str(),
             p.file.c_str(), absl::StrJoin(modes, ", ").c_str(),
             c.folded_modes.empty() ? "" : absl::StrCat(" (", c.folded_modes, ")").c_str());
      printf("  locks survive the holder's death: %s\n  orphan adoption: %s\n"
             "  names the holder: %s\n  fencing tokens: %s\n  ordered queue: %s\n"
             "  name limit: %zu bytes\n",
             c.survives_holder_death ? "yes" : "no", c.orphan_adoption ? "yes" : "no",
             c.holder_identity ? "yes" : "no", c.fencing_tokens ? "yes" : "no",
             c.queues ? "yes" : "no", c.max_name_len);
      if (c.no_exclusion) {
        printf("  excludes nobody: every request is granted (a benchmark's floor; latchd loads "
               "it only when benchmark_backends names it)\n");
      }
    }
    return kOk;
  }

  int Status() {
    absl::StatusOr<nlohmann::json> r = Call({{"op", "status"}});
    if (!r.ok()) return Fail(r.status());
    if (Get("--json") != nullptr) {
      PrintJson(*r);
      return kOk;
    }
    std::vector<std::string> backends;
    for (const nlohmann::json& b : Field(*r, "backends")) {
      std::string health = Field(b, "healthy") == true ? "healthy" : "UNHEALTHY";
      const std::string msg = Str(b, "message", "");
      if (!msg.empty()) absl::StrAppend(&health, ": ", msg);
      backends.push_back(absl::StrCat(Str(b, "name"), " (", health, ")"));
    }
    printf("latchd pid %s on host %s, journal %s, disk names %s\nbackends: %s\n",
           Str(*r, "pid").c_str(), Str(*r, "host").c_str(), Str(*r, "journal").c_str(),
           Str(*r, "disk_names", "?").c_str(),
           backends.empty() ? "-" : absl::StrJoin(backends, ", ").c_str());
    for (const nlohmann::json& b : Field(*r, "backends")) {
      const nlohmann::json& state = Field(b, "state");
      if (state.is_object() && !state.empty()) {
        printf("  %s: %s\n", Str(b, "name").c_str(), state.dump().c_str());
      }
    }
    const nlohmann::json& owners = Field(*r, "owners");
    if (!owners.is_array() || owners.empty()) {
      printf("no owners registered\n");
      return kOk;
    }
    const char* kRow = "%-16s %-36s %-8s %-5s %-9s %-8s %-12s %-6s %s\n";
    printf(kRow, "OWNER", "UUID", "PID", "ALIVE", "POLICY", "BACKEND", "MODE", "TOKEN",
           "RESOURCE");
    size_t nlocks = 0;
    for (const nlohmann::json& o : owners) {
      const nlohmann::json& owner = Field(o, "owner");
      const std::string name = Str(owner, "name"), uuid = Str(owner, "uuid"),
                        pid = Str(owner, "pid"), alive = Str(o, "alive"),
                        policy = Str(o, "policy");
      const nlohmann::json& locks = Field(o, "locks");
      if (!locks.is_array() || locks.empty()) {
        printf(kRow, name.c_str(), uuid.c_str(), pid.c_str(), alive.c_str(), policy.c_str(), "-",
               "-", "-", "(no locks)");
        continue;
      }
      for (const nlohmann::json& l : locks) {
        ++nlocks;
        printf(kRow, name.c_str(), uuid.c_str(), pid.c_str(), alive.c_str(), policy.c_str(),
               Str(l, "backend").c_str(), Str(l, "mode").c_str(), Str(l, "fencing_token").c_str(),
               DescribeLock(l).c_str());
      }
    }
    printf("%zu owner%s, %zu lock%s\n", owners.size(), owners.size() == 1 ? "" : "s", nlocks,
           nlocks == 1 ? "" : "s");
    return kOk;
  }

  int Register() {
    absl::StatusOr<std::string> name = Need("--owner", "NAME");
    if (!name.ok()) return Fail(name.status());
    absl::StatusOr<std::string> uuid = Need("--uuid", "UUID");
    if (!uuid.ok()) return Fail(uuid.status());
    absl::StatusOr<std::string> pid_text = Need("--pid", "PID");
    if (!pid_text.ok()) return Fail(pid_text.status());
    absl::StatusOr<int64_t> pid = Int("--pid", *pid_text);
    if (!pid.ok()) return Fail(pid.status());
    absl::StatusOr<nlohmann::json> req = Policy(
        {{"op", "register"}, {"owner", {{"uuid", *uuid}, {"name", *name}, {"pid", *pid}}}});
    if (!req.ok()) return Fail(req.status());
    absl::StatusOr<nlohmann::json> r = Call(*req);
    if (!r.ok()) return Fail(r.status());
    printf("registered %s, policy %s\n", DescribeOwner(Field(*r, "owner")).c_str(),
           Str(*r, "policy").c_str());
    return kOk;
  }

  int SetPolicy() {
    absl::StatusOr<std::string> uuid = Need("--uuid", "UUID");
    if (!uuid.ok()) return Fail(uuid.status());
    if (!Get("--policy")) return Fail(Need("--policy", "POLICY").status());
    absl::StatusOr<nlohmann::json> req = Policy({{"op", "set_policy"}, {"uuid", *uuid}});
    if (!req.ok()) return Fail(req.status());
    absl::StatusOr<nlohmann::json> r = Call(*req);
    if (!r.ok()) return Fail(r.status());
    printf("policy of %s is now %s\n", uuid->c_str(), Get("--policy")->c_str());
    return kOk;
  }

  int Unregister() {
    absl::StatusOr<std::string> uuid = Need("--uuid", "UUID");
    if (!uuid.ok()) return Fail(uuid.status());
    return Simple({{"op", "unregister"}, {"uuid", *uuid}}, [&](const nlohmann::json& r) {
      PrintLocks(stdout, "released", Field(r, "released"));
      printf("unregistered %s\n", uuid->c_str());
    });
  }

  int Acquire() {
    absl::StatusOr<std::string> uuid = Need("--uuid", "UUID");
    if (!uuid.ok()) return Fail(uuid.status());
    absl::StatusOr<nlohmann::json> specs = Resources(/*required=*/true);
    if (!specs.ok()) return Fail(specs.status());
    nlohmann::json req = {{"op", "acquire"}, {"uuid", *uuid}, {"resources", *specs}};
    if (const std::string* st = Get("--state")) req["state"] = *st;
    absl::StatusOr<absl::Duration> timeout = AddWait(&req);
    if (!timeout.ok()) return Fail(timeout.status());
    absl::StatusOr<nlohmann::json> r = Call(req, *timeout);
    if (!r.ok()) return Fail(r.status());
    if (Get("--json") != nullptr) {
      PrintJson(*r);
    } else {
      PrintLocks(stdout, "granted", Field(*r, "locks"));
    }
    return kOk;
  }

  int Queue() {
    absl::StatusOr<std::string> uuid = Need("--uuid", "UUID");
    if (!uuid.ok()) return Fail(uuid.status());
    absl::StatusOr<nlohmann::json> specs = Resources(/*required=*/true);
    if (!specs.ok()) return Fail(specs.status());
    return Simple({{"op", "queue"}, {"uuid", *uuid}, {"resources", *specs}},
                  [](const nlohmann::json&) { printf("queued\n"); });
  }

  int Release() {
    absl::StatusOr<std::string> uuid = Need("--uuid", "UUID");
    if (!uuid.ok()) return Fail(uuid.status());
    absl::StatusOr<nlohmann::json> specs = Resources(/*required=*/false);
    if (!specs.ok()) return Fail(specs.status());
    nlohmann::json req = {{"op", "release"}, {"uuid", *uuid}};
    if (!specs->is_null()) req["resources"] = *specs;
    // stdout carries only the state string, for state=$(latchctl release ...).
    return Simple(req, [](const nlohmann::json& r) {
      PrintLocks(stderr, "released", Field(r, "released"));
      printf("%s\n", Str(r, "state", "").c_str());
    });
  }

  int Inquire() {
    absl::StatusOr<std::string> uuid = Need("--uuid", "UUID");
    if (!uuid.ok()) return Fail(uuid.status());
    return Simple({{"op", "inquire"}, {"uuid", *uuid}}, [](const nlohmann::json& r) {
      printf("owner %s, policy %s\n", DescribeOwner(Field(r, "owner")).c_str(),
             Str(r, "policy").c_str());
      PrintLocks(stdout, "holds", Field(r, "locks"));
      printf("state %s\n", Str(r, "state", "").c_str());
    });
  }

  // ---- leases: the sanlock backend's automatic leases (backend_admin).

  absl::StatusOr<nlohmann::json> BackendAdmin(nlohmann::json request) {
    if (const std::string* ls = Get("--lockspace")) request["lockspace"] = *ls;
    const std::string* b = Get("--backend");
    absl::StatusOr<nlohmann::json> r =
        Call({{"op", "backend_admin"}, {"backend", b ? *b : "sanlock"}, {"request", request}});
    if (!r.ok()) return r.status();
    return (*r)["result"];
  }

  int Leases() {
    absl::StatusOr<nlohmann::json> r = BackendAdmin({{"command", "leases"}});
    if (!r.ok()) return Fail(r.status());
    if (Get("--json") != nullptr) {
      PrintJson(*r);
      return kOk;
    }
    for (const nlohmann::json& ls : (*r)["lockspaces"]) {
      printf("lockspace %s: %s\n", Str(ls, "lockspace").c_str(),
             Str(ls, "kind") == "files"
                 ? absl::StrCat("lease files in ", Str(ls, "lease_dir")).c_str()
                 : absl::StrCat("lease area ", Str(ls, "area")).c_str());
      printf("  recorded in the lockspace: %s\n", Str(ls, "layout").c_str());
      if (ls.contains("error")) printf("  REFUSED: %s\n", Str(ls, "error").c_str());
      if (!ls.contains("slots")) continue;
      printf("  area %s, %s: %d of %d slots used, %d free\n", Str(ls, "id").c_str(),
             Str(ls, "geometry").c_str(), ls["used"].get<int>(), ls["slots"].get<int>(),
             ls["free"].get<int>());
      if (ls["leases"].empty()) continue;
      printf("  %5s  %-47s  %-4s  %6s  %-24s  %s\n", "SLOT", "NAME", "HELD", "LVER",
             "LAST HOLDER", "IDLE SINCE");
      for (const nlohmann::json& l : ls["leases"]) {
        std::string idle = "-";
        if (l.contains("idle_since")) {
          idle = absl::StrCat(absl::FormatTime("%Y-%m-%d %H:%M:%S",
                                               absl::FromUnixSeconds(l["idle_since"].get<int64_t>()),
                                               absl::UTCTimeZone()),
                              " (seen by ", Str(l, "idle_seen_by"), ")");
        }
        printf("  %5d  %-47s  %-4s  %6s  %-24s  %s\n", l["slot"].get<int>(), Str(l, "name").c_str(),
               l.value("held", false) ? "yes" : "no",
               l.contains("lver") ? std::to_string(l["lver"].get<uint64_t>()).c_str() : "-",
               Str(l, "last_holder").c_str(), idle.c_str());
      }
    }
    return kOk;
  }

  int LeasesFormat() {
    if (Get("--lockspace") == nullptr) return UsageError("leases-format needs --lockspace LS");
    absl::StatusOr<nlohmann::json> r =
        BackendAdmin({{"command", "format"}, {"force", Get("--force") != nullptr}});
    if (!r.ok()) return Fail(r.status());
    if (Get("--json") != nullptr) {
      PrintJson(*r);
      return kOk;
    }
    printf("lease area %s of lockspace %s is formatted and recorded\n",
           Str(*r, "formatted").c_str(), Get("--lockspace")->c_str());
    return kOk;
  }

  int LeasesClean() {
    nlohmann::json req = {{"command", "clean"}, {"dry_run", Get("--dry-run") != nullptr}};
    if (const std::string* u = Get("--unused-for")) {
      absl::Duration d;
      if (!absl::ParseDuration(*u, &d) && !absl::ParseDuration(*u + "s", &d)) {
        return UsageError(absl::StrCat("--unused-for '", *u,
                                       "' is not a duration (seconds, or e.g. 90m, 24h)"));
      }
      if (d < absl::ZeroDuration()) return UsageError("--unused-for must not be negative");
      req["unused_for_s"] = absl::ToInt64Seconds(d);
    }
    if (const std::string* n = Get("--remove")) req["remove"] = {*n};
    if (!req.contains("unused_for_s") && !req.contains("remove")) {
      return UsageError("leases-clean needs --unused-for DURATION or --remove NAME");
    }
    absl::StatusOr<nlohmann::json> r = BackendAdmin(req);
    if (!r.ok()) return Fail(r.status());
    if (Get("--json") != nullptr) {
      PrintJson(*r);
      return kOk;
    }
    const bool dry = r->value("dry_run", false);
    for (const nlohmann::json& f : (*r)["freed"]) {
      printf("%s %s/%s (slot %d)\n", dry ? "would free" : "freed", Str(f, "lockspace").c_str(),
             Str(f, "name").c_str(), f["slot"].get<int>());
    }
    for (const nlohmann::json& k : (*r)["kept"]) {
      printf("kept  %s/%s: %s\n", Str(k, "lockspace").c_str(), Str(k, "name").c_str(),
             Str(k, "why").c_str());
    }
    return kOk;
  }

  int Reexec() {
    absl::StatusOr<nlohmann::json> r = Call({{"op", "reexec"}});
    if (!r.ok()) return Fail(r.status());
    printf("latchd at %s is re-executing\n", SocketPath().c_str());
    return kOk;
  }

  // ---- journal: read latchd's SQLite file directly.

  int JournalCmd() {
    const std::string* file = Get("--journal");
    const std::string* dir = Get("--state-dir");
    if (file != nullptr && dir != nullptr) {
      return UsageError("give --state-dir or --journal, not both");
    }
    const std::string path = file != nullptr  ? *file
                             : dir != nullptr ? absl::StrCat(*dir, "/journal.db")
                                              : std::string("/run/latchkey/journal.db");
    std::string boot_id;
    absl::StatusOr<JournalContents> j = Journal::ReadOnly(path, &boot_id);
    if (!j.ok()) return Fail(j.status());
    const std::string this_boot = CurrentBootId();
    if (Get("--json") != nullptr) {
      nlohmann::json out = {{"journal", path}, {"boot_id", boot_id},
                            {"this_boot", !boot_id.empty() && boot_id == this_boot},
                            {"owners", nlohmann::json::array()},
                            {"locks", nlohmann::json::array()},
                            {"problems", j->problems}};
      for (const JournalOwner& o : j->owners) {
        out["owners"].push_back({{"owner", OwnerJson(o.owner)}, {"policy", o.policy}});
      }
      for (const JournalLock& l : j->locks) {
        const Resource& r = l.record.resource;
        out["locks"].push_back({{"backend", l.backend},
                                {"state", JournalLockStateName(l.state)},
                                {"owner", OwnerJson(l.record.owner)},
                                {"kind", ResourceKindName(r.kind)},
                                {"lockspace", r.lockspace},
                                {"name", r.name},
                                {"path", r.path},
                                {"offset", r.offset},
                                {"mode", LockModeName(l.record.mode)},
                                {"fencing_token", l.record.fencing_token},
                                {"backend_token", l.record.backend_token}});
      }
      PrintJson(out);
      return kOk;
    }
    printf("journal %s\nboot %s (%s)\n", path.c_str(), boot_id.empty() ? "-" : boot_id.c_str(),
           !boot_id.empty() && boot_id == this_boot ? "this boot" : "NOT this boot");
    printf("owners: %zu\n", j->owners.size());
    for (const JournalOwner& o : j->owners) {
      printf("  %s, start time %llu, host %s, policy %s\n", o.owner.Describe().c_str(),
             static_cast<unsigned long long>(o.owner.start_time), o.owner.host.c_str(),
             o.policy.c_str());
    }
    printf("locks: %zu\n", j->locks.size());
    for (const JournalLock& l : j->locks) {
      const Resource& r = l.record.resource;
      const std::string what = r.kind == ResourceKind::kDisk
                                   ? absl::StrCat(r.path, " (lockspace ", r.lockspace, ")")
                                   : absl::StrCat("lease ", r.lockspace, "/", r.name);
      printf("  %s %s %s %s token %llu backend_token %s owner %s (%s)\n", l.backend.c_str(),
             JournalLockStateName(l.state), LockModeName(l.record.mode), what.c_str(),
             static_cast<unsigned long long>(l.record.fencing_token),
             l.record.backend_token.empty() ? "-" : l.record.backend_token.c_str(),
             l.record.owner.name.c_str(), l.record.owner.uuid.c_str());
    }
    if (!j->problems.empty()) {
      printf("problems: %zu\n", j->problems.size());
      for (const std::string& p : j->problems) printf("  %s\n", p.c_str());
    }
    return kOk;
  }

  static nlohmann::json OwnerJson(const Owner& o) {
    return {{"uuid", o.uuid}, {"name", o.name},       {"pid", o.pid},
            {"start_time", o.start_time}, {"host", o.host}};
  }

  // ---- run: hold locks for a command's lifetime.

  int RunCmd() {
    if (!args_.dashdash || args_.command.empty()) {
      return UsageError("'run' needs the command after --: latchctl run --disk PATH -- CMD [ARG...]");
    }
    absl::StatusOr<nlohmann::json> specs = Resources(/*required=*/true);
    if (!specs.ok()) return Fail(specs.status());
    const std::vector<std::string>& cmd = args_.command;
    const std::string* uuid_opt = Get("--uuid");
    const std::string uuid = uuid_opt != nullptr ? *uuid_opt : RandomUuid();
    std::string name;
    if (const std::string* o = Get("--owner")) {
      name = *o;
    } else {
      name = cmd[0].substr(cmd[0].rfind('/') + 1);
      if (name.empty()) name = absl::StrCat("latchctl-run-", getpid());
      name.resize(std::min(name.size(), kMaxOwnerNameLen));
    }
    // The owner is CMD's own process, started first and held before exec
    // until its locks are granted: latchd releases them when CMD exits (even
    // if latchctl dies first), and the lock-failure policy acts on CMD.
    sigset_t forwarded, old;
    int go = -1;
    const pid_t child = StartHeld(cmd, &forwarded, &old, &go);
    if (child < 0) return kError;
    auto abandon = [&](int code) {
      close(go);  // CMD sees EOF and exits without running
      int ignored;
      waitpid(child, &ignored, 0);
      Unregister(uuid);
      return code;
    };
    absl::StatusOr<nlohmann::json> reg = Policy(
        {{"op", "register"},
         {"owner", {{"uuid", uuid}, {"name", name}, {"pid", static_cast<int64_t>(child)}}},
         {"policy", "terminate"}});
    if (!reg.ok()) return abandon(Fail(reg.status()));
    if (absl::StatusOr<nlohmann::json> r = Call(*reg); !r.ok()) {
      close(go);
      int ignored;
      waitpid(child, &ignored, 0);
      return Fail(r.status());
    }

    nlohmann::json acq = {{"op", "acquire"}, {"uuid", uuid}, {"resources", *specs}};
    absl::StatusOr<absl::Duration> timeout = AddWait(&acq);
    absl::Status got = timeout.status();
    if (got.ok()) got = Call(acq, *timeout).status();
    if (!got.ok()) return abandon(Fail(got));

    const char g = 'g';
    const bool started = write(go, &g, 1) == 1;
    close(go);
    int status = 0;
    WaitForwarding(child, forwarded, &status);
    Unregister(uuid);
    if (!started) return kError;
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return kError;
  }

  // Best effort: when it fails latchd still releases everything once CMD
  // exits, as it watches the owner's pid.
  void Unregister(const std::string& uuid) {
    const nlohmann::json req = {{"op", "unregister"}, {"uuid", uuid}};
    absl::StatusOr<nlohmann::json> r = Call(req);
    if (!r.ok() && client_.has_value() && !client_->connected()) {
      client_.reset();  // the connection broke (latchd re-executed?): reconnect once
      r = Call(req);
    }
    if (!r.ok() && r.status().code() != absl::StatusCode::kNotFound) {
      fprintf(stderr, "latchctl: warning: unregistering %s: %s (latchd releases its locks "
              "when the command exits)\n", uuid.c_str(), std::string(r.status().message()).c_str());
    }
  }

  // Forks the process that will exec `cmd`; it waits for one byte on *go
  // (write it once the locks are held; close *go instead to abandon it).
  // SIGINT/SIGTERM/SIGHUP/SIGQUIT/SIGCHLD are left blocked in latchctl
  // (*forwarded) for WaitForwarding. Returns the child's pid, or -1.
  pid_t StartHeld(const std::vector<std::string>& cmd, sigset_t* forwarded, sigset_t* old,
                  int* go) {
    signal(SIGCHLD, SIG_DFL);  // an inherited SIG_IGN would reap CMD for us
    sigemptyset(forwarded);
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGCHLD}) sigaddset(forwarded, s);
    sigprocmask(SIG_BLOCK, forwarded, old);
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
      fprintf(stderr, "latchctl: pipe: %s\n", strerror(errno));
      return -1;
    }
    fflush(nullptr);
    const pid_t child = fork();
    if (child < 0) {
      fprintf(stderr, "latchctl: fork: %s\n", strerror(errno));
      close(p[0]);
      close(p[1]);
      return -1;
    }
    if (child == 0) {
      close(p[1]);
      char c;
      ssize_t n;
      while ((n = read(p[0], &c, 1)) < 0 && errno == EINTR) {
      }
      if (n != 1) _exit(126);  // not granted: never run
      sigprocmask(SIG_SETMASK, old, nullptr);
      std::vector<char*> argv;
      for (const std::string& a : cmd) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execvp(argv[0], argv.data());
      const int err = errno;
      fprintf(stderr, "latchctl: cannot run %s: %s\n", argv[0], strerror(err));
      _exit(err == ENOENT ? 127 : 126);
    }
    close(p[0]);
    *go = p[1];
    return child;
  }

  // Waits for `child`, passing the forwarded signals on to it. The signals
  // stay blocked afterwards: one that arrives from now on must not kill
  // latchctl before it has unregistered (they are dropped at exit).
  void WaitForwarding(pid_t child, const sigset_t& forwarded, int* status) {
    for (;;) {
      siginfo_t info;
      const int sig = sigwaitinfo(&forwarded, &info);
      if (sig < 0) continue;  // EINTR
      if (sig == SIGCHLD) {
        if (waitpid(child, status, WNOHANG) == child) return;
        continue;
      }
      // A terminal already signals its whole foreground process group.
      if (info.si_code == SI_KERNEL && getpgid(child) == getpgrp()) continue;
      kill(child, sig);
    }
  }

  // ---- libvirt-check: qemu-latchkey.conf as latchkey.so reads it.

  int LibvirtCheck() {
    const std::string* conf = Get("--conf");
    const std::string path = conf != nullptr ? *conf : "/etc/libvirt/qemu-latchkey.conf";
    absl::StatusOr<libvirt::AdapterConfig> c = libvirt::AdapterConfig::Load(path);
    if (!c.ok()) {
      fprintf(stderr, "latchctl: %s\n",
              libvirt::EscapeForMessage(std::string(c.status().message())).c_str());
      return kBadUsage;  // the file is bad input, whichever way
    }
    printf("%s: %s; socket %s, backend %s, lockspace %s\n", path.c_str(),
           c->file_missing ? "does not exist, so the defaults apply" : "ok", c->socket.c_str(),
           c->backend.empty() ? "(latchd's first)" : c->backend.c_str(),
           c->lockspace.empty() ? "(latchd's)" : c->lockspace.c_str());
    if (Get("--offline") != nullptr) return kOk;
    const libvirt::Adapter adapter(*c);
    absl::StatusOr<std::vector<std::string>> loaded = adapter.CheckLatchd();
    if (!loaded.ok()) {
      fprintf(stderr, "latchctl: %s\n", std::string(loaded.status().message()).c_str());
      // A backend latchd does not load is the file's mistake (2); latchd
      // down or failing is an error (3).
      return loaded.status().code() == absl::StatusCode::kUnimplemented ? kBadUsage : kError;
    }
    printf("latchd at %s loads: %s\n", c->socket.c_str(), absl::StrJoin(*loaded, ", ").c_str());
    return kOk;
  }

  Args args_;
  absl::Duration call_timeout_ = kCallTimeout;
  std::optional<LatchdClient> client_;
};

}  // namespace
}  // namespace latchkey

int main(int argc, char** argv) {
  absl::StatusOr<latchkey::Args> args = latchkey::ParseArgs(argc, argv);
  if (!args.ok()) return latchkey::UsageError(std::string(args.status().message()));
  return latchkey::Ctl(*std::move(args)).Run();
}
