#include "core/config.h"

#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace latchkey {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(ConfigTest, ParsesLibvirtSyntax) {
  absl::StatusOr<Config> c = Config::ParseText(
      "# latchd settings\n"
      "backend = \"posixfd\"   # trailing comment\n"
      "\n"
      "timeout_ms=-250\n"
      "quoted = 'has \"double\" quotes'\n"
      "plugin_path = [ \"/a\",  # first\n"
      "                \"/b\",\n"
      "              ]\n"
      "empty = []\n"
      "flag = 1;\n",
      "t.conf");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(*c->GetString("backend", ""), "posixfd");
  EXPECT_EQ(*c->GetInt("timeout_ms", 0, -1000, 1000), -250);
  EXPECT_EQ(*c->GetString("quoted", ""), "has \"double\" quotes");
  EXPECT_THAT(*c->GetStringList("plugin_path", {}), ElementsAre("/a", "/b"));
  EXPECT_TRUE(c->GetStringList("empty", {"x"})->empty());
  EXPECT_TRUE(*c->GetBool("flag", false));
  EXPECT_EQ(c->Find("plugin_path")->line, 6);
  EXPECT_EQ(*c->GetString("unset", "dflt"), "dflt");
}

TEST(ConfigTest, SyntaxErrorsNameFileAndLine) {
  auto err = [](const char* text) {
    return std::string(Config::ParseText(text, "x.conf").status().message());
  };
  EXPECT_EQ(err("a = 1\nb 2\n"), "x.conf:2: expected '=' after key 'b'");
  EXPECT_THAT(err("a = \"open\n"), HasSubstr("x.conf:1: unterminated string"));
  EXPECT_THAT(err("a = [ \"x\"\n\n"), HasSubstr("x.conf:3: unterminated list"));
  EXPECT_THAT(err("a = [ [ 1 ] ]"), HasSubstr("nested"));
  EXPECT_THAT(err("a = 1.5"), HasSubstr("only integers"));
  EXPECT_THAT(err("a = 99999999999999999999"), HasSubstr("out of range"));
  EXPECT_THAT(err("a = \n"), HasSubstr("x.conf:1: missing value"));
  EXPECT_THAT(err("a = 1 2"), HasSubstr("unexpected"));
  EXPECT_THAT(err("1a = 1"), HasSubstr("expected a key"));
  EXPECT_THAT(err("a = yes"), HasSubstr("expected a value"));
  EXPECT_EQ(err("a = 1\n\na = 2"), "x.conf:3: duplicate key 'a' (first set at line 1)");
}

TEST(ConfigTest, TypeAndKeyErrorsNameFileAndLine) {
  absl::StatusOr<Config> c = Config::ParseText("n = \"ten\"\ns = 5\nb = 2\nl = [ 1 ]\nbogus = 1\n"
                                               "mode = \"fast\"\n",
                                               "y.conf");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->GetInt("n", 0, 0, 10).status().message(),
            "y.conf:1: 'n' must be an integer, got string \"ten\"");
  EXPECT_THAT(c->GetString("s", "").status().message(), HasSubstr("y.conf:2: 's' must be a string"));
  EXPECT_THAT(c->GetBool("b", false).status().message(), HasSubstr("y.conf:3: 'b' must be 0 or 1"));
  EXPECT_THAT(c->GetStringList("l", {}).status().message(),
              HasSubstr("y.conf:4: 'l' must be a list of strings"));
  EXPECT_THAT(c->GetInt("s", 0, 10, 20).status().message(),
              HasSubstr("y.conf:2: 's' is 5; allowed range is 10..20"));
  EXPECT_THAT(c->GetChoice("mode", "", {"slow", "safe"}).status().message(),
              HasSubstr("y.conf:6: 'mode' is \"fast\"; expected one of slow, safe"));
  absl::Status keys = c->CheckKeys({"n", "s", "b", "l", "mode"});
  EXPECT_THAT(keys.message(), HasSubstr("y.conf:5: unknown key 'bogus'"));
  EXPECT_TRUE(c->CheckKeys({"n", "s", "b", "l", "mode"}, {"bo"}).ok());
}

TEST(ConfigTest, SectionStripsPrefixAndKeepsLocation) {
  absl::StatusOr<Config> c =
      Config::ParseText("backend = \"posixfd\"\nposixfd_lock_dir = \"/tmp/x\"\n", "z.conf");
  Config s = c->Section("posixfd_");
  ASSERT_EQ(s.entries().size(), 1u);
  EXPECT_EQ(s.entries()[0].key, "lock_dir");
  EXPECT_EQ(s.entries()[0].Where(), "z.conf:2");
}

TEST(ConfigTest, ValueSourceRoundTrips) {
  for (const ConfigValue& v :
       {ConfigValue::String("plain"), ConfigValue::String("with \"quotes\""),
        ConfigValue::Int(-42),
        ConfigValue::List({ConfigValue::String("a"), ConfigValue::Int(3)}),
        ConfigValue::List({})}) {
    absl::StatusOr<ConfigValue> back = ConfigValue::ParseSource(v.ToSource());
    ASSERT_TRUE(back.ok()) << v.ToSource() << ": " << back.status();
    EXPECT_EQ(*back, v) << v.ToSource();
  }
}

TEST(ConfigTest, MissingFileIsNotFoundNamingPath) {
  absl::StatusOr<Config> c = Config::ParseFile("/nonexistent/latchd.conf");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr("/nonexistent/latchd.conf"));
}

TEST(ConfigTest, ParsesFileWithItsPathAsOrigin) {
  const std::string path = std::string(getenv("TEST_TMPDIR")) + "/f.conf";
  std::ofstream(path) << "a = 1\nb = oops\n";
  absl::StatusOr<Config> c = Config::ParseFile(path);
  EXPECT_THAT(c.status().message(), HasSubstr(path + ":2:"));
}

}  // namespace
}  // namespace latchkey
