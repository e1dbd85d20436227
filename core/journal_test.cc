#include "core/journal.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace latchkey {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kBoot[] = "11111111-2222-3333-4444-555555555555";

// Set in the environment of a re-executed copy of this binary: it then runs
// FaultChild instead of the tests (see FaultPointsSplitChanges).
constexpr char kChildEnv[] = "LATCHKEY_JOURNAL_TEST_CHILD";

std::string NewTempDir() {
  const char* base = getenv("TEST_TMPDIR");
  std::string tmpl = absl::StrCat(base != nullptr ? base : "/tmp", "/journal.XXXXXX");
  if (mkdtemp(&tmpl[0]) == nullptr) {
    ADD_FAILURE() << "mkdtemp " << tmpl << ": " << strerror(errno);
  }
  return tmpl;
}

std::string Uuid(int i) { return absl::StrFormat("00000000-0000-4000-8000-%012d", i); }

JournalOwner MakeOwner(int i) {
  JournalOwner o;
  o.owner.uuid = Uuid(i);
  o.owner.name = absl::StrCat("vm", i);
  o.owner.pid = 1000 + i;
  o.owner.start_time = 5000 + i;
  o.owner.host = "host1";
  o.policy = "fence";
  return o;
}

JournalLock MakeLock(const JournalOwner& o, const std::string& name,
                     const std::string& backend = "posixfd") {
  JournalLock l;
  l.backend = backend;
  l.record.owner = o.owner;
  l.record.resource.kind = ResourceKind::kLease;
  l.record.resource.lockspace = "ls";
  l.record.resource.name = name;
  l.record.mode = LockMode::kExclusive;
  l.record.fencing_token = 7;
  return l;
}

// Every field, escaped, one line per row: easy to compare and to read.
std::string Dump(const JournalContents& c) {
  std::string out;
  for (const JournalOwner& o : c.owners) {
    absl::StrAppend(&out, "owner ", o.owner.uuid, " ", o.owner.name, " ", o.owner.pid, " ",
                    o.owner.start_time, " ", o.owner.host, " ", absl::CHexEscape(o.policy),
                    "\n");
  }
  for (const JournalLock& l : c.locks) {
    const LockRecord& r = l.record;
    absl::StrAppend(&out, "lock ", l.backend, " ", r.owner.Describe(), " ",
                    r.owner.start_time, " ", static_cast<int>(r.resource.kind), " ",
                    r.resource.lockspace, "/", r.resource.name, " ",
                    absl::CHexEscape(r.resource.path), " ", r.resource.offset, " ",
                    LockModeName(r.mode), " ", r.fencing_token, " ",
                    absl::CHexEscape(r.backend_token), " ", JournalLockStateName(l.state),
                    "\n");
  }
  for (const std::string& p : c.problems) absl::StrAppend(&out, "problem ", p, "\n");
  return out;
}

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void WriteAll(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
}

std::string RandomBytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

std::set<std::string> DirEntries(const std::string& dir) {
  std::set<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return out;
  while (dirent* e = readdir(d)) {
    const std::string n = e->d_name;
    if (n != "." && n != "..") out.insert(n);
  }
  closedir(d);
  return out;
}

// Runs SQL on a journal with the plain SQLite API, as a foreign tool would.
void RawSql(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* err = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  EXPECT_EQ(rc, SQLITE_OK) << (err != nullptr ? err : "") << " in " << sql;
  sqlite3_free(err);
  sqlite3_close(db);
}

std::unique_ptr<Journal> MustOpen(const std::string& path, JournalOpenReport* report = nullptr,
                                  const std::string& boot = kBoot) {
  JournalOpenReport local;
  absl::StatusOr<std::unique_ptr<Journal>> j =
      Journal::Open(path, boot, report != nullptr ? report : &local);
  EXPECT_TRUE(j.ok()) << j.status();
  return j.ok() ? *std::move(j) : nullptr;
}

JournalContents MustLoad(Journal& j) {
  absl::StatusOr<JournalContents> c = j.Load();
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : JournalContents();
}

