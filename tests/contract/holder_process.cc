#include "tests/contract/holder_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"

namespace latchkey {
namespace contract {
namespace {

std::string ReadLine(int fd) {
  std::string line;
  char c;
  while (read(fd, &c, 1) == 1 && c != '\n') line.push_back(c);
  return line;
}

}  // namespace

absl::StatusOr<std::unique_ptr<HolderProcess>> HolderProcess::Start(
    const std::string& binary, const std::vector<std::string>& args) {
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe: ", strerror(errno)));
  }
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(binary.c_str()));
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    execv(binary.c_str(), argv.data());
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  std::unique_ptr<HolderProcess> h(new HolderProcess);
  h->pid_ = pid;
  h->to_child_ = in[1];
  h->from_child_ = out[0];
  const std::string line = ReadLine(h->from_child_);
  if (absl::StartsWith(line, "granted ") && absl::SimpleAtoi(line.substr(8), &h->token_)) {
    return h;
  }
  return absl::UnknownError(absl::StrCat("lock holder said: ", line));
}

absl::Status HolderProcess::Release() {
  close(to_child_);
  to_child_ = -1;
  const std::string line = ReadLine(from_child_);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  if (line != "released" || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::UnknownError(absl::StrCat("lock holder release said: ", line));
  }
  return absl::OkStatus();
}

void HolderProcess::Kill() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
}

HolderProcess::~HolderProcess() {
  Kill();
  if (to_child_ >= 0) close(to_child_);
  if (from_child_ >= 0) close(from_child_);
}

}  // namespace contract
}  // namespace latchkey
