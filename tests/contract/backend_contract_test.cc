// The backend contract: what every backend must do, checked against the
// real backend loaded through the plugin path as production loads it.
// Run for one backend by a backend_contract_test target (contract.bzl).
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "core/backend.h"
#include "core/config.h"
#include "core/plugin_loader.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/aliases/aliases.h"
#include "tests/contract/contract_env.h"
#include "tests/contract/holder_process.h"

namespace latchkey {
namespace contract {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;

Environment g_env;

constexpr LockMode kSR = LockMode::kSharedRead;
constexpr LockMode kSW = LockMode::kSharedWrite;
constexpr LockMode kEX = LockMode::kExclusive;

AcquireOptions WaitFor(absl::Duration timeout) {
  AcquireOptions o;
  o.wait = true;
  o.timeout = timeout;
  return o;
}

class ContractTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    ASSERT_EQ(GetParam(), Env().backend);
    static int counter = 0;
    tmp_ = absl::StrCat(getenv("TEST_TMPDIR"), "/t", ++counter);
    ASSERT_EQ(mkdir(tmp_.c_str(), 0700), 0);
    // @LAB@: the directory of a lab a test environment started (see
    // backend_contract_test's `lab` in contract.bzl).
    const char* lab = getenv("LATCHKEY_CONTRACT_LAB");
    const std::string text = absl::StrReplaceAll(
        Env().settings, {{"@TMP@", tmp_}, {"@LAB@", lab ? lab : "@LAB@"}, {"\\n", "\n"}});
    settings_file_ = tmp_ + "/backend.conf";
    std::ofstream(settings_file_) << text;
    absl::StatusOr<Config> c = Config::ParseFile(settings_file_);
    ASSERT_TRUE(c.ok()) << c.status();
    settings_ = *c;
    backend_ = Load();
    ASSERT_NE(backend_, nullptr);
    caps_ = backend_->capabilities();
    a_ = OwnerForThisProcess(RandomUuid(), "vm-alpha");
    b_ = OwnerForThisProcess(RandomUuid(), "vm-bravo");
    c_ = OwnerForThisProcess(RandomUuid(), "vm-charlie");
    res_ = *Resource::Lease("contract", "res1");
  }

  std::unique_ptr<Backend> Load() {
    absl::StatusOr<std::unique_ptr<Backend>> b = LoadBackend({PluginDir()}, Env().backend, settings_);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? *std::move(b) : nullptr;
  }

  static std::string PluginDir() {
    return Env().plugin.substr(0, Env().plugin.rfind('/'));
  }

  bool Supports(LockMode m) const { return (caps_.modes & LockModeBit(m)) != 0; }

  // The compatibility this backend promises: the matrix, or its folded form.
  bool ExpectCompatible(LockMode x, LockMode y) const {
    if (caps_.no_exclusion) return true;  // It says so: everything is granted.
    if (!caps_.folded_modes.empty() && x != kEX && y != kEX) return true;
    return ModesCompatible(x, y);
  }

  absl::StatusOr<Grant> Try(const Owner& o, LockMode m, const Resource& r) {
    return backend_->Acquire(o, r, m, AcquireOptions{});
  }
  absl::StatusOr<Grant> Try(const Owner& o, LockMode m) { return Try(o, m, res_); }

  // The lock `o` holds on res_ is still in force: someone else wanting
  // exclusive is refused.
  // (A backend that excludes nobody is asked whether it still lists a
  // holder of res_.)
  void ExpectStillHeld(const std::string& why) {
    if (caps_.no_exclusion) {
      absl::StatusOr<std::vector<HolderInfo>> h = backend_->Inquire(res_);
      ASSERT_TRUE(h.ok()) << why << ": " << h.status();
      EXPECT_FALSE(h->empty()) << why << ": nobody holds " << res_.Describe();
      return;
    }
    absl::StatusOr<Grant> g = Try(c_, kEX);
    EXPECT_TRUE(IsLockBusy(g.status())) << why << ": " << g.status();
    if (g.ok()) backend_->Release(c_, res_).IgnoreError();
  }

  std::unique_ptr<HolderProcess> StartHolder(const std::string& uuid, LockMode m) {
    absl::StatusOr<std::unique_ptr<HolderProcess>> h = HolderProcess::Start(
        Env().holder_binary, {Env().plugin, Env().backend, settings_file_, uuid, "vm-remote",
                              "lease", res_.lockspace, res_.name, LockModeName(m)});
    EXPECT_TRUE(h.ok()) << h.status();
    return h.ok() ? *std::move(h) : nullptr;
  }

  std::string tmp_;
  std::string settings_file_;
  Config settings_;
  std::unique_ptr<Backend> backend_;
  Capabilities caps_;
  Owner a_, b_, c_;
  Resource res_;
};

// The cases about who is refused, who waits and what a grant in between
// breaks: a backend that excludes nobody (LK_CAP_NO_EXCLUSION, the nop
// backend) declares that it fails them, and is checked against its
// declaration by the mode matrix instead.
#define SKIP_IF_NO_EXCLUSION()                                                          \
  if (caps_.no_exclusion)                                                               \
  GTEST_SKIP() << "backend excludes nobody (LK_CAP_NO_EXCLUSION): no refusal, wait or " \
                  "conflicting grant to test"

TEST_P(ContractTest, IsHealthyAndNamesItself) {
  EXPECT_TRUE(backend_->Health().ok()) << backend_->Health();
  EXPECT_EQ(backend_->name(), GetParam());
  EXPECT_TRUE(Supports(kEX));
}

