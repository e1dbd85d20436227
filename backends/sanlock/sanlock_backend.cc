// The sanlock backend: disk-paxos leases through libsanlock (sanlock 3.8).
//
// How latchkey's model maps onto sanlock:
//  * Lockspaces are joined (add_lockspace) by a thread per lockspace when the
//    backend opens; progress and host states are in StateJson().
//  * Each lockspace gets its own registered sanlock client (connection). It
//    holds every lease of that lockspace as a PERSISTENT lease, so when the
//    process dies the daemon keeps them as orphans, which the next instance
//    adopts with SANLK_ACQUIRE_ORPHAN_ONLY: no window, same lease version.
//  * One sanlock lease per resource per backend instance; the local owners
//    sharing it are this backend's own table. Shared-read and shared-write
//    both fold onto sanlock's SH.
//  * Fencing token = lver << 16 | n: lver is the lease version sanlock
//    commits with every ballot; n counts local grants made under that lver
//    (shared joins and exclusive->shared converts do not ballot).
//  * The hand-off check (expect_token) asks sanlock to refuse the ballot
//    unless the on-disk lver is still the token's (SANLK_RES_LVER), and
//    checks local grants made since the token from the table.
//  * Lease loss: each client registers a killpath that writes
//    "LOCKSPACE PID" into a FIFO this backend reads. On that notice every
//    lease of the lockspace is released (no disk I/O: the lockspace is dead)
//    and each owner's loss is reported (WatchLockLoss). The client is
//    restricted from SIGKILL, so latchd itself is never killed by sanlock.
//  * Lease storage: a lease resource with a path uses it as given (manual,
//    as libvirt's <lease>); any other resource gets an automatic lease file
//    in lease_dir, created under a private name, initialised, then link()ed
//    into place, so two hosts creating it at once never corrupt it.
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

extern "C" {
#include <sanlock.h>
#include <sanlock_admin.h>
#include <sanlock_resource.h>
#include <sanlock_rv.h>
}

#include "nlohmann/json.hpp"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "backends/sanlock/lease_area.h"
#include "backends/sanlock/sanlock_disk.h"
#include "backends/sanlock/sanlock_errors.h"
#include "core/plugin_export.h"

namespace latchkey {
namespace sanlockbe {
namespace {

// Manual lease offsets must be multiples of this (sanlock's smallest
// alignment); a lease then occupies its own geometry's alignment.
constexpr uint64_t kMinAlign = kMiB;
constexpr int kSeqBits = 16;
constexpr uint64_t kSeqMask = (uint64_t{1} << kSeqBits) - 1;
constexpr size_t kNameLen = SANLK_NAME_LEN;  // 48 bytes on disk, no terminator needed
// Names latchkey accepts: one byte short of sanlock's field, because sanlock
// 3.8.5 prints a 48-byte name with %s and runs into the next field (seen in
// its inquire state strings).
constexpr size_t kMaxName = SANLK_NAME_LEN - 1;

constexpr lk_capabilities kCapabilities = {
    (1u << LK_MODE_SHARED_READ) | (1u << LK_MODE_SHARED_WRITE) | (1u << LK_MODE_EXCLUSIVE),
    LK_CAP_SURVIVES_HOLDER_DEATH | LK_CAP_ORPHAN_ADOPTION | LK_CAP_FENCING_TOKENS,
    kMaxName,
    "shared-read and shared-write are both sanlock SH: they do not exclude each other",
};

uint64_t Token(uint64_t lver, uint64_t n) { return (lver << kSeqBits) | n; }

bool IsBusy(int rv) {
  return rv == -EEXIST || rv == -EAGAIN || rv == SANLK_ACQUIRE_IDLIVE ||
         rv == SANLK_ACQUIRE_OWNED || rv == SANLK_ACQUIRE_OTHER || rv == SANLK_ACQUIRE_SHRETRY ||
         rv == SANLK_ACQUIRE_OWNED_RETRY || rv == -EUCLEAN || rv == -EBUSY;
}

// The lease storage did not answer in time or failed one read or write: a
// stalled or slow LUN or NFS server (seen in the cluster lab under load: an
// acquire waiting out a dead host failed once with SANLK_AIO_TIMEOUT). A
// waiting request retries; the lease itself is unchanged.
bool IsTransientIo(int rv) {
  return rv == SANLK_AIO_TIMEOUT || rv == SANLK_DBLOCK_READ || rv == SANLK_DBLOCK_WRITE ||
         rv == SANLK_LEADER_READ || rv == SANLK_LEADER_WRITE || rv == -EIO;
}

bool DaemonGone(int rv) { return rv == -ENOENT || rv == -ECONNREFUSED || rv == -1; }

void CopyName(char* dst, const std::string& src) {
  memset(dst, 0, kNameLen);
  memcpy(dst, src.data(), std::min(src.size(), kNameLen));
}

// A sanlk_resource with one disk.
struct OneDiskResource {
  sanlk_resource res;
  sanlk_disk disk;
};

struct LockspaceConf {
  std::string name;
  std::string path;
  uint64_t offset = 0;
};

enum class JoinState { kJoining, kJoined, kFailed, kError };

const char* JoinStateName(JoinState s) {
  switch (s) {
    case JoinState::kJoining: return "joining";
    case JoinState::kJoined: return "joined";
    case JoinState::kFailed: return "failed";
    case JoinState::kError: return "error";
  }
  return "?";
}

struct LocalHolder {
  Owner owner;
  LockMode mode;
  uint64_t token;
};

// One sanlock lease this instance holds.
// Where a lease lives, and its sector size and alignment.
struct Where {
  std::string path;
  uint64_t offset = 0;
  Geometry geo;
  // A slot of a lease area: checked again after the acquire (Verify).
  std::shared_ptr<const LeaseArea> area;
  std::optional<SlotEntry> slot;
};

struct Lease {
  Resource resource;
  Where where;
  bool shared = false;
  uint64_t lver = 0;
  std::map<std::string, LocalHolder> holders;  // by owner uuid
};

struct Lockspace {
  LockspaceConf conf;
  absl::Mutex mu;  // Guards everything below and serialises the client socket.
  JoinState state ABSL_GUARDED_BY(mu) = JoinState::kJoining;
  std::string message ABSL_GUARDED_BY(mu);
  // Why the lockspace last went away under its leases, and when (status).
  std::string last_loss ABSL_GUARDED_BY(mu);
  absl::Time last_loss_at ABSL_GUARDED_BY(mu);
  absl::Time started ABSL_GUARDED_BY(mu);
  absl::Duration join_took ABSL_GUARDED_BY(mu);
  int sock ABSL_GUARDED_BY(mu) = -1;  // registered client holding this lockspace's leases
  // A copy of `sock` for the notifier, which must not wait for `mu` (held
  // through a ballot) to watch the connection.
  std::atomic<int> watched_sock{-1};
  // The lockspace's geometry, read from its first host record at each join.
  std::atomic<uint32_t> sector{512};
  std::atomic<uint64_t> align{kMiB};
  // Automatic leases: the lease area (when configured and formatted) and
  // why automatic leases are refused, if they are (checked at each join).
  absl::Mutex area_mu;
  std::optional<AreaConf> area_conf;  // fixed after Start
  std::shared_ptr<const LeaseArea> area ABSL_GUARDED_BY(area_mu);
  std::string layout_error ABSL_GUARDED_BY(area_mu);
  std::map<std::string, Lease> leases ABSL_GUARDED_BY(mu);  // by resource name
  // Highest token granted here per resource, kept after release: the
  // hand-off check's memory of local grants that did not ballot.
  std::map<std::string, uint64_t> last_token ABSL_GUARDED_BY(mu);
  uint64_t generation ABSL_GUARDED_BY(mu) = 0;  // bumped when a local lease goes
  std::thread joiner;
};

struct Settings {
  std::string run_dir;
  int host_id = 0;
  int io_timeout = 10;
  std::vector<LockspaceConf> lockspaces;
  std::vector<AreaConf> lease_areas;
  std::string lease_dir;
  int num_hosts = 0;
  uint32_t sector_size = 0;  // new leases: 0 = the storage's
  uint64_t align_mb = 0;     // new leases: 0 = sanlock's for the sector size
  std::string notify_dir;
  absl::Duration poll = absl::Milliseconds(200);
  absl::Duration join_wait = absl::Seconds(60);
  absl::Duration free_unused_after = absl::ZeroDuration();  // 0: no sweeper
};

// libsanlock reads SANLOCK_RUN_DIR once per process: one daemon per process.
absl::Mutex g_run_dir_mu;
std::string* g_run_dir ABSL_GUARDED_BY(g_run_dir_mu) = nullptr;

absl::Status UseRunDir(const std::string& dir) {
  absl::MutexLock l(&g_run_dir_mu);
  const char* env = getenv("SANLOCK_RUN_DIR");
  const std::string want = dir.empty() ? (env ? env : "/run/sanlock") : dir;
  if (g_run_dir != nullptr && *g_run_dir != want) {
    return absl::FailedPreconditionError(absl::StrCat(
        "sanlock: this process already talks to the sanlock daemon of ", *g_run_dir,
        "; libsanlock serves one daemon per process, so run_dir ", want, " cannot be used here"));
  }
  if (!dir.empty()) setenv("SANLOCK_RUN_DIR", dir.c_str(), 1);
  if (g_run_dir == nullptr) g_run_dir = new std::string(want);
  return absl::OkStatus();
}

class SanlockBackend final : public Backend {
 public:
  explicit SanlockBackend(Settings s) : s_(std::move(s)) {}

  ~SanlockBackend() override {
    stopping_ = true;
    // The notifier first: a lockspace failure it handles starts a joiner.
    if (notify_fd_ >= 0) {
      // Wake the reader with a line it ignores.
      const char stop[] = "\n";
      (void)!write(notify_fd_, stop, 1);
    }
    if (notifier_.joinable()) notifier_.join();
    if (sweeper_.joinable()) sweeper_.join();
    for (auto& [name, ls] : lockspaces_) {
      if (ls->joiner.joinable()) ls->joiner.join();
    }
    // Closing the clients leaves every held lease as an orphan for the next
    // instance to adopt (they are persistent).
    for (auto& [name, ls] : lockspaces_) {
      absl::MutexLock l(&ls->mu);
      if (ls->sock >= 0) close(ls->sock);
    }
    if (notify_fd_ >= 0) close(notify_fd_);
    if (!fifo_.empty()) {
      unlink(fifo_.c_str());
      rmdir(fifo_.substr(0, fifo_.rfind('/')).c_str());
    }
  }

