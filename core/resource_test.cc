#include "core/resource.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace latchkey {
namespace {

using ::testing::HasSubstr;

TEST(ResourceTest, DiskNameIsDigestOfCanonicalPath) {
  std::string dir = std::string(getenv("TEST_TMPDIR")) + "/imgs";
  mkdir(dir.c_str(), 0700);
  const std::string img = dir + "/vm1.img";
  close(open(img.c_str(), O_CREAT | O_WRONLY, 0600));
  const std::string link = dir + "/alias.img";
  unlink(link.c_str());
  ASSERT_EQ(symlink(img.c_str(), link.c_str()), 0);

  absl::StatusOr<Resource> a = Resource::Disk(img, "default");
  absl::StatusOr<Resource> b = Resource::Disk(dir + "/../imgs/./alias.img", "default");
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->name, b->name);  // Same image through a symlink and "..".
  EXPECT_EQ(a->path, b->path);
  EXPECT_EQ(a->name.size(), 64u);
  EXPECT_EQ(a->kind, ResourceKind::kDisk);
  EXPECT_THAT(a->Describe(), HasSubstr(img));
}

TEST(ResourceTest, DiskNameFitsBackendLimit) {
  absl::StatusOr<Resource> sanlock = Resource::Disk("/no/such/dir/x.img", "ls", 48);
  ASSERT_TRUE(sanlock.ok()) << sanlock.status();
  EXPECT_EQ(sanlock->name.size(), 48u);
  EXPECT_EQ(sanlock->path, "/no/such/dir/x.img");
  absl::StatusOr<Resource> dlm = Resource::Disk("/no/such/dir/x.img", "ls", 64);
  EXPECT_EQ(dlm->name.substr(0, 48), sanlock->name);  // Prefix of the same digest.
  absl::StatusOr<Resource> other = Resource::Disk("/no/such/dir/y.img", "ls", 48);
  EXPECT_NE(other->name, sanlock->name);
}

// A name that is UTF-8 may lead through a symlink to one that is not: the
// disk is refused, naming both, instead of becoming a name no JSON answer
// can carry (latchd used to abort when it printed such a lock).
TEST(ResourceTest, NonUtf8PathsAreRefusedEvenBehindASymlink) {
  const std::string dir = std::string(getenv("TEST_TMPDIR")) + "/utf8";
  mkdir(dir.c_str(), 0700);
  const std::string bad = dir + "/bad\xff\xfe.img";
  close(open(bad.c_str(), O_CREAT | O_WRONLY, 0600));
  const std::string link = dir + "/ascii.img";
  unlink(link.c_str());
  ASSERT_EQ(symlink(bad.c_str(), link.c_str()), 0);

  absl::StatusOr<Resource> via_link = Resource::Disk(link, "default");
  ASSERT_EQ(via_link.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(via_link.status().message(), HasSubstr("resolves to"));
  EXPECT_THAT(via_link.status().message(), HasSubstr("bad\\xff\\xfe.img"));
  EXPECT_THAT(via_link.status().message(), HasSubstr("not valid UTF-8"));

  EXPECT_EQ(Resource::Disk(bad, "default").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Resource::Disk("/no/such/\xc0\xaf.img", "default").status().code(),
            absl::StatusCode::kInvalidArgument);
  Resource lease;
  lease.kind = ResourceKind::kLease;
  lease.lockspace = "ls";
  lease.name = "k";
  lease.path = "/dev/\xff";
  EXPECT_THAT(lease.Validate().message(), HasSubstr("not valid UTF-8"));
}

TEST(ResourceTest, MissingImageIsNormalisedLexically) {
  absl::StatusOr<Resource> r = Resource::Disk("/a/b/../c//./d.img", "ls");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->path, "/a/c/d.img");
}

TEST(ResourceTest, BadNamesAreRefusedWithReason) {
  EXPECT_THAT(Resource::Lease("", "key").status().message(), HasSubstr("lockspace is empty"));
  EXPECT_THAT(Resource::Lease("ls", std::string(65, 'k')).status().message(),
              HasSubstr("limit is 64"));
  EXPECT_THAT(Resource::Lease("ls", "../etc").status().message(), HasSubstr("must not start"));
  EXPECT_THAT(Resource::Lease("ls", "a/b").status().message(), HasSubstr("[A-Za-z0-9_.-]"));
  EXPECT_THAT(Resource::Lease("ls", std::string("a\0b", 3)).status().message(),
              HasSubstr("\\x00"));
  EXPECT_EQ(Resource::Lease("ls", "").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Resource::Disk("", "ls").status().message(), HasSubstr("disk path is empty"));
  EXPECT_THAT(Resource::Disk("/x/" + std::string(5000, 'p'), "ls").status().message(),
              HasSubstr("limit is 4095"));

  absl::StatusOr<Resource> ok = Resource::Lease("ls", "vm-1.lease_A", "/leases/f", 1048576);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->Key(), "ls/vm-1.lease_A");
  EXPECT_FALSE(ok->Validate(8).ok());  // Longer than a backend limit of 8.
}

}  // namespace
}  // namespace latchkey