TEST_P(ContractTest, ModeMatrixBetweenTwoOwners) {
  for (LockMode first : {kSR, kSW, kEX}) {
    for (LockMode second : {kSR, kSW, kEX}) {
      if (!Supports(first) || !Supports(second)) continue;
      SCOPED_TRACE(absl::StrCat(LockModeName(first), " then ", LockModeName(second)));
      ASSERT_TRUE(Try(a_, first).ok());
      absl::StatusOr<Grant> g = Try(b_, second);
      if (ExpectCompatible(first, second)) {
        EXPECT_TRUE(g.ok()) << g.status();
        EXPECT_EQ(g->mode, second);
      } else {
        EXPECT_TRUE(IsLockBusy(g.status())) << g.status();
      }
      if (g.ok()) {
        EXPECT_TRUE(backend_->Release(b_, res_).ok());
      }
      ASSERT_TRUE(backend_->Release(a_, res_).ok());
    }
  }
}

TEST_P(ContractTest, NoWaitRefusalNamesResourceModeAndHolder) {
  SKIP_IF_NO_EXCLUSION();
  std::ofstream(tmp_ + "/vm-disk.img") << "disk";
  Resource disk = *Resource::Disk(tmp_ + "/vm-disk.img", "contract", caps_.max_name_len);
  ASSERT_TRUE(Try(a_, kEX, disk).ok());
  const absl::Time start = absl::Now();
  absl::StatusOr<Grant> g = Try(b_, kEX, disk);
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));  // No-wait means no waiting.
  ASSERT_TRUE(IsLockBusy(g.status())) << g.status();
  EXPECT_THAT(g.status().message(), HasSubstr(disk.path));
  EXPECT_THAT(g.status().message(), HasSubstr("exclusive"));
  if (caps_.holder_identity) {
    EXPECT_THAT(g.status().message(), HasSubstr("vm-alpha"));
    EXPECT_THAT(g.status().message(), HasSubstr(a_.uuid));
  }
  EXPECT_TRUE(backend_->Release(a_, disk).ok());
}

TEST_P(ContractTest, DiskPathSpellingsAreOneResource) {
  SKIP_IF_NO_EXCLUSION();
  const std::string img = tmp_ + "/shared.img";
  std::ofstream(img) << "x";
  ASSERT_EQ(symlink(img.c_str(), (tmp_ + "/alias.img").c_str()), 0);
  Resource one = *Resource::Disk(img, "contract", caps_.max_name_len);
  Resource other = *Resource::Disk(tmp_ + "/./alias.img", "contract", caps_.max_name_len);
  ASSERT_TRUE(Try(a_, kEX, one).ok());
  EXPECT_TRUE(IsLockBusy(Try(b_, kEX, other).status()));
  EXPECT_TRUE(backend_->Release(a_, one).ok());
}

