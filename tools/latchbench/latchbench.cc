// latchbench: compares lock backends on the same machine, in one run, and
// writes what it measured as one JSON document (docs/latchbench.md).
//
//   latchbench list
//   latchbench run [--quick] [--lab[=DIR]] [--backends=...] [--scenarios=uncontended] ...
//   latchbench report [--out=DIR] A.json [B.json]
//
// Scenarios: uncontended and contended on this host (posixfd, nop) and in
// the cluster lab (dlm, sanlock, posixfd on NFS, nop), on the raw API, in
// process (the plugin ABI) and through latchd; handoff, scale and failover
// in the lab (lab_runner.h, failover.h); the report (report.py).
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "agent/client.h"
#include "backends/posixfd/lock_file.h"
#include "core/backend.h"
#include "core/config.h"
#include "core/lock_mode.h"
#include "core/owner.h"
#include "core/plugin_loader.h"
#include "core/resource.h"
#include "nlohmann/json.hpp"
#include "tools/cpp/runfiles/runfiles.h"
#include "tools/latchbench/contention.h"
#include "tools/latchbench/cost_counters.h"
#include "tools/latchbench/cycle_paths.h"
#include "tools/latchbench/environment.h"
#include "tools/latchbench/failover.h"
#include "tools/latchbench/hosts_runner.h"
#include "tools/latchbench/lab_runner.h"
#include "tools/latchbench/latchd_runner.h"
#include "tools/latchbench/remote_shell.h"
#include "tools/latchbench/stats.h"

namespace latchkey {
namespace bench {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr char kSchema[] = "latchbench/1";
constexpr char kUsage[] = R"(usage: latchbench list
       latchbench run [--quick] [--lab[=DIR]] [--backends=posixfd,nop]
                      [--scenarios=uncontended] [--runs=N] [--cycles=N] [--warmup=N]
                      [--block-seconds=S] [--handoffs=N] [--handoff-hold-ms=MS]
                      [--contend-owners=1,2,4] [--contend-resources=K]
                      [--contend-hold-us=US] [--contend-seconds=S]
                      [--failover-faults=FAULT|BACKEND:FAULT,...] [--failover-runs=N]
                      [--failover-limit=S] [--scale-locks=1000,10000]
                      [--host-backends=posixfd,nop]   (with --lab: this host's too)
                      [--hosts=HOST[=SOCKET],...] [--rsh='ssh -o BatchMode=yes {}']
                      [--clock-port=PORT]
                      [--seed=N] [--out=FILE] [--latchd=PATH]
                      [--plugin-path=DIR:DIR] [--max-run-spread=F]
         --lab        measure on node 1 of the cluster lab (started, or the running
                      one in DIR); needed for dlm and sanlock
         --block-seconds  a block's timed part ends after S s once it has 5 cycles
                      (a hand-off block after 3 S)
         --hosts      measure real hosts' latchds instead (uncontended on the first,
                      handoff between the first two), reached with --rsh ({} = the
                      host); SOCKET defaults to /run/latchkey/latchd.sock
       latchbench report [--out=DIR] A.json [B.json]
)";

// Exit codes: 0 done, 1 a measurement failed, 2 bad usage, 130 interrupted.
constexpr int kOk = 0, kFailed = 1, kUsageError = 2, kInterrupted = 130;

// Set by SIGINT, SIGTERM and SIGHUP: the run stops after the cycle in
// progress, and the private latchd is stopped by its PID on the way out.
std::atomic<bool> g_interrupted{false};

struct ScenarioInfo {
  const char* name;
  const char* what;
};
constexpr ScenarioInfo kScenarios[] = {
    {"uncontended",
     "one owner, one lease: acquire (no wait) + release, timed per cycle, in every mode the "
     "backend grants; on the raw API, in process (plugin ABI) and through latchd"},
    {"handoff",
     "(--lab, or --hosts) node1 and node2 take one lease exclusively in turn, each waiting for "
     "the other: the time from one node's release to the other's grant"},
    {"failover",
     "(--lab) node2 holds a lease through latchd, node3 waits for it, a fault strikes node2 "
     "(node kill, freeze, cut, partition, storage stall, lock daemon kill, owner kill, latchd "
     "kill): the time from the fault to node3's grant, split into detection and the rest"},
    {"scale",
     "(--lab) one owner on node1 takes N leases through latchd (--scale-locks), latchd is "
     "killed -9 and adopts them, the owner goes and they are released: the time of each "
     "step and the memory held (latchd, sanlock, the kernel DLM); what fits in sanlock's area"},
    {"contended",
     "N owners per node (on this host, or on every lab node at once) take one of K leases "
     "exclusively, waiting, hold it, release, for a fixed time; uniform and hot-spot picks: "
     "throughput, per-owner fairness (Jain's index) and the wait for each grant"},
};

struct BackendInfo {
  const char* name;
  const char* needs;
  bool lab_only;
};
// What `run` can measure: on this host, or (--lab) on the cluster lab's
// node 1, where posixfd's lock files are on NFS.
constexpr BackendInfo kBackends[] = {
    {"posixfd", "a lock directory: latchbench makes a local one; in the lab, on NFS", false},
    {"nop", "nothing: grants everything, the floor (latchkey's own cost)", false},
    {"dlm", "the cluster lab (--lab): corosync and the kernel DLM; or real hosts (--hosts)",
     true},
    {"sanlock",
     "the cluster lab (--lab): a lease area on the shared iSCSI LUN; or real hosts (--hosts)",
     true},
};

// Whether `table` (kBackends, kScenarios) has an entry called `name`.
template <typename Table>
bool Known(const Table& table, const std::string& name) {
  for (const auto& i : table) {
    if (name == i.name) return true;
  }
  return false;
}

// This program's own path (for its runfiles, and what lies beside it).
std::string SelfPath() {
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return "";
  self[n] = '\0';
  return self;
}

std::string Runfile(const std::string& path) {
  static std::unique_ptr<bazel::tools::cpp::runfiles::Runfiles> rf = [] {
    std::string err;
    return std::unique_ptr<bazel::tools::cpp::runfiles::Runfiles>(
        bazel::tools::cpp::runfiles::Runfiles::Create(SelfPath(), &err));
  }();
  if (rf == nullptr) return "";
  const std::string p = rf->Rlocation("latchkey/" + path);
  return access(p.c_str(), F_OK) == 0 ? p : "";
}

std::string Dir(const std::string& file) { return file.substr(0, file.rfind('/')); }

struct Options {
  bool quick = false;
  std::vector<std::string> backends = {"posixfd", "nop"};
  std::vector<std::string> scenarios = {"uncontended"};
  int runs = 5;
  int cycles = 2000;
  int warmup = 200;
  uint64_t seed = 1;
  double max_run_spread = 0.25;
  std::string out;
  double block_seconds = 0;  // a block's timed part ends after this (0: never)
  int handoffs = 100;        // hand-offs per node and block (handoff)
  int handoff_hold_ms = 20;  // how long each node holds the lease
  std::vector<int> contend_owners = {1, 2, 4};  // owners per node (contended)
  int contend_resources = 4;                    // K leases
  int contend_hold_us = 0;  // each grant held this long (a lab node sleeps >= 10 ms)
  double contend_seconds = 5;                   // each contended block runs this long
  std::vector<std::string> failover_faults;  // empty: every fault a backend supports
  int failover_runs = 1;                     // trials per backend and fault
  double failover_limit = 150;               // how long a survivor waits for its grant
  std::vector<int> scale_locks = {1000, 10000};  // the scale scenario's sizes
  std::vector<std::string> host_backends;  // with --lab: also these on this host
  std::vector<HostSpec> hosts;             // real hosts running latchd (--hosts)
  std::string rsh = "ssh -o BatchMode=yes {}";
  int clock_port = 7718;
  bool backends_set = false;
  bool lab = false;          // measure in the cluster lab
  std::string lab_dir;  // a running lab to use; empty: start one
  std::string latchd;
  std::vector<std::string> plugin_path;
  std::vector<std::string> argv;
};

// Progress on stderr: one line per block, rewritten in place on a terminal.
class Progress {
 public:
  explicit Progress(int64_t total_cycles)
      : total_(total_cycles), start_(Clock::now()), tty_(isatty(2) == 1) {}
  void Update(const std::string& block, int64_t block_done, int64_t block_total, bool end) {
    const auto now = Clock::now();
    if (!end && !tty_) return;
    if (!end && now - last_ < std::chrono::milliseconds(250)) return;
    last_ = now;
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const int64_t done = done_ + block_done;
    const double eta = done > 0 ? elapsed * static_cast<double>(total_ - done) / done : 0;
    fprintf(stderr, "%slatchbench: %s: %lld/%lld cycles; all %.0f%%, ETA %.0f s%s",
            tty_ ? "\r\033[K" : "", block.c_str(), static_cast<long long>(block_done),
            static_cast<long long>(block_total), 100.0 * done / std::max<int64_t>(total_, 1),
            eta, end ? "\n" : "");
    if (end) done_ += block_total;
  }

