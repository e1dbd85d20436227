// latchbench: compares lock backends on the same machine, in one run, and
// writes what it measured as one JSON document (docs/latchbench.md).
//
//   latchbench list
//   latchbench run [--quick] [--backends=posixfd,nop] [--scenarios=uncontended]
//                  [--runs=N] [--cycles=N] [--warmup=N] [--seed=N] [--out=FILE]
//                  [--latchd=PATH] [--plugin-path=DIR:DIR] [--max-run-spread=0.25]
//
// This is the first part of issue 18: the local backends (posixfd and the
// nop floor), the `uncontended` scenario, in process (through the plugin
// ABI) and through a private latchd; the lab backends, the other scenarios
// and the report come next.
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
#include "tools/latchbench/environment.h"
#include "tools/latchbench/latchd_runner.h"
#include "tools/latchbench/stats.h"

namespace latchkey {
namespace bench {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr char kSchema[] = "latchbench/1";
constexpr char kUsage[] = R"(usage: latchbench list
       latchbench run [--quick] [--backends=posixfd,nop] [--scenarios=uncontended]
                      [--runs=N] [--cycles=N] [--warmup=N] [--seed=N] [--out=FILE]
                      [--latchd=PATH] [--plugin-path=DIR:DIR] [--max-run-spread=F]
       latchbench report [--out=DIR] A.json [B.json]
)";

// Exit codes: 0 done, 1 a measurement failed, 2 bad usage, 130 interrupted.
constexpr int kOk = 0, kFailed = 1, kUsageError = 2, kInterrupted = 130;

// Set by SIGINT, SIGTERM and SIGHUP: the run stops after the cycle in
// progress, and the private latchd is stopped by its PID on the way out.
std::atomic<bool> g_interrupted{false};
void OnSignal(int) { g_interrupted = true; }

struct ScenarioInfo {
  const char* name;
  const char* what;
};
constexpr ScenarioInfo kScenarios[] = {
    {"uncontended",
     "one owner, one lease: acquire (no wait) + release, timed per cycle, in every mode the "
     "backend grants; in process (plugin ABI) and through latchd"},
};

struct BackendInfo {
  const char* name;
  const char* needs;
};
// What `run` can measure on this machine. dlm and sanlock need the cluster
// lab and come with the lab runner (issue 18's next part).
constexpr BackendInfo kBackends[] = {
    {"posixfd", "a local lock directory (latchbench makes one)"},
    {"nop", "nothing: grants everything, the floor (latchkey's own cost)"},
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
  std::string latchd;
  std::vector<std::string> plugin_path;
  std::vector<std::string> argv;
};

// One way of taking and dropping the scenario's lease.
class CyclePath {
 public:
  virtual ~CyclePath() = default;
  virtual absl::Status Acquire(LockMode mode) = 0;
  virtual absl::Status Release() = 0;
};

// Through the plugin ABI, in this process.
class InProcess final : public CyclePath {
 public:
  InProcess(Backend* backend, Owner owner, Resource resource)
      : backend_(backend), owner_(std::move(owner)), resource_(std::move(resource)) {}
  absl::Status Acquire(LockMode mode) override {
    return backend_->Acquire(owner_, resource_, mode, AcquireOptions{}).status();
  }
  absl::Status Release() override { return backend_->Release(owner_, resource_); }

