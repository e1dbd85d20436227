// Disk identity through latchd (docs/disk-identity.md): aliases of one disk
// conflict and the refusal names both spellings; the naming scheme is
// announced; locks taken by path (an older latchd, disk_names = "path") are
// honoured after an upgrade on one host, and between hosts while some still
// lock by path. Two latchds sharing one posixfd lock directory play two
// hosts on shared storage. Not sandboxed: loop devices and bind mounts.
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <memory>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/client.h"
#include "agent/testing/latchd_process.h"
#include "core/journal.h"
#include "core/resource.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/aliases/aliases.h"

namespace latchkey {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;
using testing::LatchdProcess;
using testing::TempDir;
using testing::Vm;

// One latchd ("host") with its own client.
struct Host {
  std::unique_ptr<LatchdProcess> d;
  std::unique_ptr<LatchdClient> c;

  absl::Status Start(const std::string& dir, const std::string& extra, const std::string& locks) {
    d = std::make_unique<LatchdProcess>(dir, extra, locks);
    if (absl::Status s = d->Start(); !s.ok()) return s;
    return Reconnect();
  }
  absl::Status Reconnect() {
    absl::StatusOr<LatchdClient> cl = d->Connect();
    if (!cl.ok()) return cl.status();
    c = std::make_unique<LatchdClient>(std::move(*cl));
    return absl::OkStatus();
  }
  absl::StatusOr<json> Call(const json& req) { return c->Call(req); }
  // Waits until latchd has logged its `n`th "ready:" line (a re-exec logs
  // one more; the old program may still answer hello just before it execs)
  // and answers hello on a new connection.
  bool AwaitReady(size_t n) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (absl::Now() < deadline) {
      const std::string log = d->Log();
      size_t seen = 0;
      for (size_t at = log.find("] info: ready: "); at != std::string::npos;
           at = log.find("] info: ready: ", at + 1)) {
        ++seen;
      }
      if (seen >= n && Reconnect().ok() && Call({{"op", "hello"}}).ok()) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }
  void Register(const Vm& vm) {
    ASSERT_TRUE(Call({{"op", "register"}, {"owner", vm.Owner()}}).ok());
  }
  absl::StatusOr<json> Acquire(const Vm& vm, const std::string& disk,
                               const std::string& mode = "exclusive") {
    return Call({{"op", "acquire"},
                 {"uuid", vm.uuid},
                 {"resources", {{{"disk", disk}, {"mode", mode}}}}});
  }
  // The lock objects of `owner` in status.
  std::vector<json> LocksOf(const std::string& owner) {
    std::vector<json> out;
    absl::StatusOr<json> st = Call({{"op", "status"}});
    EXPECT_TRUE(st.ok()) << st.status();
    if (!st.ok()) return out;
    for (const json& o : (*st)["owners"]) {
      if (o["owner"]["name"] == owner) {
        for (const json& l : o["locks"]) out.push_back(l);
      }
    }
    return out;
  }
};

// A refusal because someone holds the disk (not a connection error).
void ExpectBusy(const absl::StatusOr<json>& r, const std::string& what) {
  ASSERT_FALSE(r.ok()) << what << ": granted " << r->dump();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << what << ": " << r.status();
}

class DiskNamesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir("disknames");
    locks_ = dir_ + "/shared-locks";
    ASSERT_EQ(mkdir(locks_.c_str(), 0700), 0);
    img_ = dir_ + "/vm.img";
    std::ofstream(img_) << std::string(1 << 20, 'x');
  }
  void TearDown() override {
    if (!HasFailure()) return;
    for (Host* h : {&a_, &b_}) {
      if (h->d != nullptr) fprintf(stderr, "latchd log:\n%s\n", h->d->Log().c_str());
    }
  }
  absl::Status StartHost(Host* h, const std::string& name, const std::string& extra = "") {
    const std::string dir = dir_ + "/" + name;
    mkdir(dir.c_str(), 0700);
    return h->Start(dir, extra, locks_);
  }

  std::string dir_, locks_, img_;
  Host a_, b_;
};

