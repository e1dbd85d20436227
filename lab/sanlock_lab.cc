#include "lab/sanlock_lab.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace latchkey {
namespace lab {
namespace {

constexpr const char* kSanlock = "/usr/sbin/sanlock";

absl::Status MakeDir(const std::string& path) {
  if (mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::FailedPreconditionError(
        absl::StrCat("sanlock lab: cannot create ", path, ": ", strerror(errno)));
  }
  return absl::OkStatus();
}

// True while `pid` exists and is not a zombie.
bool Alive(pid_t pid) {
  if (pid <= 0 || kill(pid, 0) != 0) return false;
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  std::getline(stat, line);
  const size_t paren = line.rfind(')');
  return paren == std::string::npos || paren + 2 >= line.size() || line[paren + 2] != 'Z';
}

bool SocketAnswers(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    close(fd);
    return false;
  }
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

absl::StatusOr<std::string> RunCommand(const std::vector<std::string>& argv,
                                       const std::vector<std::string>& env) {
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) return absl::InternalError("pipe failed");
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork failed: ", strerror(errno)));
  if (pid == 0) {
    dup2(pipefd[1], 1);
    dup2(pipefd[1], 2);
    for (const std::string& e : env) putenv(const_cast<char*>(e.c_str()));
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(pipefd[1]);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(pipefd[0], buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) out.append(buf, n);
  }
  close(pipefd[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat("'", absl::StrJoin(argv, " "), "' failed (status ",
                                            status, "): ", out));
  }
  return out;
}

std::string SanlockLab::HostDir(int host) const {
  return absl::StrCat(options_.dir, "/host", host);
}

std::string SanlockLab::HostName(int host) const { return absl::StrCat("host", host); }

pid_t SanlockLab::DaemonPid(int host) const {
  return host >= 1 && host <= static_cast<int>(pids_.size()) ? pids_[host - 1] : -1;
}

std::string SanlockLab::LockspaceSpec() const {
  return absl::StrCat(options_.lockspace, ":", lease_path_, ":", kLockspaceOffset);
}

absl::StatusOr<std::string> SanlockLab::Sanlock(int host,
                                                const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {kSanlock};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<std::string> env;
  if (host > 0) env.push_back("SANLOCK_RUN_DIR=" + RunDir(host));
  return RunCommand(argv, env);
}

absl::StatusOr<std::unique_ptr<SanlockLab>> SanlockLab::Start(const SanlockLabOptions& o) {
  if (o.hosts < 1 || o.hosts > 64) {
    return absl::InvalidArgumentError(absl::StrCat("sanlock lab: hosts must be 1..64, not ", o.hosts));
  }
  if (o.io_timeout < 1 || o.io_timeout > 60) {
    return absl::InvalidArgumentError(
        absl::StrCat("sanlock lab: io_timeout must be 1..60 s, not ", o.io_timeout));
  }
  if (!o.dir.empty() && o.dir[0] != '/') {
    return absl::InvalidArgumentError("sanlock lab: the lab directory must be an absolute path");
  }
  if (access(kSanlock, X_OK) != 0) {
    return absl::FailedPreconditionError(
        "sanlock lab: /usr/sbin/sanlock is missing: install Debian's sanlock package "
        "(scripts/install-deps)");
  }
  if (o.sector_size != 512 && o.sector_size != 4096) {
    return absl::InvalidArgumentError("sanlock lab: sector_size must be 512 or 4096");
  }
  if (o.lease_dir_sector != 0 && o.lease_dir_sector != 512 && o.lease_dir_sector != 4096) {
    return absl::InvalidArgumentError("sanlock lab: lease_dir_sector must be 0, 512 or 4096");
  }
  if (o.size_mib < (2 + static_cast<uint64_t>(o.resources)) * (o.sector_size == 4096 ? 8 : 1)) {
    return absl::InvalidArgumentError("sanlock lab: the lease file is too small for its resources");
  }
  std::unique_ptr<SanlockLab> lab(new SanlockLab(o));
  if (o.dir.empty()) {
    char tmpl[] = "/tmp/lk-lab.XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("sanlock lab: cannot create a directory in /tmp: ", strerror(errno)));
    }
    lab->options_.dir = tmpl;
    lab->remove_dir_ = true;
  }
  if (absl::Status s = MakeDir(lab->options_.dir); !s.ok()) return s;
  if (absl::Status s = MakeDir(lab->LeaseDir()); !s.ok()) return s;
  if (o.lease_dir_sector != 0) {
    // Stop() undoes this; so does a failed Start (the destructor).
    const std::string img = lab->options_.dir + "/lease-dir.img";
    const int fd = open(img.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
    const bool made = fd >= 0 && ftruncate(fd, static_cast<off_t>(256 * kMiB)) == 0;
    if (fd >= 0) close(fd);
    if (!made) return absl::FailedPreconditionError(absl::StrCat("sanlock lab: cannot create ", img));
    absl::StatusOr<std::string> loop = RunCommand(
        {"/sbin/losetup", "--find", "--show", "--sector-size", absl::StrCat(o.lease_dir_sector), img});
    if (!loop.ok()) return loop.status();
    lab->lease_dir_loop_ = std::string(absl::StripAsciiWhitespace(*loop));
    absl::StatusOr<std::string> r = RunCommand({"/sbin/mkfs.ext4", "-q", "-F", "-b", "4096", lab->lease_dir_loop_});
    if (r.ok()) r = RunCommand({"/bin/mount", "-t", "ext4", lab->lease_dir_loop_, lab->LeaseDir()});
    if (!r.ok()) {
      RunCommand({"/sbin/losetup", "-d", lab->lease_dir_loop_}).IgnoreError();
      lab->lease_dir_loop_.clear();
      return r.status();
    }
  }
  const std::string file = lab->options_.dir + "/shared.leases";
  {
    const int fd = open(file.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, static_cast<off_t>(o.size_mib * kMiB)) != 0) {
      if (fd >= 0) close(fd);
      return absl::FailedPreconditionError(
          absl::StrCat("sanlock lab: cannot create ", file, ": ", strerror(errno)));
    }
    close(fd);
  }
  lab->lease_path_ = file;
  if (o.loop_device || o.sector_size == 4096) {
    absl::StatusOr<std::string> loop = RunCommand(
        {"/sbin/losetup", "--find", "--show", "--sector-size", absl::StrCat(o.sector_size), file});
    if (!loop.ok()) return loop.status();
    lab->loop_ = std::string(absl::StripAsciiWhitespace(*loop));
    lab->lease_path_ = lab->loop_;
  }
  // Storage first: the lockspace with io_timeout in every host slot, then
  // the manual resource leases.
  absl::StatusOr<std::string> r =
      lab->Sanlock(0, {"direct", "init", "-s", absl::StrCat(o.lockspace, ":0:", lab->lease_path_, ":0"),
                       "-o", absl::StrCat(o.io_timeout), "-Z", absl::StrCat(o.sector_size), "-A",
                       absl::StrCat(lab->Align() / kMiB, "M")});
  if (!r.ok()) return r.status();
  for (int i = 0; i < o.resources; ++i) {
    std::vector<std::string> args = {
        "direct", "init", "-r",
        absl::StrCat(o.lockspace, ":res", i, ":", lab->lease_path_, ":", lab->ResourceOffset(i)),
        "-Z", absl::StrCat(o.sector_size), "-A", absl::StrCat(lab->Align() / kMiB, "M")};
    if (o.num_hosts > 0) {
      args.push_back("-n");
      args.push_back(absl::StrCat(o.num_hosts));
    }
    r = lab->Sanlock(0, args);
    if (!r.ok()) return r.status();
  }
  lab->pids_.assign(o.hosts, -1);
  for (int h = 1; h <= o.hosts; ++h) {
    if (absl::Status s = lab->StartDaemon(h); !s.ok()) {
      lab->Stop().IgnoreError();
      return s;
    }
  }
  if (o.join) {
    for (int h = 1; h <= o.hosts; ++h) {
      if (absl::Status s = lab->Join(h); !s.ok()) {
        lab->Stop().IgnoreError();
        return s;
      }
    }
  }
  if (absl::Status s = lab->WriteEnvFile(); !s.ok()) {
    lab->Stop().IgnoreError();
    return s;
  }
  return lab;
}

