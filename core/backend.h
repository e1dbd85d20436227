// The backend interface: what every lock backend (posixfd, dlm, sanlock, ...)
// implements and what every caller (latchd, latchctl, tests) may rely on.
//
// Backends live in plugins (see plugin_abi.h and plugin_loader.h); callers
// only ever see this interface.
//
// Example:
//   absl::StatusOr<std::unique_ptr<Backend>> b =
//       LoadBackend(PluginPath({"/usr/lib/latchkey/backends"}), "posixfd", cfg);
//   absl::StatusOr<Grant> g = (*b)->Acquire(owner, disk, LockMode::kExclusive, {});
//   if (IsLockBusy(g.status())) { /* held by someone: g.status().message()
//                                    names the resource and the holder */ }
//
// Error contract (absl::Status codes say what the caller should do):
//   Unavailable        the resource is held by someone else in a conflicting
//                      mode (retryable: try again later). The message names
//                      the resource and, where the backend can know it, the
//                      holder and its mode.
//   DeadlineExceeded   a waiting acquire ran out of time (retryable).
//   Aborted            a lock this owner held was lost (lease expired,
//                      lockspace stopped, someone else took it meanwhile):
//                      retry at a higher level, after re-checking the data.
//   FailedPrecondition the backend cannot work right now (daemon not
//                      running, lock directory missing): fix that first.
//   PermissionDenied   the caller is not the owner of the lock it names.
//   NotFound           the owner holds no lock on that resource.
//   InvalidArgument    bad input (names, modes, owners); nothing changed.
//   ResourceExhausted  a backend limit (e.g. holders per resource).
//   Cancelled          a waiting acquire was given up by its caller
//                      (AcquireOptions::cancel_fd); nothing changed.
// A failed call never changes any lock the caller already held.
//
// Thread safety: a Backend is safe for concurrent use from many threads; a
// waiting Acquire blocks only its own caller.
#ifndef LATCHKEY_CORE_BACKEND_H_
#define LATCHKEY_CORE_BACKEND_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "core/lock_mode.h"
#include "core/owner.h"
#include "core/resource.h"

namespace latchkey {

// What a backend can do. Values are part of the plugin ABI (LK_CAP_*).
struct Capabilities {
  // Modes the backend grants (LockModeBit mask).
  uint32_t modes = 0;
  // Non-empty when the backend cannot tell shared-read and shared-write
  // apart and grants both as one shared mode; says how (e.g. "shared-read
  // and shared-write are both sanlock SH: they do not exclude each other").
  std::string folded_modes;
  // Locks outlive the process that took them (DLM persistent locks,
  // sanlock persistent leases). When false, a killed holder frees its locks.
  bool survives_holder_death = false;
  // Orphaned locks can be adopted by a new process without a window.
  bool orphan_adoption = false;
  // A refusal can name the holder.
  bool holder_identity = false;
  // Grants carry fencing tokens that grow per resource.
  bool fencing_tokens = false;
  // Waiting requests are granted in the order they were queued
  // (LK_CAP_QUEUES), and CheckSuccession works.
  bool queues = false;
  // The backend grants every request and excludes nobody (LK_CAP_NO_EXCLUSION:
  // the nop backend, a benchmark's floor). Not a lock: latchd refuses to
  // load it unless its configuration lists it in benchmark_backends.
  bool no_exclusion = false;
  // Lockspace and resource names are limited to this many bytes.
  size_t max_name_len = kMaxNameLen;
};

// How to acquire.
struct AcquireOptions {
  // false: refuse at once (Unavailable) when someone holds a conflicting
  // lock. true: wait up to `timeout` (DeadlineExceeded when it runs out);
  // absl::InfiniteDuration() waits forever.
  bool wait = false;
  absl::Duration timeout = absl::ZeroDuration();
  // The hand-off check. When set, the grant is refused with Aborted if,
  // since the grant that carried this fencing token, anyone was granted the
  // resource in a mode that conflicts with `mode`: nobody can have changed
  // what the caller was handed (a migration source's inquire, a release's
  // state string). Compatible grants in between (another shared-read
  // holder) do not count. The check and the grant are one atomic step.
  // Backends without fencing_tokens refuse it (InvalidArgument).
  std::optional<uint64_t> expect_token;
  // Cancellation of a wait: -1 for none, else a descriptor the backend
  // polls (with no events requested) while it waits. When poll reports a
  // hang-up or an error on it (a client socket whose peer closed, the read
  // end of a pipe whose write end was closed) the caller has given up: the
  // backend stops waiting, changes nothing, and returns Cancelled.
  int cancel_fd = -1;
};

// True when `cancel_fd` (AcquireOptions::cancel_fd) says the caller gave up.
bool WaitCancelled(int cancel_fd);

// What a successful acquire, convert or adopt returns.
struct Grant {
  LockMode mode = LockMode::kExclusive;
  // Per-resource number; each grant on a resource gets a larger one than
  // every earlier grant on it (across owners, processes and restarts).
  uint64_t fencing_token = 0;
  // The backend's own handle, persisted by the journal and passed back to
  // Adopt (a DLM lock id, a sanlock lease version, ...). May be empty.
  std::string backend_token;
};

// One holder of one resource, as Inquire reports it.
struct HolderInfo {
  Owner owner;  // Fields the backend cannot know are left empty / 0.
  Resource resource;
  LockMode mode = LockMode::kExclusive;
  uint64_t fencing_token = 0;
};

// A lock as the journal persists it, for Adopt after a restart.
struct LockRecord {
  Owner owner;
  Resource resource;
  LockMode mode = LockMode::kExclusive;
  uint64_t fencing_token = 0;
  std::string backend_token;
};

// A lock the backend learned it lost (lease expired, lockspace failed).
struct LockLoss {
  Owner owner;  // Fields the backend cannot know are empty / 0.
  Resource resource;
  std::string reason;
};
using LockLossHandler = std::function<void(const LockLoss&)>;

class Backend {
 public:
  virtual ~Backend() = default;