TEST(JournalTest, CreatesAndRoundTripsEveryField) {
  const std::string dir = NewTempDir();
  const std::string path = dir + "/journal.db";
  JournalOpenReport report;
  std::unique_ptr<Journal> j = MustOpen(path, &report);
  ASSERT_NE(j, nullptr);
  EXPECT_TRUE(report.created);
  EXPECT_EQ(report.moved_aside, "");
  EXPECT_EQ(report.previous_boot_id, "");
  EXPECT_EQ(j->path(), path);

  JournalOwner a = MakeOwner(1);
  a.owner.uuid = "ABCDEF01-2345-4678-89AB-CDEF01234567";  // upper case is kept
  a.owner.name = "vm 'one' \"quoted\" é";
  a.owner.pid = 0x7fffffff;
  a.owner.start_time = UINT64_MAX - 5;
  a.policy = "pause; DROP TABLE owners; --";
  JournalOwner b = MakeOwner(2);
  b.owner.start_time = 0;
  b.policy = "";

  JournalLock disk = MakeLock(a, "0123456789abcdef0123456789abcdef", "dlm");
  disk.record.resource.kind = ResourceKind::kDisk;
  disk.record.resource.path = "/var/lib/images/it's a \"disk\".qcow2";
  disk.record.mode = LockMode::kSharedRead;
  disk.record.fencing_token = 0xfffffffffffffff0ull;  // > 2^63
  disk.record.backend_token = std::string("\0\x01'\"\n;x\xff", 8);
  disk.state = JournalLockState::kAcquiring;
  JournalLock lease = MakeLock(a, "lease-1", "sanlock");
  lease.record.resource.path = "/dev/vg/leases";
  lease.record.resource.offset = (1ull << 63) + 1048576;
  lease.record.mode = LockMode::kSharedWrite;
  lease.record.fencing_token = 1ull << 63;
  lease.state = JournalLockState::kReleasing;
  JournalLock plain = MakeLock(b, "plain");
  plain.record.fencing_token = 0;

  JournalChange c;
  c.put_owners = {a, b};
  c.put_locks = {lease, plain, disk};
  ASSERT_TRUE(j->Apply(c).ok());
  ASSERT_TRUE(j->Apply(JournalChange()).ok());  // empty: a no-op

  // Owners by uuid ("0000..." sorts before "ABCD..."), locks by key
  // (owner uuid, backend, lockspace, name).
  JournalContents want;
  want.owners = {b, a};
  want.locks = {plain, disk, lease};
  const std::string before = Dump(MustLoad(*j));
  EXPECT_EQ(before, Dump(want));
  j.reset();

  j = MustOpen(path, &report);
  ASSERT_NE(j, nullptr);
  EXPECT_FALSE(report.created);
  EXPECT_EQ(report.moved_aside, "");
  EXPECT_EQ(report.previous_boot_id, "");
  EXPECT_EQ(Dump(MustLoad(*j)), before);
  j.reset();

  std::string boot;
  absl::StatusOr<JournalContents> ro = Journal::ReadOnly(path, &boot);
  ASSERT_TRUE(ro.ok()) << ro.status();
  EXPECT_EQ(Dump(*ro), before);
  EXPECT_EQ(boot, kBoot);
}

TEST(JournalTest, PutReplacesByKey) {
  const std::string path = NewTempDir() + "/journal.db";
  std::unique_ptr<Journal> j = MustOpen(path);
  ASSERT_NE(j, nullptr);
  JournalOwner o = MakeOwner(1);
  JournalLock l = MakeLock(o, "r");
  l.state = JournalLockState::kAcquiring;
  JournalChange c;
  c.put_owners = {o};
  c.put_locks = {l};
  ASSERT_TRUE(j->Apply(c).ok());
  o.policy = "kill";
  l.state = JournalLockState::kHeld;
  l.record.fencing_token = 8;
  c.put_owners = {o};
  c.put_locks = {l};
  ASSERT_TRUE(j->Apply(c).ok());
  JournalContents want;
  want.owners = {o};
  want.locks = {l};
  EXPECT_EQ(Dump(MustLoad(*j)), Dump(want));
}

TEST(JournalTest, FileIsMode0600WhateverTheUmask) {
  const std::string path = NewTempDir() + "/journal.db";
  const mode_t old = umask(0);
  std::unique_ptr<Journal> j = MustOpen(path);
  umask(old);
  ASSERT_NE(j, nullptr);
  JournalChange c;
  c.put_owners = {MakeOwner(1)};
  ASSERT_TRUE(j->Apply(c).ok());
  for (const std::string& p : {path, path + "-wal", path + "-shm"}) {
    struct stat st;
    ASSERT_EQ(stat(p.c_str(), &st), 0) << p;
    EXPECT_EQ(st.st_mode & 07777, 0600u) << p;
  }
}

TEST(JournalTest, ApplyIsAllOrNothing) {
  const std::string path = NewTempDir() + "/journal.db";
  std::unique_ptr<Journal> j = MustOpen(path);
  ASSERT_NE(j, nullptr);
  JournalOwner o1 = MakeOwner(1);
  JournalChange first;
  first.put_owners = {o1};
  first.put_locks = {MakeLock(o1, "kept")};
  ASSERT_TRUE(j->Apply(first).ok());
  const std::string before = Dump(MustLoad(*j));

  // Everything before the bad lock is valid and was written inside the
  // transaction; all of it must be undone.
  JournalOwner o2 = MakeOwner(2);
  JournalOwner ghost = MakeOwner(3);
  JournalChange c;
  c.put_owners = {o2};
  c.put_locks = {MakeLock(o2, "a"), MakeLock(o1, "b"), MakeLock(ghost, "c")};
  c.remove_locks = {MakeLock(o1, "kept")};
  c.remove_owners = {o1.owner.uuid};
  absl::Status s = j->Apply(c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(ghost.owner.uuid));
  EXPECT_THAT(std::string(s.message()), HasSubstr("lease ls/c"));
  EXPECT_THAT(std::string(s.message()), HasSubstr(path));
  EXPECT_EQ(Dump(MustLoad(*j)), before);

  // And the journal still works afterwards.
  c.put_locks.pop_back();
  ASSERT_TRUE(j->Apply(c).ok());
  JournalContents want;
  want.owners = {o2};
  want.locks = {MakeLock(o2, "a")};
  EXPECT_EQ(Dump(MustLoad(*j)), Dump(want));
}