// Every alias of one disk that this machine can build is one resource, in
// both directions: a hard link, a bind mount (of the file), a loop device
// over the whole image and a second device node of that loop device
// (docs/disk-identity.md).
TEST_P(ContractTest, DiskAliasesAreOneResource) {
  SKIP_IF_NO_EXCLUSION();
  const std::string img = tmp_ + "/aliased.img";
  std::ofstream(img) << std::string(1 << 20, 'x');
  std::vector<std::pair<std::string, std::string>> built;  // what, path
  std::vector<std::string> missing;
  ASSERT_EQ(link(img.c_str(), (tmp_ + "/hard.img").c_str()), 0);
  built.emplace_back("hard link", tmp_ + "/hard.img");
  std::optional<aliases::BindMount> bind;
  if (absl::Status s = aliases::EnterPrivateMountNamespace(); s.ok()) {
    absl::StatusOr<aliases::BindMount> b = aliases::BindMount::Make(img, tmp_ + "/bound.img");
    ASSERT_TRUE(b.ok()) << b.status();
    bind.emplace(*std::move(b));
    built.emplace_back("bind mount", tmp_ + "/bound.img");
  } else {
    missing.push_back(absl::StrCat("bind mount (", s.message(), ")"));
  }
  std::optional<aliases::LoopDevice> loop;
  if (absl::StatusOr<aliases::LoopDevice> l = aliases::LoopDevice::Attach(img); l.ok()) {
    loop.emplace(*std::move(l));
    built.emplace_back("loop device", loop->path());
    absl::Status node = aliases::MknodAlias(loop->path(), tmp_ + "/loop-node");
    ASSERT_TRUE(node.ok()) << node;
    built.emplace_back("second device node", tmp_ + "/loop-node");
  } else {
    missing.push_back(absl::StrCat("loop device (", l.status().message(), ")"));
  }
  if (geteuid() == 0) {
    EXPECT_EQ(built.size(), 4u) << "as root every alias kind must be buildable; missing: "
                                << absl::StrJoin(missing, ", ");
  }
  // A partition: the partition device of a loop device over a partitioned
  // image, and a second node of it, are one disk. Kernels without MSDOS
  // partition support (some minimal VM kernels) read no table: said below.
  const std::string parted = tmp_ + "/parted.img";
  std::ofstream(parted) << std::string(4 << 20, 'x');
  std::vector<std::pair<std::string, std::string>> part_aliases;
  std::optional<aliases::LoopDevice> ploop;
  if (aliases::WriteMbr(parted, 2048, 4096).ok()) {
    if (absl::StatusOr<aliases::LoopDevice> l = aliases::LoopDevice::Attach(parted, 0, true);
        l.ok()) {
      ploop.emplace(*std::move(l));
      const std::string part = ploop->path() + "p1";
      if (aliases::WaitForPath(part)) {
        ASSERT_TRUE(aliases::MknodAlias(part, tmp_ + "/part-node").ok());
        part_aliases.emplace_back("partition", part);
        part_aliases.emplace_back("second node of the partition", tmp_ + "/part-node");
      } else {
        missing.push_back("partition (this kernel read no partition table)");
      }
    }
  }
  // A device-mapper device with a UUID (an LVM LV's kind of identity):
  // its node and a second node of it are one disk. Hosts without
  // device-mapper say so below; the cluster lab's nodes have it.
  std::optional<aliases::LoopDevice> dm_loop;
  std::optional<aliases::DmLinear> dm;
  if (loop.has_value()) {
    const std::string under = tmp_ + "/lv-under.img";
    std::ofstream(under) << std::string(1 << 20, 'y');
    if (absl::StatusOr<aliases::LoopDevice> l = aliases::LoopDevice::Attach(under); l.ok()) {
      dm_loop.emplace(*std::move(l));
      static int made = 0;
      const std::string name = absl::StrCat("lkc-", getpid(), "-", ++made);
      absl::StatusOr<aliases::DmLinear> d = aliases::DmLinear::Make(
          name, absl::StrCat("LVM-latchkeycontract", getpid(), "x", made), dm_loop->path());
      if (d.ok()) {
        dm.emplace(*std::move(d));
        ASSERT_TRUE(aliases::MknodAlias(dm->path(), tmp_ + "/lv-node").ok());
        part_aliases.emplace_back("device-mapper device", dm->path());
        part_aliases.emplace_back("second node of the device-mapper device", tmp_ + "/lv-node");
      } else {
        missing.push_back(absl::StrCat("device-mapper (", d.status().message(), ")"));
      }
    }
  }
  Resource one = *Resource::Disk(img, "contract", caps_.max_name_len);
  for (const auto& [what, path] : built) {
    absl::StatusOr<Resource> other = Resource::Disk(path, "contract", caps_.max_name_len);
    ASSERT_TRUE(other.ok()) << what << ": " << other.status();
    ASSERT_TRUE(Try(a_, kEX, one).ok()) << what;
    EXPECT_TRUE(IsLockBusy(Try(b_, kEX, *other).status())) << what << " " << path;
    EXPECT_TRUE(IsLockBusy(Try(b_, kSR, *other).status())) << what << " " << path;
    ASSERT_TRUE(backend_->Release(a_, one).ok());
    ASSERT_TRUE(Try(b_, kEX, *other).ok()) << what;
    EXPECT_TRUE(IsLockBusy(Try(a_, kEX, one).status())) << what << " the other way round";
    ASSERT_TRUE(backend_->Release(b_, *other).ok());
  }
  // Pairs: a block device and a second node of it.
  for (size_t i = 0; i + 1 < part_aliases.size(); i += 2) {
    const std::string& what = part_aliases[i].first;
    Resource p = *Resource::Disk(part_aliases[i].second, "contract", caps_.max_name_len);
    Resource q = *Resource::Disk(part_aliases[i + 1].second, "contract", caps_.max_name_len);
    ASSERT_TRUE(Try(a_, kEX, p).ok()) << what;
    EXPECT_TRUE(IsLockBusy(Try(b_, kEX, q).status())) << "a second node of the " << what;
    ASSERT_TRUE(backend_->Release(a_, p).ok());
    ASSERT_TRUE(Try(b_, kSR, q).ok()) << what;
    EXPECT_TRUE(IsLockBusy(Try(a_, kEX, p).status())) << what << " the other way round";
    ASSERT_TRUE(backend_->Release(b_, q).ok());
  }
  if (ploop.has_value() && !part_aliases.empty() && part_aliases[0].first == "partition") {
    // The whole disk is another resource than its partition (extents).
    Resource p = *Resource::Disk(part_aliases[0].second, "contract", caps_.max_name_len);
    Resource whole = *Resource::Disk(ploop->path(), "contract", caps_.max_name_len);
    ASSERT_TRUE(Try(a_, kEX, p).ok());
    ASSERT_TRUE(Try(b_, kEX, whole).ok());
    ASSERT_TRUE(backend_->Release(b_, whole).ok());
    ASSERT_TRUE(backend_->Release(a_, p).ok());
  }
  if (!missing.empty()) {
    std::printf("DiskAliasesAreOneResource: not buildable here: %s\n",
                absl::StrJoin(missing, ", ").c_str());
  }
}

TEST_P(ContractTest, WaitingAcquireIsGrantedOnRelease) {
  SKIP_IF_NO_EXCLUSION();
  ASSERT_TRUE(Try(a_, kEX).ok());
  std::atomic<bool> done{false};
  absl::StatusOr<Grant> waited;
  std::thread t([&] {
    waited = backend_->Acquire(b_, res_, kEX, WaitFor(absl::Seconds(20)));
    done = true;
  });
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_FALSE(done) << "the waiter must block while the lock is held";
  const absl::Time released = absl::Now();
  ASSERT_TRUE(backend_->Release(a_, res_).ok());
  t.join();
  ASSERT_TRUE(waited.ok()) << waited.status();
  EXPECT_LT(absl::Now() - released, absl::Seconds(5));
  EXPECT_TRUE(backend_->Release(b_, res_).ok());
}

TEST_P(ContractTest, WaitingAcquireTimesOut) {
  SKIP_IF_NO_EXCLUSION();
  ASSERT_TRUE(Try(a_, kEX).ok());
  const absl::Time start = absl::Now();
  absl::StatusOr<Grant> g =
      backend_->Acquire(b_, res_, kEX, WaitFor(absl::Milliseconds(300)));
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(g.status().code(), absl::StatusCode::kDeadlineExceeded) << g.status();
  EXPECT_GE(took, absl::Milliseconds(300));
  EXPECT_LT(took, absl::Seconds(5));
  ExpectStillHeld("after the waiter timed out");
  // The timed-out waiter left nothing behind: after release it can acquire.
  ASSERT_TRUE(backend_->Release(a_, res_).ok());
  EXPECT_TRUE(Try(b_, kEX).ok());
  EXPECT_TRUE(backend_->Release(b_, res_).ok());
}

