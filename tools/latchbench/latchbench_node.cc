// latchbench-node: the part of latchbench that runs in a lab node (latchbench
// installs it into /shared/bin and runs it there; docs/latchbench.md).
//
//   latchbench-node cycles BACKEND PATH MODE LOCKSPACE LEASE WARMUP CYCLES
//                   [--plugin-dir=DIR] [--settings=FILE] [--socket=SOCKET]
//                   [--raw-file=FILE] [--max-seconds=S]
//       Times WARMUP + CYCLES uncontended acquire+release cycles of LEASE on
//       PATH (raw, in-process, latchd; cycle_paths.h) and prints one line,
//       {"samples": [seconds, ...]}. in-process loads BACKEND from DIR with
//       the settings in FILE (latchd.conf syntax, unprefixed keys); latchd
//       talks to SOCKET; raw posixfd locks --raw-file. The timed part ends
//       after S seconds once it has 5 samples (cycle_paths.h).
//   latchbench-node hold-nl LOCKSPACE NAME...
//       Holds a DLM NL lock on each NAME, so this node masters them, prints
//       "holding", and keeps them until stdin closes or it is killed.
//   latchbench-node clock-serve PORT
//       Answers clock probes on UDP PORT until killed (clock_sync.h).
//   latchbench-node clock-probe ADDRESS PORT PROBES
//       Probes the clock server at ADDRESS:PORT PROBES times (5 ms apart)
//       and prints one line, {"offset_ns": N, "uncertainty_ns": N, ...}:
//       the server's clock minus this node's.
//
// Exit codes: 0 done, 1 a measurement or lock failed, 2 bad usage.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "backends/dlm/raw_lock.h"
#include "core/config.h"
#include "core/lock_mode.h"
#include "core/plugin_loader.h"
#include "nlohmann/json.hpp"
#include "tools/latchbench/clock_sync.h"
#include "tools/latchbench/cycle_paths.h"

