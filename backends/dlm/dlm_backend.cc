// The DLM backend: Linux kernel DLM locks through libdlm (corosync cluster).
//
// How latchkey's model maps onto the DLM:
//  * A resource's lockspace is a DLM lockspace of the same name, created (or,
//    with create_lockspaces = 0, only opened) on first use; its completion
//    thread is libdlm's (dlm_ls_pthread_init).
//  * One DLM lock per owner and resource: shared-read, shared-write and
//    exclusive are PR, CW and EX, so the DLM's own compatibility matrix is
//    latchkey's, between owners on one node as between nodes.
//  * Every lock is PERSISTENT: when this process dies its locks stay granted
//    as orphans of this node; the next latchd adopts each one (LKF_ORPHAN,
//    same name and mode, no window) from its journal record, and releases
//    the ones no live owner claims (also found in the journal: latchd writes
//    an intent row before every request). Nothing is purged wholesale: the
//    DLM keeps one orphan list per lockspace and node, and other programs'
//    persistent locks may be in it.
//  * Latchkey's lockspaces are its own. A lockspace another program of this
//    node has open is refused (unless listed in shared_lockspaces), and a
//    resource whose LVB another program wrote is refused always: its LVB is
//    left as it was.
//  * The lock value block (32 bytes, struct Lvb) carries the resource's
//    exclusive epoch E and, while someone holds it exclusively and another
//    request is blocked by it, the holder's node, pid and owner name. The
//    DLM writes an LVB only when an EX (or PW) holder converts or unlocks,
//    so: an exclusive grant takes E+1 and writes it back when it lets go; a
//    blocked request makes the holder publish its identity with an EX->EX
//    conversion (its blocking AST), which the refused side then reads with
//    an NL lock.
//  * Fencing token = E << 16 | n: an exclusive grant is (E+1) << 16; a
//    shared grant or a convert is E << 16 | n with n counting this node's
//    grants under E. Tokens never go back on this node (a local table); an
//    LVB the DLM lost (no lock on the resource for a while, or
//    VALNOTVALID after its exclusive holder's node died) restarts E from
//    the clock in 16 us units, which is above any E ever issued as long as
//    the nodes' clocks agree (each exclusive grant takes far longer than
//    16 us). Shared grants on two nodes under one E can carry equal tokens.
//  * Trouble: a monitor thread watches corosync quorum, dlm_controld and the
//    lockspaces; when this node loses quorum (cut off, expelled) or its
//    lockspace is gone, every lock there is reported lost (WatchLockLoss):
//    the other nodes will recover those locks and grant them elsewhere.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <fstream>
#include <list>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

extern "C" {
#include <corosync/quorum.h>
#include <libdlm.h>
}

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "backends/dlm/lockspace_users.h"
#include "core/plugin_export.h"

namespace latchkey {
namespace dlmbe {
namespace {

constexpr int kSeqBits = 16;
constexpr uint64_t kSeqMask = (uint64_t{1} << kSeqBits) - 1;
constexpr uint32_t kLvbMagic = 0x31544b4c;  // "LKT1"
constexpr size_t kMaxIdleAnchors = 4096;  // NL anchors of unheld resources per lockspace
constexpr absl::Duration kCancelPoll = absl::Milliseconds(100);  // see Request

constexpr lk_capabilities kCapabilities = {
    (1u << LK_MODE_SHARED_READ) | (1u << LK_MODE_SHARED_WRITE) | (1u << LK_MODE_EXCLUSIVE),
    LK_CAP_SURVIVES_HOLDER_DEATH | LK_CAP_ORPHAN_ADOPTION | LK_CAP_HOLDER_IDENTITY |
        LK_CAP_FENCING_TOKENS | LK_CAP_QUEUES,
    DLM_RESNAME_MAXLEN,
    "",
};

// The lock value block as latchkey writes it (host byte order: a cluster of
// one architecture).
struct Lvb {
  uint32_t magic;
  uint32_t holder_node;  // 0: nobody published (released, or not asked)
  uint64_t epoch;        // exclusive grants so far (or a clock restart)
  uint32_t holder_pid;
  char holder_name[12];  // owner name, cut
};
static_assert(sizeof(Lvb) == DLM_LVB_LEN, "the DLM's user LVB is 32 bytes");

// The lockspace device's write request, as linux/dlm_device.h (device
// version 6.0.2) lays it out; that header cannot be included next to
// libdlm.h (both define struct dlm_lksb).
struct DeviceLockParams {
  uint8_t mode;
  uint8_t namelen;
  uint16_t unused;
  uint32_t flags;
  uint32_t lkid;
  uint32_t parent;
  uint64_t xid;
  uint64_t timeout;
  void* castparam;
  void* castaddr;
  void* bastparam;
  void* bastaddr;
  dlm_lksb* lksb;
  char lvb[DLM_LVB_LEN];
};
struct DeviceRequest {
  uint32_t version[3];
  uint8_t cmd;
  uint8_t is64bit;
  uint8_t unused[2];
  DeviceLockParams lock;
};
constexpr uint32_t kDeviceVersion[3] = {6, 0, 2};
constexpr uint8_t kDeviceUnlock = 2;  // DLM_USER_UNLOCK
static_assert(sizeof(DeviceRequest) == 120, "dlm_write_request on 64-bit");

size_t ModeIndex(LockMode m) { return static_cast<size_t>(m) - 1; }

uint32_t DlmMode(LockMode m) {
  switch (m) {
    case LockMode::kSharedRead: return LKM_PRMODE;
    case LockMode::kSharedWrite: return LKM_CWMODE;
    case LockMode::kExclusive: return LKM_EXMODE;
  }
  return LKM_EXMODE;
}

uint64_t ClockEpoch() { return static_cast<uint64_t>(absl::ToUnixMicros(absl::Now())) / 16; }

std::string ErrnoText(int e) {
  switch (e) {
    case EUNATCH: return "no DLM user daemon (EUNATCH): dlm_controld is not running";
    case ENOENT: return "no such lockspace or device (ENOENT)";
    case EAGAIN: return "held in a conflicting mode (EAGAIN)";
    case EDEADLK: return "conversion deadlock (EDEADLK)";
    case ENOTCONN: return "the lockspace is not joined (ENOTCONN)";
    case EINVAL: return "invalid (EINVAL)";
    case EBUSY: return "busy (EBUSY)";
    default: break;
  }
  return absl::StrCat(strerror(e), " (errno ", e, ")");
}

std::string ReadFileLine(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  return line;
}

// The pid of a process named `comm` (its /proc/PID/comm), or 0.
pid_t FindProcess(const std::string& comm) {
  DIR* d = opendir("/proc");
  if (d == nullptr) return 0;
  pid_t found = 0;
  while (dirent* e = readdir(d)) {
    int pid;
    if (!absl::SimpleAtoi(e->d_name, &pid)) continue;
    if (ReadFileLine(absl::StrCat("/proc/", pid, "/comm")) == comm) {
      found = pid;
      break;
    }
  }
  closedir(d);
  return found;
}

bool ProcessRunning(const std::string& comm) { return FindProcess(comm) != 0; }

// Whether a daemon runs, asked every poll: /proc is scanned only until the
// daemon is found, then a pidfd of it answers (one poll(2), no /proc walk;
// the scan cost 11-19 % of a lab node's CPU at a 100 ms poll). Not
// thread-safe: the monitor thread's own.
class DaemonWatch {
 public:
  explicit DaemonWatch(std::string comm) : comm_(std::move(comm)) {}
  ~DaemonWatch() {
    if (pidfd_ >= 0) close(pidfd_);
  }
  DaemonWatch(const DaemonWatch&) = delete;
  DaemonWatch& operator=(const DaemonWatch&) = delete;