 private:
  Backend* backend_;
  Owner owner_;
  Resource resource_;
};

// The raw-API baseline of posixfd: by hand, what an exclusive posixfd grant
// must do at the least (the backend's own layout: an OFD write lock on its
// lock range, the header read, the token and holder record written), and
// close to release. The in-process path adds the plugin ABI, validation, the
// owner table and the record encoding.
class RawPosixfd final : public CyclePath {
 public:
  explicit RawPosixfd(std::string file) : file_(std::move(file)) {}
  ~RawPosixfd() override {
    if (fd_ >= 0) close(fd_);
  }
  absl::Status Acquire(LockMode mode) override {
    if (mode != LockMode::kExclusive) return absl::InvalidArgumentError("raw: exclusive only");
    fd_ = open(file_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd_ < 0) return absl::ErrnoToStatus(errno, absl::StrCat("open ", file_));
    struct flock fl = {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = posixfd::kLockBase;  // the gate and both class bytes
    fl.l_len = 3;
    if (fcntl(fd_, F_OFD_SETLK, &fl) != 0) return absl::ErrnoToStatus(errno, "F_OFD_SETLK");
    unsigned char header[posixfd::kHeaderSize];
    if (pread(fd_, header, sizeof header, 0) < 0) return absl::ErrnoToStatus(errno, "pread");
    ++token_;
    memcpy(record_, &token_, sizeof token_);
    if (pwrite(fd_, record_, sizeof record_, posixfd::kTokenOffset) !=
        static_cast<ssize_t>(sizeof record_)) {
      return absl::ErrnoToStatus(errno, "pwrite");
    }
    return absl::OkStatus();
  }
  absl::Status Release() override {
    const int fd = fd_;
    fd_ = -1;
    return close(fd) == 0 ? absl::OkStatus() : absl::ErrnoToStatus(errno, "close");
  }

 private:
  std::string file_;
  int fd_ = -1;
  uint64_t token_ = 0;
  // Token to the end of the exclusive holder record, as posixfd writes them.
  unsigned char record_[posixfd::kExclusiveRecord - posixfd::kTokenOffset + posixfd::kRecordSize] =
      {};
};

// Through latchd: one `acquire` and one `release` request per cycle, on one
// connection, for one registered owner (this process).
class ThroughLatchd final : public CyclePath {
 public:
  static absl::StatusOr<std::unique_ptr<ThroughLatchd>> Open(const std::string& socket,
                                                             const std::string& backend,
                                                             const std::string& lease) {
    absl::StatusOr<LatchdClient> c = LatchdClient::Connect(socket, absl::Seconds(10));
    if (!c.ok()) return c.status();
    std::unique_ptr<ThroughLatchd> t(new ThroughLatchd(std::move(*c)));
    t->uuid_ = RandomUuid();
    t->backend_ = backend;
    t->lease_ = lease;
    absl::StatusOr<json> r = t->client_.Call(
        {{"op", "register"},
         {"owner", {{"uuid", t->uuid_}, {"name", "latchbench"}, {"pid", getpid()}}},
         {"policy", "ignore"}});
    if (!r.ok()) return r.status();
    return t;
  }
  ~ThroughLatchd() override {
    (void)client_.Call({{"op", "unregister"}, {"uuid", uuid_}});
  }
  absl::Status Acquire(LockMode mode) override {
    return client_
        .Call({{"op", "acquire"},
               {"uuid", uuid_},
               {"resources",
                {{{"lease", lease_}, {"lockspace", "latchbench"}, {"backend", backend_},
                  {"mode", LockModeName(mode)}}}}})
        .status();
  }
  absl::Status Release() override {
    return client_
        .Call({{"op", "release"},
               {"uuid", uuid_},
               {"resources",
                {{{"lease", lease_}, {"lockspace", "latchbench"}, {"backend", backend_}}}}})
        .status();
  }

