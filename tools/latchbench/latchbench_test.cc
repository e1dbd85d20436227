// latchbench's quick form, as CI runs it: posixfd and nop, in process and
// through a private latchd. Checks the document, not the speed.
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <set>
#include <tuple>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "agent/testing/latchd_process.h"
#include "nlohmann/json.hpp"
#include "tools/cpp/runfiles/runfiles.h"
#include "tools/latchbench/bench_testing.h"

namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;
using latchkey::bench::testing::Latch;
using latchkey::bench::testing::Latchbench;
using latchkey::bench::testing::NodeCopiesLeft;
using latchkey::bench::testing::ProcessesMentioning;
using latchkey::bench::testing::Ran;
using latchkey::bench::testing::Tmp;

TEST(LatchbenchTest, ListNamesScenariosAndBackends) {
  Ran r = Latch("list");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("uncontended"));
  EXPECT_THAT(r.out, HasSubstr("posixfd"));
  EXPECT_THAT(r.out, HasSubstr("nop"));
  for (const char* s : {"handoff", "contended", "scale", "failover"}) {
    EXPECT_THAT(r.out, HasSubstr(s));
  }
  // Every fault the failover scenario knows, with what it does.
  for (const char* f : {"node-kill", "node-freeze", "cut", "partition", "storage-stall",
                        "daemon-kill", "owner-kill", "latchd-kill"}) {
    EXPECT_THAT(r.out, HasSubstr(absl::StrCat("  ", f, " "))) << f;
  }
}

TEST(LatchbenchTest, QuickRunWritesOneDocumentWithEveryBackendPathAndMode) {
  const std::string out = Tmp() + "/quick.json";
  Ran r = Latch(absl::StrCat("run --quick --cycles=50 --warmup=5 --backends=posixfd,nop --out=", out));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("written to " + out));
  EXPECT_THAT(r.out, HasSubstr("ETA"));  // progress
  std::ifstream in(out);
  std::stringstream s;
  s << in.rdbuf();
  const json doc = json::parse(s.str(), nullptr, false);
  ASSERT_FALSE(doc.is_discarded()) << "not JSON: " << s.str().substr(0, 200);
  EXPECT_EQ(doc["schema"], "latchbench/1");
  EXPECT_EQ(doc["latchd_hello"]["server"], "latchd");
  EXPECT_EQ(doc["latchd_hello"]["backends"], json::array({"posixfd", "nop"}));
  for (const char* k : {"hostname", "kernel", "cpu_model", "cpus_online", "load", "load_end"}) {
    EXPECT_TRUE(doc["environment"].contains(k)) << k;
  }
  EXPECT_EQ(doc["parameters"]["runs"], 3);
  EXPECT_EQ(doc["parameters"]["cycles"], 50);
  EXPECT_EQ(doc["parameters"]["seed"], 1);
  std::set<std::string> seen;
  for (const json& r : doc["results"]) {
    const std::string key = absl::StrCat(r["backend"].get<std::string>(), "/",
                                         r["path"].get<std::string>(), "/",
                                         r["mode"].get<std::string>());
    EXPECT_TRUE(seen.insert(key).second) << key << " twice";
    EXPECT_EQ(r["scenario"], "uncontended");
    ASSERT_EQ(r["runs"].size(), 3u) << key;
    for (const json& run : r["runs"]) {
      EXPECT_EQ(run["samples"].size(), 50u) << key;
      EXPECT_EQ(run["summary"]["n"], 50) << key;
      EXPECT_GT(run["summary"]["median"].get<double>(), 0) << key;
      EXPECT_LE(run["summary"]["median"].get<double>(), run["summary"]["p99"].get<double>());
    }
    EXPECT_EQ(r["summary"]["n"], 150) << key;
    EXPECT_TRUE(r["verdict"].contains("trusted")) << key;
    EXPECT_FALSE(r["verdict"]["why"].get<std::string>().empty()) << key;
  }
  // Both backends grant all three modes; both paths; posixfd's raw-API
  // baseline (exclusive).
  EXPECT_EQ(seen.size(), 13u);
  EXPECT_EQ(seen.count("nop/latchd/exclusive"), 1u);
  EXPECT_EQ(seen.count("posixfd/in-process/shared-read"), 1u);
  EXPECT_EQ(seen.count("posixfd/raw/exclusive"), 1u);
  EXPECT_EQ(seen.count("nop/raw/exclusive"), 0u) << "nop has no raw API";

  // What run writes, report reads (report_test checks the page itself).
  Ran rep = Latch(absl::StrCat("report --out=", Tmp(), "/report ", out));
  ASSERT_EQ(rep.status, 0) << rep.out;
  EXPECT_THAT(rep.out, HasSubstr("index.html: 5 figures"));
  EXPECT_EQ(access((Tmp() + "/report/figures/cdf-uncontended-raw.svg").c_str(), R_OK), 0);
}