  absl::Status Start() {
    // libsanlock writes to its sockets without MSG_NOSIGNAL.
    struct sigaction old;
    if (sigaction(SIGPIPE, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) {
      signal(SIGPIPE, SIG_IGN);
    }
    if (absl::Status st = UseRunDir(s_.run_dir); !st.ok()) return st;
    sanlk_lockspace* lss = nullptr;
    int count = 0;
    const int rv = sanlock_get_lockspaces(&lss, &count, 0);
    free(lss);
    if (rv < 0) {
      const char* env = getenv("SANLOCK_RUN_DIR");
      return absl::FailedPreconditionError(absl::StrCat(
          "sanlock: the sanlock daemon does not answer at ", env ? env : "/run/sanlock",
          "/sanlock.sock: ", RvText(rv), "; start it (or the lab: lab/sanlock-lab start)"));
    }
    if (absl::Status st = StartNotifier(); !st.ok()) return st;
    for (const LockspaceConf& c : s_.lockspaces) {
      auto ls = std::make_unique<Lockspace>();
      ls->conf = c;
      for (const AreaConf& a : s_.lease_areas) {
        if (a.lockspace == c.name) ls->area_conf = a;
      }
      {
        absl::MutexLock l(&ls->mu);
        ls->started = absl::Now();
      }
      Lockspace* p = ls.get();
      lockspaces_[c.name] = std::move(ls);
      // Already joined (a restart of ours, or the admin joined it): ready
      // now. Otherwise joining takes seconds: in the background.
      sanlk_lockspace probe = LockspaceOf(c);
      if (sanlock_inq_lockspace(&probe, 0) == 0) Join(p);
      bool joined;
      {
        absl::MutexLock l(&p->mu);
        joined = p->state == JoinState::kJoined;
      }
      if (!joined) p->joiner = std::thread([this, p] { JoinUntilJoined(p); });
    }
    if (s_.free_unused_after > absl::ZeroDuration() && !s_.lease_areas.empty()) {
      sweeper_ = std::thread([this] { Sweep(); });
    }
    return absl::OkStatus();
  }

  std::string name() const override { return "sanlock"; }
  Capabilities capabilities() const override {
    return plugin_export::CapabilitiesFromAbi(kCapabilities);
  }

  absl::StatusOr<latchkey::Grant> Acquire(const Owner& owner, const Resource& resource, LockMode mode,
                                const AcquireOptions& options) override {
    absl::StatusOr<Lockspace*> ls = Ready(resource, options);
    if (!ls.ok()) return ls.status();
    absl::StatusOr<Where> where = Storage(**ls, resource);
    if (!where.ok()) return where.status();
    const bool shared = mode != LockMode::kExclusive;
    const absl::Time deadline = Deadline(options);
    absl::Time io_failing_since = absl::InfiniteFuture();  // StillTransient
    int slot_moves = 0;
    Lockspace& L = **ls;
    absl::MutexLock l(&L.mu);
    while (true) {
      if (L.state != JoinState::kJoined) return NotJoined(L);
      auto it = L.leases.find(resource.name);
      if (it != L.leases.end()) {
        Lease& lease = it->second;
        if (lease.holders.count(owner.uuid)) {
          return absl::FailedPreconditionError(absl::StrCat(
              owner.Describe(), " already holds ", resource.Describe(), ": use convert"));
        }
        if (shared && lease.shared) {
          if (options.expect_token) {
            if (absl::Status st = LocalHandOffCheck(L, lease, *options.expect_token);
                !st.ok()) {
              return st;
            }
          }
          return GrantLocal(L, lease, owner, mode, /*ballot=*/false);
        }
        if (options.expect_token) {
          // A conflicting local holder was granted after the token: refuse now.
          for (const auto& [uuid, h] : lease.holders) {
            if (h.token > *options.expect_token) return MovedSince(resource, *options.expect_token);
          }
        }
        if (!options.wait || absl::Now() >= deadline) {
          return Busy(resource, absl::StrCat("held ", LocalHolders(lease), " on this host"),
                      options.wait);
        }
        if (WaitForChange(L, deadline, options.cancel_fd)) return GaveUp(resource);
        continue;
      }
      // Not held here: ask sanlock.
      OneDiskResource r = MakeResource(L, resource, *where, shared);
      r.res.flags |= SANLK_RES_PERSISTENT;
      if (options.expect_token) {
        const uint64_t lver = *options.expect_token >> kSeqBits;
        auto last = L.last_token.find(resource.name);
        // Same lver as our last grant here: every later local grant (a
        // shared join, which does not ballot) counts, and a token above
        // our last one was never granted.
        if (lver == 0 || (last != L.last_token.end() && (last->second >> kSeqBits) == lver &&
                          last->second != *options.expect_token)) {
          return MovedSince(resource, *options.expect_token);
        }
        r.res.flags |= SANLK_RES_LVER;
        r.res.lver = lver;
      }
      const int rv = sanlock_acquire(L.sock, -1, SANLK_ACQUIRE_OWNER_NOWAIT, 1, ResPtr(&r), nullptr);
      if (rv == 0 && where->slot) {
        // Found without the allocator lease: the slot must still be ours.
        if (absl::Status v = Verify(*where->area, *where->slot); !v.ok()) {
          sanlock_release(L.sock, -1, 0, 1, ResPtr(&r));
          if (++slot_moves > 5) return v;
          L.mu.Unlock();
          where = Storage(L, resource);
          L.mu.Lock();
          if (!where.ok()) return where.status();
          continue;
        }
      }
      if (rv == 0) {
        Lease lease;
        lease.resource = resource;
        lease.where = *where;
        lease.shared = shared;
        absl::StatusOr<uint64_t> lver = CurrentLver(L, r, shared);
        if (!lver.ok()) {
          sanlock_release(L.sock, -1, 0, 1, ResPtr(&r));
          return lver.status();
        }
        lease.lver = *lver;
        auto [pos, _] = L.leases.emplace(resource.name, std::move(lease));
        return GrantLocal(L, pos->second, owner, mode, /*ballot=*/true);
      }
      if (rv == SANLK_ACQUIRE_LVER) return MovedSince(resource, *options.expect_token);
      if (IsTransientIo(rv) && options.wait && absl::Now() < deadline &&
          StillTransient(&io_failing_since)) {
        if (WaitForChange(L, deadline, options.cancel_fd)) return GaveUp(resource);
        continue;
      }
      if (!IsTransientIo(rv)) io_failing_since = absl::InfiniteFuture();
      if (!IsBusy(rv)) return Failure(L, resource, rv, *where);
      if (!options.wait || absl::Now() >= deadline) {
        return Busy(resource, HolderText(L, r, rv), options.wait);
      }
      if (WaitForChange(L, deadline, options.cancel_fd)) return GaveUp(resource);
    }
  }

  absl::StatusOr<latchkey::Grant> Convert(const Owner& owner, const Resource& resource,
                                          LockMode new_mode,
                                          const AcquireOptions& options) override {
    absl::StatusOr<Lockspace*> ls = Known(resource);
    if (!ls.ok()) return ls.status();
    Lockspace& L = **ls;
    const absl::Time deadline = Deadline(options);
    absl::Time io_failing_since = absl::InfiniteFuture();  // StillTransient
    absl::MutexLock l(&L.mu);
    while (true) {
      auto it = L.leases.find(resource.name);
      if (it == L.leases.end() || !it->second.holders.count(owner.uuid)) {
        return absl::NotFoundError(
            absl::StrCat(owner.Describe(), " holds no lock on ", resource.Describe()));
      }
      Lease& lease = it->second;
      LocalHolder& me = lease.holders[owner.uuid];
      const bool want_shared = new_mode != LockMode::kExclusive;
      if (options.expect_token) {
        auto last = L.last_token.find(resource.name);
        if (last != L.last_token.end() && last->second > *options.expect_token &&
            !(want_shared && lease.shared)) {
          return MovedSince(resource, *options.expect_token);
        }
      }
      if (want_shared == lease.shared) {
        // Shared-read <-> shared-write (folded), or the same mode: a new
        // local grant under the same lver.
        me.mode = new_mode;
        me.token = NextToken(L, lease);
        return latchkey::Grant{new_mode, me.token, absl::StrCat(lease.lver)};
      }
      OneDiskResource r = MakeResource(L, resource, lease.where, want_shared);
      r.res.flags |= SANLK_RES_PERSISTENT;
      if (!want_shared) {
        if (lease.holders.size() > 1) {
          if (!options.wait || absl::Now() >= deadline) {
            return Busy(resource, absl::StrCat("shared ", LocalHolders(lease), " on this host"),
                        options.wait);
          }
          if (WaitForChange(L, deadline, options.cancel_fd)) return GaveUp(resource);
          continue;
        }
        if (options.expect_token) {
          // sanlock's convert has no lver check: compare before the ballot.
          absl::StatusOr<uint64_t> disk = DiskLver(r);
          if (!disk.ok()) return disk.status();
          if (*disk != (*options.expect_token >> kSeqBits)) {
            return MovedSince(resource, *options.expect_token);
          }
        }
      }
      const int rv = sanlock_convert(L.sock, -1, SANLK_CONVERT_OWNER_NOWAIT, &r.res);
      if (rv == 0) {
        lease.shared = want_shared;
        if (!want_shared) {
          absl::StatusOr<uint64_t> lver = CurrentLver(L, r, false);
          if (lver.ok()) lease.lver = *lver;
        }
        me.mode = new_mode;
        me.token = NextToken(L, lease);
        return latchkey::Grant{new_mode, me.token, absl::StrCat(lease.lver)};
      }
      if (IsTransientIo(rv) && options.wait && absl::Now() < deadline &&
          StillTransient(&io_failing_since)) {
        if (WaitForChange(L, deadline, options.cancel_fd)) return GaveUp(resource);
        continue;
      }
      if (!IsTransientIo(rv)) io_failing_since = absl::InfiniteFuture();
      if (!IsBusy(rv)) return Failure(L, resource, rv, lease.where);
      if (!options.wait || absl::Now() >= deadline) {
        return Busy(resource, HolderText(L, r, rv), options.wait);
      }
      if (WaitForChange(L, deadline, options.cancel_fd)) return GaveUp(resource);
    }
  }

  absl::Status Release(const Owner& owner, const Resource& resource) override {
    absl::StatusOr<Lockspace*> ls = Known(resource);
    if (!ls.ok()) return ls.status();
    Lockspace& L = **ls;
    absl::MutexLock l(&L.mu);
    auto it = L.leases.find(resource.name);
    if (it == L.leases.end() || !it->second.holders.count(owner.uuid)) {
      if (it != L.leases.end()) {
        return absl::PermissionDeniedError(absl::StrCat(
            owner.Describe(), " does not hold ", resource.Describe(), "; it is held ",
            LocalHolders(it->second)));
      }
      return absl::NotFoundError(
          absl::StrCat(owner.Describe(), " holds no lock on ", resource.Describe()));
    }
    Lease& lease = it->second;
    if (lease.holders.size() > 1) {
      lease.holders.erase(owner.uuid);
      ++L.generation;
      return absl::OkStatus();
    }
    OneDiskResource r = MakeResource(L, resource, lease.where, lease.shared);
    const int rv = sanlock_release(L.sock, -1, 0, 1, ResPtr(&r));
    if (rv != 0 && rv != -ENOENT && L.state == JoinState::kJoined) {
      return absl::UnavailableError(absl::StrCat("sanlock: releasing ", resource.Describe(),
                                                 " failed: ", RvText(rv), "; it is still held"));
    }
    L.leases.erase(it);
    ++L.generation;
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<HolderInfo>> Inquire(
      const std::optional<Resource>& resource) override {
    std::vector<HolderInfo> out;
    for (auto& [name, ls] : lockspaces_) {
      if (resource && resource->lockspace != name) continue;
      absl::MutexLock l(&ls->mu);
      for (const auto& [rname, lease] : ls->leases) {
        if (resource && resource->name != rname) continue;
        for (const auto& [uuid, h] : lease.holders) {
          out.push_back(HolderInfo{h.owner, lease.resource, h.mode, h.token});
        }
      }
      if (!resource || ls->leases.count(resource->name)) continue;
      // Not held here: the holders other hosts have, as far as the disk says.
      absl::StatusOr<Where> where = Storage(*ls, *resource, /*create=*/false);
      if (!where.ok()) continue;
      OneDiskResource r = MakeResource(*ls, *resource, *where, false);
      sanlk_host* hosts = nullptr;
      int n = 0;
      if (sanlock_read_resource_owners(&r.res, 0, &hosts, &n) == 0) {
        for (int i = 0; i < n; ++i) {
          HolderInfo h;
          h.owner.host = HostLabel(*ls, hosts[i].host_id);
          h.resource = *resource;
          h.mode = (r.res.flags & SANLK_RES_SHARED) ? LockMode::kSharedWrite : LockMode::kExclusive;
          h.fencing_token = Token(r.res.lver, 0);
          out.push_back(h);
        }
      }
      free(hosts);
    }
    return out;
  }

  absl::StatusOr<latchkey::Grant> Adopt(const LockRecord& record) override {
    AcquireOptions wait_join;
    wait_join.wait = true;
    wait_join.timeout = s_.join_wait;
    absl::StatusOr<Lockspace*> ls = Ready(record.resource, wait_join);
    if (!ls.ok()) return ls.status();
    absl::StatusOr<Where> where = Storage(**ls, record.resource, /*create=*/false);
    if (!where.ok()) return where.status();
    Lockspace& L = **ls;
    const bool shared = record.mode != LockMode::kExclusive;
    absl::MutexLock l(&L.mu);
    if (L.state != JoinState::kJoined) return NotJoined(L);
    auto it = L.leases.find(record.resource.name);
    if (it == L.leases.end()) {
      OneDiskResource r = MakeResource(L, record.resource, *where, shared);
      r.res.flags |= SANLK_RES_PERSISTENT;
      // ORPHAN_ONLY needs LVB too in 3.8.5, or it acquires afresh when no
      // orphan exists. After a re-exec the old connection may not be gone
      // yet (-EEXIST): give the daemon a moment.
      int rv = 0;
      for (int attempt = 0; attempt < 50; ++attempt) {
        rv = sanlock_acquire(L.sock, -1, SANLK_ACQUIRE_ORPHAN_ONLY | SANLK_ACQUIRE_LVB, 1,
                             ResPtr(&r), nullptr);
        if (rv != -EEXIST) break;
        L.mu.Unlock();
        absl::SleepFor(absl::Milliseconds(40));
        L.mu.Lock();
      }
      if (rv == -ENOENT) {
        return absl::NotFoundError(absl::StrCat(
            "sanlock: no orphan of ", record.resource.Describe(),
            " on this host to adopt: it was released, or the daemon or lockspace restarted"));
      }
      if (rv == -EUCLEAN) {
        return absl::AbortedError(absl::StrCat("sanlock: the orphan of ",
                                               record.resource.Describe(),
                                               " is held in the other mode"));
      }
      if (rv != 0) return Failure(L, record.resource, rv, *where);
      Lease lease;
      lease.resource = record.resource;
      lease.where = *where;
      lease.shared = shared;
      lease.lver = record.fencing_token >> kSeqBits;
      it = L.leases.emplace(record.resource.name, std::move(lease)).first;
    } else if (!(shared && it->second.shared) ||
               (record.fencing_token >> kSeqBits) != it->second.lver) {
      return absl::AbortedError(absl::StrCat("sanlock: ", record.resource.Describe(),
                                             " is held here in a way the record does not match"));
    }
    Lease& lease = it->second;
    lease.holders[record.owner.uuid] =
        LocalHolder{record.owner, record.mode, record.fencing_token};
    uint64_t& last = L.last_token[record.resource.name];
    last = std::max(last, record.fencing_token);
    return latchkey::Grant{record.mode, record.fencing_token, absl::StrCat(lease.lver)};
  }

  absl::Status Health() override {
    sanlk_lockspace* lss = nullptr;
    int count = 0;
    const int rv = sanlock_get_lockspaces(&lss, &count, 0);
    free(lss);
    if (rv < 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("sanlock: the daemon does not answer: ", RvText(rv)));
    }
    for (auto& [name, ls] : lockspaces_) {
      absl::MutexLock l(&ls->mu);
      if (ls->state == JoinState::kFailed || ls->state == JoinState::kError) {
        return absl::FailedPreconditionError(absl::StrCat(
            "sanlock: lockspace ", name, " ", JoinStateName(ls->state), ": ", ls->message));
      }
    }
    return absl::OkStatus();
  }

  // Persistent leases outlive the connection: closing it on exec (the
  // sockets are made close-on-exec here) leaves orphans to adopt.
  absl::Status PrepareExec() override {
    for (auto& [name, ls] : lockspaces_) {
      absl::MutexLock l(&ls->mu);
      if (ls->sock >= 0) fcntl(ls->sock, F_SETFD, FD_CLOEXEC);
    }
    if (notify_fd_ >= 0) fcntl(notify_fd_, F_SETFD, FD_CLOEXEC);
    return absl::OkStatus();
  }

  // Orphans nobody adopted (their owners are gone) are released.
  void FinishAdoption() override {
    for (auto& [name, ls] : lockspaces_) {
      absl::MutexLock l(&ls->mu);
      if (ls->state != JoinState::kJoined || ls->sock < 0) continue;
      OneDiskResource r{};
      CopyName(r.res.lockspace_name, name);
      r.res.num_disks = 1;
      sanlock_release(ls->sock, -1, SANLK_REL_ORPHAN, 1, ResPtr(&r));
    }
  }

  std::string StateJson() override {
    std::vector<std::string> items;
    for (auto& [name, ls] : lockspaces_) {
      JoinState state;
      std::string message;
      absl::Duration took, elapsed;
      size_t leases = 0;
      std::string last_loss;
      {
        absl::MutexLock l(&ls->mu);
        state = ls->state;
        message = ls->message;
        took = ls->join_took;
        elapsed = absl::Now() - ls->started;
        leases = ls->leases.size();
        if (!ls->last_loss.empty()) {
          last_loss = absl::StrCat(",\"last_loss\":\"", Escape(ls->last_loss),
                                   "\",\"last_loss_ago_ms\":",
                                   absl::ToInt64Milliseconds(absl::Now() - ls->last_loss_at));
        }
      }
      std::string hosts;
      if (state == JoinState::kJoined) hosts = HostsJson(*ls);
      items.push_back(absl::StrCat(
          "{\"name\":\"", name, "\",\"host_id\":", s_.host_id, ",\"path\":\"", Escape(ls->conf.path),
          "\",\"offset\":", ls->conf.offset, ",\"state\":\"", JoinStateName(state), "\"",
          state == JoinState::kJoining
              ? absl::StrCat(",\"joining_for_ms\":", absl::ToInt64Milliseconds(elapsed))
              : absl::StrCat(",\"join_took_ms\":", absl::ToInt64Milliseconds(took)),
          message.empty() ? "" : absl::StrCat(",\"message\":\"", Escape(message), "\""),
          last_loss, ",\"leases\":", leases, hosts.empty() ? "" : absl::StrCat(",\"hosts\":", hosts), "}"));
    }
    return absl::StrCat("{\"io_timeout\":", s_.io_timeout, ",\"lockspaces\":[",
                        absl::StrJoin(items, ","), "]}");
  }

  absl::StatusOr<std::string> Admin(const std::string& request) override {
    using json = nlohmann::json;
    json req = json::parse(request, nullptr, /*allow_exceptions=*/false);
    if (!req.is_object() || !req.contains("command") || !req["command"].is_string()) {
      return absl::InvalidArgumentError("sanlock: a command is an object {\"command\": ...}");
    }
    const std::string cmd = req["command"];
    std::string only;
    if (req.contains("lockspace")) {
      if (!req["lockspace"].is_string()) return absl::InvalidArgumentError("lockspace: a string");
      only = req["lockspace"];
      if (!lockspaces_.count(only)) {
        return absl::InvalidArgumentError(absl::StrCat("sanlock: lockspace '", only,
                                                       "' is not configured"));
      }
    }
    std::vector<Lockspace*> targets;
    for (auto& [name, ls] : lockspaces_) {
      if (only.empty() || name == only) targets.push_back(ls.get());
    }
    for (const auto& [key, value] : req.items()) {
      static const std::set<std::string> kKeys = {"command", "lockspace", "force", "unused_for_s",
                                                  "remove", "dry_run"};
      if (!kKeys.count(key)) {
        return absl::InvalidArgumentError(absl::StrCat("sanlock: unknown field '", key, "'"));
      }
    }
    if (cmd == "leases") {
      json out = json::array();
      for (Lockspace* L : targets) out.push_back(json::parse(LeasesJson(*L)));
      return json{{"lockspaces", out}}.dump();
    }
    if (cmd == "format") {
      if (only.empty()) return absl::InvalidArgumentError("sanlock: format needs a lockspace");
      const bool force = req.value("force", false);
      absl::StatusOr<std::string> r = FormatArea(*targets[0], force);
      if (!r.ok()) return r.status();
      return json{{"formatted", *r}}.dump();
    }
    if (cmd == "clean") {
      CleanOptions o;
      o.dry_run = req.value("dry_run", false);
      if (req.contains("unused_for_s")) {
        if (!req["unused_for_s"].is_number_integer() || req["unused_for_s"].get<int64_t>() < 0) {
          return absl::InvalidArgumentError("sanlock: unused_for_s must be seconds, 0 or more");
        }
        o.unused_for = absl::Seconds(req["unused_for_s"].get<int64_t>());
      }
      if (req.contains("remove")) {
        if (!req["remove"].is_array()) return absl::InvalidArgumentError("remove: a list of names");
        for (const json& n : req["remove"]) {
          if (!n.is_string()) return absl::InvalidArgumentError("remove: a list of names");
          o.remove.insert(n.get<std::string>());
        }
      }
      if (o.remove.empty() && o.unused_for == absl::InfiniteDuration()) {
        return absl::InvalidArgumentError(
            "sanlock: clean needs unused_for_s (free leases unused that long) or remove (names)");
      }
      json freed = json::array(), kept = json::array();
      for (Lockspace* L : targets) {
        absl::Status st = Clean(*L, o, &freed, &kept);
        if (!st.ok() && !only.empty()) return st;
      }
      return json{{"freed", freed}, {"kept", kept}, {"dry_run", o.dry_run}}.dump();
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "sanlock: unknown command '", cmd, "' (expected leases, format or clean)"));
  }