  bool Running() {
    if (pidfd_ >= 0) {
      pollfd p = {pidfd_, POLLIN, 0};
      if (poll(&p, 1, 0) == 0) return true;  // not readable: still running
      close(pidfd_);
      pidfd_ = -1;
    }
    const pid_t pid = FindProcess(comm_);
    if (pid == 0) return false;
    const int fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
    // The pid could have been reused between the scan and the open: keep the
    // descriptor only if it still names the daemon.
    if (fd >= 0 && ReadFileLine(absl::StrCat("/proc/", pid, "/comm")) == comm_) {
      pidfd_ = fd;
    } else if (fd >= 0) {
      close(fd);
    }
    return true;
  }

 private:
  const std::string comm_;
  int pidfd_ = -1;
};

// This node's DLM node id, from dlm_controld's configfs entries.
uint32_t LocalNodeId() {
  const std::string base = "/sys/kernel/config/dlm/cluster/comms";
  DIR* d = opendir(base.c_str());
  if (d == nullptr) return 0;
  uint32_t id = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    const std::string dir = absl::StrCat(base, "/", e->d_name);
    if (ReadFileLine(dir + "/local") == "1") {
      (void)absl::SimpleAtoi(ReadFileLine(dir + "/nodeid"), &id);
      break;
    }
  }
  closedir(d);
  return id;
}

// Why the DLM cannot be used on this node, or "" when it can.
std::string WhyNoDlm() {
  if (access("/dev/misc/dlm-control", F_OK) != 0 && access("/dev/dlm-control", F_OK) != 0) {
    return "the DLM control device (/dev/misc/dlm-control) is missing: is the dlm kernel "
           "module loaded?";
  }
  // Both are named when both are gone: the other nodes' dlm_controld kill a
  // node's corosync as soon as its dlm_controld dies.
  std::vector<std::string> missing;
  for (const char* daemon : {"corosync", "dlm_controld"}) {
    if (!ProcessRunning(daemon)) missing.push_back(daemon);
  }
  if (missing.empty()) return "";
  return absl::StrCat(absl::StrJoin(missing, " and "), missing.size() > 1 ? " are" : " is",
                      " not running on this node");
}

struct Lockspace;

// One DLM lock: one owner's lock on one resource. Lives until its last AST.
struct Lock {
  Lockspace* ls = nullptr;
  Owner owner;
  Resource resource;
  std::string dlm_name;
  LockMode mode = LockMode::kExclusive;
  uint64_t token = 0;
  uint64_t epoch = 0;  // E under which this lock was granted
  dlm_lksb lksb{};
  Lvb lvb{};

  absl::Mutex mu;  // Guards the fields below; held across a request.
  bool done ABSL_GUARDED_BY(mu) = true;
  int status ABSL_GUARDED_BY(mu) = 0;
  bool published ABSL_GUARDED_BY(mu) = false;  // identity in the resource's LVB
  // A convert, release or identity publication works on this lock outside
  // the backend's mutex (guarded by it); the others wait.
  bool busy = false;
  // Adopted from a journal row without a token (an unfinished request):
  // nobody knows its epoch, so its exclusive unlock invalidates the LVB
  // (LKF_IVVALBLK) instead of writing an epoch that may be far too low.
  bool epoch_unknown = false;
};

// libdlm's completion thread: sb_status is positive here (0 granted,
// EAGAIN refused, ECANCEL cancelled, EUNLOCK unlocked), libdlm flips the
// kernel's sign.
void CompletionAst(void* arg) {
  Lock* lk = static_cast<Lock*>(arg);
  absl::MutexLock l(&lk->mu);
  lk->status = lk->lksb.sb_status;
  lk->done = true;
}

class DlmBackend;

struct Lockspace {
  DlmBackend* backend = nullptr;
  std::string name;
  dlm_lshandle_t handle = nullptr;
  // Locks granted here, by resource name then owner uuid (guarded by the
  // backend's mu_).
  std::map<std::string, std::map<std::string, std::unique_ptr<Lock>>> locks;
  // Highest token granted here per DLM resource name, kept after release,
  // overall and per mode (index: LockMode - 1).
  std::map<std::string, uint64_t> last_token;
  std::map<std::string, std::array<uint64_t, 3>> last_by_mode;
  // An NL lock per resource used here and no longer held: the DLM drops a
  // resource's LVB (our epoch) the moment its last lock goes; an NL holder
  // keeps it. Taken when the last local lock on a resource is released
  // (before the unlock), kept while the resource is held again; the unheld
  // ones are bounded (kMaxIdleAnchors), the least recently released dropped
  // first. O(log n) per operation whatever the number of held locks.
  std::map<std::string, std::unique_ptr<Lock>> anchors;
  std::list<std::string> idle_anchors;  // anchored, not held here; oldest first
  std::map<std::string, std::list<std::string>::iterator> idle_pos;
  // The epoch standing for "no exclusive grant since this node has had a
  // lock or an anchor on the resource without a break", while the
  // resource's LVB was never written. Erased when that presence breaks
  // (anchor dropped or not taken).
  std::map<std::string, uint64_t> empty_epoch;
  // Other programs of this node with the lockspace open (DescribeUsers), as
  // last looked; "" when none were seen.
  std::string other_users;
  bool lost = false;
  std::string lost_reason;
};

struct Settings {
  std::vector<std::string> lockspaces;
  std::set<std::string> shared;  // lockspaces other programs may use too
  bool create = true;
  absl::Duration poll = absl::Milliseconds(250);
  absl::Duration identity_wait = absl::Milliseconds(100);
  bool watch_quorum = true;
};

class DlmBackend final : public Backend {
 public:
  explicit DlmBackend(Settings s) : s_(std::move(s)) {}

  ~DlmBackend() override {
    {
      absl::MutexLock l(&mu_);
      stopping_ = true;
    }
    {
      absl::MutexLock l(&publish_mu_);
      publish_stop_ = true;
    }
    if (monitor_.joinable()) monitor_.join();
    if (publisher_.joinable()) publisher_.join();
    {
      absl::MutexLock l(&quorum_mu_);
      if (quorum_ != 0) quorum_finalize(quorum_);
    }
    // Closing a lockspace leaves every (persistent) lock held as an orphan
    // for the next instance to adopt. The Lock objects stay allocated: a
    // late AST could still name them until the handle is closed.
    absl::MutexLock l(&mu_);
    for (auto& [name, ls] : lockspaces_) {
      if (ls->handle != nullptr) dlm_close_lockspace(ls->handle);
      ls->handle = nullptr;
    }
  }

  absl::Status Start() {
    node_id_ = LocalNodeId();
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    host_ = host;
    if (const std::string why = WhyNoDlm(); !why.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("dlm: ", why));
    }
    if (s_.watch_quorum) {
      absl::MutexLock l(&quorum_mu_);
      uint32_t type = 0;
      if (quorum_initialize(&quorum_, nullptr, &type) != CS_OK) {
        quorum_ = 0;
        return absl::FailedPreconditionError(
            "dlm: cannot reach corosync's quorum service (quorum_initialize failed): is "
            "corosync running and this process root?");
      }
    }
    for (const std::string& name : s_.lockspaces) {
      absl::MutexLock l(&mu_);
      absl::StatusOr<Lockspace*> ls = OpenLocked(name);
      if (!ls.ok()) return ls.status();
    }
    monitor_ = std::thread([this] { Monitor(); });
    publisher_ = std::thread([this] { Publisher(); });
    return absl::OkStatus();
  }

