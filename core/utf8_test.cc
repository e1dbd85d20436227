#include "core/utf8.h"

#include <string>

#include "gtest/gtest.h"

namespace latchkey {
namespace {

TEST(Utf8Test, AcceptsWellFormedText) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("/var/lib/images/vm1.qcow2"));
  EXPECT_TRUE(IsValidUtf8("caf\xc3\xa9"));              // U+00E9
  EXPECT_TRUE(IsValidUtf8("\xe2\x82\xac"));             // U+20AC
  EXPECT_TRUE(IsValidUtf8("\xf0\x9f\x94\x92"));         // U+1F512
  EXPECT_TRUE(IsValidUtf8("\xf4\x8f\xbf\xbf"));         // U+10FFFF
  EXPECT_TRUE(IsValidUtf8(std::string("a\0b", 3)));     // NUL is UTF-8
}

TEST(Utf8Test, RefusesMalformedTextAndSaysWhere) {
  EXPECT_EQ(FirstInvalidUtf8("bad\xff\xfe.img"), 3u);
  EXPECT_EQ(FirstInvalidUtf8("\x80"), 0u);                  // lone continuation
  EXPECT_EQ(FirstInvalidUtf8("ab\xc3"), 2u);                // truncated
  EXPECT_EQ(FirstInvalidUtf8("\xc0\xaf"), 0u);              // overlong '/'
  EXPECT_EQ(FirstInvalidUtf8("\xe0\x80\xaf"), 0u);          // overlong
  EXPECT_EQ(FirstInvalidUtf8("\xf0\x80\x80\xaf"), 0u);      // overlong
  EXPECT_EQ(FirstInvalidUtf8("x\xed\xa0\x80"), 1u);         // surrogate U+D800
  EXPECT_EQ(FirstInvalidUtf8("\xf4\x90\x80\x80"), 0u);      // above U+10FFFF
  EXPECT_EQ(FirstInvalidUtf8("\xf5\x80\x80\x80"), 0u);
  EXPECT_EQ(FirstInvalidUtf8("\xe2\x82"), 0u);              // truncated at the end
  EXPECT_EQ(FirstInvalidUtf8("\xe2\x28\xa1"), 0u);          // bad second byte
  EXPECT_EQ(FirstInvalidUtf8("\xf0\x9f\x94\x28"), 0u);      // bad fourth byte
}

}  // namespace
}  // namespace latchkey
