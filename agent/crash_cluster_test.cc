// The crash campaign of crash_test.cc (latchd killed at random points and
// at fault points during mixed traffic; the journal, latchd's status and a
// witness of who believes it holds what checked after every crash) run
// inside a cluster lab node against backends whose locks outlive latchd:
// the DLM (orphans adopted from the kernel) and sanlock (leases on the
// lab's shared LUN, automatic lease files on its NFS export). These are
// the paths posixfd never takes: write-ahead intent rows whose lock may or
// may not exist in the backend, and adoption after every crash.
//
// LATCHKEY_CRASH_ITERATIONS (default 30 per backend here; crash_test's own
// default, 200, by command) and LATCHKEY_CRASH_SEED pass through.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lab/cluster_lab.h"

namespace latchkey {
namespace {

using ::testing::HasSubstr;
using lab::ClusterLab;
using lab::Runfile;

ClusterLab* g_lab = nullptr;

std::string EnvOr(const char* name, const std::string& fallback) {
  const char* v = getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

class CrashClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    lab::ClusterLabOptions o;
    o.storage = true;
    o.sanlock = true;
    absl::StatusOr<std::unique_ptr<ClusterLab>> lab = ClusterLab::Start(o);
    ASSERT_TRUE(lab.ok()) << lab.status();
    g_lab = lab->release();
    ASSERT_TRUE(g_lab
                    ->Install({Runfile("agent/crash_test"), Runfile("agent/latchd"),
                               Runfile("backends/dlm/latchkey-dlm.so"),
                               Runfile("backends/sanlock/latchkey-sanlock.so"),
                               Runfile("backends/posixfd/latchkey-posixfd.so")})
                    .ok());
  }
  static void TearDownTestSuite() {
    if (g_lab == nullptr) return;
    (void)g_lab->CollectLogs();  // into the test's saved outputs
    EXPECT_TRUE(g_lab->Stop().ok());
    delete g_lab;
    g_lab = nullptr;
  }

  // Runs the campaign on `node` with `config` added to latchd's.
  static void Campaign(int node, const std::string& what, const std::string& lockspace,
                       const std::string& modes, const std::string& name_len,
                       const std::string& config) {
    const std::string iterations = EnvOr("LATCHKEY_CRASH_ITERATIONS", "30");
    std::vector<std::string> argv = {
        "env", "LATCHKEY_LATCHD=/shared/bin/latchd", "LATCHKEY_PLUGIN_DIR=/shared/bin",
        "TEST_TMPDIR=/tmp", absl::StrCat("LATCHKEY_CRASH_ITERATIONS=", iterations),
        absl::StrCat("LATCHKEY_CRASH_LOCKSPACE=", lockspace),
        absl::StrCat("LATCHKEY_CRASH_MODES=", modes),
        absl::StrCat("LATCHKEY_CRASH_NAME_LEN=", name_len),
        absl::StrCat("LATCHKEY_CRASH_CONFIG=", config)};
    if (const char* seed = getenv("LATCHKEY_CRASH_SEED")) {
      argv.push_back(absl::StrCat("LATCHKEY_CRASH_SEED=", seed));
    }
    argv.push_back("/shared/bin/crash_test");
    const absl::Time t0 = absl::Now();
    absl::StatusOr<ClusterLab::Result> r = g_lab->Run(node, argv, absl::Minutes(30));
    ASSERT_TRUE(r.ok()) << r.status();
    // crash_test prints its campaign summary: keep it in the log.
    std::printf("%s campaign on node%d (%s iterations) in %.0f s:\n%s\n", what.c_str(), node,
                iterations.c_str(), absl::ToDoubleSeconds(absl::Now() - t0),
                r->out.substr(0, 4000).c_str());
    EXPECT_EQ(r->status, 0) << r->err.substr(0, 4000);
    EXPECT_THAT(r->out, HasSubstr("[  PASSED  ] 1 test"));
  }
};

TEST_F(CrashClusterTest, CrashesOnTheDlm) {
  Campaign(1, "dlm", "crashdlm", "sr,sw,ex", "64",
           "backends = [ \"dlm\" ]\ndlm_lockspaces = [ \"crashdlm\" ]\ndlm_poll_ms = 250\n");
}

TEST_F(CrashClusterTest, CrashesOnSanlock) {
  // The lab's lockspace "latchkey" on the LUN lease (host_id = node), lease
  // files on the NFS export. No shared-write: sanlock grants both shared
  // modes as SH, which the witness would rightly call a conflict
  // (backends/sanlock/README.md, folded modes).
  Campaign(2, "sanlock", "latchkey", "sr,ex", "47",
           "backends = [ \"sanlock\" ]\nsanlock_host_id = 2\n"
           "sanlock_lockspaces = [ \"latchkey:/dev/lab/lease:0\" ]\nsanlock_io_timeout = 2\n"
           "sanlock_lease_dir = \"/mnt/nfs/latchkey-sanlock\"\nsanlock_num_hosts = 8\n");
}

}  // namespace
}  // namespace latchkey