// A caller that gives up (latchd's client disconnected) ends the wait:
// nothing is granted to it later, and the lock stays with its holder.
TEST_P(ContractTest, WaitingAcquireEndsWhenItsCallerGivesUp) {
  SKIP_IF_NO_EXCLUSION();
  ASSERT_TRUE(Try(a_, kEX).ok());
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  AcquireOptions o = WaitFor(absl::InfiniteDuration());
  o.cancel_fd = p[0];
  absl::StatusOr<Grant> waited;
  absl::Time ended;
  std::thread t([&] {
    waited = backend_->Acquire(b_, res_, kEX, o);
    ended = absl::Now();
  });
  absl::SleepFor(absl::Milliseconds(300));
  const absl::Time gave_up = absl::Now();
  close(p[1]);  // the read end now reports a hang-up
  t.join();
  close(p[0]);
  EXPECT_EQ(waited.status().code(), absl::StatusCode::kCancelled) << waited.status();
  EXPECT_LT(ended - gave_up, absl::Seconds(2));
  ExpectStillHeld("after the waiter gave up");
  // It took nothing and left nothing behind.
  ASSERT_TRUE(backend_->Release(a_, res_).ok());
  EXPECT_EQ(backend_->Release(b_, res_).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Try(b_, kEX).ok());
  EXPECT_TRUE(backend_->Release(b_, res_).ok());
}

TEST_P(ContractTest, ConversionUpAndDown) {
  SKIP_IF_NO_EXCLUSION();
  const LockMode shared = Supports(kSR) ? kSR : kSW;
  absl::StatusOr<Grant> first = Try(a_, shared);
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(Try(b_, shared).ok());
  // Up while another reader holds: refused, and a_ keeps its shared lock.
  absl::StatusOr<Grant> up = backend_->Convert(a_, res_, kEX, {});
  EXPECT_TRUE(IsLockBusy(up.status())) << up.status();
  EXPECT_TRUE(IsLockBusy(Try(c_, kEX).status()));
  ASSERT_TRUE(backend_->Release(b_, res_).ok());
  up = backend_->Convert(a_, res_, kEX, {});
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_EQ(up->mode, kEX);
  EXPECT_GT(up->fencing_token, first->fencing_token);
  EXPECT_TRUE(IsLockBusy(Try(b_, shared).status()));
  // Down: others may share again.
  absl::StatusOr<Grant> down = backend_->Convert(a_, res_, shared, {});
  ASSERT_TRUE(down.ok()) << down.status();
  EXPECT_EQ(down->mode, shared);
  EXPECT_GT(down->fencing_token, up->fencing_token);
  EXPECT_TRUE(Try(b_, shared).ok());
  EXPECT_TRUE(IsLockBusy(Try(c_, kEX).status()));
  EXPECT_TRUE(backend_->Release(b_, res_).ok());
  EXPECT_TRUE(backend_->Release(a_, res_).ok());
  // Converting what one does not hold.
  EXPECT_EQ(backend_->Convert(a_, res_, kEX, {}).status().code(), absl::StatusCode::kNotFound);
}

TEST_P(ContractTest, ConversionBetweenSharedModes) {
  SKIP_IF_NO_EXCLUSION();
  if (!Supports(kSR) || !Supports(kSW) || !caps_.folded_modes.empty()) {
    GTEST_SKIP() << "backend folds or lacks shared modes: " << caps_.folded_modes;
  }
  ASSERT_TRUE(Try(a_, kSR).ok());
  ASSERT_TRUE(Try(b_, kSR).ok());
  EXPECT_TRUE(IsLockBusy(backend_->Convert(a_, res_, kSW, {}).status()));  // b_ reads.
  ASSERT_TRUE(backend_->Release(b_, res_).ok());
  absl::StatusOr<Grant> w = backend_->Convert(a_, res_, kSW, {});
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE(Try(b_, kSW).ok());                  // write+write share
  EXPECT_TRUE(IsLockBusy(Try(c_, kSR).status()));  // read vs write conflict
  EXPECT_TRUE(backend_->Release(b_, res_).ok());
  EXPECT_TRUE(backend_->Release(a_, res_).ok());
}

TEST_P(ContractTest, FencingTokensOnlyGrow) {
  if (!caps_.fencing_tokens) GTEST_SKIP() << "backend declares no fencing tokens";
  uint64_t last = 0;
  for (int i = 0; i < 6; ++i) {
    const Owner& o = i % 2 ? a_ : b_;
    absl::StatusOr<Grant> g = Try(o, i % 3 == 0 ? kEX : (Supports(kSR) ? kSR : kEX));
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_GT(g->fencing_token, last) << "grant " << i;
    last = g->fencing_token;
    ASSERT_TRUE(backend_->Release(o, res_).ok());
  }
  // Across backend instances (a restart) too.
  backend_ = Load();
  absl::StatusOr<Grant> g = Try(a_, kEX);
  ASSERT_TRUE(g.ok());
  EXPECT_GT(g->fencing_token, last);
  EXPECT_TRUE(backend_->Release(a_, res_).ok());
}

TEST_P(ContractTest, ReleaseByNonOwnerIsRefusedAndLockStays) {
  ASSERT_TRUE(Try(a_, kEX).ok());
  absl::Status s = backend_->Release(b_, res_);
  EXPECT_THAT(s.code(), AnyOf(absl::StatusCode::kPermissionDenied, absl::StatusCode::kNotFound));
  EXPECT_THAT(s.message(), HasSubstr("vm-bravo"));
  if (caps_.holder_identity) {
    EXPECT_THAT(s.message(), HasSubstr("vm-alpha"));
  }
  ExpectStillHeld("after a non-owner's release");
  EXPECT_TRUE(backend_->Release(a_, res_).ok());
  EXPECT_EQ(backend_->Release(a_, res_).code(), absl::StatusCode::kNotFound);
}

TEST_P(ContractTest, SecondAcquireBySameOwnerIsRefused) {
  ASSERT_TRUE(Try(a_, kEX).ok());
  absl::StatusOr<Grant> again = Try(a_, kEX);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition) << again.status();
  EXPECT_THAT(again.status().message(), HasSubstr("convert"));
  ExpectStillHeld("after a duplicate acquire");
  EXPECT_TRUE(backend_->Release(a_, res_).ok());
}

