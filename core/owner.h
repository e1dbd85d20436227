// Owners: who holds a lock.
//
// An owner is usually a VM: its uuid and name, the pid of the process that
// embodies it (QEMU), that process's start time and the host it runs on. The
// start time makes pid reuse detectable: a pid whose start time differs is
// another process.
//
// Thread safety: Owner is a plain value; the functions are thread-safe.
#ifndef LATCHKEY_CORE_OWNER_H_
#define LATCHKEY_CORE_OWNER_H_

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace latchkey {

inline constexpr size_t kMaxOwnerNameLen = 128;
inline constexpr size_t kMaxHostNameLen = 64;
// The largest pid Linux can hand out (PID_MAX_LIMIT on 64-bit).
inline constexpr int64_t kMaxPid = 4194304;

struct Owner {
  std::string uuid;  // 36-character RFC 4122 text form, lower or upper case.
  std::string name;  // 1..128 printable characters.
  int64_t pid = 0;   // > 0.
  // Start time of `pid` in clock ticks since boot (/proc/PID/stat field 22);
  // 0 when unknown.
  uint64_t start_time = 0;
  std::string host;  // 1..64 characters; the host name.

  // OK when every field satisfies the rules above; otherwise
  // InvalidArgument naming the field.
  absl::Status Validate() const;

  // "vm1 (uuid ..., pid 123 on host h1)" for messages.
  std::string Describe() const;
};

// Start time of `pid` (field 22 of /proc/PID/stat). NotFound when there is
// no such process.
absl::StatusOr<uint64_t> ProcessStartTime(pid_t pid);

// What latchd needs to know of a process before it may act on it.
struct ProcessInfo {
  uint64_t start_time = 0;  // /proc/PID/stat field 22
  char state = '?';         // field 3: 'R', 'S', 'Z' (zombie), ...
  pid_t tgid = 0;           // the process a thread belongs to; == pid for a process
  uid_t real_uid = 0, effective_uid = 0, saved_uid = 0;
  bool exited() const { return state == 'Z' || state == 'X' || state == 'x'; }
};

// Reads /proc/PID/stat and /proc/PID/status. NotFound when there is no such
// process or thread.
absl::StatusOr<ProcessInfo> ReadProcessInfo(pid_t pid);

// True when `pid` is running and, if `start_time` is non-zero, started at
// that time (i.e. the pid has not been reused).
bool ProcessIsAlive(pid_t pid, uint64_t start_time);

// This machine's host name (gethostname), or "localhost".
std::string LocalHostName();

// An Owner for the calling process: the given uuid and name, getpid(), its
// start time and the local host name.
Owner OwnerForThisProcess(const std::string& uuid, const std::string& name);

// A random RFC 4122 version-4 uuid, from /dev/urandom.
std::string RandomUuid();

}  // namespace latchkey

#endif  // LATCHKEY_CORE_OWNER_H_
