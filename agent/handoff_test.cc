#include "agent/handoff.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace latchkey {
namespace {

using ::testing::HasSubstr;

TEST(Handoff, RoundTrip) {
  std::vector<HandoffEntry> in = {
      {"posixfd", "default", "3fa9", LockMode::kExclusive, 17},
      {"sanlock", "LS", "lease.1", LockMode::kSharedRead, 18446744073709551615ull},
      {"dlm", "ls-2", "r_2", LockMode::kSharedWrite, 0},
  };
  const std::string s = EncodeHandoff(in);
  EXPECT_EQ(s.rfind("latchkey1;posixfd:default:3fa9:ex:17;", 0), 0u) << s;
  absl::StatusOr<std::map<std::string, HandoffEntry>> out = DecodeHandoff(s);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), 3u);
  const HandoffEntry& e = out->at("sanlock:LS:lease.1");
  EXPECT_EQ(e.mode, LockMode::kSharedRead);
  EXPECT_EQ(e.fencing_token, 18446744073709551615ull);
  EXPECT_EQ(out->at("dlm:ls-2:r_2").mode, LockMode::kSharedWrite);
}

TEST(Handoff, EmptyStateHasNoEntries) {
  absl::StatusOr<std::map<std::string, HandoffEntry>> out = DecodeHandoff(EncodeHandoff({}));
  ASSERT_TRUE(out.ok());
  EXPECT_TRUE(out->empty());
}

TEST(Handoff, RejectsWhatEncodeCannotProduce) {
  struct Case {
    const char* state;
    const char* message;
  } cases[] = {
      {"", "does not start with 'latchkey1'"},
      {"latchkey2;a:b:c:ex:1", "does not start"},
      {"latchkey1;a:b:c:ex", "is not BACKEND:LOCKSPACE:NAME:MODE:TOKEN"},
      {"latchkey1;a:b:c:xx:1", "unknown lock mode"},
      {"latchkey1;a:b:c:ex:-1", "is not a number"},
      {"latchkey1;a:b:c:ex:99999999999999999999", "is not a number"},
      {"latchkey1;a:../x:c:ex:1", "lockspace"},
      {"latchkey1;a:b:c:ex:1;a:b:c:sr:2", "twice"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<std::map<std::string, HandoffEntry>> out = DecodeHandoff(c.state);
    ASSERT_FALSE(out.ok()) << c.state;
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(out.status().message()), HasSubstr(c.message)) << c.state;
  }
}

}  // namespace
}  // namespace latchkey