  std::string name() const override { return "dlm"; }
  Capabilities capabilities() const override {
    return plugin_export::CapabilitiesFromAbi(kCapabilities);
  }

  absl::StatusOr<latchkey::Grant> Acquire(const Owner& owner, const Resource& resource,
                                          LockMode mode, const AcquireOptions& options) override {
    auto lk = std::make_unique<Lock>();
    lk->owner = owner;
    lk->resource = resource;
    lk->dlm_name = resource.name;
    lk->mode = mode;
    {
      absl::MutexLock l(&mu_);
      absl::StatusOr<Lockspace*> ls = OpenLocked(resource.lockspace);
      if (!ls.ok()) return ls.status();
      if (absl::Status st = Usable(**ls); !st.ok()) return st;
      if (absl::Status st = NotShared(**ls); !st.ok()) return st;
      lk->ls = *ls;
      auto& holders = (*ls)->locks[resource.name];
      if (holders.count(owner.uuid)) {
        return absl::FailedPreconditionError(absl::StrCat(
            owner.Describe(), " already holds ", resource.Describe(), ": use convert"));
      }
      Unidle(**ls, resource.name);
      if (options.expect_token) {
        if (absl::Status st = LocalHandOffCheck(**ls, resource, mode, *options.expect_token);
            !st.ok()) {
          return st;
        }
      }
      holders[owner.uuid] = nullptr;  // reserved while the request runs
    }
    Lockspace* ls = lk->ls;
    // This node's first request on the resource (or the first since its
    // anchor was dropped) takes the NL anchor first, and keeps it whatever
    // the request's fate. The anchor's request learns the resource's master
    // and keeps the kernel's record of it (the rsb) in use. Without it, a
    // request cancelled or refused while the DLM recovers from a dead node
    // could leave an unused rsb whose master was never learned, and the
    // next request on it panics the 6.12 kernel ("DLM: Assertion failed on
    // line 246 of file fs/dlm/lock.c", r->res_nodeid >= 0, in
    // _request_lock): the lab's libvirt failover test did that on the
    // survivor, whose domain kept trying a dead node's disk (README.md,
    // "Limits (known)").
    Anchor(*ls, resource.name);
    uint32_t flags = LKF_PERSISTENT | LKF_VALBLK;
    if (!options.wait) flags |= LKF_NOQUEUE | LKF_NOQUEUEBAST;
    lk->lksb.sb_lvbptr = reinterpret_cast<char*>(&lk->lvb);
    const int st = Request(*lk, DlmMode(mode), flags, options);
    if (st != 0) {
      Unreserve(*ls, resource.name, owner.uuid);
      Idle(*ls, resource.name);  // its anchor, when nobody here holds it
      return Refusal(*lk, st, options.wait);
    }
    // Granted: the token, and the hand-off check against the LVB we read.
    absl::Status refused;
    {
      absl::MutexLock l(&mu_);
      absl::StatusOr<uint64_t> token =
          TokenForGrant(*ls, *lk, /*convert_from=*/nullptr, options);
      if (token.ok()) {
        latchkey::Grant g{mode, *token, absl::StrCat(lk->lksb.sb_lkid)};
        ls->locks[resource.name][owner.uuid] = std::move(lk);
        return g;
      }
      ls->locks[resource.name].erase(owner.uuid);
      if (ls->locks[resource.name].empty()) ls->locks.erase(resource.name);
      Unlock(*lk);  // writes back the LVB exactly as read (or nothing: foreign)
      ForgetIfAbsent(*ls, resource.name);
      refused = token.status();
    }
    Idle(*ls, resource.name);
    return refused;
  }

  absl::StatusOr<latchkey::Grant> Convert(const Owner& owner, const Resource& resource,
                                          LockMode new_mode,
                                          const AcquireOptions& options) override {
    Lock* lk = nullptr;
    {
      absl::MutexLock l(&mu_);
      absl::StatusOr<Lock*> found = FindIdle(owner, resource);
      if (!found.ok()) return found.status();
      lk = *found;
      if (absl::Status st = Usable(*lk->ls); !st.ok()) return st;
      if (options.expect_token) {
        if (absl::Status st =
                LocalHandOffCheck(*lk->ls, resource, new_mode, *options.expect_token, lk);
            !st.ok()) {
          return st;
        }
      }
      lk->busy = true;
    }
    // Down from exclusive: the conversion writes our epoch into the LVB.
    if (lk->mode == LockMode::kExclusive) FillLvb(*lk, /*publish=*/false);
    uint32_t flags = LKF_CONVERT | LKF_PERSISTENT | LKF_VALBLK;
    if (!options.wait) flags |= LKF_NOQUEUE | LKF_NOQUEUEBAST;
    const LockMode old_mode = lk->mode;
    const int st = Request(*lk, DlmMode(new_mode), flags, options);
    if (st != 0) {
      {
        absl::MutexLock l(&mu_);
        lk->busy = false;
      }
      return Refusal(*lk, st, options.wait);
    }
    absl::MutexLock l(&mu_);
    lk->busy = false;
    lk->mode = new_mode;
    absl::StatusOr<uint64_t> token = TokenForGrant(*lk->ls, *lk, &old_mode, options);
    if (!token.ok()) {
      // The conversion happened but the token moved: give the lock back
      // in its old mode is not possible without a window either way;
      // release it (the caller's hand-off failed).
      Lockspace& ls = *lk->ls;
      auto& holders = ls.locks[resource.name];
      std::unique_ptr<Lock> gone = std::move(holders[owner.uuid]);
      holders.erase(owner.uuid);
      if (holders.empty()) ls.locks.erase(resource.name);
      Unlock(*gone);
      ForgetIfAbsent(ls, resource.name);
      return token.status();
    }
    return latchkey::Grant{new_mode, *token, absl::StrCat(lk->lksb.sb_lkid)};
  }

