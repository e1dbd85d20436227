// DeviceUsers on the host: child processes holding /dev/null (a character
// device) open are found by pid and name; this process is left out; a
// process with other devices open is not listed.
#include "backends/dlm/lockspace_users.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace latchkey {
namespace dlmbe {
namespace {

// A child named `name` that opens `path`, tells us, and waits to be killed.
pid_t Child(const char* name, const char* path) {
  int p[2];
  if (pipe(p) != 0) return -1;
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_NAME, name);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    const int fd = open(path, O_RDONLY);
    (void)fd;
    (void)!write(p[1], "x", 1);
    pause();
    _exit(0);
  }
  char c;
  close(p[1]);
  (void)!read(p[0], &c, 1);
  close(p[0]);
  return pid;
}

void Reap(pid_t pid) {
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

bool Listed(const std::vector<DeviceUser>& users, pid_t pid, const std::string& comm) {
  return std::any_of(users.begin(), users.end(),
                     [&](const DeviceUser& u) { return u.pid == pid && u.comm == comm; });
}

TEST(DeviceUsersTest, FindsOtherProcessesWithTheDeviceOpen) {
  struct stat null_st;
  ASSERT_EQ(stat("/dev/null", &null_st), 0);
  const int mine = open("/dev/null", O_RDONLY);
  ASSERT_GE(mine, 0);
  const pid_t a = Child("lsu-null-a", "/dev/null");
  const pid_t b = Child("lsu-zero-b", "/dev/zero");
  ASSERT_GT(a, 0);
  ASSERT_GT(b, 0);
  std::vector<DeviceUser> users = DeviceUsers(null_st.st_rdev, getpid());
  EXPECT_TRUE(Listed(users, a, "lsu-null-a"));
  // b has /dev/null only if its stdio is /dev/null: check its own device.
  struct stat zero_st;
  ASSERT_EQ(stat("/dev/zero", &zero_st), 0);
  std::vector<DeviceUser> zero = DeviceUsers(zero_st.st_rdev, getpid());
  EXPECT_TRUE(Listed(zero, b, "lsu-zero-b"));
  EXPECT_FALSE(Listed(zero, a, "lsu-null-a"));
  for (const DeviceUser& u : users) EXPECT_NE(u.pid, getpid());
  EXPECT_TRUE(std::is_sorted(users.begin(), users.end(), [](const DeviceUser& x,
                                                            const DeviceUser& y) {
    return x.pid < y.pid;
  }));
  EXPECT_THAT(DescribeUsers(users), ::testing::HasSubstr(
                                        "lsu-null-a (pid " + std::to_string(a) + ")"));
  Reap(a);
  Reap(b);
  users = DeviceUsers(null_st.st_rdev, getpid());
  EXPECT_FALSE(Listed(users, a, "lsu-null-a"));
  close(mine);
}

TEST(DeviceUsersTest, NothingForAnUnusedDeviceOrAMissingProc) {
  EXPECT_TRUE(DeviceUsers(makedev(4095, 1048575), getpid()).empty());
  EXPECT_TRUE(DeviceUsers(makedev(1, 3), getpid(), "/nonexistent-proc").empty());
  EXPECT_EQ(DescribeUsers({}), "");
  EXPECT_EQ(DescribeUsers({{12, ""}, {13, "x"}}), "? (pid 12), x (pid 13)");
}

}  // namespace
}  // namespace dlmbe
}  // namespace latchkey
