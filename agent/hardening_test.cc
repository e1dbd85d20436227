// latchd against hostile and broken input, one test per defect found when
// it was tried as an attacker with an allowed uid would: each failed before
// its fix. Real daemon, real owner processes, real sockets.
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/client.h"
#include "agent/testing/latchd_process.h"
#include "core/journal.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sqlite3.h"

namespace latchkey {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using json = nlohmann::json;
using testing::KillAndReap;
using testing::LatchdProcess;
using testing::ProcessState;
using testing::TempDir;
using testing::Vm;

constexpr uid_t kNobody = 65534;

// A raw connection: bytes in, lines out, no client library in between.
class Raw {
 public:
  explicit Raw(const std::string& socket) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, socket.c_str(), sizeof(addr.sun_path) - 1);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      close(fd_);
      fd_ = -1;
    }
  }
  ~Raw() { Close(); }
  Raw(const Raw&) = delete;
  Raw& operator=(const Raw&) = delete;
  bool ok() const { return fd_ >= 0; }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  bool Send(const std::string& bytes) {
    return send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
  }
  // One response line; "" when the connection closed or `timeout` passed.
  std::string Line(absl::Duration timeout = absl::Seconds(10)) {
    const absl::Time deadline = absl::Now() + timeout;
    for (;;) {
      const size_t nl = buf_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      pollfd p = {fd_, POLLIN, 0};
      const int ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
      if (ms <= 0 || poll(&p, 1, ms) <= 0) return "";
      char chunk[65536];
      const ssize_t n = recv(fd_, chunk, sizeof chunk, 0);
      if (n <= 0) return "";
      buf_.append(chunk, static_cast<size_t>(n));
    }
  }
  // True when latchd closed the connection within `timeout`.
  bool ClosedWithin(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      pollfd p = {fd_, POLLIN, 0};
      if (poll(&p, 1, 20) > 0) {
        char c[4096];
        if (recv(fd_, c, sizeof c, 0) <= 0) return true;
      }
    }
    return false;
  }

 private:
  int fd_ = -1;
  std::string buf_;
};

// Everything a pipe's other end writes until it closes it.
std::string ReadAllAndClose(int fd) {
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  close(fd);
  return out;
}

// Runs `lines` (one request each) on one connection as `uid`, from a forked
// child; the response lines, joined by '\n'.
std::string CallAs(uid_t uid, const std::string& socket, const std::vector<std::string>& lines) {
  int p[2];
  if (pipe(p) != 0) return "pipe failed";
  const pid_t child = fork();
  if (child == 0) {
    close(p[0]);
    if (setgid(uid) != 0 || setuid(uid) != 0) _exit(3);
    Raw r(socket);
    std::string out;
    for (const std::string& l : lines) {
      if (!r.Send(l + "\n")) break;
      out += r.Line() + "\n";
    }
    (void)!write(p[1], out.data(), out.size());
    _exit(0);
  }
  close(p[1]);
  std::string out = ReadAllAndClose(p[0]);
  int st;
  waitpid(child, &st, 0);
  return out;
}

// A sleeping child running as `uid`: an owner's "VM" of that user.
pid_t SleeperAs(uid_t uid) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (setgid(uid) != 0 || setuid(uid) != 0) _exit(3);
    for (;;) pause();
  }
  absl::SleepFor(absl::Milliseconds(20));  // let it drop its privileges
  return pid;
}


std::string Req(json j) {
  j["v"] = 1;
  return j.dump();
}

class HardeningTest : public ::testing::Test {
 protected:
  void SetUp() override { StartLatchd(""); }
  void TearDown() override {
    if (HasFailure() && d_ != nullptr) fprintf(stderr, "latchd log:\n%s\n", d_->Log().c_str());
  }