  absl::Status Release(const Owner& owner, const Resource& resource) override {
    std::unique_ptr<Lock> lk;
    {
      absl::MutexLock l(&mu_);
      absl::StatusOr<Lock*> found = FindIdle(owner, resource);
      if (!found.ok()) return found.status();
      auto& holders = (*found)->ls->locks[resource.name];
      lk = std::move(holders[owner.uuid]);
      holders.erase(owner.uuid);
      if (holders.empty()) (*found)->ls->locks.erase(resource.name);
    }
    Lockspace& ls = *lk->ls;
    // Our last lock on it: the anchor keeps the LVB past the unlock.
    if (!StillHeldHere(ls, resource.name)) Anchor(ls, resource.name);
    if (lk->mode == LockMode::kExclusive) FillLvb(*lk, /*publish=*/false);
    const int st = Unlock(*lk);
    if (st == 0) Idle(ls, resource.name);
    if (st != 0) {
      // The lock may still be held by the DLM: keep it in the table so the
      // caller sees it and can retry.
      absl::MutexLock l(&mu_);
      Lock* raw = lk.get();
      raw->ls->locks[resource.name][owner.uuid] = std::move(lk);
      return absl::UnavailableError(absl::StrCat("dlm: releasing ", resource.Describe(),
                                                 " failed: ", ErrnoText(st)));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<HolderInfo>> Inquire(
      const std::optional<Resource>& resource) override {
    absl::MutexLock l(&mu_);
    std::vector<HolderInfo> out;
    for (auto& [lsname, ls] : lockspaces_) {
      if (resource && resource->lockspace != lsname) continue;
      for (auto& [rname, holders] : ls->locks) {
        if (resource && resource->name != rname) continue;
        for (auto& [uuid, lk] : holders) {
          if (lk == nullptr) continue;
          out.push_back(HolderInfo{lk->owner, lk->resource, lk->mode, lk->token});
        }
      }
    }
    return out;
  }

  absl::StatusOr<latchkey::Grant> Adopt(const LockRecord& record) override {
    auto lk = std::make_unique<Lock>();
    lk->owner = record.owner;
    lk->resource = record.resource;
    lk->dlm_name = record.resource.name;
    lk->mode = record.mode;
    lk->token = record.fencing_token;
    lk->epoch = record.fencing_token >> kSeqBits;
    lk->epoch_unknown = record.fencing_token == 0;
    lk->lksb.sb_lvbptr = reinterpret_cast<char*>(&lk->lvb);
    {
      absl::MutexLock l(&mu_);
      absl::StatusOr<Lockspace*> ls = OpenLocked(record.resource.lockspace);
      if (!ls.ok()) return ls.status();
      lk->ls = *ls;
      auto& holders = (*ls)->locks[record.resource.name];
      if (holders.count(record.owner.uuid)) {
        return absl::FailedPreconditionError(absl::StrCat(
            record.owner.Describe(), " already holds ", record.resource.Describe()));
      }
      holders[record.owner.uuid] = nullptr;
      Unidle(**ls, record.resource.name);
    }
    Lockspace* ls = lk->ls;
    // An orphan is handed over by the kernel at once: no completion AST.
    const int rv = dlm_ls_lock(ls->handle, DlmMode(record.mode), &lk->lksb,
                               LKF_PERSISTENT | LKF_ORPHAN | LKF_VALBLK, lk->dlm_name.data(),
                               lk->dlm_name.size(), 0, CompletionAst, lk.get(), BlockingAst,
                               nullptr);
    if (rv != 0) {
      const int e = errno;
      Unreserve(*ls, record.resource.name, record.owner.uuid);
      if (e == ENOENT) {
        return absl::NotFoundError(absl::StrCat(
            "dlm: no orphan ", LockModeName(record.mode), " lock on ", record.resource.Describe(),
            " is left on this node to adopt (the lock was lost, or released)"));
      }
      if (e == EAGAIN) {
        return absl::NotFoundError(absl::StrCat(
            "dlm: the orphan lock on ", record.resource.Describe(),
            " is held in another mode than the journal's ", LockModeName(record.mode)));
      }
      return absl::UnavailableError(absl::StrCat("dlm: adopting ", record.resource.Describe(),
                                                 ": ", ErrnoText(e)));
    }
    absl::MutexLock l(&mu_);
    uint64_t& last = ls->last_token[lk->dlm_name];
    last = std::max(last, lk->token);
    latchkey::Grant g{record.mode, lk->token, absl::StrCat(lk->lksb.sb_lkid)};
    ls->locks[record.resource.name][record.owner.uuid] = std::move(lk);
    return g;
  }

  // A grant made from a request queued before the hand-off state was known:
  // the first conflicting grant since `since` iff its epoch is the next one
  // (exclusive: every exclusive grant takes E+1 from the LVB its
  // predecessor wrote) or the same one (shared: no exclusive grant came
  // between), and no local grant the LVB cannot show came between. Shared
  // grants on other nodes in between are not seen (as for expect_token).
  absl::Status CheckSuccession(const Owner& owner, const Resource& resource, LockMode mode,
                               uint64_t since_token, uint64_t granted_token) override {
    absl::MutexLock l(&mu_);
    absl::StatusOr<Lock*> lk = Find(owner, resource);
    if (!lk.ok()) return lk.status();
    if ((*lk)->token != granted_token || (*lk)->mode != mode) {
      return absl::FailedPreconditionError(absl::StrCat(
          owner.Describe(), " holds ", resource.Describe(), " ", LockModeName((*lk)->mode),
          " with token ", (*lk)->token, ", not ", LockModeName(mode), " with token ",
          granted_token));
    }
    const uint64_t since = since_token >> kSeqBits, got = granted_token >> kSeqBits;
    if (got != (mode == LockMode::kExclusive ? since + 1 : since)) {
      return absl::AbortedError(absl::StrCat(
          "dlm: ", resource.Describe(), ": fencing token moved since ", since_token,
          ": the grant (token ", granted_token, ") is not the first conflicting one after it"));
    }
    return LocalHandOffCheck(*(*lk)->ls, resource, mode, since_token, *lk);
  }

  absl::Status Health() override {
    if (const std::string why = WhyNoDlm(); !why.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("dlm: ", why));
    }
    const int q = Quorate();
    if (q == kQuorumGone || (q == kQuorumUnwatched && s_.watch_quorum)) {
      return absl::FailedPreconditionError("dlm: corosync's quorum service does not answer");
    }
    if (q == 0) return absl::FailedPreconditionError("dlm: this node has no quorum");
    absl::MutexLock l(&mu_);
    for (auto& [name, ls] : lockspaces_) {
      if (ls->lost) {
        return absl::FailedPreconditionError(
            absl::StrCat("dlm: lockspace ", name, " lost: ", ls->lost_reason));
      }
      if (absl::Status st = NotShared(*ls); !st.ok()) return st;
    }
    return absl::OkStatus();
  }

  absl::Status PrepareExec() override {
    // The new program adopts the orphans our closed lockspace fds leave.
    absl::MutexLock l(&mu_);
    for (auto& [name, ls] : lockspaces_) {
      const int fd = dlm_ls_get_fd(ls->handle);
      if (fd >= 0 && fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
        return absl::InternalError(absl::StrCat("dlm: close-on-exec for lockspace ", name,
                                                ": ", strerror(errno)));
      }
    }
    return absl::OkStatus();
  }

  void FinishAdoption() override {
    // Nothing to purge: latchd adopted and released every orphan of its own
    // that no live owner claims (its journal names them all); any other
    // orphan on this node is another program's (dlm_ls_purge with pid 0
    // would free those too, and the kernel's pid filter cannot help: it
    // matches the thread that last wrote a request, not the process).
  }

  std::string StateJson() override {
    const int quorate = Quorate();
    absl::MutexLock l(&mu_);
    std::vector<std::string> lss;
    for (auto& [name, ls] : lockspaces_) {
      size_t n = 0;
      for (auto& [r, h] : ls->locks) n += h.size();
      lss.push_back(absl::StrCat("{\"name\":\"", name, "\",\"locks\":", n, ",\"state\":\"",
                                 ls->lost ? "lost" : "joined", "\"",
                                 ls->lost ? absl::StrCat(",\"reason\":\"", ls->lost_reason, "\"")
                                          : "",
                                 "}"));
    }
    return absl::StrCat("{\"node_id\":", node_id_, ",\"node\":\"", host_, "\",\"quorate\":",
                        quorate == 1 ? "true" : (quorate == 0 ? "false" : "null"),
                        ",\"lockspaces\":[", absl::StrJoin(lss, ","), "]}");
  }

  void WatchLockLoss(LockLossHandler handler) override {
    absl::MutexLock l(&handler_mu_);
    handler_ = std::move(handler);
  }

  // Called from libdlm's completion thread when a request is blocked by
  // `lk`. Must not take mu_: a thread holding it may wait for an AST.
  void Blocked(Lock* lk) {
    absl::MutexLock l(&publish_mu_);
    to_publish_.insert(lk);
  }

  static void BlockingAst(void* arg) {
    Lock* lk = static_cast<Lock*>(arg);
    if (lk->ls != nullptr && lk->ls->backend != nullptr) lk->ls->backend->Blocked(lk);
  }

 private:
  absl::StatusOr<Lockspace*> OpenLocked(const std::string& name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = lockspaces_.find(name);
    if (it != lockspaces_.end()) return it->second.get();
    if (name.size() > DLM_LOCKSPACE_LEN) {
      return absl::InvalidArgumentError(absl::StrCat("dlm: lockspace name '", name, "' is ",
                                                     name.size(), " bytes; the DLM allows ",
                                                     DLM_LOCKSPACE_LEN));
    }
    errno = 0;
    dlm_lshandle_t h = s_.create ? dlm_create_lockspace(name.c_str(), 0600)
                                 : dlm_open_lockspace(name.c_str());
    if (h == nullptr) {
      const int e = errno;
      if (!s_.create && e == ENOENT) {
        return absl::FailedPreconditionError(absl::StrCat(
            "dlm: lockspace ", name, " does not exist on this node and create_lockspaces = 0: "
            "create it first (e.g. dlm_tool join ", name, ") or allow latchkey to create it"));
      }
      std::string why = WhyNoDlm();
      return absl::FailedPreconditionError(absl::StrCat(
          "dlm: cannot ", s_.create ? "create" : "open", " lockspace ", name, ": ",
          why.empty() ? ErrnoText(e) : why));
    }
    if (dlm_ls_pthread_init(h) != 0) {
      const int e = errno;
      dlm_close_lockspace(h);
      return absl::InternalError(absl::StrCat("dlm: completion thread for lockspace ", name,
                                              ": ", ErrnoText(e)));
    }
    auto ls = std::make_unique<Lockspace>();
    ls->backend = this;
    ls->name = name;
    ls->handle = h;
    ls->other_users = OtherUsers(*ls);
    Lockspace* p = ls.get();
    lockspaces_[name] = std::move(ls);
    return p;
  }

  absl::Status Usable(const Lockspace& ls) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (ls.lost) {
      return absl::FailedPreconditionError(absl::StrCat(
          "dlm: lockspace ", ls.name, " cannot be used on this node: ", ls.lost_reason));
    }
    return absl::OkStatus();
  }

