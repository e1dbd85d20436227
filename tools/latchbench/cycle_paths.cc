// The cycle paths of latchbench (cycle_paths.h).
#include "tools/latchbench/cycle_paths.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <utility>
#include <vector>

extern "C" {  // (libsanlock's headers have no guards of their own)
#include <sanlock.h>
#include <sanlock_resource.h>
}

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "agent/client.h"
#include "backends/dlm/raw_lock.h"
#include "backends/posixfd/lock_file.h"
#include "nlohmann/json.hpp"

namespace latchkey {
namespace bench {
namespace {

using json = nlohmann::json;

// libdlm's asynchronous calls on one resource (backends/dlm/raw_lock.h).
class RawDlm final : public CyclePath {
 public:
  RawDlm(dlm_lshandle_t ls, std::string name) : ls_(ls), name_(std::move(name)) {}
  ~RawDlm() override { dlm_close_lockspace(ls_); }
  absl::Status Acquire(LockMode mode) override {
    const int m = mode == LockMode::kExclusive   ? LKM_EXMODE
                  : mode == LockMode::kSharedWrite ? LKM_CWMODE
                                                   : LKM_PRMODE;
    if (!lock_.Lock(ls_, name_, m)) {
      return absl::InternalError(absl::StrCat("dlm_ls_lock ", name_, ": status ", lock_.status(),
                                              " (", strerror(errno), ")"));
    }
    return absl::OkStatus();
  }
  // A DLM request without LKF_NOQUEUE waits in the resource's queue; the
  // completion comes with the grant.
  absl::Status AcquireWaiting(LockMode mode, absl::Duration) override { return Acquire(mode); }
  absl::Status Release() override {
    if (!lock_.Unlock(ls_)) {
      return absl::InternalError(absl::StrCat("dlm_ls_unlock ", name_, ": status ",
                                              lock_.status()));
    }
    return absl::OkStatus();
  }

 private:
  dlm_lshandle_t ls_;
  std::string name_;
  RawDlmLock lock_;
};

// libsanlock's own calls on one lease, this process registered with the
// node's sanlock daemon (its lockspace joined already, by latchd).
class RawSanlock final : public CyclePath {
 public:
  RawSanlock(int sock, const std::string& lockspace, const std::string& name,
             const std::string& path, uint64_t offset)
      : sock_(sock) {
    snprintf(r_.res.lockspace_name, SANLK_NAME_LEN, "%s", lockspace.c_str());
    snprintf(r_.res.name, SANLK_NAME_LEN, "%s", name.c_str());
    r_.res.flags = SANLK_RES_ALIGN1M | SANLK_RES_SECTOR512;
    r_.res.num_disks = 1;
    snprintf(r_.disk.path, sizeof r_.disk.path, "%s", path.c_str());
    r_.disk.offset = offset;
  }
  ~RawSanlock() override { close(sock_); }  // unregisters; sanlock drops what it held
  absl::Status Acquire(LockMode mode) override {
    if (mode != LockMode::kExclusive) {
      return absl::InvalidArgumentError("raw sanlock: exclusive leases only");
    }
    sanlk_resource* p = &r_.res;
    const int rv = sanlock_acquire(sock_, -1, 0, 1, &p, nullptr);
    if (rv != 0) {
      return absl::UnavailableError(absl::StrCat("sanlock_acquire ", r_.res.name, ": ", rv));
    }
    return absl::OkStatus();
  }
  // libsanlock has no waiting acquire: retry every 100 ms until the holder
  // is gone (the sanlock backend's wait does the same).
  absl::Status AcquireWaiting(LockMode mode, absl::Duration timeout) override {
    const absl::Time deadline = absl::Now() + timeout;
    for (;;) {
      absl::Status st = Acquire(mode);
      if (st.ok() || absl::IsInvalidArgument(st) || absl::Now() >= deadline) return st;
      absl::SleepFor(absl::Milliseconds(100));
    }
  }
  absl::Status Release() override {
    sanlk_resource* p = &r_.res;
    const int rv = sanlock_release(sock_, -1, 0, 1, &p);
    if (rv != 0) {
      return absl::InternalError(absl::StrCat("sanlock_release ", r_.res.name, ": ", rv));
    }
    return absl::OkStatus();
  }

 private:
  int sock_;
  struct {
    sanlk_resource res;
    sanlk_disk disk;  // follows res: its disks[] member
  } r_{};
};

// Through the plugin ABI, in this process.
class InProcess final : public CyclePath {
 public:
  InProcess(Backend* backend, Owner owner, Resource resource)
      : backend_(backend), owner_(std::move(owner)), resource_(std::move(resource)) {}
  absl::Status Acquire(LockMode mode) override {
    return backend_->Acquire(owner_, resource_, mode, AcquireOptions{}).status();
  }
  absl::Status AcquireWaiting(LockMode mode, absl::Duration timeout) override {
    AcquireOptions o;
    o.wait = true;
    o.timeout = timeout;
    return backend_->Acquire(owner_, resource_, mode, o).status();
  }
  absl::Status Release() override { return backend_->Release(owner_, resource_); }

