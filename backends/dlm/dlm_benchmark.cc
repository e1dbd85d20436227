// The DLM benchmark: latchkey's dlm backend against raw libdlm on a real
// three-node lab, in one run.
//
//   bazel run -c opt //backends/dlm:dlm_benchmark -- [--cycles N] [--rounds R]
//                                                   [--handoffs N] [--no-failover]
//
// 1. Exclusive acquire+release cycles, latchkey vs raw libdlm, with the
//    resources mastered on the measuring node and on another node (an NL
//    lock held first by the master node decides which).
// 2. Contended hand-off between two nodes: each grant's time after the
//    other node's release.
// 3. Failover: a node holding an exclusive lock is killed; the time until a
//    waiting survivor is granted (corosync token timeout 3000 ms in the lab).
#include <stdio.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "lab/cluster_lab.h"

namespace {

using latchkey::lab::ClusterLab;
using latchkey::lab::Runfile;


int Fail(const std::string& what) {
  fprintf(stderr, "dlm_benchmark: %s\n", what.c_str());
  return 1;
}

struct Figures {
  double median = 0, p90 = 0, mean = 0;
};

std::map<std::string, Figures> ParseCycles(const std::string& out) {
  std::map<std::string, Figures> m;
  for (absl::string_view line : absl::StrSplit(out, '\n', absl::SkipEmpty())) {
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    Figures x;
    if (f.size() == 4 && absl::SimpleAtod(f[1], &x.median) && absl::SimpleAtod(f[2], &x.p90) &&
        absl::SimpleAtod(f[3], &x.mean)) {
      m[f[0]] = x;
    }
  }
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  int cycles = 300, rounds = 5, handoffs = 100;
  bool failover = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--cycles" && i + 1 < argc) {
      if (!absl::SimpleAtoi(argv[++i], &cycles) || cycles < 1) return Fail("bad --cycles");
    } else if (a == "--rounds" && i + 1 < argc) {
      if (!absl::SimpleAtoi(argv[++i], &rounds) || rounds < 1) return Fail("bad --rounds");
    } else if (a == "--handoffs" && i + 1 < argc) {
      if (!absl::SimpleAtoi(argv[++i], &handoffs) || handoffs < 1) return Fail("bad --handoffs");
    } else if (a == "--no-failover") {
      failover = false;
    } else {
      return Fail(absl::StrCat("unknown argument ", a,
                               " (usage: [--cycles N] [--rounds R] [--handoffs N] [--no-failover])"));
    }
  }
  fprintf(stderr, "starting a 3-node lab...\n");
  const absl::Time t0 = absl::Now();
  absl::StatusOr<std::unique_ptr<ClusterLab>> lab = ClusterLab::Start({});
  if (!lab.ok()) return Fail(lab.status().ToString());
  ClusterLab& L = **lab;
  fprintf(stderr, "lab ready in %.1f s\n", absl::ToDoubleSeconds(absl::Now() - t0));
  if (absl::Status st = L.Install({Runfile("backends/dlm/dlm_bench_node"),
                                   Runfile("backends/dlm/latchkey-dlm.so")});
      !st.ok()) {
    return Fail(st.ToString());
  }
  const std::string bin = "/shared/bin/dlm_bench_node";
  printf("# latchkey dlm backend vs raw libdlm, 3 UML nodes (kernel 6.1 DLM, corosync knet)\n");
  printf("# exclusive acquire+release, %d cycles x %d rounds each, microseconds\n", cycles,
         rounds);
  printf("# raw: dlm_ls_lock/dlm_ls_unlock with a condition variable (the baseline);\n"
         "# raw_wait: libdlm's dlm_ls_lock_wait/dlm_ls_unlock_wait; ratio: median / raw median\n");
  printf("%-8s %-9s %9s %9s %9s %9s\n", "master", "path", "median", "p90", "mean", "ratio");
  for (const char* where : {"local", "remote"}) {
    const std::string name = absl::StrCat("bench-", where);
    const int master = std::string(where) == "local" ? 1 : 2;
    // The master node takes an NL lock on both names first and keeps it.
    absl::StatusOr<std::string> pid = L.Sh(
        master, absl::StrCat("(sleep 100000 | ", bin, " hold-nl bench ", name, "-raw ", name,
                             "-lk >/tmp/nl.out 2>&1) & sleep 1; cat /tmp/nl.out"));
    if (!pid.ok() || pid->find("holding") == std::string::npos) {
      return Fail(absl::StrCat("NL holder on node", master, ": ",
                               pid.ok() ? *pid : pid.status().ToString()));
    }
    fprintf(stderr, "cycles, resources mastered on node %d...\n", master);
    absl::StatusOr<ClusterLab::Result> r =
        L.Run(1, {bin, "cycles", "/shared/bin", "bench", name, absl::StrCat(cycles),
                  absl::StrCat(rounds)},
              absl::Minutes(30));
    if (!r.ok() || r->status != 0) {
      return Fail(absl::StrCat("cycles: ", r.ok() ? r->err : r.status().ToString()));
    }
    std::map<std::string, Figures> m = ParseCycles(r->out);
    if (!m.count("raw") || !m.count("latchkey")) return Fail("cycles printed: " + r->out);
    printf("%-8s %-9s %9.1f %9.1f %9.1f %9s\n", where, "raw", m["raw"].median, m["raw"].p90,
           m["raw"].mean, "");
    if (m.count("raw_wait")) {
      printf("%-8s %-9s %9.1f %9.1f %9.1f %9.3f\n", where, "raw_wait", m["raw_wait"].median,
             m["raw_wait"].p90, m["raw_wait"].mean, m["raw_wait"].median / m["raw"].median);
    }
    printf("%-8s %-9s %9.1f %9.1f %9.1f %9.3f\n", where, "latchkey", m["latchkey"].median,
           m["latchkey"].p90, m["latchkey"].mean, m["latchkey"].median / m["raw"].median);
    (void)L.Sh(master, "pkill -f 'dlm_bench_node hold-nl' || true");
  }

  // Hand-off: nodes 1 and 2 take turns on one resource.
  fprintf(stderr, "hand-off between nodes 1 and 2 (%d rounds each)...\n", handoffs);
  for (int n : {1, 2}) {
    absl::StatusOr<std::string> s =
        L.Sh(n, absl::StrCat("(", bin, " handoff /shared/bin bench baton ", handoffs,
                             " 5 /shared/handoff", n, ".log; echo $? >/shared/handoff", n,
                             ".rc) >/dev/null 2>&1 &"));
    if (!s.ok()) return Fail(s.status().ToString());
  }
  for (int i = 0; i < 1200; ++i) {
    if (access((L.shared() + "/handoff1.rc").c_str(), F_OK) == 0 &&
        access((L.shared() + "/handoff2.rc").c_str(), F_OK) == 0) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(250));
  }
  struct Ev {
    int64_t ns;
    int node;
    bool grant;
  };
  std::vector<Ev> evs;
  for (int n : {1, 2}) {
    FILE* f = fopen((L.shared() + absl::StrCat("/handoff", n, ".log")).c_str(), "r");
    if (f == nullptr) return Fail("no hand-off log from node " + std::to_string(n));
    char kind[16];
    long long ns;
    while (fscanf(f, "%15s %lld", kind, &ns) == 2) evs.push_back({ns, n, kind[0] == 'g'});
    fclose(f);
  }
  std::sort(evs.begin(), evs.end(), [](const Ev& a, const Ev& b) { return a.ns < b.ns; });
  std::vector<double> hand;
  int64_t last_release = 0;
  int last_node = 0;
  for (const Ev& e : evs) {
    if (!e.grant) {
      last_release = e.ns;
      last_node = e.node;
    } else if (last_release != 0 && e.node != last_node) {
      hand.push_back((e.ns - last_release) / 1000.0);
    }
  }
  if (hand.empty()) return Fail("no cross-node hand-offs recorded");
  std::sort(hand.begin(), hand.end());
  printf("# contended hand-off node->node (release to the other node's grant), %zu hand-offs\n",
         hand.size());
  printf("hand-off median %.1f us, p90 %.1f us, max %.1f us\n", hand[hand.size() / 2],
         hand[hand.size() * 9 / 10], hand.back());

  if (failover) {
    fprintf(stderr, "failover: node 3 holds, node 1 waits, node 3 is killed...\n");
    absl::StatusOr<std::string> s =
        L.Sh(3, absl::StrCat("(", bin, " hold /shared/bin bench failover /shared/hold3.log) "
                             ">/dev/null 2>&1 & sleep 1; cat /shared/hold3.log"));
    if (!s.ok() || s->find("grant") == std::string::npos) {
      return Fail("node 3 did not take the lock: " + (s.ok() ? *s : s.status().ToString()));
    }
    s = L.Sh(1, absl::StrCat("(", bin, " hold /shared/bin bench failover /shared/hold1.log) "
                             ">/dev/null 2>&1 &"));
    if (!s.ok()) return Fail(s.status().ToString());
    absl::SleepFor(absl::Seconds(1));
    const absl::Time killed = absl::Now();
    if (absl::Status st = L.Kill(3); !st.ok()) return Fail(st.ToString());
    double granted = 0;
    for (int i = 0; i < 1200 && granted == 0; ++i) {
      FILE* f = fopen((L.shared() + "/hold1.log").c_str(), "r");
      long long ns = 0;
      if (f != nullptr) {
        if (fscanf(f, "grant %lld", &ns) == 1) granted = ns / 1e9;
        fclose(f);
      }
      if (granted == 0) absl::SleepFor(absl::Milliseconds(100));
    }
    if (granted == 0) return Fail("node 1 was never granted after node 3 died");
    printf("# failover, corosync token 3000 ms, fencing disabled\n");
    printf("node killed -> survivor granted: %.2f s\n",
           granted - absl::ToDoubleSeconds(killed - absl::UnixEpoch()));
  }
  (void)L.Sh(1, "pkill -f dlm_bench_node || true");
  if (absl::Status st = L.Stop(); !st.ok()) return Fail(st.ToString());
  return 0;
}
