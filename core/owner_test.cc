#include "core/owner.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace latchkey {
namespace {

using ::testing::HasSubstr;

TEST(OwnerTest, ThisProcessIsValidAndAlive) {
  Owner me = OwnerForThisProcess(RandomUuid(), "vm1");
  EXPECT_TRUE(me.Validate().ok()) << me.Validate();
  EXPECT_GT(me.start_time, 0u);
  EXPECT_TRUE(ProcessIsAlive(me.pid, me.start_time));
  EXPECT_FALSE(ProcessIsAlive(me.pid, me.start_time + 1));  // As if the pid were reused.
}

TEST(OwnerTest, DeadProcessIsNotAlive) {
  pid_t child = fork();
  if (child == 0) _exit(0);
  uint64_t start = ProcessStartTime(child).value_or(0);
  waitpid(child, nullptr, 0);
  EXPECT_FALSE(ProcessIsAlive(child, start));
  EXPECT_EQ(ProcessStartTime(child).status().code(), absl::StatusCode::kNotFound);
}

TEST(OwnerTest, ValidationNamesTheField) {
  Owner o = OwnerForThisProcess(RandomUuid(), "vm1");
  Owner bad = o;
  bad.uuid = "not-a-uuid";
  EXPECT_THAT(bad.Validate().message(), HasSubstr("uuid"));
  bad = o;
  bad.name = "";
  EXPECT_THAT(bad.Validate().message(), HasSubstr("owner name"));
  bad.name = std::string(200, 'n');
  EXPECT_THAT(bad.Validate().message(), HasSubstr("1..128"));
  bad = o;
  bad.pid = 0;
  EXPECT_THAT(bad.Validate().message(), HasSubstr("pid 0"));
  bad = o;
  bad.host = "a b";
  EXPECT_THAT(bad.Validate().message(), HasSubstr("host name"));
}

TEST(OwnerTest, RandomUuidsAreVersion4AndDistinct) {
  std::string a = RandomUuid(), b = RandomUuid();
  EXPECT_NE(a, b);
  EXPECT_EQ(a.size(), 36u);
  EXPECT_EQ(a[14], '4');
}

}  // namespace
}  // namespace latchkey