 private:
  explicit ThroughLatchd(LatchdClient c) : client_(std::move(c)) {}
  LatchdClient client_;
  std::string uuid_, backend_, lease_;
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

// What one cycle of the uncontended scenario is on `path`.
const char* CycleText(const std::string& path) {
  if (path == "latchd") {
    return "one acquire request (no wait) + one release request of one lease, one registered "
           "owner, one connection";
  }
  if (path == "raw") {
    return "raw OFD calls (posixfd's minimum): open, F_OFD_SETLK write lock, read the header, "
           "write token and holder record; close";
  }
  return "Backend::Acquire (no wait) + Backend::Release of one lease, one owner";
}

// The uncontended scenario on every backend and path. Fills `results`.
int RunUncontended(const Options& o, const std::string& workdir, json* results,
                   nlohmann::json* latchd_hello) {
  // Backends in this process, with their own private settings.
  std::map<std::string, std::unique_ptr<Backend>> loaded;
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
    loaded[b] = std::move(*be);
  }
  // One latchd for every backend; nop only as a benchmark backend.
  LatchdSetup setup;
  setup.binary = o.latchd;
  setup.dir = workdir + "/latchd";
  mkdir(setup.dir.c_str(), 0700);
  setup.plugin_path = o.plugin_path;
  setup.backends = o.backends;
  for (const std::string& b : o.backends) {
    if (loaded[b]->capabilities().no_exclusion) setup.benchmark_backends.push_back(b);
  }
  absl::StatusOr<std::unique_ptr<PrivateLatchd>> latchd = PrivateLatchd::Start(setup);
  if (!latchd.ok()) {
    fprintf(stderr, "latchbench: starting latchd: %s\n", latchd.status().ToString().c_str());
    return kFailed;
  }
  *latchd_hello = (*latchd)->hello();