  // Other programs of this node with the lockspace's device open.
  static std::string OtherUsers(const Lockspace& ls) {
    struct stat st;
    const int fd = ls.handle != nullptr ? dlm_ls_get_fd(ls.handle) : -1;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISCHR(st.st_mode)) return "";
    return DescribeUsers(DeviceUsers(st.st_rdev, getpid()));
  }

  // Refuses a lockspace other programs of this node use, unless the
  // configuration allows sharing it. Looks again while it is refused, so a
  // lockspace becomes usable once they are gone.
  absl::Status NotShared(Lockspace& ls) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (ls.other_users.empty() || s_.shared.count(ls.name)) return absl::OkStatus();
    ls.other_users = OtherUsers(ls);
    if (ls.other_users.empty()) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(
        "dlm: lockspace ", ls.name, " is shared: other programs on this node have it open (",
        ls.other_users, "); latchkey cannot tell their locks, orphans and lock value blocks "
        "from its own there, so it takes no new lock in it. Give latchkey a lockspace of its "
        "own, or list ", ls.name, " in dlm_shared_lockspaces to share it"));
  }

  // Keeps the invariant behind empty_epoch: it exists only while this node
  // has a lock or an anchor on the resource.
  static void ForgetIfAbsent(Lockspace& ls, const std::string& rname) {
    auto a = ls.anchors.find(rname);
    if (ls.locks.count(rname) || (a != ls.anchors.end() && a->second != nullptr)) return;
    ls.empty_epoch.erase(rname);
  }

  bool StillHeldHere(Lockspace& ls, const std::string& rname) {
    absl::MutexLock l(&mu_);
    return ls.locks.count(rname) > 0;
  }

  // The resource is held here again: its anchor (if any) is not idle.
  void Unidle(Lockspace& ls, const std::string& rname) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = ls.idle_pos.find(rname);
    if (it == ls.idle_pos.end()) return;
    ls.idle_anchors.erase(it->second);
    ls.idle_pos.erase(it);
  }

  // After a release: when nobody here holds the resource any more, its
  // anchor becomes the newest idle one, and the oldest beyond the bound go.
  void Idle(Lockspace& ls, const std::string& rname) {
    std::vector<std::unique_ptr<Lock>> evicted;
    {
      absl::MutexLock l(&mu_);
      auto a = ls.anchors.find(rname);
      if (ls.locks.count(rname) || a == ls.anchors.end() || a->second == nullptr ||
          ls.idle_pos.count(rname)) {
        return;
      }
      ls.idle_pos[rname] = ls.idle_anchors.insert(ls.idle_anchors.end(), rname);
      while (ls.idle_anchors.size() > kMaxIdleAnchors) {
        const std::string old = ls.idle_anchors.front();
        ls.idle_anchors.pop_front();
        ls.idle_pos.erase(old);
        auto it = ls.anchors.find(old);
        if (it != ls.anchors.end()) {
          evicted.push_back(std::move(it->second));
          ls.anchors.erase(it);
        }
        ls.empty_epoch.erase(old);
      }
    }
    for (auto& old : evicted) Unlock(*old);
  }

  void Unreserve(Lockspace& ls, const std::string& rname, const std::string& uuid) {
    absl::MutexLock l(&mu_);
    auto it = ls.locks.find(rname);
    if (it == ls.locks.end()) return;
    auto h = it->second.find(uuid);
    if (h != it->second.end() && h->second == nullptr) it->second.erase(h);
    if (it->second.empty()) ls.locks.erase(it);
  }

  absl::StatusOr<Lock*> Find(const Owner& owner, const Resource& resource)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto ls = lockspaces_.find(resource.lockspace);
    if (ls != lockspaces_.end()) {
      auto r = ls->second->locks.find(resource.name);
      if (r != ls->second->locks.end()) {
        auto h = r->second.find(owner.uuid);
        if (h != r->second.end() && h->second != nullptr) return h->second.get();
        for (auto& [uuid, other] : r->second) {
          if (other == nullptr) continue;
          return absl::PermissionDeniedError(absl::StrCat(
              owner.Describe(), " does not hold ", resource.Describe(), "; it is held ",
              LockModeName(other->mode), " by ", other->owner.Describe()));
        }
      }
    }
    return absl::NotFoundError(
        absl::StrCat(owner.Describe(), " holds no lock on ", resource.Describe()));
  }

  // Find, once no convert or publication is working on the lock.
  absl::StatusOr<Lock*> FindIdle(const Owner& owner, const Resource& resource)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto idle = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      absl::StatusOr<Lock*> f = Find(owner, resource);
      return !f.ok() || !(*f)->busy;
    };
    mu_.Await(absl::Condition(&idle));
    return Find(owner, resource);
  }

  // Issues one lock or convert request and waits for its completion AST,
  // cancelling it when the caller's time runs out. Returns 0 when granted,
  // else a positive code (EAGAIN refused, ETIMEDOUT cancelled, EDEADLK, an
  // errno of the request itself).
  int Request(Lock& lk, uint32_t mode, uint32_t flags, const AcquireOptions& options) {
    absl::MutexLock l(&lk.mu);
    lk.done = false;
    lk.status = 0;
    int rv;
    {
      // libdlm may call the AST before dlm_ls_lock returns (from its
      // thread): it takes lk.mu, so drop it meanwhile.
      lk.mu.Unlock();
      rv = dlm_ls_lock(lk.ls->handle, mode, &lk.lksb, flags, lk.dlm_name.data(),
                       lk.dlm_name.size(), 0, CompletionAst, &lk, BlockingAst, nullptr);
      const int e = errno;
      lk.mu.Lock();
      if (rv != 0) {
        lk.done = true;
        return e != 0 ? e : EIO;
      }
    }
    const absl::Time deadline = !options.wait                   ? absl::InfiniteFuture()
                                : options.timeout == absl::InfiniteDuration()
                                    ? absl::InfiniteFuture()
                                    : absl::Now() + options.timeout;
    // With a cancel_fd, wake every kCancelPoll to see whether the caller
    // gave up (the AST cannot watch a descriptor for us).
    bool cancelled = false;
    while (!lk.mu.AwaitWithDeadline(
        absl::Condition(&lk.done),
        options.cancel_fd < 0 ? deadline : std::min(deadline, absl::Now() + kCancelPoll))) {
      cancelled = WaitCancelled(options.cancel_fd);
      if (!cancelled && absl::Now() < deadline) continue;
      // Out of time or given up: cancel; the AST then says which won.
      lk.mu.Unlock();
      dlm_ls_unlock(lk.ls->handle, lk.lksb.sb_lkid, LKF_CANCEL, &lk.lksb, &lk);
      lk.mu.Lock();
      lk.mu.Await(absl::Condition(&lk.done));
      if (lk.status == 0) return 0;  // granted just before the cancel
      return cancelled ? ECANCELED : ETIMEDOUT;
    }
    return lk.status;
  }

  // Unlocks `lk` (writing its LVB when exclusive) and waits for the AST.
  // Returns 0 or an errno. The request is written to the lockspace device
  // here, not through dlm_ls_unlock: libdlm 4.2 sends uninitialised bytes as
  // the LVB of an unlock, which the kernel stores for an EX holder.
  int Unlock(Lock& lk) {
    absl::MutexLock l(&lk.mu);
    lk.done = false;
    DeviceRequest req;
    memset(&req, 0, sizeof(req));
    memcpy(req.version, kDeviceVersion, sizeof(req.version));
    req.cmd = kDeviceUnlock;
    req.is64bit = sizeof(void*) == 8;
    req.lock.lkid = lk.lksb.sb_lkid;
    req.lock.lksb = &lk.lksb;
    req.lock.castparam = &lk;  // the lock's completion AST stays
    // The kernel copies this field over the lock's LVB whatever the flags,
    // and stores it in the resource when an EX lock that asked for the LVB
    // goes: ours, or the other program's exactly as it was read.
    if (lk.mode == LockMode::kExclusive) {
      req.lock.flags = LKF_VALBLK | (lk.epoch_unknown ? LKF_IVVALBLK : 0);
    }
    memcpy(req.lock.lvb, &lk.lvb, DLM_LVB_LEN);
    lk.lksb.sb_status = EINPROG;
    lk.mu.Unlock();
    const ssize_t rv = write(dlm_ls_get_fd(lk.ls->handle), &req, sizeof(req));
    const int e = errno;
    lk.mu.Lock();
    if (rv < 0) {
      lk.done = true;
      return e != 0 ? e : EIO;
    }
    lk.mu.Await(absl::Condition(&lk.done));
    return lk.status == EUNLOCK || lk.status == 0 ? 0 : lk.status;
  }

  // Takes the resource's NL anchor unless it has one (see Lockspace::anchors).
  // When it cannot, this node's presence on the resource breaks at the
  // coming unlock: the empty epoch goes.
  void Anchor(Lockspace& ls, const std::string& name) {
    {
      absl::MutexLock l(&mu_);
      if (ls.anchors.count(name)) return;
      ls.anchors[name] = nullptr;  // being taken
    }
    auto a = std::make_unique<Lock>();
    a->ls = &ls;
    a->dlm_name = name;
    a->mode = LockMode::kSharedRead;  // for Unlock: writes no LVB
    AcquireOptions o;
    // EXPEDITE: granted at once even behind a queued conflicting request
    // (an NL request otherwise waits its turn, and the waiter ahead waits
    // for the very unlock this anchor precedes).
    const int st = Request(*a, LKM_NLMODE, LKF_EXPEDITE, o);
    absl::MutexLock l(&mu_);
    if (st != 0) {
      ls.anchors.erase(name);
      ls.empty_epoch.erase(name);
      return;
    }
    ls.anchors[name] = std::move(a);
  }

  void FillLvb(Lock& lk, bool publish) {
    Lvb v{};
    v.magic = kLvbMagic;
    v.epoch = lk.epoch;
    if (publish) {
      v.holder_node = node_id_ == 0 ? 1 : node_id_;
      v.holder_pid = static_cast<uint32_t>(lk.owner.pid);
      memcpy(v.holder_name, lk.owner.name.data(),
             std::min(lk.owner.name.size(), sizeof(v.holder_name)));
    }
    lk.lvb = v;
  }

  // The grant's token from the LVB it read (and the local table), plus the
  // hand-off check. Sets lk.token and lk.epoch.
  absl::StatusOr<uint64_t> TokenForGrant(Lockspace& ls, Lock& lk, const LockMode* convert_from,
                                         const AcquireOptions& options)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    uint64_t& last = ls.last_token[lk.dlm_name];
    // What the DLM read into our LVB: after a PR->CW convert nothing is read,
    // and our own epoch still stands.
    const bool read_lvb = convert_from == nullptr || lk.mode == LockMode::kExclusive ||
                          *convert_from == LockMode::kExclusive;
    const bool not_valid = lk.lksb.sb_flags & DLM_SBF_VALNOTVALID;
    uint64_t epoch = 0;
    bool lost = false;  // the LVB cannot say what happened before
    if (!read_lvb) {
      epoch = lk.epoch;
    } else if (lk.lvb.magic == kLvbMagic && !not_valid) {
      epoch = lk.lvb.epoch;
    } else if (lk.lvb.magic != 0 && !not_valid) {
      // Another program's lock value block: this name is in use by
      // something that is not latchkey. Refuse; lk.lvb keeps what was read,
      // so the unlock writes it back unchanged.
      const unsigned char* b = reinterpret_cast<const unsigned char*>(&lk.lvb);
      std::string hex;
      for (size_t i = 0; i < 8; ++i) absl::StrAppend(&hex, absl::Hex(b[i], absl::kZeroPad2));
      return absl::FailedPreconditionError(absl::StrCat(
          "dlm: ", lk.resource.Describe(), " carries a lock value block latchkey did not "
          "write (first bytes ", hex, "): another program uses this name in lockspace ",
          ls.name, ". Refused; its lock value block is left as it was"));
    } else if (lk.lvb.magic == 0 && !not_valid) {
      // Never written while this node had a lock or an anchor on the
      // resource: no exclusive grant since then. One clock epoch stands for
      // that, kept until that presence breaks.
      uint64_t& empty = ls.empty_epoch[lk.dlm_name];
      if (empty == 0) empty = std::max(ClockEpoch(), (last >> kSeqBits) + 1);
      epoch = empty;
    } else {
      lost = true;
      ls.empty_epoch.erase(lk.dlm_name);
    }
    if (options.expect_token) {
      const uint64_t t = *options.expect_token;
      if (lost) {
        return absl::AbortedError(absl::StrCat(
            "dlm: ", lk.resource.Describe(), ": fencing token moved since ", t,
            ": the DLM lost the lock value block (its exclusive holder's node failed, or "
            "nobody held the resource for a while), so nobody can prove it was not taken "
            "meanwhile"));
      }
      if ((t >> kSeqBits) != epoch) return MovedSince(lk.resource, t);
    }
    const bool lvb_ok = !lost;
    uint64_t token;
    if (lk.mode == LockMode::kExclusive && (convert_from == nullptr ||
                                            *convert_from != LockMode::kExclusive)) {
      uint64_t e = lvb_ok ? epoch + 1 : ClockEpoch();
      e = std::max(e, (last >> kSeqBits) + 1);
      token = e << kSeqBits;
    } else {
      if (!lvb_ok) epoch = ClockEpoch();
      epoch = std::max(epoch, last >> kSeqBits);
      uint64_t n = (last >> kSeqBits) == epoch ? (last & kSeqMask) + 1 : 1;
      if (n > kSeqMask) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "dlm: ", lk.resource.Describe(), ": 65535 grants under one exclusive epoch"));
      }
      token = (epoch << kSeqBits) | n;
    }
    lk.token = token;
    lk.epoch = token >> kSeqBits;
    last = std::max(last, token);
    uint64_t& by_mode = ls.last_by_mode[lk.dlm_name][ModeIndex(lk.mode)];
    by_mode = std::max(by_mode, token);
    FillLvb(lk, false);
    return token;
  }

  // Local grants made since `token` that conflict with `mode` (the part of
  // the hand-off check the LVB cannot see: grants that did not write it).
  absl::Status LocalHandOffCheck(Lockspace& ls, const Resource& resource, LockMode mode,
                                 uint64_t token, const Lock* self = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto last = ls.last_token.find(resource.name);
    if (last != ls.last_token.end() && (last->second >> kSeqBits) == (token >> kSeqBits) &&
        token > last->second) {
      return MovedSince(resource, token);  // never issued here
    }
    auto by_mode = ls.last_by_mode.find(resource.name);
    if (by_mode != ls.last_by_mode.end()) {
      for (LockMode m : {LockMode::kSharedRead, LockMode::kSharedWrite, LockMode::kExclusive}) {
        const uint64_t t = by_mode->second[ModeIndex(m)];
        if (t > token && !Compatible(m, mode) && !(self != nullptr && self->token == t)) {
          return MovedSince(resource, token);
        }
      }
    }
    auto r = ls.locks.find(resource.name);
    if (r != ls.locks.end()) {
      for (auto& [uuid, h] : r->second) {
        if (h == nullptr || h.get() == self) continue;
        if (h->token > token && !Compatible(h->mode, mode)) return MovedSince(resource, token);
      }
    }
    return absl::OkStatus();
  }

  absl::Status MovedSince(const Resource& resource, uint64_t token) {
    return absl::AbortedError(absl::StrCat("dlm: ", resource.Describe(),
                                           ": fencing token moved since ", token,
                                           ": someone was granted it in a conflicting mode"));
  }

  absl::Status Refusal(Lock& lk, int err, bool waited) {
    if (err == ECANCELED) {
      return absl::CancelledError(absl::StrCat("dlm: the wait for ", lk.resource.Describe(),
                                               " (", LockModeName(lk.mode),
                                               ") was given up by its caller"));
    }
    if (err == EAGAIN || err == ETIMEDOUT || err == EDEADLK) {
      std::string holder = HolderText(lk);
      if (err == ETIMEDOUT) {
        return absl::DeadlineExceededError(
            absl::StrCat("dlm: timed out waiting for ", lk.resource.Describe(), " (",
                         LockModeName(lk.mode), "): ", holder));
      }
      return absl::UnavailableError(absl::StrCat(
          "dlm: ", lk.resource.Describe(), " is not available ", LockModeName(lk.mode), ": ",
          err == EDEADLK ? "conversion deadlock with another holder converting; " : "", holder,
          waited ? "" : " (no wait)"));
    }
    std::string why = WhyNoDlm();
    return absl::FailedPreconditionError(
        absl::StrCat("dlm: request for ", lk.resource.Describe(), " in lockspace ",
                     lk.ls->name, " failed: ", why.empty() ? ErrnoText(err) : why));
  }

  // Who holds lk.resource in a mode conflicting with lk.mode: a local owner
  // from the table, else the holder that published itself into the LVB.
  std::string HolderText(Lock& lk) {
    {
      absl::MutexLock l(&mu_);
      auto r = lk.ls->locks.find(lk.dlm_name);
      if (r != lk.ls->locks.end()) {
        std::vector<std::string> names;
        for (auto& [uuid, h] : r->second) {
          if (h == nullptr || h.get() == &lk || Compatible(h->mode, lk.mode)) continue;
          names.push_back(absl::StrCat(LockModeName(h->mode), " by ", h->owner.Describe(),
                                       " on this node (", host_, ", node ", node_id_, ")"));
        }
        if (!names.empty()) return absl::StrCat("held ", absl::StrJoin(names, ", "));
      }
    }
    const absl::Time until = absl::Now() + s_.identity_wait;
    do {
      Lock probe;
      probe.ls = lk.ls;
      probe.dlm_name = lk.dlm_name;
      probe.lksb.sb_lvbptr = reinterpret_cast<char*>(&probe.lvb);
      AcquireOptions o;
      if (Request(probe, LKM_NLMODE, LKF_VALBLK | LKF_EXPEDITE, o) != 0) break;
      const Lvb v = probe.lvb;
      probe.mode = LockMode::kSharedRead;  // an NL unlock writes nothing
      Unlock(probe);
      if (v.magic == kLvbMagic && v.holder_node != 0) {
        std::string name(v.holder_name, strnlen(v.holder_name, sizeof(v.holder_name)));
        return absl::StrCat("held exclusive by owner ", name, " (pid ", v.holder_pid,
                            ") on node ", v.holder_node, " (fencing epoch ", v.epoch, ")");
      }
      absl::SleepFor(absl::Milliseconds(2));
    } while (absl::Now() < until);
    // Nobody named itself. Latchkey's exclusive holders on other nodes do;
    // so the holder is a shared one, one that does not answer, or not
    // latchkey's at all: say which programs of this node could be it.
    std::string others;
    {
      absl::MutexLock l(&mu_);
      lk.ls->other_users = OtherUsers(*lk.ls);
      others = lk.ls->other_users;
    }
    if (!others.empty()) {
      return absl::StrCat("held in a conflicting mode by a holder that did not name itself: "
                          "another program on this node that has lockspace ", lk.ls->name,
                          " open (", others, "), or a shared holder on another node");
    }
    return "held in a conflicting mode by a holder that did not name itself: a shared holder "
           "on another node, one that does not answer, or an orphan lock another program left "
           "on this node";
  }

  static bool Compatible(LockMode a, LockMode b) {
    if (a == LockMode::kExclusive || b == LockMode::kExclusive) return false;
    return a == b;
  }

  // Writes the identity of exclusive holders that block someone (EX->EX
  // conversion: the DLM then stores our LVB in the resource).
  void Publisher() {
    while (true) {
      std::set<Lock*> asked;
      {
        absl::MutexLock l(&publish_mu_);
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(publish_mu_) {
          return publish_stop_ || !to_publish_.empty();
        };
        publish_mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Seconds(1));
        if (publish_stop_) return;
        asked.swap(to_publish_);
      }
      for (Lock* lk : asked) {
        {
          absl::MutexLock l(&mu_);
          if (!StillHeld(lk) || lk->busy || lk->mode != LockMode::kExclusive) continue;
          absl::MutexLock ll(&lk->mu);
          if (lk->published || !lk->done) continue;
          lk->published = true;
          lk->busy = true;
        }
        FillLvb(*lk, /*publish=*/true);
        AcquireOptions o;
        Request(*lk, LKM_EXMODE, LKF_CONVERT | LKF_PERSISTENT | LKF_VALBLK, o);
        FillLvb(*lk, /*publish=*/false);  // release then clears the identity
        absl::MutexLock l(&mu_);
        lk->busy = false;
      }
    }
  }

  bool StillHeld(Lock* lk) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (auto& [name, ls] : lockspaces_) {
      for (auto& [r, holders] : ls->locks) {
        for (auto& [uuid, h] : holders) {
          if (h.get() == lk) return true;
        }
      }
    }
    return false;
  }

  static constexpr int kQuorumBusy = -2;  // corosync busy (membership change)
  static constexpr int kQuorumGone = -1;  // corosync does not answer
  static constexpr int kQuorumUnwatched = 2;

  // 1 quorate, 0 not, or kQuorumBusy / kQuorumGone / kQuorumUnwatched.
  // Reconnects once when the IPC connection broke.
  int Quorate() {
    absl::MutexLock l(&quorum_mu_);
    if (quorum_ == 0) return kQuorumUnwatched;
    int quorate = 0;
    cs_error_t rc = quorum_getquorate(quorum_, &quorate);
    if (rc != CS_OK && rc != CS_ERR_TRY_AGAIN) {
      quorum_finalize(quorum_);
      uint32_t type = 0;
      if (quorum_initialize(&quorum_, nullptr, &type) != CS_OK) {
        quorum_ = 0;
        return kQuorumGone;
      }
      rc = quorum_getquorate(quorum_, &quorate);
    }
    if (rc == CS_ERR_TRY_AGAIN) return kQuorumBusy;
    if (rc != CS_OK) return kQuorumGone;
    return quorate ? 1 : 0;
  }

  // Watches quorum, dlm_controld and the lockspaces; reports the locks of a
  // lockspace this node can no longer vouch for.
  void Monitor() {
    while (true) {
      {
        absl::MutexLock l(&mu_);
        auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
        mu_.AwaitWithTimeout(absl::Condition(&stop), s_.poll);
        if (stopping_) return;
      }
      std::string why;
      const int q = Quorate();
      if (q == kQuorumBusy) continue;
      if (q == kQuorumGone) {
        why = ProcessRunning("corosync") ? "corosync stopped answering (its quorum service fails)"
                                         : "corosync stopped on this node";
      } else if (q == 0) {
        why = "this node lost quorum (cut off from the cluster, or expelled): the other "
              "nodes recover its locks";
      }
      if (why.empty() && !dlm_controld_watch_.Running()) why = "dlm_controld stopped";
      std::vector<LockLoss> losses;
      {
        absl::MutexLock l(&mu_);
        for (auto& [name, ls] : lockspaces_) {
          std::string ls_why = why;
          if (ls_why.empty() && access(absl::StrCat("/sys/kernel/dlm/", name).c_str(), F_OK) != 0) {
            ls_why = "the lockspace left the kernel";
          }
          if (ls_why.empty() || ls->lost) continue;
          ls->lost = true;
          ls->lost_reason = ls_why;
          for (auto& [r, holders] : ls->locks) {
            for (auto& [uuid, h] : holders) {
              if (h == nullptr) continue;
              losses.push_back(LockLoss{h->owner, h->resource,
                                        absl::StrCat("dlm lockspace ", name, ": ", ls_why)});
              lost_locks_.push_back(std::move(h));  // its ASTs may still come
            }
          }
          ls->locks.clear();
          ls->empty_epoch.clear();
        }
      }
      if (!losses.empty()) {
        absl::MutexLock l(&handler_mu_);
        for (const LockLoss& loss : losses) {
          if (handler_) handler_(loss);
        }
      }
    }
  }

  const Settings s_;
  uint32_t node_id_ = 0;
  std::string host_;
  DaemonWatch dlm_controld_watch_{"dlm_controld"};  // the monitor thread's
  absl::Mutex quorum_mu_;
  quorum_handle_t quorum_ ABSL_GUARDED_BY(quorum_mu_) = 0;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, std::unique_ptr<Lockspace>> lockspaces_ ABSL_GUARDED_BY(mu_);
  absl::Mutex publish_mu_ ABSL_ACQUIRED_AFTER(mu_);
  bool publish_stop_ ABSL_GUARDED_BY(publish_mu_) = false;
  std::set<Lock*> to_publish_ ABSL_GUARDED_BY(publish_mu_);
  std::vector<std::unique_ptr<Lock>> lost_locks_ ABSL_GUARDED_BY(mu_);
  std::thread monitor_;
  std::thread publisher_;
  absl::Mutex handler_mu_;
  LockLossHandler handler_ ABSL_GUARDED_BY(handler_mu_);
};

