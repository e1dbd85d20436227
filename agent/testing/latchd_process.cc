#include "agent/testing/latchd_process.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tools/cpp/runfiles/runfiles.h"

namespace latchkey {
namespace testing {
std::string Runfile(const std::string& path) {
  static std::unique_ptr<bazel::tools::cpp::runfiles::Runfiles> rf = [] {
    std::string err;
    std::unique_ptr<bazel::tools::cpp::runfiles::Runfiles> r(
        bazel::tools::cpp::runfiles::Runfiles::Create("", &err));
    if (r == nullptr) r.reset(bazel::tools::cpp::runfiles::Runfiles::CreateForTest(&err));
    return r;
  }();
  return rf == nullptr ? std::string() : rf->Rlocation("latchkey/" + path);
}

std::string TempDir(const std::string& tag) {
  const char* base = getenv("TEST_TMPDIR");
  std::string templ = absl::StrCat(base != nullptr ? base : "/tmp", "/", tag, ".XXXXXX");
  if (mkdtemp(templ.data()) == nullptr) abort();
  return templ;
}

pid_t SpawnSleeper() {
  const pid_t pid = fork();
  if (pid == 0) {
    for (;;) pause();
  }
  return pid;
}

void KillAndReap(pid_t pid, int sig) {
  if (pid <= 0) return;
  kill(pid, sig);
  if (sig == SIGKILL || sig == SIGTERM) {
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
  }
}

// Outside Bazel (a test binary copied into a lab node) there are no
// runfiles: LATCHKEY_LATCHD and LATCHKEY_PLUGIN_DIR name latchd and the
// directory of the plugins instead.
std::string LatchdProcess::BinaryPath() {
  if (const char* e = getenv("LATCHKEY_LATCHD")) return e;
  return Runfile("agent/latchd");
}

char ProcessState(pid_t pid) {
  absl::StatusOr<ProcessInfo> info = ReadProcessInfo(pid);
  return info.ok() ? info->state : '?';
}

std::string LatchdProcess::SanlockPluginDir() {
  if (const char* e = getenv("LATCHKEY_PLUGIN_DIR")) return e;
  std::string so = Runfile("backends/sanlock/latchkey-sanlock.so");
  return so.substr(0, so.rfind('/'));
}

std::string LatchdProcess::NopPluginDir() {
  if (const char* e = getenv("LATCHKEY_PLUGIN_DIR")) return e;
  std::string so = Runfile("backends/nop/latchkey-nop.so");
  return so.substr(0, so.rfind('/'));
}

std::string LatchdProcess::PluginDir() {
  if (const char* e = getenv("LATCHKEY_PLUGIN_DIR")) return e;
  std::string so = Runfile("backends/posixfd/latchkey-posixfd.so");
  return so.substr(0, so.rfind('/'));
}

LatchdProcess::LatchdProcess(std::string dir, std::string extra_config, std::string lock_dir)
    : dir_(std::move(dir)), lock_dir_(lock_dir.empty() ? dir_ + "/locks" : std::move(lock_dir)) {
  std::string sock = "/tmp/latchd-sock.XXXXXX";
  if (mkdtemp(sock.data()) == nullptr) abort();
  socket_dir_ = sock;
  std::ofstream conf(config());
  conf << "state_dir = \"" << state_dir() << "\"\n"
       << "socket = \"" << socket() << "\"\n"
       << "plugin_path = [ \"" << PluginDir() << "\", \"" << SanlockPluginDir() << "\", \""
       << NopPluginDir() << "\" ]\n";
  // posixfd's setting, unless the extra configuration loads other backends
  // only (latchd refuses settings of a backend it does not load).
  const size_t b = extra_config.find("backends");
  if (b == std::string::npos ||
      extra_config.substr(b, extra_config.find('\n', b) - b).find("posixfd") != std::string::npos) {
    conf << "posixfd_lock_dir = \"" << lock_dir_ << "\"\n";
  }
  conf
       << "log_syslog = 0\n"
       << extra_config << "\n";
}

LatchdProcess::~LatchdProcess() {
  if (pid_ > 0) Kill(SIGKILL);
  unlink(socket().c_str());
  rmdir(socket_dir_.c_str());
}

absl::Status LatchdProcess::Start(const std::vector<std::string>& env, absl::Duration timeout) {
  if (pid_ > 0) return absl::FailedPreconditionError("latchd is already running");
  const std::string bin = BinaryPath();
  const std::string conf = config();
  const std::string log = log_path();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    for (const std::string& e : env) putenv(const_cast<char*>(e.c_str()));
    execl(bin.c_str(), bin.c_str(), "--config", conf.c_str(), nullptr);
    _exit(127);
  }
  pid_ = pid;
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    int st;
    if (waitpid(pid_, &st, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::InternalError(absl::StrCat("latchd exited during start (status ", st,
                                              "); log:\n", Log()));
    }
    absl::StatusOr<LatchdClient> c = LatchdClient::Connect(socket(), absl::Milliseconds(500));
    if (c.ok() && c->Call({{"op", "hello"}}).ok()) return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(5));
  }
  return absl::DeadlineExceededError(absl::StrCat("latchd did not answer within ",
                                                  absl::FormatDuration(timeout), "; log:\n",
                                                  Log()));
}

int LatchdProcess::Kill(int sig) {
  if (pid_ <= 0) return 0;
  kill(pid_, sig);
  int st = 0;
  while (waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  return st;
}

bool LatchdProcess::WaitExit(absl::Duration timeout, int* wait_status) {
  const absl::Time deadline = absl::Now() + timeout;
  while (pid_ > 0) {
    int st;
    if (waitpid(pid_, &st, WNOHANG) == pid_) {
      pid_ = -1;
      if (wait_status != nullptr) *wait_status = st;
      return true;
    }
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(2));
  }
  return true;
}

absl::StatusOr<LatchdClient> LatchdProcess::Connect(absl::Duration timeout) const {
  return LatchdClient::Connect(socket(), timeout);
}

std::string LatchdProcess::Log() const {
  std::ifstream in(log_path());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace testing
}  // namespace latchkey