  void WatchLockLoss(LockLossHandler handler) override {
    absl::MutexLock l(&handler_mu_);
    handler_ = std::move(handler);
  }

 private:
  // Sleeps (without the lock) until a local release or the next poll of
  // sanlock, whichever comes first.
  // Waits for a change in the lockspace, the deadline or the next poll;
  // true (at once, without waiting) when the caller gave up (cancel_fd).
  // Whether storage failing since *since (InfiniteFuture: not failing; set
  // to now) may still be a passing stall: for as long as sanlock itself
  // would wait before failing a lockspace (8 x io_timeout). After that a
  // waiting request ends with the storage error instead of waiting blind.
  bool StillTransient(absl::Time* since) const {
    const absl::Time now = absl::Now();
    if (*since == absl::InfiniteFuture()) *since = now;
    return now - *since < absl::Seconds(8 * s_.io_timeout);
  }

  bool WaitForChange(Lockspace& L, absl::Time deadline, int cancel_fd)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(L.mu) {
    if (WaitCancelled(cancel_fd)) return true;
    struct Changed {
      Lockspace* l;
      uint64_t seen;
      bool operator()() const ABSL_NO_THREAD_SAFETY_ANALYSIS { return l->generation != seen; }
    } changed{&L, L.generation};
    L.mu.AwaitWithDeadline(absl::Condition(&changed), std::min(deadline, absl::Now() + s_.poll));
    return false;
  }

  static absl::Status GaveUp(const Resource& r) {
    return absl::CancelledError(
        absl::StrCat("sanlock: the wait for ", r.Describe(), " was given up by its caller"));
  }

  static sanlk_resource** ResPtr(OneDiskResource* r) {
    static thread_local sanlk_resource* p;
    p = &r->res;
    return &p;
  }

  static std::string Escape(const std::string& s) {
    std::string out;
    for (char c : s) {
      if (c == '"' || c == '\\') out.push_back('\\');
      if (static_cast<unsigned char>(c) < 0x20) continue;
      out.push_back(c);
    }
    return out;
  }

  absl::Time Deadline(const AcquireOptions& o) const {
    if (!o.wait) return absl::Now();
    if (o.timeout == absl::InfiniteDuration()) return absl::InfiniteFuture();
    return absl::Now() + o.timeout;
  }

  absl::StatusOr<Lockspace*> Known(const Resource& resource) {
    auto it = lockspaces_.find(resource.lockspace);
    if (it == lockspaces_.end()) {
      std::vector<std::string> names;
      for (const auto& [n, _] : lockspaces_) names.push_back(n);
      return absl::InvalidArgumentError(absl::StrCat(
          "sanlock: ", resource.Describe(), ": lockspace '", resource.lockspace,
          "' is not configured (configured: ", names.empty() ? "none" : absl::StrJoin(names, ", "),
          "; see the 'lockspaces' setting)"));
    }
    return it->second.get();
  }