TEST_F(DiskNamesTest, EveryAliasIsRefusedAndTheRefusalNamesBothSpellings) {
  // latchd resolves paths in its own mount namespace: make the bind mount
  // first, in a private namespace latchd is then started in.
  ASSERT_TRUE(aliases::EnterPrivateMountNamespace().ok());
  absl::StatusOr<aliases::BindMount> bind = aliases::BindMount::Make(img_, dir_ + "/bound.img");
  ASSERT_TRUE(bind.ok()) << bind.status();
  ASSERT_EQ(link(img_.c_str(), (dir_ + "/hard.img").c_str()), 0);
  absl::StatusOr<aliases::LoopDevice> loop = aliases::LoopDevice::Attach(img_);
  ASSERT_TRUE(loop.ok()) << loop.status();
  ASSERT_TRUE(aliases::MknodAlias(loop->path(), dir_ + "/node").ok());

  ASSERT_TRUE(StartHost(&a_, "a").ok());
  Vm first("vm-first"), second("vm-second");
  a_.Register(first);
  a_.Register(second);
  ASSERT_TRUE(a_.Acquire(first, img_).ok());
  for (const std::string& alias :
       {dir_ + "/hard.img", dir_ + "/bound.img", loop->path(), dir_ + "/node"}) {
    absl::StatusOr<json> r = a_.Acquire(second, alias);
    ExpectBusy(r, alias);
    if (r.ok()) continue;
    const std::string msg(r.status().message());
    EXPECT_THAT(msg, HasSubstr("is the same disk as " + img_)) << alias;
    EXPECT_THAT(msg, HasSubstr("vm-first")) << alias;
    ExpectBusy(a_.Acquire(second, alias, "shared-read"), alias + " shared-read");
  }
  // One disk is one lock in status, with both names and its identity.
  std::vector<json> held = a_.LocksOf("vm-first");
  ASSERT_EQ(held.size(), 1u);
  EXPECT_EQ(held[0]["naming"], "identity");
  EXPECT_TRUE(held[0]["identity_kind"] == "file" || held[0]["identity_kind"] == "host-file")
      << held[0].dump();
  EXPECT_EQ(held[0]["path_name"], DiskResourceName(img_));
  absl::StatusOr<json> st = a_.Call({{"op", "status"}});
  ASSERT_TRUE(st.ok());
  EXPECT_EQ((*st)["disk_names"], "identity+path");
  // Released by another spelling: both names go, the disk is free.
  ASSERT_TRUE(a_.Call({{"op", "release"},
                       {"uuid", first.uuid},
                       {"resources", {{{"disk", dir_ + "/hard.img"}}}}})
                  .ok());
  EXPECT_TRUE(a_.LocksOf("vm-first").empty());
  EXPECT_TRUE(a_.Acquire(second, loop->path()).ok());
}

TEST_F(DiskNamesTest, AnAliasOnAnotherHostIsRefusedNamingTheSpellingItWasLockedUnder) {
  ASSERT_TRUE(StartHost(&a_, "a").ok());
  ASSERT_TRUE(StartHost(&b_, "b").ok());
  Vm on_a("vm-on-a"), on_b("vm-on-b");
  a_.Register(on_a);
  b_.Register(on_b);
  ASSERT_EQ(link(img_.c_str(), (dir_ + "/hard.img").c_str()), 0);
  ASSERT_TRUE(a_.Acquire(on_a, dir_ + "/hard.img").ok());
  absl::StatusOr<json> r = b_.Acquire(on_b, img_);
  ExpectBusy(r, "host B was granted an alias of what host A holds");
  if (r.ok()) return;
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("vm-on-a"));
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("the same disk as " + dir_ + "/hard.img"));
}

// posixfd with lock_target = "image" puts the locks on the storage: the
// identity name on the anchor, the path name beside it must not make the
// owner conflict with itself, across acquire, crash and re-exec; an older
// host locking by path in image mode still excludes an upgraded one.
TEST_F(DiskNamesTest, ImageLockTargetTakesBothNamesWithoutConflictingWithItself) {
  const std::string image_mode = "posixfd_lock_target = \"image\"\n";
  ASSERT_TRUE(StartHost(&a_, "a", image_mode).ok());
  Vm vm("vm-img"), other("vm-other");
  a_.Register(vm);
  a_.Register(other);
  absl::StatusOr<json> g = a_.Acquire(vm, img_);
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_EQ(link(img_.c_str(), (dir_ + "/hard.img").c_str()), 0);
  absl::StatusOr<aliases::LoopDevice> loop = aliases::LoopDevice::Attach(img_);
  ASSERT_TRUE(loop.ok()) << loop.status();
  for (const std::string& alias : {dir_ + "/hard.img", loop->path()}) {
    ExpectBusy(a_.Acquire(other, alias), alias + " (image mode)");
  }
  for (int sig : {SIGKILL, SIGUSR2}) {
    SCOPED_TRACE(sig == SIGKILL ? "crash and start" : "re-exec");
    if (sig == SIGKILL) {
      a_.d->Kill(SIGKILL);
      ASSERT_TRUE(a_.d->Start().ok()) << a_.d->Log();
      ASSERT_TRUE(a_.Reconnect().ok());
    } else {
      ASSERT_TRUE(a_.Call({{"op", "reexec"}}).ok());
      ASSERT_TRUE(a_.AwaitReady(3)) << "no answer after the re-exec";  // start, restart, re-exec
    }
    EXPECT_THAT(a_.d->Log(), ::testing::Not(HasSubstr("LOCK FAILURE")));
    std::vector<json> held = a_.LocksOf("vm-img");
    ASSERT_EQ(held.size(), 1u) << "the lock must survive, one lock for one disk";
    EXPECT_EQ(held[0]["path_name"], DiskResourceName(img_));
    ExpectBusy(a_.Acquire(other, dir_ + "/hard.img"), "hard link after the restart");
  }
  ASSERT_TRUE(a_.Call({{"op", "release"}, {"uuid", vm.uuid}}).ok());
  EXPECT_TRUE(a_.Acquire(other, loop->path()).ok()) << "released: the disk is free";
  ASSERT_TRUE(a_.Call({{"op", "release"}, {"uuid", other.uuid}}).ok());

  // An older host (path names, image mode) on the same storage.
  ASSERT_TRUE(StartHost(&b_, "b", image_mode + "disk_names = \"path\"\n").ok());
  Vm old_host_vm("vm-old");
  b_.Register(old_host_vm);
  ASSERT_TRUE(b_.Acquire(old_host_vm, img_).ok());
  ExpectBusy(a_.Acquire(vm, img_), "an upgraded host against an older one, image mode");
}

