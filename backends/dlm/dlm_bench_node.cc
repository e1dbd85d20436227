// dlm_bench_node: the part of the DLM benchmark that runs on a lab node.
//
//   dlm_bench_node cycles PLUGIN_DIR LOCKSPACE NAME N ROUNDS
//       N exclusive acquire+release cycles through latchkey's dlm backend
//       (resource NAME-lk) and through raw libdlm (NAME-raw: asynchronous
//       calls, and dlm_ls_lock_wait), alternating in ROUNDS blocks; prints
//       "raw|raw_wait|latchkey median p90 mean" in microseconds.
//   dlm_bench_node hold-nl LOCKSPACE NAME...
//       holds an NL lock on each name (so this node masters the resources)
//       until stdin closes or it is killed.
//   dlm_bench_node handoff PLUGIN_DIR LOCKSPACE NAME N HOLD_MS OUT
//       N times: wait for an exclusive lock on NAME, hold it HOLD_MS, release;
//       writes "grant|release UNIX_NS" lines to OUT.
//   dlm_bench_node hold PLUGIN_DIR LOCKSPACE NAME OUT
//       takes NAME exclusively (waiting), writes "grant UNIX_NS" to OUT,
//       holds it until killed.
//   dlm_bench_node serve PLUGIN_DIR LOCKSPACE FIFO OUT
//       one backend serving requests read from FIFO, one per line:
//       "SEQ acquire|convert OWNER NAME MODE [WAIT_MS]" or "SEQ release OWNER
//       NAME"; appends "SEQ ok TOKEN" or "SEQ error CODE MESSAGE" to OUT.
//       OWNER is any word (one owner per word). For tests across nodes.
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <map>
#include <optional>
#include <string>
#include <vector>

extern "C" {
#include <libdlm.h>
}

#include "absl/strings/numbers.h"
#include "backends/dlm/raw_lock.h"
#include "absl/strings/str_cat.h"
#include "core/backend.h"
#include "core/config.h"
#include "core/plugin_loader.h"

using namespace latchkey;

