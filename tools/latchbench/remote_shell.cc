#include "tools/latchbench/remote_shell.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"

namespace latchkey {
namespace bench {
namespace {

struct Child {
  pid_t pid = -1;
  std::string out_file, err_file;
};

std::string ReadAndRemove(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  unlink(path.c_str());
  return s.str();
}

absl::StatusOr<Child> Start(const std::vector<std::string>& argv, const std::string& stdin_file) {
  Child c;
  char out_t[] = "/tmp/latchbench-rsh.XXXXXX";
  char err_t[] = "/tmp/latchbench-rsh.XXXXXX";
  const int out = mkstemp(out_t);
  const int err = out < 0 ? -1 : mkstemp(err_t);
  const int in = open(stdin_file.empty() ? "/dev/null" : stdin_file.c_str(), O_RDONLY | O_CLOEXEC);
  if (out < 0 || err < 0 || in < 0) {
    const std::string why = strerror(errno);
    if (out >= 0) close(out), unlink(out_t);
    if (err >= 0) close(err), unlink(err_t);
    if (in >= 0) close(in);
    return absl::InternalError(absl::StrCat(
        in < 0 && out >= 0 && err >= 0 ? absl::StrCat("cannot open ", stdin_file)
                                       : std::string("cannot make a temporary file"),
        ": ", why));
  }
  c.out_file = out_t;
  c.err_file = err_t;
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  c.pid = fork();
  if (c.pid == 0) {
    setpgid(0, 0);
    dup2(in, 0);
    dup2(out, 1);
    dup2(err, 2);
    execvp(args[0], args.data());
    dprintf(2, "cannot run %s: %s\n", args[0], strerror(errno));
    _exit(127);
  }
  const int fork_errno = errno;
  close(in);
  close(out);
  close(err);
  if (c.pid < 0) {
    unlink(out_t);
    unlink(err_t);
    return absl::InternalError(absl::StrCat("fork: ", strerror(fork_errno)));
  }
  setpgid(c.pid, c.pid);
  return c;
}

// Waits for every child until `deadline`; kills the group of any still
// running then (status 124).
std::vector<RemoteShell::Result> WaitAll(std::vector<Child>& children, absl::Time deadline) {
  std::vector<RemoteShell::Result> results(children.size());
  std::vector<bool> done(children.size(), false);
  size_t left = children.size();
  while (left > 0) {
    for (size_t i = 0; i < children.size(); ++i) {
      if (done[i]) continue;
      int st = 0;
      pid_t r = waitpid(children[i].pid, &st, WNOHANG);
      if (r == 0 && absl::Now() > deadline) {
        kill(-children[i].pid, SIGKILL);
        r = waitpid(children[i].pid, &st, 0);
        results[i].status = 124;
      } else if (r == children[i].pid) {
        results[i].status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      } else if (r < 0 && errno != EINTR) {
        results[i].status = 127;
      } else {
        continue;
      }
      done[i] = true;
      --left;
      results[i].out = ReadAndRemove(children[i].out_file);
      results[i].err = ReadAndRemove(children[i].err_file);
    }
    if (left > 0) usleep(10000);
  }
  return results;
}

}  // namespace

std::string ShellQuote(const std::string& s) {
  return absl::StrCat("'", absl::StrReplaceAll(s, {{"'", "'\\''"}}), "'");
}

absl::StatusOr<RemoteShell> RemoteShell::Parse(const std::string& tmpl) {
  RemoteShell sh;
  sh.tmpl_ = tmpl;
  sh.words_ = absl::StrSplit(tmpl, ' ', absl::SkipEmpty());
  if (sh.words_.empty()) {
    return absl::InvalidArgumentError(
        "the remote shell command is empty (--rsh: e.g. 'ssh -o BatchMode=yes {}')");
  }
  return sh;
}

std::vector<std::string> RemoteShell::Argv(const std::string& host,
                                           const std::string& command) const {
  std::vector<std::string> argv;
  for (const std::string& w : words_) argv.push_back(absl::StrReplaceAll(w, {{"{}", host}}));
  argv.push_back(command);
  return argv;
}

absl::StatusOr<RemoteShell::Result> RemoteShell::Run(const std::string& host,
                                                     const std::string& command,
                                                     absl::Duration timeout,
                                                     const std::string& stdin_file) const {
  absl::StatusOr<Child> c = Start(Argv(host, command), stdin_file);
  if (!c.ok()) return c.status();
  std::vector<Child> one = {*c};
  return WaitAll(one, absl::Now() + timeout)[0];
}

absl::StatusOr<std::vector<RemoteShell::Result>> RemoteShell::RunAll(
    const std::vector<std::pair<std::string, std::string>>& commands,
    absl::Duration timeout) const {
  std::vector<Child> children;
  for (const auto& [host, command] : commands) {
    absl::StatusOr<Child> c = Start(Argv(host, command), "");
    if (!c.ok()) {
      WaitAll(children, absl::InfinitePast());  // the ones started: killed and reaped
      return c.status();
    }
    children.push_back(*c);
  }
  return WaitAll(children, absl::Now() + timeout);
}

}  // namespace bench
}  // namespace latchkey
