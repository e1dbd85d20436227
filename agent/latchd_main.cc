// latchd: the per-host latchkey agent. See README.md ("latchd") and
// docs/protocol.md.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "agent/agent.h"
#include "agent/server.h"
#include "core/config.h"
#include "core/fault.h"
#include "core/plugin_loader.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/sinks/syslog_sink.h"
#include "spdlog/spdlog.h"

namespace latchkey {
namespace {

constexpr char kDefaultConfig[] = "/etc/latchkey/latchd.conf";
constexpr char kListenFdEnv[] = "LATCHD_LISTEN_FD";
constexpr char kLockFdEnv[] = "LATCHD_LOCK_FD";

constexpr char kUsage[] = R"(usage: latchd [--config FILE] [--check-config]

latchd holds latchkey locks for their owners (VMs) on this host, releases
them when an owner's process exits, and adopts them again after its own
restart. Clients talk to it over a Unix socket (docs/protocol.md).

  --config FILE    settings in libvirt conf syntax (default /etc/latchkey/latchd.conf;
                   when the default file is missing every setting has its default)
  --check-config   parse the config, load the backends, print the settings, exit
  --help           this text

Settings (default):
  backends = [ "posixfd" ]          backend plugins to load; the first is the default
  plugin_path = [ ... ]             plugin directories (default: $LATCHKEY_PLUGIN_PATH,
                                    the build tree, /usr/lib/latchkey/backends)
  lockspace = "default"             lockspace of requests that name none
  disk_names = "identity+path"      the names a disk lock takes: "identity+path" (by what
                                    the storage says it is, and by its path, as an older
                                    latchd does), "identity" once every host runs this
                                    latchd, "path" (older behaviour); docs/disk-identity.md
  state_dir = "/run/latchkey"       journal.db lives here; latchd locks the directory (it
                                    must be latchd's uid's and writable by no one else)
  socket = "STATE_DIR/latchd.sock"  the Unix socket (0600)
  allowed_uids = [ 0 ]              peers allowed to connect (latchd's own uid always is)
  terminate_grace_ms = 5000         policy terminate: SIGKILL this long after SIGTERM
  max_clients = 1024                concurrent connections (root and latchd's uid get
                                    8 more when every connection is busy)
  max_clients_per_uid = 256         concurrent connections of one peer uid; at a limit
                                    the connection longest without an answered request
                                    (none in flight) is closed to make room
  idle_timeout_ms = 60000           close a connection with nothing in flight after this
  request_timeout_ms = 10000        a request line must arrive whole within this
  log_level = "info"                trace, debug, info, warn, error
  log_syslog = 1                    also log to syslog (daemon facility)
  NAME_KEY = ...                    setting KEY of backend NAME, e.g.
                                    posixfd_lock_dir = "/run/latchkey/locks"

Signals: SIGTERM/SIGINT stop (locks stay journaled for the next start);
SIGUSR2 re-executes latchd keeping every lock (a planned restart, upgrade).
)";

struct Settings {
  AgentOptions agent;
  ServerOptions server;
  std::string state_dir = "/run/latchkey";
  std::string log_level = "info";
  bool log_syslog = true;
};

absl::StatusOr<Settings> ReadSettings(const Config& c) {
  Settings s;
  std::vector<std::string> prefixes;
  absl::StatusOr<std::vector<std::string>> backends =
      c.GetStringList("backends", {"posixfd"});
  if (!backends.ok()) return backends.status();
  for (const std::string& b : *backends) prefixes.push_back(b + "_");
  if (absl::Status st = c.CheckKeys({"backends", "plugin_path", "lockspace", "state_dir",
                                     "socket", "allowed_uids", "terminate_grace_ms",
                                     "max_clients", "max_clients_per_uid", "idle_timeout_ms",
                                     "request_timeout_ms", "log_level", "log_syslog",
                                     "disk_names", "benchmark_backends"},
                                    prefixes);
      !st.ok()) {
    return st;
  }
  s.agent.backends = *backends;
  absl::StatusOr<std::vector<std::string>> bench = c.GetStringList("benchmark_backends", {});
  if (!bench.ok()) return bench.status();
  for (const std::string& b : *bench) {
    if (std::find(backends->begin(), backends->end(), b) == backends->end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "benchmark_backends names '", b, "', which 'backends' does not list (",
          absl::StrJoin(*backends, ", "), ")"));
    }
  }
  s.agent.benchmark_backends = *bench;
  absl::StatusOr<std::vector<std::string>> path =
      c.GetStringList("plugin_path", DefaultPluginPath());
  absl::StatusOr<std::string> ls = c.GetString("lockspace", "default");
  absl::StatusOr<std::string> dir = c.GetString("state_dir", "/run/latchkey");
  if (!path.ok()) return path.status();
  if (!ls.ok()) return ls.status();
  if (!dir.ok()) return dir.status();
  if (absl::Status st = ValidateName("lockspace", *ls); !st.ok()) return st;
  s.agent.plugin_path = *path;
  s.agent.lockspace = *ls;
  absl::StatusOr<std::string> names = c.GetString("disk_names", "identity+path");
  if (!names.ok()) return names.status();
  absl::StatusOr<DiskNames> dn = ParseDiskNames(*names);
  if (!dn.ok()) return dn.status();
  s.agent.disk_names = *dn;
  s.state_dir = *dir;
  s.agent.journal_path = s.state_dir + "/journal.db";
  absl::StatusOr<std::string> sock = c.GetString("socket", s.state_dir + "/latchd.sock");
  if (!sock.ok()) return sock.status();
  s.server.socket_path = *sock;
  s.server.allowed_uids.clear();
  const ConfigEntry* uids = c.Find("allowed_uids");
  if (uids == nullptr) {
    s.server.allowed_uids.push_back(0);
  } else {
    if (uids->value.type() != ConfigValue::Type::kList) {
      return absl::InvalidArgumentError(
          absl::StrCat(uids->Where(), ": allowed_uids must be a list of uids"));
    }
    for (const ConfigValue& v : uids->value.list()) {
      if (v.type() != ConfigValue::Type::kInt || v.integer() < 0 || v.integer() > 0xfffffffe) {
        return absl::InvalidArgumentError(
            absl::StrCat(uids->Where(), ": allowed_uids entries must be uids (integers)"));
      }
      s.server.allowed_uids.push_back(static_cast<uid_t>(v.integer()));
    }
  }
  s.server.allowed_uids.push_back(geteuid());
  absl::StatusOr<int64_t> grace = c.GetInt("terminate_grace_ms", 5000, 0, kMaxGraceMs);
  absl::StatusOr<int64_t> clients = c.GetInt("max_clients", 1024, 1, 1 << 20);
  absl::StatusOr<int64_t> per_uid = c.GetInt("max_clients_per_uid", 256, 1, 1 << 20);
  absl::StatusOr<int64_t> idle = c.GetInt("idle_timeout_ms", 60000, 100, 86400 * 1000);
  absl::StatusOr<int64_t> partial = c.GetInt("request_timeout_ms", 10000, 100, 3600 * 1000);
  absl::StatusOr<std::string> level =
      c.GetChoice("log_level", "info", {"trace", "debug", "info", "warn", "error"});
  absl::StatusOr<bool> syslog = c.GetBool("log_syslog", true);
  if (!grace.ok()) return grace.status();
  if (!clients.ok()) return clients.status();
  if (!per_uid.ok()) return per_uid.status();
  if (!idle.ok()) return idle.status();
  if (!partial.ok()) return partial.status();
  if (!level.ok()) return level.status();
  if (!syslog.ok()) return syslog.status();
  s.agent.default_grace = absl::Milliseconds(*grace);
  s.server.max_clients = static_cast<size_t>(*clients);
  s.server.max_clients_per_uid = static_cast<size_t>(*per_uid);
  s.server.idle_timeout = absl::Milliseconds(*idle);
  s.server.request_timeout = absl::Milliseconds(*partial);
  s.log_level = *level;
  s.log_syslog = *syslog;
  s.agent.backend_config = c;
  return s;
}