TEST(JournalTest, InvalidInputIsRefusedBeforeWriting) {
  const std::string path = NewTempDir() + "/journal.db";
  std::unique_ptr<Journal> j = MustOpen(path);
  ASSERT_NE(j, nullptr);
  JournalOwner good = MakeOwner(1);
  JournalOwner bad = MakeOwner(2);
  bad.owner.uuid = "not-a-uuid";
  JournalChange c;
  c.put_owners = {good, bad};
  EXPECT_EQ(j->Apply(c).code(), absl::StatusCode::kInvalidArgument);

  JournalLock l = MakeLock(good, "bad/name");
  c.put_owners = {good};
  c.put_locks = {l};
  absl::Status s = j->Apply(c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("bad/name"));

  c.put_locks[0] = MakeLock(good, "r");
  c.put_locks[0].record.mode = static_cast<LockMode>(9);
  EXPECT_EQ(j->Apply(c).code(), absl::StatusCode::kInvalidArgument);
  c.put_locks[0] = MakeLock(good, "r");
  c.put_locks[0].state = static_cast<JournalLockState>(0);
  EXPECT_EQ(j->Apply(c).code(), absl::StatusCode::kInvalidArgument);
  c.put_locks[0] = MakeLock(good, "r", "");
  EXPECT_EQ(j->Apply(c).code(), absl::StatusCode::kInvalidArgument);

  JournalContents got = MustLoad(*j);
  EXPECT_TRUE(got.owners.empty());
  EXPECT_TRUE(got.locks.empty());
}

TEST(JournalTest, RemovesByKeyAndOwnerRemovalTakesItsLocks) {
  const std::string path = NewTempDir() + "/journal.db";
  std::unique_ptr<Journal> j = MustOpen(path);
  ASSERT_NE(j, nullptr);
  JournalOwner o1 = MakeOwner(1), o2 = MakeOwner(2);
  JournalChange c;
  c.put_owners = {o1, o2};
  c.put_locks = {MakeLock(o1, "a"), MakeLock(o1, "b"), MakeLock(o1, "a", "dlm"),
                 MakeLock(o2, "a"), MakeLock(o2, "b")};
  ASSERT_TRUE(j->Apply(c).ok());

  // Removal is by key only: the other fields do not have to match.
  JournalLock key = MakeLock(o1, "a");
  key.record.owner.name = "ignored";
  key.record.mode = LockMode::kSharedRead;
  key.record.fencing_token = 999;
  JournalChange r;
  r.remove_locks = {key, MakeLock(o2, "never-held")};
  r.remove_owners = {o2.owner.uuid, Uuid(42)};  // an unknown owner is a no-op
  ASSERT_TRUE(j->Apply(r).ok());

  JournalContents got = MustLoad(*j);
  ASSERT_EQ(got.owners.size(), 1u);
  EXPECT_EQ(got.owners[0].owner.uuid, o1.owner.uuid);
  ASSERT_EQ(got.locks.size(), 2u);
  EXPECT_EQ(got.locks[0].backend, "dlm");
  EXPECT_EQ(got.locks[0].record.resource.name, "a");
  EXPECT_EQ(got.locks[1].backend, "posixfd");
  EXPECT_EQ(got.locks[1].record.resource.name, "b");

  // Order inside a change: a lock put and its owner removed in the same
  // change is gone; an owner put and removed in the same change too.
  JournalChange same;
  same.put_owners = {o2};
  same.put_locks = {MakeLock(o2, "x")};
  same.remove_owners = {o2.owner.uuid};
  ASSERT_TRUE(j->Apply(same).ok());
  got = MustLoad(*j);
  EXPECT_EQ(got.owners.size(), 1u);
  EXPECT_EQ(got.locks.size(), 2u);

  // Re-adding an owner does not resurrect its old locks.
  JournalChange again;
  again.put_owners = {o2};
  ASSERT_TRUE(j->Apply(again).ok());
  EXPECT_EQ(MustLoad(*j).locks.size(), 2u);
}