namespace {

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

int64_t MonoNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

int Die(const std::string& what) {
  fprintf(stderr, "dlm_bench_node: %s\n", what.c_str());
  return 1;
}

std::unique_ptr<Backend> Open(const std::string& plugin_dir, const std::string& ls, bool* ok) {
  absl::StatusOr<Config> c = Config::ParseText(
      // Shared on purpose: raw libdlm (hold-nl, the raw cycles) and other
      // latchkey processes use the same lockspace here.
      absl::StrCat("lockspaces = [ \"", ls, "\" ]\nshared_lockspaces = [ \"", ls,
                   "\" ]\nwatch_quorum = 1\n"),
      "<bench>");
  absl::StatusOr<std::unique_ptr<Backend>> b =
      c.ok() ? LoadBackend({plugin_dir}, "dlm", *c)
             : absl::StatusOr<std::unique_ptr<Backend>>(c.status());
  if (!b.ok()) {
    fprintf(stderr, "dlm_bench_node: %s\n", b.status().ToString().c_str());
    *ok = false;
    return nullptr;
  }
  *ok = true;
  return std::move(*b);
}

Owner BenchOwner() {
  Owner o;
  o.uuid = RandomUuid();
  o.name = "bench";
  o.pid = getpid();
  char host[65] = {0};
  gethostname(host, sizeof(host) - 1);
  o.host = host;
  return o;
}

void Report(const char* what, std::vector<double> us) {
  std::sort(us.begin(), us.end());
  double sum = 0;
  for (double v : us) sum += v;
  printf("%s %.1f %.1f %.1f\n", what, us[us.size() / 2], us[us.size() * 9 / 10],
         sum / us.size());
}

int Cycles(int argc, char** argv) {
  if (argc != 7) return Die("cycles PLUGIN_DIR LOCKSPACE NAME N ROUNDS");
  const std::string ls_name = argv[3], name = argv[4];
  int n = 0, rounds = 0;
  if (!absl::SimpleAtoi(argv[5], &n) || !absl::SimpleAtoi(argv[6], &rounds) || n < 1 ||
      rounds < 1) {
    return Die("N and ROUNDS must be positive numbers");
  }
  bool ok;
  std::unique_ptr<Backend> b = Open(argv[2], ls_name, &ok);
  if (!ok) return 1;
  dlm_lshandle_t ls = dlm_create_lockspace(ls_name.c_str(), 0600);
  if (ls == nullptr || dlm_ls_pthread_init(ls) != 0) {
    return Die(absl::StrCat("lockspace ", ls_name, ": ", strerror(errno)));
  }
  const std::string raw_name = name + "-raw";
  const Owner owner = BenchOwner();
  absl::StatusOr<Resource> res = Resource::Lease(ls_name, name + "-lk");
  if (!res.ok()) return Die(res.status().ToString());
  std::vector<double> raw, raw_wait, lk;
  // Raw libdlm, twice: the asynchronous calls with a condition variable
  // (what latchkey does underneath: the fair baseline), and libdlm's own
  // synchronous dlm_ls_lock_wait / dlm_ls_unlock_wait.
  RawDlmLock rl;
  for (int r = 0; r < rounds; ++r) {
    for (int i = 0; i < n; ++i) {
      const int64_t t0 = MonoNs();
      if (!rl.Lock(ls, raw_name, LKM_EXMODE)) {
        return Die(absl::StrCat("raw lock: status ", rl.status()));
      }
      if (!rl.Unlock(ls)) return Die(absl::StrCat("raw unlock: status ", rl.status()));
      raw.push_back((MonoNs() - t0) / 1000.0);
    }
    for (int i = 0; i < n; ++i) {
      dlm_lksb lksb{};
      const int64_t t0 = MonoNs();
      if (dlm_ls_lock_wait(ls, LKM_EXMODE, &lksb, 0, raw_name.data(), raw_name.size(), 0, nullptr,
                           nullptr, nullptr) != 0 ||
          lksb.sb_status != 0) {
        return Die(absl::StrCat("raw lock: ", strerror(errno), " status ", lksb.sb_status));
      }
      if (dlm_ls_unlock_wait(ls, lksb.sb_lkid, 0, &lksb) != 0) return Die("raw unlock failed");
      raw_wait.push_back((MonoNs() - t0) / 1000.0);
    }
    for (int i = 0; i < n; ++i) {
      const int64_t t0 = MonoNs();
      absl::StatusOr<Grant> g = b->Acquire(owner, *res, LockMode::kExclusive, {});
      if (!g.ok()) return Die(g.status().ToString());
      if (absl::Status st = b->Release(owner, *res); !st.ok()) return Die(st.ToString());
      lk.push_back((MonoNs() - t0) / 1000.0);
    }
  }
  Report("raw", raw);
  Report("raw_wait", raw_wait);
  Report("latchkey", lk);
  dlm_close_lockspace(ls);
  return 0;
}

int HoldNl(int argc, char** argv) {
  if (argc < 4) return Die("hold-nl LOCKSPACE NAME...");
  dlm_lshandle_t ls = dlm_create_lockspace(argv[2], 0600);
  if (ls == nullptr || dlm_ls_pthread_init(ls) != 0) return Die("lockspace");
  std::vector<dlm_lksb> lksbs(argc - 3);
  for (int i = 3; i < argc; ++i) {
    if (dlm_ls_lock_wait(ls, LKM_NLMODE, &lksbs[i - 3], 0, argv[i], strlen(argv[i]), 0, nullptr,
                         nullptr, nullptr) != 0) {
      return Die(absl::StrCat("NL on ", argv[i], ": ", strerror(errno)));
    }
  }
  printf("holding\n");
  fflush(stdout);
  char c;
  while (read(0, &c, 1) > 0) {
  }
  return 0;
}

int Handoff(int argc, char** argv) {
  if (argc != 8) return Die("handoff PLUGIN_DIR LOCKSPACE NAME N HOLD_MS OUT");
  int n = 0, hold_ms = 0;
  if (!absl::SimpleAtoi(argv[5], &n) || !absl::SimpleAtoi(argv[6], &hold_ms)) {
    return Die("N and HOLD_MS must be numbers");
  }
  bool ok;
  std::unique_ptr<Backend> b = Open(argv[2], argv[3], &ok);
  if (!ok) return 1;
  absl::StatusOr<Resource> res = Resource::Lease(argv[3], argv[4]);
  if (!res.ok()) return Die(res.status().ToString());
  FILE* out = fopen(argv[7], "w");
  if (out == nullptr) return Die(absl::StrCat(argv[7], ": ", strerror(errno)));
  const Owner owner = BenchOwner();
  AcquireOptions wait;
  wait.wait = true;
  wait.timeout = absl::InfiniteDuration();
  for (int i = 0; i < n; ++i) {
    absl::StatusOr<Grant> g = b->Acquire(owner, *res, LockMode::kExclusive, wait);
    if (!g.ok()) return Die(g.status().ToString());
    fprintf(out, "grant %lld\n", static_cast<long long>(NowNs()));
    usleep(hold_ms * 1000);
    const int64_t rel = NowNs();
    if (absl::Status st = b->Release(owner, *res); !st.ok()) return Die(st.ToString());
    fprintf(out, "release %lld\n", static_cast<long long>(rel));
    usleep(1000);  // let the other node's waiter in
  }
  fclose(out);
  return 0;
}

int Hold(int argc, char** argv) {
  if (argc != 6) return Die("hold PLUGIN_DIR LOCKSPACE NAME OUT");
  bool ok;
  std::unique_ptr<Backend> b = Open(argv[2], argv[3], &ok);
  if (!ok) return 1;
  absl::StatusOr<Resource> res = Resource::Lease(argv[3], argv[4]);
  if (!res.ok()) return Die(res.status().ToString());
  AcquireOptions wait;
  wait.wait = true;
  wait.timeout = absl::InfiniteDuration();
  absl::StatusOr<Grant> g = b->Acquire(BenchOwner(), *res, LockMode::kExclusive, wait);
  if (!g.ok()) return Die(g.status().ToString());
  FILE* out = fopen(argv[5], "w");
  if (out == nullptr) return Die(argv[5]);
  fprintf(out, "grant %lld\n", static_cast<long long>(NowNs()));
  fclose(out);
  while (true) pause();
}

int Serve(int argc, char** argv) {
  if (argc != 6) return Die("serve PLUGIN_DIR LOCKSPACE FIFO OUT");
  bool ok;
  std::unique_ptr<Backend> b = Open(argv[2], argv[3], &ok);
  if (!ok) return 1;
  FILE* in = fopen(argv[4], "r+");  // r+: no EOF when a writer goes
  if (in == nullptr) return Die(absl::StrCat(argv[4], ": ", strerror(errno)));
  std::map<std::string, Owner> owners;
  char line[1024];
  while (fgets(line, sizeof(line), in) != nullptr) {
    char seq[32] = {0}, op[32] = {0}, who[64] = {0}, name[128] = {0}, mode[32] = {0};
    long wait_ms = -1;
    const int n = sscanf(line, "%31s %31s %63s %127s %31s %ld", seq, op, who, name, mode, &wait_ms);
    std::string result;
    absl::StatusOr<Resource> res = Resource::Lease(argv[3], name);
    if (n < 4 || !res.ok()) {
      result = absl::StrCat("error 3 bad request: ", line);
    } else {
      if (!owners.count(who)) {
        Owner o = BenchOwner();
        o.name = who;
        owners[who] = o;
      }
      const Owner& o = owners[who];
      absl::StatusOr<LockMode> m = ParseLockMode(mode);
      AcquireOptions opts;
      if (wait_ms >= 0) {
        opts.wait = true;
        opts.timeout = absl::Milliseconds(wait_ms);
      }
      absl::Status st;
      uint64_t token = 0;
      if (std::string(op) == "release") {
        st = b->Release(o, *res);
      } else if (!m.ok()) {
        st = m.status();
      } else {
        absl::StatusOr<Grant> g = std::string(op) == "convert" ? b->Convert(o, *res, *m, opts)
                                                               : b->Acquire(o, *res, *m, opts);
        st = g.status();
        if (g.ok()) token = g->fencing_token;
      }
      result = st.ok() ? absl::StrCat("ok ", token)
                       : absl::StrCat("error ", static_cast<int>(st.code()), " ", st.message());
    }
    FILE* out = fopen(argv[5], "a");
    if (out == nullptr) return Die(argv[5]);
    fprintf(out, "%s %s\n", seq, result.c_str());
    fclose(out);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "cycles") return Cycles(argc, argv);
  if (cmd == "hold-nl") return HoldNl(argc, argv);
  if (cmd == "handoff") return Handoff(argc, argv);
  if (cmd == "hold") return Hold(argc, argv);
  if (cmd == "serve") return Serve(argc, argv);
  return Die("usage: dlm_bench_node cycles|hold-nl|handoff|hold ...");
}