 private:
  int64_t total_;
  int64_t done_ = 0;
  Clock::time_point start_;
  Clock::time_point last_{};
  bool tty_;
};

std::vector<LockMode> Modes(const Capabilities& caps) {
  std::vector<LockMode> out;
  for (LockMode m : {LockMode::kSharedRead, LockMode::kSharedWrite, LockMode::kExclusive}) {
    if ((caps.modes & LockModeBit(m)) != 0) out.push_back(m);
  }
  return out;
}

json SummaryJson(const Summary& s) {
  return {{"n", s.n},        {"min", s.min}, {"median", s.median}, {"p90", s.p90},
          {"p99", s.p99},    {"max", s.max}, {"mean", s.mean},     {"spread", s.spread}};
}

// What one hand-off is on `path`.
std::string HandoffText(const std::string& path) {
  return absl::StrCat("node1 and node2 each loop: take the lease exclusively (", path,
                      path == "raw" ? "" : " path",
                      ", waiting for the other), hold it --handoff-hold-ms, release, pause as "
                      "long; one sample is one node's release to the other node's grant, "
                      "node 2's CLOCK_REALTIME put on node 1's by the measured offset "
                      "(lab.clocks)");
}

// What one sample of the contended scenario is on `path`.
std::string ContendedText(const std::string& path) {
  return absl::StrCat("each owner loops: pick one of K leases (seeded; uniform, or 80% on the "
                      "first), take it exclusively (", path, path == "raw" ? "" : " path",
                      ", waiting), hold it --contend-hold-us, release; one sample is the wait "
                      "from asking to the grant; throughput is all owners' grants per second");
}

// How long each contended block runs (--contend-seconds).
double ContendSeconds(const Options& o) { return o.contend_seconds; }

// One block: a backend, path and mode measured `runs` times, where.
struct Block {
  std::string backend, path;
  LockMode mode;
  std::string placement;  // "host", "node1, master node2", ...
  std::string lease;
  int node = 0;  // 0: this host
  std::vector<Summary> runs;
  std::vector<std::vector<double>> samples;
  std::vector<json> costs;  // per run: CostDelta, or null
  // contended: owners per node, nodes, leases, "uniform" or "hot".
  int owners = 0, nodes = 0, resources = 0;
  std::string dist;
  std::vector<json> extras;  // per run: throughput, fairness, grants per owner
};

// One block measured once: its samples and, where the node reported it,
// what the timed cycles cost (cost_counters.h).
struct Measured {
  Measured(std::vector<double> s) : samples(std::move(s)) {}  // NOLINT: implicit on purpose
  Measured(std::vector<double> s, json c, json e = json())
      : samples(std::move(s)), cost(std::move(c)), extra(std::move(e)) {}
  std::vector<double> samples;
  json cost;
  json extra;  // merged into the run's record
};

// Measures every block `o.runs` times, rotated each run so a drift of the
// machine does not favour one block, with `measure` timing one block once;
// then appends the results. kOk, kFailed or kInterrupted.
int MeasureBlocks(
    const Options& o, const std::string& scenario, std::vector<Block>* blocks, json* results,
    const std::function<absl::StatusOr<Measured>(
        const Block&, const std::function<void(int, int)>&)>& measure) {
  Progress progress(static_cast<int64_t>(blocks->size()) * o.runs * (o.cycles + o.warmup));
  for (int run = 0; run < o.runs; ++run) {
    for (size_t k = 0; k < blocks->size(); ++k) {
      Block& bl = (*blocks)[(k + static_cast<size_t>(run)) % blocks->size()];
      const std::string name = absl::StrCat(
          scenario, " ", bl.backend, " ", bl.path, " ", LockModeName(bl.mode),
          bl.owners > 0 ? absl::StrCat(" ", bl.owners, "x", bl.nodes, " owners, ", bl.dist) : "",
          bl.node > 0 ? absl::StrCat(" (", bl.placement, ")") : "", ", run ", run + 1, "/",
          o.runs);
      absl::StatusOr<Measured> timed =
          measure(bl, [&](int done, int total) { progress.Update(name, done, total, false); });
      if (g_interrupted || absl::IsCancelled(timed.status())) {
        fprintf(stderr, "\nlatchbench: interrupted in %s; nothing written\n", name.c_str());
        return kInterrupted;
      }
      if (!timed.ok()) {
        fprintf(stderr, "\nlatchbench: %s: %s\n", name.c_str(), timed.status().ToString().c_str());
        return kFailed;
      }
      progress.Update(name, o.warmup + o.cycles, o.warmup + o.cycles, true);
      if (timed->samples.empty() && scenario == "contended") {
        // Nobody granted anything in the block: a result (throughput 0),
        // not a failure of the tool.
        fprintf(stderr, "latchbench: %s: no owner was granted anything\n", name.c_str());
      } else if (timed->samples.empty()) {
        fprintf(stderr, "latchbench: %s: nothing was measured\n", name.c_str());
        return kFailed;
      }
      bl.runs.push_back(Summarize(timed->samples));
      bl.samples.push_back(std::move(timed->samples));
      bl.costs.push_back(std::move(timed->cost));
      bl.extras.push_back(std::move(timed->extra));
    }
  }
  for (const Block& bl : *blocks) {
    json runs = json::array();
    std::vector<double> pooled;
    for (size_t r = 0; r < bl.runs.size(); ++r) {
      runs.push_back({{"summary", SummaryJson(bl.runs[r])}, {"samples", bl.samples[r]}});
      if (!bl.costs[r].is_null()) runs.back()["cost"] = bl.costs[r];
      if (bl.extras[r].is_object()) runs.back().update(bl.extras[r]);
      pooled.insert(pooled.end(), bl.samples[r].begin(), bl.samples[r].end());
    }
    const Verdict v = JudgeRuns(bl.runs, o.max_run_spread);
    const json per_cycle = CostPerCycle(bl.costs);
    results->push_back(
        {{"scenario", scenario},
         {"backend", bl.backend},
         {"path", bl.path},
         {"mode", LockModeName(bl.mode)},
         {"placement", bl.placement},
         {"metric", scenario == "handoff"     ? "handoff_seconds"
                    : scenario == "contended" ? "wait_seconds"
                                              : "cycle_seconds"},
         {"cycle", scenario == "handoff"     ? HandoffText(bl.path)
                   : scenario == "contended" ? ContendedText(bl.path)
                                             : CycleText(bl.backend, bl.path)},
         {"runs", runs},
         {"summary", SummaryJson(Summarize(pooled))},
         {"verdict", {{"trusted", v.trusted}, {"relative", v.relative}, {"why", v.why}}}});
    if (!per_cycle.is_null()) results->back()["cost_per_cycle"] = per_cycle;
    if (bl.owners > 0) {
      json& r = results->back();
      r["owners_per_node"] = bl.owners;
      r["nodes"] = bl.nodes;
      r["owners"] = bl.owners * bl.nodes;
      r["resources"] = bl.resources;
      r["distribution"] = bl.dist;
      r["hold_us"] = o.contend_hold_us;
      r["seconds"] = ContendSeconds(o);
      std::vector<double> tp, jain;
      for (const json& e : bl.extras) {
        tp.push_back(e.value("throughput_per_second", 0.0));
        jain.push_back(e.value("fairness_jain", 0.0));
      }
      std::sort(tp.begin(), tp.end());
      std::sort(jain.begin(), jain.end());
      r["throughput_per_second"] = tp.empty() ? 0.0 : tp[tp.size() / 2];  // median of runs
      r["fairness_jain"] = jain.empty() ? 0.0 : jain[jain.size() / 2];
    }
  }
  return kOk;
}

// This host's backends loaded in this process, and one private latchd for
// them all (nop only as a benchmark backend).
struct HostBench {
  std::string workdir;
  std::map<std::string, std::unique_ptr<Backend>> loaded;
  std::unique_ptr<PrivateLatchd> latchd;

