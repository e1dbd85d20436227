// Commands on latchbench's real hosts (latchbench run --hosts): a command
// template such as "ssh -o BatchMode=yes {}" (split on spaces, every "{}"
// replaced by the host) followed by the command as one argument, which the
// host's shell runs. A template without "{}" runs every host's commands the
// same way ("sh -c": this machine, for tests and for latchds that play
// hosts on one machine).
//
//   absl::StatusOr<RemoteShell> sh = RemoteShell::Parse("ssh -o BatchMode=yes {}");
//   absl::StatusOr<RemoteShell::Result> r = sh->Run("node1", "uname -r", absl::Seconds(30));
#ifndef LATCHKEY_TOOLS_LATCHBENCH_REMOTE_SHELL_H_
#define LATCHKEY_TOOLS_LATCHBENCH_REMOTE_SHELL_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace latchkey {
namespace bench {

class RemoteShell {
 public:
  struct Result {
    int status = 0;  // the command's exit status; 124 timed out, 128+N killed by signal N
    std::string out, err;
  };

  // An error for an empty template.
  static absl::StatusOr<RemoteShell> Parse(const std::string& tmpl);

  std::vector<std::string> Argv(const std::string& host, const std::string& command) const;
  // Runs `command` on `host` (its stdin: `stdin_file`, or /dev/null), in a
  // process group of its own that is killed when `timeout` passes.
  absl::StatusOr<Result> Run(const std::string& host, const std::string& command,
                             absl::Duration timeout, const std::string& stdin_file = "") const;
  // Several (host, command) at once; waits for all of them.
  absl::StatusOr<std::vector<Result>> RunAll(
      const std::vector<std::pair<std::string, std::string>>& commands,
      absl::Duration timeout) const;
  const std::string& tmpl() const { return tmpl_; }

 private:
  std::string tmpl_;
  std::vector<std::string> words_;
};

// `s` quoted for a POSIX shell: '...' with every ' written '\''.
std::string ShellQuote(const std::string& s);

}  // namespace bench
}  // namespace latchkey

#endif  // LATCHKEY_TOOLS_LATCHBENCH_REMOTE_SHELL_H_
