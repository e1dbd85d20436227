#include "lab/cluster_lab.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace latchkey {
namespace lab {
namespace {

std::string FindTool(const std::string& given) {
  if (!given.empty()) return given;
  if (const char* env = getenv("LATCHKEY_UML_CLUSTER")) return env;
  const std::string in_runfiles = Runfile("lab/uml/uml-cluster");
  if (in_runfiles[0] == '/' && access(in_runfiles.c_str(), X_OK) == 0) return in_runfiles;
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

// LAB_* variables of DIR/lab.env.
std::map<std::string, std::string> ReadLabEnv(const std::string& dir) {
  std::map<std::string, std::string> env;
  std::ifstream in(dir + "/lab.env");
  std::string line;
  while (std::getline(in, line)) {
    const size_t eq = line.find('=');
    if (line.rfind("LAB_", 0) == 0 && eq != std::string::npos) {
      env[line.substr(0, eq)] = line.substr(eq + 1);
    }
  }
  return env;
}

// Why the running lab in `dir` cannot serve options `o`, or "" when it can:
// the same number of nodes, storage if asked, every LUN asked for at least
// as big, the same NFS lease.
std::string SharedLabMisfit(const std::string& dir, const ClusterLabOptions& o) {
  std::map<std::string, std::string> env = ReadLabEnv(dir);
  if (env["LAB_STATE"] != "running") {
    return absl::StrCat("its state is '", env["LAB_STATE"], "', not running");
  }
  if (env["LAB_NODES"] != absl::StrCat(o.nodes)) {
    return absl::StrCat("it has ", env["LAB_NODES"], " nodes, not ", o.nodes);
  }
  if (!o.storage) return "";
  if (env["LAB_STORAGE"] != "1") return "it has no storage node";
  if (o.sanlock && env["LAB_SANLOCK"] != "1") return "it runs no sanlock";
  if (env["LAB_NFS_LEASE"] != absl::StrCat(o.nfs_lease_seconds)) {
    return absl::StrCat("its NFS lease is ", env["LAB_NFS_LEASE"], " s, not ", o.nfs_lease_seconds);
  }
  std::map<std::string, int> have;
  for (absl::string_view spec : absl::StrSplit(env["LAB_LUNS"], ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> nm = absl::StrSplit(spec, ':');
    int mib = 0;
    if (absl::SimpleAtoi(nm.second, &mib)) have[nm.first] = mib;
  }
  for (const std::string& want : o.luns) {
    std::pair<std::string, std::string> nm = absl::StrSplit(want, ':');
    int mib = 0;
    (void)absl::SimpleAtoi(nm.second, &mib);
    auto it = have.find(nm.first);
    if (it == have.end() || it->second < mib) {
      return absl::StrCat("it has no LUN ", want, " (its LUNs: ", env["LAB_LUNS"], ")");
    }
  }
  return "";
}

}  // namespace

std::string Runfile(const std::string& rel) {
  for (const char* base : {getenv("TEST_SRCDIR"), getenv("RUNFILES_DIR")}) {
    if (base != nullptr) return absl::StrCat(base, "/latchkey/", rel);
  }
  return rel;  // `bazel run` starts in the runfiles tree
}

absl::StatusOr<ClusterLab::Result> RunCaptured(const std::vector<std::string>& argv) {
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
  ClusterLab::Result r;
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

absl::StatusOr<std::unique_ptr<ClusterLab>> ClusterLab::Start(const ClusterLabOptions& o) {
  if (o.nodes < 2 || o.nodes > 5) {
    return absl::InvalidArgumentError(absl::StrCat("cluster lab: nodes must be 2..5, not ", o.nodes));
  }
  std::unique_ptr<ClusterLab> lab(new ClusterLab);
  lab->tool_ = FindTool(o.tool);
  if (lab->tool_.empty() || access(lab->tool_.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cluster lab: lab/uml/uml-cluster not found (", lab->tool_,
        "): set LATCHKEY_UML_CLUSTER or depend on //lab:uml_cluster"));
  }
  lab->nodes_ = o.nodes;
  // A lab the whole test run shares (scripts/test starts it): use it when
  // it fits, after undoing what the last user left.
  const char* shared = getenv("LATCHKEY_LAB_DIR");
  if (o.dir.empty() && shared != nullptr && *shared != '\0') {
    const std::string why_not = SharedLabMisfit(shared, o);
    if (why_not.empty()) {
      lab->dir_ = shared;
      lab->shared_ = true;
      if (absl::Status st = lab->ToolOk({"reset", lab->dir_}); !st.ok()) {
        lab->shared_ = false;  // nothing of ours to stop
        return absl::UnavailableError(
            absl::StrCat("cluster lab: the shared lab ", shared, " cannot be reset: ", st.message()));
      }
      lab->running_ = true;
      fprintf(stderr, "cluster lab: using the shared lab %s\n", shared);
      return lab;
    }
    fprintf(stderr, "cluster lab: not using the shared lab %s: %s; starting one of our own\n",
            shared, why_not.c_str());
  }
  if (o.dir.empty()) {
    char tmpl[] = "/tmp/lk-lab.XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      return absl::InternalError(absl::StrCat("cluster lab: mkdtemp: ", strerror(errno)));
    }
    lab->dir_ = tmpl;
    lab->own_dir_ = true;
  } else {
    lab->dir_ = o.dir;
  }
  lab->running_ = true;  // a failed start may have left parts: Stop cleans them
  std::vector<std::string> args = {"start", lab->dir_, "--nodes", absl::StrCat(o.nodes)};
  if (o.storage) {
    args.push_back("--storage");
    for (const std::string& l : o.luns) {
      args.push_back("--lun");
      args.push_back(l);
    }
    args.push_back("--nfs-lease");
    args.push_back(absl::StrCat(o.nfs_lease_seconds));
    if (o.sanlock) args.push_back("--sanlock");
  }
  if (absl::Status st = lab->ToolOk(args); !st.ok()) {
    return st;  // the destructor stops what the start left
  }
  return lab;
}

ClusterLab::~ClusterLab() { (void)Stop(); }

absl::Status ClusterLab::Stop() {
  if (!running_) return absl::OkStatus();
  running_ = false;
  if (shared_) return ToolOk({"reset", dir_});  // the next suite's, as it was
  absl::Status st = ToolOk({"stop", dir_});
  if (own_dir_) {
    (void)RunCaptured({"/bin/rm", "-rf", "--one-file-system", dir_});
  }
  return st;
}

absl::StatusOr<ClusterLab::Result> ClusterLab::Tool(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"/bin/bash", tool_};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCaptured(argv);
}

absl::Status ClusterLab::ToolOk(const std::vector<std::string>& args) {
  absl::StatusOr<Result> r = Tool(args);
  if (!r.ok()) return r.status();
  if (r->status != 0) {
    return absl::InternalError(absl::StrCat("uml-cluster ", absl::StrJoin(args, " "),
                                            " failed (exit ", r->status, "): ", r->err, r->out));
  }
  return absl::OkStatus();
}

absl::StatusOr<ClusterLab::Result> ClusterLab::Run(int node, const std::vector<std::string>& argv,
                                           absl::Duration timeout) {
  std::vector<std::string> args = {"run", dir_, absl::StrCat(node), "--timeout",
                                   absl::StrCat(absl::ToInt64Seconds(timeout)), "--"};
  args.insert(args.end(), argv.begin(), argv.end());
  return Tool(args);
}

absl::StatusOr<std::string> ClusterLab::Sh(int node, const std::string& script,
                                       absl::Duration timeout) {
  absl::StatusOr<Result> r = Run(node, {"/bin/sh", "-c", script}, timeout);
  if (!r.ok()) return r.status();
  if (r->status != 0) {
    return absl::InternalError(absl::StrCat("node", node, ": '", script, "' exited ", r->status,
                                            ": ", r->err, r->out));
  }
  return r->out;
}

absl::Status ClusterLab::Install(const std::vector<std::string>& files) {
  std::vector<std::string> args = {"install", dir_};
  args.insert(args.end(), files.begin(), files.end());
  return ToolOk(args);
}

absl::StatusOr<int> ClusterLab::Spawn(int node, const std::string& log,
                                      const std::vector<std::string>& argv) {
  std::vector<std::string> args = {"spawn", dir_, absl::StrCat(node), "--log", log, "--"};
  args.insert(args.end(), argv.begin(), argv.end());
  absl::StatusOr<Result> r = Tool(args);
  if (!r.ok()) return r.status();
  int pid = 0;
  if (r->status != 0 || !absl::SimpleAtoi(absl::StripAsciiWhitespace(r->out), &pid) || pid <= 0) {
    return absl::InternalError(absl::StrCat("uml-cluster spawn on ", node, " failed (exit ",
                                            r->status, "): ", r->err, r->out));
  }
  return pid;
}

namespace {
std::vector<std::string> WithWire(std::vector<std::string> args, const std::string& wire) {
  if (!wire.empty()) {
    args.push_back("--wire");
    args.push_back(wire);
  }
  return args;
}
}  // namespace

absl::Status ClusterLab::Freeze(int node) { return ToolOk({"freeze", dir_, absl::StrCat(node)}); }
absl::Status ClusterLab::Thaw(int node) { return ToolOk({"thaw", dir_, absl::StrCat(node)}); }
absl::Status ClusterLab::Kill(int node) { return ToolOk({"kill", dir_, absl::StrCat(node)}); }
absl::Status ClusterLab::Reset() { return ToolOk({"reset", dir_}); }
absl::Status ClusterLab::Restart(int node) { return ToolOk({"restart", dir_, absl::StrCat(node)}); }
absl::Status ClusterLab::Cut(int node, const std::string& wire) {
  return ToolOk(WithWire({"cut", dir_, absl::StrCat(node)}, wire));
}
absl::Status ClusterLab::Heal(int node, const std::string& wire) {
  return ToolOk(WithWire({"heal", dir_, absl::StrCat(node)}, wire));
}
absl::Status ClusterLab::Partition(const std::vector<std::vector<int>>& sides) {
  std::vector<std::string> args = {"partition", dir_};
  for (const std::vector<int>& side : sides) args.push_back(absl::StrJoin(side, ","));
  return ToolOk(args);
}
absl::Status ClusterLab::Unpartition() { return ToolOk({"unpartition", dir_}); }
absl::Status ClusterLab::Netem(int node, const std::string& wire,
                               const std::vector<std::string>& spec) {
  std::vector<std::string> args = WithWire({"netem", dir_, absl::StrCat(node)}, wire);
  args.insert(args.end(), spec.begin(), spec.end());
  return ToolOk(args);
}
absl::Status ClusterLab::NetemClear(int node, const std::string& wire) {
  std::vector<std::string> args = WithWire({"netem", dir_, absl::StrCat(node)}, wire);
  args.push_back("--clear");
  return ToolOk(args);
}
absl::Status ClusterLab::StorageStall(int node) {
  return ToolOk({"storage-stall", dir_, absl::StrCat(node)});
}
absl::Status ClusterLab::StorageResume(int node) {
  return ToolOk({"storage-resume", dir_, absl::StrCat(node)});
}
absl::Status ClusterLab::StorageErrors(int node, const std::string& lun) {
  std::vector<std::string> args = {"storage-errors", dir_, absl::StrCat(node)};
  if (!lun.empty()) args.push_back(lun);
  return ToolOk(args);
}
absl::Status ClusterLab::StorageErrorsClear(int node, const std::string& lun) {
  std::vector<std::string> args = {"storage-errors-clear", dir_, absl::StrCat(node)};
  if (!lun.empty()) args.push_back(lun);
  return ToolOk(args);
}
absl::Status ClusterLab::DaemonKill(int node, const std::string& name, const std::string& signal) {
  std::vector<std::string> args = {"daemon-kill", dir_, absl::StrCat(node), name};
  if (!signal.empty()) args.push_back(signal);
  return ToolOk(args);
}
absl::StatusOr<std::string> ClusterLab::Status() {
  absl::StatusOr<Result> r = Tool({"status", dir_});
  if (!r.ok()) return r.status();
  if (r->status != 0) {
    return absl::InternalError(absl::StrCat("uml-cluster status failed (exit ", r->status,
                                            "): ", r->err));
  }
  return r->out;
}
absl::Status ClusterLab::NfsRestart() { return ToolOk({"nfs-restart", dir_}); }
absl::Status ClusterLab::ClockJump(int node, int64_t seconds) {
  return ToolOk({"clock-jump", dir_, absl::StrCat(node), absl::StrCat(seconds)});
}

absl::Duration ClusterLab::WaitDead(int node, absl::Time since, absl::Duration limit) {
  const std::string dead = absl::StrCat(node == kStorage ? "storage" : absl::StrCat("node", node),
                                        " dead");
  while (absl::Now() - since < limit) {
    absl::StatusOr<std::string> st = Status();
    if (st.ok() && absl::StrContains(*st, dead)) return absl::Now() - since;
    absl::SleepFor(absl::Milliseconds(250));
  }
  return absl::InfiniteDuration();
}

absl::Status ClusterLab::SetFencing(bool on) {
  return ToolOk({"fencing", dir_, on ? "on" : "off"});
}

absl::StatusOr<std::vector<LabEvent>> ClusterLab::Events() const {
  std::vector<LabEvent> events;
  std::ifstream in(dir_ + "/events.log");
  if (!in) return events;  // nothing happened yet
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> f = absl::StrSplit(line, absl::MaxSplits(' ', 3));
    LabEvent e;
    if (f.size() < 3 || !absl::SimpleAtoi(f[0], &e.unix_ms)) {
      return absl::DataLossError(absl::StrCat(dir_, "/events.log: bad line: ", line));
    }
    e.event = f[1];
    e.target = f[2];
    if (f.size() > 3) e.rest = f[3];
    events.push_back(std::move(e));
  }
  return events;
}

absl::Status ClusterLab::CollectLogs(const std::string& out) {
  std::vector<std::string> args = {"logs", dir_};
  const char* test_outputs = getenv("TEST_UNDECLARED_OUTPUTS_DIR");
  if (!out.empty()) {
    args.push_back(out);
  } else if (test_outputs != nullptr && *test_outputs != '\0') {
    args.push_back(absl::StrCat(test_outputs, "/lab-logs"));
  }
  return ToolOk(args);
}

}  // namespace lab
}  // namespace latchkey