 private:
  Backend* backend_;
  Owner owner_;
  Resource resource_;
};

// The raw-API baseline of posixfd: by hand, what an exclusive posixfd grant
// must do at the least (the backend's own layout: an OFD write lock on its
// lock range, the header read, the token and holder record written), and
// close to release. The in-process path adds the plugin ABI, validation, the
// owner table and the record encoding.
class RawPosixfd final : public CyclePath {
 public:
  explicit RawPosixfd(std::string file) : file_(std::move(file)) {}
  ~RawPosixfd() override {
    if (fd_ >= 0) close(fd_);
  }
  absl::Status Acquire(LockMode mode) override { return Take(mode, F_OFD_SETLK); }
  // F_OFD_SETLKW waits for the holder (no timeout: the other side releases).
  absl::Status AcquireWaiting(LockMode mode, absl::Duration) override {
    return Take(mode, F_OFD_SETLKW);
  }
  absl::Status Release() override {
    const int fd = fd_;
    fd_ = -1;
    return close(fd) == 0 ? absl::OkStatus() : absl::ErrnoToStatus(errno, "close");
  }

 private:
  absl::Status Take(LockMode mode, int cmd) {
    if (mode != LockMode::kExclusive) return absl::InvalidArgumentError("raw: exclusive only");
    fd_ = open(file_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd_ < 0) return absl::ErrnoToStatus(errno, absl::StrCat("open ", file_));
    struct flock fl = {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = posixfd::kLockBase;  // the gate and both class bytes
    fl.l_len = 3;
    if (fcntl(fd_, cmd, &fl) != 0) {
      const int e = errno;
      close(fd_);
      fd_ = -1;
      return absl::ErrnoToStatus(e, "fcntl(F_OFD_SETLK)");
    }
    unsigned char header[posixfd::kHeaderSize];
    if (pread(fd_, header, sizeof header, 0) < 0) return absl::ErrnoToStatus(errno, "pread");
    ++token_;
    memcpy(record_, &token_, sizeof token_);
    if (pwrite(fd_, record_, sizeof record_, posixfd::kTokenOffset) !=
        static_cast<ssize_t>(sizeof record_)) {
      return absl::ErrnoToStatus(errno, "pwrite");
    }
    return absl::OkStatus();
  }

  std::string file_;
  int fd_ = -1;
  uint64_t token_ = 0;
  // Token to the end of the exclusive holder record, as posixfd writes them.
  unsigned char record_[posixfd::kExclusiveRecord - posixfd::kTokenOffset + posixfd::kRecordSize] =
      {};
};

// Through latchd: one `acquire` and one `release` request per cycle, on one
// connection, for one registered owner (this process).
class ThroughLatchd final : public CyclePath {
 public:
  static absl::StatusOr<std::unique_ptr<ThroughLatchd>> Open(const std::string& socket,
                                                             const std::string& backend,
                                                             const std::string& lockspace,
                                                             const std::string& lease) {
    absl::StatusOr<LatchdClient> c = LatchdClient::Connect(socket, absl::Seconds(10));
    if (!c.ok()) return c.status();
    std::unique_ptr<ThroughLatchd> t(new ThroughLatchd(std::move(*c)));
    t->uuid_ = RandomUuid();
    t->backend_ = backend;
    t->lease_ = lease;
    t->lockspace_ = lockspace;
    absl::StatusOr<json> r = t->client_.Call(
        {{"op", "register"},
         {"owner", {{"uuid", t->uuid_}, {"name", "latchbench"}, {"pid", getpid()}}},
         {"policy", "ignore"}});
    if (!r.ok()) return r.status();
    return t;
  }
  ~ThroughLatchd() override {
    (void)client_.Call({{"op", "unregister"}, {"uuid", uuid_}});
  }
  absl::Status Acquire(LockMode mode) override {
    return client_.Call(Request(mode)).status();
  }
  absl::Status AcquireWaiting(LockMode mode, absl::Duration timeout) override {
    json r = Request(mode);
    r["wait"] = true;
    r["timeout_ms"] = absl::ToInt64Milliseconds(timeout);
    return client_.Call(r, timeout + absl::Seconds(10)).status();
  }
  absl::Status Release() override {
    return client_
        .Call({{"op", "release"},
               {"uuid", uuid_},
               {"resources",
                {{{"lease", lease_}, {"lockspace", lockspace_}, {"backend", backend_}}}}})
        .status();
  }

