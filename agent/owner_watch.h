// Watching owner processes: one thread, one epoll set of pidfds.
//
// A pidfd becomes readable when its process exits, and a pidfd always
// refers to the process it was opened for, so neither exit detection nor
// signalling can hit a process that merely reuses the pid.
//
// Thread safety: every method is thread-safe. Callbacks run on the watch
// thread with no lock of this class held, so they may call back into it.
#ifndef LATCHKEY_AGENT_OWNER_WATCH_H_
#define LATCHKEY_AGENT_OWNER_WATCH_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace latchkey {

// Opens a pidfd for `pid` and checks that the process it refers to started
// at `start_time` (when non-zero). NotFound when no such process runs (or
// the pid now belongs to another process).
absl::StatusOr<int> OpenPidfd(pid_t pid, uint64_t start_time);

class OwnerWatch {
 public:
  // Called once when a watched process exits.
  using ExitFn = std::function<void(const std::string& uuid, uint64_t generation)>;

  static absl::StatusOr<std::unique_ptr<OwnerWatch>> Start(ExitFn on_exit);
  ~OwnerWatch();  // Stop(), then closes every pidfd.

  // Stops the watch thread and waits for it, including an on_exit call in
  // progress; no callback runs after it returns. Idempotent. The watch
  // stays usable (Unwatch, Signal) until destroyed, so a callback that
  // calls back into it while Stop waits is safe. Must not be called from
  // a callback.
  void Stop();

  // Watches the process behind `pidfd` (ownership passes to the watch) for
  // owner `uuid`; replaces an earlier watch of `uuid`. `generation` is
  // handed back to on_exit so a stale notice can be told from a current one.
  absl::Status Watch(const std::string& uuid, uint64_t generation, int pidfd);
  // The three below act only while `uuid` is watched with `generation`: a
  // uuid registered again (a restarted VM) is another process, which a
  // late call about the old one must never touch.
  void Unwatch(const std::string& uuid, uint64_t generation);

  // Sends `sig` to the watched process. NotFound when not watched.
  absl::Status Signal(const std::string& uuid, uint64_t generation, int sig);

  // Sends SIGKILL to the watched process after `delay`, unless it has
  // exited or been unwatched by then.
  void KillAfter(const std::string& uuid, uint64_t generation, absl::Duration delay);

  size_t size() const;

 private:
  struct Entry {
    int pidfd = -1;
    uint64_t generation = 0;
    uint64_t id = 0;  // epoll cookie
  };

  OwnerWatch(ExitFn on_exit, int epoll_fd, int wake_fd);
  void Run();
  void Wake();

  const ExitFn on_exit_;
  const int epoll_fd_;
  const int wake_fd_;
  std::thread thread_;

  mutable std::mutex mu_;
  bool stopping_ = false;
  uint64_t next_id_ = 1;
  std::map<std::string, Entry> entries_;
  std::map<uint64_t, std::string> by_id_;
  std::multimap<absl::Time, std::pair<std::string, uint64_t>> kills_;  // deadline -> uuid, id
};

}  // namespace latchkey

#endif  // LATCHKEY_AGENT_OWNER_WATCH_H_