TEST(JournalTest, AnotherBootDiscardsRows) {
  const std::string path = NewTempDir() + "/journal.db";
  std::unique_ptr<Journal> j = MustOpen(path, nullptr, "boot-a");
  ASSERT_NE(j, nullptr);
  JournalOwner o1 = MakeOwner(1), o2 = MakeOwner(2);
  JournalChange c;
  c.put_owners = {o1, o2};
  c.put_locks = {MakeLock(o1, "a"), MakeLock(o1, "b"), MakeLock(o2, "a")};
  ASSERT_TRUE(j->Apply(c).ok());
  j.reset();

  JournalOpenReport report;
  j = MustOpen(path, &report, "boot-b");
  ASSERT_NE(j, nullptr);
  EXPECT_FALSE(report.created);
  EXPECT_EQ(report.previous_boot_id, "boot-a");
  EXPECT_EQ(report.discarded_owners, 2u);
  EXPECT_EQ(report.discarded_locks, 3u);
  JournalContents got = MustLoad(*j);
  EXPECT_TRUE(got.owners.empty());
  EXPECT_TRUE(got.locks.empty());
  j.reset();

  j = MustOpen(path, &report, "boot-b");
  ASSERT_NE(j, nullptr);
  EXPECT_EQ(report.previous_boot_id, "");
  EXPECT_EQ(report.discarded_owners, 0u);
  std::string boot;
  ASSERT_TRUE(Journal::ReadOnly(path, &boot).ok());
  EXPECT_EQ(boot, "boot-b");
}

// Writes `data` over a fresh journal path, opens it and checks it was moved
// aside intact with a reason containing `reason`, and that the new journal
// works.
void ExpectMovedAside(const std::string& dir, const std::string& path,
                      const std::string& reason) {
  const std::string original = ReadAll(path);
  JournalOpenReport report;
  std::unique_ptr<Journal> j = MustOpen(path, &report);
  ASSERT_NE(j, nullptr);
  EXPECT_TRUE(report.created);
  EXPECT_THAT(report.moved_aside, StartsWith(path + ".corrupt-"));
  EXPECT_THAT(report.moved_aside_reason, HasSubstr(reason));
  EXPECT_EQ(ReadAll(report.moved_aside), original);
  printf("moved aside: %s\n", report.moved_aside_reason.c_str());
  // Stamp: YYYYmmddTHHMMSSZ, maybe with a ".N" suffix.
  const std::string stamp = report.moved_aside.substr(path.size() + 9);
  EXPECT_GE(stamp.size(), 16u) << stamp;
  EXPECT_EQ(stamp[8], 'T') << stamp;
  EXPECT_EQ(stamp[15], 'Z') << stamp;
  for (const std::string& name : DirEntries(dir)) {
    EXPECT_FALSE(absl::StrContains(name, ".new")) << name;
  }

  JournalOwner o = MakeOwner(1);
  JournalChange c;
  c.put_owners = {o};
  c.put_locks = {MakeLock(o, "r")};
  ASSERT_TRUE(j->Apply(c).ok());
  EXPECT_EQ(MustLoad(*j).locks.size(), 1u);
  j.reset();
  j = MustOpen(path, &report);
  ASSERT_NE(j, nullptr);
  EXPECT_EQ(report.moved_aside, "");
  EXPECT_EQ(MustLoad(*j).locks.size(), 1u);
}

// A journal with enough rows to span many pages; closed, so checkpointed
// into the main file.
void WriteBigJournal(const std::string& path) {
  std::unique_ptr<Journal> j = MustOpen(path);
  ASSERT_NE(j, nullptr);
  JournalOwner o = MakeOwner(1);
  for (int batch = 0; batch < 30; ++batch) {
    JournalChange c;
    c.put_owners = {o};
    for (int i = 0; i < 100; ++i) {
      JournalLock l = MakeLock(o, absl::StrCat("resource-", batch, "-", i));
      l.record.resource.path = absl::StrCat("/var/lib/images/image-", batch, "-", i);
      c.put_locks.push_back(l);
    }
    ASSERT_TRUE(j->Apply(c).ok());
  }
  j.reset();
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  ASSERT_GT(st.st_size, 64 * 4096) << "journal too small to damage meaningfully";
  ASSERT_FALSE(DirEntries(path.substr(0, path.rfind('/'))).count("journal.db-wal"));
}

TEST(JournalTest, MovesAsideRandomGarbage) {
  const std::string dir = NewTempDir();
  const std::string path = dir + "/journal.db";
  WriteAll(path, RandomBytes(20000, 1));
  WriteAll(path + "-wal", "stale wal");  // moves along with its database
  ExpectMovedAside(dir, path, "not a database");
  std::string aside;
  for (const std::string& name : DirEntries(dir)) {
    if (absl::EndsWith(name, "-wal") && absl::StrContains(name, ".corrupt-")) aside = name;
  }
  ASSERT_NE(aside, "");
  EXPECT_EQ(ReadAll(dir + "/" + aside), "stale wal");
}