void SetUpLogging(const Settings& s) {
  std::vector<spdlog::sink_ptr> sinks;
  auto err = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  err->set_pattern("%Y-%m-%d %H:%M:%S.%e latchd[%P] %l: %v");
  sinks.push_back(err);
  if (s.log_syslog) {
    auto sys = std::make_shared<spdlog::sinks::syslog_sink_mt>("latchd", LOG_PID, LOG_DAEMON,
                                                               true);
    sys->set_pattern("%v");
    sinks.push_back(sys);
  }
  auto logger = std::make_shared<spdlog::logger>("latchd", sinks.begin(), sinks.end());
  logger->set_level(spdlog::level::from_str(s.log_level));
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(logger);
}

int InheritedFd(const char* env) {
  const char* v = getenv(env);
  int fd = -1;
  const bool named = v != nullptr;
  if (named && (!absl::SimpleAtoi(v, &fd) || fd <= STDERR_FILENO)) {
    fd = -1;  // never adopt (or mark close-on-exec) stdin, stdout or stderr
    spdlog::warn("{}={} does not name an inherited descriptor; ignored", env, v);
  }
  if (named) unsetenv(env);
  if (fd < 0) return -1;
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  return fd;
}

bool SameFile(int fd, const std::string& path) {
  struct stat a, b;
  return fstat(fd, &a) == 0 && stat(path.c_str(), &b) == 0 && a.st_dev == b.st_dev &&
         a.st_ino == b.st_ino;
}