// The hand-off state (inquire, release) names every name a disk took, so a
// migration target checks the path name's grants too.
TEST_F(DiskNamesTest, HandOffStateCarriesBothNames) {
  ASSERT_TRUE(StartHost(&a_, "a").ok());
  Vm vm("vm-h");
  a_.Register(vm);
  ASSERT_TRUE(a_.Acquire(vm, img_).ok());
  std::vector<json> held = a_.LocksOf("vm-h");
  ASSERT_EQ(held.size(), 1u);
  const std::string id_name = held[0]["name"], path_name = DiskResourceName(img_);
  absl::StatusOr<json> in = a_.Call({{"op", "inquire"}, {"uuid", vm.uuid}});
  ASSERT_TRUE(in.ok()) << in.status();
  const std::string state = (*in)["state"];
  EXPECT_THAT(state, HasSubstr(":" + id_name + ":"));
  EXPECT_THAT(state, HasSubstr(":" + path_name + ":"));
  absl::StatusOr<json> rel = a_.Call({{"op", "release"}, {"uuid", vm.uuid}});
  ASSERT_TRUE(rel.ok()) << rel.status();
  EXPECT_EQ((*rel)["released"].size(), 1u);
  EXPECT_THAT((*rel)["state"].get<std::string>(), HasSubstr(":" + path_name + ":"));
  // The state is accepted back: nobody took either name since.
  absl::StatusOr<json> again = a_.Call({{"op", "acquire"},
                                        {"uuid", vm.uuid},
                                        {"state", (*rel)["state"]},
                                        {"resources", {{{"disk", img_}}}}});
  EXPECT_TRUE(again.ok()) << again.status();
}

TEST_F(DiskNamesTest, AWeakIdentityIsAnnounced) {
  ASSERT_TRUE(StartHost(&a_, "a").ok());
  Vm vm("vm");
  a_.Register(vm);
  ASSERT_TRUE(a_.Acquire(vm, dir_ + "/not-created-yet.img").ok());
  std::vector<json> held = a_.LocksOf("vm");
  ASSERT_EQ(held.size(), 1u);
  EXPECT_EQ(held[0]["identity_kind"], "path");
  EXPECT_THAT(held[0]["identity_weak"].get<std::string>(), HasSubstr("does not exist"));
}

