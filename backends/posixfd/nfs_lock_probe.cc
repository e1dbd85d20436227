#include "backends/posixfd/nfs_lock_probe.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <memory>

namespace latchkey {
namespace posixfd {

bool OnNfs(int fd) {
  struct statfs st;
  return fstatfs(fd, &st) == 0 && st.f_type == NFS_SUPER_MAGIC;
}

NfsLockState ProbeNfsLocks(int fd, std::string* why) {
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0) {
    *why = std::string("fcntl(F_GETFL): ") + strerror(errno);
    return NfsLockState::kUnknown;
  }
  // NFS direct I/O needs no alignment; an aligned buffer costs nothing.
  void* raw = nullptr;
  if (posix_memalign(&raw, 4096, 4096) != 0) {
    *why = "out of memory";
    return NfsLockState::kUnknown;
  }
  std::unique_ptr<void, decltype(&free)> buf(raw, &free);
  const bool direct = (flags & O_DIRECT) == 0 && fcntl(fd, F_SETFL, flags | O_DIRECT) == 0;
  // A whole aligned block: local file systems refuse smaller direct reads.
  const ssize_t n = pread(fd, buf.get(), 4096, 0);
  const int err = errno;
  if (direct) fcntl(fd, F_SETFL, flags);
  if (n >= 0) return NfsLockState::kHeld;
  *why = std::string("read through the lock's descriptor: ") + strerror(err);
  return err == EIO ? NfsLockState::kLost : NfsLockState::kUnknown;
}

}  // namespace posixfd
}  // namespace latchkey
