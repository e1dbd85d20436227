// Whether an NFS server still honours the OFD locks a descriptor carries.
//
// An NFSv4 client whose lease expired (its server was unreachable for
// longer than the lease, and another client then asked for a conflicting
// lock) has lost its locks: the server gave them away. The kernel notices
// when it reaches the server again ("NFS: SERVER: lost N locks"), marks the
// lock state lost, and from then on refuses I/O under that lock state with
// EIO, while fcntl still reports the lock as held locally. So a read
// through the descriptor, bypassing the page cache, tells: EIO means lost.
// Seen in the cluster lab (Linux 6.12 client and server, docs/lab.md).
#ifndef LATCHKEY_BACKENDS_POSIXFD_NFS_LOCK_PROBE_H_
#define LATCHKEY_BACKENDS_POSIXFD_NFS_LOCK_PROBE_H_

#include <string>

namespace latchkey {
namespace posixfd {

// True when `fd` is a file on NFS (statfs magic).
bool OnNfs(int fd);

enum class NfsLockState {
  kHeld,     // the read went through: the server knows our lock state
  kLost,     // EIO: the client marked the locks of this descriptor lost
  kUnknown,  // the read failed otherwise (`why` says how); try again later
};

// Reads the first 4 KiB through `fd` (its open file description, which
// owns the OFD locks) with O_DIRECT set for the read and restored after.
// Blocks as long as the NFS mount does (a hard mount during an outage).
NfsLockState ProbeNfsLocks(int fd, std::string* why);

}  // namespace posixfd
}  // namespace latchkey

#endif  // LATCHKEY_BACKENDS_POSIXFD_NFS_LOCK_PROBE_H_
