// The agent: holds locks on behalf of registered owners (VMs), across every
// loaded backend, journaled so a restarted agent adopts what it held.
//
// It is latchd minus the socket: server.h turns protocol requests into
// these calls. What it guarantees:
//   * An acquire of several resources takes all or none, in one fixed order
//     (backend, lockspace, name), so two owners cannot deadlock.
//   * An owner's locks are released as soon as its process exits (pidfd).
//   * Every lock held is in the journal before the client hears of it; a
//     crash at any instant leaves the journal describing the locks before
//     or after the operation, never a mix.
//   * On start, every journaled lock of a live owner is adopted; a lock
//     that cannot be adopted is a lock failure of its owner (policy:
//     terminate, pause or ignore). Locks of owners that died meanwhile are
//     released.
//
// Thread safety: every method is thread-safe; a waiting Acquire blocks only
// its caller.
#ifndef LATCHKEY_AGENT_AGENT_H_
#define LATCHKEY_AGENT_AGENT_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/owner_watch.h"
#include "core/backend.h"
#include "core/config.h"
#include "core/journal.h"

namespace latchkey {

// The longest grace between SIGTERM and SIGKILL (policy terminate).
inline constexpr int64_t kMaxGraceMs = 3600 * 1000;

// What to do to an owner whose lock was lost (libvirt's on_lockfailure).
enum class FailurePolicy { kTerminate, kPause, kIgnore };
const char* FailurePolicyName(FailurePolicy p);
absl::StatusOr<FailurePolicy> ParseFailurePolicy(absl::string_view text);

// Who sent a request: the peer's credentials (SO_PEERCRED). A privileged
// caller (root, or latchd's own uid) may act on every owner. Any other
// caller may register only processes whose real, effective and saved uids
// are its own, and may acquire, release, unregister or change the policy
// only of owners its uid registered. Reading (inquire, holders, status) is
// open to every allowed peer. docs/protocol.md ("Who may do what").
struct Caller {
  uid_t uid = 0;
  pid_t pid = 0;
  bool privileged = true;
  // latchd itself (recovery, rebuilding from backends).
  static Caller Internal() { return Caller{}; }
};

// Which names a disk lock takes (docs/disk-identity.md, "Upgrading").
//   kIdentityAndPath  scheme 2 and scheme 1: the identity name and the name
//                     of the canonical path, so hosts still locking by path
//                     (older latchd) see the lock too. The default while any
//                     host of the cluster may run an older latchd.
//   kIdentity         the identity name only, once every host is upgraded.
//   kPath             the path name only, as latchkey before identities did.
enum class DiskNames {
  kIdentityAndPath,
  kIdentity,
  kPath,
};
const char* DiskNamesName(DiskNames names);
absl::StatusOr<DiskNames> ParseDiskNames(absl::string_view text);

struct AgentOptions {
  std::vector<std::string> plugin_path;
  std::vector<std::string> backends = {"posixfd"};  // the first is the default
  // Backends that exclude nobody (Capabilities::no_exclusion, the nop
  // backend) are loaded only when named here: they are benchmark floors,
  // not locks (config key benchmark_backends).
  std::vector<std::string> benchmark_backends;
  Config backend_config;  // whole config: each backend reads its NAME_ keys
  std::string lockspace = "default";
  std::string journal_path = "/run/latchkey/journal.db";
  absl::Duration default_grace = absl::Seconds(5);
  DiskNames disk_names = DiskNames::kIdentityAndPath;
};

// OK unless `caps` says backend `name` excludes nobody and `allowed` (the
// configuration's benchmark_backends) does not name it: then
// FailedPrecondition saying why latchd will not load it.
absl::Status CheckBackendExcludes(const std::string& name, const Capabilities& caps,
                                  const std::vector<std::string>& allowed);

// A resource as a request names it.
struct ResourceSpec {
  std::string backend;    // "" = the default backend
  ResourceKind kind = ResourceKind::kDisk;
  std::string lockspace;  // "" = the agent's lockspace
  std::string target;     // disk: image path; lease: key
  std::string lease_path;
  uint64_t lease_offset = 0;
  LockMode mode = LockMode::kExclusive;
  // Disk: the identity as a client that resolved the path in its own mount
  // namespace found it (the libvirt adapter in libvirtd); "" = latchd finds
  // it. See ValidateClientIdentity.
  std::string identity;
  std::string identity_kind;
};

// OK for an empty pair, or a printable identity of at most 1024 bytes with
// a kind IdentifyDisk gives (not "path": a weak identity is latchd's to find).
absl::Status ValidateClientIdentity(const std::string& identity, const std::string& kind);

// One lock as clients see it. A disk latchd holds under two names
// (DiskNames::kIdentityAndPath) is one view: `resource` is the identity
// name, `path_name` the scheme-1 name taken with it.
struct LockView {
  std::string backend;
  Resource resource;
  LockMode mode = LockMode::kExclusive;
  uint64_t fencing_token = 0;
  std::string path_name;
  uint64_t path_fencing_token = 0;  // the path name's own grant
  // Granted from a queued request (Agent::Queue) and not yet claimed by an
  // acquire: the owner holds it, and its next acquire of it checks the
  // hand-off state against this grant.
  bool queued = false;
};

struct OwnerView {
  Owner owner;
  FailurePolicy policy = FailurePolicy::kTerminate;
  absl::Duration grace;
  bool alive = false;
  std::vector<LockView> locks;
};

struct BackendView {
  std::string name;
  absl::Status health;
  std::string state_json;  // Backend::StateJson()
};

// Who holds a resource, as its backend sees it (Backend::Inquire): local
// owners in full, other hosts' holders as far as the backend can tell.
struct HoldersView {
  size_t request_index = 0;  // which of the request's resources this is
  std::string backend;
  Resource resource;
  std::vector<HolderInfo> holders;
  // Holders registered with this latchd: the path each reached the disk by
  // (may be another spelling of the same disk), by owner uuid.
  std::map<std::string, std::string> local_paths;
};

struct ReleaseResult {
  std::vector<LockView> released;
  std::string state;  // hand-off state string of the released locks
};

// The hand-off state string (agent/handoff.h) of `locks`.
std::string HandoffState(const std::vector<LockView>& locks);

struct AgentStatus {
  std::string host;
  std::string boot_id;
  std::string journal_path;
  DiskNames disk_names = DiskNames::kIdentityAndPath;
  std::vector<BackendView> backends;
  std::vector<OwnerView> owners;
};

class Agent {
 public:
  // Loads the backends, opens the journal (moving a corrupt one aside),
  // adopts what it records, and starts watching owners. Errors name the
  // backend or journal that failed.
  static absl::StatusOr<std::unique_ptr<Agent>> Start(AgentOptions options);
  ~Agent();

