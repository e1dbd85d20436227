// A lock held by another process (tests/contract/lock_holder), for
// two-process contention and for killing a holder.
#ifndef LATCHKEY_TESTS_CONTRACT_HOLDER_PROCESS_H_
#define LATCHKEY_TESTS_CONTRACT_HOLDER_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace latchkey {
namespace contract {

class HolderProcess {
 public:
  // Runs `binary args...`, reads its first line: "granted TOKEN" gives a
  // HolderProcess; "error ..." gives that error.
  static absl::StatusOr<std::unique_ptr<HolderProcess>> Start(
      const std::string& binary, const std::vector<std::string>& args);
  ~HolderProcess();

  pid_t pid() const { return pid_; }
  uint64_t token() const { return token_; }

  // Asks it to release (closes its stdin) and waits for it to exit 0.
  absl::Status Release();
  // SIGKILL, then reaps it.
  void Kill();

 private:
  HolderProcess() = default;
  pid_t pid_ = -1;
  int to_child_ = -1;
  int from_child_ = -1;
  uint64_t token_ = 0;
};

}  // namespace contract
}  // namespace latchkey

#endif  // LATCHKEY_TESTS_CONTRACT_HOLDER_PROCESS_H_