TEST(JournalTest, OrphanWalIsNotReplayedIntoANewJournal) {
  const std::string dir_a = NewTempDir(), dir_b = NewTempDir();
  std::unique_ptr<Journal> a = MustOpen(dir_a + "/journal.db");
  ASSERT_NE(a, nullptr);
  JournalOwner o = MakeOwner(1);
  JournalChange c;
  c.put_owners = {o};
  c.put_locks = {MakeLock(o, "r")};
  ASSERT_TRUE(a->Apply(c).ok());
  const std::string wal = ReadAll(dir_a + "/journal.db-wal");
  ASSERT_GT(wal.size(), 0u);
  // A WAL whose database was deleted by hand.
  WriteAll(dir_b + "/journal.db-wal", wal);
  JournalOpenReport report;
  std::unique_ptr<Journal> b = MustOpen(dir_b + "/journal.db", &report);
  ASSERT_NE(b, nullptr);
  EXPECT_TRUE(report.created);
  JournalContents got = MustLoad(*b);
  EXPECT_TRUE(got.owners.empty());
  EXPECT_TRUE(got.locks.empty());
  EXPECT_TRUE(got.problems.empty());
}

TEST(JournalTest, MovesAsideATextFile) {
  const std::string dir = NewTempDir();
  const std::string path = dir + "/journal.db";
  WriteAll(path, "# this is not a journal\nbackend = \"posixfd\"\n");
  ExpectMovedAside(dir, path, "not a database");
}

TEST(JournalTest, MovesAsideAnEmptyFile) {
  const std::string dir = NewTempDir();
  const std::string path = dir + "/journal.db";
  WriteAll(path, "");
  ExpectMovedAside(dir, path, "empty");
}

TEST(JournalTest, MovesAsideATruncatedJournal) {
  const std::string dir = NewTempDir();
  const std::string path = dir + "/journal.db";
  WriteBigJournal(path);
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  ASSERT_EQ(truncate(path.c_str(), st.st_size / 2), 0);
  ExpectMovedAside(dir, path, "");
}

TEST(JournalTest, MovesAsideAJournalWithGarbageInTheMiddle) {
  const std::string dir = NewTempDir();
  const std::string path = dir + "/journal.db";
  WriteBigJournal(path);
  std::string data = ReadAll(path);
  const size_t at = (data.size() / 2) / 4096 * 4096;
  data.replace(at, 8192, RandomBytes(8192, 2));
  WriteAll(path, data);
  ExpectMovedAside(dir, path, "");
}

TEST(JournalTest, MovesAsideAnUnknownSchema) {
  const std::string dir = NewTempDir();
  const std::string path = dir + "/journal.db";
  MustOpen(path).reset();
  RawSql(path, "UPDATE meta SET value = 'latchkey-journal-2' WHERE key = 'schema'");
  ExpectMovedAside(dir, path, "unknown schema 'latchkey-journal-2'");

  // Any other SQLite database.
  const std::string other = dir + "/other.db";
  RawSql(other, "CREATE TABLE t (x); INSERT INTO t VALUES (1)");
  ExpectMovedAside(dir, other, "unknown schema");
}

TEST(JournalTest, MovingAsideTwiceInOneSecondKeepsBoth) {
  const std::string dir = NewTempDir();
  const std::string path = dir + "/journal.db";
  std::set<std::string> aside;
  for (int i = 0; i < 3; ++i) {
    WriteAll(path, absl::StrCat("garbage ", i));
    JournalOpenReport report;
    ASSERT_NE(MustOpen(path, &report), nullptr);
    aside.insert(report.moved_aside);
    EXPECT_EQ(ReadAll(report.moved_aside), absl::StrCat("garbage ", i));
    ASSERT_EQ(unlink(path.c_str()), 0);
  }
  EXPECT_EQ(aside.size(), 3u);  // usually the same second: suffixes differ
}

TEST(JournalTest, MissingDirectoryIsFailedPrecondition) {
  const std::string path = NewTempDir() + "/no/such/dir/journal.db";
  JournalOpenReport report;
  absl::StatusOr<std::unique_ptr<Journal>> j = Journal::Open(path, kBoot, &report);
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(j.status().message()), HasSubstr(path));
}

TEST(JournalTest, UnwritableDirectoryIsFailedPrecondition) {
  // Root ignores mode bits, so use a directory no one can create files in:
  // /proc/self/fdinfo (a kernel directory) refuses even root.
  const std::string path = "/proc/self/fdinfo/journal.db";
  absl::StatusOr<std::unique_ptr<Journal>> j = Journal::Open(path, kBoot, nullptr);
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.status().code(), absl::StatusCode::kFailedPrecondition) << j.status();
  EXPECT_THAT(std::string(j.status().message()), HasSubstr(path));
}