TEST_P(ContractTest, InquireReportsHoldersWithModeAndToken) {
  ASSERT_TRUE(Try(a_, kEX).ok());
  absl::StatusOr<std::vector<HolderInfo>> h = backend_->Inquire(res_);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->size(), 1u);
  EXPECT_EQ((*h)[0].mode, kEX);
  EXPECT_EQ((*h)[0].resource.Key(), res_.Key());
  if (caps_.holder_identity) {
    EXPECT_EQ((*h)[0].owner.uuid, a_.uuid);
  }
  absl::StatusOr<std::vector<HolderInfo>> all = backend_->Inquire(std::nullopt);
  ASSERT_TRUE(all.ok());
  bool found = false;
  for (const HolderInfo& x : *all) found = found || x.resource.Key() == res_.Key();
  EXPECT_TRUE(found);
  ASSERT_TRUE(backend_->Release(a_, res_).ok());
  h = backend_->Inquire(res_);
  ASSERT_TRUE(h.ok());
  EXPECT_TRUE(h->empty());
}

TEST_P(ContractTest, TwoOwnersInOneProcessExcludeEachOther) {
  SKIP_IF_NO_EXCLUSION();
  // The trap of classic fcntl locks: same process, two owners.
  ASSERT_TRUE(Try(a_, kEX).ok());
  std::unique_ptr<Backend> second = Load();
  absl::StatusOr<Grant> g = second->Acquire(b_, res_, kEX, {});
  EXPECT_TRUE(IsLockBusy(g.status())) << g.status();
  EXPECT_TRUE(backend_->Release(a_, res_).ok());
  g = second->Acquire(b_, res_, kEX, {});
  EXPECT_TRUE(g.ok()) << g.status();
  EXPECT_TRUE(second->Release(b_, res_).ok());
}

TEST_P(ContractTest, TwoProcessesContend) {
  SKIP_IF_NO_EXCLUSION();
  std::unique_ptr<HolderProcess> other = StartHolder(RandomUuid(), kEX);
  ASSERT_NE(other, nullptr);
  absl::StatusOr<Grant> g = Try(a_, kEX);
  ASSERT_TRUE(IsLockBusy(g.status())) << g.status();
  if (caps_.holder_identity) {
    EXPECT_THAT(g.status().message(), HasSubstr("vm-remote"));
    EXPECT_THAT(g.status().message(), HasSubstr(absl::StrCat("pid ", other->pid())));
  }
  // A waiter in this process is woken by the other process's release.
  std::thread releaser([&] {
    absl::SleepFor(absl::Milliseconds(150));
    EXPECT_TRUE(other->Release().ok());
  });
  g = backend_->Acquire(a_, res_, kEX, WaitFor(absl::Seconds(20)));
  releaser.join();
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_GT(g->fencing_token, other->token());
  // And the other way round: the other process is refused while we hold.
  absl::StatusOr<std::unique_ptr<HolderProcess>> refused = HolderProcess::Start(
      Env().holder_binary, {Env().plugin, Env().backend, settings_file_, RandomUuid(),
                            "vm-remote", "lease", res_.lockspace, res_.name, "exclusive"});
  EXPECT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(), HasSubstr("error 14"));  // Unavailable
  EXPECT_TRUE(backend_->Release(a_, res_).ok());
}

TEST_P(ContractTest, KilledHolderProcessFreesItsLocks) {
  SKIP_IF_NO_EXCLUSION();
  if (caps_.survives_holder_death) {
    GTEST_SKIP() << "backend keeps locks past the holder's death (adoption covers it)";
  }
  std::unique_ptr<HolderProcess> other = StartHolder(RandomUuid(), kEX);
  ASSERT_NE(other, nullptr);
  ASSERT_TRUE(IsLockBusy(Try(a_, kEX).status()));
  other->Kill();
  absl::StatusOr<Grant> g = backend_->Acquire(a_, res_, kEX, WaitFor(absl::Seconds(10)));
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_TRUE(backend_->Release(a_, res_).ok());
}

TEST_P(ContractTest, AdoptRefusesWhenSomeoneTookItMeanwhile) {
  SKIP_IF_NO_EXCLUSION();
  if (caps_.orphan_adoption) {
    GTEST_SKIP() << "backends with orphan adoption are tested adopting real orphans with latchd";
  }
  absl::StatusOr<Grant> g = Try(a_, kEX);
  ASSERT_TRUE(g.ok());
  const LockRecord record{a_, res_, kEX, g->fencing_token, g->backend_token};
  // The holder "restarts": its lock is gone, nobody took the resource.
  ASSERT_TRUE(backend_->Release(a_, res_).ok());
  absl::StatusOr<Grant> adopted = backend_->Adopt(record);
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  EXPECT_GT(adopted->fencing_token, record.fencing_token);
  ExpectStillHeld("after adoption");
  const LockRecord second{a_, res_, kEX, adopted->fencing_token, adopted->backend_token};
  ASSERT_TRUE(backend_->Release(a_, res_).ok());
  // Now someone else holds it in between: adoption must refuse.
  ASSERT_TRUE(Try(b_, kEX).ok());
  ASSERT_TRUE(backend_->Release(b_, res_).ok());
  absl::StatusOr<Grant> lost = backend_->Adopt(second);
  EXPECT_EQ(lost.status().code(), absl::StatusCode::kAborted) << lost.status();
  EXPECT_THAT(lost.status().message(), HasSubstr("fencing token moved"));
  EXPECT_TRUE(Try(c_, kEX).ok()) << "a refused adoption holds nothing";
  EXPECT_TRUE(backend_->Release(c_, res_).ok());
}

AcquireOptions HandOff(uint64_t token) {
  AcquireOptions o;
  o.expect_token = token;
  return o;
}

TEST_P(ContractTest, HandOffTokenNeedsFencingTokens) {
  if (caps_.fencing_tokens) GTEST_SKIP() << "backend has fencing tokens: see the HandOff tests";
  absl::StatusOr<Grant> g = backend_->Acquire(a_, res_, kEX, HandOff(1));
  EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument) << g.status();
  EXPECT_TRUE(Try(b_, kEX).ok()) << "a refused hand-off holds nothing";
  EXPECT_TRUE(backend_->Release(b_, res_).ok());
}