  void StartLatchd(const std::string& extra, const std::vector<std::string>& env = {}) {
    dir_ = TempDir("hardening");
    d_ = std::make_unique<LatchdProcess>(dir_, extra);
    ASSERT_TRUE(d_->Start(env).ok()) << d_->Log();
    Reconnect();
  }
  // latchd that uid 65534 may use too (its socket open to all).
  void StartLatchdForNobody(const std::string& extra) {
    StartLatchd(absl::StrCat("allowed_uids = [ 0, ", kNobody, " ]\n", extra));
    chmod(d_->socket_dir().c_str(), 0755);
    chmod(d_->socket().c_str(), 0666);
  }
  void Reconnect() {
    absl::StatusOr<LatchdClient> c = d_->Connect();
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = std::make_unique<LatchdClient>(std::move(*c));
  }
  absl::StatusOr<json> Call(json req) { return client_->Call(req); }
  void Register(const Vm& vm, const std::string& policy = "terminate") {
    absl::StatusOr<json> r =
        Call({{"op", "register"}, {"owner", vm.Owner()}, {"policy", policy}});
    ASSERT_TRUE(r.ok()) << r.status();
  }
  absl::StatusOr<json> Acquire(const Vm& vm, const std::string& disk, json extra = json::object()) {
    json req = {{"op", "acquire"}, {"uuid", vm.uuid}, {"resources", {{{"disk", disk}}}}};
    req.update(extra);
    return Call(req);
  }
  std::string Disk(const std::string& n) const { return dir_ + "/" + n + ".img"; }
  // Names of the locks `owner` holds, from status.
  std::vector<std::string> LocksOf(const std::string& owner) {
    std::vector<std::string> out;
    absl::StatusOr<json> st = Call({{"op", "status"}});
    EXPECT_TRUE(st.ok()) << st.status();
    if (!st.ok()) return out;
    for (const json& o : (*st)["owners"]) {
      if (o["owner"]["name"] != owner) continue;
      for (const json& l : o["locks"]) out.push_back(l["path"].get<std::string>());
    }
    return out;
  }
  void ExpectAlive() {
    ASSERT_TRUE(d_->running());
    int st;
    ASSERT_EQ(waitpid(d_->pid(), &st, WNOHANG), 0) << "latchd died; log:\n" << d_->Log();
    Reconnect();
    EXPECT_TRUE(Call({{"op", "status"}}).ok());
  }

  std::string dir_;
  std::unique_ptr<LatchdProcess> d_;
  std::unique_ptr<LatchdClient> client_;
};

// Defect 1: a 30 KB hello whose id nests 15,000 arrays deep overflowed a
// connection thread's stack. Nesting anywhere is refused before parsing.
TEST_F(HardeningTest, DeeplyNestedJsonIsRefusedAndLatchdLives) {
  Vm a("vm-a");
  Register(a);
  ASSERT_TRUE(Acquire(a, Disk("a")).ok());
  Raw raw(d_->socket());
  ASSERT_TRUE(raw.ok());
  const std::string deep = std::string(15000, '[') + std::string(15000, ']');
  for (const std::string& line :
       {absl::StrCat(R"({"v":1,"op":"hello","id":)", deep, "}"),
        absl::StrCat(R"({"v":1,"op":"acquire","uuid":")", a.uuid,
                     R"(","resources":[{"disk":"x","mode":)", deep, "}]}"),
        absl::StrCat(R"({"v":1,"op":"status","x":)", std::string(30000, '{'))}) {
    ASSERT_TRUE(raw.Send(line + "\n"));
    const std::string resp = raw.Line();
    EXPECT_THAT(resp, HasSubstr("invalid_argument"));
    EXPECT_THAT(resp, HasSubstr("more than 16 deep"));
  }
  ExpectAlive();
  EXPECT_EQ(LocksOf("vm-a").size(), 1u);
}