namespace latchkey {
namespace bench {
namespace {

std::atomic<bool> g_stop{false};

int Usage(const std::string& what) {
  fprintf(stderr, "latchbench-node: %s\n", what.c_str());
  return 2;
}
int Fail(const std::string& what) {
  fprintf(stderr, "latchbench-node: %s\n", what.c_str());
  return 1;
}

int Cycles(int argc, char** argv) {
  if (argc < 10) {
    return Usage("cycles BACKEND PATH MODE LOCKSPACE LEASE WARMUP CYCLES [--plugin-dir=DIR] "
                 "[--settings=FILE] [--socket=SOCKET] [--raw-file=FILE] [--max-seconds=S]");
  }
  const std::string backend = argv[2], path = argv[3], lockspace = argv[5], lease = argv[6];
  absl::StatusOr<LockMode> mode = ParseLockMode(argv[4]);
  if (!mode.ok()) return Usage(mode.status().ToString());
  int warmup = 0, cycles = 0;
  if (!absl::SimpleAtoi(argv[7], &warmup) || warmup < 0 || !absl::SimpleAtoi(argv[8], &cycles) ||
      cycles < 1) {
    return Usage("WARMUP must be 0 or more and CYCLES 1 or more");
  }
  std::string plugin_dir = "/shared/bin", settings_file, socket, raw_file;
  double max_seconds = 0;
  for (int i = 9; i < argc; ++i) {
    absl::string_view a = argv[i];
    if (absl::ConsumePrefix(&a, "--plugin-dir=")) {
      plugin_dir = std::string(a);
    } else if (absl::ConsumePrefix(&a, "--settings=")) {
      settings_file = std::string(a);
    } else if (absl::ConsumePrefix(&a, "--socket=")) {
      socket = std::string(a);
    } else if (absl::ConsumePrefix(&a, "--raw-file=")) {
      raw_file = std::string(a);
    } else if (absl::ConsumePrefix(&a, "--max-seconds=")) {
      if (!absl::SimpleAtod(a, &max_seconds) || max_seconds < 0) {
        return Usage(absl::StrCat("--max-seconds must be a number of seconds, not '", a, "'"));
      }
    } else {
      return Usage(absl::StrCat("unknown argument '", argv[i], "'"));
    }
  }
  std::unique_ptr<Backend> loaded;
  std::unique_ptr<CyclePath> p;
  if (path == "raw") {
    if (backend == "dlm") {
      absl::StatusOr<std::unique_ptr<CyclePath>> r = RawDlmPath(lockspace, lease);
      if (!r.ok()) return Fail(r.status().ToString());
      p = std::move(*r);
    } else if (backend == "posixfd") {
      if (raw_file.empty()) return Usage("raw posixfd needs --raw-file");
      p = RawPosixfdPath(raw_file);
    } else {
      return Usage(absl::StrCat("no raw path for backend '", backend, "'"));
    }
  } else if (path == "in-process") {
    std::string text;
    if (!settings_file.empty()) {
      std::ifstream in(settings_file);
      if (!in) return Fail(absl::StrCat("cannot read ", settings_file));
      std::stringstream ss;
      ss << in.rdbuf();
      text = ss.str();
    }
    absl::StatusOr<Config> cfg = Config::ParseText(text, settings_file);
    if (!cfg.ok()) return Fail(cfg.status().ToString());
    absl::StatusOr<std::unique_ptr<Backend>> b = LoadBackend({plugin_dir}, backend, *cfg);
    if (!b.ok()) return Fail(absl::StrCat("loading ", backend, ": ", b.status().ToString()));
    loaded = std::move(*b);
    absl::StatusOr<Resource> res = Resource::Lease(lockspace, lease);
    if (!res.ok()) return Fail(res.status().ToString());
    p = InProcessPath(loaded.get(), OwnerForThisProcess(RandomUuid(), "latchbench"), *res);
  } else if (path == "latchd") {
    if (socket.empty()) return Usage("the latchd path needs --socket");
    absl::StatusOr<std::unique_ptr<CyclePath>> l = LatchdPath(socket, backend, lockspace, lease);
    if (!l.ok()) return Fail(absl::StrCat("latchd at ", socket, ": ", l.status().ToString()));
    p = std::move(*l);
  } else {
    return Usage(absl::StrCat("unknown path '", path, "'"));
  }
  absl::StatusOr<std::vector<double>> s = TimeCycles(*p, *mode, warmup, cycles, max_seconds, &g_stop, {});
  p.reset();  // the latchd owner unregistered, the raw lockspace closed
  if (!s.ok()) return Fail(s.status().ToString());
  printf("%s\n", nlohmann::json({{"samples", *s}}).dump().c_str());
  return 0;
}

int HoldNl(int argc, char** argv) {
  if (argc < 4) return Usage("hold-nl LOCKSPACE NAME...");
  dlm_lshandle_t ls = dlm_open_lockspace(argv[2]);
  if (ls == nullptr) ls = dlm_create_lockspace(argv[2], 0600);
  if (ls == nullptr || dlm_ls_pthread_init(ls) != 0) {
    return Fail(absl::StrCat("DLM lockspace ", argv[2], ": ", strerror(errno)));
  }
  std::vector<std::unique_ptr<RawDlmLock>> held;
  for (int i = 3; i < argc; ++i) {
    held.push_back(std::make_unique<RawDlmLock>());
    if (!held.back()->Lock(ls, argv[i], LKM_NLMODE)) {
      return Fail(absl::StrCat("NL lock on ", argv[i], ": status ", held.back()->status()));
    }
  }
  printf("holding\n");
  fflush(stdout);
  char c;
  while (!g_stop && read(0, &c, 1) > 0) {
  }
  for (auto& h : held) h->Unlock(ls);
  dlm_close_lockspace(ls);
  return 0;
}

int ClockServe(int argc, char** argv) {
  int port = 0;
  if (argc != 3 || !absl::SimpleAtoi(argv[2], &port)) return Usage("clock-serve PORT");
  absl::Status s = ServeClock(port, &g_stop);
  return s.ok() ? 0 : (absl::IsInvalidArgument(s) ? Usage(s.ToString()) : Fail(s.ToString()));
}

int ClockProbe(int argc, char** argv) {
  int port = 0, probes = 0;
  if (argc != 5 || !absl::SimpleAtoi(argv[3], &port) || !absl::SimpleAtoi(argv[4], &probes)) {
    return Usage("clock-probe ADDRESS PORT PROBES");
  }
  absl::StatusOr<ClockOffset> o = ProbeClock(argv[2], port, probes, 5);
  if (!o.ok()) {
    return absl::IsInvalidArgument(o.status()) ? Usage(o.status().ToString())
                                               : Fail(o.status().ToString());
  }
  printf("%s\n", o->ToJson().dump().c_str());
  return 0;
}

}  // namespace
}  // namespace bench
}  // namespace latchkey

int main(int argc, char** argv) {
  using namespace latchkey::bench;
  StopOnSignals(&g_stop);
  const std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "cycles") return Cycles(argc, argv);
  if (cmd == "hold-nl") return HoldNl(argc, argv);
  if (cmd == "clock-serve") return ClockServe(argc, argv);
  if (cmd == "clock-probe") return ClockProbe(argc, argv);
  return Usage(
      "usage: latchbench-node cycles ... | hold-nl LOCKSPACE NAME... | clock-serve PORT | "
      "clock-probe ADDRESS PORT PROBES (see the source)");
}
