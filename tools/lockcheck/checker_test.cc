#include "tools/lockcheck/checker.h"

#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/cpp/runfiles/runfiles.h"

namespace latchkey {
namespace lockcheck {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// One event; times in ms, uncertainty in ms, token < 0: none.
std::string E(const char* type, const char* process, const char* op, const char* resource,
              const char* mode, int64_t ms, int64_t token = -1, int64_t unc_ms = 0) {
  std::string s = absl::StrCat("{\"type\":\"", type, "\",\"process\":\"", process,
                               "\",\"resource\":\"", resource, "\",\"time_ns\":", ms * 1000000,
                               ",\"uncertainty_ns\":", unc_ms * 1000000);
  if (*op) absl::StrAppend(&s, ",\"op\":\"", op, "\"");
  if (*mode) absl::StrAppend(&s, ",\"mode\":\"", mode, "\"");
  if (token >= 0) absl::StrAppend(&s, ",\"token\":", token);
  return s + "}";
}

Report CheckLines(const std::vector<std::string>& lines) {
  std::stringstream in;
  for (const std::string& l : lines) in << l << "\n";
  absl::StatusOr<std::vector<Event>> h = ReadHistory(in);
  EXPECT_TRUE(h.ok()) << h.status();
  return h.ok() ? Check(*h) : Report{};
}

// Two processes taking r1 exclusively in turn, tokens growing.
std::vector<std::string> Alternating() {
  return {E("invoke", "n1/a", "acquire", "r1", "exclusive", 0),
          E("ok", "n1/a", "acquire", "r1", "exclusive", 10, 1),
          E("invoke", "n2/b", "acquire", "r1", "exclusive", 12),
          E("invoke", "n1/a", "release", "r1", "", 20),
          E("ok", "n1/a", "release", "r1", "", 22),
          E("ok", "n2/b", "acquire", "r1", "exclusive", 25, 2),
          E("invoke", "n2/b", "release", "r1", "", 40),
          E("ok", "n2/b", "release", "r1", "", 41)};
}

TEST(CheckerTest, TurnsWithGrowingTokensAreClean) {
  const Report r = CheckLines(Alternating());
  EXPECT_EQ(r.events, 8u);
  EXPECT_EQ(r.operations, 4u);
  EXPECT_EQ(r.grants, 2u);
  EXPECT_TRUE(r.violations.empty()) << r.violations[0].what;
}

TEST(CheckerTest, ConflictingHoldersAtOnceAreAViolationWithTheirLines) {
  std::vector<std::string> h = Alternating();
  h[5] = E("ok", "n2/b", "acquire", "r1", "exclusive", 15, 2);  // before a let go (20)
  const Report r = CheckLines(h);
  ASSERT_EQ(r.violations.size(), 1u);
  EXPECT_EQ(r.violations[0].kind, "mutual-exclusion");
  EXPECT_THAT(r.violations[0].what, HasSubstr("n2/b was granted exclusive of r1 (line 6) while "
                                              "n1/a held it exclusive (granted line 2, let go "
                                              "line 4)"));
  EXPECT_THAT(r.violations[0].lines, ElementsAre(2, 4, 6, 7));
}

TEST(CheckerTest, AnOverlapWithinTheClocksUncertaintyIsNotCalledOne) {
  std::vector<std::string> h = Alternating();
  // b's grant 3 ms before a's release, on clocks known to +- 2 ms each.
  h[3] = E("invoke", "n1/a", "release", "r1", "", 20, -1, 2);
  h[5] = E("ok", "n2/b", "acquire", "r1", "exclusive", 17, 2, 2);
  EXPECT_TRUE(CheckLines(h).violations.empty());
  h[5] = E("ok", "n2/b", "acquire", "r1", "exclusive", 15, 2, 2);  // 5 ms: beyond 4
  EXPECT_EQ(CheckLines(h).violations.size(), 1u);
}

TEST(CheckerTest, SharedModesFollowTheMatrix) {
  const std::vector<std::string> readers = {
      E("ok", "n1/a", "acquire", "r1", "shared-read", 10, 5),
      E("ok", "n2/b", "acquire", "r1", "shared-read", 11, 5),
      E("ok", "n3/c", "acquire", "r1", "shared-write", 12, 5)};
  // Two readers never conflict; a reader and a shared writer as the matrix
  // says (they do not mix in latchkey's matrix: PR and CW in DLM terms).
  EXPECT_TRUE(CheckLines({readers[0], readers[1]}).violations.empty());
  const bool compatible = ModesCompatible(LockMode::kSharedRead, LockMode::kSharedWrite);
  const Report r = CheckLines(readers);
  EXPECT_EQ(r.violations.empty(), compatible);
  const Report w = CheckLines({E("ok", "n1/a", "acquire", "r1", "shared-read", 10, 5),
                               E("ok", "n2/b", "acquire", "r1", "exclusive", 11, 6)});
  ASSERT_EQ(w.violations.size(), 1u);
  EXPECT_THAT(w.violations[0].what, HasSubstr("never let go"));
  // The same process converting is no conflict with itself.
  EXPECT_TRUE(CheckLines({E("ok", "n1/a", "acquire", "r1", "shared-read", 10, 5),
                          E("invoke", "n1/a", "convert", "r1", "exclusive", 12),
                          E("ok", "n1/a", "convert", "r1", "exclusive", 14, 6)})
                  .violations.empty());
}

TEST(CheckerTest, TokensThatDoNotGrowAreAViolation) {
  std::vector<std::string> h = Alternating();
  h[5] = E("ok", "n2/b", "acquire", "r1", "exclusive", 25, 1);  // the same token again
  Report r = CheckLines(h);
  ASSERT_EQ(r.violations.size(), 1u);
  EXPECT_EQ(r.violations[0].kind, "token-order");
  EXPECT_THAT(r.violations[0].what, HasSubstr("carries token 1, not above token 1"));
  EXPECT_THAT(r.violations[0].lines, ElementsAre(2, 6));
  // Shared grants may share a token, but not go below an exclusive one.
  EXPECT_TRUE(CheckLines({E("ok", "n1/a", "acquire", "r1", "shared-read", 10, 7),
                          E("ok", "n2/b", "acquire", "r1", "shared-read", 20, 7)})
                  .violations.empty());
  r = CheckLines({E("ok", "n1/a", "acquire", "r1", "exclusive", 10, 9),
                  E("invoke", "n1/a", "release", "r1", "", 15),
                  E("ok", "n2/b", "acquire", "r1", "shared-read", 20, 8)});
  ASSERT_EQ(r.violations.size(), 1u);
  EXPECT_EQ(r.violations[0].kind, "token-order");
  // Grants whose order the clocks cannot tell are not compared.
  EXPECT_TRUE(CheckLines({E("ok", "n1/a", "acquire", "r1", "exclusive", 10, 9, 3),
                          E("invoke", "n1/a", "release", "r1", "", 11, -1, 3),
                          E("ok", "n2/b", "acquire", "r1", "exclusive", 14, 8, 3)})
                  .violations.empty());
}

TEST(CheckerTest, NothingSucceedsOnALockAfterItWasLost) {
  Report r = CheckLines({E("ok", "n1/a", "acquire", "r1", "shared-read", 10, 3),
                         E("lost", "n1/a", "", "r1", "", 30),
                         E("invoke", "n1/a", "convert", "r1", "exclusive", 31),
                         E("ok", "n1/a", "convert", "r1", "exclusive", 32, 4)});
  ASSERT_EQ(r.violations.size(), 1u);
  EXPECT_EQ(r.violations[0].kind, "grant-after-loss");
  EXPECT_THAT(r.violations[0].lines, ElementsAre(2, 4));
  EXPECT_EQ(r.losses, 1u);
  // After a loss a new acquire is fine, and the lost holder no longer
  // counts as holding.
  r = CheckLines({E("ok", "n1/a", "acquire", "r1", "exclusive", 10, 3),
                  E("lost", "n1/a", "", "r1", "", 30),
                  E("ok", "n2/b", "acquire", "r1", "exclusive", 35, 4),
                  E("ok", "n1/a", "acquire", "r2", "exclusive", 36, 1)});
  EXPECT_TRUE(r.violations.empty()) << r.violations[0].what;
}

TEST(CheckerTest, UnknownOutcomesClaimNothingAndFailuresKeepTheOldMode) {
  // a's release timed out (info): from then on a is not taken to hold r1.
  EXPECT_TRUE(CheckLines({E("ok", "n1/a", "acquire", "r1", "exclusive", 10, 3),
                          E("invoke", "n1/a", "release", "r1", "", 20),
                          E("info", "n1/a", "release", "r1", "", 25),
                          E("ok", "n2/b", "acquire", "r1", "exclusive", 30, 4)})
                  .violations.empty());
  // A failed release leaves the lock held: b's grant conflicts.
  const Report r = CheckLines({E("ok", "n1/a", "acquire", "r1", "exclusive", 10, 3),
                               E("invoke", "n1/a", "release", "r1", "", 20),
                               E("fail", "n1/a", "release", "r1", "", 21),
                               E("ok", "n2/b", "acquire", "r1", "exclusive", 30, 4)});
  ASSERT_EQ(r.violations.size(), 1u);
  EXPECT_EQ(r.violations[0].kind, "mutual-exclusion");
}

TEST(CheckerTest, BadHistoriesNameTheLineAndTheFault) {
  const std::pair<std::string, std::string> cases[] = {
      {"{\"type\":\"ok\"", "line 2: not a JSON object"},
      {"[1,2]", "line 2: not a JSON object"},
      {E("begin", "p", "acquire", "r", "exclusive", 1), "unknown type \"begin\""},
      {E("ok", "p", "steal", "r", "exclusive", 1), "unknown op \"steal\""},
      {E("ok", "p", "acquire", "r", "greedy", 1), "line 2:"},
      {"{\"type\":\"ok\",\"process\":\"p\",\"resource\":\"r\",\"op\":\"release\"}",
       "\"time_ns\" must be a whole number"},
      {"{\"type\":\"ok\",\"process\":\"\",\"resource\":\"r\",\"op\":\"release\",\"time_ns\":1}",
       "\"process\" must be a non-empty string"},
      {"{\"type\":\"ok\",\"process\":\"p\",\"resource\":\"r\",\"op\":\"release\",\"time_ns\":1,"
       "\"uncertainty_ns\":-4}",
       "\"uncertainty_ns\" must be a whole number, 0 or more"},
      {"{\"type\":\"ok\",\"process\":\"p\",\"resource\":\"r\",\"op\":\"acquire\",\"mode\":"
       "\"exclusive\",\"time_ns\":1,\"token\":-1}",
       "\"token\" must be a whole number"},
  };
  for (const auto& [text, says] : cases) {
    std::stringstream in("\n" + text + "\n");  // a blank first line is skipped
    absl::StatusOr<std::vector<Event>> h = ReadHistory(in);
    ASSERT_FALSE(h.ok()) << text;
    EXPECT_THAT(std::string(h.status().message()), HasSubstr(says)) << text;
  }
  std::stringstream many(E("lost", "p", "", "r", "", 1) + "\n" + E("lost", "p", "", "r", "", 2));
  EXPECT_FALSE(ReadHistory(many, 1).ok());
}

TEST(CheckerTest, TheReportListsEveryViolationWithItsSlice) {
  std::vector<std::string> h = Alternating();
  h[5] = E("ok", "n2/b", "acquire", "r1", "exclusive", 15, 1);
  std::stringstream in;
  for (const std::string& l : h) in << l << "\n";
  absl::StatusOr<std::vector<Event>> events = ReadHistory(in);
  ASSERT_TRUE(events.ok());
  const nlohmann::json j = Check(*events).ToJson(*events);
  EXPECT_EQ(j["violations"], 2);  // an overlap, and a token that did not grow
  EXPECT_EQ(j["by_kind"]["mutual-exclusion"], 1);
  EXPECT_EQ(j["by_kind"]["token-order"], 1);
  EXPECT_EQ(j["details"][0]["slice"][0]["line"], 2);
  EXPECT_THAT(j["details"][0]["slice"][0]["event"].get<std::string>(), HasSubstr("\"n1/a\""));
}

// The program: exit 0, 1 or 2, and what it prints.
std::pair<int, std::string> Lockcheck(const std::string& args) {
  std::string err;
  std::unique_ptr<bazel::tools::cpp::runfiles::Runfiles> rf(
      bazel::tools::cpp::runfiles::Runfiles::CreateForTest(&err));
  const std::string bin = rf ? rf->Rlocation("latchkey/tools/lockcheck/lockcheck") : "";
  FILE* p = popen((bin + " " + args + " 2>&1").c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while (p != nullptr && (n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int st = p != nullptr ? pclose(p) : -1;
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

TEST(LockcheckTest, ExitsZeroOneOrTwoAndPrintsTheSlice) {
  const std::string dir = getenv("TEST_TMPDIR") ? getenv("TEST_TMPDIR") : "/tmp";
  const auto write = [&](const std::string& name, const std::vector<std::string>& lines) {
    std::ofstream f(dir + "/" + name);
    for (const std::string& l : lines) f << l << "\n";
    return dir + "/" + name;
  };
  auto [rc, out] = Lockcheck(write("clean.jsonl", Alternating()));
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("8 events, 4 operations, 2 grants, 0 losses, 0 unknown outcomes: 0 violations"));
  std::vector<std::string> h = Alternating();
  h[5] = E("ok", "n2/b", "acquire", "r1", "exclusive", 15, 2);
  std::tie(rc, out) = Lockcheck(write("overlap.jsonl", h));
  EXPECT_EQ(rc, 1) << out;
  EXPECT_THAT(out, HasSubstr("mutual-exclusion on r1"));
  EXPECT_THAT(out, HasSubstr("       4  {\"type\":\"invoke\",\"process\":\"n1/a\""));
  std::tie(rc, out) = Lockcheck("--json " + write("overlap2.jsonl", h));
  EXPECT_EQ(rc, 1);
  EXPECT_EQ(nlohmann::json::parse(out, nullptr, false)["violations"], 1) << out;
  std::tie(rc, out) = Lockcheck(write("bad.jsonl", {"{\"type\": 3}"}));
  EXPECT_EQ(rc, 2);
  EXPECT_THAT(out, HasSubstr("bad.jsonl: line 1: \"type\" must be a non-empty string"));
  std::tie(rc, out) = Lockcheck("/nonexistent/h.jsonl");
  EXPECT_EQ(rc, 2);
  EXPECT_THAT(out, HasSubstr("cannot read /nonexistent/h.jsonl"));
  std::tie(rc, out) = Lockcheck("");
  EXPECT_EQ(rc, 2);
  EXPECT_THAT(out, HasSubstr("usage: lockcheck"));
}

}  // namespace
}  // namespace lockcheck
}  // namespace latchkey