TEST(JournalTest, ReadOnlyChangesNothing) {
  const std::string dir = NewTempDir();
  const std::string path = dir + "/journal.db";
  {
    std::unique_ptr<Journal> j = MustOpen(path, nullptr, "boot-r");
    ASSERT_NE(j, nullptr);
    JournalOwner o = MakeOwner(1);
    JournalChange c;
    c.put_owners = {o};
    c.put_locks = {MakeLock(o, "r")};
    ASSERT_TRUE(j->Apply(c).ok());
  }
  const std::string bytes = ReadAll(path);
  const std::set<std::string> entries = DirEntries(dir);
  struct stat before, after;
  ASSERT_EQ(stat(path.c_str(), &before), 0);

  std::string boot;
  absl::StatusOr<JournalContents> c = Journal::ReadOnly(path, &boot);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(boot, "boot-r");
  EXPECT_EQ(c->owners.size(), 1u);
  EXPECT_EQ(c->locks.size(), 1u);

  ASSERT_EQ(stat(path.c_str(), &after), 0);
  EXPECT_EQ(ReadAll(path), bytes);
  EXPECT_EQ(before.st_mtim.tv_sec, after.st_mtim.tv_sec);
  EXPECT_EQ(before.st_mtim.tv_nsec, after.st_mtim.tv_nsec);
  EXPECT_EQ(DirEntries(dir), entries);  // no -wal or -shm left behind
}

TEST(JournalTest, ReadOnlySeesCommitsOfARunningJournal) {
  const std::string dir = NewTempDir();
  const std::string path = dir + "/journal.db";
  std::unique_ptr<Journal> j = MustOpen(path);
  ASSERT_NE(j, nullptr);
  JournalOwner o = MakeOwner(1);
  JournalChange c;
  c.put_owners = {o};
  c.put_locks = {MakeLock(o, "r1"), MakeLock(o, "r2")};
  ASSERT_TRUE(j->Apply(c).ok());
  const std::string bytes = ReadAll(path);

  std::string boot;
  absl::StatusOr<JournalContents> ro = Journal::ReadOnly(path, &boot);
  ASSERT_TRUE(ro.ok()) << ro.status();
  EXPECT_EQ(Dump(*ro), Dump(MustLoad(*j)));  // rows still only in the WAL
  EXPECT_EQ(boot, kBoot);
  EXPECT_EQ(ReadAll(path), bytes);

  JournalChange more;
  more.put_locks = {MakeLock(o, "r3")};
  ASSERT_TRUE(j->Apply(more).ok());
  EXPECT_EQ(MustLoad(*j).locks.size(), 3u);
}

TEST(JournalTest, ReadOnlyErrorsNameThePath) {
  const std::string dir = NewTempDir();
  const std::string path = dir + "/journal.db";
  absl::StatusOr<JournalContents> c = Journal::ReadOnly(path, nullptr);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(path));
  EXPECT_FALSE(DirEntries(dir).count("journal.db"));

  const std::string garbage = RandomBytes(10000, 3);
  WriteAll(path, garbage);
  c = Journal::ReadOnly(path, nullptr);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(path));
  EXPECT_EQ(ReadAll(path), garbage);
  EXPECT_EQ(DirEntries(dir), std::set<std::string>{"journal.db"});

  WriteAll(path, "");
  c = Journal::ReadOnly(path, nullptr);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("empty"));
}

TEST(JournalTest, LoadReportsBadRowsWithoutReturningThem) {
  const std::string path = NewTempDir() + "/journal.db";
  JournalOwner o = MakeOwner(1);
  JournalLock good = MakeLock(o, "good");
  {
    std::unique_ptr<Journal> j = MustOpen(path);
    ASSERT_NE(j, nullptr);
    JournalChange c;
    c.put_owners = {o};
    c.put_locks = {good};
    ASSERT_TRUE(j->Apply(c).ok());
  }
  const std::string u = o.owner.uuid;
  RawSql(path,
         "INSERT INTO owners VALUES ('not-a-uuid', 'vm9', 9, 0, 'h', 'p');"
         "INSERT INTO owners VALUES ('" + Uuid(8) + "', 'vm8', 'eight', 0, 'h', 'p');"
         "INSERT INTO locks VALUES ('" + u + "', 'posixfd', 'ls', 'mode9', 2, '', 0, 9, 1, x'', 1);"
         "INSERT INTO locks VALUES ('" + u + "', 'posixfd', 'ls', 'state7', 2, '', 0, 3, 1, x'', 7);"
         "INSERT INTO locks VALUES ('" + u + "', 'posixfd', 'ls', 'bad name', 2, '', 0, 3, 1, x'', 1);"
         "INSERT INTO locks VALUES ('" + Uuid(5) + "', 'posixfd', 'ls', 'orphan', 2, '', 0, 3, 1, x'', 1);"
         "INSERT INTO locks VALUES ('not-a-uuid', 'posixfd', 'ls', 'badowner', 2, '', 0, 3, 1, x'', 1);");

  std::unique_ptr<Journal> j = MustOpen(path);
  ASSERT_NE(j, nullptr);
  JournalContents got = MustLoad(*j);
  JournalContents want;
  want.owners = {o};
  want.locks = {good};
  EXPECT_EQ(Dump(JournalContents{got.owners, got.locks, {}}), Dump(want));
  const std::string problems = absl::StrJoin(got.problems, "\n");
  ASSERT_EQ(got.problems.size(), 7u) << problems;
  EXPECT_THAT(problems, HasSubstr("owner row 'not-a-uuid': owner uuid"));
  EXPECT_THAT(problems, HasSubstr("owner row '" + Uuid(8) + "': column pid is not an integer"));
  EXPECT_THAT(problems, HasSubstr("name 'mode9'): unknown lock mode number 9"));
  EXPECT_THAT(problems, HasSubstr("name 'state7'): unknown lock state 7"));
  EXPECT_THAT(problems, HasSubstr("name 'bad name'): lease key"));
  EXPECT_THAT(problems, HasSubstr("name 'orphan'): it has no owner row"));
  EXPECT_THAT(problems, HasSubstr("name 'badowner'): its owner row is invalid"));
  j.reset();

  absl::StatusOr<JournalContents> ro = Journal::ReadOnly(path, nullptr);
  ASSERT_TRUE(ro.ok()) << ro.status();
  EXPECT_EQ(ro->problems, got.problems);
}

