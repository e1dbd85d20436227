#include "lab/dlm_lab.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace latchkey {
namespace lab {
namespace {

std::string FindTool(const std::string& given) {
  if (!given.empty()) return given;
  if (const char* env = getenv("LATCHKEY_UML_CLUSTER")) return env;
  for (const char* base : {getenv("TEST_SRCDIR"), getenv("RUNFILES_DIR")}) {
    if (base == nullptr) continue;
    const std::string p = absl::StrCat(base, "/latchkey/lab/uml/uml-cluster");
    if (access(p.c_str(), X_OK) == 0) return p;
  }
  // `bazel run` starts in the runfiles tree; a source checkout has it too.
  for (const char* p : {"lab/uml/uml-cluster", "../latchkey/lab/uml/uml-cluster"}) {
    if (access(p, X_OK) == 0) {
      char* real = realpath(p, nullptr);
      std::string r = real ? real : p;
      free(real);
      return r;
    }
  }
  return "";
}

}  // namespace

absl::StatusOr<DlmLab::Result> RunCaptured(const std::vector<std::string>& argv) {
  char out_tmpl[] = "/tmp/lk-run.XXXXXX";
  const int out_fd = mkstemp(out_tmpl);
  char err_tmpl[] = "/tmp/lk-run.XXXXXX";
  const int err_fd = mkstemp(err_tmpl);
  if (out_fd < 0 || err_fd < 0) return absl::InternalError("mkstemp failed");
  unlink(out_tmpl);
  unlink(err_tmpl);
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  if (pid == 0) {
    const int null = open("/dev/null", O_RDONLY);
    dup2(null, 0);
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  DlmLab::Result r;
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  auto read_all = [](int fd) {
    std::string s;
    lseek(fd, 0, SEEK_SET);
    char buf[8192];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0) s.append(buf, n);
    close(fd);
    return s;
  };
  r.out = read_all(out_fd);
  r.err = read_all(err_fd);
  return r;
}

absl::StatusOr<std::unique_ptr<DlmLab>> DlmLab::Start(const DlmLabOptions& o) {
  if (o.nodes < 2 || o.nodes > 5) {
    return absl::InvalidArgumentError(absl::StrCat("dlm lab: nodes must be 2..5, not ", o.nodes));
  }
  std::unique_ptr<DlmLab> lab(new DlmLab);
  lab->tool_ = FindTool(o.tool);
  if (lab->tool_.empty() || access(lab->tool_.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "dlm lab: lab/uml/uml-cluster not found (", lab->tool_,
        "): set LATCHKEY_UML_CLUSTER or depend on //lab:uml_cluster"));
  }
  lab->nodes_ = o.nodes;
  if (o.dir.empty()) {
    char tmpl[] = "/tmp/lk-dlm.XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      return absl::InternalError(absl::StrCat("dlm lab: mkdtemp: ", strerror(errno)));
    }
    lab->dir_ = tmpl;
    lab->own_dir_ = true;
  } else {
    lab->dir_ = o.dir;
  }
  lab->running_ = true;  // a failed start may have left parts: Stop cleans them
  if (absl::Status st = lab->ToolOk({"start", lab->dir_, "--nodes", absl::StrCat(o.nodes)});
      !st.ok()) {
    return st;  // the destructor stops what the start left
  }
  return lab;
}

DlmLab::~DlmLab() { (void)Stop(); }

absl::Status DlmLab::Stop() {
  if (!running_) return absl::OkStatus();
  running_ = false;
  absl::Status st = ToolOk({"stop", dir_});
  if (own_dir_) {
    (void)RunCaptured({"/bin/rm", "-rf", "--one-file-system", dir_});
  }
  return st;
}

absl::StatusOr<DlmLab::Result> DlmLab::Tool(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"/bin/bash", tool_};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCaptured(argv);
}

absl::Status DlmLab::ToolOk(const std::vector<std::string>& args) {
  absl::StatusOr<Result> r = Tool(args);
  if (!r.ok()) return r.status();
  if (r->status != 0) {
    return absl::InternalError(absl::StrCat("uml-cluster ", absl::StrJoin(args, " "),
                                            " failed (exit ", r->status, "): ", r->err, r->out));
  }
  return absl::OkStatus();
}

absl::StatusOr<DlmLab::Result> DlmLab::Run(int node, const std::vector<std::string>& argv,
                                           absl::Duration timeout) {
  std::vector<std::string> args = {"run", dir_, absl::StrCat(node), "--timeout",
                                   absl::StrCat(absl::ToInt64Seconds(timeout)), "--"};
  args.insert(args.end(), argv.begin(), argv.end());
  return Tool(args);
}

absl::StatusOr<std::string> DlmLab::Sh(int node, const std::string& script,
                                       absl::Duration timeout) {
  absl::StatusOr<Result> r = Run(node, {"/bin/sh", "-c", script}, timeout);
  if (!r.ok()) return r.status();
  if (r->status != 0) {
    return absl::InternalError(absl::StrCat("node", node, ": '", script, "' exited ", r->status,
                                            ": ", r->err, r->out));
  }
  return r->out;
}

absl::Status DlmLab::Install(const std::vector<std::string>& files) {
  std::vector<std::string> args = {"install", dir_};
  args.insert(args.end(), files.begin(), files.end());
  return ToolOk(args);
}

absl::Status DlmLab::Freeze(int node) { return ToolOk({"freeze", dir_, absl::StrCat(node)}); }
absl::Status DlmLab::Thaw(int node) { return ToolOk({"thaw", dir_, absl::StrCat(node)}); }
absl::Status DlmLab::Kill(int node) { return ToolOk({"kill", dir_, absl::StrCat(node)}); }
absl::Status DlmLab::Restart(int node) { return ToolOk({"restart", dir_, absl::StrCat(node)}); }
absl::Status DlmLab::Cut(int node) { return ToolOk({"cut", dir_, absl::StrCat(node)}); }
absl::Status DlmLab::Heal(int node) { return ToolOk({"heal", dir_, absl::StrCat(node)}); }
absl::Status DlmLab::CollectLogs(const std::string& out) {
  std::vector<std::string> args = {"logs", dir_};
  if (!out.empty()) args.push_back(out);
  return ToolOk(args);
}

}  // namespace lab
}  // namespace latchkey