  // Registers (or re-registers) an owner. `owner.start_time` 0 means "read
  // it from /proc"; `owner.host` is ignored (always this host).
  //
  // Every call that changes something either happens wholly (backends and
  // journal agree) or fails having changed nothing; a journal write that
  // fails is the caller's error (Internal, naming the journal's reason).
  // `caller` is checked as Caller describes (PermissionDenied).
  //
  // The process must be a live process (not a zombie, not a thread of
  // another process), not pid 1 and not latchd itself.
  absl::StatusOr<OwnerView> Register(Owner owner, std::optional<FailurePolicy> policy,
                                     std::optional<absl::Duration> grace, const Caller& caller);
  absl::Status SetPolicy(const std::string& uuid, FailurePolicy policy,
                         std::optional<absl::Duration> grace, const Caller& caller);
  // A waiting acquire ends with Cancelled, having taken nothing, when
  // options.cancel_fd reports that the caller gave up (its connection
  // closed).
  absl::StatusOr<std::vector<LockView>> Acquire(const std::string& uuid,
                                                const std::vector<ResourceSpec>& specs,
                                                const AcquireOptions& options,
                                                const std::optional<std::string>& state,
                                                const Caller& caller);
  // Queues a waiting request for `specs`, owned by the owner (not by the
  // caller's connection): granted in the background as soon as the
  // resources are free, in the backend's queue order; given up when the
  // owner's process exits, when an acquire of the same resources claims it
  // and it is not granted in time, or at a re-exec. Only for backends that
  // queue (Capabilities::queues); others: Unimplemented. One queue per
  // owner at a time. Returns at once. An `acquire` of the same resources
  // claims the grant: with a hand-off state it checks that the grant is
  // the first conflicting one since the state's tokens
  // (Backend::CheckSuccession). This closes libvirt's migration window: the
  // destination queues at its register-only acquire, before the source
  // releases.
  absl::Status Queue(const std::string& uuid, const std::vector<ResourceSpec>& specs,
                     const Caller& caller);
  // `specs` nullopt: every lock of the owner.
  absl::StatusOr<ReleaseResult> Release(const std::string& uuid,
                                        const std::optional<std::vector<ResourceSpec>>& specs,
                                        const Caller& caller);
  absl::StatusOr<OwnerView> Inquire(const std::string& uuid);
  // The holders of each resource; takes and changes nothing.
  absl::StatusOr<std::vector<HoldersView>> Holders(const std::vector<ResourceSpec>& specs);
  absl::StatusOr<ReleaseResult> Unregister(const std::string& uuid, const Caller& caller);
  AgentStatus Status();
  // The loaded backends' names, the first being the default. Cheap.
  std::vector<std::string> BackendNames() const;
  // An administrative command of one backend (Backend::Admin), for a
  // privileged caller only; its JSON result.
  absl::StatusOr<std::string> BackendAdmin(const std::string& backend, const std::string& request,
                                           const Caller& caller);