TEST(JournalTest, ConcurrentApplies) {
  const std::string path = NewTempDir() + "/journal.db";
  std::unique_ptr<Journal> j = MustOpen(path);
  ASSERT_NE(j, nullptr);
  JournalOwner o = MakeOwner(1);
  JournalChange c;
  c.put_owners = {o};
  ASSERT_TRUE(j->Apply(c).ok());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        JournalChange put;
        put.put_locks = {MakeLock(o, absl::StrCat("t", t, "-", i))};
        EXPECT_TRUE(j->Apply(put).ok());
        if (i % 2 == 1) {
          JournalChange rm;
          rm.remove_locks = put.put_locks;
          EXPECT_TRUE(j->Apply(rm).ok());
        }
        if (i % 25 == 0) {
          EXPECT_TRUE(j->Load().ok());
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(MustLoad(*j).locks.size(), 200u);
}

// One change of the crash test: puts pair `i` (two locks) and removes pair
// i-3, so after any prefix of commits exactly the pairs max(0,i-2)..i exist.
JournalChange PairChange(const JournalOwner& o, int iteration, int i) {
  JournalChange c;
  for (const char* side : {"a", "b"}) {
    c.put_locks.push_back(MakeLock(o, absl::StrCat("p", iteration, "-", i, "-", side)));
    if (i >= 3) {
      c.remove_locks.push_back(MakeLock(o, absl::StrCat("p", iteration, "-", i - 3, "-", side)));
    }
  }
  return c;
}

TEST(JournalTest, KilledDuringApplyLeavesWholeChanges) {
  const std::string path = NewTempDir() + "/journal.db";
  JournalOwner o = MakeOwner(1);
  {
    std::unique_ptr<Journal> j = MustOpen(path);
    ASSERT_NE(j, nullptr);
    JournalChange c;
    c.put_owners = {o};
    ASSERT_TRUE(j->Apply(c).ok());
  }
  std::mt19937 rng(12345);
  constexpr int kIterations = 8;
  for (int iteration = 0; iteration < kIterations; ++iteration) {
    int ready[2];
    ASSERT_EQ(pipe(ready), 0);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(ready[0]);
      absl::StatusOr<std::unique_ptr<Journal>> j = Journal::Open(path, kBoot, nullptr);
      if (!j.ok()) _exit(2);
      for (int i = 0;; ++i) {
        if (!(*j)->Apply(PairChange(o, iteration, i)).ok()) _exit(3);
        if (i == 0 && write(ready[1], "x", 1) != 1) _exit(4);
      }
    }
    close(ready[1]);
    char byte;
    ASSERT_EQ(read(ready[0], &byte, 1), 1) << "child failed before its first commit";
    close(ready[0]);
    usleep(std::uniform_int_distribution<int>(0, 20000)(rng));
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status)) << "child exited with " << WEXITSTATUS(status);

    JournalOpenReport report;
    std::unique_ptr<Journal> j = MustOpen(path, &report);
    ASSERT_NE(j, nullptr);
    EXPECT_EQ(report.moved_aside, "") << report.moved_aside_reason;
    JournalContents c = MustLoad(*j);
    EXPECT_TRUE(c.problems.empty());
    // pairs[iteration][index] = sides present.
    std::map<int, std::map<int, std::string>> pairs;
    for (const JournalLock& l : c.locks) {
      int it = -1, idx = -1;
      char side = 0;
      ASSERT_EQ(sscanf(l.record.resource.name.c_str(), "p%d-%d-%c", &it, &idx, &side), 3);
      pairs[it][idx] += side;
    }
    ASSERT_EQ(pairs.size(), static_cast<size_t>(iteration + 1));
    int last = -1;
    for (const auto& [index, sides] : pairs[iteration]) {
      std::string sorted = sides;
      std::sort(sorted.begin(), sorted.end());
      EXPECT_EQ(sorted, "ab") << "pair " << index << " is incomplete";
      last = index;
    }
    const int first = std::max(0, last - 2);
    EXPECT_EQ(pairs[iteration].size(), static_cast<size_t>(last - first + 1));
    EXPECT_EQ(pairs[iteration].begin()->first, first);
    printf("crash iteration %d: killed after %d commits\n", iteration, last + 1);
  }
}