absl::Status Busy(const std::string& dir) {
  return absl::FailedPreconditionError(
      absl::StrCat("another latchd is running with state directory ", dir));
}

// One latchd per state directory: an flock on the directory itself, held
// for the process's life and across re-exec. Unlike a lock file, a
// directory that holds the journal cannot be deleted behind latchd's back
// (a tmpfiles age rule), so a second latchd can never run recovery on a
// live journal. An inherited descriptor (kLockFdEnv) is believed only when
// it is that very directory and the lock can be taken through it: a forged
// variable naming some other descriptor is refused, and one naming a fresh
// open of the directory fails while the real holder lives.
absl::StatusOr<int> LockStateDir(const std::string& dir) {
  const int inherited = InheritedFd(kLockFdEnv);
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create state directory ", dir, ": ", strerror(errno)));
  }
  struct stat st;
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat("state directory ", dir,
                                                      " is not a directory"));
  }
  if ((st.st_mode & 0022) != 0 || st.st_uid != geteuid()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "state directory %s is owned by uid %d with mode %04o: it must belong to latchd's "
        "uid %d and be writable by nobody else",
        dir, st.st_uid, st.st_mode & 07777, geteuid()));
  }
  if (inherited >= 0 && !SameFile(inherited, dir)) {
    // A latchd before this one locked DIR/latchd.lock and passes that
    // across an upgrade: keep it (older binaries still look at it) as long
    // as it is that file and its lock is ours; the directory lock below is
    // what counts.
    if (!SameFile(inherited, dir + "/latchd.lock") || flock(inherited, LOCK_EX | LOCK_NB) != 0) {
      if (inherited > STDERR_FILENO) close(inherited);
      return absl::FailedPreconditionError(absl::StrCat(
          kLockFdEnv, " does not name a lock on state directory ", dir, " held by this process"));
    }
  }
  const int fd = inherited >= 0 && SameFile(inherited, dir)
                     ? inherited
                     : open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open state directory ", dir, ": ", strerror(errno)));
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    close(fd);
    return Busy(dir);
  }
  return fd;
}