  // The lockspace of `resource`, joined (waiting for the join as long as
  // the options allow).
  absl::StatusOr<Lockspace*> Ready(const Resource& resource, const AcquireOptions& options) {
    absl::StatusOr<Lockspace*> ls = Known(resource);
    if (!ls.ok()) return ls;
    const absl::Time deadline = Deadline(options);
    absl::MutexLock l(&(*ls)->mu);
    Lockspace* p = *ls;
    p->mu.AwaitWithDeadline(
        absl::Condition(+[](Lockspace* x) ABSL_NO_THREAD_SAFETY_ANALYSIS {
          return x->state != JoinState::kJoining;
        }, p),
        deadline);
    if (p->state != JoinState::kJoined) return NotJoined(*p);
    return p;
  }

  absl::Status NotJoined(Lockspace& L) ABSL_EXCLUSIVE_LOCKS_REQUIRED(L.mu) {
    if (L.state == JoinState::kJoining) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sanlock: lockspace ", L.conf.name, " is still joining (for ",
          absl::ToInt64Milliseconds(absl::Now() - L.started), " ms; a join takes about ",
          2 * s_.io_timeout + 1, " s at io_timeout ", s_.io_timeout, "): retry, or wait"));
    }
    return absl::FailedPreconditionError(absl::StrCat("sanlock: lockspace ", L.conf.name, " is ",
                                                      JoinStateName(L.state), ": ", L.message));
  }

  // Where the lease of `resource` lives: a manual lease's own path and
  // offset, or an automatic lease file (created on first use).
  absl::StatusOr<Where> Storage(Lockspace& L, const Resource& resource, bool create = true) {
    if (resource.kind == ResourceKind::kLease && !resource.path.empty()) {
      return ManualLease(L, resource);
    }
    std::string refused;
    std::shared_ptr<const LeaseArea> area = CurrentArea(L, &refused);
    if (!refused.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sanlock: ", resource.Describe(), ": automatic leases are refused: ", refused));
    }
    if (L.area_conf) return SlotLease(L, area, resource, create);
    return LeaseFile(L, resource, create);
  }

  // The lockspace's lease area, looking at the storage again when this
  // host was refused (another host may have formatted it since); the error
  // when still refused.
  std::shared_ptr<const LeaseArea> CurrentArea(Lockspace& L, std::string* error) {
    for (int attempt = 0;; ++attempt) {
      {
        absl::MutexLock l(&L.area_mu);
        if (L.layout_error.empty() || attempt > 0) {
          *error = L.layout_error;
          return L.area;
        }
      }
      CheckLayout(L);
    }
  }

  // How long creating a lease waits for the allocator lease: past the time
  // a dead holder's lease takes to expire (8 x io_timeout + 60 s).
  absl::Time AllocatorDeadline() const {
    return absl::Now() + absl::Seconds(8 * s_.io_timeout + 70);
  }

