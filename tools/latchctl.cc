// latchctl: inspect and use latchkey backends from the command line.
//
// This first cut works in-process against a chosen backend plugin: the lock
// is held by latchctl itself (with --hold, until SIGINT or SIGTERM). Run
// `latchctl help` for usage.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/backend.h"
#include "core/config.h"
#include "core/plugin_loader.h"

namespace latchkey {
namespace {

constexpr char kUsage[] = R"(usage: latchctl [GLOBAL OPTIONS] COMMAND [OPTIONS]

Global options:
  --config FILE        settings in libvirt conf syntax (keys below)
  --backend NAME       backend to use (default: config 'backend', else posixfd)
  --plugin-path DIRS   colon-separated plugin directories
                       (default: $LATCHKEY_PLUGIN_PATH, the build tree, /usr/lib/latchkey/backends)

Commands:
  backends             list backend plugins with their capabilities
  acquire  RESOURCE --owner NAME [--uuid UUID] [--mode MODE] [--wait SECONDS] [--hold]
                       take a lock; with --hold keep it until SIGINT/SIGTERM, then release
  release  RESOURCE --owner NAME --uuid UUID
                       release a lock this backend lets another process release
  status   [--json]    every lock the backend can see, with holder, mode and token
  help                 this text

RESOURCE:  --disk PATH [--lockspace LS]      a disk image (named by its canonical path)
           --lease KEY [--lockspace LS] [--lease-path PATH --lease-offset N]
MODE:      shared-read | shared-write | exclusive (default exclusive)

Config keys: backend, plugin_path (list), lockspace, and each backend's own
keys prefixed with its name, e.g. posixfd_lock_dir = "/run/latchkey/locks".

Exit status: 0 done, 1 refused (lock held or wait timed out), 2 bad usage or
input, 3 backend or system error.
)";

enum Exit { kOk = 0, kRefused = 1, kBadUsage = 2, kError = 3 };

int Fail(const absl::Status& s) {
  fprintf(stderr, "latchctl: %s\n", std::string(s.message()).c_str());
  switch (s.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return kRefused;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
      return kBadUsage;
    default:
      return kError;
  }
}

int UsageError(const std::string& what) {
  fprintf(stderr, "latchctl: %s (see 'latchctl help')\n", what.c_str());
  return kBadUsage;
}

// Options as given: "--name value" pairs and bare "--flag"s.
struct Args {
  std::map<std::string, std::string> values;
  std::vector<std::string> positional;
  const std::string* Get(const std::string& k) const {
    auto it = values.find(k);
    return it == values.end() ? nullptr : &it->second;
  }
};

const std::vector<std::string> kFlags = {"--hold", "--json"};
const std::vector<std::string> kValued = {
    "--config", "--backend", "--plugin-path", "--owner",      "--uuid",       "--mode",
    "--wait",   "--disk",    "--lease",       "--lockspace", "--lease-path", "--lease-offset"};

absl::StatusOr<Args> ParseArgs(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      a.positional.push_back(arg);
      continue;
    }
    const bool flag = std::find(kFlags.begin(), kFlags.end(), arg) != kFlags.end();
    const bool valued = std::find(kValued.begin(), kValued.end(), arg) != kValued.end();
    if (!flag && !valued) return absl::InvalidArgumentError(absl::StrCat("unknown option ", arg));
    if (a.values.count(arg)) return absl::InvalidArgumentError(absl::StrCat(arg, " given twice"));
    if (flag) {
      a.values[arg] = "1";
    } else if (i + 1 >= argc) {
      return absl::InvalidArgumentError(absl::StrCat(arg, " needs a value"));
    } else {
      a.values[arg] = argv[++i];
    }
  }
  return a;
}

class Ctl {
 public:
  explicit Ctl(Args args) : args_(std::move(args)) {}

  int Run() {
    if (args_.positional.size() != 1) {
      return UsageError(args_.positional.empty() ? "no command given" : "one command at a time");
    }
    const std::string cmd = args_.positional[0];
    if (cmd == "help") {
      fputs(kUsage, stdout);
      return kOk;
    }
    if (absl::Status s = LoadConfig(); !s.ok()) return Fail(s);
    if (cmd == "backends") return Backends();
    if (cmd == "acquire" || cmd == "release" || cmd == "status") {
      if (absl::Status s = OpenBackend(); !s.ok()) return Fail(s);
      if (cmd == "acquire") return AcquireCmd();
      if (cmd == "release") return ReleaseCmd();
      return StatusCmd();
    }
    return UsageError(absl::StrCat("unknown command '", cmd, "'"));
  }