// The listening socket passed across a re-exec, if kListenFdEnv names a
// listening Unix stream socket bound to `path`; -1 otherwise (latchd binds
// afresh, and Server refuses when someone else answers there).
int InheritedListenFd(const std::string& path) {
  const int fd = InheritedFd(kListenFdEnv);
  if (fd < 0) return -1;
  int listening = 0, type = 0;
  socklen_t len = sizeof(int);
  sockaddr_un addr = {};
  socklen_t alen = sizeof(addr);
  const bool ok =
      getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening != 0 &&
      (len = sizeof(int), getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0) &&
      type == SOCK_STREAM && getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &alen) == 0 &&
      addr.sun_family == AF_UNIX && strncmp(addr.sun_path, path.c_str(), sizeof(addr.sun_path)) == 0;
  if (!ok) {
    spdlog::warn("{} does not name a socket listening at {}; binding afresh", kListenFdEnv, path);
    if (fd > STDERR_FILENO) close(fd);
    return -1;
  }
  return fd;
}

// systemd Type=notify readiness, without linking libsystemd.
void NotifyReady() {
  const char* path = getenv("NOTIFY_SOCKET");
  if (path == nullptr || (path[0] != '/' && path[0] != '@')) return;
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  const size_t len = strnlen(path, sizeof(addr.sun_path) - 1);
  memcpy(addr.sun_path, path, len);
  if (addr.sun_path[0] == '@') addr.sun_path[0] = '\0';
  const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  const char msg[] = "READY=1";
  sendto(fd, msg, sizeof(msg) - 1, 0, reinterpret_cast<sockaddr*>(&addr),
         static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len));
  close(fd);
}

