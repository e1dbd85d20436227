#include "tools/latchbench/remote_shell.h"

#include <stdio.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace latchkey {
namespace bench {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Tmp() {
  const char* t = getenv("TEST_TMPDIR");
  return t != nullptr ? t : "/tmp";
}

TEST(RemoteShellTest, TheTemplateNamesTheHostAndTheCommandIsOneLastArgument) {
  absl::StatusOr<RemoteShell> sh = RemoteShell::Parse("ssh  -o BatchMode=yes {} ");
  ASSERT_TRUE(sh.ok()) << sh.status();
  EXPECT_THAT(sh->Argv("root@b", "echo 'a b'"),
              ElementsAre("ssh", "-o", "BatchMode=yes", "root@b", "echo 'a b'"));
  sh = RemoteShell::Parse("run-in {}.lab --node={}");
  EXPECT_THAT(sh->Argv("n2", "x"), ElementsAre("run-in", "n2.lab", "--node=n2", "x"));
  EXPECT_THAT(RemoteShell::Parse("  ").status().message(), HasSubstr("is empty"));
}

TEST(RemoteShellTest, RunsWithStatusOutputErrorAndStdin) {
  absl::StatusOr<RemoteShell> sh = RemoteShell::Parse("sh -c");
  ASSERT_TRUE(sh.ok());
  absl::StatusOr<RemoteShell::Result> r =
      sh->Run("ignored", "echo out; echo err >&2; exit 3", absl::Seconds(30));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 3);
  EXPECT_EQ(r->out, "out\n");
  EXPECT_EQ(r->err, "err\n");
  const std::string in = Tmp() + "/stdin";
  std::ofstream(in) << "from the file\n";
  r = sh->Run("h", "cat", absl::Seconds(30), in);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->out, "from the file\n");
  r = sh->Run("h", "cat", absl::Seconds(30));  // no stdin file: /dev/null
  EXPECT_EQ(r->out, "");
  EXPECT_THAT(sh->Run("h", "true", absl::Seconds(5), Tmp() + "/none").status().message(),
              HasSubstr("cannot open"));
  absl::StatusOr<RemoteShell> missing = RemoteShell::Parse("/nonexistent/rsh {}");
  r = missing->Run("h", "true", absl::Seconds(5));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 127);
  EXPECT_THAT(r->err, HasSubstr("cannot run /nonexistent/rsh"));
}

TEST(RemoteShellTest, ATimeoutKillsTheWholeGroup) {
  absl::StatusOr<RemoteShell> sh = RemoteShell::Parse("sh -c");
  const std::string mark = Tmp() + "/child-pid";
  const absl::Time start = absl::Now();
  absl::StatusOr<RemoteShell::Result> r =
      sh->Run("h", absl::StrCat("sleep 60 & echo $! > ", mark, "; wait"), absl::Seconds(1));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 124);
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
  int pid = 0;
  std::ifstream(mark) >> pid;
  ASSERT_GT(pid, 0);
  usleep(200000);
  // The backgrounded sleep went with its group (gone, or a zombie of init).
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  std::getline(stat, line);
  EXPECT_TRUE(line.empty() || line.find(") Z ") != std::string::npos) << line;
}

TEST(RemoteShellTest, RunAllRunsTheCommandsAtOnce) {
  absl::StatusOr<RemoteShell> sh = RemoteShell::Parse("sh -c");
  const std::string f = Tmp() + "/meet";
  remove(f.c_str());
  // Each waits for the other's mark: only concurrent runs both finish.
  absl::StatusOr<std::vector<RemoteShell::Result>> r = sh->RunAll(
      {{"a", absl::StrCat("touch ", f, ".a; while [ ! -e ", f, ".b ]; do sleep 0.05; done; echo a")},
       {"b", absl::StrCat("touch ", f, ".b; while [ ! -e ", f, ".a ]; do sleep 0.05; done; echo b")}},
      absl::Seconds(20));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0].status, 0);
  EXPECT_EQ((*r)[0].out, "a\n");
  EXPECT_EQ((*r)[1].out, "b\n");
}

TEST(RemoteShellTest, QuotingSurvivesTheShell) {
  absl::StatusOr<RemoteShell> sh = RemoteShell::Parse("sh -c");
  const std::string nasty = "it's $HOME `x` \"q\" ; rm -rf /nothing";
  absl::StatusOr<RemoteShell::Result> r =
      sh->Run("h", absl::StrCat("printf %s ", ShellQuote(nasty)), absl::Seconds(10));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->out, nasty);
}

}  // namespace
}  // namespace bench
}  // namespace latchkey
