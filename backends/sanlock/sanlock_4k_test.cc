// The sanlock backend on storage with 4096-byte sectors: a sanlock lab of
// two real daemons over a loop device with 4096-byte logical sectors (the
// lockspace and manual leases with sanlock's 8 MiB alignment) and a lease
// directory on an ext4 file system over another such device; one real
// latchd per host. Each case failed before the backend read geometries
// from the storage (issue 16): empty host names, -211 for automatic leases
// on a 4K file system, -EMSGSIZE for lease files under a 4K lockspace.
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/client.h"
#include "agent/testing/latchd_process.h"
#include "backends/sanlock/sanlock_disk.h"
#include "backends/sanlock/sanlock_errors.h"
#include "backends/sanlock/testing/sanlock_hosts.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lab/sanlock_lab.h"

namespace latchkey {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;
using lab::SanlockLab;
using testing::LatchdProcess;
using testing::SanlockHosts;
using testing::TempDir;
using testing::Vm;

constexpr int kHosts = 2;

class Sanlock4kTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    lab::SanlockLabOptions o;
    o.hosts = kHosts;
    o.lockspace = "lab";
    o.io_timeout = 1;
    o.resources = 2;
    o.size_mib = 64;
    o.sector_size = 4096;
    o.lease_dir_sector = 4096;
    hosts_ = new SanlockHosts();
    absl::Status s = hosts_->Start(o, [](int h, const SanlockLab& lab) {
      return Config(lab, h, lab.LeaseDir());
    });
    ASSERT_TRUE(s.ok()) << s;
    lab_ = &hosts_->lab();
    for (int h = 1; h <= kHosts; ++h) latchd_[h] = &hosts_->latchd(h);
  }

  static void TearDownTestSuite() {
    if (hosts_ != nullptr) {
      EXPECT_TRUE(hosts_->Stop().ok());
    }
    delete hosts_;
    hosts_ = nullptr;
  }

  void TearDown() override { hosts_->PrintLogsIfFailed(); }

  static std::string Config(const SanlockLab& lab, int h, const std::string& lease_dir) {
    return absl::StrCat(SanlockHosts::BaseConfig(lab, h), "sanlock_lease_dir = \"", lease_dir,
                        "\"\n");
  }
  static std::string Config(int h, const std::string& lease_dir) {
    return Config(*lab_, h, lease_dir);
  }

  static json LockspaceState(LatchdProcess& d) { return SanlockHosts::LockspaceState(d); }
  static void WaitJoined(LatchdProcess& d) { SanlockHosts::WaitJoined(d); }
  static void Register(LatchdProcess& d, const Vm& vm) { SanlockHosts::Register(d, vm); }
  static absl::StatusOr<json> Acquire(LatchdProcess& d, const Vm& vm, json resources) {
    return SanlockHosts::Acquire(d, vm, resources);
  }
  static absl::StatusOr<json> Release(LatchdProcess& d, const Vm& vm, json resources) {
    return SanlockHosts::Release(d, vm, resources);
  }
  static json ManualLease(int i) {
    return {{"lease", absl::StrCat("res", i)}, {"path", lab_->LeasePath()},
            {"offset", lab_->ResourceOffset(i)}};
  }

  static SanlockHosts* hosts_;
  static SanlockLab* lab_;
  static LatchdProcess* latchd_[kHosts + 1];
};

SanlockHosts* Sanlock4kTest::hosts_ = nullptr;
SanlockLab* Sanlock4kTest::lab_ = nullptr;
LatchdProcess* Sanlock4kTest::latchd_[kHosts + 1] = {};

TEST_F(Sanlock4kTest, StorageReallyHas4kSectors) {
  absl::StatusOr<uint32_t> dev = sanlockbe::StorageSectorSize(lab_->LeasePath());
  ASSERT_TRUE(dev.ok()) << dev.status();
  EXPECT_EQ(*dev, 4096u);
  const std::string probe = lab_->LeaseDir() + "/probe";
  std::ofstream(probe) << std::string(8192, 'x');
  absl::StatusOr<uint32_t> fs = sanlockbe::StorageSectorSize(probe);
  unlink(probe.c_str());
  ASSERT_TRUE(fs.ok()) << fs.status();
  EXPECT_EQ(*fs, 4096u);
}