// Defect 2: a disk whose canonical path is not UTF-8 (reached through an
// ASCII symlink) aborted latchd while printing the answer, and the lock,
// journaled first, made every later status abort it again.
TEST_F(HardeningTest, NonUtf8DiskPathIsRefusedAndNothingStoredBreaksAnAnswer) {
  Vm a("vm-a");
  Register(a);
  const std::string bad = dir_ + "/bad\xff\xfe.img";
  close(open(bad.c_str(), O_CREAT | O_WRONLY, 0600));
  ASSERT_EQ(symlink(bad.c_str(), Disk("ascii").c_str()), 0);
  absl::StatusOr<json> r = Acquire(a, Disk("ascii"));
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("not valid UTF-8"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("bad\\xff\\xfe.img"));
  ExpectAlive();
  EXPECT_TRUE(LocksOf("vm-a").empty());

  // A journal an older latchd wrote with such a row (and an owner name
  // that is not UTF-8 either): latchd starts and every answer prints.
  d_->Kill(SIGKILL);
  {
    JournalOpenReport rep;
    absl::StatusOr<std::unique_ptr<Journal>> j = Journal::Open(d_->journal(), CurrentBootId(), &rep);
    ASSERT_TRUE(j.ok()) << j.status();
    Owner o;
    o.uuid = a.uuid;
    o.name = "vm-a";
    o.pid = a.pid;
    o.start_time = ProcessStartTime(a.pid).value_or(0);
    o.host = LocalHostName();
    JournalChange c;
    c.put_owners.push_back(JournalOwner{o, "ignore/5000"});
    LockRecord rec;
    rec.owner = o;
    rec.resource.kind = ResourceKind::kDisk;
    rec.resource.lockspace = "default";
    rec.resource.name = "0123456789abcdef";
    rec.resource.path = Disk("placeholder");
    rec.fencing_token = 3;
    c.put_locks.push_back(JournalLock{"posixfd", rec, JournalLockState::kHeld});
    ASSERT_TRUE((*j)->Apply(c).ok());
  }
  // Today's journal refuses such a path; an older latchd wrote it.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(d_->journal().c_str(), &db), SQLITE_OK);
  const std::string sql =
      absl::StrCat("UPDATE locks SET path = CAST(X'", absl::BytesToHexString(bad),
                   "' AS TEXT);");
  ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK)
      << sqlite3_errmsg(db);
  sqlite3_close(db);
  ASSERT_TRUE(d_->Start().ok()) << d_->Log();
  ExpectAlive();
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(Call({{"op", "status"}}).ok());
  EXPECT_TRUE(Call({{"op", "inquire"}, {"uuid", a.uuid}}).ok());
}

// Defect 3: with the state directory full, release answered ok and freed
// the lock but left its row; later another owner took the disk and the
// next restart declared a LOCK FAILURE and SIGTERMed the first owner,
// which had done nothing wrong. Now the release fails with nothing
// changed, and succeeds once there is room.
class FullDiskTest : public HardeningTest {
 protected:
  void SetUp() override {
    // A private mount namespace for the whole test process, so the small
    // tmpfs under the state directory is seen by latchd and nobody else.
    if (geteuid() != 0 || unshare(CLONE_NEWNS) != 0 ||
        mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
      GTEST_SKIP() << "needs root to mount a small tmpfs in a private namespace";
    }
    dir_ = TempDir("fulldisk");
    d_ = std::make_unique<LatchdProcess>(dir_);
    ASSERT_EQ(mkdir(d_->state_dir().c_str(), 0700), 0);
    ASSERT_EQ(mount("tmpfs", d_->state_dir().c_str(), "tmpfs", 0, "size=2m,mode=0700"), 0)
        << strerror(errno);
    mounted_ = true;
    ASSERT_TRUE(d_->Start().ok()) << d_->Log();
    Reconnect();
  }
  void TearDown() override {
    HardeningTest::TearDown();
    if (d_ != nullptr) d_->Kill(SIGKILL);
    if (mounted_) umount2(d_->state_dir().c_str(), MNT_DETACH);
  }
  // Fills the state directory's file system.
  void Fill() {
    const int fd = open((d_->state_dir() + "/filler").c_str(), O_CREAT | O_WRONLY, 0600);
    ASSERT_GE(fd, 0);
    const std::string block(65536, 'x');
    while (write(fd, block.data(), block.size()) > 0) {
    }
    const std::string small(512, 'x');
    while (write(fd, small.data(), small.size()) > 0) {
    }
    close(fd);
  }
  void Unfill() { ASSERT_EQ(unlink((d_->state_dir() + "/filler").c_str()), 0); }
  bool mounted_ = false;
};

TEST_F(FullDiskTest, ReleaseThatCannotBeJournaledFailsAndChangesNothing) {
  Vm a("vm-a"), b("vm-b");
  Register(a, "terminate");
  Register(b, "terminate");
  ASSERT_TRUE(Acquire(a, Disk("d")).ok());
  Fill();
  // Several attempts: each must fail whole, whatever SQLite managed.
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<json> r = Call({{"op", "release"}, {"uuid", a.uuid}});
    ASSERT_FALSE(r.ok()) << "release succeeded on a full disk: " << r->dump();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("nothing was released"));
  }
  absl::StatusOr<json> u = Call({{"op", "unregister"}, {"uuid", a.uuid}});
  ASSERT_FALSE(u.ok());
  EXPECT_EQ(LocksOf("vm-a").size(), 1u);
  // The lock is still really held: b cannot take the disk.
  EXPECT_EQ(Acquire(b, Disk("d")).status().code(), absl::StatusCode::kUnavailable);

  Unfill();
  ASSERT_TRUE(Call({{"op", "release"}, {"uuid", a.uuid}}).ok());
  ASSERT_TRUE(Acquire(b, Disk("d")).ok());
  // The restart that used to kill vm-a: nothing of a's is left to adopt.
  ASSERT_TRUE(Call({{"op", "reexec"}}).ok());
  absl::SleepFor(absl::Milliseconds(200));
  Reconnect();
  EXPECT_THAT(d_->Log(), Not(HasSubstr("LOCK FAILURE")));
  EXPECT_NE(ProcessState(a.pid), 'Z');
  EXPECT_EQ(kill(a.pid, 0), 0);
  EXPECT_EQ(LocksOf("vm-b").size(), 1u);
}