 private:
  explicit ThroughLatchd(LatchdClient c) : client_(std::move(c)) {}
  json Request(LockMode mode) const {
    return {{"op", "acquire"},
            {"uuid", uuid_},
            {"resources",
             {{{"lease", lease_}, {"lockspace", lockspace_}, {"backend", backend_},
               {"mode", LockModeName(mode)}}}}};
  }
  LatchdClient client_;
  std::string uuid_, backend_, lockspace_, lease_;
};

}  // namespace

std::unique_ptr<CyclePath> InProcessPath(Backend* backend, Owner owner, Resource resource) {
  return std::make_unique<InProcess>(backend, std::move(owner), std::move(resource));
}

std::unique_ptr<CyclePath> RawPosixfdPath(std::string file) {
  return std::make_unique<RawPosixfd>(std::move(file));
}

absl::StatusOr<std::unique_ptr<CyclePath>> RawDlmPath(const std::string& lockspace,
                                                      const std::string& name) {
  dlm_lshandle_t ls = dlm_open_lockspace(lockspace.c_str());
  if (ls == nullptr) ls = dlm_create_lockspace(lockspace.c_str(), 0600);
  if (ls == nullptr) {
    return absl::ErrnoToStatus(errno, absl::StrCat("opening DLM lockspace ", lockspace));
  }
  if (dlm_ls_pthread_init(ls) != 0) {
    const int e = errno;
    dlm_close_lockspace(ls);
    return absl::ErrnoToStatus(e, absl::StrCat("libdlm's thread for lockspace ", lockspace));
  }
  return std::unique_ptr<CyclePath>(new RawDlm(ls, name));
}

absl::StatusOr<std::unique_ptr<CyclePath>> RawSanlockPath(const std::string& lockspace,
                                                         const std::string& spec) {
  // NAME:PATH:OFFSET; the path may not hold a ':'.
  std::vector<std::string> f = absl::StrSplit(spec, ':');
  uint64_t offset = 0;
  if (f.size() != 3 || f[0].empty() || f[0].size() >= SANLK_NAME_LEN || f[1].empty() ||
      !absl::SimpleAtoi(f[2], &offset)) {
    return absl::InvalidArgumentError(
        absl::StrCat("a raw sanlock lease is NAME:PATH:OFFSET, not '", spec, "'"));
  }
  const int sock = sanlock_register();
  if (sock < 0) {
    return absl::UnavailableError(absl::StrCat("sanlock_register: ", sock,
                                               " (is the sanlock daemon running?)"));
  }
  return std::unique_ptr<CyclePath>(new RawSanlock(sock, lockspace, f[0], f[1], offset));
}

absl::StatusOr<std::unique_ptr<CyclePath>> LatchdPath(const std::string& socket,
                                                      const std::string& backend,
                                                      const std::string& lockspace,
                                                      const std::string& lease) {
  absl::StatusOr<std::unique_ptr<ThroughLatchd>> t =
      ThroughLatchd::Open(socket, backend, lockspace, lease);
  if (!t.ok()) return t.status();
  return std::unique_ptr<CyclePath>(std::move(*t));
}

absl::StatusOr<std::vector<double>> TimeCycles(CyclePath& path, LockMode mode, int warmup,
                                               int cycles, double max_seconds,
                                               const std::atomic<bool>* stop,
                                               const std::function<void(int, int)>& progress) {
  constexpr size_t kMinSamples = 5;
  std::vector<double> samples;
  samples.reserve(static_cast<size_t>(cycles));
  const int total = warmup + cycles;
  std::chrono::steady_clock::time_point timed_from;
  for (int i = 0; i < total; ++i) {
    if (stop != nullptr && *stop) return absl::CancelledError("interrupted");
    if (i == warmup) timed_from = std::chrono::steady_clock::now();
    if (max_seconds > 0 && samples.size() >= kMinSamples &&
        std::chrono::duration<double>(std::chrono::steady_clock::now() - timed_from).count() >=
            max_seconds) {
      break;
    }
    const auto t0 = std::chrono::steady_clock::now();
    absl::Status s = path.Acquire(mode);
    if (s.ok()) s = path.Release();
    const auto t1 = std::chrono::steady_clock::now();
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("cycle ", i + 1, " failed: ", s.message()));
    }
    if (i >= warmup) samples.push_back(std::chrono::duration<double>(t1 - t0).count());
    if (progress) progress(i + 1, total);
  }
  return samples;
}

namespace {
std::atomic<bool>* g_stop_flag = nullptr;
void SetStopFlag(int) {
  if (g_stop_flag != nullptr) *g_stop_flag = true;
}
}  // namespace

void StopOnSignals(std::atomic<bool>* stop) {
  g_stop_flag = stop;
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = {};
  sa.sa_handler = SetStopFlag;
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &sa, nullptr);
}

std::string CycleText(const std::string& backend, const std::string& path) {
  if (path == "latchd") {
    return "one acquire request (no wait) + one release request of one lease, one registered "
           "owner, one connection";
  }
  if (path == "raw" && backend == "dlm") {
    return "raw libdlm: dlm_ls_lock + dlm_ls_unlock (asynchronous calls, completion waited for "
           "on a condition variable), in the same DLM mode the backend uses";
  }
  if (path == "raw" && backend == "sanlock") {
    return "raw libsanlock: sanlock_acquire + sanlock_release of one exclusive lease (made with "
           "`sanlock direct init -r`, beside the backend's lease area on the same LUN), this "
           "process registered with the node's sanlock daemon once";
  }
  if (path == "raw") {
    return "raw OFD calls (posixfd's minimum): open, F_OFD_SETLK write lock, read the header, "
           "write token and holder record; close";
  }
  return "Backend::Acquire (no wait) + Backend::Release of one lease, one owner";
}

}  // namespace bench
}  // namespace latchkey
