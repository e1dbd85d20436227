#include "agent/owner_watch.h"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/owner.h"

namespace latchkey {

absl::StatusOr<int> OpenPidfd(pid_t pid, uint64_t start_time) {
  const int fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) {
    if (errno == ESRCH) return absl::NotFoundError(absl::StrCat("no process ", pid));
    return absl::InternalError(absl::StrCat("pidfd_open(", pid, "): ", strerror(errno)));
  }
  // The pidfd pins whichever process had the pid at open time; checking the
  // start time afterwards proves it is the one the caller means.
  if (start_time != 0) {
    absl::StatusOr<uint64_t> now = ProcessStartTime(pid);
    if (!now.ok() || *now != start_time) {
      close(fd);
      return absl::NotFoundError(absl::StrCat(
          "process ", pid, " started at ", start_time, " is gone",
          now.ok() ? absl::StrCat(" (the pid now belongs to a process started at ", *now, ")")
                   : std::string()));
    }
  }
  return fd;
}

absl::StatusOr<std::unique_ptr<OwnerWatch>> OwnerWatch::Start(ExitFn on_exit) {
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) return absl::InternalError(absl::StrCat("epoll_create1: ", strerror(errno)));
  const int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    close(ep);
    return absl::InternalError(absl::StrCat("eventfd: ", strerror(errno)));
  }
  epoll_event ev = {};
  ev.events = EPOLLIN;
  ev.data.u64 = 0;  // id 0 is the wake fd
  epoll_ctl(ep, EPOLL_CTL_ADD, wake, &ev);
  std::unique_ptr<OwnerWatch> w(new OwnerWatch(std::move(on_exit), ep, wake));
  w->thread_ = std::thread([p = w.get()] { p->Run(); });
  return w;
}

OwnerWatch::OwnerWatch(ExitFn on_exit, int epoll_fd, int wake_fd)
    : on_exit_(std::move(on_exit)), epoll_fd_(epoll_fd), wake_fd_(wake_fd) {}

void OwnerWatch::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
  }
  Wake();
  if (thread_.joinable()) thread_.join();
}

OwnerWatch::~OwnerWatch() {
  Stop();
  for (auto& [uuid, e] : entries_) close(e.pidfd);
  close(wake_fd_);
  close(epoll_fd_);
}

void OwnerWatch::Wake() {
  const uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
}

absl::Status OwnerWatch::Watch(const std::string& uuid, uint64_t generation, int pidfd) {
  std::lock_guard<std::mutex> l(mu_);
  auto old = entries_.find(uuid);
  if (old != entries_.end()) {
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, old->second.pidfd, nullptr);
    close(old->second.pidfd);
    by_id_.erase(old->second.id);
    entries_.erase(old);
  }
  Entry e{pidfd, generation, next_id_++};
  epoll_event ev = {};
  ev.events = EPOLLIN;
  ev.data.u64 = e.id;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, pidfd, &ev) != 0) {
    const int err = errno;
    close(pidfd);
    return absl::InternalError(absl::StrCat("epoll_ctl(pidfd): ", strerror(err)));
  }
  by_id_[e.id] = uuid;
  entries_[uuid] = e;
  return absl::OkStatus();
}

void OwnerWatch::Unwatch(const std::string& uuid, uint64_t generation) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = entries_.find(uuid);
  if (it == entries_.end() || it->second.generation != generation) return;
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, it->second.pidfd, nullptr);
  close(it->second.pidfd);
  by_id_.erase(it->second.id);
  entries_.erase(it);
}

absl::Status OwnerWatch::Signal(const std::string& uuid, uint64_t generation, int sig) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = entries_.find(uuid);
  if (it == entries_.end() || it->second.generation != generation) {
    return absl::NotFoundError(absl::StrCat("owner ", uuid, " has no watched process"));
  }
  if (syscall(SYS_pidfd_send_signal, it->second.pidfd, sig, nullptr, 0) != 0) {
    return absl::InternalError(absl::StrCat("pidfd_send_signal(", strsignal(sig),
                                            "): ", strerror(errno)));
  }
  return absl::OkStatus();
}

void OwnerWatch::KillAfter(const std::string& uuid, uint64_t generation, absl::Duration delay) {
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = entries_.find(uuid);
    if (it == entries_.end() || it->second.generation != generation) return;
    kills_.emplace(absl::Now() + delay, std::make_pair(uuid, it->second.id));
  }
  Wake();
}

size_t OwnerWatch::size() const {
  std::lock_guard<std::mutex> l(mu_);
  return entries_.size();
}

void OwnerWatch::Run() {
  std::vector<epoll_event> events(64);
  for (;;) {
    int timeout_ms = -1;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (stopping_) return;
      // Due kills first: a process that ignored SIGTERM past its grace.
      const absl::Time now = absl::Now();
      while (!kills_.empty() && kills_.begin()->first <= now) {
        auto [uuid, id] = kills_.begin()->second;
        kills_.erase(kills_.begin());
        auto it = entries_.find(uuid);
        if (it != entries_.end() && it->second.id == id) {
          syscall(SYS_pidfd_send_signal, it->second.pidfd, SIGKILL, nullptr, 0);
        }
      }
      if (!kills_.empty()) {
        timeout_ms = static_cast<int>(
            absl::ToInt64Milliseconds(kills_.begin()->first - now) + 1);
      }
    }
    const int n = epoll_wait(epoll_fd_, events.data(), static_cast<int>(events.size()),
                             timeout_ms);
    if (n < 0 && errno != EINTR) return;
    std::vector<std::pair<std::string, uint64_t>> exited;
    {
      std::lock_guard<std::mutex> l(mu_);
      for (int i = 0; i < n; ++i) {
        const uint64_t id = events[i].data.u64;
        if (id == 0) {
          uint64_t v;
          (void)!read(wake_fd_, &v, sizeof(v));
          continue;
        }
        auto by = by_id_.find(id);
        if (by == by_id_.end()) continue;  // Unwatched meanwhile.
        auto it = entries_.find(by->second);
        exited.emplace_back(it->first, it->second.generation);
        epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, it->second.pidfd, nullptr);
        close(it->second.pidfd);
        entries_.erase(it);
        by_id_.erase(by);
      }
    }
    for (const auto& [uuid, generation] : exited) on_exit_(uuid, generation);
  }
}

}  // namespace latchkey
