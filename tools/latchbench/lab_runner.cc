// latchbench on the cluster lab (lab_runner.h).
#include "tools/latchbench/lab_runner.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <atomic>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "tools/latchbench/failover.h"
#include "tools/latchbench/handoff_samples.h"

namespace latchkey {
namespace bench {

using json = nlohmann::json;
using lab::ClusterLab;

namespace {

// sanlock's lockspace and lease area on the LUN "lease" (256 MiB, 512-byte
// sectors): the lab's own lockspace "latchkey" is at 0, the test suites'
// leases live below 128 MiB or on NFS.
constexpr char kLeaseLun[] = "/dev/lab/lease";
constexpr char kSanlockLockspaceOffset[] = "134217728";  // 128 MiB
constexpr char kSanlockArea[] = "130M:64M";  // 62 slots of 1 MiB
constexpr char kNfsLocks[] = "/mnt/nfs/latchbench-locks";
// Ends `latchbench-node hold` processes: SIGTERM (a holder releases), then
// SIGKILL for any left after 3 s (the bracket keeps pkill from matching the
// shell running it).
constexpr char kStopHolds[] =
    "pkill -f 'latchbench-node [h]old ' || exit 0; for i in 1 2 3 4 5 6; do "
    "pgrep -f 'latchbench-node [h]old ' >/dev/null || exit 0; sleep 0.5; done; "
    "pkill -9 -f 'latchbench-node [h]old '; true";
// Raw libsanlock leases (made with `sanlock direct init -r`) above the
// area: one for the uncontended cycles, one for the hand-offs.
constexpr char kRawSanlockCycles[] = "lbraw-u:/dev/lab/lease:209715200";    // 200 MiB
constexpr char kRawSanlockHandoff[] = "lbraw-h:/dev/lab/lease:210763776";   // 201 MiB

// The in-process settings of `backend` on `node` (latchd's are the same,
// prefixed with the backend's name). The DLM lockspace is shared with
// latchbench-node's raw and in-process cycles on the same node.
std::string InProcessSettings(int node, const std::string& backend) {
  if (backend == "dlm") {
    return absl::StrCat("lockspaces = [ \"", LabRunner::kDlmLockspace, "\" ]\n",
                        "shared_lockspaces = [ \"", LabRunner::kDlmLockspace, "\" ]\n");
  }
  if (backend == "sanlock") {
    return absl::StrCat("host_id = ", node, "\nlockspaces = [ \"", LabRunner::kSanlockLockspace,
                        ":", kLeaseLun, ":", kSanlockLockspaceOffset, "\" ]\n",
                        "lease_areas = [ \"", LabRunner::kSanlockLockspace, ":", kLeaseLun, ":",
                        kSanlockArea, "\" ]\n", "io_timeout = ", LabRunner::kSanlockIoTimeout,
                        "\nnum_hosts = 8\n");
  }
  if (backend == "posixfd") return absl::StrCat("lock_dir = \"", kNfsLocks, "\"\n");
  return "";
}

// latchd's configuration on `node`: every backend measured with its
// in-process settings prefixed by its name (a key of a backend latchd does
// not load is an error), nop only as a benchmark backend.
std::string LatchdConf(int node, const std::vector<std::string>& backends) {
  std::string out = absl::StrCat(
      "backends = [ \"", absl::StrJoin(backends, "\", \""), "\" ]\n",
      "plugin_path = [ \"/shared/bin\" ]\n"
      "lockspace = \"latchbench\"\n"
      "state_dir = \"/run/latchbench\"\n"
      "socket = \"", LabRunner::kSocket, "\"\n"
      "log_syslog = 0\nlog_level = \"info\"\nterminate_grace_ms = 1000\n");
  for (const std::string& b : backends) {
    if (b == "nop") out += "benchmark_backends = [ \"nop\" ]\n";
    for (absl::string_view line : absl::StrSplit(InProcessSettings(node, b), '\n',
                                                 absl::SkipEmpty())) {
      absl::StrAppend(&out, b, "_", line, "\n");
    }
  }
  return out;
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
  f.close();
  if (!f) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace

std::string LabRunner::Lockspace(const std::string& backend) {
  if (backend == "sanlock") return kSanlockLockspace;
  return kDlmLockspace;  // dlm; posixfd and nop take any name
}

absl::StatusOr<std::unique_ptr<LabRunner>> LabRunner::Start(const LabSetup& setup) {
  std::unique_ptr<LabRunner> r(new LabRunner());
  r->backends_ = setup.backends;
  if (!setup.attach.empty()) setenv("LATCHKEY_LAB_DIR", setup.attach.c_str(), 1);
  lab::ClusterLabOptions o;
  o.storage = true;
  o.sanlock = true;
  o.tool = setup.uml_cluster;
  fprintf(stderr, "latchbench: %s the cluster lab (3 nodes, storage, sanlock)...\n",
          setup.attach.empty() ? "starting" : "attaching to");
  absl::StatusOr<std::unique_ptr<ClusterLab>> lab = ClusterLab::Start(o);
  if (!lab.ok()) return lab.status();
  r->lab_ = std::move(*lab);
  if (absl::Status s = r->Prepare(setup); !s.ok()) return s;
  return r;
}

absl::Status LabRunner::Prepare(const LabSetup& setup) {
  if (absl::Status s = lab_->Install(setup.install); !s.ok()) return s;
  const bool sanlock =
      std::find(backends_.begin(), backends_.end(), "sanlock") != backends_.end();
  // sanlock: latchbench's own lockspace, made afresh (a run killed before
  // its end may have left one, and the lab's LUNs outlive runs).
  if (sanlock) {
    absl::StatusOr<std::string> init = lab_->Sh(
        1, absl::StrCat("dd if=/dev/zero of=", kLeaseLun, " bs=1M seek=128 count=3 oflag=direct "
                        "2>&1 && sanlock direct init -o ", kSanlockIoTimeout, " -s ",
                        kSanlockLockspace, ":0:", kLeaseLun, ":", 128 * 1048576,
                        " && sanlock direct init -r ", kSanlockLockspace, ":", kRawSanlockCycles,
                        " && sanlock direct init -r ", kSanlockLockspace, ":",
                        kRawSanlockHandoff));
    if (!init.ok()) return init.status();
  }
  if (absl::Status s = lab_->Sh(1, absl::StrCat("mkdir -p ", kNfsLocks)).status(); !s.ok()) {
    return s;
  }
  for (int n = 1; n <= lab_->nodes(); ++n) {
    const std::string conf = absl::StrCat("/latchbench/latchd-", n, ".conf");
    if (absl::Status s = lab_->Sh(n, "mkdir -p /shared/latchbench").status(); !s.ok()) return s;
    if (absl::Status s = WriteFile(lab_->shared() + conf, LatchdConf(n, backends_)); !s.ok()) {
      return s;
    }
    for (const std::string& b : backends_) {
      const std::string settings = absl::StrCat("/latchbench/", b, "-", n, ".conf");
      if (absl::Status s = WriteFile(lab_->shared() + settings, InProcessSettings(n, b));
          !s.ok()) {
        return s;
      }
    }
    if (absl::Status s = StartLatchd(n); !s.ok()) return s;
  }
  if (sanlock) {
    // The area is formatted once, from one node (latchctl leases-format).
    absl::StatusOr<ClusterLab::Result> f = lab_->Run(
        1, {"/shared/bin/latchctl", "--socket", kSocket, "leases-format", "--lockspace",
            kSanlockLockspace, "--force"},
        absl::Seconds(120));
    if (!f.ok()) return f.status();
    if (f->status != 0) {
      return absl::InternalError(absl::StrCat("formatting the sanlock lease area: ", f->err));
    }
  }
  absl::StatusOr<std::string> token =
      lab_->Sh(1, "corosync-cmapctl -g runtime.config.totem.token 2>/dev/null | sed 's/.*= //'");
  absl::StatusOr<std::string> backends_text =
      lab_->Sh(1, absl::StrCat("latchctl --plugin-path /shared/bin backends; latchctl --socket ",
                               kSocket, " status"));
  absl::StatusOr<std::string> kernel = lab_->Sh(1, "uname -r");
  // The plugins' capabilities as they declare them (failover's expectations).
  absl::StatusOr<std::string> caps_text =
      lab_->Sh(1, "latchctl --plugin-path /shared/bin backends --json");
  json caps = json::object();
  if (caps_text.ok()) {
    const json list = json::parse(*caps_text, nullptr, false);
    if (list.is_array()) {
      for (const json& p : list) {
        if (p.is_object() && p.contains("name")) caps[p["name"].get<std::string>()] = p;
      }
    }
  }
  for (const std::string& b : setup.backends) {
    if (!caps.contains(b)) {
      return absl::InternalError(absl::StrCat(
          "latchctl backends --json in node1 does not list ", b, ": ",
          caps_text.ok() ? caps_text->substr(0, 300) : caps_text.status().ToString()));
    }
  }
  int token_ms = 0;
  topology_ = {
      {"lab_dir", lab_->dir()},
      {"nodes", lab_->nodes()},
      {"node_kernel", kernel.ok() ? std::string(absl::StripAsciiWhitespace(*kernel)) : ""},
      {"node_cpus", "one UML process per node, sharing the host's CPUs"},
      {"storage", "storage node: iSCSI LUNs (LIO) and an NFSv4 export, on its own wire"},
      {"corosync_token_ms",
       token.ok() && absl::SimpleAtoi(absl::StripAsciiWhitespace(*token), &token_ms) ? token_ms
                                                                                     : -1},
      {"nfs_lease_s", lab::ClusterLabOptions().nfs_lease_seconds},
      {"sanlock",
       {{"lockspace", absl::StrCat(kSanlockLockspace, ":", kLeaseLun, ":", kSanlockLockspaceOffset)},
        {"lease_area", absl::StrCat(kLeaseLun, ":", kSanlockArea)},
        {"raw_leases", {kRawSanlockCycles, kRawSanlockHandoff}},
        {"io_timeout_s", kSanlockIoTimeout}}},
      {"dlm", {{"lockspace", kDlmLockspace}}},
      {"posixfd", {{"lock_dir", absl::StrCat(kNfsLocks, " (NFSv4, storage node)")}}},
      {"latchd_backends",
       backends_text.ok() ? *backends_text : backends_text.status().ToString()},
      {"capabilities", caps},
  };
  return absl::OkStatus();
}

absl::Status LabRunner::StartLatchd(int n) {
  const std::string conf = absl::StrCat("/shared/latchbench/latchd-", n, ".conf");
  const std::string log = absl::StrCat("/shared/node", n, "/latchbench-latchd.log");
  // One just killed may still be closing its files (its state directory
  // stays taken until it is gone).
  (void)lab_->Sh(n, absl::StrCat("for i in $(seq 600); do pgrep -f 'latchd --config ",
                                 conf.substr(0, conf.size() - 1), "[", conf.substr(conf.size() - 1),
                                 "]' >/dev/null || exit 0; sleep 0.1; done"),
                 absl::Seconds(70));
  absl::StatusOr<int> pid = lab_->Spawn(n, log, {"latchd", "--config", conf});
  if (!pid.ok()) return pid.status();
  latchds_.erase(std::remove_if(latchds_.begin(), latchds_.end(),
                                [&](const std::pair<int, int>& l) { return l.first == n; }),
                 latchds_.end());
  latchds_.push_back({n, *pid});
  absl::StatusOr<std::string> up = lab_->Sh(
      n, absl::StrCat("for i in $(seq 300); do latchctl --socket ", kSocket,
                      " status >/dev/null 2>&1 && exit 0; sleep 0.1; done; "
                      "echo 'latchd did not answer in 30 s:' >&2; tail -n 20 ",
                      log, " >&2; exit 1"));
  return up.ok() ? absl::OkStatus() : up.status();
}

LabRunner::~LabRunner() {
  if (lab_ == nullptr) return;
  // The NL holders (sh, sleep and latchbench-node; only latchbench runs them).
  for (const auto& [node, pid] : holders_) {
    (void)lab_->Sh(node, "pkill -f 'latchbench-node [h]old-nl'; pkill -f '[s]leep 1000000'; true");
  }
  // Contend and hand-off loops end by themselves; after a failure or an
  // interruption one may still wait for its go file or a grant.
  for (int n = 1; n <= lab_->nodes(); ++n) {
    (void)lab_->Sh(n, "pkill -f 'latchbench-node (contend|handoff)'; true");
  }
  for (const auto& [node, pid] : latchds_) {
    (void)lab_->Sh(node, absl::StrCat("kill ", pid, " 2>/dev/null; for i in $(seq 50); do "
                                      "kill -0 ", pid, " 2>/dev/null || break; sleep 0.1; done; "
                                      "kill -9 ", pid, " 2>/dev/null; true"));
    (void)lab_->Sh(node, absl::StrCat("sanlock client rem_lockspace -s ", kSanlockLockspace, ":",
                                      node, ":", kLeaseLun, ":", 128 * 1048576,
                                      " >/dev/null 2>&1; true"),
                   absl::Seconds(40));
  }
  (void)lab_->CollectLogs();
  if (absl::Status s = lab_->Stop(); !s.ok()) {
    fprintf(stderr, "latchbench: stopping the lab: %s\n", s.ToString().c_str());
  }
}

absl::StatusOr<json> LabRunner::MeasureClocks() {
  constexpr int kPort = 7411, kProbes = 200;
  absl::StatusOr<int> server = lab_->Spawn(
      1, "/tmp/latchbench-clock.log",
      {"/shared/bin/latchbench-node", "clock-serve", absl::StrCat(kPort)});
  if (!server.ok()) return server.status();
  json nodes = json::array();
  absl::Status failed;
  for (int n = 2; n <= lab_->nodes() && failed.ok(); ++n) {
    // node 1's clock minus node n's, from node n; the first probes may race
    // the server's bind, and later ones are answered.
    absl::StatusOr<ClusterLab::Result> r =
        lab_->Run(n, {"/shared/bin/latchbench-node", "clock-probe", "10.77.0.1",
                      absl::StrCat(kPort), absl::StrCat(kProbes)},
                  absl::Seconds(60));
    json o;
    if (!r.ok()) {
      failed = r.status();
    } else if (r->status != 0 || !(o = json::parse(r->out, nullptr, false)).is_object()) {
      failed = absl::InternalError(absl::StrCat("clock probe from node", n, ": ", r->err, r->out));
    } else {
      o["offset_ns"] = -o["offset_ns"].get<int64_t>();  // node n's minus node 1's
      o["node"] = n;
      clock_offsets_[n] = o["offset_ns"].get<int64_t>();
      clock_uncertainty_[n] = o["uncertainty_ns"].get<int64_t>();
      nodes.push_back(o);
    }
  }
  (void)lab_->Sh(1, absl::StrCat("kill ", *server, " 2>/dev/null; true"));
  if (!failed.ok()) return failed;
  json clocks = {{"reference", "node1"},
                 {"nodes", nodes},
                 {"measured_at", absl::ToUnixNanos(absl::Now())},
                 {"method", "NTP-style UDP exchange over the cluster wire, the exchange with "
                            "the shortest round trip of 200; true offset within +- uncertainty"}};
  return clocks;
}

absl::StatusOr<std::vector<double>> LabRunner::Cycles(int node, const std::string& backend,
                                                      const std::string& path, LockMode mode,
                                                      const std::string& lease, int warmup,
                                                      int cycles, double max_seconds) {
  std::vector<std::string> argv = {
      "/shared/bin/latchbench-node", "cycles", backend, path, std::string(LockModeName(mode)),
      Lockspace(backend), lease, absl::StrCat(warmup), absl::StrCat(cycles),
      absl::StrCat("--settings=/shared/latchbench/", backend, "-", node, ".conf"),
      absl::StrCat("--socket=", kSocket),
      absl::StrCat("--raw-file=/mnt/nfs/latchbench-locks/raw-", lease),
      absl::StrCat("--raw-sanlock=", kRawSanlockCycles),
      absl::StrCat("--max-seconds=", max_seconds)};
  absl::StatusOr<ClusterLab::Result> r = lab_->Run(node, argv, absl::Minutes(30));
  if (!r.ok()) return r.status();
  if (r->status != 0) {
    return absl::InternalError(absl::StrCat("node", node, ": ", absl::StripAsciiWhitespace(r->err),
                                            r->status == 124 ? " (timed out)" : ""));
  }
  json j = json::parse(r->out, nullptr, false);
  if (j.is_discarded() || !j.contains("samples") || !j["samples"].is_array()) {
    return absl::InternalError(absl::StrCat("node", node, " printed no samples: ",
                                            r->out.substr(0, 200)));
  }
  last_cost_ = j.contains("cost") ? j["cost"] : json();
  if (last_cost_.is_object()) last_cost_["node"] = absl::StrCat("node", node);
  return j["samples"].get<std::vector<double>>();
}

absl::StatusOr<std::vector<double>> LabRunner::Handoffs(const std::string& backend,
                                                        const std::string& path,
                                                        const std::string& lease, int rounds,
                                                        int hold_ms, double max_seconds) {
  std::vector<HandoffEvent> events;
  std::vector<std::string> outs;
  for (int node : {1, 2}) {
    const std::string out = absl::StrCat("/latchbench/ho-", lease, "-", node, ".log");
    outs.push_back(out);
    std::remove((lab_->shared() + out).c_str());
    absl::StatusOr<int> pid = lab_->Spawn(
        node, absl::StrCat("/shared/node", node, "/latchbench-handoff.log"),
        {"/shared/bin/latchbench-node", "handoff", backend, path, Lockspace(backend), lease,
         absl::StrCat(rounds), absl::StrCat(hold_ms), "/shared" + out,
         absl::StrCat("--settings=/shared/latchbench/", backend, "-", node, ".conf"),
         absl::StrCat("--socket=", kSocket),
         absl::StrCat("--raw-file=/mnt/nfs/latchbench-locks/raw-", lease),
         absl::StrCat("--raw-sanlock=", kRawSanlockHandoff),
         absl::StrCat("--max-seconds=", max_seconds)});
    if (!pid.ok()) return pid.status();
  }
  // Both end with "done" or "error ...": a waiting acquire gives up after
  // 120 s, so this bounds the wait.
  const double limit = (max_seconds > 0 ? max_seconds : 600) + 150;
  for (size_t i = 0; i < outs.size(); ++i) {
    std::string last;
    for (double waited = 0;; waited += 0.1) {
      last = LastLine(outs[i]);
      if (last == "done" || absl::StartsWith(last, "error ")) break;
      if (waited > limit) {
        return absl::DeadlineExceededError(
            absl::StrCat("node", i + 1, "'s hand-off loop did not end in ", limit, " s"));
      }
      usleep(100000);
    }
    if (last != "done") {
      return absl::InternalError(absl::StrCat("node", i + 1, ": ", last.substr(6)));
    }
    std::ifstream in(lab_->shared() + outs[i]);
    std::stringstream log;
    log << in.rdbuf();
    std::remove((lab_->shared() + outs[i]).c_str());
    const int node = static_cast<int>(i) + 1;
    if (absl::Status s = ParseHandoffLog(log.str(), node, absl::StrCat("node", node), &events);
        !s.ok()) {
      return s;
    }
  }
  if (clock_offsets_.empty()) {
    if (absl::StatusOr<json> c = MeasureClocks(); !c.ok()) return c.status();
  }
  return HandoffSamples(std::move(events), clock_offsets_.count(2) ? clock_offsets_[2] : 0,
                        clock_uncertainty_.count(2) ? clock_uncertainty_[2] : 0, lease);
}

std::string LabRunner::LastLine(const std::string& out) const {
  std::ifstream in(lab_->shared() + out);
  std::string line, last;
  while (std::getline(in, line)) last = line;
  return last;
}

absl::StatusOr<std::vector<OwnerTally>> LabRunner::Contend(
    const std::string& backend, const std::string& path, int nodes, int owners,
    const std::string& prefix, int resources, bool hot, double seconds, uint64_t seed,
    int hold_us) {
  if (nodes < 1 || nodes > lab_->nodes()) {
    return absl::InvalidArgumentError(absl::StrCat("contended: ", nodes, " nodes of ",
                                                   lab_->nodes()));
  }
  const std::string tag = absl::StrCat("ct-", prefix, "-", path);
  const std::string go = absl::StrCat("/latchbench/", tag, ".go");
  std::remove((lab_->shared() + go).c_str());
  std::vector<std::string> outs;
  for (int node = 1; node <= nodes; ++node) {
    const std::string out = absl::StrCat("/latchbench/", tag, "-", node, ".out");
    outs.push_back(out);
    std::remove((lab_->shared() + out).c_str());
    absl::StatusOr<int> pid = lab_->Spawn(
        node, absl::StrCat("/shared/node", node, "/latchbench-contend.log"),
        {"/shared/bin/latchbench-node", "contend", backend, path, Lockspace(backend), prefix,
         absl::StrCat(resources), absl::StrCat(owners), absl::StrCat(seconds),
         absl::StrCat(seed + static_cast<uint64_t>(node) * 1000), hot ? "hot" : "uniform",
         absl::StrCat(hold_us), "/shared" + out, "/shared" + go,
         absl::StrCat("--settings=/shared/latchbench/", backend, "-", node, ".conf"),
         absl::StrCat("--socket=", kSocket),
         absl::StrCat("--raw-file=/mnt/nfs/latchbench-locks/raw-", prefix)});
    if (!pid.ok()) return pid.status();
  }
  const auto failed = [&](size_t i, const std::string& last) {
    return absl::InternalError(absl::StrCat("node", i + 1, ": ", last.substr(6)));
  };
  // The end of node i's contend log, for a node that never said anything.
  const auto log_tail = [&](size_t i) {
    std::ifstream in(absl::StrCat(lab_->shared(), "/node", i + 1, "/latchbench-contend.log"));
    std::string line, last;
    while (std::getline(in, line)) {
      if (!line.empty()) last = line;
    }
    return last.empty() ? std::string("its log is empty") : "its log ends: " + last;
  };
  // Every node ready (its paths made), then go; a node that cannot start
  // ends the block (the others are released by the go file and stop).
  for (size_t i = 0; i < outs.size(); ++i) {
    for (double waited = 0;; waited += 0.05) {
      const std::string last = LastLine(outs[i]);
      if (last == "ready") break;
      if (absl::StartsWith(last, "error ")) {
        (void)WriteFile(lab_->shared() + go, "go\n");
        return failed(i, last);
      }
      if (waited > 120) {
        (void)WriteFile(lab_->shared() + go, "go\n");
        return absl::DeadlineExceededError(
            absl::StrCat("node", i + 1, " was not ready to contend in 120 s; ", log_tail(i)));
      }
      usleep(50000);
    }
  }
  if (absl::Status s = WriteFile(lab_->shared() + go, "go\n"); !s.ok()) return s;
  std::vector<OwnerTally> all;
  absl::Status first_error;
  for (size_t i = 0; i < outs.size(); ++i) {
    std::string last;
    for (double waited = 0;; waited += 0.1) {
      last = LastLine(outs[i]);
      if (last == "done" || absl::StartsWith(last, "error ")) break;
      if (waited > seconds + 180) {
        last = "error did not finish in time";
        break;
      }
      usleep(100000);
    }
    if (last != "done") {
      if (first_error.ok()) first_error = failed(i, last);
      continue;
    }
    std::ifstream in(lab_->shared() + outs[i]);
    std::string line;
    json tallies;
    while (std::getline(in, line)) {
      if (!line.empty() && line[0] == '{') tallies = json::parse(line, nullptr, false);
    }
    absl::StatusOr<std::vector<OwnerTally>> t = TalliesFromJson(tallies);
    if (!t.ok()) {
      if (first_error.ok()) {
        first_error = absl::InternalError(absl::StrCat("node", i + 1, ": ", t.status().message()));
      }
      continue;
    }
    all.insert(all.end(), t->begin(), t->end());
  }
  for (const std::string& out : outs) std::remove((lab_->shared() + out).c_str());
  std::remove((lab_->shared() + go).c_str());
  if (!first_error.ok()) return first_error;
  return all;
}

absl::Status LabRunner::MasterOn(int node, const std::vector<std::string>& names) {
  std::vector<std::string> argv = {"/shared/bin/latchbench-node", "hold-nl", kDlmLockspace};
  argv.insert(argv.end(), names.begin(), names.end());
  const std::string log = absl::StrCat("/tmp/latchbench-hold-nl.", holders_.size(), ".log");
  // Its stdin is a pipe nobody writes: it holds until killed.
  absl::StatusOr<int> pid =
      lab_->Spawn(node, log, {"sh", "-c", absl::StrCat("sleep 1000000 | ", absl::StrJoin(argv, " "))});
  if (!pid.ok()) return pid.status();
  holders_.push_back({node, *pid});
  absl::StatusOr<std::string> held = lab_->Sh(
      node, absl::StrCat("for i in $(seq 100); do grep -q holding ", log,
                         " && exit 0; sleep 0.1; done; cat ", log, " >&2; exit 1"));
  return held.ok() ? absl::OkStatus() : held.status();
}

absl::StatusOr<json> LabRunner::Failover(const std::string& backend, const std::string& path,
                                         const std::string& fault, const std::string& lease,
                                         double limit_s) {
  constexpr int kHolder = 2, kSurvivor = 3;
  if (lab_->nodes() < kSurvivor) return absl::FailedPreconditionError("failover needs 3 nodes");
  const std::string holder_out = "/latchbench/fo-holder.out";
  const std::string survivor_out = "/latchbench/fo-survivor.out";
  const std::string detect_out = "/latchbench/fo-detect.out";
  for (const std::string& f : {holder_out, survivor_out, detect_out}) {
    std::remove((lab_->shared() + f).c_str());
  }
  const auto hold_argv = [&](int node, const std::string& out, int wait_s) {
    return std::vector<std::string>{
        "/shared/bin/latchbench-node", "hold", backend, path, Lockspace(backend), lease,
        absl::StrCat(wait_s), "/shared" + out,
        absl::StrCat("--settings=/shared/latchbench/", backend, "-", node, ".conf"),
        absl::StrCat("--socket=", kSocket),
        absl::StrCat("--raw-file=/mnt/nfs/latchbench-locks/raw-", lease)};
  };
  // Waits until `out`'s last line starts with `want` (or is an error).
  const auto await_line = [&](const std::string& out, const std::string& want,
                              double seconds) -> absl::StatusOr<std::string> {
    for (double waited = 0;; waited += 0.05) {
      const std::string last = LastLine(out);
      if (absl::StartsWith(last, want)) return last;
      if (absl::StartsWith(last, "error ")) return absl::InternalError(last.substr(6));
      if (waited > seconds) {
        return absl::DeadlineExceededError(
            absl::StrCat("no '", want, "' in ", out, " after ", seconds, " s"));
      }
      usleep(50000);
    }
  };
  // 1. Node 2 takes the lease (a restarted node's latchd may still be
  // joining sanlock's lockspace: up to 150 s).
  absl::StatusOr<int> holder = lab_->Spawn(
      kHolder, "/shared/node2/latchbench-hold.log", hold_argv(kHolder, holder_out, 150));
  if (!holder.ok()) return holder.status();
  if (absl::StatusOr<std::string> g = await_line(holder_out, "grant", 170); !g.ok()) {
    return absl::InternalError(absl::StrCat("node2 (the holder): ", g.status().message()));
  }
  // 2. Node 3 asks for it and waits; a grant now would be two holders.
  absl::StatusOr<int> survivor =
      lab_->Spawn(kSurvivor, "/shared/node3/latchbench-hold.log",
                  hold_argv(kSurvivor, survivor_out, static_cast<int>(limit_s) + 60));
  if (!survivor.ok()) return survivor.status();
  if (absl::StatusOr<std::string> w = await_line(survivor_out, "waiting", 60); !w.ok()) {
    return absl::InternalError(absl::StrCat("node3 (the survivor): ", w.status().message()));
  }
  sleep(1);  // its request queued (latchd: asked the backend)
  if (absl::StartsWith(LastLine(survivor_out), "grant")) {
    return absl::InternalError(absl::StrCat("two holders: node3 was granted ", lease,
                                            " while node2 held it, before any fault"));
  }
  const std::string detector = DetectorScript(backend, kHolder, Lockspace(backend),
                                              "/shared" + detect_out);
  if (!detector.empty()) {
    absl::StatusOr<int> d =
        lab_->Spawn(kSurvivor, "/tmp/latchbench-detect.log", {"sh", "-c", detector});
    if (!d.ok()) return d.status();
    usleep(300000);  // its first look
  }
  // owner-kill is timed on the nodes' clocks (below): their offsets afresh,
  // since a reset after an earlier trial sets every node's clock again.
  if (fault == "owner-kill") {
    if (absl::StatusOr<json> c = MeasureClocks(); !c.ok()) {
      return absl::Status(c.status().code(),
                          absl::StrCat("clocks before owner-kill: ", c.status().message()));
    }
  }
  // 3. The fault; its time is the lab's event for it when there is one.
  TrialStamps st;
  st.backend = backend;
  st.locks_survive_holder = LocksSurviveHolder(backend);
  st.path = path;
  st.fault = fault;
  st.limit_s = limit_s;
  const size_t events_before = [&] {
    absl::StatusOr<std::vector<lab::LabEvent>> e = lab_->Events();
    return e.ok() ? e->size() : 0;
  }();
  absl::Status injected;
  int64_t kill_ns = 0;  // owner-kill: node 2's clock at the kill
  const int64_t asked = absl::ToUnixNanos(absl::Now());
  if (fault == "node-kill") {
    injected = lab_->Kill(kHolder);
  } else if (fault == "node-freeze") {
    injected = lab_->Freeze(kHolder);
  } else if (fault == "cut") {
    injected = lab_->Cut(kHolder, "both");
  } else if (fault == "partition") {
    injected = lab_->Partition({{kHolder}, {1, kSurvivor}});
  } else if (fault == "storage-stall") {
    injected = lab_->StorageStall(kHolder);
  } else if (fault == "daemon-kill") {
    injected = lab_->DaemonKill(kHolder, LockDaemon(backend), "KILL");
  } else if (fault == "owner-kill") {
    // Node 2's clock just before the kill: the trial is then timed on the
    // nodes' clocks (below), not the lab command's round trip.
    absl::StatusOr<std::string> out =
        lab_->Sh(kHolder, absl::StrCat("date +%s%N; kill -9 ", *holder));
    injected = out.status();
    if (out.ok() && !absl::SimpleAtoi(absl::StripAsciiWhitespace(*out), &kill_ns)) kill_ns = 0;
  } else if (fault == "latchd-kill") {
    injected = lab_->DaemonKill(kHolder, "latchd", "KILL");
    if (injected.ok()) injected = StartLatchd(kHolder);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown fault '", fault, "'"));
  }
  if (!injected.ok()) return injected;
  // The lab's event for the fault (logged once it took effect); without one
  // (owner-kill) the time the command was given: the kill came after it, so
  // the grant is never counted as earlier than it was.
  st.injected = asked;
  {
    absl::StatusOr<std::vector<lab::LabEvent>> e = lab_->Events();
    if (e.ok() && e->size() > events_before) st.injected = (*e)[events_before].unix_ms * 1000000;
  }
  // 4. Watch: the survivor's grant, the detector, the holder's node (the
  // lab's status, once a second, beside the 25 ms look at the files).
  std::atomic<bool> done{false};
  std::atomic<int64_t> holder_down{0};
  std::thread watch([&] {
    while (!done) {
      absl::StatusOr<std::string> status = lab_->Status();
      if (status.ok()) {
        for (absl::string_view l : absl::StrSplit(*status, '\n')) {
          if (absl::StartsWith(l, "node2 ") && !absl::StrContains(l, "running")) {
            holder_down = absl::ToUnixNanos(absl::Now());
          }
        }
      }
      if (holder_down != 0) return;
      for (int i = 0; i < 10 && !done; ++i) usleep(100000);
    }
  });
  const absl::Duration window = Expected(fault, st.locks_survive_holder) == "kept"
                                    ? absl::Seconds(std::min(limit_s, 20.0))
                                    : absl::Seconds(limit_s);
  const absl::Time deadline = absl::FromUnixNanos(st.injected) + window;
  std::string survivor_error;
  while (absl::Now() < deadline) {
    const int64_t now = absl::ToUnixNanos(absl::Now());
    if (st.detected == 0 || st.dead == 0) {
      std::ifstream in(lab_->shared() + detect_out);
      std::string what;
      long long ns;
      while (in >> what >> ns) {
        if (st.detected == 0) {
          st.detected = now;
          st.detected_as = what;
        }
        if (what == "dead" && st.dead == 0) st.dead = now;
      }
    }
    const std::string last = LastLine(survivor_out);
    if (absl::StartsWith(last, "grant")) {
      st.granted = now;
      break;
    }
    if (absl::StartsWith(last, "error ")) {
      survivor_error = last.substr(6);
      break;
    }
    usleep(25000);
  }
  st.ended = absl::ToUnixNanos(absl::Now());
  done = true;
  watch.join();
  // owner-kill: from node 2's stamp at the kill to node 3's at its grant,
  // both mapped onto node 1's clock with the measured offsets (their
  // uncertainty recorded), instead of the host's 25 ms look at the files.
  bool node_clocks = false;
  int64_t grant_ns = 0;
  if (kill_ns > 0 && st.granted != 0 && clock_offsets_.count(kHolder) &&
      clock_offsets_.count(kSurvivor) &&
      absl::SimpleAtoi(absl::StripPrefix(LastLine(survivor_out), "grant "), &grant_ns)) {
    const int64_t d = (grant_ns - clock_offsets_[kSurvivor]) - (kill_ns - clock_offsets_[kHolder]);
    st.granted = st.injected + d;
    node_clocks = true;
  }
  st.holder_down = holder_down;
  if (absl::StatusOr<std::vector<lab::LabEvent>> e = lab_->Events(); e.ok()) {
    for (size_t i = events_before; i < e->size(); ++i) {
      const lab::LabEvent& ev = (*e)[i];
      st.events.push_back({ev.unix_ms, ev.event, ev.target, ev.rest});
    }
  }
  json record = TrialRecord(st);
  if (node_clocks) {
    record["timed_on"] = "node clocks";
    record["clock_uncertainty_s"] =
        (clock_uncertainty_[kHolder] + clock_uncertainty_[kSurvivor]) / 1e9;
  }
  if (!survivor_error.empty()) record["survivor_error"] = survivor_error;
  // 5. Back to a whole lab: the survivor lets go (the holder's node may be
  // gone), every fault lifted, dead nodes restarted, every latchd running.
  // (Each pattern's bracket keeps pkill from matching the shell running it.)
  // A survivor still waiting does not see SIGTERM until its request ends:
  // SIGKILL after 3 s (latchd then drops a dead owner's request).
  (void)lab_->Sh(kSurvivor, "pkill -f '[w]hile :; do'; " + std::string(kStopHolds));
  // An owner or latchd killed harms no machine: no reset needed.
  const bool machines_harmed = fault != "owner-kill" && fault != "latchd-kill";
  if (absl::Status s = RestoreAfterFault(machines_harmed); !s.ok()) {
    return absl::InternalError(absl::StrCat("after ", fault, ": ", s.message()));
  }
  return record;
}

absl::Status LabRunner::RestoreAfterFault(bool reset) {
  if (reset) {
    if (absl::Status s = lab_->Reset(); !s.ok()) return s;
    clock_offsets_.clear();  // a restarted node's clock was set anew
    clock_uncertainty_.clear();
  }
  for (int n = 1; n <= lab_->nodes(); ++n) {
    (void)lab_->Sh(n, kStopHolds);
    int pid = 0;
    for (const auto& [node, p] : latchds_) {
      if (node == n) pid = p;
    }
    absl::StatusOr<ClusterLab::Result> alive =
        lab_->Run(n, {"sh", "-c", absl::StrCat("kill -0 ", pid, " && latchctl --socket ", kSocket,
                                               " status >/dev/null 2>&1")});
    if (alive.ok() && alive->status == 0) continue;
    fprintf(stderr, "latchbench: starting node%d's latchd again\n", n);
    if (absl::Status s = StartLatchd(n); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<json> LabRunner::Scale(const std::string& backend, int locks,
                                      const std::string& prefix) {
  constexpr int kNode = 1;
  // A request of 500 sanlock leases takes minutes (each a slot and a paxos
  // acquire): latchctl's own 30 s would give up first.
  const std::string ctl = absl::StrCat("latchctl --socket ", kSocket, " --timeout 1800 ");
  // What the node holds in memory: latchd's and the lock daemon's resident
  // set and open files, and the kernel DLM's lock and resource objects.
  const std::string memory = absl::StrCat(
      "p=$(pidof latchd | cut -d' ' -f1); s=$(pidof sanlock | cut -d' ' -f1); "
      "echo latchd_rss_kib $(awk '/^VmRSS/{print $2}' /proc/$p/status); "
      "echo latchd_fds $(ls /proc/$p/fd | wc -l); "
      "[ -n \"$s\" ] && echo sanlock_rss_kib $(awk '/^VmRSS/{print $2}' /proc/$s/status); "
      "awk '$1==\"dlm_lkb\"||$1==\"dlm_rsb\"{print $1\"_objects\", $2}' /proc/slabinfo "
      "2>/dev/null; true");
  const auto read_memory = [&]() -> json {
    json m = json::object();
    absl::StatusOr<std::string> out = lab_->Sh(kNode, memory);
    if (!out.ok()) return m;
    for (absl::string_view line : absl::StrSplit(*out, '\n', absl::SkipEmpty())) {
      std::vector<std::string> kv = absl::StrSplit(line, ' ', absl::SkipEmpty());
      int64_t v = 0;
      if (kv.size() == 2 && absl::SimpleAtoi(kv[1], &v)) m[kv[0]] = v;
    }
    return m;
  };
  json r = {{"backend", backend}, {"locks", locks}, {"node", "node1"}, {"path", "latchd"}};
  // The owner: a process of its own, policy ignore (this is about locks).
  const std::string uuid = absl::StrCat("5ca1e000-0000-4000-8000-", absl::StrFormat("%012d", locks));
  absl::StatusOr<std::string> owner = lab_->Sh(
      kNode, absl::StrCat("sleep 1000000 >/dev/null 2>&1 </dev/null & echo $!; ", ctl,
                          "register --owner latchbench-scale --uuid ", uuid,
                          " --pid $! --policy ignore >/dev/null"));
  if (!owner.ok()) return owner.status();
  const std::string owner_pid(absl::StripAsciiWhitespace(*owner));
  r["memory_before"] = read_memory();
  // Take: requests of 500 leases (a request line is at most 64 KiB), timed
  // in the node; the first refusal ends it and is recorded.
  absl::StatusOr<ClusterLab::Result> take = lab_->Run(
      kNode,
      {"/bin/sh", "-c",
       absl::StrCat("t0=$(date +%s%N); i=0; while [ $i -lt ", locks, " ]; do args=; j=0; "
                    "while [ $j -lt 500 ] && [ $i -lt ", locks, " ]; do args=\"$args --lease ",
                    prefix, "-$i\"; i=$((i+1)); j=$((j+1)); done; ", ctl, "acquire --backend ",
                    backend, " --lockspace ", Lockspace(backend), " $args --uuid ", uuid,
                    " >/dev/null || { echo \"failed $i\"; exit 1; }; done; "
                    "echo took $(( $(date +%s%N) - t0 ))")},
      absl::Minutes(30));
  if (!take.ok()) return take.status();
  int64_t ns = 0;
  absl::string_view took = absl::StripAsciiWhitespace(take->out);
  if (take->status != 0 || !absl::ConsumePrefix(&took, "took ") ||
      !absl::SimpleAtoi(took, &ns)) {
    r["outcome"] = absl::StrCat("taking them failed (", absl::StripAsciiWhitespace(take->out),
                                " of ", locks, "): ",
                                absl::StripAsciiWhitespace(take->err).substr(0, 400));
    r["take_s"] = nullptr;
  } else {
    r["take_s"] = ns / 1e9;
    r["outcome"] = "held";
  }
  r["memory_held"] = read_memory();
  // Adopt: latchd killed -9 and started again; its log says how long
  // adopting took and how many it adopted.
  if (r["outcome"] == "held") {
    const std::string log = absl::StrCat("/shared/node", kNode, "/latchbench-latchd.log");
    // Gone only once the kernel closed its files (thousands of NFS locks
    // take seconds to unlock); a latchd started before finds it running.
    if (absl::Status s = lab_->Sh(kNode, "p=$(pidof latchd); kill -9 $p; for i in $(seq 600); "
                                         "do kill -0 $p 2>/dev/null || exit 0; sleep 0.1; done; "
                                         "echo \"latchd $p did not die in 60 s\" >&2; exit 1")
                                .status();
        !s.ok()) {
      return s;
    }
    const absl::Time t0 = absl::Now();
    if (absl::Status s = StartLatchd(kNode); !s.ok()) return s;
    r["restart_to_answer_s"] = absl::ToDoubleSeconds(absl::Now() - t0);
    absl::StatusOr<std::string> line =
        lab_->Sh(kNode, absl::StrCat("grep 'adopted .* locks of' ", log, " | tail -1"));
    if (line.ok()) {
      r["adopt_log"] = std::string(absl::StripAsciiWhitespace(*line));
      // "... adopted L locks of O owners (B backend names) in MS ms"
      std::vector<std::string> w = absl::StrSplit(r["adopt_log"].get<std::string>(), ' ');
      for (size_t i = 0; i + 1 < w.size(); ++i) {
        int64_t v = 0;
        if (w[i] == "adopted" && absl::SimpleAtoi(w[i + 1], &v)) r["adopted_locks"] = v;
        if (w[i] == "in" && i + 2 < w.size() && w[i + 2] == "ms" && absl::SimpleAtoi(w[i + 1], &v)) {
          r["adopt_s"] = v / 1e3;
        }
      }
    }
    r["memory_adopted"] = read_memory();
  }
  // Release: the owner unregistered (every lock released), timed in the node.
  absl::StatusOr<ClusterLab::Result> rel = lab_->Run(
      kNode, {"/bin/sh", "-c",
              absl::StrCat("t0=$(date +%s%N); ", ctl, "unregister --uuid ", uuid,
                           " >/dev/null || exit 1; echo $(( $(date +%s%N) - t0 )); kill ",
                           owner_pid)},
      absl::Minutes(30));
  if (rel.ok() && rel->status == 0 &&
      absl::SimpleAtoi(absl::StripAsciiWhitespace(rel->out), &ns)) {
    r["release_s"] = ns / 1e9;
  } else {
    r["release_s"] = nullptr;
    r["release_error"] = rel.ok() ? std::string(absl::StripAsciiWhitespace(rel->err))
                                  : rel.status().ToString();
    (void)lab_->Sh(kNode, absl::StrCat("kill ", owner_pid, " 2>/dev/null; true"));
  }
  r["memory_after"] = read_memory();
  if (backend == "sanlock") {
    // Their slots freed again, for the scenarios after this one.
    absl::StatusOr<ClusterLab::Result> clean = lab_->Run(
        kNode, {"/bin/sh", "-c",
                absl::StrCat("i=0; while [ $i -lt ", locks, " ]; do ", ctl,
                             "leases-clean --lockspace ", kSanlockLockspace, " --remove ", prefix,
                             "-$i >/dev/null 2>&1; i=$((i+1)); done")},  // (some never made)
        absl::Minutes(10));
    if (!clean.ok()) return clean.status();
    if (clean->status != 0) {
      return absl::InternalError(absl::StrCat("freeing the scale leases' slots: ", clean->err));
    }
  }
  return r;
}

absl::StatusOr<int> LabRunner::SanlockFreeSlots() {
  absl::StatusOr<ClusterLab::Result> l = lab_->Run(
      1, {"/shared/bin/latchctl", "--socket", kSocket, "leases", "--lockspace", kSanlockLockspace,
          "--json"});
  if (!l.ok()) return l.status();
  json j = json::parse(l->out, nullptr, false);
  if (l->status != 0 || j.is_discarded()) {
    return absl::InternalError(absl::StrCat("latchctl leases: ", l->err, l->out.substr(0, 200)));
  }
  // The area's free slots, wherever the document keeps them.
  int free = -1;
  std::function<void(const json&)> find = [&](const json& v) {
    if (v.is_object()) {
      for (auto it = v.begin(); it != v.end(); ++it) {
        if (it.key() == "free" && it->is_number_integer()) {
          free = it->get<int>();
        }
        find(*it);
      }
    } else if (v.is_array()) {
      for (const json& e : v) find(e);
    }
  };
  find(j);
  if (free < 0) return absl::InternalError("latchctl leases --json names no free slots");
  return free;
}

}  // namespace bench
}  // namespace latchkey