TEST_P(ContractTest, HandOffSucceedsWhenNobodyTookTheResource) {
  if (!caps_.fencing_tokens) GTEST_SKIP() << "backend declares no fencing tokens";
  absl::StatusOr<Grant> source = Try(a_, kEX);
  ASSERT_TRUE(source.ok()) << source.status();
  ASSERT_TRUE(backend_->Release(a_, res_).ok());
  absl::StatusOr<Grant> dest = backend_->Acquire(b_, res_, kEX, HandOff(source->fencing_token));
  ASSERT_TRUE(dest.ok()) << dest.status();
  EXPECT_EQ(dest->mode, kEX);
  EXPECT_GT(dest->fencing_token, source->fencing_token);
  ExpectStillHeld("after the hand-off");
  ASSERT_TRUE(backend_->Release(b_, res_).ok());
  // A waiting hand-off with the latest token is granted too.
  dest = backend_->Acquire(a_, res_, kEX, [&] {
    AcquireOptions o = WaitFor(absl::Seconds(5));
    o.expect_token = dest->fencing_token;
    return o;
  }());
  ASSERT_TRUE(dest.ok()) << dest.status();
  ASSERT_TRUE(backend_->Release(a_, res_).ok());
}

TEST_P(ContractTest, HandOffIgnoresCompatibleGrantsInBetween) {
  if (!caps_.fencing_tokens) GTEST_SKIP() << "backend declares no fencing tokens";
  const LockMode shared = Supports(kSR) ? kSR : kSW;
  if (!Supports(shared)) GTEST_SKIP() << "backend grants no shared mode";
  // a_ hands over a shared lock while b_ shares the resource with it.
  absl::StatusOr<Grant> source = Try(a_, shared);
  ASSERT_TRUE(source.ok()) << source.status();
  ASSERT_TRUE(Try(b_, shared).ok());
  ASSERT_TRUE(backend_->Release(a_, res_).ok());
  absl::StatusOr<Grant> dest = backend_->Acquire(c_, res_, shared, HandOff(source->fencing_token));
  ASSERT_TRUE(dest.ok()) << "b_'s grant does not conflict with " << LockModeName(shared) << ": "
                         << dest.status();
  EXPECT_GT(dest->fencing_token, source->fencing_token);
  EXPECT_TRUE(backend_->Release(c_, res_).ok());
  EXPECT_TRUE(backend_->Release(b_, res_).ok());
  // But the same token does not buy exclusive: b_'s grant conflicts with it.
  absl::StatusOr<Grant> ex = backend_->Acquire(c_, res_, kEX, HandOff(source->fencing_token));
  EXPECT_EQ(ex.status().code(), absl::StatusCode::kAborted) << ex.status();

  // The other shared mode conflicts: a shared-write grant in between
  // refuses a shared-read hand-off, not a shared-write one.
  if (!Supports(kSR) || !Supports(kSW) || !caps_.folded_modes.empty()) return;
  source = Try(a_, kSR);
  ASSERT_TRUE(source.ok()) << source.status();
  ASSERT_TRUE(backend_->Release(a_, res_).ok());
  ASSERT_TRUE(Try(b_, kSW).ok());
  ASSERT_TRUE(backend_->Release(b_, res_).ok());
  absl::StatusOr<Grant> g = backend_->Acquire(c_, res_, kSR, HandOff(source->fencing_token));
  EXPECT_EQ(g.status().code(), absl::StatusCode::kAborted) << g.status();
  g = backend_->Acquire(c_, res_, kSW, HandOff(source->fencing_token));
  EXPECT_TRUE(g.ok()) << g.status();
  EXPECT_TRUE(backend_->Release(c_, res_).ok());
}

TEST_P(ContractTest, HandOffIsRefusedWhenSomeoneTookTheResourceMeanwhile) {
  if (!caps_.fencing_tokens) GTEST_SKIP() << "backend declares no fencing tokens";
  absl::StatusOr<Grant> source = Try(a_, kEX);
  ASSERT_TRUE(source.ok()) << source.status();
  ASSERT_TRUE(backend_->Release(a_, res_).ok());
  // Another owner acquired and released in between.
  absl::StatusOr<Grant> thief = Try(b_, kEX);
  ASSERT_TRUE(thief.ok());
  ASSERT_TRUE(backend_->Release(b_, res_).ok());
  for (LockMode m : {kEX, kSR, kSW}) {
    if (!Supports(m)) continue;
    SCOPED_TRACE(LockModeName(m));
    absl::StatusOr<Grant> g = backend_->Acquire(c_, res_, m, HandOff(source->fencing_token));
    EXPECT_EQ(g.status().code(), absl::StatusCode::kAborted) << g.status();
    EXPECT_THAT(g.status().message(), HasSubstr(res_.name));
    // A waiting hand-off is refused at once, not after its timeout.
    const absl::Time start = absl::Now();
    AcquireOptions waiting = WaitFor(absl::Seconds(30));
    waiting.expect_token = source->fencing_token;
    g = backend_->Acquire(c_, res_, m, waiting);
    EXPECT_EQ(g.status().code(), absl::StatusCode::kAborted) << g.status();
    EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  }
  // A token no grant here ever carried is refused too.
  absl::StatusOr<Grant> g = backend_->Acquire(c_, res_, kEX, HandOff(thief->fencing_token + 1000));
  EXPECT_EQ(g.status().code(), absl::StatusCode::kAborted) << g.status();
  // The refusals hold nothing: nobody holds the resource, c_ holds nothing
  // and anyone may take it exclusively.
  absl::StatusOr<std::vector<HolderInfo>> holders = backend_->Inquire(res_);
  ASSERT_TRUE(holders.ok()) << holders.status();
  EXPECT_TRUE(holders->empty());
  EXPECT_EQ(backend_->Release(c_, res_).code(), absl::StatusCode::kNotFound);
  g = Try(b_, kEX);
  EXPECT_TRUE(g.ok()) << g.status();
  EXPECT_TRUE(backend_->Release(b_, res_).ok());
}