  // The backend's registered name ("posixfd").
  virtual std::string name() const = 0;
  virtual Capabilities capabilities() const = 0;

  // Takes `resource` in `mode` for `owner`. On success returns the grant;
  // the lock is held until Release (or, when !survives_holder_death, until
  // the calling process dies). Acquiring a resource the owner already holds
  // is FailedPrecondition (use Convert). REQUIRES: owner.Validate() is OK.
  virtual absl::StatusOr<Grant> Acquire(const Owner& owner,
                                        const Resource& resource,
                                        LockMode mode,
                                        const AcquireOptions& options) = 0;

  // Changes the mode of a lock `owner` holds. On failure the old lock is
  // still held, in its old mode. A successful convert is a new grant: its
  // fencing token is larger.
  virtual absl::StatusOr<Grant> Convert(const Owner& owner,
                                        const Resource& resource,
                                        LockMode new_mode,
                                        const AcquireOptions& options) = 0;

  // Releases `owner`'s lock on `resource`. NotFound when the owner holds
  // none; PermissionDenied (naming the holder) when someone else does.
  virtual absl::Status Release(const Owner& owner, const Resource& resource) = 0;

  // Holders of `resource`, or of every resource the backend can see when
  // `resource` is nullopt.
  virtual absl::StatusOr<std::vector<HolderInfo>> Inquire(
      const std::optional<Resource>& resource) = 0;

  // Takes over a lock described by a journal record after a restart. A
  // backend with orphan_adoption adopts without a window, as does any
  // backend taking over a lock inherited across PrepareExec + exec; others
  // re-acquire, with the same check as AcquireOptions::expect_token against
  // record.fencing_token: Aborted when anyone was granted a conflicting
  // mode since that grant (the lock was broken meanwhile). NotFound when a backend whose
  // locks survive their holder finds no such lock to adopt.
  virtual absl::StatusOr<Grant> Adopt(const LockRecord& record) = 0;

  // OK when the backend can serve requests; FailedPrecondition saying why
  // not otherwise.
  virtual absl::Status Health() = 0;

  // A planned restart: the calling process is about to execve() itself.
  // Afterwards every lock held now must still be held, by the new program,
  // with no window in which another owner could take it. A new instance of
  // the backend opened after the exec takes each lock over with Adopt, then
  // calls FinishAdoption. Backends whose locks survive their holder need do
  // nothing (they adopt orphans); posixfd keeps its descriptors open across
  // the exec. Returns an error, and changes nothing, when it cannot.
  virtual absl::Status PrepareExec() = 0;

  // Ends the adoption phase that follows a start: every lock inherited
  // across an exec (see PrepareExec) that no Adopt claimed is released.
  // Called once, after the last Adopt; a no-op for most backends.
  virtual void FinishAdoption() = 0;

  // The backend's own state for status output, as a JSON object (lockspaces
  // and their join progress, hosts and their states). "{}" by default.
  virtual std::string StateJson() { return "{}"; }

  // From now on `handler` is called, from a backend thread, for every held
  // lock the backend learns it lost; the lock is already gone from the
  // backend's tables when it runs. An empty handler stops the reports; once
  // that call returns, no handler call is running. Backends whose locks
  // cannot be lost behind their holder's back never call it.
  virtual void WatchLockLoss(LockLossHandler handler) { (void)handler; }

  // An administrative command on the backend's own objects: `request` is a
  // JSON object {"command": NAME, ...}; the result is JSON text. The
  // default has none (Unimplemented). Held locks are never touched by a
  // command that fails.
  // Whether `granted_token`, owner's grant of `resource` in `mode`, is the
  // first grant conflicting with `mode` since the one that carried
  // `since_token`: the hand-off check of expect_token, made after a grant
  // that was queued before the token was known. Aborted when someone else
  // was granted in between; Unimplemented when the backend cannot tell.
  virtual absl::Status CheckSuccession(const Owner& owner, const Resource& resource,
                                       LockMode mode, uint64_t since_token,
                                       uint64_t granted_token) {
    (void)owner;
    (void)resource;
    (void)mode;
    (void)since_token;
    (void)granted_token;
    return absl::UnimplementedError(
        absl::StrCat("backend ", name(), " cannot check a hand-off after the grant"));
  }

  virtual absl::StatusOr<std::string> Admin(const std::string& request) {
    (void)request;
    return absl::UnimplementedError(
        absl::StrCat("backend ", name(), " has no administrative commands"));
  }
};

// True for the status a refusal because of a conflicting holder carries.
inline bool IsLockBusy(const absl::Status& s) {
  return s.code() == absl::StatusCode::kUnavailable;
}

}  // namespace latchkey

#endif  // LATCHKEY_CORE_BACKEND_H_
