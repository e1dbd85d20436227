// sanlock benchmark: latchkey's sanlock backend against raw libsanlock, in
// the same run, on a real sanlock lab (lab/sanlock_lab.h):
//   1. exclusive acquire+release cycle time, raw vs latchkey (median, p99);
//   2. disk I/O per cycle at the block layer: the lease file sits behind a
//      loop device and /sys/block/loopN/stat counts the daemon's (direct,
//      asynchronous) reads and writes; leases with the default host count
//      (2000) and with -n 8;
//   3. time from a host's death to another host's acquire (io_timeout 1),
//      once fenced (release_id) and once waiting out the dead-host timeout.
//
//   bazel run -c opt //backends/sanlock:sanlock_benchmark -- [--cycles N] [--no-failover]
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <tuple>
#include <vector>

extern "C" {
#include <sanlock.h>
#include <sanlock_resource.h>
}

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/backend.h"
#include "core/config.h"
#include "core/plugin_loader.h"
#include "lab/sanlock_lab.h"

namespace latchkey {
namespace {

// Block-layer counters of the loop device the leases live on: requests
// and 512-byte sectors read and written (Documentation/block/stat.rst).
struct Io {
  uint64_t reads = 0, read_sectors = 0, writes = 0, write_sectors = 0;
};

std::string g_stat_path;

Io ReadIo(pid_t) {
  Io io;
  std::ifstream in(g_stat_path);
  uint64_t f[8] = {};
  for (uint64_t& x : f) in >> x;
  io.reads = f[0];
  io.read_sectors = f[2];
  io.writes = f[4];
  io.write_sectors = f[6];
  return io;
}

Io Minus(const Io& a, const Io& b) {
  return {a.reads - b.reads, a.read_sectors - b.read_sectors, a.writes - b.writes,
          a.write_sectors - b.write_sectors};
}
Io Plus(const Io& a, const Io& b) {
  return {a.reads + b.reads, a.read_sectors + b.read_sectors, a.writes + b.writes,
          a.write_sectors + b.write_sectors};
}

struct Run {
  std::vector<double> us;
  Io io;
};

double Pct(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

struct OneDisk {
  sanlk_resource res;
  sanlk_disk disk;
};

OneDisk RawResource(const std::string& ls, const std::string& name, const std::string& path,
                    uint64_t offset) {
  OneDisk r{};
  snprintf(r.res.lockspace_name, SANLK_NAME_LEN, "%s", ls.c_str());
  snprintf(r.res.name, SANLK_NAME_LEN, "%s", name.c_str());
  r.res.flags = SANLK_RES_ALIGN1M | SANLK_RES_SECTOR512;
  r.res.num_disks = 1;
  snprintf(r.disk.path, sizeof(r.disk.path), "%s", path.c_str());
  r.disk.offset = offset;
  return r;
}

Run RawCycles(int sock, OneDisk r, int cycles, pid_t daemon) {
  Run run;
  sanlk_resource* p = &r.res;
  const Io before = ReadIo(daemon);
  for (int i = 0; i < cycles; ++i) {
    const absl::Time t0 = absl::Now();
    int rv = sanlock_acquire(sock, -1, 0, 1, &p, nullptr);
    if (rv != 0) {
      fprintf(stderr, "raw acquire failed: %d\n", rv);
      exit(1);
    }
    rv = sanlock_release(sock, -1, 0, 1, &p);
    if (rv != 0) {
      fprintf(stderr, "raw release failed: %d\n", rv);
      exit(1);
    }
    run.us.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
  }
  const Io after = ReadIo(daemon);
  run.io = Minus(after, before);
  return run;
}

Run LatchkeyCycles(Backend& b, const Resource& res, int cycles, pid_t daemon) {
  Run run;
  const Owner owner = OwnerForThisProcess(RandomUuid(), "bench");
  const Io before = ReadIo(daemon);
  for (int i = 0; i < cycles; ++i) {
    const absl::Time t0 = absl::Now();
    absl::StatusOr<Grant> g = b.Acquire(owner, res, LockMode::kExclusive, {});
    if (!g.ok()) {
      fprintf(stderr, "latchkey acquire failed: %s\n", g.status().ToString().c_str());
      exit(1);
    }
    absl::Status s = b.Release(owner, res);
    if (!s.ok()) {
      fprintf(stderr, "latchkey release failed: %s\n", s.ToString().c_str());
      exit(1);
    }
    run.us.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
  }
  const Io after = ReadIo(daemon);
  run.io = Minus(after, before);
  return run;
}

void Report(const char* what, const Run& raw, const Run& lk, int cycles) {
  const double rm = Pct(raw.us, 0.5), lm = Pct(lk.us, 0.5);
  printf("%s\n", what);
  printf("  raw libsanlock   median %8.0f us  p99 %8.0f us\n", rm, Pct(raw.us, 0.99));
  printf("  latchkey         median %8.0f us  p99 %8.0f us   ratio %.3f (target <= 1.05)\n", lm,
         Pct(lk.us, 0.99), lm / rm);
  printf("  disk I/O per cycle (block layer, %s):\n", g_stat_path.c_str());
  for (auto [name, io] : {std::pair{"raw     ", raw.io}, std::pair{"latchkey", lk.io}}) {
    printf("    %s  read %8.0f B in %5.2f requests, write %6.0f B in %5.2f requests\n", name,
           512.0 * io.read_sectors / cycles, double(io.reads) / cycles,
           512.0 * io.write_sectors / cycles, double(io.writes) / cycles);
  }
}

// A child process on `host` holding `res` through the sanlock CLI.
pid_t HoldWithCli(const lab::SanlockLab& lab, int host, const std::string& res_spec) {
  const pid_t pid = fork();
  if (pid == 0) {
    setenv("SANLOCK_RUN_DIR", lab.RunDir(host).c_str(), 1);
    const int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    execl("/usr/sbin/sanlock", "sanlock", "client", "command", "-r", res_spec.c_str(), "-c",
          "/bin/sleep", "1000", static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

double FailoverSeconds(lab::SanlockLab& lab, int sock, OneDisk r, bool fence, const char* spec) {
  const pid_t holder = HoldWithCli(lab, 2, spec);
  sanlk_resource* p = &r.res;
  // Wait until host2 holds it.
  for (int i = 0; i < 200; ++i) {
    if (sanlock_acquire(sock, -1, SANLK_ACQUIRE_OWNER_NOWAIT, 1, &p, nullptr) != 0) break;
    sanlock_release(sock, -1, 0, 1, &p);
    absl::SleepFor(absl::Milliseconds(50));
  }
  if (!lab.KillDaemon(2).ok()) exit(1);
  kill(holder, SIGKILL);
  waitpid(holder, nullptr, 0);
  const absl::Time died = absl::Now();
  if (fence && !lab.Fence(2).ok()) exit(1);
  while (true) {
    const int rv = sanlock_acquire(sock, -1, SANLK_ACQUIRE_OWNER_NOWAIT, 1, &p, nullptr);
    if (rv == 0) break;
    if (absl::Now() - died > absl::Seconds(200)) return -1;
    absl::SleepFor(absl::Milliseconds(100));
  }
  const double s = absl::ToDoubleSeconds(absl::Now() - died);
  sanlock_release(sock, -1, 0, 1, &p);
  if (!lab.RestartDaemon(2).ok() || !lab.Join(2).ok()) exit(1);
  return s;
}

int Main(int argc, char** argv) {
  int cycles = 300;
  bool failover = true;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--cycles") && i + 1 < argc) {
      if (!absl::SimpleAtoi(argv[++i], &cycles) || cycles < 10) {
        fprintf(stderr, "--cycles needs a number >= 10\n");
        return 2;
      }
    } else if (!strcmp(argv[i], "--no-failover")) {
      failover = false;
    } else {
      fprintf(stderr, "usage: sanlock_benchmark [--cycles N] [--no-failover]\n");
      return 2;
    }
  }
  lab::SanlockLabOptions o;  // dir empty: a private one, removed at Stop
  o.hosts = 2;
  o.lockspace = "bench";
  o.io_timeout = 1;
  o.resources = 4;  // res0..3: default host count (2000)
  o.join = true;
  o.loop_device = true;  // block-layer I/O counters
  fprintf(stderr, "starting a 2-host sanlock lab (joins take ~3 s)...\n");
  absl::StatusOr<std::unique_ptr<lab::SanlockLab>> lab = lab::SanlockLab::Start(o);
  if (!lab.ok()) {
    fprintf(stderr, "%s\n", lab.status().ToString().c_str());
    return 1;
  }
  lab::SanlockLab& L = **lab;
  g_stat_path = absl::StrCat("/sys/block/", L.LeasePath().substr(L.LeasePath().rfind('/') + 1),
                             "/stat");
  // res4..7 with -n 8: a cycle reads 8 host slots, not 2000.
  for (int i = 4; i < 8; ++i) {
    if (!L.Sanlock(0, {"direct", "init", "-r",
                       absl::StrCat("bench:res", i, ":", L.LeasePath(), ":", L.ResourceOffset(i)),
                       "-Z", "512", "-A", "1M", "-n", "8"})
             .ok()) {
      return 1;
    }
  }
  setenv("SANLOCK_RUN_DIR", L.RunDir(1).c_str(), 1);
  const int sock = sanlock_register();
  if (sock < 0) {
    fprintf(stderr, "sanlock_register: %d\n", sock);
    return 1;
  }
  absl::StatusOr<Config> cfg = Config::ParseText(
      absl::StrCat("run_dir = \"", L.RunDir(1), "\"\nhost_id = 1\nio_timeout = 1\n",
                   "lockspaces = [ \"", L.LockspaceSpec(), "\" ]\nlease_dir = \"", L.LeaseDir(),
                   "\"\nnotify_dir = \"/tmp\"\n"),
      "<bench>");
  const std::string so = argv[0];
  std::string plugin_dir = so.substr(0, so.rfind('/'));
  absl::StatusOr<std::unique_ptr<Backend>> b = LoadBackend({plugin_dir}, "sanlock", *cfg);
  if (!b.ok()) {
    fprintf(stderr, "%s\n", b.status().ToString().c_str());
    return 1;
  }
  const pid_t daemon = L.DaemonPid(1);
  setvbuf(stdout, nullptr, _IOLBF, 0);
  printf("sanlock %s lab, io_timeout 1, %d cycles each, lease file %s\n", "2-host", cycles,
         L.LeasePath().c_str());
  for (auto [raw_i, lk_i, what] :
       {std::tuple{0, 1, "exclusive acquire+release, lease with 2000 host slots (default)"},
        std::tuple{4, 5, "exclusive acquire+release, lease with 8 host slots (-n 8)"}}) {
    OneDisk raw = RawResource("bench", absl::StrCat("res", raw_i), L.LeasePath(),
                              L.ResourceOffset(raw_i));
    const Resource res = *Resource::Lease("bench", absl::StrCat("res", lk_i), L.LeasePath(),
                                          L.ResourceOffset(lk_i));
    // Warm up both, then alternate halves so drift hits both alike.
    RawCycles(sock, raw, 10, daemon);
    LatchkeyCycles(**b, res, 10, daemon);
    Run r1 = RawCycles(sock, raw, cycles / 2, daemon);
    Run l1 = LatchkeyCycles(**b, res, cycles / 2, daemon);
    Run r2 = RawCycles(sock, raw, cycles / 2, daemon);
    Run l2 = LatchkeyCycles(**b, res, cycles / 2, daemon);
    r1.us.insert(r1.us.end(), r2.us.begin(), r2.us.end());
    l1.us.insert(l1.us.end(), l2.us.begin(), l2.us.end());
    r1.io = Plus(r1.io, r2.io);
    l1.io = Plus(l1.io, l2.io);
    Report(what, r1, l1, 2 * (cycles / 2));
  }
  b->reset();
  if (failover) {
    const std::string spec = absl::StrCat("bench:res2:", L.LeasePath(), ":", L.ResourceOffset(2));
    OneDisk r = RawResource("bench", "res2", L.LeasePath(), L.ResourceOffset(2));
    // The unfenced case first, on a host that never rejoined.
    fprintf(stderr, "failover: host2 holds res2 and dies (not fenced; ~70 s)...\n");
    const double dead = FailoverSeconds(L, sock, r, false, spec.c_str());
    printf("host death -> other host's acquire, waiting for the dead-host timeout: %.1f s "
           "(8*io_timeout + 60 s = 68 s at io_timeout 1)\n",
           dead);
    fflush(stdout);
    fprintf(stderr, "failover: host2 holds res2 and dies (fenced)...\n");
    const double fenced = FailoverSeconds(L, sock, r, true, spec.c_str());
    printf("host death -> other host's acquire, fenced with release_id: %.2f s\n", fenced);
  }
  close(sock);
  absl::Status s = L.Stop();
  if (!s.ok()) fprintf(stderr, "%s\n", s.ToString().c_str());
  return s.ok() ? 0 : 1;
}

}  // namespace
}  // namespace latchkey

int main(int argc, char** argv) { return latchkey::Main(argc, argv); }
