#include "lab/libvirt_host.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "lab/sanlock_lab.h"  // RunCommand

namespace latchkey {
namespace lab {
namespace {

absl::Status MakeDirs(const std::string& path) {
  std::string partial;
  for (size_t i = 1; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '/') {
      partial = path.substr(0, i);
      if (mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST) {
        return absl::InternalError(absl::StrCat("mkdir ", partial, ": ", strerror(errno)));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::trunc);
  f << text;
  f.close();
  if (!f) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool Alive(pid_t pid) { return pid > 0 && kill(pid, 0) == 0; }

// Waits for `pid` to end: reaps it when it is our child, else polls.
bool WaitGone(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    int status;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD && !Alive(pid))) return true;
    // A zombie we cannot reap (not our child) counts as gone.
    std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
    if (stat.empty() || stat.find(") Z ") != std::string::npos) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return false;
}

}  // namespace

absl::StatusOr<std::unique_ptr<LibvirtHost>> LibvirtHost::Start(const LibvirtHostOptions& o) {
  if (o.index < 1 || o.index > 50) {
    return absl::InvalidArgumentError(absl::StrCat("libvirt host index must be 1..50, not ", o.index));
  }
  std::unique_ptr<LibvirtHost> h(new LibvirtHost(o));
  if (absl::Status s = h->Prepare(); !s.ok()) return s;
  if (absl::Status s = h->StartDaemon(); !s.ok()) return s;
  return h;
}

LibvirtHost::~LibvirtHost() { Stop().IgnoreError(); }

std::string LibvirtHost::HostName() const { return absl::StrCat("lvhost", options_.index); }

std::string LibvirtHost::TcpUri() const {
  return absl::StrCat("qemu+tcp://127.0.0.1:", 16600 + options_.index, "/system");
}

absl::Status LibvirtHost::Prepare() {
  const std::string& d = options_.dir;
  for (const char* sub : {"/etc/libvirt", "/run", "/lib", "/cache", "/log"}) {
    if (absl::Status s = MakeDirs(d + sub); !s.ok()) return s;
  }
  const int i = options_.index;
  absl::Status s = WriteFile(
      d + "/etc/libvirt/libvirtd.conf",
      absl::StrCat("listen_tls = 0\nlisten_tcp = 1\nlisten_addr = \"127.0.0.1\"\n",
                   "tcp_port = \"", 16600 + i, "\"\nauth_tcp = \"none\"\nauth_unix_rw = \"none\"\n",
                   absl::StrFormat("host_uuid = \"4c61746b-6b65-4900-8000-%012d\"\n", i),
                   "log_outputs = \"3:file:/var/log/libvirt/libvirtd.log\"\n"));
  if (s.ok()) {
    s = WriteFile(d + "/etc/libvirt/qemu.conf",
                  absl::StrCat("lock_manager = \"latchkey\"\nuser = \"root\"\ngroup = \"root\"\n",
                               "dynamic_ownership = 0\nsecurity_driver = \"none\"\n",
                               "cgroup_controllers = [ ]\nnamespaces = [ ]\nstdio_handler = \"file\"\n",
                               "migration_port_min = ", 49200 + 20 * i, "\n",
                               "migration_port_max = ", 49219 + 20 * i, "\n"));
  }
  if (s.ok()) s = WriteFile(d + "/etc/libvirt/qemu-latchkey.conf", options_.latchkey_conf);
  // libvirtd wants the libvirt-qemu user and group; add them to private copies.
  std::string passwd = ReadFile("/etc/passwd"), group = ReadFile("/etc/group");
  if (passwd.find("\nlibvirt-qemu:") == std::string::npos) {
    passwd += "libvirt-qemu:x:64055:64055:libvirt:/nonexistent:/usr/sbin/nologin\n";
  }
  if (group.find("\nlibvirt-qemu:") == std::string::npos) group += "libvirt-qemu:x:64055:\n";
  if (s.ok()) s = WriteFile(d + "/passwd", passwd);
  if (s.ok()) s = WriteFile(d + "/group", group);
  const std::string cache = options_.cache_dir.empty() ? d + "/cache" : options_.cache_dir;
  std::string script = absl::StrCat(
      "set -e\n", "mount --bind ", d, "/etc/libvirt /etc/libvirt\n", "mount --bind ", d,
      "/passwd /etc/passwd\n", "mount --bind ", d, "/group /etc/group\n",
      "mkdir -p /var/lib/libvirt /var/cache/libvirt /var/log/libvirt\n", "mount --bind ", d,
      "/lib /var/lib/libvirt\n", "mount --bind ", cache, " /var/cache/libvirt\n", "mount --bind ",
      d, "/log /var/log/libvirt\n");
  for (const auto& [src, dst] : options_.binds) {
    absl::StrAppend(&script, "mount --bind ", src, " ", dst, "\n");
  }
  // /run last: the paths above may live under it.
  absl::StrAppend(&script, "mount --bind ", d, "/run /run\n", "hostname ", HostName(), "\n",
                  "exec /usr/sbin/libvirtd --listen\n");
  if (s.ok()) s = WriteFile(d + "/start-libvirtd.sh", script);
  return s;
}

absl::Status LibvirtHost::StartDaemon() {
  if (Alive(pid_)) return absl::FailedPreconditionError("libvirtd is already running");
  unlink(Socket().c_str());
  const std::string out = options_.dir + "/libvirtd.out";
  const std::string script = options_.dir + "/start-libvirtd.sh";
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  if (pid == 0) {
    setsid();
    int fd = open(out.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    setenv("LIBVIRT_LOCK_MANAGER_PLUGIN_DIR", options_.plugin_dir.c_str(), 1);
    execl("/usr/bin/unshare", "unshare", "--mount", "--uts", "--propagation", "private", "--",
          "/bin/bash", script.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  pid_ = pid;
  // The first call also waits for the QEMU capabilities probe (~8 s cold).
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  absl::Status last = absl::UnavailableError("not started");
  while (absl::Now() < deadline) {
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::InternalError(absl::StrCat("libvirtd of ", HostName(), " exited (status ",
                                              status, "): ", LogTail()));
    }
    if (access(Socket().c_str(), F_OK) == 0) {
      absl::StatusOr<std::string> r = Virsh({"list", "--all"});
      if (r.ok()) return absl::OkStatus();
      last = r.status();
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError(absl::StrCat("libvirtd of ", HostName(),
                                                  " did not answer within 60 s: ", last.message(),
                                                  "\n", LogTail()));
}

absl::Status LibvirtHost::StopDaemon(int sig) {
  if (pid_ <= 0) return absl::OkStatus();
  kill(pid_, sig);
  if (!WaitGone(pid_, absl::Seconds(10))) {
    kill(pid_, SIGKILL);
    WaitGone(pid_, absl::Seconds(5));
  }
  pid_ = -1;
  return absl::OkStatus();
}

absl::Status LibvirtHost::Stop() {
  const std::string qemu_dir = options_.dir + "/run/libvirt/qemu";
  std::vector<pid_t> qemus;
  if (DIR* dir = opendir(qemu_dir.c_str())) {
    while (dirent* e = readdir(dir)) {
      absl::string_view n = e->d_name;
      if (!absl::ConsumeSuffix(&n, ".pid")) continue;
      pid_t p = QemuPid(std::string(n));
      if (p > 0) qemus.push_back(p);
    }
    closedir(dir);
  }
  bool all_gone = true;
  for (pid_t p : qemus) kill(p, SIGKILL);
  for (pid_t p : qemus) all_gone &= WaitGone(p, absl::Seconds(10));
  absl::Status s = StopDaemon(SIGTERM);
  if (!all_gone) return absl::InternalError(absl::StrCat("a QEMU of ", HostName(), " did not exit"));
  return s;
}

absl::StatusOr<std::string> LibvirtHost::Virsh(const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {"/usr/bin/virsh", "-c",
                                   absl::StrCat("qemu:///system?socket=", Socket())};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv);
}

pid_t LibvirtHost::QemuPid(const std::string& domain) const {
  std::string text = ReadFile(absl::StrCat(options_.dir, "/run/libvirt/qemu/", domain, ".pid"));
  int pid = -1;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &pid)) return -1;
  return Alive(pid) ? pid : -1;
}

std::string LibvirtHost::LogTail(size_t bytes) const {
  std::string log = ReadFile(options_.dir + "/libvirtd.out") + ReadFile(options_.dir + "/log/libvirtd.log");
  return log.size() > bytes ? log.substr(log.size() - bytes) : log;
}

}  // namespace lab
}  // namespace latchkey
