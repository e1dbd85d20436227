// Which other processes of this node use a DLM lockspace: those with its
// misc device (/dev/misc/dlm_NAME) open. The DLM itself cannot say whose a
// lock is (the kernel's lock dump needs debugfs), so the backend asks /proc
// before it trusts a lockspace to be latchkey's alone, and names these
// processes when a refusal came from a holder that did not publish itself.
//
// Processes that opened the lockspace and exited (their orphan locks stay)
// and kernel users (gfs2) are not seen.
#ifndef LATCHKEY_BACKENDS_DLM_LOCKSPACE_USERS_H_
#define LATCHKEY_BACKENDS_DLM_LOCKSPACE_USERS_H_

#include <sys/types.h>

#include <string>
#include <vector>

namespace latchkey {
namespace dlmbe {

struct DeviceUser {
  pid_t pid = 0;
  std::string comm;
};

// Processes under `proc` (normally "/proc") other than `self` with a
// character device of number `rdev` open, in pid order. Processes whose fds
// cannot be read (gone, or not ours to read) are skipped.
std::vector<DeviceUser> DeviceUsers(dev_t rdev, pid_t self, const std::string& proc = "/proc");

// "NAME (pid N), NAME (pid M)" for a message; "" for none.
std::string DescribeUsers(const std::vector<DeviceUser>& users);

}  // namespace dlmbe
}  // namespace latchkey

#endif  // LATCHKEY_BACKENDS_DLM_LOCKSPACE_USERS_H_