  struct Block {
    std::string backend, path;
    LockMode mode;
    std::vector<Summary> runs;
    std::vector<std::vector<double>> samples;
  };
  std::vector<Block> blocks;
  for (const std::string& b : o.backends) {
    // The raw API's cycle, where there is one (posixfd: fcntl; nop has none).
    if (b == "posixfd") blocks.push_back({b, "raw", LockMode::kExclusive, {}, {}});
    for (const char* path : {"in-process", "latchd"}) {
      for (LockMode m : Modes(loaded[b]->capabilities())) blocks.push_back({b, path, m, {}, {}});
    }
  }
  Progress progress(static_cast<int64_t>(blocks.size()) * o.runs * (o.cycles + o.warmup));
  const std::string lease = absl::StrCat("uncontended-", o.seed);
  for (int run = 0; run < o.runs; ++run) {
    // Rotated each run, so a drift of the machine does not favour one block.
    for (size_t k = 0; k < blocks.size(); ++k) {
      Block& bl = blocks[(k + static_cast<size_t>(run)) % blocks.size()];
      std::unique_ptr<CyclePath> path;
      if (bl.path == "raw") {
        path = std::make_unique<RawPosixfd>(workdir + "/raw.lock");
      } else if (bl.path == "in-process") {
        absl::StatusOr<Resource> res = Resource::Lease("latchbench", lease);
        if (!res.ok()) {
          fprintf(stderr, "latchbench: %s\n", res.status().ToString().c_str());
          return kFailed;
        }
        path = std::make_unique<InProcess>(loaded[bl.backend].get(),
                                           OwnerForThisProcess(RandomUuid(), "latchbench"), *res);
      } else {
        absl::StatusOr<std::unique_ptr<ThroughLatchd>> t =
            ThroughLatchd::Open((*latchd)->socket(), bl.backend, lease);
        if (!t.ok()) {
          fprintf(stderr, "latchbench: latchd: %s\n%s\n", t.status().ToString().c_str(),
                  (*latchd)->LogTail().c_str());
          return kFailed;
        }
        path = std::move(*t);
      }
      const std::string name = absl::StrCat("uncontended ", bl.backend, " ", bl.path, " ",
                                            LockModeName(bl.mode), ", run ", run + 1, "/", o.runs);
      std::vector<double> samples;
      samples.reserve(static_cast<size_t>(o.cycles));
      const int total = o.warmup + o.cycles;
      for (int i = 0; i < total; ++i) {
        if (g_interrupted) {
          fprintf(stderr, "\nlatchbench: interrupted in %s; nothing written\n", name.c_str());
          return kInterrupted;
        }
        const auto t0 = Clock::now();
        absl::Status s = path->Acquire(bl.mode);
        if (s.ok()) s = path->Release();
        const auto t1 = Clock::now();
        if (!s.ok()) {
          fprintf(stderr, "\nlatchbench: %s: cycle %d failed: %s\n", name.c_str(), i + 1,
                  s.ToString().c_str());
          return kFailed;
        }
        if (i >= o.warmup) samples.push_back(std::chrono::duration<double>(t1 - t0).count());
        progress.Update(name, i + 1, total, false);
      }
      progress.Update(name, total, total, true);
      bl.runs.push_back(Summarize(samples));
      bl.samples.push_back(std::move(samples));
    }
  }
  for (const Block& bl : blocks) {
    json runs = json::array();
    std::vector<double> pooled;
    for (size_t r = 0; r < bl.runs.size(); ++r) {
      runs.push_back({{"summary", SummaryJson(bl.runs[r])}, {"samples", bl.samples[r]}});
      pooled.insert(pooled.end(), bl.samples[r].begin(), bl.samples[r].end());
    }
    const Verdict v = JudgeRuns(bl.runs, o.max_run_spread);
    results->push_back(
        {{"scenario", "uncontended"},
         {"backend", bl.backend},
         {"path", bl.path},
         {"mode", LockModeName(bl.mode)},
         {"metric", "cycle_seconds"},
         {"cycle", CycleText(bl.path)},
         {"runs", runs},
         {"summary", SummaryJson(Summarize(pooled))},
         {"verdict", {{"trusted", v.trusted}, {"relative", v.relative}, {"why", v.why}}}});
  }
  return kOk;
}

int Parse(int argc, char** argv, Options* o) {
  for (int i = 0; i < argc; ++i) o->argv.push_back(argv[i]);
  bool cycles_set = false, runs_set = false, warmup_set = false;
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
    auto whole = [&](absl::string_view flag, int min, int* out) {
      if (!absl::SimpleAtoi(v, out) || *out < min || *out > 10000000) {
        fprintf(stderr, "latchbench: %s must be a whole number from %d to 10000000, not '%s'\n",
                std::string(flag).c_str(), min, std::string(v).c_str());
        return false;
      }
      return true;
    };
    if (a == "--quick") {
      o->quick = true;
    } else if (value("--backends")) {
      o->backends = absl::StrSplit(v, ',', absl::SkipEmpty());
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
    } else if (value("--out")) {
      o->out = std::string(v);
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
    if (std::count(o->backends.begin(), o->backends.end(), b) > 1) {
      fprintf(stderr, "latchbench: backend '%s' is named twice\n", b.c_str());
      return kUsageError;
    }
  }
  for (const std::string& s : o->scenarios) {
    if (!Known(kScenarios, s)) {
      fprintf(stderr, "latchbench: unknown scenario '%s' (latchbench list shows them)\n",
              s.c_str());
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
  printf("paths: in-process (the plugin ABI in latchbench), latchd (a private latchd)\n");
  return kOk;
}

int Run(const Options& o) {
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
                       {"plugin_path", o.plugin_path}, {"latchd", o.latchd}};
  json results = json::array();
  json latchd_hello;
  int rc = kOk;
  for (const std::string& s : o.scenarios) {
    if (s == "uncontended") rc = RunUncontended(o, workdir, &results, &latchd_hello);
    if (rc != kOk) break;
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
  printf("%-12s %-9s %-10s %-11s %9s %9s %9s %7s  %s\n", "scenario", "backend", "path", "mode",
         "median_us", "p99_us", "max_us", "spread", "runs");
  for (const json& r : results) {
    const json& s = r["summary"];
    printf("%-12s %-9s %-10s %-11s %9.1f %9.1f %9.1f %7.2f  %s\n",
           r["scenario"].get<std::string>().c_str(), r["backend"].get<std::string>().c_str(),
           r["path"].get<std::string>().c_str(), r["mode"].get<std::string>().c_str(),
           1e6 * s["median"].get<double>(), 1e6 * s["p99"].get<double>(),
           1e6 * s["max"].get<double>(), s["spread"].get<double>(),
           r["verdict"]["why"].get<std::string>().c_str());
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
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &sa, nullptr);
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
