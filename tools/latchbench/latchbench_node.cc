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
//       talks to SOCKET; raw posixfd locks --raw-file, raw sanlock the lease
//       --raw-sanlock (NAME:PATH:OFFSET, made by `sanlock direct init -r`). The timed part ends
//       after S seconds once it has 5 samples (cycle_paths.h).
//   latchbench-node handoff BACKEND PATH LOCKSPACE LEASE ROUNDS HOLD_MS OUT [options]
//       ROUNDS times (or until --max-seconds): take LEASE exclusively,
//       waiting for whoever holds it; hold it HOLD_MS; release; pause HOLD_MS
//       (so a waiter on another node gets it). Writes "grant NS" and
//       "release NS" lines (this node's CLOCK_REALTIME; latchbench maps it
//       onto node 1's with the measured offset, clock_sync.h)
//       to OUT, then "done" or "error MESSAGE". Options as for cycles.
//   latchbench-node contend BACKEND PATH LOCKSPACE PREFIX RESOURCES OWNERS SECONDS SEED DIST
//                   HOLD_US OUT GO [options]
//       OWNERS threads, an owner each, take leases PREFIX-1..PREFIX-RESOURCES
//       exclusively (DIST "uniform", or "hot": 80% on PREFIX-1), waiting for
//       them, hold each HOLD_US and release, for SECONDS (contention.h).
//       Writes "ready" to OUT once every path is made, waits for the file GO
//       ("-": no wait), runs, then writes the tallies as one JSON line and
//       "done", or "error MESSAGE". Raw posixfd locks --raw-file-K.
//   latchbench-node hold BACKEND PATH LOCKSPACE LEASE WAIT_S OUT [options]
//       Takes LEASE exclusively, waiting up to WAIT_S seconds, and holds it
//       until killed or sent SIGTERM (then releases it). Writes "waiting NS"
//       before asking and "grant NS" once granted (this node's
//       CLOCK_REALTIME), each flushed at once, then "released" or
//       "error MESSAGE". The failover scenario's holder and survivor
//       (failover.h).
//   latchbench-node hold-nl LOCKSPACE NAME...
//       Holds a DLM NL lock on each NAME, so this node masters them, prints
//       "holding", and keeps them until stdin closes or it is killed.
//   latchbench-node hello SOCKET
//       Asks the latchd at SOCKET for its hello and prints one line,
//       {"hello": {...}, "hostname", "kernel", "cpus"} (latchbench --hosts).
//   latchbench-node clock-serve PORT
//       Answers clock probes on UDP PORT until killed (clock_sync.h).
//   latchbench-node clock-probe ADDRESS PORT PROBES
//       Probes the clock server at ADDRESS:PORT PROBES times (5 ms apart)
//       and prints one line, {"offset_ns": N, "uncertainty_ns": N, ...}:
//       the server's clock minus this node's.
//
// Exit codes: 0 done, 1 a measurement or lock failed, 2 bad usage.
#include <signal.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
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
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/client.h"
#include "backends/dlm/raw_lock.h"
#include "core/config.h"
#include "core/lock_mode.h"
#include "core/plugin_loader.h"
#include "nlohmann/json.hpp"
#include "tools/latchbench/clock_sync.h"
#include "tools/latchbench/contention.h"
#include "tools/latchbench/cost_counters.h"
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

// The options after the positional arguments.
struct Flags {
  std::string plugin_dir = "/shared/bin", settings_file, socket, raw_file, raw_sanlock;
  double max_seconds = 0;
};
constexpr char kFlagsUsage[] =
    "[--plugin-dir=DIR] [--settings=FILE] [--socket=SOCKET] [--raw-file=FILE] "
    "[--raw-sanlock=NAME:PATH:OFFSET] [--max-seconds=S]";