// The re-executed child of FaultPointsSplitChanges: LATCHKEY_FAULT was set
// before this process started, so fault.cc arms itself at its first use.
// Change k puts lock "c<k>"; the armed point kills the process.
[[noreturn]] void FaultChild(const char* path) {
  absl::StatusOr<std::unique_ptr<Journal>> j = Journal::Open(path, kBoot, nullptr);
  if (!j.ok()) _exit(2);
  JournalOwner o = MakeOwner(1);
  for (int k = 1; k <= 5; ++k) {
    JournalChange c;
    c.put_owners = {o};
    c.put_locks = {MakeLock(o, absl::StrCat("c", k))};
    if (!(*j)->Apply(c).ok()) _exit(3);
  }
  _exit(0);
}

// Runs before main() in the re-executed child only.
const bool kIsFaultChild = [] {
  const char* path = getenv(kChildEnv);
  if (path != nullptr) FaultChild(path);
  return false;
}();

TEST(JournalTest, FaultPointsSplitChanges) {
  ASSERT_FALSE(kIsFaultChild);
  struct Case {
    const char* fault;
    std::vector<std::string> want;
  };
  for (const Case& tc : {Case{"journal.before-commit:3", {"c1", "c2"}},
                         Case{"journal.after-commit:3", {"c1", "c2", "c3"}}}) {
    const std::string path = NewTempDir() + "/journal.db";
    const std::string env_child = absl::StrCat(kChildEnv, "=", path);
    const std::string env_fault = absl::StrCat("LATCHKEY_FAULT=", tc.fault);
    const std::string env_tmp = absl::StrCat("TEST_TMPDIR=", getenv("TEST_TMPDIR") ? getenv("TEST_TMPDIR") : "/tmp");
    char* const argv[] = {const_cast<char*>("journal_test_child"), nullptr};
    char* const envp[] = {const_cast<char*>(env_child.c_str()),
                          const_cast<char*>(env_fault.c_str()),
                          const_cast<char*>(env_tmp.c_str()), nullptr};
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      execve("/proc/self/exe", argv, envp);
      _exit(127);
    }
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << tc.fault << ": child status " << status;

    std::unique_ptr<Journal> j = MustOpen(path);
    ASSERT_NE(j, nullptr);
    std::vector<std::string> got;
    for (const JournalLock& l : MustLoad(*j).locks) got.push_back(l.record.resource.name);
    EXPECT_EQ(got, tc.want) << tc.fault;
  }
}

TEST(JournalTest, CurrentBootId) {
  const std::string id = CurrentBootId();
  EXPECT_EQ(id.size(), 36u) << id;
  EXPECT_EQ(id, CurrentBootId());
}

// Not a pass/fail measure: prints what one acquire + release costs (two
// Applies). Run the binary with TEST_TMPDIR on tmpfs for the /run figure.
TEST(JournalTest, ApplyCost) {
  const std::string path = NewTempDir() + "/journal.db";
  std::unique_ptr<Journal> j = MustOpen(path);
  ASSERT_NE(j, nullptr);
  JournalOwner o = MakeOwner(1);
  JournalChange setup;
  setup.put_owners = {o};
  ASSERT_TRUE(j->Apply(setup).ok());
  JournalChange put, remove;
  put.put_locks = {MakeLock(o, "bench")};
  put.put_locks[0].record.resource.path = "/var/lib/images/bench.qcow2";
  put.put_locks[0].record.backend_token = "token";
  remove.remove_locks = put.put_locks;
  constexpr int kPairs = 5000;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kPairs; ++i) {
    put.put_locks[0].record.fencing_token = i;
    ASSERT_TRUE(j->Apply(put).ok());
    ASSERT_TRUE(j->Apply(remove).ok());
  }
  const double us = std::chrono::duration<double, std::micro>(
                        std::chrono::steady_clock::now() - start).count() / kPairs;
  printf("ApplyCost: %.1f us per put+remove pair (%d pairs) in %s\n", us, kPairs,
         path.c_str());
  EXPECT_LT(us, 5000.0);  // catches an fsync per commit on slow disks, roughly
}

}  // namespace
}  // namespace latchkey
