// sanlock-lab: starts, inspects, faults and stops a sanlock lab (see
// lab/sanlock_lab.h and lab/README.md).
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/numbers.h"
#include "lab/sanlock_lab.h"

namespace {

constexpr const char kUsage[] =
    "usage: sanlock-lab start DIR [--hosts N] [--lockspace NAME] [--io-timeout S]\n"
    "                           [--size-mib M] [--resources R] [--num-hosts N] [--loop] [--join]\n"
    "       sanlock-lab stop DIR\n"
    "       sanlock-lab status DIR\n"
    "       sanlock-lab kill|freeze|thaw|fence|restart|join DIR HOST\n"
    "Starts N sanlock daemons (host1..hostN, one run directory each) over one shared\n"
    "lease file in DIR, and writes DIR/lab.env. Every daemon is stopped by its PID.\n";

int Fail(const std::string& what) {
  fprintf(stderr, "sanlock-lab: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using latchkey::lab::SanlockLab;
  if (argc < 3 || !strcmp(argv[1], "--help")) {
    fputs(kUsage, argc < 3 ? stderr : stdout);
    return argc < 3 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  const std::string dir = argv[2];
  if (cmd == "start") {
    latchkey::lab::SanlockLabOptions o;
    o.dir = dir;
    for (int i = 3; i < argc; ++i) {
      const std::string a = argv[i];
      auto num = [&](auto* out) {
        if (i + 1 >= argc || !absl::SimpleAtoi(argv[i + 1], out)) {
          fprintf(stderr, "sanlock-lab: %s needs a number\n", a.c_str());
          exit(2);
        }
        ++i;
      };
      if (a == "--hosts") num(&o.hosts);
      else if (a == "--io-timeout") num(&o.io_timeout);
      else if (a == "--size-mib") num(&o.size_mib);
      else if (a == "--resources") num(&o.resources);
      else if (a == "--num-hosts") num(&o.num_hosts);
      else if (a == "--loop") o.loop_device = true;
      else if (a == "--join") o.join = true;
      else if (a == "--lockspace" && i + 1 < argc) o.lockspace = argv[++i];
      else return Fail("unknown option '" + a + "'\n" + kUsage);
    }
    auto lab = SanlockLab::Start(o);
    if (!lab.ok()) return Fail(lab.status().ToString());
    printf("sanlock lab in %s: %d hosts, lockspace %s on %s (io_timeout %d s)%s\n", dir.c_str(),
           o.hosts, o.lockspace.c_str(), (*lab)->LeasePath().c_str(), o.io_timeout,
           o.join ? ", joined" : "");
    for (int h = 1; h <= o.hosts; ++h) {
      printf("  %s: pid %d, SANLOCK_RUN_DIR=%s\n", (*lab)->HostName(h).c_str(),
             (*lab)->DaemonPid(h), (*lab)->RunDir(h).c_str());
    }
    printf("stop it with: sanlock-lab stop %s\n", dir.c_str());
    // Leave it running: the daemons are in their own sessions.
    (*lab).release();
    return 0;
  }
  auto lab = SanlockLab::Attach(dir);
  if (!lab.ok()) return Fail(lab.status().ToString());
  if (cmd == "stop") {
    absl::Status s = (*lab)->Stop();
    if (!s.ok()) return Fail(s.ToString());
    printf("sanlock lab in %s stopped\n", dir.c_str());
    return 0;
  }
  if (cmd == "status") {
    for (int h = 1; h <= (*lab)->hosts(); ++h) {
      auto st = (*lab)->ClientStatus(h);
      printf("== %s (pid %d)\n%s", (*lab)->HostName(h).c_str(), (*lab)->DaemonPid(h),
             st.ok() ? st->c_str() : (st.status().ToString() + "\n").c_str());
    }
    return 0;
  }
  int host = 0;
  if (argc != 4 || !absl::SimpleAtoi(argv[3], &host) || host < 1 || host > (*lab)->hosts()) {
    return Fail("'" + cmd + "' needs a host number 1.." + std::to_string((*lab)->hosts()));
  }
  absl::Status s;
  if (cmd == "kill") s = (*lab)->KillDaemon(host);
  else if (cmd == "freeze") s = (*lab)->Freeze(host);
  else if (cmd == "thaw") s = (*lab)->Thaw(host);
  else if (cmd == "fence") s = (*lab)->Fence(host);
  else if (cmd == "restart") s = (*lab)->RestartDaemon(host);
  else if (cmd == "join") s = (*lab)->Join(host);
  else return Fail("unknown command '" + cmd + "'\n" + kUsage);
  if (!s.ok()) return Fail(s.ToString());
  return 0;
}
