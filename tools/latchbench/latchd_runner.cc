#include "tools/latchbench/latchd_runner.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "agent/client.h"

namespace latchkey {
namespace bench {
namespace {

// A conf list: [ "a", "b" ].
std::string List(const std::vector<std::string>& v) {
  std::vector<std::string> q;
  for (const std::string& s : v) q.push_back(absl::StrCat("\"", s, "\""));
  return absl::StrCat("[ ", absl::StrJoin(q, ", "), " ]");
}

// Whether `pid` (our child) has exited; reaps it.
bool Exited(pid_t pid) {
  int st;
  return waitpid(pid, &st, WNOHANG) == pid;
}

}  // namespace

absl::StatusOr<std::unique_ptr<PrivateLatchd>> PrivateLatchd::Start(const LatchdSetup& s) {
  std::unique_ptr<PrivateLatchd> d(new PrivateLatchd());
  d->dir_ = s.dir;
  std::string sock = "/tmp/latchbench-sock.XXXXXX";
  if (mkdtemp(sock.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("cannot create a socket directory under /tmp: ",
                                            strerror(errno)));
  }
  d->socket_dir_ = sock;
  const std::string conf = s.dir + "/latchd.conf";
  {
    std::ofstream out(conf);
    out << "state_dir = \"" << s.dir << "/state\"\n"
        << "socket = \"" << d->socket() << "\"\n"
        << "plugin_path = " << List(s.plugin_path) << "\n"
        << "backends = " << List(s.backends) << "\n"
        << "log_syslog = 0\n";
    if (!s.benchmark_backends.empty()) {
      out << "benchmark_backends = " << List(s.benchmark_backends) << "\n";
    }
    for (const std::string& b : s.backends) {
      if (b == "posixfd") out << "posixfd_lock_dir = \"" << s.dir << "/locks\"\n";
    }
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", conf));
  }
  mkdir((s.dir + "/state").c_str(), 0700);
  mkdir((s.dir + "/locks").c_str(), 0700);
  const std::string log = s.dir + "/latchd.log";
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execl(s.binary.c_str(), s.binary.c_str(), "--config", conf.c_str(), static_cast<char*>(nullptr));
    fprintf(stderr, "latchbench: cannot run %s: %s\n", s.binary.c_str(), strerror(errno));
    _exit(127);
  }
  d->pid_ = pid;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    if (Exited(pid)) {
      d->pid_ = -1;
      return absl::FailedPreconditionError(
          absl::StrCat("latchd (", s.binary, ") exited at start:\n", d->LogTail()));
    }
    absl::StatusOr<LatchdClient> c = LatchdClient::Connect(d->socket(), absl::Milliseconds(200));
    if (c.ok()) {
      absl::StatusOr<nlohmann::json> hello = c->Call({{"op", "hello"}});
      if (hello.ok()) {
        d->hello_ = *hello;
        return d;
      }
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("latchd did not answer hello within 10 s:\n", d->LogTail()));
}

PrivateLatchd::~PrivateLatchd() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    const absl::Time deadline = absl::Now() + absl::Seconds(5);
    bool gone = false;
    while (!(gone = Exited(pid_)) && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
    if (!gone) {
      kill(pid_, SIGKILL);
      int st;
      waitpid(pid_, &st, 0);
    }
  }
  if (!socket_dir_.empty()) {
    unlink(socket().c_str());
    rmdir(socket_dir_.c_str());
  }
}

std::string PrivateLatchd::LogTail(size_t lines) const {
  std::ifstream in(dir_ + "/latchd.log");
  std::stringstream s;
  s << in.rdbuf();
  std::vector<std::string> all = absl::StrSplit(s.str(), '\n', absl::SkipEmpty());
  const size_t from = all.size() > lines ? all.size() - lines : 0;
  return absl::StrJoin(all.begin() + static_cast<std::ptrdiff_t>(from), all.end(), "\n");
}

}  // namespace bench
}  // namespace latchkey
