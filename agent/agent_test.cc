// The Agent in process: what needs no socket to show.
#include "agent/agent.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/testing/latchd_process.h"
#include "gtest/gtest.h"

namespace latchkey {
namespace {

using testing::LatchdProcess;
using testing::SpawnSleeper;
using testing::TempDir;

// Defect 5: ~Agent reset the owner watch while the watch thread could
// still be in an exit callback that calls back into it (SIGSEGV on the
// error-exit path, 1 run in 3). Destroying an agent while owners are dying
// must be safe every time.
TEST(AgentTest, DestroyingTheAgentWhileOwnersExitIsSafe) {
  const std::string dir = TempDir("agent");
  for (int round = 0; round < 30; ++round) {
    AgentOptions o;
    o.plugin_path = {LatchdProcess::PluginDir()};
    absl::StatusOr<Config> cfg = Config::ParseText(
        absl::StrCat("posixfd_lock_dir = \"", dir, "/locks\""), "<test>");
    ASSERT_TRUE(cfg.ok());
    o.backend_config = *cfg;
    o.journal_path = absl::StrCat(dir, "/journal-", round, ".db");
    absl::StatusOr<std::unique_ptr<Agent>> a = Agent::Start(o);
    ASSERT_TRUE(a.ok()) << a.status();
    std::vector<pid_t> pids;
    for (int i = 0; i < 8; ++i) {
      const pid_t pid = SpawnSleeper();
      pids.push_back(pid);
      Owner owner;
      owner.uuid = RandomUuid();
      owner.name = absl::StrCat("vm", i);
      owner.pid = pid;
      ASSERT_TRUE((*a)->Register(owner, std::nullopt, std::nullopt, Caller::Internal()).ok());
      ResourceSpec spec;
      spec.kind = ResourceKind::kLease;
      spec.target = absl::StrCat("l", round, "-", i);
      ASSERT_TRUE((*a)->Acquire(owner.uuid, {spec}, {}, std::nullopt, Caller::Internal()).ok());
    }
    // Kill them all and destroy the agent while their exits are handled.
    for (pid_t pid : pids) kill(pid, SIGKILL);
    if (round % 2 == 1) usleep(200 * (round % 7));
    a->reset();
    for (pid_t pid : pids) waitpid(pid, nullptr, 0);
  }
}

}  // namespace
}  // namespace latchkey