TEST(LatchbenchTest, ContendedRunCountsGrantsPerOwnerAndFairness) {
  const std::string out = Tmp() + "/contended.json";
  Ran r = Latch(absl::StrCat("run --quick --scenarios=contended --runs=2 --contend-owners=1,3 "
                             "--contend-resources=2 --contend-seconds=0.5 --backends=posixfd,nop "
                             "--out=", out));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("grants/s, Jain"));
  std::ifstream in(out);
  std::stringstream s;
  s << in.rdbuf();
  const json doc = json::parse(s.str(), nullptr, false);
  ASSERT_FALSE(doc.is_discarded());
  EXPECT_EQ(doc["parameters"]["contend_owners"], json::array({1, 3}));
  EXPECT_EQ(doc["parameters"]["contend_resources"], 2);
  std::set<std::string> seen;
  for (const json& x : doc["results"]) {
    const std::string key = absl::StrCat(x["backend"].get<std::string>(), "/",
                                         x["path"].get<std::string>(), "/",
                                         x["distribution"].get<std::string>(), "/",
                                         x["owners"].get<int>());
    EXPECT_TRUE(seen.insert(key).second) << key << " twice";
    EXPECT_EQ(x["scenario"], "contended");
    EXPECT_EQ(x["metric"], "wait_seconds");
    EXPECT_EQ(x["mode"], "exclusive");
    EXPECT_EQ(x["nodes"], 1);
    EXPECT_EQ(x["resources"], 2);
    ASSERT_EQ(x["runs"].size(), 2u) << key;
    for (const json& run : x["runs"]) {
      // Every grant is one wait sample, and each owner's grants are listed.
      int64_t grants = 0;
      ASSERT_EQ(run["grants_per_owner"].size(), static_cast<size_t>(x["owners"].get<int>()));
      // (An owner with none is what the fairness index reports, not a
      // failure of the tool.)
      for (const json& g : run["grants_per_owner"]) {
        EXPECT_GE(g.get<int64_t>(), 0) << key;
        grants += g.get<int64_t>();
      }
      EXPECT_GT(grants, 0) << key << ": nobody was granted anything in 0.5 s";
      EXPECT_EQ(run["samples"].size(), static_cast<size_t>(grants)) << key;
      EXPECT_NEAR(run["throughput_per_second"].get<double>(), grants / 0.5, 1e-6) << key;
      EXPECT_GT(run["fairness_jain"].get<double>(), 0.0) << key;
      EXPECT_LE(run["fairness_jain"].get<double>(), 1.0 + 1e-9) << key;
    }
    if (x["owners"] == 1) {
      EXPECT_DOUBLE_EQ(x["fairness_jain"].get<double>(), 1.0);
    }
  }
  // posixfd: raw, in process, latchd; nop: in process, latchd; x 2 picks x 2 owner counts.
  EXPECT_EQ(seen.size(), 20u);
  EXPECT_EQ(seen.count("posixfd/raw/hot/3"), 1u);
  EXPECT_EQ(seen.count("nop/latchd/uniform/1"), 1u);
  Ran rep = Latch(absl::StrCat("report --out=", Tmp(), "/report-ct ", out));
  ASSERT_EQ(rep.status, 0) << rep.out;
  EXPECT_EQ(access((Tmp() + "/report-ct/figures/throughput-contended.png").c_str(), R_OK), 0);
}