  // An automatic lease in a slot of the lockspace's lease area.
  absl::StatusOr<Where> SlotLease(Lockspace& L, std::shared_ptr<const LeaseArea> area,
                                  const Resource& resource, bool create) {
    if (area == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sanlock: ", resource.Describe(), ": lease area ", L.area_conf->ToString(),
          " is not open yet (the lockspace is joining)"));
    }
    SlotOps ops(this, L, area->geometry());
    absl::StatusOr<SlotEntry> e =
        FindOrAllocate(*area, ops, resource.name, static_cast<uint64_t>(s_.host_id), create,
                       AllocatorDeadline());
    if (!e.ok()) {
      return absl::Status(e.status().code(),
                          absl::StrCat("sanlock: ", resource.Describe(), ": ", e.status().message()));
    }
    Where w{area->conf().path, area->SlotOffset(e->slot), area->geometry(), area, *e};
    return w;
  }

  // The allocator's sanlock operations, on lockspace L's client: leases
  // taken here are not persistent, so a dying latchd never leaves the
  // allocator lease behind.
  class SlotOps final : public LeaseOps {
   public:
    SlotOps(SanlockBackend* b, Lockspace& L, const Geometry& geo) : b_(b), L_(L), geo_(geo) {}
    absl::Status TryLockExclusive(const std::string& name, uint64_t offset) override {
      if (b_->stopping_) return absl::CancelledError("sanlock: latchd is stopping");
      absl::MutexLock l(&L_.mu);
      if (L_.state != JoinState::kJoined) return b_->NotJoined(L_);
      OneDiskResource r = MakeResource(L_, name, Where{L_.area_conf->path, offset, geo_}, false);
      const int rv = sanlock_acquire(L_.sock, -1, SANLK_ACQUIRE_OWNER_NOWAIT, 1, ResPtr(&r), nullptr);
      if (rv == 0) return absl::OkStatus();
      const std::string text = absl::StrCat("the lease area's ", name, " lease: ", RvText(rv));
      if (IsBusy(rv) || IsTransientIo(rv)) return absl::UnavailableError(text);
      return absl::FailedPreconditionError(text);
    }
    void Unlock(const std::string& name, uint64_t offset) override {
      absl::MutexLock l(&L_.mu);
      OneDiskResource r = MakeResource(L_, name, Where{L_.area_conf->path, offset, geo_}, false);
      if (L_.sock >= 0) sanlock_release(L_.sock, -1, 0, 1, ResPtr(&r));
    }
    absl::Status WriteLease(const std::string& name, uint64_t offset) override {
      OneDiskResource r = MakeResource(L_, name, Where{L_.area_conf->path, offset, geo_}, false);
      const int rv = sanlock_write_resource(&r.res, 0, b_->s_.num_hosts, 0);
      if (rv != 0) {
        return absl::UnavailableError(absl::StrCat("cannot initialise the lease of ", name, " at ",
                                                   L_.area_conf->path, ":", offset, ": ",
                                                   RvText(rv)));
      }
      return absl::OkStatus();
    }

   private:
    SanlockBackend* b_;
    Lockspace& L_;
    Geometry geo_;
  };

  absl::StatusOr<Where> ManualLease(Lockspace& L, const Resource& resource) {
    if (resource.offset % kMinAlign != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sanlock: ", resource.Describe(), ": offset ", resource.offset,
          " is not a multiple of the lease alignment (", kMinAlign, " bytes)"));
    }
    absl::StatusOr<uint64_t> size = StorageSize(resource.path);
    if (!size.ok()) return size.status();
    if (*size < resource.offset + kMinAlign) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sanlock: ", resource.Describe(), ": lease file ", resource.path, " is too small (",
          *size, " bytes; a lease at offset ", resource.offset, " needs ",
          resource.offset + kMinAlign, ")"));
    }
    absl::StatusOr<LeaderRecord> leader = ReadLeader(resource.path, resource.offset);
    if (!leader.ok()) {
      return absl::UnavailableError(absl::StrCat("sanlock: ", resource.Describe(), ": ",
                                                 leader.status().message()));
    }
    if (!leader->IsPaxos()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sanlock: ", resource.Describe(), ": no usable lease at ", resource.path, ":",
          resource.offset, ": no sanlock lease was initialised there (initialise it once with "
          "sanlock direct init -r ", L.conf.name, ":", resource.name, ":", resource.path, ":",
          resource.offset, ", adding -Z 4096 -A 8M on 4096-byte storage)"));
    }
    absl::StatusOr<Geometry> geo = leader->GetGeometry();
    if (!geo.ok()) return geo.status();
    Where w{resource.path, resource.offset, *geo};
    if (absl::Status st = Fits(L, resource, w, *size); !st.ok()) return st;
    return w;
  }

  // Whether sanlock can use a lease of this geometry in lockspace L: it
  // reads every lease first with the lockspace's sector size and checks the
  // storage reaches the lockspace's alignment past the offset (-EMSGSIZE).
  absl::Status Fits(Lockspace& L, const Resource& resource, const Where& w, uint64_t size) {
    const uint32_t ls_sector = L.sector;
    const uint64_t need = w.offset + std::max<uint64_t>(w.geo.align, L.align);
    if (w.geo.sector > ls_sector) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sanlock: ", resource.Describe(), ": the lease at ", w.path, ":", w.offset, " has ",
          w.geo.ToString(), " but lockspace ", L.conf.name, " has ", ls_sector,
          "-byte sectors; sanlock reads each lease with its lockspace's sector size first, which "
          "fails on 4096-byte storage: put the lockspace on 4096-byte storage too"));
    }
    if (size < need) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sanlock: ", resource.Describe(), ": lease file ", w.path, " is too small (", size,
          " bytes; a lease at offset ", w.offset, " in lockspace ", L.conf.name, " needs ", need,
          ": sanlock checks the lockspace's alignment, ", L.align.load() / kMiB, " MiB)"));
    }
    return absl::OkStatus();
  }

  // The geometry new leases get on `path` (an existing file at least 4096
  // bytes long, or a block device): the configured one, else the storage's.
  absl::StatusOr<Geometry> NewLeaseGeometry(const std::string& path) {
    uint32_t sector = s_.sector_size;
    if (sector == 0) {
      absl::StatusOr<uint32_t> detected = StorageSectorSize(path);
      if (!detected.ok()) return detected.status();
      sector = *detected;
    }
    if (s_.align_mb == 0) return Geometry::ForSector(sector);
    return Geometry::Make(sector, s_.align_mb * kMiB);
  }

  // An automatic lease file in lease_dir/LOCKSPACE/NAME, created on first
  // use.
  absl::StatusOr<Where> LeaseFile(Lockspace& L, const Resource& resource, bool create) {
    if (s_.lease_dir.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sanlock: ", resource.Describe(),
          " has no lease path and no lease_dir is configured for automatic leases"));
    }
    const std::string dir = absl::StrCat(s_.lease_dir, "/", L.conf.name);
    const std::string path = absl::StrCat(dir, "/", resource.name);
    if (access(path.c_str(), F_OK) == 0) return ExistingLeaseFile(L, resource, path);
    if (!create) {
      return absl::NotFoundError(
          absl::StrCat("sanlock: ", resource.Describe(), " has no lease file ", path));
    }
    if (mkdir(dir.c_str(), 0770) != 0 && errno != EEXIST) {
      const int err = errno;
      // lease_dir itself is never created: missing, it is most likely a
      // shared mount that is not there, and lease files on a local disk
      // would exclude nothing across hosts.
      struct stat st;
      if (err == ENOENT && stat(s_.lease_dir.c_str(), &st) != 0) {
        return absl::FailedPreconditionError(absl::StrCat(
            "sanlock: lease_dir ", s_.lease_dir,
            " does not exist; create it on storage every host shares (an NFS mount), "
            "latchkey does not, so that an unmounted share is never replaced by a local "
            "directory"));
      }
      return absl::FailedPreconditionError(
          absl::StrCat("sanlock: cannot create lease directory ", dir, ": ", strerror(err)));
    }
    // Initialise under a private name, then link() into place: link fails
    // with EEXIST for every creator but one, so a lease is never written
    // twice, and nobody ever uses a half-written one.
    char host[64] = "";
    gethostname(host, sizeof(host) - 1);
    const std::string tmp =
        absl::StrCat(dir, "/.", resource.name, ".", host, ".", getpid(), ".", next_tmp_++);
    struct Unlink {
      const std::string& p;
      ~Unlink() { unlink(p.c_str()); }
    } unlink_tmp{tmp};
    const int fd = open(tmp.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0660);
    // A written first block: what StorageSectorSize probes on NFS.
    static const std::string kZeros(4096, '\0');
    if (fd < 0 || pwrite(fd, kZeros.data(), kZeros.size(), 0) != 4096 || fsync(fd) != 0) {
      const int err = errno;
      if (fd >= 0) close(fd);
      return absl::FailedPreconditionError(
          absl::StrCat("sanlock: cannot create lease file ", tmp, ": ", strerror(err)));
    }
    absl::StatusOr<Geometry> geo = NewLeaseGeometry(tmp);
    if (!geo.ok()) {
      close(fd);
      return absl::FailedPreconditionError(absl::StrCat(
          "sanlock: cannot create the lease of ", resource.Describe(), " in ", dir, ": ",
          geo.status().message()));
    }
    Where w{tmp, 0, *geo};
    const uint64_t size = std::max<uint64_t>(geo->align, L.align);
    const int trunc = ftruncate(fd, static_cast<off_t>(size));
    close(fd);
    if (trunc != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("sanlock: cannot size lease file ", tmp, ": ", strerror(errno)));
    }
    if (absl::Status st = Fits(L, resource, w, size); !st.ok()) return st;
    OneDiskResource r = MakeResource(L, resource, w, false);
    int rv = sanlock_write_resource(&r.res, 0, s_.num_hosts, 0);
    if (rv == 0) {
      const int dfd = open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
      if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
      }
      if (link(tmp.c_str(), path.c_str()) != 0 && errno != EEXIST) rv = -errno;
    }
    if (rv != 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sanlock: cannot initialise the lease of ", resource.Describe(), " in ", path, " (",
          geo->ToString(), "): ", RvText(rv)));
    }
    return ExistingLeaseFile(L, resource, path);
  }

  // A lease file that exists: checked before sanlock sees it, so a broken
  // one is named with what to do instead of failing every acquire alike.
  absl::StatusOr<Where> ExistingLeaseFile(Lockspace& L, const Resource& resource,
                                          const std::string& path) {
    absl::StatusOr<uint64_t> size = StorageSize(path);
    if (!size.ok()) return size.status();
    absl::StatusOr<LeaderRecord> leader =
        *size >= 4096 ? ReadLeader(path, 0)
                      : absl::StatusOr<LeaderRecord>(LeaderRecord{});
    if (!leader.ok()) {
      return absl::UnavailableError(absl::StrCat("sanlock: ", resource.Describe(), ": ",
                                                 leader.status().message()));
    }
    if (!leader->IsPaxos()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sanlock: ", resource.Describe(), ": lease file ", path,
          " holds no sanlock lease (blank or overwritten, ", *size,
          " bytes), so nobody can hold it: remove it and the next use creates a new one"));
    }
    absl::StatusOr<Geometry> geo = leader->GetGeometry();
    if (!geo.ok()) return geo.status();
    absl::StatusOr<uint32_t> sector = StorageSectorSize(path);
    if (sector.ok() && *sector > geo->sector) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sanlock: ", resource.Describe(), ": lease file ", path, " was written for ",
          geo->sector, "-byte sectors but its file system needs ", *sector,
          "-byte direct I/O, so no host can ever acquire it (an older latchkey wrote it): "
          "remove it, nobody can hold it, and the next use creates a correct one"));
    }
    Where w{path, 0, *geo};
    if (absl::Status st = Fits(L, resource, w, *size); !st.ok()) return st;
    return w;
  }

  OneDiskResource MakeResource(const Lockspace& L, const Resource& resource, const Where& where,
                               bool shared) const {
    return MakeResource(L, resource.name, where, shared);
  }
  static OneDiskResource MakeResource(const Lockspace& L, const std::string& name,
                                      const Where& where, bool shared) {
    OneDiskResource r{};
    CopyName(r.res.lockspace_name, L.conf.name);
    CopyName(r.res.name, name);
    r.res.flags = where.geo.ResourceFlags() | (shared ? SANLK_RES_SHARED : 0);
    r.res.num_disks = 1;
    snprintf(r.disk.path, sizeof(r.disk.path), "%s", where.path.c_str());
    r.disk.offset = where.offset;
    return r;
  }

  // The lease version of a lease this client now holds: from the daemon's
  // memory for exclusive (no I/O), from the leader record for shared
  // (inquire shows ":SH" there).
  absl::StatusOr<uint64_t> CurrentLver(Lockspace& L, OneDiskResource& r, bool shared)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(L.mu) {
    if (shared) return DiskLver(r);
    int count = 0;
    char* state = nullptr;
    const int rv = sanlock_inquire(L.sock, -1, 0, &count, &state);
    if (rv != 0) {
      free(state);
      return absl::InternalError(absl::StrCat("sanlock: inquire failed: ", RvText(rv)));
    }
    const std::string text = state ? state : "";
    free(state);
    const std::string prefix = absl::StrCat(L.conf.name, ":", std::string(r.res.name, strnlen(r.res.name, kNameLen)), ":");
    // "LS:NAME:PATH:OFFSET:LVER" per lease, space-separated.
    for (size_t at = text.find(prefix); at != std::string::npos; at = text.find(prefix, at + 1)) {
      if (at != 0 && text[at - 1] != ' ') continue;
      const size_t end = std::min(text.find(' ', at), text.size());
      const std::string one = text.substr(at, end - at);
      uint64_t lver = 0;
      if (absl::SimpleAtoi(one.substr(one.rfind(':') + 1), &lver)) return lver;
    }
    return absl::InternalError(absl::StrCat("sanlock: inquire does not list ", prefix, " in \"", absl::CHexEscape(text), "\""));
  }

  static absl::StatusOr<uint64_t> DiskLver(OneDiskResource& r) {
    OneDiskResource copy = r;
    const int rv = sanlock_read_resource(&copy.res, 0);
    if (rv != 0) {
      return absl::InternalError(absl::StrCat("sanlock: reading the lease of ",
                                              std::string(r.res.name, strnlen(r.res.name, kNameLen)),
                                              " failed: ", RvText(rv)));
    }
    return copy.res.lver;
  }

  uint64_t NextToken(Lockspace& L, Lease& lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(L.mu) {
    uint64_t& last = L.last_token[lease.resource.name];
    const uint64_t base = Token(lease.lver, 0);
    last = last >= base ? last + 1 : base;
    return last;
  }

  absl::StatusOr<latchkey::Grant> GrantLocal(Lockspace& L, Lease& lease, const Owner& owner,
                                        LockMode mode, bool ballot)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(L.mu) {
    uint64_t token;
    if (ballot) {
      token = Token(lease.lver, 0);
      uint64_t& last = L.last_token[lease.resource.name];
      last = std::max(last, token);
    } else {
      token = NextToken(L, lease);
    }
    lease.holders[owner.uuid] = LocalHolder{owner, mode, token};
    return latchkey::Grant{mode, token, absl::StrCat(lease.lver)};
  }

  // A shared join under a lease held here since before the token.
  absl::Status LocalHandOffCheck(Lockspace& L, const Lease& lease, uint64_t expect)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(L.mu) {
    auto last = L.last_token.find(lease.resource.name);
    if ((expect >> kSeqBits) != lease.lver ||
        (last != L.last_token.end() && expect > last->second)) {
      return MovedSince(lease.resource, expect);
    }
    return absl::OkStatus();  // Every grant since is shared: compatible.
  }

  static absl::Status MovedSince(const Resource& r, uint64_t token) {
    return absl::AbortedError(absl::StrCat(
        "sanlock: ", r.Describe(), " was granted to someone else since fencing token ", token,
        " (lease version ", token >> kSeqBits, "): the fencing token moved"));
  }

  // A refusal; after a wait, the wait ran out.
  static absl::Status Busy(const Resource& r, const std::string& who, bool waited = false) {
    const std::string text = absl::StrCat("sanlock: ", r.Describe(), " is ", who);
    return waited ? absl::DeadlineExceededError(absl::StrCat(text, " (the wait ran out)"))
                  : absl::UnavailableError(text);
  }

  static std::string LocalHolders(const Lease& lease) {
    std::vector<std::string> parts;
    for (const auto& [uuid, h] : lease.holders) {
      parts.push_back(absl::StrCat(LockModeName(h.mode), " by ", h.owner.Describe()));
    }
    return absl::StrJoin(parts, ", ");
  }

  std::string HostLabel(Lockspace& L, uint64_t host_id) {
    const std::string name = ReadHostName(L.conf.path, L.conf.offset, L.sector.load(), host_id);
    return name.empty() ? absl::StrCat("host_id ", host_id)
                        : absl::StrCat(name, " (host_id ", host_id, ")");
  }

  // Who holds the lease, from its leader and mode blocks on disk.
  std::string HolderText(Lockspace& L, OneDiskResource& r, int rv) {
    if (rv == -EEXIST) {
      return absl::StrCat("held by another process on this host (",
                          HostLabel(L, static_cast<uint64_t>(s_.host_id)), ")");
    }
    if (rv == -EUCLEAN) {
      return "held as an orphan on this host: a stopped latchd left it; the next latchd adopts "
             "or releases it";
    }
    std::vector<std::string> who;
    bool shared = false;
    // An exclusive holder is in the leader (one sector). Only shared
    // holders need sanlock to read every mode block: the whole lease, 8 MiB
    // with 4096-byte sectors, too much to read for each refusal.
    absl::StatusOr<LeaderRecord> leader = ReadLeader(r.disk.path, r.disk.offset);
    if (leader.ok() && leader->IsPaxos() && leader->timestamp != 0 && leader->owner_id != 0) {
      who.push_back(HostLabel(L, leader->owner_id));
    } else {
      OneDiskResource copy = r;
      sanlk_host* hosts = nullptr;
      int n = 0;
      if (sanlock_read_resource_owners(&copy.res, 0, &hosts, &n) == 0) {
        shared = (copy.res.flags & SANLK_RES_SHARED) != 0;
        for (int i = 0; i < n; ++i) who.push_back(HostLabel(L, hosts[i].host_id));
      }
      free(hosts);
    }
    std::string text = who.empty()
                           ? std::string("held by another host")
                           : absl::StrCat("held ", shared ? "shared" : "exclusive", " by ",
                                          absl::StrJoin(who, ", "));
    if (rv == SANLK_ACQUIRE_OWNED_RETRY) {
      absl::StrAppend(&text, "; that host stopped renewing its lease and becomes free once it "
                             "is dead (8*io_timeout + 60 s) or fenced");
    }
    return absl::StrCat(text, " [", RvText(rv), "]");
  }

  absl::Status Failure(Lockspace& L, const Resource& resource, int rv, const Where& where) {
    const std::string& path = where.path;
    const uint64_t offset = where.offset;
    if (DaemonGone(rv)) {
      return absl::FailedPreconditionError(
          absl::StrCat("sanlock: ", resource.Describe(), ": the sanlock daemon is not running (",
                       RvText(rv), ")"));
    }
    if (rv == -ENOSPC) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sanlock: ", resource.Describe(), ": lockspace ", L.conf.name,
          " is not joined on the daemon or is failing (", RvText(rv), ")"));
    }
    if (rv == SANLK_ACQUIRE_LVER) return MovedSince(resource, 0);
    if (IsTransientIo(rv)) {
      // Not kUnavailable: that says "held by someone", and nobody may hold it.
      return absl::InternalError(absl::StrCat(
          "sanlock: ", resource.Describe(), ": the lease storage at ", path, ":", offset,
          " failed or timed out (", RvText(rv), "); nothing changed, try again"));
    }
    if (rv == -EMSGSIZE || rv == -EINVAL || rv == SANLK_LEADER_MAGIC ||
        rv == SANLK_LEADER_LOCKSPACE || rv == SANLK_LEADER_RESOURCE ||
        rv == SANLK_LEADER_NUMHOSTS || (rv <= -220 && rv >= -229)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sanlock: ", resource.Describe(), ": no usable lease at ", path, ":", offset, ": ",
          RvText(rv)));
    }
    return absl::InternalError(
        absl::StrCat("sanlock: ", resource.Describe(), ": ", RvText(rv)));
  }

  std::string HostsJson(Lockspace& L) {
    sanlk_host* hosts = nullptr;
    int n = 0;
    if (sanlock_get_hosts(L.conf.name.c_str(), 0, &hosts, &n, 0) != 0) return "";
    std::vector<std::string> items;
    for (int i = 0; i < n; ++i) {
      const char* state = "unknown";
      switch (hosts[i].flags & SANLK_HOST_MASK) {
        case SANLK_HOST_FREE: state = "free"; break;
        case SANLK_HOST_LIVE: state = "live"; break;
        case SANLK_HOST_FAIL: state = "failing"; break;
        case SANLK_HOST_DEAD: state = "dead"; break;
        default: break;
      }
      items.push_back(absl::StrCat("{\"host_id\":", hosts[i].host_id, ",\"name\":\"",
                                   Escape(ReadHostName(L.conf.path, L.conf.offset, L.sector.load(), hosts[i].host_id)),
                                   "\",\"generation\":", hosts[i].generation, ",\"state\":\"",
                                   state, "\"}"));
    }
    free(hosts);
    return absl::StrCat("[", absl::StrJoin(items, ","), "]");
  }

  sanlk_lockspace LockspaceOf(const LockspaceConf& c) const {
    sanlk_lockspace ls{};
    CopyName(ls.name, c.name);
    ls.host_id = static_cast<uint64_t>(s_.host_id);
    snprintf(ls.host_id_disk.path, sizeof(ls.host_id_disk.path), "%s", c.path.c_str());
    ls.host_id_disk.offset = c.offset;
    return ls;
  }

  // Joins until it works or the backend stops: a join fails while the
  // storage or the daemon is away (a stalled LUN: -ENODEV), and both come
  // back. The lockspace shows "error" with the last failure meanwhile.
  void JoinUntilJoined(Lockspace* L) {
    absl::Duration pause = absl::Seconds(1);
    for (int attempt = 1; !stopping_; ++attempt) {
      Join(L);
      {
        absl::MutexLock l(&L->mu);
        if (L->state == JoinState::kJoined) return;
        L->message = absl::StrCat(L->message, " (attempt ", attempt, "; next in ",
                                  absl::FormatDuration(pause), ")");
      }
      for (absl::Time until = absl::Now() + pause; !stopping_ && absl::Now() < until;) {
        absl::SleepFor(absl::Milliseconds(100));
      }
      pause = std::min(pause * 2, absl::Seconds(10));
    }
  }

  // Where this host keeps automatic leases, against what the lockspace
  // records: a host that disagrees with the others is refused automatic
  // leases (it would make a second lease for a disk). A files host records
  // "files" when nothing is recorded; `format` records a lease area.
  void CheckLayout(Lockspace& L) {
    const Geometry ls_geo{L.sector, L.align};
    std::shared_ptr<const LeaseArea> area;
    std::string error;
    absl::StatusOr<LayoutRecord> rec = ReadLayout(L.conf.path, L.conf.offset, ls_geo);
    if (!rec.ok()) {
      error = std::string(rec.status().message());
    } else if (L.area_conf) {
      absl::StatusOr<LeaseArea> a = LeaseArea::Open(*L.area_conf);
      const std::string mine =
          absl::StrCat("this host's lease area ", L.area_conf->ToString(),
                       a.ok() ? absl::StrCat(" is area ", a->id())
                              : absl::StrCat(": ", a.status().message()));
      if (rec->kind == LayoutRecord::Kind::kSlots && a.ok() && rec->area_id == a->id()) {
        area = std::make_shared<const LeaseArea>(*a);
        if (a->geometry().sector > L.sector) {
          error = absl::StrCat("lease area ", a->id(), " has ", a->geometry().ToString(),
                               " but lockspace ", L.conf.name, " has ", L.sector.load(),
                               "-byte sectors: put both on 4096-byte storage");
        }
      } else if (rec->kind == LayoutRecord::Kind::kSlots) {
        error = absl::StrCat("lockspace ", L.conf.name, " keeps its automatic leases in ",
                             rec->Describe(), ", but ", mine,
                             ": every host must configure the same area");
      } else if (rec->kind == LayoutRecord::Kind::kFiles) {
        error = absl::StrCat("lockspace ", L.conf.name, " keeps its automatic leases in ",
                             rec->Describe(), ", but ", mine,
                             "; to move the lockspace to the area, stop every host's latchd "
                             "and run latchctl leases-format --lockspace ", L.conf.name,
                             " --force");
      } else {
        error = a.ok() ? absl::StrCat(mine, " but the lockspace does not record it yet: "
                                      "latchctl leases-format --lockspace ", L.conf.name,
                                      " records it")
                       : absl::StrCat(mine, "; format it once, from one host: latchctl "
                                      "leases-format --lockspace ", L.conf.name);
      }
    } else if (rec->kind == LayoutRecord::Kind::kSlots) {
      error = absl::StrCat("lockspace ", L.conf.name, " keeps its automatic leases in ",
                           rec->Describe(), ", but this host is configured for lease files in ",
                           s_.lease_dir, ": configure sanlock_lease_areas = [ \"", L.conf.name,
                           ":", rec->area_path, ":", rec->area_offset, ":SIZE\" ] as the others");
    } else if (rec->kind == LayoutRecord::Kind::kNone) {
      LayoutRecord files;
      files.kind = LayoutRecord::Kind::kFiles;
      files.written_by = HostName();
      files.written_at = static_cast<uint64_t>(absl::ToUnixSeconds(absl::Now()));
      if (absl::Status st = WriteLayout(L.conf.path, L.conf.offset, ls_geo, files); !st.ok()) {
        error = absl::StrCat("cannot record lease files as this lockspace's layout: ",
                             st.message());
      }
    }
    absl::MutexLock l(&L.area_mu);
    L.area = area;
    L.layout_error = error;
  }

  static std::string HostName() {
    char host[65] = "";
    gethostname(host, sizeof(host) - 1);
    return host;
  }

  // `latchctl leases-format`: formats the lockspace's lease area (or, when
  // it is formatted already, only records it) and records it in the
  // lockspace. Returns the area's id.
  absl::StatusOr<std::string> FormatArea(Lockspace& L, bool force) {
    if (!L.area_conf) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sanlock: lockspace ", L.conf.name, " has no lease area configured here "
          "(sanlock_lease_areas)"));
    }
    {
      absl::MutexLock l(&L.mu);
      if (L.state != JoinState::kJoined) return NotJoined(L);
    }
    const Geometry ls_geo{L.sector, L.align};
    absl::StatusOr<LayoutRecord> rec = ReadLayout(L.conf.path, L.conf.offset, ls_geo);
    if (!rec.ok()) return rec.status();
    absl::StatusOr<LeaseArea> area = LeaseArea::Open(*L.area_conf);
    if (rec->kind == LayoutRecord::Kind::kFiles && !force) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sanlock: lockspace ", L.conf.name, " records ", rec->Describe(),
          ": hosts may hold lease files; stop them (or move them to the area) and format with "
          "force"));
    }
    if (rec->kind == LayoutRecord::Kind::kSlots && !force &&
        (!area.ok() || area->id() != rec->area_id)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sanlock: lockspace ", L.conf.name, " already records ", rec->Describe(),
          "; refusing to replace it without force"));
    }
    if (!area.ok() && area.status().code() != absl::StatusCode::kNotFound && !force) {
      return area.status();
    }
    if (!area.ok() || force) {
      absl::StatusOr<Geometry> geo = NewLeaseGeometry(L.area_conf->path);
      if (!geo.ok()) return geo.status();
      if (geo->sector > L.sector) {
        return absl::FailedPreconditionError(absl::StrCat(
            "sanlock: lease area storage has ", geo->ToString(), " but lockspace ", L.conf.name,
            " has ", L.sector.load(), "-byte sectors"));
      }
      area = LeaseArea::Format(*L.area_conf, *geo, HostName(), force);
      if (!area.ok()) return area.status();
      SlotOps ops(this, L, area->geometry());
      if (absl::Status st = ops.WriteLease(kAllocatorLease, area->AllocatorOffset()); !st.ok()) {
        return st;
      }
    }
    LayoutRecord slots;
    slots.kind = LayoutRecord::Kind::kSlots;
    slots.area_id = area->id();
    slots.area_path = L.area_conf->path;
    slots.area_offset = L.area_conf->offset;
    slots.written_by = HostName();
    slots.written_at = static_cast<uint64_t>(absl::ToUnixSeconds(absl::Now()));
    if (absl::Status st = WriteLayout(L.conf.path, L.conf.offset, ls_geo, slots); !st.ok()) {
      return st;
    }
    CheckLayout(L);
    return area->id();
  }

  std::string HostOf(Lockspace& L, uint64_t host_id) {
    return host_id == 0 ? std::string() : HostLabel(L, host_id);
  }

  // `latchctl leases`: the lockspace's automatic leases and their use.
  std::string LeasesJson(Lockspace& L) {
    using json = nlohmann::json;
    json out{{"lockspace", L.conf.name}};
    std::string refused;
    std::shared_ptr<const LeaseArea> area = CurrentArea(L, &refused);
    if (!refused.empty()) out["error"] = refused;
    absl::StatusOr<LayoutRecord> rec = ReadLayout(L.conf.path, L.conf.offset, {L.sector, L.align});
    if (rec.ok()) out["layout"] = rec->Describe();
    if (!L.area_conf) {
      out["kind"] = "files";
      out["lease_dir"] = absl::StrCat(s_.lease_dir, "/", L.conf.name);
      return out.dump();
    }
    out["kind"] = "slots";
    out["area"] = L.area_conf->ToString();
    if (area == nullptr) return out.dump();
    absl::StatusOr<std::vector<SlotEntry>> index = area->ReadIndex();
    if (!index.ok()) {
      out["error"] = std::string(index.status().message());
      return out.dump();
    }
    json leases = json::array();
    int used = 0;
    for (const SlotEntry& e : *index) {
      if (!e.used()) continue;
      ++used;
      json one{{"slot", e.slot}, {"name", e.name}, {"generation", e.generation},
               {"allocated_by", HostOf(L, e.allocated_by)}, {"allocated_at", e.allocated_at}};
      absl::StatusOr<LeaderRecord> leader = ReadLeader(area->conf().path, area->SlotOffset(e.slot));
      if (leader.ok() && leader->IsPaxos()) {
        one["lver"] = leader->lver;
        one["last_holder"] = HostOf(L, leader->owner_id);
        one["held"] = leader->timestamp != 0;
      }
      if (e.idle_observer != 0) {
        one["idle_since"] = e.idle_since;
        one["idle_seen_by"] = HostOf(L, e.idle_observer);
      }
      leases.push_back(std::move(one));
    }
    out["id"] = area->id();
    out["geometry"] = area->geometry().ToString();
    out["slots"] = area->slots();
    out["used"] = used;
    out["free"] = area->slots() - used;
    out["leases"] = leases;
    return out.dump();
  }

  struct CleanOptions {
    absl::Duration unused_for = absl::InfiniteDuration();
    std::set<std::string> remove;
    bool dry_run = false;
  };

  // Frees slots of leases nobody uses: those named in o.remove at once, and
  // others once this host has seen them free at an unchanged lease version
  // for o.unused_for (the lease's lver moves with every acquire, whoever's
  // clock says what). A slot is freed only while this host holds its lease
  // exclusively, so never while anyone holds or is acquiring it.
  absl::Status Clean(Lockspace& L, const CleanOptions& o, nlohmann::json* freed,
                     nlohmann::json* kept) {
    std::string refused;
    std::shared_ptr<const LeaseArea> area = CurrentArea(L, &refused);
    if (!refused.empty()) return absl::FailedPreconditionError(absl::StrCat("sanlock: ", refused));
    if (area == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sanlock: lockspace ", L.conf.name, " has no lease area in use here"));
    }
    absl::StatusOr<std::vector<SlotEntry>> index = area->ReadIndex();
    if (!index.ok()) return index.status();
    const uint64_t now = static_cast<uint64_t>(absl::ToUnixSeconds(absl::Now()));
    const uint64_t me = static_cast<uint64_t>(s_.host_id);
    SlotOps ops(this, L, area->geometry());
    auto keep = [&](const SlotEntry& e, const std::string& why) {
      kept->push_back({{"lockspace", L.conf.name}, {"name", e.name}, {"slot", e.slot}, {"why", why}});
    };
    for (const SlotEntry& e : *index) {
      if (!e.used()) continue;
      const bool named = o.remove.count(e.name) > 0;
      if (!named && o.unused_for == absl::InfiniteDuration()) continue;
      absl::StatusOr<LeaderRecord> leader = ReadLeader(area->conf().path, area->SlotOffset(e.slot));
      if (!leader.ok()) {
        keep(e, std::string(leader.status().message()));
        continue;
      }
      if (leader->timestamp != 0) {
        keep(e, absl::StrCat("held by ", HostOf(L, leader->owner_id)));
        continue;
      }
      if (!named) {
        const bool same = e.idle_observer == me && e.idle_lver == leader->lver &&
                          e.idle_since <= now;
        if (!same) {
          if (!o.dry_run) {
            absl::Status st = Observe(*area, ops, e, leader->lver, now);
            if (!st.ok()) {
              keep(e, std::string(st.message()));
              continue;
            }
          }
          keep(e, "first seen unused now");
          continue;
        }
        const absl::Duration idle = absl::Seconds(now - e.idle_since);
        if (idle < o.unused_for) {
          keep(e, absl::StrCat("unused for ", absl::ToInt64Seconds(idle), " s of ",
                               absl::ToInt64Seconds(o.unused_for)));
          continue;
        }
      }
      if (o.dry_run) {
        freed->push_back({{"lockspace", L.conf.name}, {"name", e.name}, {"slot", e.slot}});
        continue;
      }
      // Hold the slot's own lease while freeing it.
      int rv;
      OneDiskResource r =
          MakeResource(L, e.name, Where{area->conf().path, area->SlotOffset(e.slot), area->geometry()}, false);
      {
        absl::MutexLock l(&L.mu);
        if (L.state != JoinState::kJoined) return NotJoined(L);
        rv = sanlock_acquire(L.sock, -1, SANLK_ACQUIRE_OWNER_NOWAIT, 1, ResPtr(&r), nullptr);
      }
      if (rv != 0) {
        keep(e, absl::StrCat("in use: ", RvText(rv)));
        continue;
      }
      absl::Status st = FreeSlot(*area, ops, e, AllocatorDeadline());
      {
        absl::MutexLock l(&L.mu);
        if (L.sock >= 0) sanlock_release(L.sock, -1, 0, 1, ResPtr(&r));
      }
      if (!st.ok()) {
        keep(e, std::string(st.message()));
        continue;
      }
      freed->push_back({{"lockspace", L.conf.name}, {"name", e.name}, {"slot", e.slot}});
    }
    for (const std::string& n : o.remove) {
      bool found = false;
      for (const SlotEntry& e : *index) found = found || e.name == n;
      if (!found) {
        kept->push_back({{"lockspace", L.conf.name}, {"name", n}, {"why", "no such lease"}});
      }
    }
    return absl::OkStatus();
  }

  // Records that this host saw `e` free at `lver` now.
  absl::Status Observe(const LeaseArea& area, LeaseOps& ops, const SlotEntry& e, uint64_t lver,
                       uint64_t now) {
    if (absl::Status st = LockAllocator(area, ops, AllocatorDeadline()); !st.ok()) return st;
    absl::StatusOr<SlotEntry> cur = area.ReadEntry(e.slot);
    absl::Status st = cur.status();
    if (st.ok() && cur->name == e.name && cur->generation == e.generation) {
      SlotEntry u = *cur;
      u.idle_lver = lver;
      u.idle_since = now;
      u.idle_observer = static_cast<uint64_t>(s_.host_id);
      st = area.WriteEntry(u);
    }
    ops.Unlock(kAllocatorLease, area.AllocatorOffset());
    return st;
  }

  // With free_unused_after_s: frees leases unused that long, from the host
  // with the lowest live host_id only (so one host's observations count).
  void Sweep() {
    const absl::Duration every =
        std::max(absl::Seconds(10), std::min(s_.free_unused_after / 4, absl::Minutes(10)));
    while (!stopping_) {
      for (absl::Time until = absl::Now() + every; !stopping_ && absl::Now() < until;) {
        absl::SleepFor(absl::Milliseconds(200));
      }
      if (stopping_) return;
      for (auto& [name, ls] : lockspaces_) {
        if (!ls->area_conf || !LowestLiveHost(*ls)) continue;
        CleanOptions o;
        o.unused_for = s_.free_unused_after;
        nlohmann::json freed = nlohmann::json::array(), kept = nlohmann::json::array();
        Clean(*ls, o, &freed, &kept).IgnoreError();
      }
    }
  }

  bool LowestLiveHost(Lockspace& L) {
    {
      absl::MutexLock l(&L.mu);
      if (L.state != JoinState::kJoined) return false;
    }
    sanlk_host* hosts = nullptr;
    int n = 0;
    if (sanlock_get_hosts(L.conf.name.c_str(), 0, &hosts, &n, 0) != 0) return false;
    uint64_t lowest = static_cast<uint64_t>(s_.host_id);
    for (int i = 0; i < n; ++i) {
      if ((hosts[i].flags & SANLK_HOST_MASK) == SANLK_HOST_LIVE) {
        lowest = std::min<uint64_t>(lowest, hosts[i].host_id);
      }
    }
    free(hosts);
    return lowest == static_cast<uint64_t>(s_.host_id);
  }

  // The lockspace's sector size and alignment, from its first host record
  // (sanlock writes them into every record): host names, and the leases of
  // the lockspace, are read with them.
  absl::Status ReadLockspaceGeometry(Lockspace& L) {
    const LockspaceConf& c = L.conf;
    absl::StatusOr<LeaderRecord> leader = ReadLeader(c.path, c.offset);
    if (!leader.ok()) {
      return absl::UnavailableError(absl::StrCat("lockspace ", c.name, ": ",
                                                 leader.status().message()));
    }
    absl::StatusOr<uint32_t> device = StorageSectorSize(c.path);
    const bool big = device.ok() && *device == 4096;
    if (!leader->IsDelta() || leader->lockspace != c.name) {
      return absl::FailedPreconditionError(absl::StrCat(
          "lockspace ", c.name, ": ", c.path, ":", c.offset, " holds no sanlock lockspace",
          leader->IsDelta() ? absl::StrCat(" of that name (it holds '", leader->lockspace, "')")
                            : std::string(""),
          "; initialise it once with: sanlock direct init -s ", c.name, ":0:", c.path, ":",
          c.offset, big ? " -Z 4096 -A 8M" : ""));
    }
    absl::StatusOr<Geometry> geo = leader->GetGeometry();
    if (!geo.ok()) return geo.status();
    if (device.ok() && *device > geo->sector) {
      return absl::FailedPreconditionError(absl::StrCat(
          "lockspace ", c.name, ": it was initialised for ", geo->sector, "-byte sectors but ",
          c.path, " has ", *device, "-byte sectors, so no host can join it: re-initialise it "
          "with sanlock direct init -s ", c.name, ":0:", c.path, ":", c.offset, " -Z 4096 -A 8M"));
    }
    L.sector = geo->sector;
    L.align = geo->align;
    return absl::OkStatus();
  }

  // Joins one lockspace, then registers its client (killpath, restrict).
  void Join(Lockspace* L) {
    const absl::Time start = absl::Now();
    if (absl::Status st = ReadLockspaceGeometry(*L); !st.ok()) {
      absl::MutexLock l(&L->mu);
      L->join_took = absl::Now() - start;
      L->state = JoinState::kError;
      L->message = std::string(st.message());
      return;
    }
    CheckLayout(*L);
    sanlk_lockspace ls = LockspaceOf(L->conf);
    int rv = sanlock_add_lockspace_timeout(&ls, 0, static_cast<uint32_t>(s_.io_timeout));
    while (rv == -EINPROGRESS && !stopping_) {  // someone else is adding it
      absl::SleepFor(absl::Milliseconds(100));
      rv = sanlock_inq_lockspace(&ls, 0);
      if (rv == -EINPROGRESS) continue;
    }
    if (rv == -EEXIST) rv = 0;
    std::string message;
    int sock = -1;
    if (rv == 0) {
      // Orphans keep the lockspace in use: it must not go away under them.
      sanlock_set_config(L->conf.name.c_str(), 0, SANLK_CONFIG_USED_BY_ORPHANS, nullptr);
      sock = sanlock_register();
      if (sock < 0) {
        rv = sock;
        message = absl::StrCat("cannot register with the daemon: ", RvText(sock));
      } else {
        fcntl(sock, F_SETFD, FD_CLOEXEC);
        rv = sanlock_restrict(sock, SANLK_RESTRICT_SIGKILL);
        if (rv == 0 && !fifo_.empty()) {
          // sanlock runs "/bin/sh -c 'echo $0 $1>>FIFO' LOCKSPACE PID"
          // when this lockspace fails (args split at unescaped spaces).
          std::string args = absl::StrCat("-c echo\\ $0\\ $1>>", fifo_, " ", L->conf.name);
          rv = sanlock_killpath(sock, SANLK_KILLPATH_PID, "/bin/sh", args.data());
        }
        if (rv != 0) message = absl::StrCat("cannot set up the client: ", RvText(rv));
      }
    } else {
      message = absl::StrCat("add_lockspace ", L->conf.name, ":", s_.host_id, ":", L->conf.path,
                             ":", L->conf.offset, " failed: ", RvText(rv));
    }
    absl::MutexLock l(&L->mu);
    L->join_took = absl::Now() - start;
    if (rv == 0) {
      if (L->sock >= 0) close(L->sock);
      L->sock = sock;
      L->watched_sock = sock;
      L->state = JoinState::kJoined;
      L->message.clear();
      WakeNotifier();
    } else {
      if (sock >= 0) close(sock);
      L->state = JoinState::kError;
      L->message = message;
    }
  }

  absl::Status StartNotifier() {
    std::string tmpl = absl::StrCat(s_.notify_dir, "/latchkey-sanlock.XXXXXX");
    if (mkdtemp(tmpl.data()) == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sanlock: cannot create a notification directory in ", s_.notify_dir, ": ",
          strerror(errno)));
    }
    fifo_ = tmpl + "/lost";
    if (fifo_.size() > 60) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sanlock: notify_dir ", s_.notify_dir, " is too long for sanlock's killpath arguments"));
    }
    if (mkfifo(fifo_.c_str(), 0600) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("sanlock: cannot create ", fifo_, ": ", strerror(errno)));
    }
    // Read-write: never EOF, and a writer never blocks on open.
    notify_fd_ = open(fifo_.c_str(), O_RDWR | O_CLOEXEC);
    if (notify_fd_ < 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("sanlock: cannot open ", fifo_, ": ", strerror(errno)));
    }
    notifier_ = std::thread([this] { ReadNotices(); });
    return absl::OkStatus();
  }

  // A line the notifier ignores: it wakes up and watches the current sockets.
  void WakeNotifier() {
    if (notify_fd_ >= 0) (void)!write(notify_fd_, "\n", 1);
  }

  // The notifier: killpath notices from the FIFO, and each lockspace's
  // registered client connection, which the daemon's death breaks (POLLHUP:
  // poll asks for no events, so replies to our own requests never wake it).
  void ReadNotices() {
    std::string pending;
    char buf[512];
    while (!stopping_) {
      std::vector<pollfd> fds{{notify_fd_, POLLIN, 0}};
      std::vector<Lockspace*> of{nullptr};
      for (auto& [name, ls] : lockspaces_) {
        const int fd = ls->watched_sock;
        if (fd < 0) continue;
        fds.push_back({fd, 0, 0});
        of.push_back(ls.get());
      }
      const int ready = poll(fds.data(), fds.size(), 1000);
      if (ready < 0 && errno != EINTR) return;
      if (ready <= 0) continue;
      for (size_t i = 1; i < fds.size(); ++i) {
        if (fds[i].revents & (POLLHUP | POLLERR)) ConnectionBroke(*of[i], fds[i].fd);
      }
      if (!(fds[0].revents & POLLIN)) continue;
      const ssize_t n = read(notify_fd_, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      pending.append(buf, n);
      size_t nl;
      while ((nl = pending.find('\n')) != std::string::npos) {
        const std::string line = pending.substr(0, nl);
        pending.erase(0, nl + 1);
        const std::vector<std::string> words = absl::StrSplit(line, ' ', absl::SkipEmpty());
        if (!words.empty() && !stopping_) LockspaceFailed(words[0]);
      }
    }
  }

  // The daemon closed the lockspace's client connection: it died (kill -9,
  // a crash) or was stopped. Every lease of the connection is gone with it:
  // nothing renews the host's delta lease any more, so another host may take
  // them 8 x io_timeout + 60 s after the last renewal (sooner when fenced).
  // Each owner's loss is reported now, long before that.
  void ConnectionBroke(Lockspace& L, int fd) {
    std::vector<LockLoss> losses;
    {
      absl::MutexLock l(&L.mu);
      if (L.sock != fd || L.state != JoinState::kJoined) return;  // already handled, or reused
      sanlk_lockspace* lss = nullptr;
      int count = 0;
      const int rv = sanlock_get_lockspaces(&lss, &count, 0);
      free(lss);
      const std::string why =
          rv < 0
              ? std::string("the sanlock daemon died (its connection to latchd broke; it no "
                            "longer answers)")
              : std::string("the sanlock daemon closed latchd's connection");
      L.state = JoinState::kFailed;
      L.message = absl::StrCat(why, ": every lease of lockspace ", L.conf.name,
                               " is lost; rejoining once the daemon is back");
      L.last_loss = L.message;
      L.last_loss_at = absl::Now();
      for (auto& [rname, lease] : L.leases) {
        for (auto& [uuid, h] : lease.holders) {
          losses.push_back(LockLoss{h.owner, lease.resource,
                                    absl::StrCat(why, "; another host may take the lease ",
                                                 8 * s_.io_timeout + 60,
                                                 " s after its last renewal")});
        }
      }
      L.leases.clear();
      close(L.sock);
      L.sock = -1;
      L.watched_sock = -1;
      ++L.generation;
    }
    Report(losses);
    Rejoin(L);
  }

  void Report(const std::vector<LockLoss>& losses) {
    absl::MutexLock l(&handler_mu_);
    if (!handler_) return;
    for (const LockLoss& loss : losses) handler_(loss);
  }

  // Joins the lockspace again once the daemon has dropped the dead one (or
  // is back after dying), in the background.
  void Rejoin(Lockspace& L) {
    if (L.joiner.joinable()) L.joiner.join();
    L.joiner = std::thread([this, &L] {
      sanlk_lockspace ls = LockspaceOf(L.conf);
      while (!stopping_) {
        const int rv = sanlock_inq_lockspace(&ls, 0);
        if (rv == -ENOENT || DaemonGone(rv)) break;
        absl::SleepFor(absl::Milliseconds(200));
      }
      if (stopping_) return;
      {
        absl::MutexLock l(&L.mu);
        L.state = JoinState::kJoining;
        L.started = absl::Now();
      }
      JoinUntilJoined(&L);
    });
  }

  // sanlock says the lockspace failed (our delta lease was not renewed in
  // time): every lease in it is void. Release them all (the daemon frees
  // them without I/O) so the lockspace can stop, report each owner's loss,
  // then join again.
  void LockspaceFailed(const std::string& name) {
    auto it = lockspaces_.find(name);
    if (it == lockspaces_.end()) return;
    Lockspace& L = *it->second;
    std::vector<LockLoss> losses;
    {
      absl::MutexLock l(&L.mu);
      if (L.state != JoinState::kJoined) return;
      L.state = JoinState::kFailed;
      L.message = "sanlock reported the lockspace failed (lease renewal missed): all its leases "
                  "are lost; rejoining";
      L.last_loss = L.message;
      L.last_loss_at = absl::Now();
      for (auto& [rname, lease] : L.leases) {
        OneDiskResource r = MakeResource(L, lease.resource, lease.where, lease.shared);
        sanlock_release(L.sock, -1, 0, 1, ResPtr(&r));
        for (auto& [uuid, h] : lease.holders) {
          losses.push_back(LockLoss{h.owner, lease.resource,
                                    absl::StrCat("sanlock lockspace ", name,
                                                 " failed: its lease renewal was missed")});
        }
      }
      L.leases.clear();
      if (L.sock >= 0) close(L.sock);
      L.sock = -1;
      L.watched_sock = -1;
      ++L.generation;
    }
    Report(losses);
    Rejoin(L);
  }

  const Settings s_;
  std::map<std::string, std::unique_ptr<Lockspace>> lockspaces_;  // fixed after Start
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> next_tmp_{0};
  std::string fifo_;
  int notify_fd_ = -1;
  std::thread notifier_;
  std::thread sweeper_;
  absl::Mutex handler_mu_;
  LockLossHandler handler_ ABSL_GUARDED_BY(handler_mu_);
};