  // The cycle path `path` of `backend` on `lease` (raw: posixfd's lock
  // file named after the lease in the work directory), a new owner each.
  absl::StatusOr<std::unique_ptr<CyclePath>> Path(const std::string& backend,
                                                  const std::string& path,
                                                  const std::string& lease) {
    if (path == "raw") return RawPosixfdPath(absl::StrCat(workdir, "/raw-", lease, ".lock"));
    if (path == "in-process") {
      absl::StatusOr<Resource> res = Resource::Lease("latchbench", lease);
      if (!res.ok()) return res.status();
      return InProcessPath(loaded[backend].get(), OwnerForThisProcess(RandomUuid(), "latchbench"),
                           *res);
    }
    absl::StatusOr<std::unique_ptr<CyclePath>> t =
        LatchdPath(latchd->socket(), backend, "latchbench", lease);
    if (!t.ok()) {
      return absl::Status(t.status().code(), absl::StrCat("latchd: ", t.status().message(), "\n",
                                                          latchd->LogTail()));
    }
    return t;
  }
};

// Loads every backend with private settings and starts the latchd; prints
// what failed.
int StartHost(const Options& o, const std::string& workdir, HostBench* h,
              nlohmann::json* latchd_hello) {
  h->workdir = workdir;
  for (const std::string& b : o.backends) {
    std::string settings;
    if (b == "posixfd") {
      const std::string locks = workdir + "/inprocess-locks";
      mkdir(locks.c_str(), 0700);
      settings = absl::StrCat("lock_dir = \"", locks, "\"");
    }
    absl::StatusOr<Config> cfg = Config::ParseText(settings, "<latchbench>");
    if (!cfg.ok()) {
      fprintf(stderr, "latchbench: %s settings: %s\n", b.c_str(), cfg.status().ToString().c_str());
      return kFailed;
    }
    absl::StatusOr<std::unique_ptr<Backend>> be = LoadBackend(o.plugin_path, b, *cfg);
    if (!be.ok()) {
      fprintf(stderr, "latchbench: loading backend %s (plugin path %s): %s\n", b.c_str(),
              absl::StrJoin(o.plugin_path, ":").c_str(), be.status().ToString().c_str());
      return kFailed;
    }
    h->loaded[b] = std::move(*be);
  }
  LatchdSetup setup;
  setup.binary = o.latchd;
  setup.dir = workdir + "/latchd";
  mkdir(setup.dir.c_str(), 0700);
  setup.plugin_path = o.plugin_path;
  setup.backends = o.backends;
  for (const std::string& b : o.backends) {
    if (h->loaded[b]->capabilities().no_exclusion) setup.benchmark_backends.push_back(b);
  }
  absl::StatusOr<std::unique_ptr<PrivateLatchd>> latchd = PrivateLatchd::Start(setup);
  if (!latchd.ok()) {
    fprintf(stderr, "latchbench: starting latchd: %s\n", latchd.status().ToString().c_str());
    return kFailed;
  }
  h->latchd = std::move(*latchd);
  *latchd_hello = h->latchd->hello();
  return kOk;
}

// The uncontended scenario on this host: every backend and path. Fills
// `results`.
int RunUncontended(const Options& o, HostBench& h, json* results) {
  const std::string lease = absl::StrCat("uncontended-", o.seed);
  std::vector<Block> blocks;
  for (const std::string& b : o.backends) {
    const std::string placement = b == "posixfd" ? "host, local lock directory" : "host";
    // The raw API's cycle, where there is one (posixfd: fcntl; nop has none).
    if (b == "posixfd") blocks.push_back({b, "raw", LockMode::kExclusive, placement, lease, 0, {}, {}});
    for (const char* path : {"in-process", "latchd"}) {
      for (LockMode m : Modes(h.loaded[b]->capabilities())) {
        blocks.push_back({b, path, m, placement, lease, 0, {}, {}});
      }
    }
  }
  return MeasureBlocks(
      o, "uncontended", &blocks, results,
      [&](const Block& bl, const std::function<void(int, int)>& progress)
          -> absl::StatusOr<std::vector<double>> {
        absl::StatusOr<std::unique_ptr<CyclePath>> path = h.Path(bl.backend, bl.path, bl.lease);
        if (!path.ok()) return path.status();
        return TimeCycles(**path, bl.mode, o.warmup, o.cycles, o.block_seconds, &g_interrupted,
                          progress);
      });
}

// The contended scenario's blocks for `backends` with `paths`, and how one
// is measured: `run(block) -> every owner's tally`. `nodes` owners' nodes.
int RunContended(const Options& o, int nodes, const std::vector<std::string>& backends,
                 const std::function<std::vector<std::string>(const std::string&)>& paths,
                 const std::function<std::string(const std::string&)>& placement,
                 const std::function<absl::StatusOr<std::vector<OwnerTally>>(
                     const Block&, uint64_t seed)>& run,
                 json* results) {
  std::vector<Block> blocks;
  for (const std::string& b : backends) {
    for (const std::string& path : paths(b)) {
      for (const char* dist : {"uniform", "hot"}) {
        for (int owners : o.contend_owners) {
          Block bl{b, path, LockMode::kExclusive,
                   absl::StrCat(placement(b), "; ", owners, " owner", owners > 1 ? "s" : "",
                                nodes > 1 ? absl::StrCat(" x ", nodes, " nodes") : "", ", ",
                                o.contend_resources, " leases ", dist),
                   absl::StrCat("ct", o.seed, "-", path, "-", dist), nodes > 1 ? 1 : 0, {}, {}};
          bl.owners = owners;
          bl.nodes = nodes;
          bl.resources = o.contend_resources;
          bl.dist = dist;
          blocks.push_back(bl);
        }
      }
    }
  }
  if (blocks.empty()) return kOk;
  int round = 0;
  return MeasureBlocks(
      o, "contended", &blocks, results,
      [&](const Block& bl, const std::function<void(int, int)>&) -> absl::StatusOr<Measured> {
        absl::StatusOr<std::vector<OwnerTally>> t = run(bl, o.seed * 1000003 + static_cast<uint64_t>(++round));
        if (!t.ok()) return t.status();
        std::vector<double> waits;
        std::vector<int64_t> grants;
        int64_t total = 0;
        for (const OwnerTally& x : *t) {
          waits.insert(waits.end(), x.waits.begin(), x.waits.end());
          grants.push_back(x.grants);
          total += x.grants;
        }
        json extra = {{"throughput_per_second", static_cast<double>(total) / ContendSeconds(o)},
                      {"fairness_jain", JainIndex(grants)},
                      {"grants_per_owner", grants}};
        return Measured(std::move(waits), json(), std::move(extra));
      });
}

// The contended scenario on this host: one process, every owner a thread.
int RunContendedHost(const Options& o, HostBench& h, json* results) {
  return RunContended(
      o, 1, o.backends,
      [](const std::string& b) {
        return b == "posixfd" ? std::vector<std::string>{"raw", "in-process", "latchd"}
                              : std::vector<std::string>{"in-process", "latchd"};
      },
      [](const std::string& b) {
        return std::string(b == "posixfd" ? "host, local lock directory" : "host");
      },
      [&](const Block& bl, uint64_t seed) {
        ContendOptions co;
        co.owners = bl.owners;
        co.resources = bl.resources;
        co.seconds = ContendSeconds(o);
        co.seed = seed;
        co.hot_spot = bl.dist == "hot";
        co.hold_us = o.contend_hold_us;
        return RunContention(
            co,
            [&](int, int k) { return h.Path(bl.backend, bl.path, absl::StrCat(bl.lease, "-", k + 1)); },
            nullptr, &g_interrupted);
      },
      results);
}

// The modes measured in the lab. sanlock grants both shared modes as one
// (SH): both are measured, and say the same.
std::vector<LockMode> LabModes() {
  return {LockMode::kSharedRead, LockMode::kSharedWrite, LockMode::kExclusive};
}

// The uncontended scenario in the cluster lab, on node 1: dlm (the lease
// mastered on node 1, and on node 2), sanlock (lease area on the shared
// LUN), posixfd (lock files on NFS), nop. Fills `results` and `topology`.
int RunUncontendedLab(const Options& o, LabRunner& lab, json* results) {
  std::vector<Block> blocks;
  std::vector<std::string> remote;  // DLM names node 2 masters
  for (const std::string& b : o.backends) {
    std::vector<std::string> masters = {""};
    if (b == "dlm") masters = {"node1", "node2"};
    for (const std::string& master : masters) {
      std::string placement = "node1";
      if (b == "dlm") placement += ", master " + master;
      if (b == "sanlock") placement += ", lease area on the shared LUN";
      if (b == "posixfd") placement += ", lock files on NFS";
      for (const char* path : {"raw", "in-process", "latchd"}) {
        const bool raw = std::string(path) == "raw";
        if (raw && b == "nop") continue;
        for (LockMode m : LabModes()) {
          // Raw posixfd and raw sanlock: exclusive only.
          if (raw && b != "dlm" && m != LockMode::kExclusive) continue;
          const std::string lease =
              absl::StrCat("ub", o.seed, "-", path, "-", master.empty() ? "x" : master);
          blocks.push_back({b, path, m, placement, lease, 1, {}, {}});
          if (master == "node2" && (remote.empty() || remote.back() != lease)) {
            remote.push_back(lease);
          }
        }
      }
    }
  }
  if (!remote.empty()) {
    if (absl::Status s = lab.MasterOn(2, remote); !s.ok()) {
      fprintf(stderr, "latchbench: NL locks on node2: %s\n", s.ToString().c_str());
      return kFailed;
    }
  }
  return MeasureBlocks(o, "uncontended", &blocks, results,
                       [&](const Block& bl,
                           const std::function<void(int, int)>&) -> absl::StatusOr<Measured> {
                         absl::StatusOr<std::vector<double>> s =
                             lab.Cycles(bl.node, bl.backend, bl.path, bl.mode, bl.lease,
                                        o.warmup, o.cycles, o.block_seconds);
                         if (!s.ok()) return s.status();
                         return Measured(std::move(*s), lab.LastCost());
                       });
}

// The lab with everything latchbench needs in it, or an error printed.
std::unique_ptr<LabRunner> StartLab(const Options& o) {
  LabSetup setup;
  setup.attach = o.lab_dir;
  setup.uml_cluster = Runfile("lab/uml/uml-cluster");
  setup.backends = o.backends;
  for (const char* f : {"tools/latchbench/latchbench-node", "agent/latchd", "tools/latchctl"}) {
    setup.install.push_back(Runfile(f));
  }
  for (const std::string& b : o.backends) {
    setup.install.push_back(Runfile(absl::StrCat("backends/", b, "/latchkey-", b, ".so")));
  }
  for (const std::string& f : setup.install) {
    if (f.empty()) {
      fprintf(stderr, "latchbench: a file to install in the lab is not in the runfiles\n");
      return nullptr;
    }
  }
  absl::StatusOr<std::unique_ptr<LabRunner>> lab = LabRunner::Start(setup);
  if (!lab.ok()) {
    fprintf(stderr, "latchbench: the lab: %s\n", lab.status().ToString().c_str());
    return nullptr;
  }
  return std::move(*lab);
}

// The hand-off scenario between node1 and node2 (not nop: it excludes
// nobody). Fills `results`.
int RunHandoffLab(const Options& o, LabRunner& lab, json* results) {
  std::vector<Block> blocks;
  for (const std::string& b : o.backends) {
    if (b == "nop") continue;
    std::string placement = "node1 <-> node2";
    if (b == "sanlock") placement += ", lease area on the shared LUN";
    if (b == "posixfd") placement += ", lock files on NFS";
    for (const char* path : {"raw", "in-process", "latchd"}) {
      blocks.push_back({b, path, LockMode::kExclusive, placement,
                        absl::StrCat("ho", o.seed, "-", path), 1, {}, {}});
    }
  }
  if (blocks.empty()) return kOk;
  return MeasureBlocks(o, "handoff", &blocks, results,
                       [&](const Block& bl, const std::function<void(int, int)>&) {
                         return lab.Handoffs(bl.backend, bl.path, bl.lease, o.handoffs,
                                             o.handoff_hold_ms, o.block_seconds * 3);
                       });
}

// The contended scenario on every lab node at once.
int RunContendedLab(const Options& o, LabRunner& lab, json* results) {
  const int nodes = 3;
  return RunContended(
      o, nodes, o.backends,
      [](const std::string& b) {
        return b == "dlm" || b == "posixfd"
                   ? std::vector<std::string>{"raw", "in-process", "latchd"}
                   : std::vector<std::string>{"in-process", "latchd"};
      },
      [](const std::string& b) {
        std::string p = "node1-node3";
        if (b == "sanlock") p += ", lease area on the shared LUN";
        if (b == "posixfd") p += ", lock files on NFS";
        return p;
      },
      [&](const Block& bl, uint64_t seed) {
        return lab.Contend(bl.backend, bl.path, bl.nodes, bl.owners, bl.lease, bl.resources,
                           bl.dist == "hot", ContendSeconds(o), seed, o.contend_hold_us);
      },
      results);
}

// Real hosts (--hosts): latchbench-node copied to each, their latchds
// asked for hello; the backends to measure settled (the common ones unless
// --backends named some). nullptr after printing what failed.
std::unique_ptr<HostsRunner> StartHosts(Options* o) {
  HostsSetup setup;
  setup.hosts = o->hosts;
  setup.rsh = o->rsh;
  setup.clock_port = o->clock_port;
  setup.node_binary = Runfile("tools/latchbench/latchbench-node");
  if (setup.node_binary.empty()) {
    fprintf(stderr, "latchbench: latchbench-node is not in the runfiles\n");
    return nullptr;
  }
  fprintf(stderr, "latchbench: %zu hosts through '%s'...\n", o->hosts.size(), o->rsh.c_str());
  absl::StatusOr<std::unique_ptr<HostsRunner>> r = HostsRunner::Start(setup);
  if (!r.ok()) {
    fprintf(stderr, "latchbench: the hosts: %s\n", r.status().ToString().c_str());
    return nullptr;
  }
  const std::vector<std::string> common = (*r)->Backends();
  if (!o->backends_set) o->backends = common;
  for (const std::string& b : o->backends) {
    if (std::find(common.begin(), common.end(), b) == common.end()) {
      fprintf(stderr, "latchbench: backend '%s' is not in every host's latchd (they all have: "
                      "%s)\n", b.c_str(), absl::StrJoin(common, ", ").c_str());
      return nullptr;
    }
  }
  if (o->backends.empty()) {
    fprintf(stderr, "latchbench: the hosts' latchds have no backend in common\n");
    return nullptr;
  }
  return std::move(*r);
}

// The uncontended scenario on the first host, through its latchd.
int RunUncontendedHosts(const Options& o, HostsRunner& hosts, json* results) {
  std::vector<Block> blocks;
  for (const std::string& b : o.backends) {
    for (LockMode m : LabModes()) {
      blocks.push_back({b, "latchd", m, "host1 (" + o.hosts[0].host + ")",
                        absl::StrCat("uh", o.seed), 1, {}, {}});
    }
  }
  return MeasureBlocks(o, "uncontended", &blocks, results,
                       [&](const Block& bl,
                           const std::function<void(int, int)>&) -> absl::StatusOr<Measured> {
                         absl::StatusOr<std::vector<double>> s =
                             hosts.Cycles(1, bl.backend, bl.mode, bl.lease, o.warmup, o.cycles,
                                          o.block_seconds);
                         if (!s.ok()) return s.status();
                         return Measured(std::move(*s), hosts.LastCost());
                       });
}

// The hand-off scenario between the first two hosts (not nop).
int RunHandoffHosts(const Options& o, HostsRunner& hosts, json* results) {
  std::vector<Block> blocks;
  for (const std::string& b : o.backends) {
    if (b == "nop") continue;
    blocks.push_back({b, "latchd", LockMode::kExclusive,
                      absl::StrCat("host1 (", o.hosts[0].host, ") <-> host2 (", o.hosts[1].host,
                                   ")"),
                      absl::StrCat("hh", o.seed), 1, {}, {}});
  }
  if (blocks.empty()) return kOk;
  return MeasureBlocks(o, "handoff", &blocks, results,
                       [&](const Block& bl, const std::function<void(int, int)>&) {
                         return hosts.Handoffs(bl.backend, bl.lease, o.handoffs,
                                               o.handoff_hold_ms, o.block_seconds * 3);
                       });
}

// The failover scenario: every backend (not nop) × fault, through latchd,
// `failover_runs` trials each; one result per backend and fault.
int RunFailoverLab(const Options& o, LabRunner& lab, json* results) {
  struct Cell {
    std::string backend, fault;
  };
  std::vector<Cell> cells;
  for (const std::string& b : o.backends) {
    for (const std::string& f : FaultsFor(b)) {
      // --failover-faults: FAULT (every backend) or BACKEND:FAULT.
      if (!o.failover_faults.empty() &&
          std::find(o.failover_faults.begin(), o.failover_faults.end(), f) ==
              o.failover_faults.end() &&
          std::find(o.failover_faults.begin(), o.failover_faults.end(), b + ":" + f) ==
              o.failover_faults.end()) {
        continue;
      }
      cells.push_back({b, f});
    }
  }
  const auto start = Clock::now();
  const int total = static_cast<int>(cells.size()) * o.failover_runs;
  int done = 0;
  std::map<std::pair<std::string, std::string>, std::vector<json>> trials;
  for (int run = 0; run < o.failover_runs; ++run) {
    for (const Cell& c : cells) {
      if (g_interrupted) return kInterrupted;
      const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
      fprintf(stderr, "latchbench: failover %s %s, trial %d/%d (%d/%d done%s)\n",
              c.backend.c_str(), c.fault.c_str(), run + 1, o.failover_runs, done, total,
              done > 0 ? absl::StrFormat(", ETA %.0f s", elapsed / done * (total - done)).c_str()
                       : "");
      absl::StatusOr<json> t = lab.Failover(c.backend, "latchd", c.fault,
                                            absl::StrCat("fo", o.seed, "-", c.backend),
                                            o.failover_limit);
      if (g_interrupted) return kInterrupted;
      if (!t.ok()) {
        fprintf(stderr, "latchbench: failover %s %s: %s\n", c.backend.c_str(), c.fault.c_str(),
                t.status().ToString().c_str());
        return kFailed;
      }
      fprintf(stderr, "latchbench: failover %s %s: %s%s\n", c.backend.c_str(), c.fault.c_str(),
              (*t)["outcome"].get<std::string>().c_str(),
              (*t)["grant_s"].is_number()
                  ? absl::StrFormat(" after %.2f s", (*t)["grant_s"].get<double>()).c_str()
                  : "");
      trials[{c.backend, c.fault}].push_back(*t);
      ++done;
    }
  }
  for (const Cell& c : cells) {
    const std::vector<json>& ts = trials[{c.backend, c.fault}];
    json runs = json::array();
    std::vector<double> grants;
    std::vector<Summary> per_run;
    int as_expected = 0;
    for (const json& t : ts) {
      std::vector<double> one;
      if (t["grant_s"].is_number()) one.push_back(t["grant_s"].get<double>());
      grants.insert(grants.end(), one.begin(), one.end());
      if (!one.empty()) per_run.push_back(Summarize(one));
      as_expected += t["as_expected"].get<bool>() ? 1 : 0;
      runs.push_back({{"summary", SummaryJson(Summarize(one))}, {"samples", one}, {"trial", t}});
    }
    const Verdict v = JudgeRuns(per_run, o.max_run_spread);
    std::string what;
    for (int i = 0; i < kFaultCount; ++i) {
      if (c.fault == kFaults[i].name) what = kFaults[i].what;
    }
    results->push_back(
        {{"scenario", "failover"},
         {"backend", c.backend},
         {"path", "latchd"},
         {"mode", "exclusive"},
         {"placement", absl::StrCat("node2 holds, node3 waits; ", c.fault)},
         {"metric", "failover_s"},
         {"cycle", "the time from the fault (the lab's event for it, host clock) to node3's "
                   "grant line as the host saw it (polled every 25 ms)"},
         {"fault", c.fault},
         {"fault_what", what},
         {"expected", Expected(c.fault, lab.LocksSurviveHolder(c.backend))},
         {"trials", static_cast<int>(ts.size())},
         {"as_expected", as_expected},
         {"runs", runs},
         {"summary", SummaryJson(Summarize(grants))},
         {"verdict",
          {{"trusted", v.trusted || per_run.empty()},
           {"relative", v.relative},
           {"why", per_run.empty() ? absl::StrCat("no grant in ", ts.size(), " trials (expected: ",
                                                  Expected(c.fault, lab.LocksSurviveHolder(c.backend)), ")")
                                   : v.why}}}});
  }
  return kOk;
}

// The scale scenario on node 1: every backend at every size that fits.
int RunScaleLab(const Options& o, LabRunner& lab, json* results) {
  for (const std::string& b : o.backends) {
    std::vector<int> sizes = o.scale_locks;
    int free = -1;
    if (b == "sanlock") {
      absl::StatusOr<int> f = lab.SanlockFreeSlots();
      if (!f.ok()) {
        fprintf(stderr, "latchbench: scale sanlock: %s\n", f.status().ToString().c_str());
        return kFailed;
      }
      free = *f;
      // What fits: every free slot, once, when no size asked for does.
      if (std::all_of(sizes.begin(), sizes.end(), [&](int n) { return n > free; }) && free > 0) {
        sizes.push_back(free);
      }
    }
    for (int n : sizes) {
      if (g_interrupted) return kInterrupted;
      json r;
      if (free >= 0 && n > free) {
        r = {{"backend", b}, {"locks", n}, {"node", "node1"}, {"path", "latchd"},
             {"take_s", nullptr},
             {"outcome", absl::StrFormat(
                  "does not fit: %d leases need %d MiB of lease area on 512-byte storage "
                  "(%d MiB on 4K storage); latchbench's area has %d free slots of 1 MiB",
                  n, n, 8 * n, free)}};
      } else {
        fprintf(stderr, "latchbench: scale %s, %d locks...\n", b.c_str(), n);
        absl::StatusOr<json> got = lab.Scale(b, n, absl::StrCat("sc", o.seed, "-", n));
        if (!got.ok()) {
          fprintf(stderr, "latchbench: scale %s %d: %s\n", b.c_str(), n,
                  got.status().ToString().c_str());
          return kFailed;
        }
        r = *got;
      }
      fprintf(stderr, "latchbench: scale %s %d: %s\n", b.c_str(), n,
              r["outcome"].get<std::string>().c_str());
      std::vector<double> one;
      if (r["take_s"].is_number()) one.push_back(r["take_s"].get<double>());
      const Summary sm = Summarize(one);
      r["scenario"] = "scale";
      r["mode"] = "exclusive";
      r["placement"] = absl::StrCat("node1; ", n, " locks");
      r["metric"] = "take_s";
      r["cycle"] = "one owner takes N exclusive leases through latchd in requests of 500 "
                   "(latchctl acquire), timed in the node";
      r["runs"] = json::array({{{"summary", SummaryJson(sm)}, {"samples", one}}});
      r["summary"] = SummaryJson(sm);
      r["verdict"] = {{"trusted", true}, {"relative", 0.0},
                      {"why", "one run: its spread between runs is unknown"}};
      results->push_back(r);
    }
  }
  return kOk;
}

// `j[key]` in seconds ("1.23 s"), or "-" when it is missing or null.
std::string Seconds(const json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? absl::StrFormat("%.2f s", j[key].get<double>())
                                               : std::string("-");
}

int Parse(int argc, char** argv, Options* o) {
  for (int i = 0; i < argc; ++i) o->argv.push_back(argv[i]);
  bool cycles_set = false, runs_set = false, warmup_set = false, block_seconds_set = false,
       handoffs_set = false, contend_owners_set = false, contend_seconds_set = false;
  for (int i = 2; i < argc; ++i) {
    absl::string_view a = argv[i];
    absl::string_view v;
    auto value = [&](absl::string_view flag) {
      if (!absl::ConsumePrefix(&a, flag)) return false;
      if (!absl::ConsumePrefix(&a, "=")) return false;
      v = a;
      return true;
    };
    // A whole number from `min` to 10000000 for `flag`.
    // ... and at most `max` when given.
    auto whole = [&](absl::string_view flag, int min, int* out, int max = 10000000) {
      if (!absl::SimpleAtoi(v, out) || *out < min || *out > 10000000) {
        fprintf(stderr, "latchbench: %s must be a whole number from %d to 10000000, not '%s'\n",
                std::string(flag).c_str(), min, std::string(v).c_str());
        return false;
      }
      if (*out > max) {
        fprintf(stderr, "latchbench: %s must be at most %d\n", std::string(flag).c_str(), max);
        return false;
      }
      return true;
    };
    // A comma-separated list of numbers from 1 to `max` for `flag`.
    auto numbers = [&](absl::string_view flag, int max, const char* unit, std::vector<int>* out) {
      out->clear();
      for (absl::string_view n : absl::StrSplit(v, ',')) {
        int k = 0;
        if (!absl::SimpleAtoi(n, &k) || k < 1 || k > max) {
          fprintf(stderr, "latchbench: %s takes numbers from 1 to %d%s, not '%s'\n",
                  std::string(flag).c_str(), max, unit, std::string(v).c_str());
          return false;
        }
        out->push_back(k);
      }
      return true;
    };
    if (a == "--quick") {
      o->quick = true;
    } else if (value("--backends")) {
      o->backends = absl::StrSplit(v, ',', absl::SkipEmpty());
      o->backends_set = true;
    } else if (value("--scenarios")) {
      o->scenarios = absl::StrSplit(v, ',', absl::SkipEmpty());
    } else if (value("--runs")) {
      if (!whole("--runs", 1, &o->runs)) return kUsageError;
      runs_set = true;
    } else if (value("--cycles")) {
      if (!whole("--cycles", 1, &o->cycles)) return kUsageError;
      cycles_set = true;
    } else if (value("--warmup")) {
      if (!whole("--warmup", 0, &o->warmup)) return kUsageError;
      warmup_set = true;
    } else if (value("--handoffs")) {
      if (!whole("--handoffs", 1, &o->handoffs)) return kUsageError;
      handoffs_set = true;
    } else if (value("--handoff-hold-ms")) {
      if (!whole("--handoff-hold-ms", 0, &o->handoff_hold_ms, 60000)) return kUsageError;
    } else if (value("--contend-owners")) {
      if (!numbers("--contend-owners", 64, " per node", &o->contend_owners)) return kUsageError;
      contend_owners_set = true;
    } else if (value("--contend-resources")) {
      if (!whole("--contend-resources", 1, &o->contend_resources, 1000)) return kUsageError;
    } else if (value("--contend-hold-us")) {
      if (!whole("--contend-hold-us", 0, &o->contend_hold_us)) return kUsageError;
    } else if (value("--contend-seconds")) {
      if (!absl::SimpleAtod(v, &o->contend_seconds) || !(o->contend_seconds > 0) ||
          o->contend_seconds > 86400) {
        fprintf(stderr, "latchbench: --contend-seconds must be a number of seconds above 0 and "
                        "at most 86400, not '%s'\n", std::string(v).c_str());
        return kUsageError;
      }
      contend_seconds_set = true;
    } else if (value("--scale-locks")) {
      if (!numbers("--scale-locks", 1000000, "", &o->scale_locks)) return kUsageError;
    } else if (value("--hosts")) {
      absl::StatusOr<std::vector<HostSpec>> h = ParseHosts(std::string(v));
      if (!h.ok()) {
        fprintf(stderr, "latchbench: %s\n", std::string(h.status().message()).c_str());
        return kUsageError;
      }
      o->hosts = std::move(*h);
    } else if (value("--rsh")) {
      if (absl::StatusOr<RemoteShell> sh = RemoteShell::Parse(std::string(v)); !sh.ok()) {
        fprintf(stderr, "latchbench: %s\n", std::string(sh.status().message()).c_str());
        return kUsageError;
      }
      o->rsh = std::string(v);
    } else if (value("--clock-port")) {
      if (!absl::SimpleAtoi(v, &o->clock_port) || o->clock_port < 1 || o->clock_port > 65535) {
        fprintf(stderr, "latchbench: --clock-port must be a UDP port (1-65535), not '%s'\n",
                std::string(v).c_str());
        return kUsageError;
      }
    } else if (value("--host-backends")) {
      o->host_backends = absl::StrSplit(v, ',', absl::SkipEmpty());
    } else if (value("--failover-faults")) {
      o->failover_faults = absl::StrSplit(v, ',', absl::SkipEmpty());
      for (const std::string& entry : o->failover_faults) {
        const std::string f = entry.substr(entry.find(':') + 1);  // BACKEND:FAULT or FAULT
        if (!KnownFault(f)) {
          fprintf(stderr, "latchbench: unknown fault '%s' (latchbench list shows them)\n",
                  f.c_str());
          return kUsageError;
        }
      }
    } else if (value("--failover-runs")) {
      if (!whole("--failover-runs", 1, &o->failover_runs, 100)) return kUsageError;
    } else if (value("--failover-limit")) {
      if (!absl::SimpleAtod(v, &o->failover_limit) || !(o->failover_limit >= 5) ||
          o->failover_limit > 3600) {
        fprintf(stderr, "latchbench: --failover-limit must be a number of seconds from 5 to "
                        "3600, not '%s'\n", std::string(v).c_str());
        return kUsageError;
      }
    } else if (value("--seed")) {
      if (!absl::SimpleAtoi(v, &o->seed)) {
        fprintf(stderr, "latchbench: --seed must be a whole number, not '%s'\n",
                std::string(v).c_str());
        return kUsageError;
      }
    } else if (value("--max-run-spread")) {
      if (!absl::SimpleAtod(v, &o->max_run_spread) || !(o->max_run_spread > 0)) {
        fprintf(stderr, "latchbench: --max-run-spread must be a number above 0, not '%s'\n",
                std::string(v).c_str());
        return kUsageError;
      }
    } else if (value("--block-seconds")) {
      if (!absl::SimpleAtod(v, &o->block_seconds) || !(o->block_seconds >= 0) ||
          o->block_seconds > 86400) {
        fprintf(stderr, "latchbench: --block-seconds must be a number of seconds from 0 to "
                        "86400, not '%s'\n", std::string(v).c_str());
        return kUsageError;
      }
      block_seconds_set = true;
    } else if (value("--out")) {
      o->out = std::string(v);
    } else if (a == "--lab") {
      o->lab = true;
    } else if (value("--lab")) {
      o->lab = true;
      o->lab_dir = std::string(v);
      if (o->lab_dir.empty() || o->lab_dir[0] != '/' || access(o->lab_dir.c_str(), R_OK) != 0) {
        fprintf(stderr, "latchbench: --lab=DIR needs a running lab's absolute directory, not "
                        "'%s'\n", o->lab_dir.c_str());
        return kUsageError;
      }
    } else if (value("--latchd")) {
      o->latchd = std::string(v);
    } else if (value("--plugin-path")) {
      o->plugin_path = absl::StrSplit(v, ':', absl::SkipEmpty());
    } else {
      fprintf(stderr, "latchbench: unknown argument '%s'\n%s", argv[i], kUsage);
      return kUsageError;
    }
  }
  if (o->quick) {
    if (!runs_set) o->runs = 3;
    if (!cycles_set) o->cycles = 200;
    if (!warmup_set) o->warmup = 20;
    if (!block_seconds_set) o->block_seconds = 5;
    if (!handoffs_set) o->handoffs = 20;
    if (!contend_owners_set) o->contend_owners = {2};
    if (!contend_seconds_set) o->contend_seconds = 1;
  }
  if (o->backends.empty() || o->scenarios.empty()) {
    fprintf(stderr, "latchbench: --backends and --scenarios need at least one name\n");
    return kUsageError;
  }
  for (const std::string& b : o->backends) {
    if (!Known(kBackends, b)) {
      fprintf(stderr, "latchbench: unknown backend '%s' (latchbench list shows them)\n",
              b.c_str());
      return kUsageError;
    }
    for (const BackendInfo& i : kBackends) {
      if (b == i.name && i.lab_only && !o->lab && o->hosts.empty()) {
        fprintf(stderr, "latchbench: backend '%s' runs only in the cluster lab: add --lab (or "
                        "--lab=DIR to use a running one)\n", b.c_str());
        return kUsageError;
      }
    }
    if (std::count(o->backends.begin(), o->backends.end(), b) > 1) {
      fprintf(stderr, "latchbench: backend '%s' is named twice\n", b.c_str());
      return kUsageError;
    }
  }
  if (!o->hosts.empty() && (o->lab || !o->host_backends.empty())) {
    fprintf(stderr, "latchbench: --hosts measures real hosts; it does not go with --lab or "
                    "--host-backends\n");
    return kUsageError;
  }
  if (!o->host_backends.empty() && !o->lab) {
    fprintf(stderr, "latchbench: --host-backends adds this host's backends to a --lab run; "
                    "without --lab use --backends\n");
    return kUsageError;
  }
  for (const std::string& b : o->host_backends) {
    bool host_ok = false;
    for (const BackendInfo& i : kBackends) host_ok = host_ok || (b == i.name && !i.lab_only);
    if (!host_ok) {
      fprintf(stderr, "latchbench: --host-backends: '%s' is not a backend this host can "
                      "measure (posixfd, nop)\n", b.c_str());
      return kUsageError;
    }
  }
  for (const std::string& s : o->scenarios) {
    if (!Known(kScenarios, s)) {
      fprintf(stderr, "latchbench: unknown scenario '%s' (latchbench list shows them)\n",
              s.c_str());
      return kUsageError;
    }
    if (!o->hosts.empty()) {
      if (s != "uncontended" && s != "handoff") {
        fprintf(stderr, "latchbench: scenario '%s' needs the lab's faults and probes: on real "
                        "hosts (--hosts) latchbench runs uncontended and handoff\n", s.c_str());
        return kUsageError;
      }
      if (s == "handoff" && o->hosts.size() < 2) {
        fprintf(stderr, "latchbench: scenario 'handoff' runs between two hosts: --hosts names "
                        "one\n");
        return kUsageError;
      }
      continue;
    }
    if ((s == "handoff" || s == "failover" || s == "scale") && !o->lab) {
      fprintf(stderr, "latchbench: scenario '%s' runs between lab nodes: add --lab%s\n",
              s.c_str(), s == "handoff" ? " (or --hosts, real hosts running latchd)" : "");
      return kUsageError;
    }
  }
  if (o->latchd.empty()) o->latchd = Runfile("agent/latchd");
  if (o->latchd.empty()) {
    // In bazel-bin: agent/latchd beside tools/.
    const std::string self = SelfPath();
    if (!self.empty()) o->latchd = Dir(Dir(Dir(self))) + "/agent/latchd";
  }
  if (access(o->latchd.c_str(), X_OK) != 0) {
    fprintf(stderr, "latchbench: latchd is not at '%s': say where with --latchd=PATH\n",
            o->latchd.c_str());
    return kUsageError;
  }
  if (o->plugin_path.empty()) {
    for (const char* so : {"backends/posixfd/latchkey-posixfd.so", "backends/nop/latchkey-nop.so"}) {
      const std::string f = Runfile(so);
      if (!f.empty()) o->plugin_path.push_back(Dir(f));
    }
    if (o->plugin_path.empty()) o->plugin_path = DefaultPluginPath();
  }
  if (o->out.empty()) {
    o->out = absl::StrCat("latchbench-", absl::StrReplaceAll(NowRfc3339(), {{":", ""}}), ".json");
  }
  return kOk;
}

int List() {
  printf("scenarios:\n");
  for (const ScenarioInfo& s : kScenarios) printf("  %-12s %s\n", s.name, s.what);
  printf("backends:\n");
  for (const BackendInfo& b : kBackends) printf("  %-12s needs %s\n", b.name, b.needs);
  printf("paths: raw (the raw API: posixfd, dlm), in-process (the plugin ABI), latchd\n");
  printf("faults (failover; each backend gets those that apply to it):\n");
  for (int i = 0; i < kFaultCount; ++i) printf("  %-13s %s\n", kFaults[i].name, kFaults[i].what);
  return kOk;
}

// The clocks measured `when` ("before", "after") on lab nodes or hosts
// (`kind`), printed one line each; an error is printed and recorded.
json ClocksRecord(const char* when, const std::string& kind, absl::StatusOr<json> c) {
  if (!c.ok()) {
    fprintf(stderr, "latchbench: clocks %s: %s\n", when, c.status().ToString().c_str());
    return json{{"error", c.status().ToString()}};
  }
  for (const json& n : (*c)[kind + "s"]) {
    fprintf(stderr, "latchbench: clocks %s: %s%d = %s1 %+.3f ms (+- %.3f ms)\n", when,
            kind.c_str(), n[kind].get<int>(), kind.c_str(), n["offset_ns"].get<int64_t>() / 1e6,
            n["uncertainty_ns"].get<int64_t>() / 1e6);
  }
  return *c;
}

int Run(Options o) {
  char templ[] = "/tmp/latchbench.XXXXXX";
  if (mkdtemp(templ) == nullptr) {
    fprintf(stderr, "latchbench: cannot create a work directory under /tmp: %s\n",
            strerror(errno));
    return kFailed;
  }
  const std::string workdir = templ;
  json doc;
  doc["schema"] = kSchema;
  doc["started"] = NowRfc3339();
  doc["command"] = o.argv;
  doc["environment"] = DescribeEnvironment();
  doc["parameters"] = {{"quick", o.quick},           {"backends", o.backends},
                       {"scenarios", o.scenarios},   {"runs", o.runs},
                       {"cycles", o.cycles},         {"warmup", o.warmup},
                       {"seed", o.seed},             {"max_run_spread", o.max_run_spread},
                       {"plugin_path", o.plugin_path}, {"latchd", o.latchd},
                       {"lab", o.lab},         {"block_seconds", o.block_seconds},
                       {"handoffs", o.handoffs}, {"handoff_hold_ms", o.handoff_hold_ms},
                       {"contend_owners", o.contend_owners},
                       {"contend_resources", o.contend_resources},
                       {"contend_hold_us", o.contend_hold_us},
                       {"contend_seconds", o.contend_seconds},
                       {"failover_faults", o.failover_faults},
                       {"failover_runs", o.failover_runs},
                       {"failover_limit_s", o.failover_limit},
                       {"scale_locks", o.scale_locks},
                       {"host_backends", o.host_backends}};
  if (!o.hosts.empty()) {
    json hs = json::array();
    for (const HostSpec& h : o.hosts) hs.push_back({{"host", h.host}, {"socket", h.socket}});
    doc["parameters"]["hosts"] = hs;
    doc["parameters"]["rsh"] = o.rsh;
    doc["parameters"]["clock_port"] = o.clock_port;
  }
  json results = json::array();
  json latchd_hello;
  int rc = kOk;
  std::unique_ptr<LabRunner> lab;
  // The nodes' clocks, before and after: what one node's timestamps mean on
  // another's (docs/latchbench.md, "Clocks"). Failing to measure them is
  // recorded; the hand-off scenario then fails, the uncontended one (one
  // node's clock) goes on.
  const auto clocks = [&](const char* when) {
    return ClocksRecord(when, "node", lab->MeasureClocks());
  };
  json clocks_before;
  std::unique_ptr<HostsRunner> hosts;
  const auto host_clocks = [&](const char* when) {
    return hosts->hosts() < 2 ? json() : ClocksRecord(when, "host", hosts->MeasureClocks());
  };
  if (!o.hosts.empty()) {
    hosts = StartHosts(&o);
    if (hosts == nullptr) rc = kFailed;
    if (hosts != nullptr) {
      clocks_before = host_clocks("before");
      doc["parameters"]["backends"] = o.backends;
    }
  }
  if (o.lab) {
    lab = StartLab(o);
    if (lab == nullptr) rc = kFailed;
    if (lab != nullptr) clocks_before = clocks("before");
  }
  HostBench host;
  // This host's backends: the run's own, or with --lab those of
  // --host-backends, measured in the same run and document.
  Options ho = o;
  if (o.lab) ho.backends = o.host_backends;
  const bool on_host = o.hosts.empty() && (!o.lab || !o.host_backends.empty());
  json host_hello;
  if (on_host && rc == kOk) rc = StartHost(ho, workdir, &host, &host_hello);
  if (!o.lab && o.hosts.empty()) latchd_hello = host_hello;
  for (const std::string& s : o.scenarios) {
    if (rc != kOk) break;
    if (hosts != nullptr) {
      rc = s == "uncontended" ? RunUncontendedHosts(o, *hosts, &results)
                              : RunHandoffHosts(o, *hosts, &results);
    } else if (s == "uncontended") {
      if (on_host) rc = RunUncontended(ho, host, &results);
      if (o.lab && rc == kOk) rc = RunUncontendedLab(o, *lab, &results);
    } else if (s == "handoff") {
      rc = RunHandoffLab(o, *lab, &results);
    } else if (s == "contended") {
      if (on_host) rc = RunContendedHost(ho, host, &results);
      if (o.lab && rc == kOk) rc = RunContendedLab(o, *lab, &results);
    } else if (s == "failover") {
      rc = RunFailoverLab(o, *lab, &results);
    } else if (s == "scale") {
      rc = RunScaleLab(o, *lab, &results);
    }
  }
  host.latchd.reset();  // stopped by its PID
  host.loaded.clear();
  if (hosts != nullptr) {
    doc["hosts"] = hosts->Topology();
    doc["hosts"]["clocks"] = clocks_before;
    if (!g_interrupted) doc["hosts"]["clocks_after"] = host_clocks("after");
    latchd_hello = json::array();
    for (const json& h : doc["hosts"]["hosts"]) latchd_hello.push_back(h["hello"]);
    hosts.reset();  // latchbench-node removed from every host
  }
  if (lab != nullptr) {
    doc["lab"] = lab->Topology();
    doc["lab"]["clocks"] = clocks_before;
    if (!g_interrupted) doc["lab"]["clocks_after"] = clocks("after");
    latchd_hello = {{"latchd_backends_node1", lab->Topology()["latchd_backends"]}};
    if (!o.host_backends.empty()) latchd_hello["host"] = host_hello;
    lab.reset();  // latchd stopped, the lab stopped or reset
  }
  (void)system(absl::StrCat("rm -rf '", workdir, "'").c_str());
  if (rc != kOk) return rc;
  doc["latchd_hello"] = latchd_hello;
  doc["finished"] = NowRfc3339();
  const std::array<double, 3> load = LoadAverage();
  doc["environment"]["load_end"] = {load[0], load[1], load[2]};
  doc["results"] = results;
  const std::string tmp = o.out + ".tmp";
  {
    std::ofstream out(tmp);
    out << doc.dump(1) << "\n";
    if (!out) {
      fprintf(stderr, "latchbench: cannot write %s\n", tmp.c_str());
      return kFailed;
    }
  }
  if (rename(tmp.c_str(), o.out.c_str()) != 0) {
    fprintf(stderr, "latchbench: cannot rename %s to %s: %s\n", tmp.c_str(), o.out.c_str(),
            strerror(errno));
    return kFailed;
  }
  // The summary, in microseconds.
  printf("%-12s %-9s %-14s %-10s %-11s %9s %9s %9s %7s  %s\n", "scenario", "backend", "where",
         "path", "mode", "median_us", "p99_us", "max_us", "spread", "runs");
  for (const json& r : results) {
    if (r["scenario"] == "failover" || r["scenario"] == "scale") continue;  // below
    const json& s = r["summary"];
    std::string where = r["placement"].get<std::string>();
    where = where.substr(0, where.find(", lease")).substr(0, where.find(", lock"));
    absl::StrReplaceAll({{"master ", "m:"}}, &where);
    std::string why = r["verdict"]["why"].get<std::string>();
    if (r.contains("owners")) {  // contended: who, how, and what it gave
      why = absl::StrFormat("%dx%d owners, %d leases %s: %.0f grants/s, Jain %.3f; %s",
                            r["owners_per_node"].get<int>(), r["nodes"].get<int>(),
                            r["resources"].get<int>(), r["distribution"].get<std::string>(),
                            r["throughput_per_second"].get<double>(),
                            r["fairness_jain"].get<double>(), why);
    }
    printf("%-12s %-9s %-14s %-10s %-11s %9.1f %9.1f %9.1f %7.2f  %s\n",
           r["scenario"].get<std::string>().c_str(), r["backend"].get<std::string>().c_str(),
           where.c_str(),
           r["path"].get<std::string>().c_str(), r["mode"].get<std::string>().c_str(),
           1e6 * s["median"].get<double>(), 1e6 * s["p99"].get<double>(),
           1e6 * s["max"].get<double>(), s["spread"].get<double>(), why.c_str());
  }
  for (const json& r : results) {
    if (r["scenario"] != "failover") continue;
    for (const json& run : r["runs"]) {
      const json& t = run["trial"];
      const auto secs = [&](const char* k) { return Seconds(t, k); };
      printf("failover %-8s %-14s %-22s grant %-9s detection %-9s (%s)%s\n",
             r["backend"].get<std::string>().c_str(), r["fault"].get<std::string>().c_str(),
             t["outcome"].get<std::string>().c_str(), secs("grant_s").c_str(),
             secs("detection_s").c_str(), t["detected_as"].get<std::string>().c_str(),
             t["as_expected"].get<bool>() ? "" : "  NOT AS EXPECTED");
    }
  }
  for (const json& r : results) {
    if (r["scenario"] != "scale") continue;
    const auto secs = [&](const char* k) { return Seconds(r, k); };
    const json held = r.value("memory_held", json::object());
    printf("scale    %-8s %7d locks: take %-9s adopt %-9s release %-9s latchd %s KiB  %s\n",
           r["backend"].get<std::string>().c_str(), r["locks"].get<int>(), secs("take_s").c_str(),
           secs("adopt_s").c_str(), secs("release_s").c_str(),
           held.contains("latchd_rss_kib") ? absl::StrCat(held["latchd_rss_kib"].get<int64_t>()).c_str()
                                           : "-",
           r["outcome"].get<std::string>().c_str());
  }
  printf("load %.2f at the start, %.2f at the end; written to %s\n",
         doc["environment"]["load"][0].get<double>(), load[0], o.out.c_str());
  return kOk;
}

// `report`: the page and figures come from report.py (matplotlib), run by
// Debian's python3, where python3-matplotlib is installed (a python3 found
// first on PATH may be another one). LATCHBENCH_PYTHON overrides it.
int Report(int argc, char** argv) {
  std::string out = "latchbench-report";
  std::vector<std::string> docs;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (absl::StartsWith(a, "--out=")) {
      out = a.substr(6);
      if (out.empty()) {
        fprintf(stderr, "latchbench report: --out needs a directory\n");
        return kUsageError;
      }
    } else if (absl::StartsWith(a, "-") && a != "-") {
      fprintf(stderr, "latchbench report: unknown argument '%s'\n%s", a.c_str(), kUsage);
      return kUsageError;
    } else {
      docs.push_back(a);
    }
  }
  if (docs.empty() || docs.size() > 2) {
    fprintf(stderr, "latchbench report: give one document, or two to compare (got %zu)\n%s",
            docs.size(), kUsage);
    return kUsageError;
  }
  std::string script = Runfile("tools/latchbench/report.py");
  if (script.empty()) script = Dir(SelfPath()) + "/report.py";
  if (access(script.c_str(), R_OK) != 0) {
    fprintf(stderr, "latchbench report: report.py is not beside latchbench (%s)\n",
            script.c_str());
    return kFailed;
  }
  const char* env_python = getenv("LATCHBENCH_PYTHON");
  const std::string python =
      env_python != nullptr && *env_python != '\0' ? env_python : "/usr/bin/python3";
  std::vector<char*> args = {const_cast<char*>(python.c_str()),
                             const_cast<char*>(script.c_str()), const_cast<char*>(out.c_str())};
  for (std::string& d : docs) args.push_back(d.data());
  args.push_back(nullptr);
  execv(python.c_str(), args.data());
  fprintf(stderr, "latchbench report: cannot run %s: %s (Debian: python3, python3-matplotlib)\n",
          python.c_str(), strerror(errno));
  return kFailed;
}

}  // namespace
}  // namespace bench
}  // namespace latchkey

int main(int argc, char** argv) {
  using namespace latchkey::bench;
  StopOnSignals(&g_interrupted);
  if (argc < 2) {
    fputs(kUsage, stderr);
    return kUsageError;
  }
  const std::string cmd = argv[1];
  if (cmd == "list") return List();
  if (cmd == "report") return Report(argc, argv);
  if (cmd == "run") {
    Options o;
    if (int rc = Parse(argc, argv, &o); rc != kOk) return rc;
    return Run(o);
  }
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    fputs(kUsage, stdout);
    return kOk;
  }
  fprintf(stderr, "latchbench: unknown command '%s'\n%s", cmd.c_str(), kUsage);
  return kUsageError;
}