absl::StatusOr<std::unique_ptr<Backend>> NewDlmBackend(const Config& settings) {
  if (absl::Status st = settings.CheckKeys(
          {"lockspaces", "create_lockspaces", "poll_ms", "identity_wait_ms", "watch_quorum",
           "shared_lockspaces"});
      !st.ok()) {
    return st;
  }
  Settings s;
  absl::StatusOr<std::vector<std::string>> lss = settings.GetStringList("lockspaces", {});
  if (!lss.ok()) return lss.status();
  s.lockspaces = *lss;
  for (const std::string& name : s.lockspaces) {
    if (absl::Status st = ValidateName("dlm lockspace", name, DLM_LOCKSPACE_LEN); !st.ok()) {
      const ConfigEntry* e = settings.Find("lockspaces");
      return absl::InvalidArgumentError(
          absl::StrCat(e ? e->Where() : "lockspaces", ": ", st.message()));
    }
  }
  absl::StatusOr<std::vector<std::string>> shared = settings.GetStringList("shared_lockspaces", {});
  if (!shared.ok()) return shared.status();
  for (const std::string& name : *shared) {
    if (absl::Status st = ValidateName("dlm lockspace", name, DLM_LOCKSPACE_LEN); !st.ok()) {
      const ConfigEntry* e = settings.Find("shared_lockspaces");
      return absl::InvalidArgumentError(
          absl::StrCat(e ? e->Where() : "shared_lockspaces", ": ", st.message()));
    }
    s.shared.insert(name);
  }
  absl::StatusOr<bool> create = settings.GetBool("create_lockspaces", true);
  if (!create.ok()) return create.status();
  s.create = *create;
  absl::StatusOr<int64_t> poll = settings.GetInt("poll_ms", 250, 10, 60000);
  if (!poll.ok()) return poll.status();
  s.poll = absl::Milliseconds(*poll);
  absl::StatusOr<int64_t> idw = settings.GetInt("identity_wait_ms", 100, 0, 10000);
  if (!idw.ok()) return idw.status();
  s.identity_wait = absl::Milliseconds(*idw);
  absl::StatusOr<bool> wq = settings.GetBool("watch_quorum", true);
  if (!wq.ok()) return wq.status();
  s.watch_quorum = *wq;
  auto backend = std::make_unique<DlmBackend>(s);
  if (absl::Status st = backend->Start(); !st.ok()) return st;
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace
}  // namespace dlmbe
}  // namespace latchkey

LATCHKEY_EXPORT_BACKEND("dlm", "Linux kernel DLM locks with corosync (libdlm)",
                        latchkey::dlmbe::kCapabilities, latchkey::dlmbe::NewDlmBackend);
