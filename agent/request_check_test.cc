#include "agent/request_check.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace latchkey {
namespace {

using ::testing::HasSubstr;

std::string Nested(size_t depth, char open, char close) {
  return std::string(depth, open) + std::string(depth, close);
}

TEST(RequestCheckTest, OrdinaryRequestsPass) {
  EXPECT_TRUE(CheckRequestLine(R"({"v":1,"op":"status"})").ok());
  EXPECT_TRUE(CheckRequestLine(
                  R"({"v":1,"id":[[1]],"op":"acquire","resources":[{"disk":"/a [b] {c}.img"}]})")
                  .ok());
  EXPECT_TRUE(CheckRequestLine(R"({"v":1,"op":"x","id":"caf\u00e9 \"[[[[\" é"})").ok());
  EXPECT_TRUE(CheckRequestLine("{\"id\":" + Nested(15, '[', ']') + "}").ok());
}

TEST(RequestCheckTest, DeepNestingIsRefusedWithoutRecursion) {
  // The line that used to overflow latchd's stack: an id 15,000 deep.
  const std::string deep = R"({"v":1,"op":"hello","id":)" + Nested(15000, '[', ']') + "}";
  absl::Status s = CheckRequestLine(deep);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("more than 16 deep"));
  EXPECT_FALSE(CheckRequestLine("{\"id\":" + Nested(16, '{', '}') + "}").ok());
  // Unbalanced openers count too: the parser would refuse them, but only
  // after building them.
  EXPECT_FALSE(CheckRequestLine(std::string(100000, '[')).ok());
  // Brackets inside strings, and escaped quotes, are not nesting.
  EXPECT_TRUE(CheckRequestLine("{\"id\":\"" + std::string(5000, '[') + "\\\"" +
                               std::string(5000, '{') + "\"}")
                  .ok());
}

TEST(RequestCheckTest, NulBytesAndBadUtf8AreRefusedNamingTheByte) {
  absl::Status nul = CheckRequestLine(std::string("{\"v\":1,\"op\":\"status\"}\0garbage", 29));
  EXPECT_EQ(nul.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(nul.message(), HasSubstr("NUL byte (at byte 21)"));
  absl::Status utf = CheckRequestLine("{\"op\":\"bad\xff\xfe\"}");
  EXPECT_EQ(utf.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(utf.message(), HasSubstr("not valid UTF-8 (at byte 10)"));
}

}  // namespace
}  // namespace latchkey