 private:
  absl::Status LoadConfig() {
    if (const std::string* f = args_.Get("--config")) {
      absl::StatusOr<Config> c = Config::ParseFile(*f);
      if (!c.ok()) return c.status();
      config_ = *std::move(c);
    }
    absl::StatusOr<std::vector<std::string>> path =
        config_.GetStringList("plugin_path", DefaultPluginPath());
    if (!path.ok()) return path.status();
    plugin_path_ = *path;
    if (const std::string* p = args_.Get("--plugin-path")) {
      plugin_path_ = absl::StrSplit(*p, ':', absl::SkipEmpty());
    }
    std::vector<std::string> prefixes;
    for (const PluginInfo& p : ListPlugins(plugin_path_)) prefixes.push_back(p.name + "_");
    return config_.CheckKeys({"backend", "plugin_path", "lockspace"}, prefixes);
  }

  absl::Status OpenBackend() {
    absl::StatusOr<std::string> name = config_.GetString("backend", "posixfd");
    if (!name.ok()) return name.status();
    if (const std::string* b = args_.Get("--backend")) *name = *b;
    absl::StatusOr<std::unique_ptr<Backend>> b =
        LoadBackend(plugin_path_, *name, config_.Section(*name + "_"));
    if (!b.ok()) return b.status();
    backend_ = *std::move(b);
    return absl::OkStatus();
  }

  int Backends() {
    std::vector<std::string> errors;
    std::vector<PluginInfo> plugins = ListPlugins(plugin_path_, &errors);
    for (const std::string& e : errors) fprintf(stderr, "latchctl: skipped: %s\n", e.c_str());
    if (plugins.empty()) {
      fprintf(stderr, "latchctl: no backend plugins in %s\n",
              absl::StrJoin(plugin_path_, ":").c_str());
      return kError;
    }
    for (const PluginInfo& p : plugins) {
      const Capabilities& c = p.capabilities;
      std::vector<std::string> modes;
      for (LockMode m : {LockMode::kSharedRead, LockMode::kSharedWrite, LockMode::kExclusive}) {
        if (c.modes & LockModeBit(m)) modes.push_back(LockModeName(m));
      }
      printf("%s\t%s\n  file: %s\n  modes: %s%s\n", p.name.c_str(), p.description.c_str(),
             p.file.c_str(), absl::StrJoin(modes, ", ").c_str(),
             c.folded_modes.empty() ? "" : absl::StrCat(" (", c.folded_modes, ")").c_str());
      printf("  locks survive the holder's death: %s\n  orphan adoption: %s\n"
             "  names the holder: %s\n  fencing tokens: %s\n  name limit: %zu bytes\n",
             c.survives_holder_death ? "yes" : "no", c.orphan_adoption ? "yes" : "no",
             c.holder_identity ? "yes" : "no", c.fencing_tokens ? "yes" : "no",
             c.max_name_len);
    }
    return kOk;
  }

  absl::StatusOr<Resource> ResourceFromArgs() {
    absl::StatusOr<std::string> ls = config_.GetString("lockspace", "default");
    if (!ls.ok()) return ls.status();
    if (const std::string* l = args_.Get("--lockspace")) *ls = *l;
    const std::string* disk = args_.Get("--disk");
    const std::string* lease = args_.Get("--lease");
    if ((disk == nullptr) == (lease == nullptr)) {
      return absl::InvalidArgumentError("name exactly one resource: --disk PATH or --lease KEY");
    }
    if (disk != nullptr) return Resource::Disk(*disk, *ls, backend_->capabilities().max_name_len);
    uint64_t offset = 0;
    if (const std::string* o = args_.Get("--lease-offset")) {
      if (!absl::SimpleAtoi(*o, &offset)) {
        return absl::InvalidArgumentError(absl::StrCat("--lease-offset '", *o, "' is not a number"));
      }
    }
    const std::string* path = args_.Get("--lease-path");
    return Resource::Lease(*ls, *lease, path ? *path : "", offset);
  }

  absl::StatusOr<Owner> OwnerFromArgs(bool need_uuid) {
    const std::string* name = args_.Get("--owner");
    if (name == nullptr) return absl::InvalidArgumentError("--owner NAME is required");
    const std::string* uuid = args_.Get("--uuid");
    if (uuid == nullptr && need_uuid) {
      return absl::InvalidArgumentError("--uuid is required to name the owner");
    }
    Owner o = OwnerForThisProcess(uuid ? *uuid : RandomUuid(), *name);
    if (absl::Status s = o.Validate(); !s.ok()) return s;
    return o;
  }

