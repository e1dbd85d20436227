// latchbench --hosts over ssh, for real: a private sshd on 127.0.0.1 and two
// latchds of this machine playing hosts. Outside Bazel's sandbox (sshd's
// privilege separation calls setgroups, which the sandbox's user namespace
// refuses).
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "agent/testing/latchd_process.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tools/latchbench/bench_testing.h"

namespace {

using json = nlohmann::json;
using latchkey::bench::testing::Latch;
using latchkey::bench::testing::NodeCopiesLeft;
using latchkey::bench::testing::ProcessesMentioning;
using latchkey::bench::testing::Ran;
using latchkey::bench::testing::Tmp;

// A private sshd on 127.0.0.1 (its own host key, config, authorized key
// and port), started as a child and stopped by its PID: the remote shell
// latchbench uses by default, for real.
class PrivateSshd {
 public:
  explicit PrivateSshd(const std::string& dir) : dir_(dir) {}
  ~PrivateSshd() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
  }
  // An empty string when it runs, else why not.
  std::string Start() {
    port_ = 30000 + getpid() % 20000;
    const std::string keys = absl::StrCat(
        "ssh-keygen -q -t ed25519 -N '' -f ", dir_, "/host_key && ssh-keygen -q -t ed25519 -N '' -f ",
        dir_, "/id && cp ", dir_, "/id.pub ", dir_, "/authorized_keys");
    if (system(keys.c_str()) != 0) return "ssh-keygen failed";
    if (access("/run/sshd", F_OK) != 0) {
      return "sshd's privilege separation directory /run/sshd is missing: run scripts/install-deps";
    }
    std::ofstream(dir_ + "/sshd_config")
        << "Port " << port_ << "\nListenAddress 127.0.0.1\nHostKey " << dir_ << "/host_key\n"
        << "AuthorizedKeysFile " << dir_ << "/authorized_keys\nPidFile " << dir_ << "/sshd.pid\n"
        << "StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        << "PermitRootLogin prohibit-password\nLogLevel ERROR\n";
    pid_ = fork();
    if (pid_ == 0) {
      const std::string conf = dir_ + "/sshd_config", log = dir_ + "/sshd.log";
      freopen(log.c_str(), "w", stderr);
      execl("/usr/sbin/sshd", "/usr/sbin/sshd", "-D", "-e", "-f", conf.c_str(),
            static_cast<char*>(nullptr));
      _exit(127);
    }
    // Until it answers.
    for (int i = 0; i < 100; ++i) {
      if (system(absl::StrCat(Rsh("root@127.0.0.1"), " true 2>/dev/null").c_str()) == 0) return "";
      usleep(100000);
    }
    std::ifstream in(dir_ + "/sshd.log");
    std::stringstream log;
    log << in.rdbuf();
    return "sshd did not answer: " + log.str();
  }
  // The ssh command for `host`, without the remote command.
  std::string Rsh(const std::string& host) const {
    return absl::StrCat("ssh -p ", port_, " -i ", dir_, "/id -o BatchMode=yes ",
                        "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null ",
                        "-o LogLevel=ERROR ", host);
  }

 private:
  std::string dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

// The same over ssh: the binary copied through ssh's stdin, the clock
// server left running in the background and killed later, the hand-off
// loops' logs printed back, each through a real sshd.
TEST(LatchbenchTest, RealHostsAreReachedOverSsh) {
  using latchkey::testing::LatchdProcess;
  using latchkey::testing::TempDir;
  if (geteuid() != 0) GTEST_SKIP() << "a private sshd logs in only as root here";
  PrivateSshd sshd(TempDir("sshd"));
  const std::string why = sshd.Start();
  ASSERT_EQ(why, "");
  const std::string locks = TempDir("ssh-locks");
  const std::string conf = "backends = [ \"posixfd\" ]\n";
  LatchdProcess a(TempDir("ssh-a"), conf, locks), b(TempDir("ssh-b"), conf, locks);
  ASSERT_TRUE(a.Start().ok());
  ASSERT_TRUE(b.Start().ok());
  const std::string out = Tmp() + "/ssh.json";
  const int clock_port = 20000 + (getpid() + 7) % 20000;
  // {} twice: the host is 127.0.0.1 for ssh and for host 2's clock probe.
  Ran r = Latch(absl::StrCat("run --hosts=root@127.0.0.1=", a.socket(), ",root@127.0.0.1=",
                             b.socket(), " --rsh='", sshd.Rsh("{}"), "' --scenarios=uncontended,handoff "
                             "--runs=1 --cycles=10 --warmup=1 --handoffs=6 --handoff-hold-ms=5 "
                             "--clock-port=", clock_port, " --out=", out));
  ASSERT_EQ(r.status, 0) << r.out;
  std::ifstream in(out);
  std::stringstream s;
  s << in.rdbuf();
  const json doc = json::parse(s.str(), nullptr, false);
  ASSERT_FALSE(doc.is_discarded());
  EXPECT_EQ(doc["hosts"]["rsh"].get<std::string>().rfind("ssh -p ", 0), 0u);
  ASSERT_EQ(doc["hosts"]["hosts"].size(), 2u);
  EXPECT_EQ(doc["hosts"]["hosts"][0]["hello"]["backends"], json({"posixfd"}));
  EXPECT_TRUE(doc["hosts"]["clocks_after"]["hosts"].is_array()) << doc["hosts"].dump();
  int uncontended = 0, handoff = 0;
  for (const json& res : doc["results"]) {
    if (res["scenario"] == "uncontended") {
      ++uncontended;
      EXPECT_EQ(res["runs"][0]["samples"].size(), 10u);
    } else {
      ++handoff;
      EXPECT_GE(res["runs"][0]["samples"].size(), 1u);
    }
  }
  EXPECT_EQ(uncontended, 3);
  EXPECT_EQ(handoff, 1);
  EXPECT_EQ(NodeCopiesLeft(), "");
  // No clock server left behind (it ran under sshd, not under latchbench);
  // a command line's arguments are NUL-separated.
  EXPECT_EQ(ProcessesMentioning(absl::StrCat("clock-serve", std::string(1, '\0'), clock_port)), 0);
}

}  // namespace