TEST_F(DiskNamesTest, AnOldHostLockingByPathIsHonouredByAnUpgradedOne) {
  // Host A runs as an older latchd would (path names only); host B is
  // upgraded (identity + path). Same storage, same lock directory.
  ASSERT_TRUE(StartHost(&a_, "a", "disk_names = \"path\"\n").ok());
  ASSERT_TRUE(StartHost(&b_, "b").ok());
  Vm on_a("vm-on-a"), on_b("vm-on-b");
  a_.Register(on_a);
  b_.Register(on_b);
  ASSERT_TRUE(a_.Acquire(on_a, img_).ok());
  ExpectBusy(b_.Acquire(on_b, img_), "B must see A's path-named lock");
  ASSERT_TRUE(a_.Call({{"op", "release"}, {"uuid", on_a.uuid}}).ok());
  // And the other way round: what B holds, A (by path) cannot take.
  ASSERT_TRUE(b_.Acquire(on_b, img_).ok());
  ExpectBusy(a_.Acquire(on_a, img_), "A must see B's path name");
  // Once every host runs with identities only, aliases are caught between
  // hosts too.
  ASSERT_TRUE(b_.Call({{"op", "release"}, {"uuid", on_b.uuid}}).ok());
  a_.d->Kill(SIGTERM);
  ASSERT_TRUE(StartHost(&a_, "a", "disk_names = \"identity\"\n").ok());
  Vm again("vm-again");
  a_.Register(again);
  ASSERT_TRUE(link(img_.c_str(), (dir_ + "/hard.img").c_str()) == 0);
  ASSERT_TRUE(a_.Acquire(again, dir_ + "/hard.img").ok());
  ExpectBusy(b_.Acquire(on_b, img_), "an alias on another host must conflict");
}

// Before: locks by path only (an older latchd, or disk_names = "path").
// Then latchd restarts with identities, after a crash or by a planned
// re-exec: the held locks take their identity names before any request is
// served, so no alias can be granted at any moment after it.
class UpgradeTest : public DiskNamesTest, public ::testing::WithParamInterface<bool> {};

TEST_P(UpgradeTest, LocksTakenByPathGainTheirIdentity) {
  const bool reexec = GetParam();
  ASSERT_TRUE(StartHost(&a_, "a", "disk_names = \"path\"\n").ok());
  Vm holder("vm-holder"), other("vm-other");
  a_.Register(holder);
  a_.Register(other);
  ASSERT_TRUE(a_.Acquire(holder, img_).ok());
  ASSERT_EQ(link(img_.c_str(), (dir_ + "/hard.img").c_str()), 0);
  EXPECT_TRUE(a_.Acquire(other, dir_ + "/hard.img").ok())
      << "by path only, a hard link is another disk: the weakness being fixed";
  ASSERT_TRUE(a_.Call({{"op", "release"}, {"uuid", other.uuid}}).ok());
  std::vector<json> before = a_.LocksOf("vm-holder");
  ASSERT_EQ(before.size(), 1u);
  EXPECT_EQ(before[0]["naming"], "path");

  if (reexec) {
    // A re-exec reads the config again: point it at identities.
    std::ifstream in(a_.d->config());
    std::stringstream text;
    text << in.rdbuf();
    std::string conf = text.str();
    const std::string from = "disk_names = \"path\"";
    ASSERT_NE(conf.find(from), std::string::npos);
    conf.replace(conf.find(from), from.size(), "disk_names = \"identity+path\"");
    std::ofstream(a_.d->config(), std::ios::trunc) << conf;
    ASSERT_TRUE(a_.Call({{"op", "reexec"}}).ok());
  } else {
    a_.d->Kill(SIGKILL);
    a_.d = std::make_unique<LatchdProcess>(dir_ + "/a", "", locks_);
    ASSERT_TRUE(a_.d->Start().ok());
  }
  // The first answer after the restart already sees the upgraded lock.
  ASSERT_TRUE(a_.AwaitReady(reexec ? 2 : 1)) << "latchd did not answer after the restart";
  absl::StatusOr<json> r = a_.Acquire(other, dir_ + "/hard.img");
  ASSERT_FALSE(r.ok()) << "after the upgrade the hard link must conflict";
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("vm-holder"));
  EXPECT_THAT(a_.d->Log(), HasSubstr("took the identity name of " + img_));
  std::vector<json> held = a_.LocksOf("vm-holder");
  ASSERT_EQ(held.size(), 1u) << "one disk, one lock";
  EXPECT_EQ(held[0]["naming"], "identity");
  EXPECT_EQ(held[0]["path_name"], DiskResourceName(img_));
  // The journal has both rows: a crash now adopts both names.
  std::string boot;
  absl::StatusOr<JournalContents> j = Journal::ReadOnly(a_.d->journal(), &boot);
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ(j->locks.size(), 2u);
}

INSTANTIATE_TEST_SUITE_P(CrashOrReexec, UpgradeTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return i.param ? "Reexec" : "CrashAndStart";
                         });

TEST_F(DiskNamesTest, BadDiskNamesSettingIsRefusedByName) {
  const std::string dir = dir_ + "/bad";
  mkdir(dir.c_str(), 0700);
  LatchdProcess d(dir, "disk_names = \"uuid\"\n", locks_);
  absl::Status s = d.Start({}, absl::Seconds(5));
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(d.Log() + std::string(s.message()), HasSubstr("disk_names must be"));
}

}  // namespace
}  // namespace latchkey