  // A lock of `uuid` was lost: forget it and apply the owner's policy.
  // Backends report such events (lease expiry, lockspace stop).
  void LockLost(const std::string& uuid, const std::string& backend, const Resource& resource,
                const std::string& reason);

  // A planned re-exec: waits up to `drain` for requests in flight, then
  // blocks new ones, closes the journal and asks every backend to keep its
  // locks across exec. After success the caller must exec (or CancelExec).
  absl::Status PrepareExec(absl::Duration drain);
  void CancelExec();

  size_t owner_count() const;
  size_t lock_count() const;

 private:
  struct Held;
  struct OwnerEntry;
  struct Planned;
  struct QueuedRequest;
  struct LoadedBackend {
    std::string name;
    std::unique_ptr<Backend> backend;
    Capabilities caps;
  };

  explicit Agent(AgentOptions options);
  absl::StatusOr<std::vector<LockView>> AcquirePlanned(const std::string& uuid,
                                                       const std::vector<ResourceSpec>& specs,
                                                       const AcquireOptions& options,
                                                       const std::optional<std::string>& state,
                                                       const Caller& caller, bool queued);
  // An acquire of resources the owner queued: waits for the queue (up to
  // `wait`), checks the hand-off, and returns the views; nullopt when there
  // is nothing to claim (no queue for these keys, or it was given up: the
  // caller acquires normally).
  std::optional<absl::StatusOr<std::vector<LockView>>> Claim(
      const std::string& uuid, const std::vector<ResourceSpec>& specs,
      const std::optional<std::string>& state, absl::Duration wait, const Caller& caller);
  // Gives up every queued request (owner gone, re-exec, shutdown).
  void CancelQueues();
  absl::Status LoadBackends();
  absl::Status Recover();
  absl::Status RebuildFromBackends();
  void OnOwnerExit(const std::string& uuid, uint64_t generation);
  // After a release that could not be journaled: puts `held` back as held
  // and returns false, or returns true (changing nothing) when the owner's
  // process exited meanwhile, so its locks must go anyway.
  bool RestoreAfterFailedRelease(const std::shared_ptr<OwnerEntry>& entry,
                                 const std::vector<Held>& held);
  // The registered, live owner `uuid` (NotFound otherwise) that `caller`
  // may `what` (PermissionDenied otherwise; nullptr: anyone may).
  absl::StatusOr<std::shared_ptr<OwnerEntry>> LiveOwner(const std::string& uuid,
                                                        const Caller* caller, const char* what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // PermissionDenied unless `caller` may act on owner `e`.
  static absl::Status MayAct(const OwnerEntry& e, const Caller& caller, const char* what);
  // Remembers rows that must leave the journal but could not (a full
  // disk); Journal writes them before any later change.
  void Owe(const JournalChange& removals) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ApplyPolicy(const OwnerEntry& entry, const std::string& what);

  absl::StatusOr<LoadedBackend*> FindBackend(const std::string& name);
  // The backend resources a request's resource stands for: one, or for a
  // disk under DiskNames::kIdentityAndPath two (identity and path names).
  absl::StatusOr<std::vector<Planned>> Plan(const ResourceSpec& spec);
  // Gives every disk held only under its path name its identity name too
  // (journaled into `fix`); run by Recover before any request is served.
  void UpgradeDiskNames(std::map<std::string, std::shared_ptr<OwnerEntry>>& live,
                        JournalChange* fix);
  // Takes out of `e` every held name of the disk `disk` in `backend` (its
  // identity and path names), for releasing together.
  std::vector<Held> DetachDiskNames(OwnerEntry* e, const std::string& backend,
                                    const Resource& disk);
  // Releases `names` of `owner` in their backends, logging failures.
  void ReleaseInBackends(const Owner& owner, const std::vector<Held>& names);
  // For a refusal of `r`: the local holders of the same backend resource
  // that reached it by another path ("the same disk as ..."), or "".
  std::string AliasNote(const std::string& key, const Resource& r)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Applies `change` after the rows owed (Owe); errors name the journal.
  absl::Status Journal(const JournalChange& change) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Releases `locks` of `owner` in the backends and the journal; with
  // `forget`, removes the owner row in the same transaction. The journal
  // goes first: when it cannot be written, nothing is released and the
  // error is returned, unless `must_release` (the owner's process exited,
  // or an acquire is rolling back: the locks go whatever the journal says;
  // the rows it keeps are owed, see Owe, and describe a dead owner or an
  // unfinished acquire, both of which recovery drops).
  absl::Status ReleaseHeld(const Owner& owner, const std::vector<Held>& locks, bool forget,
                           bool must_release);
  std::vector<LockView> Views(const OwnerEntry& e) const;
  static ReleaseResult Released(const std::vector<Held>& held);
  bool Survives(const std::string& backend) const;
  // The keys and resources of the disk locks `uuid` holds under exactly
  // `spec.target` (one per name it took).
  std::vector<std::pair<std::string, Resource>> FindHeldDisk(const std::string& uuid,
                                                             const ResourceSpec& spec);

  const AgentOptions options_;
  std::vector<LoadedBackend> backends_;
  std::string boot_id_;
  std::unique_ptr<latchkey::Journal> journal_;
  std::unique_ptr<OwnerWatch> watch_;

  // Requests hold it shared; PrepareExec holds it exclusively.
  std::shared_timed_mutex gate_;
  std::atomic<bool> exec_prepared_{false};

  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<OwnerEntry>> owners_ ABSL_GUARDED_BY(mu_);
  uint64_t next_generation_ ABSL_GUARDED_BY(mu_) = 1;
  // Rows that must leave the journal but could not (see ReleaseHeld).
  JournalChange journal_debt_ ABSL_GUARDED_BY(mu_);
  // Threads running queued requests (detached; the destructor waits until
  // none runs).
  int queue_threads_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace latchkey

#endif  // LATCHKEY_AGENT_AGENT_H_
