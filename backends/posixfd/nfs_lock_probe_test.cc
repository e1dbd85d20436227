// The probe off NFS (the lab suite, posixfd_cluster_test, covers a real lost
// lock): a local file is not NFS, and a readable descriptor reads as held
// with its flags unchanged; a descriptor that cannot be read is "unknown",
// never "lost".
#include "backends/posixfd/nfs_lock_probe.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <string>

#include "gtest/gtest.h"

namespace latchkey {
namespace posixfd {
namespace {

std::string TempFile() {
  std::string path = std::string(getenv("TEST_TMPDIR") ? getenv("TEST_TMPDIR") : "/tmp") +
                     "/probe.XXXXXX";
  const int fd = mkstemp(path.data());
  EXPECT_GE(fd, 0);
  EXPECT_EQ(write(fd, "x", 1), 1);
  close(fd);
  return path;
}

TEST(NfsLockProbeTest, ALocalFileIsNotNfs) {
  const std::string path = TempFile();
  const int fd = open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  EXPECT_FALSE(OnNfs(fd));
  EXPECT_FALSE(OnNfs(-1));
  close(fd);
}

TEST(NfsLockProbeTest, AReadableDescriptorIsHeldAndKeepsItsFlags) {
  const std::string path = TempFile();
  const int fd = open(path.c_str(), O_RDWR | O_APPEND);
  ASSERT_GE(fd, 0);
  const int before = fcntl(fd, F_GETFL);
  std::string why;
  // Local file systems may refuse O_DIRECT (tmpfs): the probe then reads
  // buffered, which is all a file that cannot lose its locks needs.
  EXPECT_EQ(ProbeNfsLocks(fd, &why), NfsLockState::kHeld) << why;
  EXPECT_EQ(fcntl(fd, F_GETFL), before);
  close(fd);
}

TEST(NfsLockProbeTest, AnUnreadableDescriptorIsUnknownNotLost) {
  const std::string path = TempFile();
  const int fd = open(path.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  std::string why;
  EXPECT_EQ(ProbeNfsLocks(fd, &why), NfsLockState::kUnknown);
  EXPECT_NE(why.find("Bad file descriptor"), std::string::npos) << why;
  close(fd);
  EXPECT_EQ(ProbeNfsLocks(fd, &why), NfsLockState::kUnknown);
}

}  // namespace
}  // namespace posixfd
}  // namespace latchkey
