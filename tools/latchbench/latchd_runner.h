// A private latchd for latchbench's "through latchd" measurements: its own
// state directory, socket and lock directory under a directory latchbench
// owns, stopped by its PID when the runner goes.
#ifndef LATCHKEY_TOOLS_LATCHBENCH_LATCHD_RUNNER_H_
#define LATCHKEY_TOOLS_LATCHBENCH_LATCHD_RUNNER_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace latchkey {
namespace bench {

struct LatchdSetup {
  std::string binary;                    // the latchd program
  std::string dir;                       // exists; config, state, locks, log go here
  std::vector<std::string> plugin_path;  // latchd's plugin_path
  std::vector<std::string> backends;     // latchd's backends, the first the default
  // Backends that exclude nobody (nop), which latchd loads only when named
  // in benchmark_backends.
  std::vector<std::string> benchmark_backends;
};

class PrivateLatchd {
 public:
  // Writes DIR/latchd.conf, starts latchd on it (stdout and stderr to
  // DIR/latchd.log) and waits until it answers `hello` (10 s at most). The
  // error carries the tail of its log.
  static absl::StatusOr<std::unique_ptr<PrivateLatchd>> Start(const LatchdSetup& setup);
  ~PrivateLatchd();  // SIGTERM, SIGKILL after 5 s, reaped; the socket directory removed
  PrivateLatchd(const PrivateLatchd&) = delete;
  PrivateLatchd& operator=(const PrivateLatchd&) = delete;

  pid_t pid() const { return pid_; }
  // In a short directory of its own (/tmp/latchbench-sock.XXXXXX): Unix
  // socket paths are limited to 107 bytes.
  std::string socket() const { return socket_dir_ + "/latchd.sock"; }
  std::string LogTail(size_t lines = 15) const;
  // latchd's answer to `hello` (protocol version, backends).
  const nlohmann::json& hello() const { return hello_; }

 private:
  PrivateLatchd() = default;
  pid_t pid_ = -1;
  std::string dir_;
  std::string socket_dir_;
  nlohmann::json hello_;
};

}  // namespace bench
}  // namespace latchkey

#endif  // LATCHKEY_TOOLS_LATCHBENCH_LATCHD_RUNNER_H_