  int AcquireCmd() {
    absl::StatusOr<Resource> r = ResourceFromArgs();
    if (!r.ok()) return Fail(r.status());
    absl::StatusOr<Owner> o = OwnerFromArgs(false);
    if (!o.ok()) return Fail(o.status());
    absl::StatusOr<LockMode> mode = ParseLockMode(args_.Get("--mode") ? *args_.Get("--mode") : "exclusive");
    if (!mode.ok()) return Fail(mode.status());
    AcquireOptions opts;
    if (const std::string* w = args_.Get("--wait")) {
      double secs = 0;
      if (!absl::SimpleAtod(*w, &secs) || secs < 0) {
        return UsageError(absl::StrCat("--wait '", *w, "' is not a number of seconds"));
      }
      opts.wait = true;
      opts.timeout = absl::Seconds(secs);
    }
    // Block the stop signals before taking the lock, so one arriving
    // between the grant and the wait below is not lost.
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    const bool hold = args_.Get("--hold") != nullptr;
    if (hold) sigprocmask(SIG_BLOCK, &stop, nullptr);

    absl::StatusOr<Grant> g = backend_->Acquire(*o, *r, *mode, opts);
    if (!g.ok()) return Fail(g.status());
    printf("granted %s %s to %s, fencing token %llu\n", LockModeName(g->mode),
           r->Describe().c_str(), o->Describe().c_str(),
           static_cast<unsigned long long>(g->fencing_token));
    fflush(stdout);
    if (!hold) return kOk;  // The process exits; backends that tie locks to it drop them.
    int sig = 0;
    sigwait(&stop, &sig);
    if (absl::Status s = backend_->Release(*o, *r); !s.ok()) return Fail(s);
    printf("released %s held by %s (%s)\n", r->Describe().c_str(), o->name.c_str(),
           sig == SIGINT ? "SIGINT" : "SIGTERM");
    return kOk;
  }

  int ReleaseCmd() {
    absl::StatusOr<Resource> r = ResourceFromArgs();
    if (!r.ok()) return Fail(r.status());
    absl::StatusOr<Owner> o = OwnerFromArgs(true);
    if (!o.ok()) return Fail(o.status());
    if (absl::Status s = backend_->Release(*o, *r); !s.ok()) return Fail(s);
    printf("released %s held by %s\n", r->Describe().c_str(), o->name.c_str());
    return kOk;
  }

  static std::string JsonString(const std::string& s) {
    std::string out = "\"";
    for (unsigned char c : s) {
      if (c == '"' || c == '\\') {
        out += '\\';
        out += static_cast<char>(c);
      } else if (c < 0x20) {
        out += absl::StrFormat("\\u%04x", c);
      } else {
        out += static_cast<char>(c);
      }
    }
    return out + "\"";
  }

  int StatusCmd() {
    absl::StatusOr<std::vector<HolderInfo>> holders = backend_->Inquire(std::nullopt);
    if (!holders.ok()) return Fail(holders.status());
    if (args_.Get("--json") != nullptr) {
      std::vector<std::string> rows;
      for (const HolderInfo& h : *holders) {
        rows.push_back(absl::StrCat(
            "{\"backend\":", JsonString(backend_->name()),
            ",\"kind\":", JsonString(ResourceKindName(h.resource.kind)),
            ",\"lockspace\":", JsonString(h.resource.lockspace),
            ",\"name\":", JsonString(h.resource.name), ",\"path\":", JsonString(h.resource.path),
            ",\"mode\":", JsonString(LockModeName(h.mode)),
            ",\"owner\":", JsonString(h.owner.name), ",\"uuid\":", JsonString(h.owner.uuid),
            ",\"pid\":", h.owner.pid, ",\"host\":", JsonString(h.owner.host),
            ",\"fencing_token\":", h.fencing_token, "}"));
      }
      printf("{\"locks\":[%s]}\n", absl::StrJoin(rows, ",").c_str());
      return kOk;
    }
    printf("%-44s %-12s %-14s %-8s %-12s %s\n", "RESOURCE", "MODE", "OWNER", "PID", "HOST",
           "TOKEN");
    for (const HolderInfo& h : *holders) {
      const std::string what = h.resource.kind == ResourceKind::kDisk
                                   ? h.resource.path
                                   : absl::StrCat("lease ", h.resource.Key());
      printf("%-44s %-12s %-14s %-8lld %-12s %llu\n", what.c_str(), LockModeName(h.mode),
             h.owner.name.c_str(), static_cast<long long>(h.owner.pid), h.owner.host.c_str(),
             static_cast<unsigned long long>(h.fencing_token));
    }
    printf("%zu lock%s held (backend %s)\n", holders->size(), holders->size() == 1 ? "" : "s",
           backend_->name().c_str());
    return kOk;
  }

  Args args_;
  Config config_;
  std::vector<std::string> plugin_path_;
  std::unique_ptr<Backend> backend_;
};

}  // namespace
}  // namespace latchkey

int main(int argc, char** argv) {
  absl::StatusOr<latchkey::Args> args = latchkey::ParseArgs(argc, argv);
  if (!args.ok()) return latchkey::UsageError(std::string(args.status().message()));
  return latchkey::Ctl(*std::move(args)).Run();
}