// A dead owner's locks go even when the journal cannot say so; the rows
// left behind are written off as soon as the disk has room, before any
// other change, so they can never be adopted for a new owner of that uuid.
TEST_F(FullDiskTest, OwnerDeathOnAFullDiskFreesTheLockAndTheRowIsOwed) {
  auto a = std::make_unique<Vm>("vm-a");
  const std::string uuid = a->uuid;
  Register(*a, "ignore");
  ASSERT_TRUE(Acquire(*a, Disk("d")).ok());
  Fill();
  a.reset();  // SIGKILL
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_THAT(d_->Log(), HasSubstr("journal write failed"));
  Vm b("vm-b");
  // Registering needs the journal: refused while full, nothing half-done.
  EXPECT_FALSE(Call({{"op", "register"}, {"owner", b.Owner()}}).ok());
  Unfill();
  Register(b);
  ASSERT_TRUE(Acquire(b, Disk("d")).ok());
  EXPECT_THAT(d_->Log(), HasSubstr("owed since an earlier failure"));
  std::string boot;
  absl::StatusOr<JournalContents> j = Journal::ReadOnly(d_->journal(), &boot);
  ASSERT_TRUE(j.ok()) << j.status();
  for (const JournalOwner& o : j->owners) EXPECT_NE(o.owner.uuid, uuid);
  for (const JournalLock& l : j->locks) EXPECT_NE(l.record.owner.uuid, uuid);
}