// Host names are read at 4096-byte steps: status names every host, and a
// refusal names the holder.
TEST_F(Sanlock4kTest, StatusAndRefusalsNameTheHosts) {
  std::set<std::string> names;
  json ls;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (names.size() < kHosts && absl::Now() < deadline) {
    names.clear();
    ls = LockspaceState(*latchd_[1]);
    for (const json& h : ls.value("hosts", json::array())) {
      if (h["state"] == "live") names.insert(h["name"].get<std::string>());
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(names, (std::set<std::string>{"host1", "host2"})) << ls.dump();
  Vm a("vm-a"), b("vm-b");
  Register(*latchd_[1], a);
  Register(*latchd_[2], b);
  ASSERT_TRUE(Acquire(*latchd_[1], a, {ManualLease(0)}).ok());
  absl::StatusOr<json> r = Acquire(*latchd_[2], b, {ManualLease(0)});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("host1 (host_id 1)"));
  ASSERT_TRUE(Release(*latchd_[1], a, {ManualLease(0)}).ok());
  EXPECT_TRUE(Acquire(*latchd_[2], b, {ManualLease(0)}).ok());
  EXPECT_TRUE(Release(*latchd_[2], b, {ManualLease(0)}).ok());
}

// Automatic lease files on a file system with 4096-byte sectors get the 4K
// geometry (before: SANLK_DBLOCK_WRITE, -211, and a broken file left).
TEST_F(Sanlock4kTest, AutomaticLeaseFilesOnA4kFileSystem) {
  Vm a("vm-a"), b("vm-b");
  Register(*latchd_[1], a);
  Register(*latchd_[2], b);
  const json disk = {{{"disk", lab_->options().dir + "/vm-4k.img"}}};
  absl::StatusOr<json> g = Acquire(*latchd_[1], a, disk);
  ASSERT_TRUE(g.ok()) << g.status();
  absl::StatusOr<json> r = Acquire(*latchd_[2], b, disk);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("host1 (host_id 1)"));
  const std::string file = absl::StrCat(lab_->LeaseDir(), "/lab/",
                                        (*g)["locks"][0]["name"].get<std::string>());
  absl::StatusOr<sanlockbe::LeaderRecord> leader = sanlockbe::ReadLeader(file, 0);
  ASSERT_TRUE(leader.ok()) << leader.status() << " " << g->dump();
  EXPECT_EQ(leader->sector_size, 4096u);
  ASSERT_TRUE(Release(*latchd_[1], a, disk).ok());
  EXPECT_TRUE(Acquire(*latchd_[2], b, disk).ok());
  EXPECT_TRUE(Release(*latchd_[2], b, disk).ok());
}

// A lease file an older latchkey left (512-byte geometry on the 4K file
// system) is named, with what to do; removed, the next use makes a good one.
TEST_F(Sanlock4kTest, ABrokenLeaseFileIsNamedWithWhatToDo) {
  const std::string file = lab_->LeaseDir() + "/lab/old-lease";
  mkdir((lab_->LeaseDir() + "/lab").c_str(), 0770);
  std::ofstream(file) << "";
  ASSERT_EQ(truncate(file.c_str(), 1 << 20), 0);
  ASSERT_TRUE(lab_->Sanlock(0, {"direct", "init", "-r", "lab:old-lease:" + file + ":0", "-Z", "512",
                                "-A", "1M"})
                  .ok());
  Vm a("vm-a");
  Register(*latchd_[1], a);
  absl::StatusOr<json> r = Acquire(*latchd_[1], a, {{{"lease", "old-lease"}}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("was written for 512-byte sectors"));
  EXPECT_THAT(r.status().message(), HasSubstr(file));
  ASSERT_EQ(unlink(file.c_str()), 0);
  r = Acquire(*latchd_[1], a, {{{"lease", "old-lease"}}});
  EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(Release(*latchd_[1], a, {{{"lease", "old-lease"}}}).ok());
}

// Lease files on 512-byte storage under the 4K lockspace: sanlock checks
// them against the lockspace's 8 MiB alignment (before: -EMSGSIZE).
TEST_F(Sanlock4kTest, LeaseFilesOn512StorageUnderA4kLockspace) {
  const std::string plain = lab_->options().dir + "/plain-leases";
  ASSERT_EQ(mkdir(plain.c_str(), 0770), 0);
  LatchdProcess other(TempDir("plain"), Config(1, plain));
  ASSERT_TRUE(other.Start().ok()) << other.Log();
  WaitJoined(other);
  Vm a("vm-a"), b("vm-b");
  Register(other, a);
  Register(*latchd_[2], b);
  absl::StatusOr<json> g = Acquire(other, a, {{{"lease", "on-plain"}}});
  ASSERT_TRUE(g.ok()) << g.status() << other.Log();
  absl::StatusOr<sanlockbe::LeaderRecord> leader = sanlockbe::ReadLeader(plain + "/lab/on-plain", 0);
  ASSERT_TRUE(leader.ok());
  EXPECT_EQ(leader->sector_size, 512u);
  EXPECT_TRUE(Release(other, a, {{{"lease", "on-plain"}}}).ok());
  other.Kill(SIGTERM);
}

TEST_F(Sanlock4kTest, EveryErrorCodeHasAMeaning) {
  for (int rv : sanlockbe::AllSanlockCodes()) {
    const std::string text = sanlockbe::RvText(rv);
    EXPECT_EQ(text.find("sanlock error"), std::string::npos) << rv << ": " << text;
    EXPECT_GT(text.size(), 20u) << rv;
  }
  EXPECT_THAT(sanlockbe::RvText(-211), HasSubstr("sector size"));
  EXPECT_THAT(sanlockbe::RvText(-EMSGSIZE), HasSubstr("alignment"));
}

}  // namespace
}  // namespace latchkey