TEST_P(ContractTest, OnlyOneHandOffPerToken) {
  if (!caps_.fencing_tokens) GTEST_SKIP() << "backend declares no fencing tokens";
  absl::StatusOr<Grant> source = Try(a_, kEX);
  ASSERT_TRUE(source.ok()) << source.status();
  ASSERT_TRUE(backend_->Release(a_, res_).ok());
  // Several takers race for it exclusively with the same token, each
  // releasing at once when it wins: the check and the grant are one step,
  // so exactly one wins and every other sees a conflicting grant since.
  constexpr int kTakers = 6;
  std::vector<Owner> owners;
  for (int i = 0; i < kTakers; ++i) {
    owners.push_back(OwnerForThisProcess(RandomUuid(), absl::StrCat("vm-taker", i)));
  }
  std::vector<absl::StatusOr<Grant>> results(kTakers, absl::UnknownError("not run"));
  std::vector<absl::Status> releases(kTakers);
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int i = 0; i < kTakers; ++i) {
    threads.emplace_back([&, i] {
      while (!go) {
      }
      AcquireOptions o = WaitFor(absl::Seconds(10));
      o.expect_token = source->fencing_token;
      results[i] = backend_->Acquire(owners[i], res_, kEX, o);
      if (results[i].ok()) releases[i] = backend_->Release(owners[i], res_);
    });
  }
  go = true;
  for (std::thread& t : threads) t.join();
  int won = 0;
  for (int i = 0; i < kTakers; ++i) {
    if (results[i].ok()) {
      ++won;
      EXPECT_TRUE(releases[i].ok()) << releases[i];
    } else {
      EXPECT_EQ(results[i].status().code(), absl::StatusCode::kAborted) << results[i].status();
    }
  }
  EXPECT_EQ(won, 1);
}

TEST_P(ContractTest, ConvertChecksTheHandOffToken) {
  if (!caps_.fencing_tokens) GTEST_SKIP() << "backend declares no fencing tokens";
  const LockMode shared = Supports(kSR) ? kSR : kSW;
  if (!Supports(shared)) GTEST_SKIP() << "backend grants no shared mode";
  absl::StatusOr<Grant> mine = Try(a_, shared);
  ASSERT_TRUE(mine.ok()) << mine.status();
  absl::StatusOr<Grant> other = Try(b_, shared);
  ASSERT_TRUE(other.ok()) << other.status();
  ASSERT_TRUE(backend_->Release(b_, res_).ok());
  // b_ was granted after a_, which conflicts with exclusive: converting on
  // a_'s token is refused, and a_ keeps its shared lock.
  absl::StatusOr<Grant> up = backend_->Convert(a_, res_, kEX, HandOff(mine->fencing_token));
  EXPECT_EQ(up.status().code(), absl::StatusCode::kAborted) << up.status();
  ExpectStillHeld("after a refused convert");
  absl::StatusOr<std::vector<HolderInfo>> holders = backend_->Inquire(res_);
  ASSERT_TRUE(holders.ok());
  ASSERT_EQ(holders->size(), 1u);
  EXPECT_EQ((*holders)[0].mode, shared);
  absl::StatusOr<Grant> joined = Try(c_, shared);
  EXPECT_TRUE(joined.ok()) << "a_ is still shared, not exclusive: " << joined.status();
  ASSERT_TRUE(backend_->Release(c_, res_).ok());
  // On the latest token it converts.
  up = backend_->Convert(a_, res_, kEX, HandOff(joined->fencing_token));
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_GT(up->fencing_token, joined->fencing_token);
  EXPECT_TRUE(backend_->Release(a_, res_).ok());
}

TEST_P(ContractTest, AdoptingTheSameRecordAgainAfterTheAdopterDiedWorks) {
  SKIP_IF_NO_EXCLUSION();
  if (caps_.orphan_adoption) {
    GTEST_SKIP() << "backends with orphan adoption are tested adopting real orphans with latchd";
  }
  // latchd adopts a record, then dies before its journal learns the new
  // grant: the next latchd adopts the same record again. That re-acquire
  // was no one else's grant, so it does not count against the record.
  absl::StatusOr<Grant> g = Try(a_, kEX);
  ASSERT_TRUE(g.ok());
  const LockRecord record{a_, res_, kEX, g->fencing_token, g->backend_token};
  ASSERT_TRUE(backend_->Release(a_, res_).ok());
  for (int restart = 0; restart < 3; ++restart) {
    absl::StatusOr<Grant> adopted = backend_->Adopt(record);
    ASSERT_TRUE(adopted.ok()) << "restart " << restart << ": " << adopted.status();
    EXPECT_GT(adopted->fencing_token, record.fencing_token);
    ExpectStillHeld("after adoption");
    ASSERT_TRUE(backend_->Release(a_, res_).ok());  // The adopter dies.
  }
  // Someone else in between still breaks it.
  ASSERT_TRUE(Try(b_, kEX).ok());
  ASSERT_TRUE(backend_->Release(b_, res_).ok());
  absl::StatusOr<Grant> lost = backend_->Adopt(record);
  EXPECT_EQ(lost.status().code(), absl::StatusCode::kAborted) << lost.status();
  // So does a new grant of the owner's own (it released and re-acquired:
  // the record is stale), and a hand-off is not an adoption.
  absl::StatusOr<Grant> mine = Try(a_, kEX);
  ASSERT_TRUE(mine.ok());
  ASSERT_TRUE(backend_->Release(a_, res_).ok());
  const LockRecord stale{a_, res_, kEX, mine->fencing_token - 1, mine->backend_token};
  EXPECT_EQ(backend_->Adopt(stale).status().code(), absl::StatusCode::kAborted);
  ASSERT_TRUE(backend_->Adopt(LockRecord{a_, res_, kEX, mine->fencing_token, ""}).ok());
  ASSERT_TRUE(backend_->Release(a_, res_).ok());
  absl::StatusOr<Grant> handoff = backend_->Acquire(c_, res_, kEX, HandOff(mine->fencing_token));
  EXPECT_EQ(handoff.status().code(), absl::StatusCode::kAborted) << handoff.status();
}

