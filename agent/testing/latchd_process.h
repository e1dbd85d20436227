// A private latchd for tests and benchmarks: its own directory, config,
// socket, journal and posixfd lock directory, started as a real process and
// always stopped by its PID.
//
// Example:
//   LatchdProcess d(TempDir("latchd"));
//   ASSERT_OK(d.Start());
//   absl::StatusOr<LatchdClient> c = d.Connect();
//   ...
//   d.Kill(SIGKILL);   // crash it
//   ASSERT_OK(d.Start());  // and restart: it adopts from the journal
//
// Thread safety: thread-compatible.
#ifndef LATCHKEY_AGENT_TESTING_LATCHD_PROCESS_H_
#define LATCHKEY_AGENT_TESTING_LATCHD_PROCESS_H_

#include <signal.h>
#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/client.h"
#include "core/owner.h"

namespace latchkey {
namespace testing {

// The path of `path` (relative to the workspace) among the runfiles.
std::string Runfile(const std::string& path);

// A fresh directory under $TEST_TMPDIR (or /tmp) named after `tag`.
std::string TempDir(const std::string& tag);

// A child process that only sleeps: an owner's "VM". Killed by the caller.
pid_t SpawnSleeper();

// The state letter of `pid` (/proc/PID/stat: 'S', 'T' stopped, 'Z'
// zombie), or '?' when there is no such process.
char ProcessState(pid_t pid);

// Kills `pid` with `sig` and reaps it (when it is our child).
void KillAndReap(pid_t pid, int sig = SIGKILL);

// One owner process (a sleeping child) with a uuid, killed when it goes.
struct Vm {
  std::string name;
  std::string uuid;
  pid_t pid = -1;
  explicit Vm(std::string n) : name(std::move(n)), uuid(RandomUuid()), pid(SpawnSleeper()) {}
  ~Vm() { KillAndReap(pid); }
  Vm(const Vm&) = delete;
  Vm& operator=(const Vm&) = delete;
  // The "owner" object of latchd's register request.
  nlohmann::json Owner() const { return {{"uuid", uuid}, {"name", name}, {"pid", pid}}; }
};

class LatchdProcess {
 public:
  // `dir` must exist. `extra_config` is appended to the generated
  // latchd.conf (state_dir, socket, posixfd lock dir, log settings).
  // `lock_dir` replaces the posixfd lock directory (DIR/locks), e.g. one
  // shared by several latchds playing hosts.
  explicit LatchdProcess(std::string dir, std::string extra_config = "",
                         std::string lock_dir = "");
  ~LatchdProcess();  // SIGKILLs a running latchd
  LatchdProcess(const LatchdProcess&) = delete;
  LatchdProcess& operator=(const LatchdProcess&) = delete;

  // Starts latchd with `env` (NAME=VALUE) added to the environment and
  // waits until it answers `hello` (at most `timeout`). The error carries
  // the tail of its log.
  absl::Status Start(const std::vector<std::string>& env = {},
                     absl::Duration timeout = absl::Seconds(20));
  // Sends `sig` and waits for the process to end; returns its wait status.
  int Kill(int sig = SIGKILL);
  // Waits (up to `timeout`) for latchd to exit by itself (e.g. a fault
  // point); true when it did.
  bool WaitExit(absl::Duration timeout, int* wait_status = nullptr);
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

  absl::StatusOr<LatchdClient> Connect(absl::Duration timeout = absl::Seconds(10)) const;

  const std::string& dir() const { return dir_; }
  // The socket lives in a short private directory of its own: Unix socket
  // paths are limited to 107 bytes, and Bazel's test directories are long.
  std::string socket() const { return socket_dir_ + "/latchd.sock"; }
  const std::string& socket_dir() const { return socket_dir_; }
  std::string state_dir() const { return dir_ + "/state"; }
  std::string journal() const { return dir_ + "/state/journal.db"; }
  const std::string& lock_dir() const { return lock_dir_; }
  std::string config() const { return dir_ + "/latchd.conf"; }
  std::string log_path() const { return dir_ + "/latchd.log"; }
  std::string Log() const;  // the whole log so far

  // The directory holding latchkey-posixfd.so, for in-process backends
  // that must see the same plugin as latchd ($LATCHKEY_PLUGIN_DIR outside
  // Bazel; latchd itself: $LATCHKEY_LATCHD).
  static std::string PluginDir();
  // The directory holding latchkey-sanlock.so (also on latchd's plugin_path).
  static std::string SanlockPluginDir();
  // The directory holding latchkey-nop.so (also on latchd's plugin_path;
  // latchd loads it only when benchmark_backends names it).
  static std::string NopPluginDir();
  static std::string BinaryPath();

 private:
  std::string dir_;
  std::string socket_dir_;
  std::string lock_dir_;
  pid_t pid_ = -1;
};

}  // namespace testing
}  // namespace latchkey

#endif  // LATCHKEY_AGENT_TESTING_LATCHD_PROCESS_H_