absl::StatusOr<std::unique_ptr<Backend>> NewSanlockBackend(const Config& settings) {
  if (absl::Status st = settings.CheckKeys({"run_dir", "host_id", "io_timeout", "lockspaces",
                                            "lease_dir", "num_hosts", "notify_dir", "poll_ms",
                                            "join_wait_s", "sector_size", "align_mb",
                                            "lease_areas", "free_unused_after_s"});
      !st.ok()) {
    return st;
  }
  Settings s;
  absl::StatusOr<std::string> run_dir = settings.GetString("run_dir", "");
  if (!run_dir.ok()) return run_dir.status();
  s.run_dir = *run_dir;
  absl::StatusOr<int64_t> host_id = settings.GetInt("host_id", 0, 0, 2000);
  if (!host_id.ok()) return host_id.status();
  s.host_id = static_cast<int>(*host_id);
  absl::StatusOr<int64_t> io = settings.GetInt("io_timeout", 10, 1, 300);
  if (!io.ok()) return io.status();
  s.io_timeout = static_cast<int>(*io);
  absl::StatusOr<std::string> lease_dir = settings.GetString("lease_dir", "/var/lib/latchkey/sanlock");
  if (!lease_dir.ok()) return lease_dir.status();
  s.lease_dir = *lease_dir;
  absl::StatusOr<int64_t> num_hosts = settings.GetInt("num_hosts", 0, 0, 2000);
  if (!num_hosts.ok()) return num_hosts.status();
  s.num_hosts = static_cast<int>(*num_hosts);
  absl::StatusOr<int64_t> sector = settings.GetInt("sector_size", 0, 0, 4096);
  if (!sector.ok()) return sector.status();
  absl::StatusOr<int64_t> align_mb = settings.GetInt("align_mb", 0, 0, 8);
  if (!align_mb.ok()) return align_mb.status();
  // align_mb with the storage's sector size is checked when a lease is made.
  if ((*sector != 0 && *sector != 512 && *sector != 4096) ||
      (*align_mb != 0 && *align_mb != 1 && *align_mb != 2 && *align_mb != 4 && *align_mb != 8) ||
      (*align_mb != 0 && *sector != 0 &&
       !Geometry::Make(static_cast<uint32_t>(*sector), *align_mb * kMiB).ok())) {
    const ConfigEntry* se = settings.Find("sector_size");
    return absl::InvalidArgumentError(absl::StrCat(
        se ? se->Where() : "<settings>", ": sector_size ", *sector, " with align_mb ", *align_mb,
        " is not a geometry sanlock supports: sector_size 0 (the storage's), 512 or 4096; "
        "align_mb 0 (1 for 512, 8 for 4096), or 1, 2, 4 or 8 (all but 1 need 4096-byte sectors)"));
  }
  s.sector_size = static_cast<uint32_t>(*sector);
  s.align_mb = static_cast<uint64_t>(*align_mb);
  absl::StatusOr<std::string> notify = settings.GetString("notify_dir", "/run");
  if (!notify.ok()) return notify.status();
  s.notify_dir = *notify;
  absl::StatusOr<int64_t> poll = settings.GetInt("poll_ms", 200, 10, 60000);
  if (!poll.ok()) return poll.status();
  s.poll = absl::Milliseconds(*poll);
  absl::StatusOr<int64_t> join_wait = settings.GetInt("join_wait_s", 60, 0, 3600);
  if (!join_wait.ok()) return join_wait.status();
  s.join_wait = absl::Seconds(*join_wait);
  absl::StatusOr<int64_t> unused = settings.GetInt("free_unused_after_s", 0, 0, 100LL * 365 * 86400);
  if (!unused.ok()) return unused.status();
  s.free_unused_after = absl::Seconds(*unused);
  absl::StatusOr<std::vector<std::string>> areas = settings.GetStringList("lease_areas", {});
  if (!areas.ok()) return areas.status();
  for (const std::string& spec : *areas) {
    absl::StatusOr<AreaConf> a = AreaConf::Parse(spec);
    const ConfigEntry* ae = settings.Find("lease_areas");
    if (!a.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(ae ? ae->Where() : "<settings>", ": ",
                                                     a.status().message()));
    }
    for (const AreaConf& other : s.lease_areas) {
      if (other.lockspace == a->lockspace) {
        return absl::InvalidArgumentError(absl::StrCat(
            ae ? ae->Where() : "<settings>", ": lockspace ", a->lockspace,
            " has two lease areas; give each lockspace one"));
      }
    }
    s.lease_areas.push_back(*a);
  }
  absl::StatusOr<std::vector<std::string>> lss = settings.GetStringList("lockspaces", {});
  if (!lss.ok()) return lss.status();
  const ConfigEntry* e = settings.Find("lockspaces");
  const std::string where = e ? e->Where() : "<default>";
  for (const std::string& spec : *lss) {
    std::vector<std::string> parts = absl::StrSplit(spec, ':');
    LockspaceConf c;
    if (parts.size() != 3 || !absl::SimpleAtoi(parts[2], &c.offset) || parts[1].empty() ||
        parts[1][0] != '/') {
      return absl::InvalidArgumentError(absl::StrCat(
          where, ": lockspace '", spec, "' must be NAME:/ABSOLUTE/PATH:OFFSET"));
    }
    c.name = parts[0];
    c.path = parts[1];
    if (absl::Status st = ValidateName("sanlock lockspace", c.name, kMaxName); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", st.message()));
    }
    if (c.offset % kMinAlign != 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": lockspace ", c.name, " offset ",
                                                     c.offset, " is not a multiple of ", kMinAlign));
    }
    s.lockspaces.push_back(c);
  }
  if (!s.lockspaces.empty() && s.host_id == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": host_id must be set (1..2000) to join lockspaces"));
  }
  for (const AreaConf& a : s.lease_areas) {
    bool known = false;
    for (const LockspaceConf& c : s.lockspaces) known = known || c.name == a.lockspace;
    if (!known) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sanlock: lease area ", a.ToString(), " names lockspace ", a.lockspace,
          ", which is not in 'lockspaces'"));
    }
  }
  if (s.lease_dir.empty() || s.lease_dir[0] != '/') {
    return absl::InvalidArgumentError("sanlock: lease_dir must be an absolute path");
  }
  auto backend = std::make_unique<SanlockBackend>(s);
  if (absl::Status st = backend->Start(); !st.ok()) return st;
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace
}  // namespace sanlockbe
}  // namespace latchkey

LATCHKEY_EXPORT_BACKEND("sanlock", "sanlock disk-paxos leases on shared storage (libsanlock)",
                        latchkey::sanlockbe::kCapabilities, latchkey::sanlockbe::NewSanlockBackend);