TEST_P(ContractTest, AdoptIgnoresCompatibleGrantsMeanwhile) {
  SKIP_IF_NO_EXCLUSION();
  if (caps_.orphan_adoption) {
    GTEST_SKIP() << "backends with orphan adoption are tested adopting real orphans with latchd";
  }
  const LockMode shared = Supports(kSR) ? kSR : kSW;
  if (!Supports(shared)) GTEST_SKIP() << "backend grants no shared mode";
  // Two shared holders; the first "restarts" (its lock is gone) while the
  // second, granted later, still holds.
  absl::StatusOr<Grant> g = Try(a_, shared);
  ASSERT_TRUE(g.ok());
  const LockRecord record{a_, res_, shared, g->fencing_token, g->backend_token};
  ASSERT_TRUE(Try(b_, shared).ok());
  ASSERT_TRUE(backend_->Release(a_, res_).ok());
  absl::StatusOr<Grant> adopted = backend_->Adopt(record);
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  ASSERT_TRUE(backend_->Release(a_, res_).ok());
  ASSERT_TRUE(backend_->Release(b_, res_).ok());
  // An exclusive grant in between does conflict.
  const LockRecord second{a_, res_, shared, adopted->fencing_token, adopted->backend_token};
  ASSERT_TRUE(Try(c_, kEX).ok());
  ASSERT_TRUE(backend_->Release(c_, res_).ok());
  absl::StatusOr<Grant> lost = backend_->Adopt(second);
  EXPECT_EQ(lost.status().code(), absl::StatusCode::kAborted) << lost.status();
  EXPECT_TRUE(Try(c_, kEX).ok()) << "a refused adoption holds nothing";
  EXPECT_TRUE(backend_->Release(c_, res_).ok());
}

TEST_P(ContractTest, BadInputIsRefusedAndHeldLocksStay) {
  ASSERT_TRUE(Try(a_, kEX).ok());
  Resource empty = res_;
  empty.name = "";
  EXPECT_THAT(Try(b_, kEX, empty).status().message(), HasSubstr("empty"));
  Resource overlong = res_;
  overlong.name = std::string(caps_.max_name_len + 1, 'x');
  absl::StatusOr<Grant> g = Try(b_, kEX, overlong);
  EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(g.status().message(), HasSubstr(absl::StrCat("limit is ", caps_.max_name_len)));
  Resource escape = res_;
  escape.name = "../../etc/passwd";
  EXPECT_EQ(Try(b_, kEX, escape).status().code(), absl::StatusCode::kInvalidArgument);
  g = Try(b_, static_cast<LockMode>(7));
  EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(g.status().message(), HasSubstr("unknown lock mode"));
  Owner nameless = b_;
  nameless.uuid = "zzz";
  EXPECT_THAT(Try(nameless, kEX).status().message(), HasSubstr("uuid"));
  EXPECT_EQ(backend_->Release(nameless, res_).code(), absl::StatusCode::kInvalidArgument);
  // A release of a malformed resource by the holder changes nothing either.
  EXPECT_EQ(backend_->Release(a_, overlong).code(), absl::StatusCode::kInvalidArgument);

  absl::StatusOr<std::unique_ptr<Backend>> unknown = LoadBackend({PluginDir()}, "nosuchbackend", settings_);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(unknown.status().message(), HasSubstr(GetParam()));  // Lists the available one.
  const std::string badabi_dir = tmp_ + "/plugins";
  mkdir(badabi_dir.c_str(), 0700);
  const char* srcdir = getenv("TEST_SRCDIR");
  ASSERT_NE(srcdir, nullptr);
  ASSERT_EQ(symlink(absl::StrCat(srcdir, "/latchkey/tests/testdata/latchkey-badabi.so").c_str(),
                    (badabi_dir + "/latchkey-badabi.so").c_str()),
            0);
  absl::StatusOr<std::unique_ptr<Backend>> wrong = LoadBackend({badabi_dir}, "badabi", settings_);
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(wrong.status().message(), HasSubstr("latchkey-badabi.so"));

  Config bad_settings;
  bad_settings.Set(ConfigEntry{"no_such_setting", ConfigValue::Int(1), "bad.conf", 3});
  absl::StatusOr<std::unique_ptr<Backend>> bad = LoadBackend({PluginDir()}, GetParam(), bad_settings);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("bad.conf:3: unknown key 'no_such_setting'"));

  ExpectStillHeld("after bad input");
  EXPECT_TRUE(backend_->Release(a_, res_).ok());
}

INSTANTIATE_TEST_SUITE_P(Backend, ContractTest, ::testing::Values(Env().backend),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

}  // namespace

const Environment& Env() { return g_env; }

}  // namespace contract
}  // namespace latchkey

int main(int argc, char** argv) {
  // Flags first: the test instantiation below reads Env() when gtest
  // registers parameterized tests, inside InitGoogleMock.
  auto& env = latchkey::contract::g_env;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto take = [&](const char* flag, std::string* out) {
      const std::string f = std::string(flag) + "=";
      if (absl::StartsWith(a, f)) *out = a.substr(f.size());
    };
    take("--backend", &env.backend);
    take("--plugin", &env.plugin);
    take("--settings", &env.settings);
    take("--holder", &env.holder_binary);
  }
  if (env.backend.empty() || env.plugin.empty() || env.holder_binary.empty()) {
    fprintf(stderr, "usage: %s --backend=NAME --plugin=FILE --holder=FILE [--settings=TEXT]\n",
            argv[0]);
    return 2;
  }
  ::testing::InitGoogleMock(&argc, argv);
  return RUN_ALL_TESTS();
}