// Defect 4: deleting STATE_DIR/latchd.lock, or setting LATCHD_LOCK_FD by
// hand, let a second latchd run recovery on the live journal and SIGTERM
// every VM. The lock is on the directory itself now, and an inherited
// descriptor is believed only when it is that directory, locked by us.
TEST_F(HardeningTest, SecondLatchdCannotBypassTheInstanceGuard) {
  Vm a("vm-a");
  Register(a, "terminate");
  ASSERT_TRUE(Acquire(a, Disk("a")).ok());
  unlink((d_->state_dir() + "/latchd.lock").c_str());  // what a tmpfiles rule does
  // A descriptor of the state directory opened by the intruder, and a
  // descriptor of something else, both passed as if inherited.
  const int dirfd = open(d_->state_dir().c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(dirfd, 0);
  const std::vector<std::vector<std::string>> envs = {
      {}, {absl::StrCat("LATCHD_LOCK_FD=", dirfd)}, {"LATCHD_LOCK_FD=0"}, {"LATCHD_LOCK_FD=2"}};
  std::string config;
  {
    std::ifstream in(d_->config());
    std::getline(in, config, '\0');
  }
  for (const auto& env : envs) {
    const size_t before = d_->Log().size();
    LatchdProcess second(dir_);  // same state directory (and log file)
    absl::Status s = second.Start(env, absl::Seconds(5));
    ASSERT_FALSE(s.ok()) << (env.empty() ? "" : env[0]);
    const std::string log = second.Log().substr(before);
    EXPECT_THAT(log, ::testing::AnyOf(HasSubstr("another latchd is running"),
                                      HasSubstr("does not name a lock")));
    EXPECT_THAT(log, Not(HasSubstr("LOCK FAILURE")));
    EXPECT_THAT(log, Not(HasSubstr("adopted")));
  }
  close(dirfd);
  std::ofstream(d_->config()) << config;  // the first latchd's socket path
  EXPECT_EQ(ProcessState(a.pid), 'S');
  ExpectAlive();
  EXPECT_EQ(LocksOf("vm-a").size(), 1u);
  // The first latchd's own restart still adopts everything.
  ASSERT_TRUE(Call({{"op", "reexec"}}).ok());
  absl::SleepFor(absl::Milliseconds(200));
  Reconnect();
  EXPECT_EQ(LocksOf("vm-a").size(), 1u);
}

// Defect 6: a waiting acquire went on after its client disconnected: the
// lock was later granted to an owner whose client had given up, and a wait
// without timeout blocked every reexec.
TEST_F(HardeningTest, DisconnectCancelsTheWaitAndReexecIsNotBlocked) {
  Vm a("vm-a"), b("vm-b"), c("vm-c");
  Register(a);
  Register(b);
  Register(c);
  ASSERT_TRUE(Acquire(a, Disk("d")).ok());
  {
    Raw waiter(d_->socket());
    ASSERT_TRUE(waiter.Send(Req({{"op", "acquire"}, {"uuid", b.uuid}, {"wait", true},
                                 {"resources", {{{"disk", Disk("d")}}}}}) +
                            "\n"));
    absl::SleepFor(absl::Milliseconds(200));
    EXPECT_EQ(waiter.Line(absl::Milliseconds(10)), "");  // still waiting
  }  // the client goes away
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_TRUE(Call({{"op", "release"}, {"uuid", a.uuid}}).ok());
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_TRUE(LocksOf("vm-b").empty()) << "granted to an owner whose client left";
  ASSERT_TRUE(Acquire(c, Disk("d")).ok());
  // No request is left in flight to block a planned restart.
  const absl::Time t0 = absl::Now();
  ASSERT_TRUE(Call({{"op", "reexec"}}).ok());
  EXPECT_LT(absl::Now() - t0, absl::Seconds(3));
}

// A reexec whose client leaves before reading the answer still happens:
// latchd had already closed its gate and its journal for it, and used to
// stay that way, answering nothing, when the answer could not be written.
TEST_F(HardeningTest, ReexecWhoseClientLeftStillRestartsAndServes) {
  Vm a("vm-a");
  Register(a);
  ASSERT_TRUE(Acquire(a, Disk("a")).ok());
  {
    Raw r(d_->socket());
    ASSERT_TRUE(r.Send(Req({{"op", "reexec"}}) + "\n"));
  }  // closed before the answer
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (d_->Log().find("starting after a planned re-exec") == std::string::npos &&
         absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_THAT(d_->Log(), HasSubstr("starting after a planned re-exec"));
  absl::StatusOr<LatchdClient> c = d_->Connect(absl::Seconds(5));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->Call({{"op", "status"}}, absl::Seconds(5)).ok());
  Reconnect();
  EXPECT_EQ(LocksOf("vm-a").size(), 1u);
}

// A VM restarted under the same uuid registers while latchd is still
// releasing its previous process: the new registration must stay watched
// and journaled (the old process's exit used to unwatch it and remove its
// rows).
TEST_F(HardeningTest, RestartedVmReusingItsUuidStaysWatchedAndJournaled) {
  const std::string uuid = RandomUuid();
  pid_t pid = testing::SpawnSleeper();
  auto reg = [&](pid_t p) {
    return Call({{"op", "register"}, {"owner", {{"uuid", uuid}, {"name", "vm"}, {"pid", p}}}});
  };
  ASSERT_TRUE(reg(pid).ok());
  for (int round = 0; round < 30; ++round) {
    ASSERT_TRUE(Call({{"op", "acquire"}, {"uuid", uuid}, {"wait", true}, {"timeout_ms", 5000},
                      {"resources", {{{"disk", Disk("d")}}}}})
                    .ok())
        << "round " << round;
    const pid_t next = testing::SpawnSleeper();
    KillAndReap(pid);
    pid = next;
    // Registering may briefly find the old process's locks being released.
    absl::StatusOr<json> r = reg(pid);
    for (int i = 0; i < 100 && !r.ok(); ++i) {
      absl::SleepFor(absl::Milliseconds(10));
      r = reg(pid);
    }
    ASSERT_TRUE(r.ok()) << r.status();
  }
  ASSERT_TRUE(Call({{"op", "acquire"}, {"uuid", uuid}, {"wait", true}, {"timeout_ms", 5000},
                    {"resources", {{{"disk", Disk("d")}}}}})
                  .ok());
  absl::SleepFor(absl::Milliseconds(200));
  std::string boot;
  absl::StatusOr<JournalContents> j = Journal::ReadOnly(d_->journal(), &boot);
  ASSERT_TRUE(j.ok()) << j.status();
  ASSERT_EQ(j->owners.size(), 1u);
  EXPECT_EQ(j->owners[0].owner.pid, pid);
  // One disk, journaled under both its names (disk_names = "identity+path").
  EXPECT_EQ(j->locks.size(), 2u);
  // Still watched: its death frees the disk.
  KillAndReap(pid);
  const absl::Time deadline = absl::Now() + absl::Seconds(3);
  while (!LocksOf("vm").empty() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_TRUE(LocksOf("vm").empty()) << "the last process was not watched";
}

// Owners journaled by a latchd older than the uid binding ("terminate/5000",
// no uid) count as registered by root: an unprivileged peer may not act on
// them after the upgrade.
TEST_F(HardeningTest, OwnersFromAnOlderJournalBelongToRoot) {
  StartLatchd(absl::StrCat("allowed_uids = [ 0, ", kNobody, " ]\n"));
  Vm a("vm-a");
  Register(a);
  ASSERT_TRUE(Acquire(a, Disk("a")).ok());
  d_->Kill(SIGKILL);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(d_->journal().c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "UPDATE owners SET policy = 'terminate/5000';", nullptr, nullptr,
                         nullptr),
            SQLITE_OK)
      << sqlite3_errmsg(db);
  sqlite3_close(db);
  ASSERT_TRUE(d_->Start().ok()) << d_->Log();
  Reconnect();
  chmod(d_->socket_dir().c_str(), 0755);
  chmod(d_->socket().c_str(), 0666);
  EXPECT_THAT(CallAs(kNobody, d_->socket(), {Req({{"op", "release"}, {"uuid", a.uuid}})}),
              HasSubstr("registered by uid 0"));
  EXPECT_EQ(LocksOf("vm-a").size(), 1u);
  EXPECT_TRUE(Call({{"op", "release"}, {"uuid", a.uuid}}).ok());  // root may
}

// Defect 7: 1,024 idle connections locked every client out, latchctl
// status included. Idle and half-written connections time out, one uid
// cannot take the server, and an administrator always gets status.
TEST_F(HardeningTest, IdleAndSlowConnectionsCannotLockOthersOut) {
  StartLatchdForNobody("max_clients = 24\nmax_clients_per_uid = 8\n"
                       "idle_timeout_ms = 60000\nrequest_timeout_ms = 700\n");
  // Root fills every slot with idle connections: a new root client still
  // gets in (the idlest is closed for it).
  std::vector<std::unique_ptr<Raw>> idle;
  for (int i = 0; i < 40; ++i) idle.push_back(std::make_unique<Raw>(d_->socket()));
  Reconnect();
  EXPECT_TRUE(Call({{"op", "status"}}).ok());
  // uid 65534 is held to its own limit and evicts only its own idle ones.
  const std::string nobody =
      CallAs(kNobody, d_->socket(), {Req({{"op", "hello"}}), Req({{"op", "status"}})});
  EXPECT_THAT(nobody, HasSubstr("\"ok\":true"));
  // A half-written request is closed after request_timeout_ms, with an
  // error saying so, even when bytes keep trickling in.
  Raw slow(d_->socket());
  ASSERT_TRUE(slow.ok());
  const absl::Time t0 = absl::Now();
  std::string got;
  for (int i = 0; i < 40 && got.empty(); ++i) {
    slow.Send("{");
    got = slow.Line(absl::Milliseconds(50));
  }
  EXPECT_THAT(got, HasSubstr("incomplete after"));
  EXPECT_LT(absl::Now() - t0, absl::Seconds(2));
  EXPECT_TRUE(slow.ClosedWithin(absl::Seconds(1)));
  idle.clear();
}

// Found by the abuse test in CI: at max_clients, a flood of connections
// from an unprivileged uid closed root's idle connections for room, so
// `latchctl status` could be cut before latchd read its request; and a
// blank line was answered as bad JSON instead of skipped.
TEST_F(HardeningTest, UnprivilegedFloodNeverClosesAnAdministratorsConnection) {
  StartLatchdForNobody("max_clients = 6\nmax_clients_per_uid = 16\nidle_timeout_ms = 60000\n");
  Raw admin(d_->socket());  // with client_, the oldest idle connections
  ASSERT_TRUE(admin.ok());
  ASSERT_TRUE(Call({{"op", "status"}}).ok());  // latchd has admitted both
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  const pid_t flood = fork();
  if (flood == 0) {
    close(p[0]);
    if (setgid(kNobody) != 0 || setuid(kNobody) != 0) _exit(3);
    std::vector<std::unique_ptr<Raw>> held;
    for (int i = 0; i < 20; ++i) held.push_back(std::make_unique<Raw>(d_->socket()));
    // One round trip on the newest, so latchd has admitted all of them.
    held.back()->Send(Req({{"op", "hello"}}) + "\n");
    const std::string answer = held.back()->Line();
    (void)!write(p[1], answer.data(), answer.size());
    close(p[1]);
    for (;;) pause();
  }
  close(p[1]);
  const std::string flood_answer = ReadAllAndClose(p[0]);
  // The flood got in by closing its own idle connections...
  EXPECT_THAT(flood_answer, HasSubstr("\"ok\":true"));
  // ...and root's two are still served; blank lines are skipped.
  ASSERT_TRUE(admin.Send("\n \r\n\t\n" + Req({{"op", "status"}}) + "\n"));
  const std::string status = admin.Line();
  EXPECT_THAT(status, HasSubstr("\"ok\":true"));
  EXPECT_THAT(status, HasSubstr("\"owners\""));
  EXPECT_TRUE(Call({{"op", "status"}}).ok());
  KillAndReap(flood);
}

TEST_F(HardeningTest, IdleConnectionsAreClosed) {
  StartLatchd("idle_timeout_ms = 300\n");
  Raw quiet(d_->socket());
  ASSERT_TRUE(quiet.ok());
  EXPECT_TRUE(quiet.ClosedWithin(absl::Seconds(3)));
  // The test's own connection idled as long: it is closed too (seen under
  // load); a fresh one.
  Reconnect();
  // A waiting acquire is not idle.
  Vm a("vm-a"), b("vm-b");
  Register(a);
  Register(b);
  ASSERT_TRUE(Acquire(a, Disk("w")).ok());
  Raw waiter(d_->socket());
  ASSERT_TRUE(waiter.Send(Req({{"op", "acquire"}, {"uuid", b.uuid}, {"wait", true},
                               {"timeout_ms", 1500}, {"resources", {{{"disk", Disk("w")}}}}}) +
                          "\n"));
  const std::string r = waiter.Line(absl::Seconds(5));
  EXPECT_THAT(r, HasSubstr("deadline_exceeded"));
}

// Defect 8: small ones.
TEST_F(HardeningTest, ZombiesThreadsNulBytesAndOutOfRangeIntegersAreRefused) {
  // A zombie: exited, not reaped.
  const pid_t zombie = fork();
  if (zombie == 0) _exit(0);
  absl::SleepFor(absl::Milliseconds(100));
  ASSERT_EQ(ProcessState(zombie), 'Z');
  absl::StatusOr<json> z = Call({{"op", "register"},
                                 {"owner", {{"uuid", RandomUuid()}, {"name", "z"}, {"pid", zombie}}}});
  EXPECT_EQ(z.status().code(), absl::StatusCode::kNotFound) << z.status();
  EXPECT_THAT(std::string(z.status().message()), HasSubstr("zombie"));
  KillAndReap(zombie);

  // A thread id is not a process.
  std::atomic<pid_t> tid{0};
  std::atomic<bool> stop{false};
  std::thread t([&] {
    tid = static_cast<pid_t>(syscall(SYS_gettid));
    while (!stop) absl::SleepFor(absl::Milliseconds(5));
  });
  while (tid == 0) absl::SleepFor(absl::Milliseconds(1));
  absl::StatusOr<json> th = Call({{"op", "register"},
                                  {"owner", {{"uuid", RandomUuid()}, {"name", "t"}, {"pid", tid.load()}}}});
  stop = true;
  t.join();
  EXPECT_EQ(th.status().code(), absl::StatusCode::kInvalidArgument) << th.status();
  EXPECT_THAT(std::string(th.status().message()), HasSubstr("is a thread of process"));

  // A raw NUL does not end the request early.
  Raw raw(d_->socket());
  ASSERT_TRUE(raw.Send(std::string("{\"v\":1,\"op\":\"status\"}\0{\"junk\n", 29)));
  EXPECT_THAT(raw.Line(), HasSubstr("NUL byte"));

  // Integers out of range are refused, never clamped.
  Vm a("vm-a");
  const uint64_t huge = UINT64_MAX;
  for (const json& bad :
       {json{{"op", "register"}, {"owner", a.Owner()}, {"grace_ms", huge}},
        json{{"op", "register"}, {"owner", a.Owner()}, {"grace_ms", -1}},
        json{{"op", "register"}, {"owner", a.Owner()}, {"grace_ms", 3600001}},
        json{{"op", "register"},
             {"owner", {{"uuid", a.uuid}, {"name", "a"}, {"pid", huge}}}},
        json{{"op", "register"},
             {"owner", {{"uuid", a.uuid}, {"name", "a"}, {"pid", int64_t{1} << 32}}}},
        json{{"op", "register"}, {"owner", {{"uuid", a.uuid}, {"name", "a"}, {"pid", 1.5}}}},
        json{{"op", "acquire"}, {"uuid", a.uuid}, {"timeout_ms", huge}, {"wait", true},
             {"resources", {{{"disk", Disk("x")}}}}}}) {
    absl::StatusOr<json> r = Call(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad.dump();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("must be an integer from"))
        << bad.dump();
  }
  ExpectAlive();
}

// Defect 9: any allowed uid could register any process (init, sshd) with
// policy terminate, and release or unregister other people's VMs. Owners
// are bound to the uid that registered them, across restarts.
TEST_F(HardeningTest, PeersActOnlyOnTheirOwnProcessesAndOwners) {
  StartLatchdForNobody("");
  Vm root_vm("root-vm");
  Register(root_vm);
  ASSERT_TRUE(Acquire(root_vm, Disk("r")).ok());
  const pid_t mine = SleeperAs(kNobody);
  const std::string my_uuid = RandomUuid();
  const std::string s = d_->socket();

  auto reg = [&](pid_t pid, const std::string& uuid) {
    return Req({{"op", "register"},
                {"owner", {{"uuid", uuid}, {"name", "n"}, {"pid", pid}}},
                {"policy", "terminate"}});
  };
  // Registering init, latchd itself, or root's process: refused.
  EXPECT_THAT(CallAs(kNobody, s, {reg(1, RandomUuid())}), HasSubstr("is init"));
  EXPECT_THAT(CallAs(kNobody, s, {reg(d_->pid(), RandomUuid())}), HasSubstr("latchd itself"));
  EXPECT_THAT(CallAs(kNobody, s, {reg(root_vm.pid, RandomUuid())}),
              HasSubstr("may register only its own processes"));
  // Acting on root's VM: refused, nothing changes.
  for (const json& act :
       {json{{"op", "release"}, {"uuid", root_vm.uuid}},
        json{{"op", "unregister"}, {"uuid", root_vm.uuid}},
        json{{"op", "set_policy"}, {"uuid", root_vm.uuid}, {"policy", "ignore"}},
        json{{"op", "acquire"}, {"uuid", root_vm.uuid}, {"resources", {{{"disk", Disk("z")}}}}},
        json{{"op", "register"}, {"owner", root_vm.Owner()}, {"policy", "ignore"}},
        json{{"op", "reexec"}}}) {
    const std::string out = CallAs(kNobody, s, {Req(act)});
    EXPECT_THAT(out, HasSubstr("permission_denied")) << act.dump();
  }
  EXPECT_THAT(CallAs(kNobody, s, {Req({{"op", "inquire"}, {"uuid", root_vm.uuid}})}),
              HasSubstr("\"ok\":true"));
  EXPECT_EQ(LocksOf("root-vm").size(), 1u);
  // Its own process: allowed, and only it (and root) may act on it.
  EXPECT_THAT(CallAs(kNobody, s,
                     {reg(mine, my_uuid),
                      Req({{"op", "acquire"}, {"uuid", my_uuid},
                           {"resources", {{{"lease", "mine"}}}}})}),
              Not(HasSubstr("\"ok\":false")));
  // The binding survives a crash of latchd.
  d_->Kill(SIGKILL);
  ASSERT_TRUE(d_->Start().ok()) << d_->Log();
  Reconnect();
  chmod(d_->socket().c_str(), 0666);
  EXPECT_THAT(CallAs(kNobody, s, {Req({{"op", "release"}, {"uuid", root_vm.uuid}})}),
              HasSubstr("permission_denied"));
  EXPECT_THAT(CallAs(kNobody, s, {Req({{"op", "release"}, {"uuid", my_uuid}})}),
              HasSubstr("\"ok\":true"));
  EXPECT_EQ(LocksOf("root-vm").size(), 1u);
  KillAndReap(mine);
}

}  // namespace
}  // namespace latchkey
