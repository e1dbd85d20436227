#include "backends/posixfd/lock_file.h"

#include <cstring>

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

}  // namespace
}  // namespace posixfd
}  // namespace latchkey
