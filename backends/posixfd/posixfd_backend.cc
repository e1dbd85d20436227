// The posixfd backend: OFD locks on one state file per resource in a lock
// directory, or on the disk image itself. See lock_file.h for the protocol.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "backends/posixfd/lock_file.h"
#include "backends/posixfd/nfs_lock_probe.h"
#include "core/disk_identity.h"
#include "core/plugin_export.h"

namespace latchkey {
namespace posixfd {
namespace {

constexpr lk_capabilities kCapabilities = {
    (1u << LK_MODE_SHARED_READ) | (1u << LK_MODE_SHARED_WRITE) | (1u << LK_MODE_EXCLUSIVE),
    LK_CAP_HOLDER_IDENTITY | LK_CAP_FENCING_TOKENS,
    64,
    "",
};

// How long an admission may find the gate held by another admitter before
// giving up: admissions take microseconds, so this only trips when an
// admitter is frozen (SIGSTOP) in the middle of one.
constexpr absl::Duration kGateSpin = absl::Milliseconds(200);
// Waiters re-check at least this often: a downgrade or a gate release does
// not close the file, so inotify does not announce it.
constexpr absl::Duration kWaitRecheck = absl::Milliseconds(20);

absl::Status ErrnoStatus(int err, absl::string_view what) {
  const std::string msg = absl::StrCat(what, ": ", strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::FailedPreconditionError(msg);
    case ENOLCK:
    case EMFILE:
    case ENFILE:
    case ENOSPC:
      return absl::ResourceExhaustedError(msg);
    default:
      return absl::InternalError(msg);
  }
}

// One OFD lock call. Returns 0, or errno (EAGAIN when someone conflicts).
int SetLock(int fd, short type, off_t start, off_t len) {
  struct flock fl = {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = start;
  fl.l_len = len;
  while (fcntl(fd, F_OFD_SETLK, &fl) != 0) {
    if (errno != EINTR) return errno == EACCES ? EAGAIN : errno;
  }
  return 0;
}

// The type of a lock another open file description holds that would
// conflict with a write lock on [start, start+len): F_UNLCK when none.
short ProbeLock(int fd, off_t start, off_t len) {
  struct flock fl = {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = start;
  fl.l_len = len;
  if (fcntl(fd, F_OFD_GETLK, &fl) != 0) return F_WRLCK;  // Be safe: assume held.
  return fl.l_type;
}

bool ReadExactly(int fd, void* buf, size_t n, off_t off) {
  return pread(fd, buf, n, off) == static_cast<ssize_t>(n);
}

// A file descriptor closed on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    Reset();
    fd_ = std::exchange(o.fd_, -1);
    return *this;
  }
  ~Fd() { Reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// A lock this process holds for one owner on one resource.
struct Held {
  uint64_t serial = 0;  // unique per entry of a backend (the checker's identity check)
  Owner owner;
  Resource resource;
  Fd target;  // carries the OFD locks
  Fd state;   // the state file; invalid when it is `target`
  bool on_nfs = false;  // target is on NFS: its locks can be lost (the checker)
  LockMode mode = LockMode::kExclusive;
  int slot = -1;  // shared holders' record slot
  uint64_t token = 0;
  bool pending = false;  // an acquire or convert is in progress
  bool granted = false;  // the lock is held (set once, under the table mutex)
  int state_fd() const { return state.valid() ? state.get() : target.get(); }
};

// A grant that must find no grant in a conflicting mode since `token`
// (AcquireOptions::expect_token, or Adopt's re-acquire).
struct TokenCheck {
  enum Why { kHandOff, kAdopt };
  uint64_t token = 0;
  Why why = kHandOff;
};

// A descriptor inherited across an exec that may carry a lock of an earlier
// program image (see PrepareExec), owned by the backend it belongs to until
// an Adopt claims it or FinishAdoption closes it.
struct Inherited {
  Fd fd;
  dev_t dev = 0;
  ino_t ino = 0;
  bool state_file = false;  // a state file in our lock directory; else an image
};

// Every descriptor this program image inherited that might be a posixfd
// lock descriptor: regular files without FD_CLOEXEC, listed once, when the
// first posixfd backend of the image opens. Nothing a posixfd backend of
// this image opened can be among them (its descriptors exist only later and
// are opened O_CLOEXEC), so PrepareExec calls of this image's own backends
// can never be mistaken for inheritance. Each backend takes the ones that
// are its own (state files in its lock directory, and the images they name)
// at open; the rest are never touched.
struct InheritedPool {
  std::mutex mu;
  bool listed = false;
  struct Entry {
    int fd;
    dev_t dev;
    ino_t ino;
  };
  std::vector<Entry> fds;
};

InheritedPool& Pool() {
  static InheritedPool* pool = new InheritedPool;  // Never destroyed.
  return *pool;
}

// Lists the candidates into the pool. REQUIRES: pool.mu held.
void ListInherited(InheritedPool* pool) {
  pool->listed = true;
  DIR* d = opendir("/proc/self/fd");
  if (d == nullptr) return;  // No /proc: nothing can be adopted without a window.
  const int own = dirfd(d);
  std::vector<int> fds;
  while (dirent* e = readdir(d)) {
    int fd;
    if (absl::SimpleAtoi(e->d_name, &fd) && fd != own) fds.push_back(fd);
  }
  closedir(d);
  for (int fd : fds) {
    const int flags = fcntl(fd, F_GETFD);
    struct stat st;
    if (flags < 0 || (flags & FD_CLOEXEC) != 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      continue;
    }
    pool->fds.push_back({fd, st.st_dev, st.st_ino});
  }
}

// The OFD locks the open file description behind `fd` holds, from
// /proc/self/fdinfo. false when that cannot be read.
bool OwnLocks(int fd, std::vector<OfdLock>* out) {
  Fd info(open(absl::StrCat("/proc/self/fdinfo/", fd).c_str(), O_RDONLY | O_CLOEXEC));
  if (!info.valid()) return false;
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = read(info.get(), buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(n));
  if (n < 0) return false;
  *out = ParseFdInfoLocks(text);
  return true;
}

// True when the description behind `fd` holds any lock byte of the posixfd
// protocol.
bool HoldsProtocolLocks(int fd) {
  std::vector<OfdLock> locks;
  if (!OwnLocks(fd, &locks)) return false;
  for (const OfdLock& l : locks) {
    if (l.start <= kSlotLockBase + kSharedSlots - 1 && l.end >= kLockBase) return true;
  }
  return false;
}

bool SetCloexec(int fd, bool on) {
  const int flags = fcntl(fd, F_GETFD);
  if (flags < 0) return false;
  const int want = on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC);
  return want == flags || fcntl(fd, F_SETFD, want) == 0;
}

// Why one attempt did not grant.
enum class Outcome { kGranted, kBusy, kTransient };

class PosixFdBackend final : public Backend {
 public:
  PosixFdBackend(std::string lock_dir, Fd dir_fd, bool lock_image, absl::Duration check_every)
      : lock_dir_(std::move(lock_dir)),
        dir_fd_(std::move(dir_fd)),
        lock_image_(lock_image),
        check_every_(check_every) {}

  ~PosixFdBackend() override {
    if (!checker_.joinable()) return;
    bool probing;
    {
      std::lock_guard<std::mutex> l(watch_->mu);
      watch_->stopping = true;
      probing = watch_->probing;
    }
    watch_->wake.notify_all();
    // A probe blocks as long as its NFS mount does; the checker then finds
    // `stopping` when it returns and never touches this backend again.
    if (probing) {
      checker_.detach();
    } else {
      checker_.join();
    }
  }

  // Locks on NFS can be lost behind our back (lease expiry, nfs_lock_probe.h):
  // a checker probes each one every check_ms and reports the lost ones.
  void WatchLockLoss(LockLossHandler handler) override {
    std::lock_guard<std::mutex> l(watch_->mu);
    watch_->handler = std::move(handler);
    if (watch_->handler && check_every_ > absl::ZeroDuration() && !checker_.joinable()) {
      checker_ = std::thread([this, w = watch_] { CheckLoop(w); });
    }
  }

  std::string name() const override { return "posixfd"; }
  Capabilities capabilities() const override {
    return plugin_export::CapabilitiesFromAbi(kCapabilities);
  }

  absl::StatusOr<Grant> Acquire(const Owner& owner, const Resource& resource, LockMode mode,
                                const AcquireOptions& options) override {
    const std::string key = TableKey(owner, resource);
    absl::StatusOr<Held*> h = Reserve(key, owner, resource);
    if (!h.ok()) return h.status();
    TokenCheck check;
    if (options.expect_token.has_value()) check = {*options.expect_token, TokenCheck::kHandOff};
    absl::Status s = AcquireLoop(owner, resource, mode, options,
                                 options.expect_token.has_value() ? &check : nullptr, *h);
    return Settle(key, *h, s, mode);
  }

  absl::StatusOr<Grant> Convert(const Owner& owner, const Resource& resource, LockMode new_mode,
                                const AcquireOptions& options) override {
    Held* h = nullptr;
    const std::string key = TableKey(owner, resource);
    {
      std::lock_guard<std::mutex> l(mu_);
      auto it = held_.find(key);
      if (it == held_.end()) return NotHeldBy(owner, resource);
      if (it->second->pending) return InProgress(owner, resource);
      h = it->second.get();
      h->pending = true;
    }
    TokenCheck check;
    if (options.expect_token.has_value()) check = {*options.expect_token, TokenCheck::kHandOff};
    absl::Status s = ConvertLoop(owner, resource, h, new_mode, options,
                                 options.expect_token.has_value() ? &check : nullptr);
    std::lock_guard<std::mutex> l(mu_);
    h->pending = false;
    if (!s.ok()) return s;
    return Grant{h->mode, h->token, ""};
  }

  absl::Status Release(const Owner& owner, const Resource& resource) override {
    std::unique_ptr<Held> h;
    {
      std::lock_guard<std::mutex> l(mu_);
      auto it = held_.find(TableKey(owner, resource));
      if (it == held_.end()) return NotHeldBy(owner, resource);
      if (it->second->pending) return InProgress(owner, resource);
      h = std::move(it->second);
      held_.erase(it);
    }
    Unlock(*h);
    // Closing the descriptors drops what is left; waiters see IN_CLOSE and
    // retry.
    return absl::OkStatus();
  }

  // Drops every lock the held entry's open file description carries, at
  // once. Closing would too, but only once no other descriptor shares that
  // description, and the lock-loss checker may hold a dup mid-probe.
  static void Unlock(const Held& h) {
    if (h.target.valid()) SetLock(h.target.get(), F_UNLCK, 0, 0);
  }

  absl::StatusOr<std::vector<HolderInfo>> Inquire(
      const std::optional<Resource>& resource) override {
    std::vector<HolderInfo> out;
    if (resource.has_value()) {
      if (absl::Status s = AppendHolders(*resource, &out); !s.ok()) return s;
      return out;
    }
    // A descriptor of our own: a dup would share the directory offset with
    // concurrent callers.
    const int list_fd = openat(dir_fd_.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR* d = list_fd < 0 ? nullptr : fdopendir(list_fd);
    if (d == nullptr) {
      const int err = errno;
      if (list_fd >= 0) close(list_fd);
      return ErrnoStatus(err, absl::StrCat("cannot list ", lock_dir_));
    }
    std::vector<std::string> files;
    while (dirent* e = readdir(d)) files.push_back(e->d_name);
    closedir(d);
    std::sort(files.begin(), files.end());
    for (const std::string& f : files) {
      Resource r;
      if (!ParseStateFileName(f, &r.lockspace, &r.name)) continue;
      if (!DescribeFromStateFile(f, &r)) continue;
      if (absl::Status s = AppendHolders(r, &out); !s.ok()) return s;
    }
    return out;
  }

  absl::StatusOr<Grant> Adopt(const LockRecord& record) override {
    // posixfd locks die with their process, so there is no orphan to take
    // over. A lock inherited across PrepareExec + exec is taken over as it
    // is (no window, same token); otherwise re-acquire, and refuse if anyone
    // was granted the resource since the record was written (the fencing
    // token moved).
    const std::string key = TableKey(record.owner, record.resource);
    absl::StatusOr<Held*> reserved = Reserve(key, record.owner, record.resource);
    if (!reserved.ok()) return reserved.status();
    Held* h = *reserved;
    absl::StatusOr<bool> inherited = TakeOverInherited(record, h);
    absl::Status s = inherited.status();
    if (inherited.ok() && !*inherited) {
      const TokenCheck check{record.fencing_token, TokenCheck::kAdopt};
      s = AcquireLoop(record.owner, record.resource, record.mode, AcquireOptions{}, &check, h);
    }
    return Settle(key, h, s, record.mode);
  }

  absl::Status Health() override {
    struct stat st;
    if (fstat(dir_fd_.get(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return absl::FailedPreconditionError(
          absl::StrCat("posixfd lock directory ", lock_dir_, " is gone"));
    }
    if (faccessat(dir_fd_.get(), ".", W_OK | X_OK, AT_EACCESS) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("posixfd lock directory ", lock_dir_, " is not writable"));
    }
    return absl::OkStatus();
  }

  // Clears FD_CLOEXEC on the descriptors of every lock held now. Locks an
  // acquire still in progress gets, or any later grant, keep FD_CLOEXEC and
  // end at the exec (the new program's Adopt re-acquires them, or says
  // Aborted): call this right before execve(). Idempotent.
  absl::Status PrepareExec() override {
    std::lock_guard<std::mutex> l(mu_);
    std::vector<int> cleared;  // by this call, to restore on failure
    for (const auto& [key, h] : held_) {
      if (!h->granted) continue;
      for (const Fd* fd : {&h->target, &h->state}) {
        if (!fd->valid()) continue;
        const int flags = fcntl(fd->get(), F_GETFD);
        if (flags >= 0 && (flags & FD_CLOEXEC) == 0) continue;  // done by an earlier call
        if (flags < 0 || fcntl(fd->get(), F_SETFD, flags & ~FD_CLOEXEC) != 0) {
          const int err = errno;
          for (int c : cleared) SetCloexec(c, true);
          return ErrnoStatus(err, absl::StrCat("cannot keep descriptor ", fd->get(),
                                               " of a held lock open across exec"));
        }
        cleared.push_back(fd->get());
      }
    }
    return absl::OkStatus();
  }

  // Closes every inherited descriptor no Adopt claimed, which releases its
  // locks; Adopt re-acquires from now on.
  void FinishAdoption() override {
    std::vector<Inherited> unclaimed;
    {
      std::lock_guard<std::mutex> l(inherited_mu_);
      adoption_finished_ = true;
      unclaimed.swap(inherited_);
    }
    // Closed here, outside the mutex.
  }

  // Takes the inherited descriptors that belong to this backend out of the
  // process-wide pool (see InheritedPool) and marks them FD_CLOEXEC, so no
  // child started meanwhile inherits them. Called once, by the factory.
  void TakeInherited() {
    InheritedPool& pool = Pool();
    std::lock_guard<std::mutex> pl(pool.mu);
    if (!pool.listed) ListInherited(&pool);
    std::lock_guard<std::mutex> l(inherited_mu_);
    auto still_same = [](const InheritedPool::Entry& e) {
      struct stat st;
      const int flags = fcntl(e.fd, F_GETFD);
      return flags >= 0 && (flags & FD_CLOEXEC) == 0 && fstat(e.fd, &st) == 0 &&
             st.st_dev == e.dev && st.st_ino == e.ino;
    };
    auto take = [&](size_t i, bool state_file) {
      const InheritedPool::Entry e = pool.fds[i];
      pool.fds.erase(pool.fds.begin() + static_cast<std::ptrdiff_t>(i));
      SetCloexec(e.fd, true);
      inherited_.push_back(Inherited{Fd(e.fd), e.dev, e.ino, state_file});
    };
    // State files in our directory: the name the descriptor was opened
    // under must still name the same file here.
    std::vector<std::pair<dev_t, ino_t>> images;
    for (size_t i = 0; i < pool.fds.size();) {
      const InheritedPool::Entry& e = pool.fds[i];
      char path[4096];
      const ssize_t n =
          readlink(absl::StrCat("/proc/self/fd/", e.fd).c_str(), path, sizeof path - 1);
      std::string lockspace, name;
      struct stat st;
      if (n <= 0 || !still_same(e)) {
        ++i;
        continue;
      }
      path[n] = '\0';
      const char* base = strrchr(path, '/');
      base = base == nullptr ? path : base + 1;
      if (!ParseStateFileName(base, &lockspace, &name) ||
          fstatat(dir_fd_.get(), base, &st, AT_SYMLINK_NOFOLLOW) != 0 || st.st_dev != e.dev ||
          st.st_ino != e.ino) {
        ++i;
        continue;
      }
      // The image a disk resource's state file names, in either lock_target
      // mode (the earlier image may have used the other one).
      unsigned char header[kHeaderSize];
      if (ReadExactly(e.fd, header, sizeof header, 0)) {
        const Header h = DecodeHeader(header);
        std::string image(h.path_len, '\0');
        if (h.initialised && h.kind == ResourceKind::kDisk && h.path_len > 0 &&
            h.path_len <= kMaxPathLen && ReadExactly(e.fd, image.data(), h.path_len, kPathOffset)) {
          // Its identity name locks the anchor, its path name the path.
          for (const std::string& f : {ImageTarget(image), image}) {
            if (stat(f.c_str(), &st) == 0) images.emplace_back(st.st_dev, st.st_ino);
          }
        }
      }
      take(i, /*state_file=*/true);
    }
    // Images named by our state files whose descriptor holds protocol locks.
    for (size_t i = 0; i < pool.fds.size();) {
      const InheritedPool::Entry& e = pool.fds[i];
      const bool ours = std::find(images.begin(), images.end(), std::make_pair(e.dev, e.ino)) !=
                        images.end();
      if (ours && still_same(e) && HoldsProtocolLocks(e.fd)) {
        take(i, /*state_file=*/false);
      } else {
        ++i;
      }
    }
  }

 private:
  // Puts a pending entry for `key` in the table, so no other call of this
  // owner touches the resource while the lock is being taken. The entry is
  // owned by held_; the caller settles it with Settle.
  absl::StatusOr<Held*> Reserve(const std::string& key, const Owner& owner,
                                const Resource& resource) {
    std::lock_guard<std::mutex> l(mu_);
    auto it = held_.find(key);
    if (it != held_.end()) {
      return absl::FailedPreconditionError(absl::StrCat(
          owner.name, " already holds ", resource.Describe(), " (",
          it->second->pending ? "acquire in progress" : LockModeName(it->second->mode),
          "); use convert to change its mode"));
    }
    auto fresh = std::make_unique<Held>();
    fresh->serial = ++next_serial_;
    fresh->owner = owner;
    fresh->resource = resource;
    fresh->pending = true;
    Held* h = fresh.get();
    held_[key] = std::move(fresh);
    return h;
  }

  // Ends a Reserve: drops the entry when `s` failed, else marks it granted.
  absl::StatusOr<Grant> Settle(const std::string& key, Held* h, const absl::Status& s,
                               LockMode mode) {
    // fstatfs on NFS asks the server: not under mu_ (h is still pending,
    // so only this thread touches it).
    const bool on_nfs = s.ok() && OnNfs(h->target.get());
    // On NFS the grant's header and record may sit in this client's page
    // cache until the gate is unlocked, which an exclusive holder does only
    // at release: other nodes' refusals then read the previous holder's
    // record from the server and name the wrong owner (seen in the lab).
    // Admissions are unaffected: they read under the gate, after the
    // holder's unlock flushed. Flushed here, so every node reads the
    // current holder.
    if (on_nfs && mode == LockMode::kExclusive) (void)fdatasync(h->state_fd());
    std::lock_guard<std::mutex> l(mu_);
    if (!s.ok()) {
      held_.erase(key);
      return s;
    }
    h->pending = false;
    h->granted = true;
    h->on_nfs = on_nfs;
    return Grant{mode, h->token, ""};
  }

  // What the lock-loss checker shares with its backend. The checker reads
  // and changes the backend only under `mu` with `stopping` false, so a
  // checker stuck in a probe may outlive the backend harmlessly.
  struct Watch {
    std::mutex mu;
    std::condition_variable wake;
    bool stopping = false;
    bool probing = false;
    LockLossHandler handler;
  };

  static constexpr size_t kProbeBatch = 64;

  void CheckLoop(std::shared_ptr<Watch> w) {
    struct Probe {
      std::string key;
      uint64_t serial;  // which entry: a key released and taken again is another
      Fd fd;            // a dup: the same open file description, so the same locks
    };
    std::unique_lock<std::mutex> wl(w->mu);
    while (!w->stopping) {
      w->wake.wait_for(wl, absl::ToChronoMilliseconds(check_every_));
      if (w->stopping) return;
      // Which locks to probe; each is dup'ed only for its own probe, at most
      // kProbeBatch at a time: dup'ing every held lock at once doubled the
      // open files of a host holding thousands (latchbench scale: 2579
      // locks on NFS ran into latchd's 4096-file limit), and a failed dup
      // skipped its probe.
      std::vector<std::pair<std::string, uint64_t>> todo;
      {
        std::lock_guard<std::mutex> l(mu_);
        for (const auto& [key, h] : held_) {
          if (h->granted && !h->pending && h->on_nfs) todo.emplace_back(key, h->serial);
        }
      }
      if (todo.empty()) continue;
      std::vector<std::pair<Probe, std::string>> lost;  // their dups closed
      w->probing = true;
      for (size_t from = 0; from < todo.size(); from += kProbeBatch) {
        std::vector<Probe> probes;
        {
          std::lock_guard<std::mutex> l(mu_);
          for (size_t i = from; i < std::min(todo.size(), from + kProbeBatch); ++i) {
            auto it = held_.find(todo[i].first);
            // Released (or released and taken again) since the list was made.
            if (it == held_.end() || it->second->serial != todo[i].second ||
                !it->second->granted || it->second->pending) {
              continue;
            }
            Fd dup(fcntl(it->second->target.get(), F_DUPFD_CLOEXEC, 0));
            if (dup.valid()) probes.push_back(Probe{todo[i].first, todo[i].second, std::move(dup)});
          }
        }
        wl.unlock();
        for (Probe& p : probes) {
          std::string why;
          const bool gone = ProbeNfsLocks(p.fd.get(), &why) == NfsLockState::kLost;
          p.fd = Fd();  // no dup outlives its probe
          if (gone) lost.emplace_back(Probe{p.key, p.serial, Fd()}, why);
        }
        wl.lock();
        if (w->stopping) return;  // the backend is gone: never touch it again
      }
      w->probing = false;
      std::vector<std::unique_ptr<Held>> gone;
      std::vector<LockLoss> losses;
      {
        std::lock_guard<std::mutex> l(mu_);
        for (auto& [p, why] : lost) {
          auto it = held_.find(p.key);
          // Released (or released and taken again) meanwhile: not ours to report.
          if (it == held_.end() || it->second->serial != p.serial || it->second->pending) continue;
          losses.push_back(LockLoss{it->second->owner, it->second->resource,
                                    absl::StrCat("the NFS server no longer honours the lock on ",
                                                 it->second->resource.path.empty()
                                                     ? lock_dir_
                                                     : it->second->resource.path,
                                                 " (its client lease expired and the lock was "
                                                 "given away or not reclaimed; ",
                                                 why, ")")});
          gone.push_back(std::move(it->second));
          held_.erase(it);
        }
      }
      for (const auto& h : gone) Unlock(*h);  // what the server may still grant us
      gone.clear();
      if (w->handler) {
        for (const LockLoss& loss : losses) w->handler(loss);
      }
    }
  }

  static std::string TableKey(const Owner& owner, const Resource& resource) {
    // uuid, lockspace and name cannot hold a space (validated), so the key
    // is unambiguous.
    std::string key;
    key.reserve(owner.uuid.size() + resource.lockspace.size() + resource.name.size() + 2);
    key.append(owner.uuid).append(1, ' ').append(resource.lockspace).append(1, ' ');
    key.append(resource.name);
    return key;
  }

  // What lock_target = "image" locks for a disk path: the storage itself
  // (DiskIdentity::anchor), so every alias of it locks one inode: a hard
  // link or bind mount is the file, a loop device over the whole file is
  // the file, a second device node is /dev/<kernel name>.
  static std::string ImageTarget(const std::string& path) {
    absl::StatusOr<DiskIdentity> id = IdentifyDisk(path);
    return id.ok() && !id->anchor.empty() ? id->anchor : path;
  }

  // The file resource `r`'s locks go on: "" for its state file (lockdir
  // mode, leases), else the image. A disk named by its identity locks the
  // anchor. A disk named by its path (the scheme of a latchd before
  // identities, which latchd takes beside the identity name while older
  // hosts may remain) locks the path, as that latchd did, so the two still
  // exclude each other; but when the path is the anchor's very inode the
  // identity name's lock already stands there, and a second lock of the
  // same owner on it would conflict with the first: then the state file.
  std::string ImageTarget(const Resource& r) const {
    if (!lock_image_ || r.kind != ResourceKind::kDisk) return "";
    const std::string anchor = ImageTarget(r.path);
    if (r.name != DiskResourceName(r.path, r.name.size())) return anchor;
    struct stat a, p;
    if (stat(anchor.c_str(), &a) == 0 && stat(r.path.c_str(), &p) == 0 && a.st_dev == p.st_dev &&
        a.st_ino == p.st_ino) {
      return "";
    }
    return r.path;
  }

  // Opens the lock target and, in image mode, the state file. Both stay
  // open for the whole hold, so no step of a grant or a conversion after
  // the first lock needs to open anything.
  absl::Status OpenFiles(const Resource& r, Held* h) {
    const std::string file = StateFileName(r);
    const int state = openat(dir_fd_.get(), file.c_str(),
                             O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (state < 0) {
      return ErrnoStatus(errno, absl::StrCat("cannot open lock file ", lock_dir_, "/", file,
                                             " for ", r.Describe()));
    }
    const std::string target = ImageTarget(r);  // once: it asks the storage
    if (target.empty()) {
      h->target = Fd(state);
      return absl::OkStatus();
    }
    h->state = Fd(state);
    const int image = open(target.c_str(), O_RDWR | O_CLOEXEC);
    if (image < 0) {
      const int err = errno;
      h->state.Reset();
      return ErrnoStatus(err, absl::StrCat("cannot open disk image ", r.path,
                                           target == r.path ? "" : absl::StrCat(" (", target, ")"),
                                           " to lock it (lock_target = \"image\")"));
    }
    h->target = Fd(image);
    return absl::OkStatus();
  }

  // The path inotify watches for a resource's releases.
  std::string WatchPath(const Resource& r) const {
    const std::string image = ImageTarget(r);
    return !image.empty() ? image : absl::StrCat(lock_dir_, "/", StateFileName(r));
  }

  // Acquires into *h (fresh, no descriptors). On failure h holds nothing.
  absl::Status AcquireLoop(const Owner& owner, const Resource& r, LockMode mode,
                           const AcquireOptions& options, const TokenCheck* check, Held* h) {
    if (absl::Status s = OpenFiles(r, h); !s.ok()) return s;
    // Deadlines are computed only once a first attempt failed: the fast
    // path reads no clock.
    std::optional<absl::Time> deadline, gate_deadline;
    Fd watch;
    while (true) {
      absl::StatusOr<Outcome> o = TryAcquire(owner, r, mode, h, check);
      if (o.ok() && *o == Outcome::kGranted) return absl::OkStatus();
      // Drop what this attempt locked but keep the descriptors: closing
      // them would wake our own inotify watch (and every other waiter).
      SetLock(h->target.get(), F_UNLCK, 0, 0);
      const absl::Time now = absl::Now();
      if (!deadline.has_value()) {
        deadline = options.wait ? now + options.timeout : now;
        gate_deadline = now + kGateSpin;
      }
      const bool transient = o.ok() && *o == Outcome::kTransient;
      // A no-wait acquire still rides out another process's admission
      // (microseconds), up to kGateSpin.
      const bool spin = transient && !options.wait && now < *gate_deadline;
      if (!o.ok() || (now >= *deadline && !spin)) {
        h->target.Reset();
        h->state.Reset();
        if (!o.ok()) return o.status();
        if (transient && !options.wait) {
          return absl::UnavailableError(absl::StrCat(
              r.Describe(), " is being admitted by another process that has not finished ",
              "for ", absl::FormatDuration(kGateSpin), " (frozen?); wanted ", LockModeName(mode),
              " by ", owner.name));
        }
        return Refusal(owner, r, mode, options);
      }
      if (WaitCancelled(options.cancel_fd)) {
        h->target.Reset();
        h->state.Reset();
        return Cancelled(owner, r, mode);
      }
      if (transient) {
        absl::SleepFor(absl::Microseconds(200));
      } else {
        WaitForRelease(r, &watch, std::min(*deadline - now, kWaitRecheck), options.cancel_fd);
      }
    }
  }

  static absl::Status Cancelled(const Owner& owner, const Resource& r, LockMode mode) {
    return absl::CancelledError(absl::StrCat("the wait of ", owner.name, " for ",
                                             LockModeName(mode), " on ", r.Describe(),
                                             " was given up by its caller"));
  }

  // Blocks until the resource's file is closed by someone, the caller gives
  // up (`cancel_fd`), or `max` passes.
  void WaitForRelease(const Resource& r, Fd* watch, absl::Duration max, int cancel_fd) {
    if (!watch->valid()) {
      *watch = Fd(inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
      if (watch->valid() && inotify_add_watch(watch->get(), WatchPath(r).c_str(), IN_CLOSE) < 0) {
        watch->Reset();
      }
    }
    // No events asked of cancel_fd: only its hang-up wakes us.
    struct pollfd p[2] = {{watch->valid() ? watch->get() : -1, POLLIN, 0}, {cancel_fd, 0, 0}};
    const int ms = static_cast<int>(absl::ToInt64Milliseconds(max)) + 1;
    if (poll(p, 2, ms) > 0 && watch->valid() && (p[0].revents & POLLIN) != 0) {
      char buf[4096];
      while (read(watch->get(), buf, sizeof buf) > 0) {
      }
    }
  }

  static off_t ClassByte(LockMode shared_mode) {
    return shared_mode == LockMode::kSharedRead ? kReadClass : kWriteClass;
  }
  static off_t OtherClassByte(LockMode shared_mode) {
    return shared_mode == LockMode::kSharedRead ? kWriteClass : kReadClass;
  }

  // A refused lock call: a conflict (classified) or a real error.
  static absl::StatusOr<Outcome> Conflict(int err, int fd, LockMode mode, const Resource& r) {
    if (err != EAGAIN) return ErrnoStatus(err, absl::StrCat("cannot lock ", r.Describe()));
    return ClassifyGateConflict(fd, mode);
  }

  // One attempt. The caller drops every lock of h->target on failure.
  absl::StatusOr<Outcome> TryAcquire(const Owner& owner, const Resource& r, LockMode mode,
                                     Held* h, const TokenCheck* check) {
    const int fd = h->target.get();
    if (mode == LockMode::kExclusive) {
      // Gate and both class bytes in one call, kept for the whole hold.
      if (int err = SetLock(fd, F_WRLCK, kGate, 3); err != 0) return Conflict(err, fd, mode, r);
      return Admit(owner, r, h, mode, /*slot=*/-1, check);
    }
    if (int err = SetLock(fd, F_WRLCK, kGate, 1); err != 0) return Conflict(err, fd, mode, r);
    if (ProbeLock(fd, OtherClassByte(mode), 1) != F_UNLCK) return Outcome::kBusy;
    if (int err = SetLock(fd, F_RDLCK, ClassByte(mode), 1); err != 0) {
      return Conflict(err, fd, mode, r);
    }
    absl::StatusOr<int> slot = ClaimSlot(fd, r);
    if (!slot.ok()) return slot.status();
    absl::StatusOr<Outcome> o = Admit(owner, r, h, mode, *slot, check);
    if (!o.ok() || *o != Outcome::kGranted) return o;
    if (int err = SetLock(fd, F_UNLCK, kGate, 1); err != 0) {
      return ErrnoStatus(err, absl::StrCat("cannot open the gate of ", r.Describe()));
    }
    return o;
  }

  // The gate could not be taken: a conflicting holder (busy) or only
  // another admission in progress (transient). Probes see other open file
  // descriptions' locks, never our own.
  static Outcome ClassifyGateConflict(int fd, LockMode mode) {
    if (mode == LockMode::kExclusive) {
      return ProbeLock(fd, kReadClass, 2) != F_UNLCK ? Outcome::kBusy : Outcome::kTransient;
    }
    if (ProbeLock(fd, OtherClassByte(mode), 1) != F_UNLCK) return Outcome::kBusy;
    if (ProbeLock(fd, ClassByte(mode), 1) == F_WRLCK) return Outcome::kBusy;  // exclusive holder
    return Outcome::kTransient;
  }

  // A free record slot, locked. REQUIRES: the gate is held.
  absl::StatusOr<int> ClaimSlot(int fd, const Resource& r) {
    for (int i = 0; i < kSharedSlots; ++i) {
      const int err = SetLock(fd, F_WRLCK, kSlotLockBase + i, 1);
      if (err == 0) return i;
      if (err != EAGAIN) return ErrnoStatus(err, absl::StrCat("cannot lock ", r.Describe()));
    }
    return absl::ResourceExhaustedError(absl::StrCat(
        r.Describe(), " already has ", kSharedSlots, " shared holders, the posixfd limit"));
  }

  // Bumps the token and writes the holder record for `mode` (in `slot` for
  // shared modes) and the conflict tokens. On success sets h's mode, slot
  // and token; on failure leaves h as it was. With `check`, refuses
  // (Aborted) when a grant since check->token conflicts with `mode` (or
  // that grant never happened here): read and compared under the gate, so
  // the check and the grant are one step. REQUIRES: the gate is held.
  absl::StatusOr<Outcome> Admit(const Owner& owner, const Resource& r, Held* h, LockMode mode,
                                int slot, const TokenCheck* check) {
    const int sfd = h->state_fd();
    // Header, exclusive record and conflict tokens are adjacent: one read,
    // one write. An exclusive grant without a check needs only the header
    // (it sets both conflict tokens), so its hot path reads 32 bytes.
    unsigned char buf[kHeaderSize + kRecordSize + kConflictSize];
    static_assert(kConflictOffset == kHeaderSize + kRecordSize, "layout");
    const size_t want =
        mode == LockMode::kExclusive && check == nullptr ? kHeaderSize : sizeof buf;
    const ssize_t n = pread(sfd, buf, want, 0);
    if (n < 0) return ErrnoStatus(errno, absl::StrCat("cannot read lock file of ", r.Describe()));
    if (static_cast<size_t>(n) < want) memset(buf + n, 0, want - n);  // A fresh file.
    const Header hdr = DecodeHeader(buf);
    if (!hdr.initialised && !IsZero(buf, kHeaderSize)) {
      return absl::DataLossError(absl::StrCat("lock file ", lock_dir_, "/", StateFileName(r),
                                              " is not a posixfd lock file (bad magic)"));
    }
    const ConflictTokens conflicts = want == sizeof buf
                                         ? DecodeConflictTokens(buf + kConflictOffset, hdr.token)
                                         : ConflictTokens{hdr.token, hdr.token};
    if (check != nullptr) {
      // The grant carrying check->token must have happened here, and no
      // grant since may conflict with `mode`.
      const uint64_t last = check->token > hdr.token
                                ? hdr.token
                                : LastConflicting(conflicts, hdr.token, mode);
      const bool moved = check->token > hdr.token || last > check->token;
      if (moved && !ContinuesAdopted(buf, hdr, *check, owner, mode)) {
        if (check->why == TokenCheck::kAdopt) {
          return absl::AbortedError(absl::StrCat(
              r.Describe(), " was granted to someone else since ", owner.name,
              " held it: fencing token moved from ", check->token, " to ", last,
              last < check->token ? " (the lock file was recreated)" : ""));
        }
        return absl::AbortedError(absl::StrCat(
            r.Describe(), " was taken by someone else since the hand-off: expected fencing token ",
            check->token, ", ",
            last < check->token
                ? absl::StrCat("but its last grant carries ", last,
                               " (the lock file was recreated)")
                : absl::StrCat("but grant ", last, " since conflicts with ", LockModeName(mode)),
            "; refused ", LockModeName(mode), " to ", owner.name));
      }
    }
    auto write_failed = [&] {
      return ErrnoStatus(errno, absl::StrCat("cannot write lock file of ", r.Describe()));
    };
    // First grant ever: the path goes first, so a crash before the header
    // below leaves a zero header, which counts as a fresh file.
    if (!hdr.initialised && pwrite(sfd, r.path.data(), r.path.size(), kPathOffset) !=
                                static_cast<ssize_t>(r.path.size())) {
      return write_failed();
    }
    const uint64_t token = hdr.token + 1;
    // Header first (or together with the rest): a token is never handed out
    // twice, even if a later write fails.
    memcpy(buf, kMagic, sizeof kMagic);
    EncodeHeaderTail(token, r, buf + sizeof kMagic);
    // A shared grant writes back the exclusive record as read: nobody else
    // writes it while we hold the gate.
    const uint64_t continues =
        check != nullptr && check->why == TokenCheck::kAdopt ? check->token : 0;
    if (mode == LockMode::kExclusive) {
      EncodeRecord(owner, mode, token, buf + kHeaderSize, continues);
    }
    EncodeConflictTokens(token, AfterGrant(conflicts, mode, token), buf + kConflictOffset);
    if (pwrite(sfd, buf, sizeof buf, 0) != static_cast<ssize_t>(sizeof buf)) return write_failed();
    if (mode != LockMode::kExclusive) {
      unsigned char record[kRecordSize];
      EncodeRecord(owner, mode, token, record, continues);
      if (pwrite(sfd, record, sizeof record, SlotRecord(slot)) !=
          static_cast<ssize_t>(sizeof record)) {
        return write_failed();
      }
    }
    h->mode = mode;
    h->slot = mode == LockMode::kExclusive ? -1 : slot;
    h->token = token;
    return Outcome::kGranted;
  }

  // True when the last grant is an earlier Adopt's re-acquire of the very
  // grant `check` adopts (same owner, exclusive, continuing that token):
  // that adopter died before its journal learnt the new token, and nobody
  // else was admitted since (else the last grant would be theirs).
  // `state` holds the header and the exclusive record. Shared adoptions
  // need no such rule: their re-acquires do not conflict with themselves.
  static bool ContinuesAdopted(const unsigned char* state, const Header& hdr,
                               const TokenCheck& check, const Owner& owner, LockMode mode) {
    Record last;
    return check.why == TokenCheck::kAdopt && mode == LockMode::kExclusive &&
           check.token < hdr.token && DecodeRecord(state + kExclusiveRecord, &last) &&
           last.mode == LockMode::kExclusive && last.token == hdr.token &&
           last.continues == check.token && last.owner.uuid == owner.uuid;
  }

  static bool IsZero(const unsigned char* p, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      if (p[i] != 0) return false;
    }
    return true;
  }

  absl::Status ConvertLoop(const Owner& owner, const Resource& r, Held* h, LockMode to,
                           const AcquireOptions& options, const TokenCheck* check) {
    std::optional<absl::Time> deadline, gate_deadline;
    Fd watch;
    while (true) {
      absl::StatusOr<Outcome> o = TryConvert(owner, r, h, to, check);
      if (!o.ok()) return o.status();
      if (*o == Outcome::kGranted) return absl::OkStatus();
      const absl::Time now = absl::Now();
      if (!deadline.has_value()) {
        deadline = options.wait ? now + options.timeout : now;
        gate_deadline = now + kGateSpin;
      }
      const bool transient = *o == Outcome::kTransient;
      const bool spin = transient && !options.wait && now < *gate_deadline;
      if (now >= *deadline && !spin) {
        absl::Status refusal = Refusal(owner, r, to, options);
        return absl::Status(refusal.code(),
                            absl::StrCat(refusal.message(), "; ", owner.name, " still holds it ",
                                         LockModeName(h->mode)));
      }
      if (WaitCancelled(options.cancel_fd)) return Cancelled(owner, r, to);
      if (transient) {
        absl::SleepFor(absl::Microseconds(200));
      } else {
        WaitForRelease(r, &watch, std::min(*deadline - now, kWaitRecheck), options.cancel_fd);
      }
    }
  }

  // One conversion attempt. Whatever fails, h and its locks are as before:
  // fallible I/O (Admit) happens while the old locks still stand, or is
  // rolled back; changes to one's own locks cannot conflict with anyone.
  absl::StatusOr<Outcome> TryConvert(const Owner& owner, const Resource& r, Held* h,
                                     LockMode to, const TokenCheck* check) {
    const int fd = h->target.get();
    const LockMode from = h->mode;
    if (to == LockMode::kExclusive) {
      // Exclusive holds the gate already: a fresh token and record.
      if (from == LockMode::kExclusive) return Admit(owner, r, h, to, -1, check);
      // Upgrade in place: fails, with our read lock untouched, if anyone
      // else holds G, A or B.
      if (int err = SetLock(fd, F_WRLCK, kGate, 3); err != 0) return Conflict(err, fd, to, r);
      const int old_slot = h->slot;
      absl::StatusOr<Outcome> o = Admit(owner, r, h, to, -1, check);
      if (!o.ok()) {
        SetLock(fd, F_RDLCK, ClassByte(from), 1);
        SetLock(fd, F_UNLCK, OtherClassByte(from), 1);
        SetLock(fd, F_UNLCK, kGate, 1);
        return o;
      }
      SetLock(fd, F_UNLCK, kSlotLockBase + old_slot, 1);
      return o;
    }
    if (from == LockMode::kExclusive) {
      // Downgrade. We hold [G, B]: the record and token are written first,
      // still exclusive, then the range is split.
      absl::StatusOr<int> slot = ClaimSlot(fd, r);
      if (!slot.ok()) return slot.status();
      absl::StatusOr<Outcome> o = Admit(owner, r, h, to, *slot, check);
      if (!o.ok()) {
        SetLock(fd, F_UNLCK, kSlotLockBase + *slot, 1);
        return o;
      }
      if (int err = SetLock(fd, F_RDLCK, ClassByte(to), 1); err != 0) {
        h->mode = LockMode::kExclusive;  // Still exclusive: say so.
        return ErrnoStatus(err, absl::StrCat("cannot downgrade ", r.Describe()));
      }
      SetLock(fd, F_UNLCK, OtherClassByte(to), 1);
      SetLock(fd, F_UNLCK, kGate, 1);
      return o;
    }
    if (int err = SetLock(fd, F_WRLCK, kGate, 1); err != 0) return Conflict(err, fd, to, r);
    if (from != to) {
      // Entering the other class: its opposite is our old class, which
      // nobody else may hold any more.
      if (ProbeLock(fd, ClassByte(from), 1) != F_UNLCK) {
        SetLock(fd, F_UNLCK, kGate, 1);
        return Outcome::kBusy;
      }
      if (int err = SetLock(fd, F_RDLCK, ClassByte(to), 1); err != 0) {
        SetLock(fd, F_UNLCK, kGate, 1);
        return ErrnoStatus(err, absl::StrCat("cannot lock ", r.Describe()));
      }
      SetLock(fd, F_UNLCK, ClassByte(from), 1);
    }
    absl::StatusOr<Outcome> o = Admit(owner, r, h, to, h->slot, check);
    if (!o.ok() && from != to) {
      // We still hold the gate, so nobody entered either class meanwhile.
      SetLock(fd, F_RDLCK, ClassByte(from), 1);
      SetLock(fd, F_UNLCK, ClassByte(to), 1);
    }
    SetLock(fd, F_UNLCK, kGate, 1);
    return o;
  }

  // Adopt's side of exec adoption: moves the inherited descriptor(s) that
  // hold exactly `rec`'s lock into *h (fresh, no descriptors), unchanged.
  // false when no inherited descriptor holds a lock of this owner here;
  // Aborted when one does but in another mode or with another token than
  // the record says (FinishAdoption then releases it).
  absl::StatusOr<bool> TakeOverInherited(const LockRecord& rec, Held* h) {
    std::lock_guard<std::mutex> l(inherited_mu_);
    if (adoption_finished_ || inherited_.empty()) return false;
    const Resource& r = rec.resource;
    const std::string file = StateFileName(r);
    struct stat st;
    if (fstatat(dir_fd_.get(), file.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return false;
    const std::pair<dev_t, ino_t> state_id(st.st_dev, st.st_ino);
    std::pair<dev_t, ino_t> target_id = state_id;
    const std::string image = ImageTarget(r);  // once: it asks the storage
    const bool uses_image = !image.empty();
    if (uses_image) {
      if (stat(image.c_str(), &st) != 0) return false;
      target_id = {st.st_dev, st.st_ino};
    }
    auto find = [&](bool state_file, std::pair<dev_t, ino_t> id, size_t from) {
      for (size_t i = from; i < inherited_.size(); ++i) {
        const Inherited& c = inherited_[i];
        if (c.state_file == state_file && c.dev == id.first && c.ino == id.second) return i;
      }
      return inherited_.size();
    };
    std::string mismatch;
    for (size_t i = find(!uses_image, target_id, 0); i < inherited_.size();
         i = find(!uses_image, target_id, i + 1)) {
      // Where the records are: the target itself, or (image mode) the
      // state file, through an inherited descriptor when there is one.
      size_t state_index = inherited_.size();
      Fd state;
      int state_fd = inherited_[i].fd.get();
      if (uses_image) {
        state_index = find(true, state_id, 0);
        if (state_index == inherited_.size()) {
          state = Fd(openat(dir_fd_.get(), file.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
          if (!state.valid()) {
            return ErrnoStatus(errno, absl::StrCat("cannot open lock file ", lock_dir_, "/", file,
                                                   " for ", r.Describe()));
          }
          state_fd = state.get();
        } else {
          state_fd = inherited_[state_index].fd.get();
        }
      }
      std::optional<int> slot = VerifyInherited(inherited_[i].fd.get(), state_fd, rec, &mismatch);
      if (!slot.has_value()) continue;
      h->target = std::move(inherited_[i].fd);
      if (state_index < inherited_.size()) state = std::move(inherited_[state_index].fd);
      h->state = std::move(state);
      for (size_t j : {std::max(i, state_index), std::min(i, state_index)}) {
        if (j < inherited_.size()) {
          inherited_.erase(inherited_.begin() + static_cast<std::ptrdiff_t>(j));
        }
      }
      h->mode = rec.mode;
      h->slot = *slot;
      h->token = rec.fencing_token;
      return true;
    }
    if (!mismatch.empty()) return absl::AbortedError(mismatch);
    return false;
  }

  // Whether inherited descriptor `fd` holds `rec`'s lock: its own OFD
  // locks (fdinfo) are a settled hold in rec.mode, a fresh description sees
  // its write-locked bytes held by someone while `fd` sees nobody else on
  // them, and the holder record they guard names rec's owner and token.
  // Returns the record slot (-1 for exclusive), or nullopt; sets *mismatch
  // when `fd` holds this owner's lock but not as the record says.
  std::optional<int> VerifyInherited(int fd, int state_fd, const LockRecord& rec,
                                     std::string* mismatch) {
    const Resource& r = rec.resource;
    std::vector<OfdLock> locks;
    if (!OwnLocks(fd, &locks)) return std::nullopt;
    const short gate = OfdLockAt(locks, kGate);
    const short read_class = OfdLockAt(locks, kReadClass);
    const short write_class = OfdLockAt(locks, kWriteClass);
    int slot = -1, slots = 0;
    for (int i = 0; i < kSharedSlots; ++i) {
      if (OfdLockAt(locks, kSlotLockBase + i) != F_UNLCK) {
        slot = i;
        ++slots;
      }
    }
    LockMode mode;
    std::vector<off_t> written;  // the bytes it must hold write-locked
    if (gate == F_WRLCK && read_class == F_WRLCK && write_class == F_WRLCK && slots == 0) {
      mode = LockMode::kExclusive;
      written = {kGate, kReadClass, kWriteClass};
    } else if (gate == F_UNLCK && slots == 1 &&
               OfdLockAt(locks, kSlotLockBase + slot) == F_WRLCK &&
               ((read_class == F_RDLCK && write_class == F_UNLCK) ||
                (write_class == F_RDLCK && read_class == F_UNLCK))) {
      mode = read_class == F_RDLCK ? LockMode::kSharedRead : LockMode::kSharedWrite;
      written = {kSlotLockBase + slot};
    } else {
      return std::nullopt;  // No settled posixfd hold.
    }
    const std::string image = ImageTarget(r);
    Fd fresh(!image.empty() ? open(image.c_str(), O_RDONLY | O_CLOEXEC)
                            : openat(dir_fd_.get(), StateFileName(r).c_str(),
                                     O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (!fresh.valid()) return std::nullopt;
    for (off_t b : written) {
      if (ProbeLock(fresh.get(), b, 1) != F_WRLCK || ProbeLock(fd, b, 1) != F_UNLCK) {
        return std::nullopt;
      }
    }
    unsigned char header[kHeaderSize];
    unsigned char buf[kRecordSize];
    Record holder;
    if (!ReadExactly(state_fd, header, sizeof header, 0) ||
        !ReadExactly(state_fd, buf, sizeof buf,
                     mode == LockMode::kExclusive ? kExclusiveRecord : SlotRecord(slot)) ||
        !DecodeRecord(buf, &holder) || holder.owner.uuid != rec.owner.uuid) {
      return std::nullopt;  // Not this owner's lock (or no record at all).
    }
    const uint64_t last = DecodeHeader(header).token;
    if (holder.mode != mode || (mode == LockMode::kExclusive && holder.token != last)) {
      return std::nullopt;  // The record is not the one this lock guards.
    }
    if (mode != rec.mode || holder.token != rec.fencing_token) {
      *mismatch = absl::StrCat(
          "the lock on ", r.Describe(), " that ", rec.owner.name,
          " held before the exec is ", LockModeName(mode), " with fencing token ", holder.token,
          ", but the record to adopt says ", LockModeName(rec.mode), " with fencing token ",
          rec.fencing_token, ": not adopted (released when adoption finishes)");
      return std::nullopt;
    }
    return mode == LockMode::kExclusive ? -1 : slot;
  }

  static absl::Status InProgress(const Owner& owner, const Resource& r) {
    return absl::FailedPreconditionError(absl::StrCat(
        "an acquire or convert of ", r.Describe(), " for ", owner.name,
        " is still in progress; retry when it returns"));
  }

  absl::Status NotHeldBy(const Owner& owner, const Resource& r) {
    absl::StatusOr<std::vector<HolderInfo>> holders = Inquire(r);
    if (holders.ok()) {
      for (const HolderInfo& hi : *holders) {
        if (hi.owner.uuid == owner.uuid) {
          return absl::FailedPreconditionError(absl::StrCat(
              r.Describe(), " is held by ", owner.name, " in process ", hi.owner.pid,
              ", not this one (", getpid(),
              "): posixfd locks belong to the process that took them"));
        }
      }
      if (!holders->empty()) {
        return absl::PermissionDeniedError(absl::StrCat(
            owner.name, " does not hold ", r.Describe(), "; it is held ", DescribeHolders(*holders)));
      }
    }
    return absl::NotFoundError(absl::StrCat(owner.name, " holds no lock on ", r.Describe()));
  }

  static std::string DescribeHolders(const std::vector<HolderInfo>& holders) {
    std::vector<std::string> parts;
    for (const HolderInfo& h : holders) {
      if (parts.size() == 4) {
        parts.push_back(absl::StrCat("and ", holders.size() - 4, " more"));
        break;
      }
      parts.push_back(absl::StrCat(LockModeName(h.mode), " by ", h.owner.Describe()));
    }
    return absl::StrJoin(parts, ", ");
  }

  absl::Status Refusal(const Owner& owner, const Resource& r, LockMode mode,
                                const AcquireOptions& options) {
    absl::StatusOr<std::vector<HolderInfo>> holders = Inquire(r);
    std::string who = "by another owner";
    if (holders.ok()) {
      std::vector<HolderInfo> others;
      for (const HolderInfo& h : *holders) {
        if (!(h.owner.uuid == owner.uuid && h.owner.pid == getpid())) others.push_back(h);
      }
      if (!others.empty()) who = DescribeHolders(others);
    }
    std::string msg = absl::StrCat(r.Describe(), " is held ", who, "; wanted ",
                                   LockModeName(mode), " by ", owner.name);
    // The state file keeps the path the disk was first locked under: when
    // that is another spelling, say so (docs/disk-identity.md).
    Resource first;
    if (r.kind == ResourceKind::kDisk && DescribeFromStateFile(StateFileName(r), &first) &&
        first.kind == ResourceKind::kDisk && !first.path.empty() && first.path != r.path) {
      absl::StrAppend(&msg, "; it is the same disk as ", first.path,
                      " (the path it was first locked under)");
    }
    if (options.wait) {
      return absl::DeadlineExceededError(
          absl::StrCat(msg, " (waited ", absl::FormatDuration(options.timeout), ")"));
    }
    return absl::UnavailableError(msg);
  }

  // Fills r.kind, r.path, r.offset from a state file's header.
  bool DescribeFromStateFile(const std::string& file, Resource* r) {
    Fd fd(openat(dir_fd_.get(), file.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    unsigned char header[kHeaderSize];
    if (!fd.valid() || !ReadExactly(fd.get(), header, sizeof header, 0)) return false;
    const Header h = DecodeHeader(header);
    if (!h.initialised || h.path_len > kMaxPathLen) return false;
    std::string path(h.path_len, '\0');
    if (h.path_len > 0 && !ReadExactly(fd.get(), path.data(), h.path_len, kPathOffset)) return false;
    r->kind = h.kind;
    r->path = std::move(path);
    r->offset = h.offset;
    return true;
  }

  absl::Status AppendHolders(const Resource& r, std::vector<HolderInfo>* out) {
    Fd state(openat(dir_fd_.get(), StateFileName(r).c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (!state.valid()) {
      if (errno == ENOENT) return absl::OkStatus();  // Never locked.
      return ErrnoStatus(errno, absl::StrCat("cannot read lock file of ", r.Describe()));
    }
    Fd image;
    int target = state.get();
    if (const std::string path = ImageTarget(r); !path.empty()) {
      image = Fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
      if (!image.valid()) {
        return ErrnoStatus(errno, absl::StrCat("cannot open disk image ", r.path));
      }
      target = image.get();
    }
    // A record is trusted only while its lock is held and no admission is
    // rewriting it: while the gate is taken by an admission (not by an
    // exclusive holder) we look again shortly. An exclusive record must
    // also carry the header's current token, or it is a predecessor's.
    for (int attempt = 0;; ++attempt) {
      const bool retry_allowed = attempt < 100;  // 100 x 200 us: kGateSpin
      std::vector<HolderInfo> found;
      unsigned char header[kHeaderSize];
      unsigned char buf[kRecordSize];
      Record rec;
      bool settled = true;
      if (ProbeLock(target, kReadClass, 2) == F_WRLCK) {
        const bool ok = ReadExactly(state.get(), header, sizeof header, 0) &&
                        ReadExactly(state.get(), buf, sizeof buf, kExclusiveRecord) &&
                        DecodeRecord(buf, &rec) && rec.token == DecodeHeader(header).token;
        if (ok) {
          found.push_back(HolderInfo{rec.owner, r, rec.mode, rec.token});
        } else {
          settled = false;
        }
      } else if (ProbeLock(target, kGate, 1) != F_UNLCK) {
        settled = false;
      } else {
        for (int i = 0; i < kSharedSlots; ++i) {
          if (ProbeLock(target, kSlotLockBase + i, 1) == F_UNLCK) continue;
          if (ReadExactly(state.get(), buf, sizeof buf, SlotRecord(i)) && DecodeRecord(buf, &rec)) {
            found.push_back(HolderInfo{rec.owner, r, rec.mode, rec.token});
          }
        }
      }
      if (settled || !retry_allowed) {
        out->insert(out->end(), found.begin(), found.end());
        return absl::OkStatus();
      }
      absl::SleepFor(absl::Microseconds(200));
    }
  }

  const std::string lock_dir_;
  const Fd dir_fd_;
  const bool lock_image_;
  const absl::Duration check_every_;  // zero: no lock-loss checker
  const std::shared_ptr<Watch> watch_ = std::make_shared<Watch>();
  std::thread checker_;
  // Guards held_ only; never held across I/O. (std::mutex: absl::Mutex in
  // Debian's debug-configured abseil runs deadlock detection on every lock.)
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<Held>> held_;
  uint64_t next_serial_ = 0;  // under mu_
  // Exec adoption: descriptors inherited from the program image before the
  // exec that no Adopt has claimed yet. Only Adopt and FinishAdoption take
  // this mutex, never the lock paths.
  std::mutex inherited_mu_;
  std::vector<Inherited> inherited_;
  bool adoption_finished_ = false;
};

absl::Status MakeDirs(const std::string& path) {
  for (size_t i = 1; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '/') {
      const std::string prefix = path.substr(0, i);
      if (mkdir(prefix.c_str(), 0700) != 0 && errno != EEXIST) {
        return ErrnoStatus(errno, absl::StrCat("cannot create lock directory ", prefix));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Backend>> NewPosixFdBackend(const Config& settings) {
  if (absl::Status s = settings.CheckKeys({"lock_dir", "lock_target", "create_lock_dir", "check_ms"});
      !s.ok()) {
    return s;
  }
  absl::StatusOr<std::string> dir = settings.GetString("lock_dir", "/run/latchkey/locks");
  if (!dir.ok()) return dir.status();
  absl::StatusOr<std::string> target =
      settings.GetChoice("lock_target", "lockdir", {"lockdir", "image"});
  if (!target.ok()) return target.status();
  absl::StatusOr<bool> create = settings.GetBool("create_lock_dir", true);
  if (!create.ok()) return create.status();
  absl::StatusOr<int64_t> check_ms = settings.GetInt("check_ms", 2000, 0, 3600000);
  if (!check_ms.ok()) return check_ms.status();
  if (dir->empty() || (*dir)[0] != '/') {
    const ConfigEntry* e = settings.Find("lock_dir");
    return absl::InvalidArgumentError(absl::StrCat(e ? e->Where() : "<default>",
                                                   ": lock_dir must be an absolute path, got '",
                                                   *dir, "'"));
  }
  if (*create) {
    if (absl::Status s = MakeDirs(*dir); !s.ok()) return s;
  }
  Fd fd(open(dir->c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) {
    return ErrnoStatus(errno, absl::StrCat("posixfd lock directory ", *dir));
  }
  auto backend = std::make_unique<PosixFdBackend>(*dir, std::move(fd), *target == "image",
                                                  absl::Milliseconds(*check_ms));
  backend->TakeInherited();
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace
}  // namespace posixfd
}  // namespace latchkey

LATCHKEY_EXPORT_BACKEND("posixfd",
                        "POSIX OFD locks on lock files (or disk images) on this host",
                        latchkey::posixfd::kCapabilities, latchkey::posixfd::NewPosixFdBackend);
