#include "backends/posixfd/lock_file.h"

#include <fcntl.h>

#include <cstring>
#include <limits>

#include "gtest/gtest.h"

namespace latchkey {
namespace posixfd {
namespace {

TEST(LockFileTest, RecordRoundTrips) {
  Record r{Owner{"01234567-89ab-cdef-0123-456789abcdef", "vm one", 4242, 99, "host-a"},
           LockMode::kSharedWrite, 17};
  unsigned char buf[kRecordSize];
  EncodeRecord(r.owner, r.mode, r.token, buf);
  Record back;
  ASSERT_TRUE(DecodeRecord(buf, &back));
  EXPECT_EQ(back.owner.uuid, r.owner.uuid);
  EXPECT_EQ(back.owner.name, "vm one");
  EXPECT_EQ(back.owner.pid, 4242);
  EXPECT_EQ(back.owner.start_time, 99u);
  EXPECT_EQ(back.owner.host, "host-a");
  EXPECT_EQ(back.mode, LockMode::kSharedWrite);
  EXPECT_EQ(back.token, 17u);
}

TEST(LockFileTest, ZeroedBytesAreNoRecord) {
  unsigned char buf[kRecordSize] = {};
  Record back;
  EXPECT_FALSE(DecodeRecord(buf, &back));
}

TEST(LockFileTest, HeaderRoundTrips) {
  Resource r = *Resource::Lease("ls", "key", "/leases/a", 4096);
  unsigned char buf[kHeaderSize];
  memcpy(buf, kMagic, sizeof kMagic);
  EncodeHeaderTail(77, r, buf + 8);
  Header h = DecodeHeader(buf);
  EXPECT_TRUE(h.initialised);
  EXPECT_EQ(h.token, 77u);
  EXPECT_EQ(h.kind, ResourceKind::kLease);
  EXPECT_EQ(h.path_len, 9u);
  EXPECT_EQ(h.offset, 4096u);
  buf[0] = 'X';
  EXPECT_FALSE(DecodeHeader(buf).initialised);
}

TEST(LockFileTest, StateFileNamesCannotEscapeTheDirectory) {
  Resource r = *Resource::Lease("ls", "key");
  EXPECT_EQ(StateFileName(r), "ls:key");
  std::string ls, name;
  ASSERT_TRUE(ParseStateFileName("ls:key", &ls, &name));
  EXPECT_EQ(ls, "ls");
  EXPECT_EQ(name, "key");
  EXPECT_FALSE(ParseStateFileName("..:x", &ls, &name));
  EXPECT_FALSE(ParseStateFileName("nocolon", &ls, &name));
  EXPECT_FALSE(ParseStateFileName(":x", &ls, &name));
  // Names that could hold a '/' never validate, so never reach a file name.
  EXPECT_FALSE(Resource::Lease("ls", "a/../../b").ok());
}

TEST(LockFileTest, ConflictTokensFollowTheModeMatrix) {
  ConflictTokens c;
  c = AfterGrant(c, LockMode::kSharedRead, 1);  // conflicts with shared-write
  EXPECT_EQ(LastConflicting(c, 1, LockMode::kSharedRead), 0u);
  EXPECT_EQ(LastConflicting(c, 1, LockMode::kSharedWrite), 1u);
  EXPECT_EQ(LastConflicting(c, 1, LockMode::kExclusive), 1u);
  c = AfterGrant(c, LockMode::kSharedWrite, 2);  // conflicts with shared-read
  EXPECT_EQ(LastConflicting(c, 2, LockMode::kSharedRead), 2u);
  EXPECT_EQ(LastConflicting(c, 2, LockMode::kSharedWrite), 1u);
  c = AfterGrant(c, LockMode::kExclusive, 3);  // conflicts with everything
  EXPECT_EQ(LastConflicting(c, 3, LockMode::kSharedRead), 3u);
  EXPECT_EQ(LastConflicting(c, 3, LockMode::kSharedWrite), 3u);

  unsigned char buf[kConflictSize];
  EncodeConflictTokens(7, ConflictTokens{4, 6}, buf);
  ConflictTokens back = DecodeConflictTokens(buf, 7);
  EXPECT_EQ(back.shared_read, 4u);
  EXPECT_EQ(back.shared_write, 6u);
  // Written with another header token (an older file, an older writer):
  // every grant so far counts as conflicting.
  back = DecodeConflictTokens(buf, 9);
  EXPECT_EQ(back.shared_read, 9u);
  EXPECT_EQ(back.shared_write, 9u);
  unsigned char zero[kConflictSize] = {};
  back = DecodeConflictTokens(zero, 0);  // a fresh file
  EXPECT_EQ(back.shared_read, 0u);
}

TEST(LockFileTest, FdInfoLocksAreParsed) {
  // As Linux 6.x prints /proc/self/fdinfo/FD for a description holding an
  // exclusive posixfd lock (one range) and a shared one (class + slot).
  const std::string text =
      "pos:\t0\nflags:\t0100002\nmnt_id:\t27\nino:\t10952949\n"
      "lock:\t1: OFDLCK ADVISORY  WRITE -1 fe:00:10952949 83885006258176 83885006258178\n"
      "lock:\t2: OFDLCK ADVISORY  READ  -1 fe:00:10952949 83885006258177 83885006258177\n"
      "lock:\t3: OFDLCK ADVISORY  WRITE -1 fe:00:10952949 100 EOF\n"
      "lock:\t4: POSIX  ADVISORY  WRITE 12 fe:00:10952949 0 10\n"
      "lock:\t5: FLOCK  ADVISORY  WRITE 12 fe:00:10952949 0 EOF\n"
      "lock:\t6: OFDLCK ADVISORY  WRITE -1 fe:00:10952949 garbage 7\n";
  const std::vector<OfdLock> locks = ParseFdInfoLocks(text);
  ASSERT_EQ(locks.size(), 3u);
  EXPECT_TRUE(locks[0].write);
  EXPECT_EQ(locks[0].start, kGate);
  EXPECT_EQ(locks[0].end, kWriteClass);
  EXPECT_FALSE(locks[1].write);
  EXPECT_EQ(locks[2].start, 100);
  EXPECT_EQ(locks[2].end, std::numeric_limits<off_t>::max());
  EXPECT_EQ(OfdLockAt(locks, kGate), F_WRLCK);
  EXPECT_EQ(OfdLockAt(locks, kWriteClass), F_WRLCK);
  EXPECT_EQ(OfdLockAt(locks, 99), F_UNLCK);
  EXPECT_EQ(OfdLockAt(locks, 101), F_WRLCK);  // to EOF
  EXPECT_EQ(OfdLockAt({locks[1]}, kReadClass), F_RDLCK);
  EXPECT_EQ(OfdLockAt({locks[1]}, kGate), F_UNLCK);
  EXPECT_TRUE(ParseFdInfoLocks("pos:\t0\nflags:\t02\n").empty());
}

}  // namespace
}  // namespace posixfd
}  // namespace latchkey