// latchbench-node's contend, as the lab runs it (LabRunner::Contend's
// argument order), here with nop in process and no go file.
TEST(LatchbenchTest, NodeContendTakesTheLabsArgumentsAndReportsEveryFailureInItsFile) {
  std::string err;
  std::unique_ptr<bazel::tools::cpp::runfiles::Runfiles> rf(
      bazel::tools::cpp::runfiles::Runfiles::CreateForTest(&err));
  ASSERT_NE(rf, nullptr) << err;
  const std::string node = rf->Rlocation("latchkey/tools/latchbench/latchbench-node");
  const std::string nop = rf->Rlocation("latchkey/backends/nop/latchkey-nop.so");
  const std::string plugins = nop.substr(0, nop.rfind('/'));
  const std::string out = Tmp() + "/contend.out";
  const auto run = [&](const std::string& args) {
    Ran r;
    FILE* p = popen(absl::StrCat(node, " contend ", args, " 2>&1").c_str(), "r");
    char buf[4096];
    size_t n;
    while (p != nullptr && (n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
    const int st = p != nullptr ? pclose(p) : -1;
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    std::ifstream in(out);
    std::stringstream s;
    s << in.rdbuf();
    return std::make_pair(r, s.str());
  };
  // BACKEND PATH LOCKSPACE PREFIX RESOURCES OWNERS SECONDS SEED DIST HOLD_US OUT GO
  auto [r, file] = run(absl::StrCat("nop in-process ls p 2 3 0.3 7 hot 50 ", out,
                                    " - --plugin-dir=", plugins));
  ASSERT_EQ(r.status, 0) << r.out << file;
  EXPECT_THAT(file, HasSubstr("ready\n{\"owners\":["));
  EXPECT_THAT(file, HasSubstr("\ndone\n"));
  // Bad usage is written to OUT too (the lab waits on that file).
  std::tie(r, file) = run(absl::StrCat("nop in-process ls p 2 3 0.3 7 50 hot ", out, " -"));
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(file, HasSubstr("error RESOURCES 1..1000"));
  std::tie(r, file) = run(absl::StrCat("nop in-process ls p 2 3 0.3 7 hot 50 ", out,
                                       " - --bogus"));
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_THAT(file, HasSubstr("error unknown argument '--bogus'"));
  std::tie(r, file) = run(absl::StrCat("nop in-process ls p 2 3 0.3 7 hot 50 ", out,
                                       " - --plugin-dir=/nonexistent"));
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_THAT(file, HasSubstr("owner 1, resource 1: loading nop: NOT_FOUND: unknown backend"));
}

TEST(LatchbenchTest, BadInputIsRefusedWithAClearError) {
  struct Case {
    const char* args;
    int status;
    const char* says;
  };
  const Case cases[] = {
      {"run --backends=posixfd,bogus", 2, "unknown backend 'bogus'"},
      {"run --scenarios=nope", 2, "unknown scenario 'nope'"},
      {"run --runs=0", 2, "--runs must be"},
      {"run --cycles=12x", 2, "--cycles must be"},
      {"run --warmup=-1", 2, "--warmup must be"},
      {"run --backends=nop,nop", 2, "named twice"},
      {"run --latchd=/nonexistent/latchd --backends=nop", 2,
       "latchd is not at '/nonexistent/latchd'"},
      {"frobnicate", 2, "unknown command"},
      // The lab's backends without the lab; a lab that is not there.
      {"run --backends=dlm,nop", 2, "backend 'dlm' runs only in the cluster lab: add --lab"},
      {"run --backends=sanlock", 2, "backend 'sanlock' runs only in the cluster lab"},
      {"run --lab=relative/dir --backends=dlm", 2, "--lab=DIR needs a running lab's absolute"},
      {"run --lab=/nonexistent/lab --backends=dlm", 2, "not '/nonexistent/lab'"},
      {"run --block-seconds=-1", 2, "--block-seconds must be a number of seconds"},
      {"run --scenarios=handoff --backends=nop", 2,
       "scenario 'handoff' runs between lab nodes: add --lab (or --hosts"},
      {"run --handoffs=0", 2, "--handoffs must be"},
      {"run --handoff-hold-ms=60001", 2, "--handoff-hold-ms must be at most 60000"},
      {"run --block-seconds=1e9", 2, "--block-seconds must be"},
      {"report", 2, "give one document, or two"},
      {"run --contend-owners=0", 2, "--contend-owners takes numbers from 1 to 64"},
      {"run --contend-owners=2,x", 2, "--contend-owners takes numbers"},
      {"run --contend-resources=1001", 2, "--contend-resources must be at most 1000"},
      {"run --contend-seconds=0", 2, "--contend-seconds must be"},
      {"run --contend-hold-us=-5", 2, "--contend-hold-us must be"},
      // The lab's scenarios and their options.
      {"run --scenarios=failover --backends=nop", 2, "scenario 'failover' runs between lab nodes"},
      {"run --scenarios=scale --backends=nop", 2, "scenario 'scale' runs between lab nodes"},
      {"run --failover-faults=node-explode", 2, "unknown fault 'node-explode'"},
      {"run --failover-faults=dlm:node-melt", 2, "unknown fault 'node-melt'"},
      {"run --failover-runs=0", 2, "--failover-runs must be"},
      {"run --failover-limit=1", 2, "--failover-limit must be a number of seconds from 5"},
      {"run --scale-locks=0", 2, "--scale-locks takes numbers from 1 to 1000000"},
      {"run --scale-locks=100,abc", 2, "--scale-locks takes numbers"},
      {"run --host-backends=nop", 2, "--host-backends adds this host's backends to a --lab run"},
      {"run --lab=/ --host-backends=posixfd,dlm", 2, "--host-backends: 'dlm' is not a backend this host"},
      // Real hosts: what they can run, and how they are named.
      {"run --hosts=a --lab", 2, "it does not go with --lab"},
      {"run --hosts=a=run/latchd.sock", 2, "the socket of a must be an absolute path"},
      {"run --hosts=,b", 2, "an entry without a host"},
      {"run --hosts='a;reboot'", 2, "has a character other than letters"},
      {"run --hosts=a --scenarios=contended", 2, "on real hosts (--hosts) latchbench runs"},
      {"run --hosts=a --scenarios=handoff", 2, "'handoff' runs between two hosts"},
      {"run --hosts=a --rsh=' '", 2, "the remote shell command is empty"},
      {"run --hosts=a --clock-port=70000", 2, "--clock-port must be a UDP port"},
      {"run --hosts=a --rsh=/nonexistent/ssh", 1, "host1 (a): cannot copy latchbench-node"},
      {"run --hosts=a=/nonexistent/latchd.sock --rsh='sh -c'", 1,
       "host1 (a): no answer from latchd at /nonexistent/latchd.sock"},
      // An output file that cannot be written: the run fails and says where.
      {"run --quick --cycles=5 --warmup=0 --runs=1 --backends=nop --out=/nonexistent/dir/x.json",
       1, "cannot write /nonexistent/dir/x.json"},
  };
  for (const Case& c : cases) {
    Ran r = Latch(c.args);
    EXPECT_EQ(r.status, c.status) << c.args << ": " << r.out;
    EXPECT_THAT(r.out, HasSubstr(c.says)) << c.args;
  }
}

// --hosts on two latchds of this machine playing hosts (one posixfd lock
// directory between them), reached through `sh -c` as ssh would reach
// them: latchbench-node copied into each, hello, clocks, uncontended
// cycles on the first, hand-offs between the two; every copy removed.
TEST(LatchbenchTest, RealHostsAreMeasuredThroughTheirOwnLatchds) {
  using latchkey::testing::LatchdProcess;
  using latchkey::testing::TempDir;
  const std::string locks = TempDir("hosts-locks");
  const std::string conf = "backends = [ \"posixfd\", \"nop\" ]\nbenchmark_backends = [ \"nop\" ]\n";
  LatchdProcess a(TempDir("host-a"), conf, locks), b(TempDir("host-b"), conf, locks);
  ASSERT_TRUE(a.Start().ok());
  ASSERT_TRUE(b.Start().ok());
  const std::string out = Tmp() + "/hosts.json";
  Ran r = Latch(absl::StrCat("run --hosts=127.0.0.1=", a.socket(), ",localhost=", b.socket(),
                             " --rsh='sh -c' --scenarios=uncontended,handoff --runs=1 --cycles=20 "
                             "--warmup=2 --handoffs=8 --handoff-hold-ms=5 --clock-port=",
                             20000 + getpid() % 20000, " --out=", out));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("clocks before: host2 = host1"));
  std::ifstream in(out);
  std::stringstream s;
  s << in.rdbuf();
  const json doc = json::parse(s.str(), nullptr, false);
  ASSERT_FALSE(doc.is_discarded()) << s.str().substr(0, 300);
  ASSERT_EQ(doc["hosts"]["hosts"].size(), 2u) << doc["hosts"].dump();
  EXPECT_EQ(doc["hosts"]["hosts"][1]["socket"], b.socket());
  EXPECT_EQ(doc["hosts"]["hosts"][0]["hello"]["server"], "latchd");
  EXPECT_GT(doc["hosts"]["hosts"][0]["cpus"].get<int>(), 0);
  // Both backends the two latchds have in common, none named.
  EXPECT_EQ(doc["parameters"]["backends"], json({"posixfd", "nop"}));
  // One machine: the two "hosts" share a clock, within the uncertainty.
  const json& c = doc["hosts"]["clocks"]["hosts"][0];
  EXPECT_LE(std::abs(c["offset_ns"].get<int64_t>()), c["uncertainty_ns"].get<int64_t>() + 1000000)
      << c.dump();
  std::set<std::string> uncontended;
  int handoffs = 0;
  for (const json& res : doc["results"]) {
    EXPECT_EQ(res["path"], "latchd") << res.dump().substr(0, 200);
    ASSERT_EQ(res["runs"].size(), 1u);
    if (res["scenario"] == "handoff") {
      ++handoffs;
      EXPECT_EQ(res["backend"], "posixfd");  // nop excludes nobody
      EXPECT_EQ(res["placement"], "host1 (127.0.0.1) <-> host2 (localhost)");
      // Two loops of 8 rounds each: a hand-off at most every other grant.
      EXPECT_GE(res["runs"][0]["samples"].size(), 1u);
      EXPECT_LE(res["runs"][0]["samples"].size(), 15u);
      continue;
    }
    EXPECT_EQ(res["scenario"], "uncontended");
    EXPECT_EQ(res["placement"], "host1 (127.0.0.1)");
    EXPECT_EQ(res["runs"][0]["samples"].size(), 20u);
    EXPECT_GT(res["summary"]["median"].get<double>(), 0);
    EXPECT_EQ(res["runs"][0]["cost"]["node"], "host1");
    uncontended.insert(absl::StrCat(res["backend"].get<std::string>(), "/",
                                    res["mode"].get<std::string>()));
  }
  EXPECT_EQ(uncontended.size(), 6u);  // 2 backends x 3 modes
  EXPECT_EQ(handoffs, 1);
  // Nothing of latchbench's left on the hosts, and the hosts' latchds
  // hold nothing for it.
  EXPECT_EQ(NodeCopiesLeft(), "");
  for (LatchdProcess* l : {&a, &b}) {
    absl::StatusOr<latchkey::LatchdClient> cl = l->Connect();
    ASSERT_TRUE(cl.ok());
    absl::StatusOr<json> st = cl->Call({{"op", "status"}});
    ASSERT_TRUE(st.ok());
    EXPECT_EQ((*st)["owners"].size(), 0u) << st->dump();
  }
  // A backend one of them lacks is refused, naming what they share.
  r = Latch(absl::StrCat("run --hosts=a=", a.socket(), ",b=", b.socket(),
                         " --rsh='sh -c' --backends=dlm --out=", Tmp(), "/x.json"));
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("backend 'dlm' is not in every host's latchd (they all have: "
                               "posixfd, nop)"));
}

TEST(LatchbenchTest, AnInterruptedRunStopsItsLatchdAndWritesNothing) {
  const std::string out = Tmp() + "/interrupted.json";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string bin = Latchbench();
    const std::string o = "--out=" + out;
    freopen("/dev/null", "w", stderr);
    execl(bin.c_str(), bin.c_str(), "run", "--backends=nop", "--runs=1", "--cycles=10000000", o.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  // Until its private latchd runs (its config lives in /tmp/latchbench.*).
  for (int i = 0; i < 100 && ProcessesMentioning("/tmp/latchbench.") == 0; ++i) usleep(50000);
  ASSERT_GT(ProcessesMentioning("/tmp/latchbench."), 0) << "latchd never started";
  usleep(300000);
  kill(pid, SIGINT);
  int st = 0;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 130);
  EXPECT_EQ(ProcessesMentioning("/tmp/latchbench."), 0) << "its latchd outlived it";
  EXPECT_NE(access(out.c_str(), F_OK), 0) << "an interrupted run wrote " << out;
}

}  // namespace