absl::Status SanlockLab::StartDaemon(int host) {
  if (absl::Status s = MakeDir(HostDir(host)); !s.ok()) return s;
  if (absl::Status s = MakeDir(RunDir(host)); !s.ok()) return s;
  if (absl::Status s = MakeDir(HostDir(host) + "/log"); !s.ok()) return s;
  const std::string log = HostDir(host) + "/daemon.log";
  const int log_fd = open(log.c_str(), O_CREAT | O_APPEND | O_WRONLY | O_CLOEXEC, 0600);
  if (log_fd < 0) {
    return absl::FailedPreconditionError(absl::StrCat("sanlock lab: cannot open ", log));
  }
  const std::string run_env = "SANLOCK_RUN_DIR=" + RunDir(host);
  const std::string log_dir = HostDir(host) + "/log";
  const std::string name = HostName(host);
  const pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    return absl::InternalError("sanlock lab: fork failed");
  }
  if (pid == 0) {
    // Its own session (the CLI may exit while the lab runs) and its own
    // mount namespace, where /var/log is the host's private log directory:
    // the daemon always opens /var/log/sanlock.log.
    setsid();
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    const int null = open("/dev/null", O_RDONLY);
    if (null >= 0) dup2(null, 0);
    putenv(const_cast<char*>("SANLOCK_PRIVILEGED=0"));
    putenv(const_cast<char*>(run_env.c_str()));
    execl("/usr/bin/unshare", "unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
          "mount --bind \"$0\" /var/log && exec \"$@\"", log_dir.c_str(), kSanlock, "daemon", "-D",
          "-w", "0", "-l", "0", "-h", "0", "-U", "root", "-G", "root", "-L", "-1", "-S", "-1",
          "-e", name.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(log_fd);
  pids_[host - 1] = pid;
  const std::string sock = RunDir(host) + "/sanlock.sock";
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    if (!Alive(pid)) {
      waitpid(pid, nullptr, WNOHANG);
      pids_[host - 1] = -1;
      return absl::FailedPreconditionError(absl::StrCat(
          "sanlock lab: the daemon of ", name, " exited at start; its log ", log, ":\n",
          ReadFile(log).substr(0, 2000)));
    }
    if (SocketAnswers(sock)) {
      std::ofstream(HostDir(host) + "/daemon.pid") << pid << "\n";
      return absl::OkStatus();
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("sanlock lab: the daemon of ", name, " did not answer on ", sock, " in 10 s"));
}

absl::Status SanlockLab::Join(int host) {
  // -o: the io_timeout the daemon renews with (and other hosts derive this
  // host's dead time from); without it the daemon uses 10 s whatever the
  // lockspace was initialised with.
  return Sanlock(host, {"client", "add_lockspace", "-o", absl::StrCat(options_.io_timeout), "-s",
                        absl::StrCat(options_.lockspace, ":", host, ":", lease_path_, ":0")})
      .status();
}

absl::StatusOr<std::string> SanlockLab::ClientStatus(int host) const {
  return Sanlock(host, {"client", "status"});
}

absl::Status SanlockLab::WaitDaemonGone(int host, absl::Duration timeout) {
  const pid_t pid = pids_[host - 1];
  if (pid <= 0) return absl::OkStatus();
  const absl::Time deadline = absl::Now() + timeout;
  while (Alive(pid)) {
    if (owned_) waitpid(pid, nullptr, WNOHANG);
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat("sanlock lab: daemon pid ", pid, " of ",
                                                      HostName(host), " still running"));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  if (owned_) waitpid(pid, nullptr, WNOHANG);
  pids_[host - 1] = -1;
  return absl::OkStatus();
}

absl::Status SanlockLab::KillDaemon(int host) {
  const pid_t pid = DaemonPid(host);
  if (pid <= 0) return absl::FailedPreconditionError(absl::StrCat(HostName(host), " is not running"));
  kill(pid, SIGKILL);
  return WaitDaemonGone(host, absl::Seconds(10));
}

absl::Status SanlockLab::Freeze(int host) {
  return kill(DaemonPid(host), SIGSTOP) == 0 ? absl::OkStatus()
                                             : absl::FailedPreconditionError("freeze failed");
}

absl::Status SanlockLab::Thaw(int host) {
  return kill(DaemonPid(host), SIGCONT) == 0 ? absl::OkStatus()
                                             : absl::FailedPreconditionError("thaw failed");
}

absl::Status SanlockLab::Fence(int host) {
  return Sanlock(0, {"direct", "release_id", "-s",
                     absl::StrCat(options_.lockspace, ":", host, ":", lease_path_, ":0")})
      .status();
}

absl::Status SanlockLab::RestartDaemon(int host) {
  if (DaemonPid(host) > 0) {
    return absl::FailedPreconditionError(absl::StrCat(HostName(host), " is still running"));
  }
  if (absl::Status s = StartDaemon(host); !s.ok()) return s;
  return WriteEnvFile();
}

absl::Status SanlockLab::Stop() {
  if (stopped_) return absl::OkStatus();
  stopped_ = true;
  absl::Status result;
  for (int h = 1; h <= hosts(); ++h) {
    const pid_t pid = DaemonPid(h);
    if (pid <= 0) continue;
    kill(pid, SIGCONT);  // A frozen daemon cannot shut down.
    // Force: the daemon kills its lease holders and exits.
    Sanlock(h, {"client", "shutdown", "-f", "1"}).IgnoreError();
    if (!WaitDaemonGone(h, absl::Seconds(10)).ok()) {
      kill(pid, SIGKILL);
      absl::Status s = WaitDaemonGone(h, absl::Seconds(10));
      if (!s.ok()) result = s;
    }
  }
  if (!loop_.empty()) {
    RunCommand({"/sbin/losetup", "-d", loop_}).IgnoreError();
    loop_.clear();
  }
  if (!lease_dir_loop_.empty()) {
    absl::StatusOr<std::string> um = RunCommand({"/bin/umount", LeaseDir()});
    if (!um.ok() && result.ok()) result = um.status();
    RunCommand({"/sbin/losetup", "-d", lease_dir_loop_}).IgnoreError();
    lease_dir_loop_.clear();
  }
  unlink((options_.dir + "/lab.env").c_str());
  if (remove_dir_ && result.ok()) {
    absl::StatusOr<std::string> rm = RunCommand({"/bin/rm", "-rf", options_.dir});
    if (!rm.ok()) result = rm.status();
  }
  return result;
}

SanlockLab::~SanlockLab() {
  if (owned_) Stop().IgnoreError();
}

absl::Status SanlockLab::WriteEnvFile() const {
  std::ofstream env(options_.dir + "/lab.env");
  env << "# sanlock lab (lab/sanlock_lab.h); shell syntax\n"
      << "LAB_HOSTS=" << hosts() << "\n"
      << "LAB_LOCKSPACE=" << options_.lockspace << "\n"
      << "LAB_IO_TIMEOUT=" << options_.io_timeout << "\n"
      << "LAB_LEASES=" << lease_path_ << "\n"
      << "LAB_LOOP=" << loop_ << "\n"
      << "LAB_LEASE_DIR=" << LeaseDir() << "\n"
      << "LAB_RESOURCES=" << options_.resources << "\n";
  for (int h = 1; h <= hosts(); ++h) {
    env << "LAB_HOST" << h << "_RUN_DIR=" << RunDir(h) << "\n"
        << "LAB_HOST" << h << "_PID=" << DaemonPid(h) << "\n";
  }
  if (!env) return absl::FailedPreconditionError("sanlock lab: cannot write lab.env");
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<SanlockLab>> SanlockLab::Attach(const std::string& dir) {
  const std::string text = ReadFile(dir + "/lab.env");
  if (text.empty()) {
    return absl::NotFoundError(absl::StrCat("sanlock lab: no running lab in ", dir,
                                            " (", dir, "/lab.env is missing)"));
  }
  SanlockLabOptions o;
  o.dir = dir;
  std::string leases, loop;
  std::vector<std::pair<int, pid_t>> pids;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    std::pair<std::string, std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
    if (kv.first == "LAB_HOSTS") (void)absl::SimpleAtoi(kv.second, &o.hosts);
    if (kv.first == "LAB_LOCKSPACE") o.lockspace = kv.second;
    if (kv.first == "LAB_IO_TIMEOUT") (void)absl::SimpleAtoi(kv.second, &o.io_timeout);
    if (kv.first == "LAB_LEASES") leases = kv.second;
    if (kv.first == "LAB_LOOP") loop = kv.second;
    if (kv.first == "LAB_RESOURCES") (void)absl::SimpleAtoi(kv.second, &o.resources);
    int h = 0;
    pid_t pid = 0;
    if (absl::ConsumePrefix(&line, "LAB_HOST") &&
        absl::SimpleAtoi(line.substr(0, line.find('_')), &h) &&
        absl::StrContains(line, "_PID=") && absl::SimpleAtoi(kv.second, &pid)) {
      pids.push_back({h, pid});
    }
  }
  std::unique_ptr<SanlockLab> lab(new SanlockLab(o));
  lab->owned_ = false;
  lab->lease_path_ = leases;
  lab->loop_ = loop;
  lab->pids_.assign(o.hosts, -1);
  for (auto [h, pid] : pids) {
    if (h >= 1 && h <= o.hosts) lab->pids_[h - 1] = pid;
  }
  return lab;
}

}  // namespace lab
}  // namespace latchkey