// Parses argv[from..]; an error names the bad argument.
absl::Status ParseFlags(int argc, char** argv, int from, Flags* f) {
  for (int i = from; i < argc; ++i) {
    absl::string_view a = argv[i];
    if (absl::ConsumePrefix(&a, "--plugin-dir=")) {
      f->plugin_dir = std::string(a);
    } else if (absl::ConsumePrefix(&a, "--settings=")) {
      f->settings_file = std::string(a);
    } else if (absl::ConsumePrefix(&a, "--socket=")) {
      f->socket = std::string(a);
    } else if (absl::ConsumePrefix(&a, "--raw-file=")) {
      f->raw_file = std::string(a);
    } else if (absl::ConsumePrefix(&a, "--raw-sanlock=")) {
      f->raw_sanlock = std::string(a);
    } else if (absl::ConsumePrefix(&a, "--max-seconds=")) {
      if (!absl::SimpleAtod(a, &f->max_seconds) || !(f->max_seconds >= 0)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--max-seconds must be a number of seconds, not '", a, "'"));
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown argument '", argv[i], "'"));
    }
  }
  return absl::OkStatus();
}

// The cycle path `path` of `backend` on `lease`; an in-process backend is
// loaded into *loaded, or the one already there is used (with an owner of
// its own). InvalidArgument: bad usage; other errors: failures.
absl::StatusOr<std::unique_ptr<CyclePath>> MakePath(const std::string& backend,
                                                    const std::string& path,
                                                    const std::string& lockspace,
                                                    const std::string& lease, const Flags& f,
                                                    std::unique_ptr<Backend>* loaded) {
  if (path == "raw") {
    if (backend == "dlm") return RawDlmPath(lockspace, lease);
    if (backend == "posixfd") {
      if (f.raw_file.empty()) return absl::InvalidArgumentError("raw posixfd needs --raw-file");
      return RawPosixfdPath(f.raw_file);
    }
    if (backend == "sanlock") {
      if (f.raw_sanlock.empty()) {
        return absl::InvalidArgumentError("raw sanlock needs --raw-sanlock=NAME:PATH:OFFSET");
      }
      return RawSanlockPath(lockspace, f.raw_sanlock);
    }
    return absl::InvalidArgumentError(absl::StrCat("no raw path for backend '", backend, "'"));
  }
  if (path == "in-process" && *loaded != nullptr) {  // one backend, several owners
    absl::StatusOr<Resource> res = Resource::Lease(lockspace, lease);
    if (!res.ok()) return absl::FailedPreconditionError(res.status().ToString());
    return InProcessPath(loaded->get(), OwnerForThisProcess(RandomUuid(), "latchbench"), *res);
  }
  if (path == "in-process") {
    std::string text;
    if (!f.settings_file.empty()) {
      std::ifstream in(f.settings_file);
      if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", f.settings_file));
      std::stringstream ss;
      ss << in.rdbuf();
      text = ss.str();
    }
    absl::StatusOr<Config> cfg = Config::ParseText(text, f.settings_file);
    if (!cfg.ok()) return absl::FailedPreconditionError(cfg.status().ToString());
    absl::StatusOr<std::unique_ptr<Backend>> b = LoadBackend({f.plugin_dir}, backend, *cfg);
    if (!b.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("loading ", backend, ": ", b.status().ToString()));
    }
    *loaded = std::move(*b);
    absl::StatusOr<Resource> res = Resource::Lease(lockspace, lease);
    if (!res.ok()) return absl::FailedPreconditionError(res.status().ToString());
    return InProcessPath(loaded->get(), OwnerForThisProcess(RandomUuid(), "latchbench"), *res);
  }
  if (path == "latchd") {
    if (f.socket.empty()) return absl::InvalidArgumentError("the latchd path needs --socket");
    absl::StatusOr<std::unique_ptr<CyclePath>> l = LatchdPath(f.socket, backend, lockspace, lease);
    if (!l.ok()) {
      return absl::UnavailableError(
          absl::StrCat("latchd at ", f.socket, ": ", l.status().ToString()));
    }
    return l;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown path '", path, "'"));
}

// Usage (2) for InvalidArgument, else a failure (1).
int Refuse(const absl::Status& s) {
  return absl::IsInvalidArgument(s) ? Usage(std::string(s.message())) : Fail(s.ToString());
}

int Cycles(int argc, char** argv) {
  if (argc < 9) {
    return Usage(absl::StrCat("cycles BACKEND PATH MODE LOCKSPACE LEASE WARMUP CYCLES ",
                              kFlagsUsage));
  }
  const std::string backend = argv[2], path = argv[3], lockspace = argv[5], lease = argv[6];
  absl::StatusOr<LockMode> mode = ParseLockMode(argv[4]);
  if (!mode.ok()) return Usage(mode.status().ToString());
  int warmup = 0, cycles = 0;
  if (!absl::SimpleAtoi(argv[7], &warmup) || warmup < 0 || !absl::SimpleAtoi(argv[8], &cycles) ||
      cycles < 1) {
    return Usage("WARMUP must be 0 or more and CYCLES 1 or more");
  }
  Flags flags;
  if (absl::Status st = ParseFlags(argc, argv, 9, &flags); !st.ok()) return Refuse(st);
  std::unique_ptr<Backend> loaded;
  absl::StatusOr<std::unique_ptr<CyclePath>> made =
      MakePath(backend, path, lockspace, lease, flags, &loaded);
  if (!made.ok()) return Refuse(made.status());
  std::unique_ptr<CyclePath> p = std::move(*made);
  // The warm-up, then the timed cycles between two readings of the node's
  // counters (cost_counters.h): what the timed cycles cost this node.
  absl::StatusOr<std::vector<double>> s = TimeCycles(*p, *mode, warmup, 0, 0, &g_stop, {});
  const CostSnapshot before = TakeCostSnapshot();
  const absl::Time start = absl::Now();
  if (s.ok()) s = TimeCycles(*p, *mode, 0, cycles, flags.max_seconds, &g_stop, {});
  const double block_s = absl::ToDoubleSeconds(absl::Now() - start);
  const CostSnapshot after = TakeCostSnapshot();
  p.reset();  // the latchd owner unregistered, the raw lockspace closed
  if (!s.ok()) return Fail(s.status().ToString());
  nlohmann::json cost = CostDelta(before, after, static_cast<int>(s->size()));
  cost["seconds"] = block_s;
  // The background: the same counters over an idle interval as long as the
  // block (0.2 to 1 s), scaled to the block's length (cost_counters.h).
  const double idle_s = std::clamp(block_s, 0.2, 1.0);
  const CostSnapshot idle_before = TakeCostSnapshot();
  absl::SleepFor(absl::Seconds(idle_s));
  const CostSnapshot idle_after = TakeCostSnapshot();
  cost["background"] = ScaledCost(CostDelta(idle_before, idle_after, 0), block_s / idle_s);
  cost["background_idle_seconds"] = idle_s;
  printf("%s\n", nlohmann::json({{"samples", *s}, {"cost", cost}}).dump().c_str());
  return 0;
}

int Handoff(int argc, char** argv) {
  if (argc < 9) {
    return Usage(absl::StrCat("handoff BACKEND PATH LOCKSPACE LEASE ROUNDS HOLD_MS OUT ",
                              kFlagsUsage));
  }
  const std::string backend = argv[2], path = argv[3], lockspace = argv[4], lease = argv[5];
  int rounds = 0, hold_ms = 0;
  if (!absl::SimpleAtoi(argv[6], &rounds) || rounds < 1 || !absl::SimpleAtoi(argv[7], &hold_ms) ||
      hold_ms < 0 || hold_ms > 60000) {
    return Usage("ROUNDS must be 1 or more and HOLD_MS from 0 to 60000");
  }
  Flags flags;
  if (absl::Status st = ParseFlags(argc, argv, 9, &flags); !st.ok()) return Refuse(st);
  FILE* out = fopen(argv[8], "w");
  if (out == nullptr) return Fail(absl::StrCat(argv[8], ": ", strerror(errno)));
  auto finish = [&](const std::string& error) {
    fprintf(out, "%s\n", error.empty() ? "done" : ("error " + error).c_str());
    fclose(out);
    return error.empty() ? 0 : Fail(error);
  };
  std::unique_ptr<Backend> loaded;
  absl::StatusOr<std::unique_ptr<CyclePath>> made =
      MakePath(backend, path, lockspace, lease, flags, &loaded);
  if (!made.ok()) return finish(made.status().ToString());
  std::unique_ptr<CyclePath> p = std::move(*made);
  const int64_t start = RealtimeNs();
  for (int i = 0; i < rounds && !g_stop; ++i) {
    if (flags.max_seconds > 0 && (RealtimeNs() - start) / 1e9 >= flags.max_seconds) break;
    if (absl::Status st = p->AcquireWaiting(LockMode::kExclusive, absl::Seconds(120)); !st.ok()) {
      return finish(absl::StrCat("round ", i + 1, ": ", st.ToString()));
    }
    fprintf(out, "grant %lld\n", static_cast<long long>(RealtimeNs()));
    usleep(static_cast<useconds_t>(hold_ms) * 1000);
    fprintf(out, "release %lld\n", static_cast<long long>(RealtimeNs()));
    if (absl::Status st = p->Release(); !st.ok()) {
      return finish(absl::StrCat("round ", i + 1, ": release: ", st.ToString()));
    }
    fflush(out);
    usleep(static_cast<useconds_t>(hold_ms) * 1000);  // the other node's turn
  }
  p.reset();
  return finish("");
}

int Hold(int argc, char** argv) {
  if (argc < 8) {
    return Usage(absl::StrCat("hold BACKEND PATH LOCKSPACE LEASE WAIT_S OUT ", kFlagsUsage));
  }
  // OUT first: whoever waits for it learns of every failure, bad usage too.
  FILE* out = fopen(argv[7], "w");
  if (out == nullptr) return Fail(absl::StrCat(argv[7], ": ", strerror(errno)));
  auto line = [&](const std::string& text) {
    fprintf(out, "%s\n", text.c_str());
    fflush(out);
  };
  auto fail = [&](const absl::Status& st) {
    line("error " + std::string(st.message()));
    fclose(out);
    return Refuse(st);
  };
  const std::string backend = argv[2], path = argv[3], lockspace = argv[4], lease = argv[5];
  int wait_s = 0;
  if (!absl::SimpleAtoi(argv[6], &wait_s) || wait_s < 1 || wait_s > 3600) {
    return fail(absl::InvalidArgumentError("WAIT_S must be 1 to 3600 seconds"));
  }
  Flags flags;
  if (absl::Status st = ParseFlags(argc, argv, 8, &flags); !st.ok()) return fail(st);
  std::unique_ptr<Backend> loaded;
  absl::StatusOr<std::unique_ptr<CyclePath>> made =
      MakePath(backend, path, lockspace, lease, flags, &loaded);
  if (!made.ok()) return fail(made.status());
  std::unique_ptr<CyclePath> p = std::move(*made);
  line(absl::StrCat("waiting ", RealtimeNs()));
  if (absl::Status st = p->AcquireWaiting(LockMode::kExclusive, absl::Seconds(wait_s)); !st.ok()) {
    return fail(absl::InternalError(st.ToString()));
  }
  line(absl::StrCat("grant ", RealtimeNs()));
  while (!g_stop) usleep(50000);  // (pause() could miss a signal before it)
  const absl::Status st = p->Release();
  p.reset();
  if (!st.ok()) return fail(absl::InternalError("release: " + st.ToString()));
  line("released");
  fclose(out);
  return 0;
}

int Contend(int argc, char** argv) {
  if (argc < 14) {
    return Usage(absl::StrCat("contend BACKEND PATH LOCKSPACE PREFIX RESOURCES OWNERS SECONDS "
                              "SEED DIST HOLD_US OUT GO ", kFlagsUsage));
  }
  // OUT first: whoever waits for it learns of every failure, bad usage too.
  FILE* out = fopen(argv[12], "w");
  if (out == nullptr) return Fail(absl::StrCat(argv[12], ": ", strerror(errno)));
  auto finish = [&](const std::string& error, int code = 1) {
    fprintf(out, "%s\n", error.empty() ? "done" : ("error " + error).c_str());
    fclose(out);
    if (error.empty()) return 0;
    return code == 2 ? Usage(error) : Fail(error);
  };
  const std::string backend = argv[2], path = argv[3], lockspace = argv[4], prefix = argv[5];
  const std::string dist = argv[10];
  ContendOptions o;
  if (!absl::SimpleAtoi(argv[6], &o.resources) || o.resources < 1 || o.resources > 1000 ||
      !absl::SimpleAtoi(argv[7], &o.owners) || o.owners < 1 || o.owners > 256 ||
      !absl::SimpleAtod(argv[8], &o.seconds) || !(o.seconds > 0) || o.seconds > 86400 ||
      !absl::SimpleAtoi(argv[9], &o.seed) || (dist != "uniform" && dist != "hot") ||
      !absl::SimpleAtoi(argv[11], &o.hold_us) || o.hold_us < 0 || o.hold_us > 60000000) {
    return finish("RESOURCES 1..1000, OWNERS 1..256, SECONDS > 0, SEED a number, DIST uniform "
                  "or hot, HOLD_US 0..60000000", 2);
  }
  o.hot_spot = dist == "hot";
  Flags flags;
  if (absl::Status st = ParseFlags(argc, argv, 14, &flags); !st.ok()) {
    return finish(std::string(st.message()), absl::IsInvalidArgument(st) ? 2 : 1);
  }
  const std::string go = argv[13];
  std::unique_ptr<Backend> loaded;  // shared by every in-process owner
  absl::StatusOr<std::vector<OwnerTally>> t = RunContention(
      o,
      [&](int, int k) {
        Flags f = flags;
        if (!f.raw_file.empty()) f.raw_file = absl::StrCat(f.raw_file, "-", k + 1);
        return MakePath(backend, path, lockspace, absl::StrCat(prefix, "-", k + 1), f, &loaded);
      },
      [&] {
        fprintf(out, "ready\n");
        fflush(out);
        while (go != "-" && !g_stop && access(go.c_str(), F_OK) != 0) usleep(5000);
      },
      &g_stop);
  if (!t.ok()) return finish(t.status().ToString());
  fprintf(out, "%s\n", TalliesToJson(*t).dump().c_str());
  return finish("");
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

int Hello(int argc, char** argv) {
  if (argc != 3) return Usage("usage: hello SOCKET");
  absl::StatusOr<LatchdClient> c = LatchdClient::Connect(argv[2], absl::Seconds(10));
  if (!c.ok()) return Fail(std::string(c.status().message()));
  absl::StatusOr<nlohmann::json> h = c->Call({{"op", "hello"}});
  if (!h.ok()) return Fail(absl::StrCat("latchd at ", argv[2], ": ", h.status().message()));
  struct utsname u;
  if (uname(&u) != 0) return Fail(absl::StrCat("uname: ", strerror(errno)));
  printf("%s\n", nlohmann::json{{"hello", *h},
                                {"hostname", u.nodename},
                                {"kernel", u.release},
                                {"cpus", sysconf(_SC_NPROCESSORS_ONLN)}}
                     .dump()
                     .c_str());
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
  if (cmd == "handoff") return Handoff(argc, argv);
  if (cmd == "hold") return Hold(argc, argv);
  if (cmd == "contend") return Contend(argc, argv);
  if (cmd == "hello") return Hello(argc, argv);
  if (cmd == "clock-serve") return ClockServe(argc, argv);
  if (cmd == "clock-probe") return ClockProbe(argc, argv);
  return Usage(
      "usage: latchbench-node cycles ... | handoff ... | hold ... | contend ... | hold-nl LOCKSPACE NAME... | "
      "hello SOCKET | clock-serve PORT | clock-probe ADDRESS PORT PROBES (see the source)");
}