void RaiseFdLimit() {
  // Each posixfd lock keeps a descriptor open: allow as many as the hard
  // limit does.
  rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

// The program's own path, resolved at start: a re-exec runs the binary now
// installed there (an upgrade), not the deleted image /proc/self/exe names.
std::string SelfPath() {
  char buf[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "/proc/self/exe";
  std::string path(buf, static_cast<size_t>(n));
  const std::string deleted = " (deleted)";
  if (path.size() > deleted.size() &&
      path.compare(path.size() - deleted.size(), deleted.size(), deleted) == 0) {
    path.resize(path.size() - deleted.size());
  }
  return path;
}

int Main(int argc, char** argv) {
  const std::string self = SelfPath();
  std::string config_path = kDefaultConfig;
  bool explicit_config = false, check_only = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      fputs(kUsage, stdout);
      return 0;
    } else if (a == "--config" && i + 1 < argc) {
      config_path = argv[++i];
      explicit_config = true;
    } else if (a == "--check-config") {
      check_only = true;
    } else {
      fprintf(stderr, "latchd: unknown argument '%s' (see latchd --help)\n", a.c_str());
      return 2;
    }
  }
  Config config;
  if (explicit_config || access(config_path.c_str(), F_OK) == 0) {
    absl::StatusOr<Config> c = Config::ParseFile(config_path);
    if (!c.ok()) {
      fprintf(stderr, "latchd: %s\n", std::string(c.status().message()).c_str());
      return 2;
    }
    config = std::move(*c);
  }
  absl::StatusOr<Settings> settings = ReadSettings(config);
  if (!settings.ok()) {
    fprintf(stderr, "latchd: %s\n", std::string(settings.status().message()).c_str());
    return 2;
  }
  SetUpLogging(*settings);

  // Signals are taken synchronously by the main thread; block them before
  // any thread starts so none inherits a default handler.
  sigset_t signals;
  sigemptyset(&signals);
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGUSR2}) sigaddset(&signals, sig);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  RaiseFdLimit();

  if (check_only) {
    absl::StatusOr<std::unique_ptr<Backend>> b;
    for (const std::string& name : settings->agent.backends) {
      b = LoadBackend(settings->agent.plugin_path, name, config.Section(name + "_"));
      const absl::Status st =
          b.ok() ? CheckBackendExcludes(name, (*b)->capabilities(),
                                        settings->agent.benchmark_backends)
                 : b.status();
      if (!st.ok()) {
        fprintf(stderr, "latchd: backend %s: %s\n", name.c_str(),
                std::string(st.message()).c_str());
        return 2;
      }
    }
    printf("config OK: backends %s, state_dir %s, socket %s, disk_names %s\n",
           absl::StrJoin(settings->agent.backends, ",").c_str(), settings->state_dir.c_str(),
           settings->server.socket_path.c_str(), DiskNamesName(settings->agent.disk_names));
    return 0;
  }

  absl::StatusOr<int> lock_fd = LockStateDir(settings->state_dir);
  if (!lock_fd.ok()) {
    spdlog::critical("{}", std::string(lock_fd.status().message()));
    return 1;
  }
  const int listen_fd = InheritedListenFd(settings->server.socket_path);
  if (FaultArmed()) spdlog::warn("fault injection armed: {}", getenv("LATCHKEY_FAULT"));
  spdlog::info("starting{} (pid {}, state {}, socket {})",
               listen_fd >= 0 ? " after a planned re-exec" : "", getpid(), settings->state_dir,
               settings->server.socket_path);

  absl::StatusOr<std::unique_ptr<Agent>> agent = Agent::Start(settings->agent);
  if (!agent.ok()) {
    spdlog::critical("cannot start: {}", agent.status().ToString());
    return 1;
  }
  settings->server.inherited_fd = listen_fd;
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(
      agent->get(), settings->server, [] { kill(getpid(), SIGUSR2); });
  if (!server.ok()) {
    spdlog::critical("cannot serve: {}", server.status().ToString());
    return 1;
  }
  spdlog::info("ready: {} owners, {} locks", (*agent)->owner_count(), (*agent)->lock_count());
  NotifyReady();

  for (;;) {
    int sig = 0;
    if (sigwait(&signals, &sig) != 0) continue;
    if (sig == SIGHUP) {
      spdlog::info("SIGHUP: nothing to reload (restart with SIGUSR2 to apply a new config)");
      continue;
    }
    if (sig == SIGUSR2) {
      // The reexec op prepares before answering; a bare signal prepares here.
      if (absl::Status s = (*agent)->PrepareExec(absl::Seconds(5)); !s.ok()) {
        spdlog::error("re-exec refused: {}", s.ToString());
        continue;
      }
      (*server)->Stop(/*keep_listening=*/true);
      spdlog::info("re-executing with {} owners, {} locks", (*agent)->owner_count(),
                   (*agent)->lock_count());
      const int lfd = (*server)->listen_fd();
      fcntl(lfd, F_SETFD, 0);
      fcntl(*lock_fd, F_SETFD, 0);
      setenv(kListenFdEnv, std::to_string(lfd).c_str(), 1);
      setenv(kLockFdEnv, std::to_string(*lock_fd).c_str(), 1);
      pthread_sigmask(SIG_UNBLOCK, &signals, nullptr);
      execv(self.c_str(), argv);
      const int err = errno;
      pthread_sigmask(SIG_BLOCK, &signals, nullptr);
      spdlog::critical("re-exec failed: {}; going on serving", strerror(err));
      unsetenv(kListenFdEnv);
      unsetenv(kLockFdEnv);
      fcntl(lfd, F_SETFD, FD_CLOEXEC);
      fcntl(*lock_fd, F_SETFD, FD_CLOEXEC);
      (*agent)->CancelExec();
      // The stopped server's connection threads may still be running:
      // leave it allocated rather than free what they use.
      (void)server->release();
      settings->server.inherited_fd = lfd;
      server = Server::Start(agent->get(), settings->server, [] { kill(getpid(), SIGUSR2); });
      if (!server.ok()) {
        spdlog::critical("cannot serve again: {}", server.status().ToString());
        return 1;
      }
      continue;
    }
    spdlog::info("{}: stopping; {} locks of {} owners stay journaled for the next start",
                 strsignal(sig), (*agent)->lock_count(), (*agent)->owner_count());
    (*server)->Stop(/*keep_listening=*/false);
    // Exit without running destructors: connection threads may be blocked
    // in a waiting acquire, and posixfd locks must simply die with us.
    _exit(0);
  }
}

}  // namespace
}  // namespace latchkey

int main(int argc, char** argv) { return latchkey::Main(argc, argv); }
