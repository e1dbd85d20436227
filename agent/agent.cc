#include "agent/agent.h"

#include <signal.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <optional>
#include <cstring>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "agent/handoff.h"
#include "core/disk_identity.h"
#include "core/fault.h"
#include "core/plugin_loader.h"
#include "spdlog/spdlog.h"

namespace latchkey {

const char* FailurePolicyName(FailurePolicy p) {
  switch (p) {
    case FailurePolicy::kTerminate:
      return "terminate";
    case FailurePolicy::kPause:
      return "pause";
    case FailurePolicy::kIgnore:
      return "ignore";
  }
  return "?";
}

absl::StatusOr<FailurePolicy> ParseFailurePolicy(absl::string_view text) {
  if (text == "terminate") return FailurePolicy::kTerminate;
  if (text == "pause") return FailurePolicy::kPause;
  if (text == "ignore") return FailurePolicy::kIgnore;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown lock-failure policy '", text, "' (expected terminate, pause or ignore)"));
}

struct Agent::Held {
  enum class State { kAcquiring, kHeld, kReleasing };
  std::string backend;
  Resource resource;
  LockMode mode = LockMode::kExclusive;
  uint64_t token = 0;
  std::string backend_token;
  State state = State::kHeld;
  // A backend reported it lost while a request on it was in flight: the
  // request must not end with it held.
  bool lost = false;
  // Taken by a queued request and not yet claimed (LockView::queued).
  bool queued = false;
};

// A waiting request latchd runs for an owner (Agent::Queue).
// Given up the way a client gives up a waiting acquire: its cancel_fd (a
// pipe's read end) hangs up when the write end closes (WaitCancelled).
struct Agent::QueuedRequest {
  ~QueuedRequest() {
    GiveUp();
    if (cancel_fd >= 0) close(cancel_fd);
  }
  void GiveUp() {  // under the agent's mu_
    if (give_up_fd >= 0) close(give_up_fd);
    give_up_fd = -1;
  }
  int cancel_fd = -1;   // the backend's AcquireOptions::cancel_fd
  int give_up_fd = -1;  // closed to give the request up
  std::set<std::string> keys;  // what it asked for (HandoffKey)
  bool done = false;         // its acquire ended (guarded by the agent's mu_)
  absl::Status result;       // how
};

struct Agent::OwnerEntry {
  Owner owner;
  FailurePolicy policy = FailurePolicy::kTerminate;
  absl::Duration grace;
  uint64_t generation = 0;
  uid_t registrar = 0;  // the uid that registered it (see Caller)
  bool dead = false;  // its process exited (or it was unregistered)
  std::map<std::string, Held> locks;  // by HandoffKey
  std::shared_ptr<QueuedRequest> queue;  // its queued request, until claimed or ended
};

struct Agent::Planned {
  LoadedBackend* backend = nullptr;
  Resource resource;
  LockMode mode = LockMode::kExclusive;
  std::string key;
};

namespace {

std::string KeyOf(const std::string& backend, const Resource& r) {
  return HandoffKey(backend, r.lockspace, r.name);
}

JournalLock Row(const Owner& owner, const std::string& backend, const Resource& r,
                LockMode mode, uint64_t token, const std::string& backend_token,
                JournalLockState state) {
  JournalLock row;
  row.backend = backend;
  row.record.owner = owner;
  row.record.resource = r;
  row.record.mode = mode;
  row.record.fencing_token = token;
  row.record.backend_token = backend_token;
  row.state = state;
  return row;
}

// Fills what the journal does not keep about an adopted disk lock: which
// scheme named it. Its identity is not looked up again: adoption must not
// touch storage (a dead NFS server would stall latchd's restart), and the
// name is what was locked; status shows identity_kind "unknown" until the
// disk is locked anew.
void FillDiskIdentity(Resource* r, size_t max_len) {
  if (r->kind != ResourceKind::kDisk) return;
  r->naming = r->name == DiskResourceName(r->path, max_len) ? DiskNaming::kPath
                                                            : DiskNaming::kIdentity;
  if (r->naming == DiskNaming::kIdentity) {
    r->identity_kind = "unknown";
    r->identity_reason = "adopted after a restart; its identity was not looked up again";
  }
}

JournalOwner OwnerRow(const Owner& owner, FailurePolicy policy, absl::Duration grace,
                      uid_t registrar) {
  // The grace period and the registering uid ride in the policy text
  // ("terminate/5000/uid=1000") so the journal schema stays backend- and
  // policy-agnostic, and a journal of an older latchd still opens.
  return JournalOwner{owner, absl::StrCat(FailurePolicyName(policy), "/",
                                          absl::ToInt64Milliseconds(grace), "/uid=", registrar)};
}

// Reads OwnerRow's text. Rows written before the uid was recorded
// ("terminate/5000") count as registered by root: only privileged callers
// may act on them.
void ParseOwnerPolicy(const std::string& text, absl::Duration default_grace,
                      FailurePolicy* policy, absl::Duration* grace, uid_t* registrar) {
  *policy = FailurePolicy::kTerminate;
  *grace = default_grace;
  *registrar = 0;
  std::vector<std::string> parts = absl::StrSplit(text, '/');
  absl::StatusOr<FailurePolicy> p = ParseFailurePolicy(parts[0]);
  if (p.ok()) *policy = *p;
  int64_t ms;
  if (parts.size() > 1 && absl::SimpleAtoi(parts[1], &ms) && ms >= 0 && ms <= kMaxGraceMs) {
    *grace = absl::Milliseconds(ms);
  }
  uint32_t uid;
  if (parts.size() > 2 && absl::StartsWith(parts[2], "uid=") &&
      absl::SimpleAtoi(parts[2].substr(4), &uid)) {
    *registrar = uid;
  }
}

}  // namespace

Agent::Agent(AgentOptions options) : options_(std::move(options)) {}

Agent::~Agent() {
  // Stop every thread that calls into the agent before anything it uses
  // goes: queued requests (given up), backends' loss reports, then the
  // owner watch, whose exit callbacks use the watch itself, the journal and
  // the backends. Members are destroyed only after all have stopped. Held
  // locks are not released: a stopping latchd leaves them to the journal
  // and the next start.
  {
    absl::MutexLock l(&mu_);
    stopping_ = true;
  }
  CancelQueues();
  {
    absl::MutexLock l(&mu_);
    auto none = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return queue_threads_ == 0; };
    mu_.Await(absl::Condition(&none));
  }
  for (LoadedBackend& b : backends_) b.backend->WatchLockLoss(nullptr);
  if (watch_ != nullptr) watch_->Stop();
}

void Agent::CancelQueues() {
  absl::MutexLock l(&mu_);
  for (auto& [uuid, e] : owners_) {
    if (e->queue != nullptr && !e->queue->done) e->queue->GiveUp();
  }
}

absl::StatusOr<std::unique_ptr<Agent>> Agent::Start(AgentOptions options) {
  std::unique_ptr<Agent> a(new Agent(std::move(options)));
  if (absl::Status s = a->LoadBackends(); !s.ok()) return s;
  a->boot_id_ = CurrentBootId();
  absl::StatusOr<std::unique_ptr<OwnerWatch>> w = OwnerWatch::Start(
      [p = a.get()](const std::string& uuid, uint64_t gen) { p->OnOwnerExit(uuid, gen); });
  if (!w.ok()) return w.status();
  a->watch_ = std::move(*w);
  if (absl::Status s = a->Recover(); !s.ok()) return s;
  // Locks a backend loses from now on (a lease expiring, a lockspace
  // failing) go through the owner's lock-failure policy.
  for (LoadedBackend& b : a->backends_) {
    b.backend->WatchLockLoss([p = a.get(), name = b.name](const LockLoss& loss) {
      p->LockLost(loss.owner.uuid, name, loss.resource, loss.reason);
    });
  }
  return a;
}

absl::Status CheckBackendExcludes(const std::string& name, const Capabilities& caps,
                                  const std::vector<std::string>& allowed) {
  if (!caps.no_exclusion) return absl::OkStatus();
  for (const std::string& a : allowed) {
    if (a == name) return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "backend ", name, " grants every request and excludes nobody: it is a benchmark's floor, "
      "not a lock. latchd loads it only when the configuration lists it in benchmark_backends "
      "(benchmark_backends = [ \"", name, "\" ])"));
}

absl::Status Agent::LoadBackends() {
  if (options_.backends.empty()) {
    return absl::InvalidArgumentError("no backend configured ('backends' is empty)");
  }
  for (const std::string& name : options_.backends) {
    for (const LoadedBackend& b : backends_) {
      if (b.name == name) {
        return absl::InvalidArgumentError(absl::StrCat("backend '", name, "' is listed twice"));
      }
    }
    absl::StatusOr<std::unique_ptr<Backend>> b =
        LoadBackend(options_.plugin_path, name, options_.backend_config.Section(name + "_"));
    if (!b.ok()) {
      return absl::Status(b.status().code(), absl::StrCat("backend ", name, ": ",
                                                          b.status().message()));
    }
    const Capabilities caps = (*b)->capabilities();
    if (absl::Status s = CheckBackendExcludes(name, caps, options_.benchmark_backends); !s.ok()) {
      return s;
    }
    if (caps.no_exclusion) {
      spdlog::warn("backend {} grants every request and excludes nobody: for benchmarks only "
                   "(benchmark_backends)",
                   name);
    }
    spdlog::info("backend {} loaded (modes {:#x}{}{})", name, caps.modes,
                 caps.survives_holder_death ? ", locks survive their holder" : "",
                 caps.orphan_adoption ? ", orphan adoption" : "");
    backends_.push_back(LoadedBackend{name, std::move(*b), caps});
  }
  return absl::OkStatus();
}

bool Agent::Survives(const std::string& backend) const {
  for (const LoadedBackend& b : backends_) {
    if (b.name == backend) return b.caps.survives_holder_death;
  }
  return false;
}

absl::StatusOr<Agent::LoadedBackend*> Agent::FindBackend(const std::string& name) {
  if (name.empty()) return &backends_.front();
  for (LoadedBackend& b : backends_) {
    if (b.name == name) return &b;
  }
  std::vector<std::string> names;
  for (const LoadedBackend& b : backends_) names.push_back(b.name);
  return absl::InvalidArgumentError(absl::StrCat("backend '", name,
                                                 "' is not loaded by this latchd (loaded: ",
                                                 absl::StrJoin(names, ", "), ")"));
}

const char* DiskNamesName(DiskNames names) {
  switch (names) {
    case DiskNames::kIdentityAndPath:
      return "identity+path";
    case DiskNames::kIdentity:
      return "identity";
    case DiskNames::kPath:
      return "path";
  }
  return "invalid";
}

absl::StatusOr<DiskNames> ParseDiskNames(absl::string_view text) {
  for (DiskNames n : {DiskNames::kIdentityAndPath, DiskNames::kIdentity, DiskNames::kPath}) {
    if (text == DiskNamesName(n)) return n;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "disk_names must be \"identity+path\", \"identity\" or \"path\", not \"",
      absl::CHexEscape(text), "\""));
}

absl::Status ValidateClientIdentity(const std::string& identity, const std::string& kind) {
  if (identity.empty() && kind.empty()) return absl::OkStatus();
  static const char* const kKinds[] = {"file",   "nfs-file", "host-file", "wwid",     "dm-uuid",
                                       "md-uuid", "serial",  "loop",      "partition"};
  bool known = false;
  for (const char* k : kKinds) known |= kind == k;
  if (!known) {
    return absl::InvalidArgumentError(absl::StrCat(
        "identity_kind '", absl::CHexEscape(kind.substr(0, 40)),
        "' is not one latchkey gives (file, nfs-file, host-file, wwid, dm-uuid, md-uuid, "
        "serial, loop, partition)"));
  }
  if (identity.empty() || identity.size() > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("identity is ", identity.size(), " bytes; 1..1024 are allowed"));
  }
  for (char c : identity) {
    if (c < 0x20 || c > 0x7e) {
      return absl::InvalidArgumentError("identity has a byte outside printable ASCII");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<Agent::Planned>> Agent::Plan(const ResourceSpec& spec) {
  absl::StatusOr<LoadedBackend*> b = FindBackend(spec.backend);
  if (!b.ok()) return b.status();
  if (((*b)->caps.modes & LockModeBit(spec.mode)) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "backend ", (*b)->name, " does not grant ", LockModeName(spec.mode), " locks"));
  }
  const std::string& ls = spec.lockspace.empty() ? options_.lockspace : spec.lockspace;
  std::vector<Resource> resources;
  if (spec.kind == ResourceKind::kDisk) {
    const size_t max = (*b)->caps.max_name_len;
    std::optional<DiskIdentity> given;
    if (!spec.identity.empty()) {
      given.emplace();
      given->id = spec.identity;
      given->kind = spec.identity_kind;
    }
    absl::StatusOr<Resource> r = Resource::Disk(
        spec.target, ls, max,
        options_.disk_names == DiskNames::kPath ? DiskNaming::kPath : DiskNaming::kIdentity,
        given ? &*given : nullptr);
    if (!r.ok()) return r.status();
    resources.push_back(*r);
    if (options_.disk_names == DiskNames::kIdentityAndPath) {
      // The same disk under its scheme-1 name: what an older latchd takes.
      Resource legacy = *std::move(r);
      legacy.naming = DiskNaming::kPath;
      legacy.name = DiskResourceName(legacy.path, max);
      resources.push_back(std::move(legacy));
    }
  } else {
    absl::StatusOr<Resource> r = Resource::Lease(ls, spec.target, spec.lease_path, spec.lease_offset);
    if (!r.ok()) return r.status();
    resources.push_back(*std::move(r));
  }
  std::vector<Planned> out;
  for (Resource& r : resources) {
    if (absl::Status s = r.Validate((*b)->caps.max_name_len); !s.ok()) return s;
    Planned p;
    p.backend = *b;
    p.key = KeyOf((*b)->name, r);
    p.resource = std::move(r);
    p.mode = spec.mode;
    out.push_back(std::move(p));
  }
  return out;
}

absl::Status Agent::Journal(const JournalChange& change) {
  if (change.empty()) return absl::OkStatus();
  if (journal_ == nullptr) {
    // Closed for a re-exec (a backend's loss report can still arrive): the
    // next program reads the rows as they are.
    return absl::FailedPreconditionError("the journal is closed for a re-exec");
  }
  // Rows owed from an earlier failure go first: nothing new is written
  // beside a row that no longer describes a lock.
  if (!journal_debt_.empty()) {
    if (absl::Status s = journal_->Apply(journal_debt_); !s.ok()) {
      spdlog::error("journal write failed (still owing {} lock and {} owner removals): {}",
                    journal_debt_.remove_locks.size(), journal_debt_.remove_owners.size(),
                    s.ToString());
      return absl::Status(s.code(), absl::StrCat("journal ", options_.journal_path,
                                                 " cannot be written: ", s.message()));
    }
    spdlog::info("journal: wrote {} lock and {} owner removals owed since an earlier failure",
                 journal_debt_.remove_locks.size(), journal_debt_.remove_owners.size());
    journal_debt_ = JournalChange();
  }
  absl::Status s = journal_->Apply(change);
  if (!s.ok()) {
    spdlog::error("journal write failed: {}", s.ToString());
    return absl::Status(s.code(), absl::StrCat("journal ", options_.journal_path,
                                               " cannot be written: ", s.message()));
  }
  return s;
}

void Agent::Owe(const JournalChange& removals) {
  for (const JournalLock& l : removals.remove_locks) journal_debt_.remove_locks.push_back(l);
  for (const JournalLock& l : removals.put_locks) journal_debt_.remove_locks.push_back(l);
  for (const std::string& u : removals.remove_owners) journal_debt_.remove_owners.push_back(u);
}

absl::StatusOr<std::shared_ptr<Agent::OwnerEntry>> Agent::LiveOwner(const std::string& uuid,
                                                                    const Caller* caller,
                                                                    const char* what) {
  auto it = owners_.find(uuid);
  if (it == owners_.end() || it->second->dead) {
    return absl::NotFoundError(absl::StrCat("owner ", uuid, " is not registered"));
  }
  if (caller != nullptr) {
    if (absl::Status s = MayAct(*it->second, *caller, what); !s.ok()) return s;
  }
  return it->second;
}

bool Agent::RestoreAfterFailedRelease(const std::shared_ptr<OwnerEntry>& entry,
                                      const std::vector<Held>& held) {
  absl::MutexLock l(&mu_);
  if (entry->dead) return true;
  for (const Held& h : held) {
    auto it = entry->locks.find(KeyOf(h.backend, h.resource));
    if (it != entry->locks.end()) it->second.state = Held::State::kHeld;
  }
  return false;
}

absl::Status Agent::MayAct(const OwnerEntry& e, const Caller& caller, const char* what) {
  if (caller.privileged || caller.uid == e.registrar) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(
      e.owner.Describe(), " was registered by uid ", e.registrar, "; uid ", caller.uid,
      " may not ", what, " it"));
}

namespace {

// True when `a` in backend `ba` and `b` in backend `bb` are names of one
// disk lock (its identity and path names share backend, lockspace and path).
bool SameDisk(const std::string& ba, const Resource& a, const std::string& bb,
              const Resource& b) {
  return a.kind == ResourceKind::kDisk && b.kind == ResourceKind::kDisk && ba == bb &&
         a.lockspace == b.lockspace && a.path == b.path;
}

// Folds the scheme-1 (path) name of a disk into the view of the same disk's
// identity name, taken with it for the same owner: one view per disk.
std::vector<LockView> FoldDiskNames(std::vector<LockView> views) {
  std::vector<LockView> out;
  std::vector<bool> folded(views.size(), false);
  for (size_t i = 0; i < views.size(); ++i) {
    const Resource& r = views[i].resource;
    if (r.kind != ResourceKind::kDisk || r.naming != DiskNaming::kIdentity) continue;
    for (size_t j = 0; j < views.size(); ++j) {
      const Resource& o = views[j].resource;
      if (j == i || folded[j] || o.naming != DiskNaming::kPath ||
          !SameDisk(views[j].backend, o, views[i].backend, r)) {
        continue;
      }
      views[i].path_name = o.name;
      views[i].path_fencing_token = views[j].fencing_token;
      folded[j] = true;
      break;
    }
  }
  for (size_t i = 0; i < views.size(); ++i) {
    if (!folded[i]) out.push_back(std::move(views[i]));
  }
  return out;
}

}  // namespace

ReleaseResult Agent::Released(const std::vector<Held>& held) {
  ReleaseResult r;
  for (const Held& h : held) {
    r.released.push_back(LockView{h.backend, h.resource, h.mode, h.token, "", 0});
  }
  r.released = FoldDiskNames(std::move(r.released));
  r.state = HandoffState(r.released);
  return r;
}

std::string HandoffState(const std::vector<LockView>& locks) {
  // Every name a lock took: the next holder checks each (a folded disk
  // carries its path name and that name's token).
  std::vector<HandoffEntry> entries;
  for (const LockView& l : locks) {
    entries.push_back({l.backend, l.resource.lockspace, l.resource.name, l.mode,
                       l.fencing_token});
    if (!l.path_name.empty()) {
      entries.push_back({l.backend, l.resource.lockspace, l.path_name, l.mode,
                         l.path_fencing_token});
    }
  }
  return EncodeHandoff(entries);
}

std::vector<LockView> Agent::Views(const OwnerEntry& e) const {
  std::vector<LockView> out;
  for (const auto& [key, h] : e.locks) {
    if (h.state != Held::State::kHeld) continue;
    out.push_back(LockView{h.backend, h.resource, h.mode, h.token, "", 0, h.queued});
  }
  return FoldDiskNames(std::move(out));
}

// ---------------------------------------------------------------------------
// Recovery

absl::Status Agent::Recover() {
  JournalOpenReport report;
  absl::StatusOr<std::unique_ptr<latchkey::Journal>> j =
      Journal::Open(options_.journal_path, boot_id_, &report);
  if (!j.ok()) return j.status();
  journal_ = std::move(*j);
  if (!report.moved_aside.empty()) {
    spdlog::error("journal {} was unreadable ({}); moved it to {} and started a new one",
                  options_.journal_path, report.moved_aside_reason, report.moved_aside);
  } else if (report.created) {
    spdlog::info("journal {} created", options_.journal_path);
  }
  if (!report.previous_boot_id.empty()) {
    spdlog::warn("journal was written during boot {}; discarded its {} owners and {} locks",
                 report.previous_boot_id, report.discarded_owners, report.discarded_locks);
  }
  absl::StatusOr<JournalContents> contents = journal_->Load();
  if (!contents.ok()) return contents.status();
  for (const std::string& p : contents->problems) {
    spdlog::error("journal: skipped an unusable row: {}", p);
  }

  const absl::Time start = absl::Now();
  JournalChange fix;
  std::vector<std::pair<std::shared_ptr<OwnerEntry>, int>> watches;
  std::map<std::string, std::shared_ptr<OwnerEntry>> live;
  for (const JournalOwner& row : contents->owners) {
    auto e = std::make_shared<OwnerEntry>();
    e->owner = row.owner;
    ParseOwnerPolicy(row.policy, options_.default_grace, &e->policy, &e->grace, &e->registrar);
    absl::StatusOr<int> pidfd = OpenPidfd(static_cast<pid_t>(row.owner.pid),
                                          row.owner.start_time);
    if (!pidfd.ok()) {
      spdlog::info("owner {} exited while latchd was down; releasing its locks",
                   row.owner.Describe());
      fix.remove_owners.push_back(row.owner.uuid);
      continue;
    }
    e->generation = next_generation_++;
    live[row.owner.uuid] = e;
    watches.emplace_back(e, *pidfd);
  }

  // Adopt in acquisition order (backend, lockspace, name), as Acquire takes.
  std::vector<const JournalLock*> rows;
  for (const JournalLock& l : contents->locks) rows.push_back(&l);
  std::sort(rows.begin(), rows.end(), [](const JournalLock* a, const JournalLock* b) {
    return std::tie(a->backend, a->record.resource.lockspace, a->record.resource.name,
                    a->record.owner.uuid) <
           std::tie(b->backend, b->record.resource.lockspace, b->record.resource.name,
                    b->record.owner.uuid);
  });
  // Locks to keep are adopted before any other row is cleaned up: a backend
  // may hand over orphans by name and mode only (the DLM), so the clean-up
  // of an unfinished request could otherwise take (and release) a live
  // owner's orphan of the same mode (found by crash_cluster_test).
  std::stable_partition(rows.begin(), rows.end(), [&live](const JournalLock* r) {
    return live.count(r->record.owner.uuid) > 0 && r->state == JournalLockState::kHeld;
  });
  std::vector<std::pair<std::shared_ptr<OwnerEntry>, std::string>> lost;
  std::vector<std::pair<std::shared_ptr<OwnerEntry>, Held>> lost_disks;
  for (const JournalLock* row : rows) {
    const LockRecord& rec = row->record;
    absl::StatusOr<LoadedBackend*> b = FindBackend(row->backend);
    auto owner = live.find(rec.owner.uuid);
    const bool keep = owner != live.end() && row->state == JournalLockState::kHeld;
    if (!b.ok()) {
      spdlog::error("journal names {} held by {} on backend {}, which is not loaded: {}",
                    rec.resource.Describe(), rec.owner.Describe(), row->backend,
                    std::string(b.status().message()));
      if (owner != live.end() && keep) {
        lost.emplace_back(owner->second, absl::StrCat(rec.resource.Describe(),
                                                      ": backend not loaded"));
      }
      fix.remove_locks.push_back(*row);
      continue;
    }
    if (!keep) {
      // An unfinished acquire or release, or a dead owner: make sure the
      // lock is gone. Only backends whose locks outlive latchd can still
      // have it; posixfd locks died with the old process (or, after a
      // re-exec, are dropped by FinishAdoption).
      if ((*b)->caps.survives_holder_death) {
        absl::StatusOr<Grant> g = (*b)->backend->Adopt(rec);
        if (g.ok()) {
          absl::Status s = (*b)->backend->Release(rec.owner, rec.resource);
          if (!s.ok()) spdlog::error("cannot release {}: {}", rec.resource.Describe(), s.ToString());
        }
      }
      spdlog::info("dropped {} lock of {} on {} (journal state {})", LockModeName(rec.mode),
                   rec.owner.Describe(), rec.resource.Describe(),
                   JournalLockStateName(row->state));
      fix.remove_locks.push_back(*row);
      continue;
    }
    absl::StatusOr<Grant> g = (*b)->backend->Adopt(rec);
    FaultPoint("agent.recover.after-adopt");
    if (!g.ok()) {
      spdlog::error("LOCK FAILURE: {} lost its {} lock on {} while latchd restarted: {}",
                    rec.owner.Describe(), LockModeName(rec.mode), rec.resource.Describe(),
                    g.status().ToString());
      fix.remove_locks.push_back(*row);
      lost.emplace_back(owner->second, rec.resource.Describe());
      if (rec.resource.kind == ResourceKind::kDisk) {
        Held gone;
        gone.backend = row->backend;
        gone.resource = rec.resource;
        lost_disks.emplace_back(owner->second, gone);
      }
      continue;
    }
    Held h;
    h.backend = row->backend;
    h.resource = rec.resource;
    FillDiskIdentity(&h.resource, (*b)->caps.max_name_len);
    h.mode = rec.mode;
    h.token = g->fencing_token;
    h.backend_token = g->backend_token.empty() ? rec.backend_token : g->backend_token;
    if (h.token != rec.fencing_token || h.backend_token != rec.backend_token) {
      fix.put_locks.push_back(Row(rec.owner, h.backend, h.resource, h.mode, h.token,
                                  h.backend_token, JournalLockState::kHeld));
    }
    owner->second->locks[KeyOf(h.backend, h.resource)] = std::move(h);
  }
  // A disk is one lock whatever number of names it took: when one name
  // was lost, the others go too (nothing may look held that is not).
  for (const auto& [owner_entry, what] : lost_disks) {
    std::vector<Held> names = DetachDiskNames(owner_entry.get(), what.backend, what.resource);
    for (const Held& h : names) {
      fix.remove_locks.push_back(Row(owner_entry->owner, h.backend, h.resource, h.mode, h.token,
                                     h.backend_token, JournalLockState::kHeld));
    }
    ReleaseInBackends(owner_entry->owner, names);
  }
  for (LoadedBackend& b : backends_) b.backend->FinishAdoption();
  UpgradeDiskNames(live, &fix);
  absl::Status fixed;
  {
    absl::MutexLock l(&mu_);
    fixed = Journal(fix);
  }
  if (!fixed.ok()) {
    for (auto& [e, pidfd] : watches) close(pidfd);
    return fixed;
  }

  {
    absl::MutexLock l(&mu_);
    owners_ = live;
  }
  for (auto& [e, pidfd] : watches) {
    if (absl::Status s = watch_->Watch(e->owner.uuid, e->generation, pidfd); !s.ok()) {
      spdlog::error("cannot watch {}: {}", e->owner.Describe(), s.ToString());
    }
  }
  // A disk held under two names counts once, as clients see it.
  size_t names = 0, locks = 0;
  {
    absl::MutexLock l(&mu_);  // owner watches run already
    for (const auto& [uuid, e] : live) {
      names += e->locks.size();
      locks += Views(*e).size();
    }
  }
  spdlog::info("adopted {} locks of {} owners ({} backend names) in {} ms", locks, live.size(),
               names,
               absl::ToInt64Milliseconds(absl::Now() - start));
  for (auto& [e, what] : lost) ApplyPolicy(*e, what);

  if (!report.moved_aside.empty()) return RebuildFromBackends();
  return absl::OkStatus();
}

void Agent::UpgradeDiskNames(std::map<std::string, std::shared_ptr<OwnerEntry>>& live,
                             JournalChange* fix) {
  if (options_.disk_names == DiskNames::kPath) return;
  for (auto& [uuid, e] : live) {
    std::vector<Held> added;
    for (const auto& [key, h] : e->locks) {
      if (h.resource.kind != ResourceKind::kDisk || h.resource.naming != DiskNaming::kPath) {
        continue;
      }
      // Taken together with an identity name already (that identity may
      // have come from a client in another mount namespace, which latchd
      // cannot recompute here): nothing to upgrade.
      bool has_identity = false;
      for (const auto& [k2, other] : e->locks) {
        has_identity |= other.resource.naming == DiskNaming::kIdentity &&
                        SameDisk(other.backend, other.resource, h.backend, h.resource);
      }
      if (has_identity) continue;
      absl::StatusOr<LoadedBackend*> b = FindBackend(h.backend);
      if (!b.ok()) continue;
      absl::StatusOr<Resource> r = Resource::Disk(h.resource.path, h.resource.lockspace,
                                                  (*b)->caps.max_name_len, DiskNaming::kIdentity);
      if (!r.ok()) {
        spdlog::error("{} holds {} by its path name only, and its identity cannot be found: {}",
                      e->owner.Describe(), h.resource.Describe(), r.status().ToString());
        continue;
      }
      const std::string k = KeyOf(h.backend, *r);
      if (e->locks.count(k) > 0) continue;
      bool twice = false;
      for (const Held& a : added) twice |= KeyOf(a.backend, a.resource) == k;
      if (twice) continue;
      AcquireOptions o;
      o.wait = false;
      absl::StatusOr<Grant> g = (*b)->backend->Acquire(e->owner, *r, h.mode, o);
      if (!g.ok()) {
        // Someone holds the same disk under its identity: while hosts mixed
        // naming schemes, two owners got one disk. Nothing here can tell
        // which one is wrong; say it loudly.
        spdlog::error("DISK NAME CONFLICT: {} holds {} {} by its path name only (an older "
                      "latchd took it) and cannot take its identity name ({} identity {}): {}",
                      e->owner.Describe(), LockModeName(h.mode), h.resource.Describe(),
                      r->identity_kind, r->identity, g.status().ToString());
        continue;
      }
      Held n;
      n.backend = h.backend;
      n.resource = *std::move(r);
      n.mode = h.mode;
      n.token = g->fencing_token;
      n.backend_token = g->backend_token;
      fix->put_locks.push_back(Row(e->owner, n.backend, n.resource, n.mode, n.token,
                                   n.backend_token, JournalLockState::kHeld));
      spdlog::info("{}: took the identity name of {} ({} identity {}), held by its path name "
                   "until now", e->owner.Describe(), n.resource.path, n.resource.identity_kind,
                   n.resource.identity);
      added.push_back(std::move(n));
    }
    for (Held& n : added) {
      const std::string k = KeyOf(n.backend, n.resource);
      e->locks[k] = std::move(n);
    }
  }
}

absl::Status Agent::RebuildFromBackends() {
  // The journal is gone: take back only what a backend itself reports as
  // held for a live local owner and can hand over as an orphan. Backends
  // that could only re-acquire would be granting on a guess, so they are
  // skipped.
  const std::string host = LocalHostName();
  size_t rebuilt = 0;
  for (LoadedBackend& b : backends_) {
    if (!b.caps.orphan_adoption) {
      spdlog::warn("backend {} cannot adopt orphans: nothing to rebuild from it", b.name);
      continue;
    }
    absl::StatusOr<std::vector<HolderInfo>> holders = b.backend->Inquire(std::nullopt);
    if (!holders.ok()) {
      spdlog::error("cannot inquire backend {}: {}", b.name, holders.status().ToString());
      continue;
    }
    for (const HolderInfo& h : *holders) {
      if (h.owner.host != host || !h.owner.Validate().ok() ||
          !ProcessIsAlive(static_cast<pid_t>(h.owner.pid), h.owner.start_time)) {
        continue;
      }
      LockRecord rec{h.owner, h.resource, h.mode, h.fencing_token, ""};
      absl::StatusOr<Grant> g = b.backend->Adopt(rec);
      if (!g.ok()) {
        spdlog::warn("not adopting {} of {}: {}", h.resource.Describe(), h.owner.Describe(),
                     g.status().ToString());
        continue;
      }
      absl::StatusOr<OwnerView> reg =
          Register(h.owner, std::nullopt, std::nullopt, Caller::Internal());
      if (!reg.ok()) {
        Release(h.owner.uuid, std::nullopt, Caller::Internal()).IgnoreError();
        continue;
      }
      absl::MutexLock l(&mu_);
      auto it = owners_.find(h.owner.uuid);
      Held held{b.name, h.resource, h.mode, g->fencing_token, g->backend_token,
                Held::State::kHeld};
      FillDiskIdentity(&held.resource, b.caps.max_name_len);
      JournalChange c;
      c.put_locks.push_back(Row(h.owner, b.name, h.resource, h.mode, held.token,
                                held.backend_token, JournalLockState::kHeld));
      if (it != owners_.end() && Journal(c).ok()) {
        it->second->locks[KeyOf(b.name, h.resource)] = std::move(held);
        ++rebuilt;
      }
    }
  }
  spdlog::warn("rebuilt {} locks from backend inquiry after losing the journal", rebuilt);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Owners

absl::Status CheckOwnerProcess(const Owner& owner, const Caller& caller,
                               const ProcessInfo& info) {
  const pid_t pid = static_cast<pid_t>(owner.pid);
  if (info.tgid != pid) {
    return absl::InvalidArgumentError(absl::StrCat("owner ", owner.name, ": pid ", pid,
                                                   " is a thread of process ", info.tgid,
                                                   "; register the process"));
  }
  if (info.exited()) {
    return absl::NotFoundError(absl::StrCat("owner ", owner.name, ": process ", pid,
                                            " has exited (a zombie not yet reaped)"));
  }
  if (owner.start_time != 0 && owner.start_time != info.start_time) {
    return absl::FailedPreconditionError(absl::StrCat(
        "owner ", owner.name, ": process ", pid, " started at ", info.start_time, ", not at ",
        owner.start_time, " (the pid was reused)"));
  }
  // latchd signals an owner whose lock is lost: a peer may only name
  // processes it could signal itself, and nobody may name init or latchd.
  if (pid == 1 || pid == getpid()) {
    return absl::PermissionDeniedError(absl::StrCat("owner ", owner.name, ": process ", pid,
                                                    pid == 1 ? " is init" : " is latchd itself",
                                                    " and cannot be an owner"));
  }
  if (!caller.privileged && (info.real_uid != caller.uid || info.effective_uid != caller.uid ||
                             info.saved_uid != caller.uid)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "owner ", owner.name, ": process ", pid, " runs as uid ", info.real_uid, "/",
        info.effective_uid, "/", info.saved_uid, " (real/effective/saved); uid ", caller.uid,
        " may register only its own processes"));
  }
  return absl::OkStatus();
}

absl::StatusOr<OwnerView> Agent::Register(Owner owner, std::optional<FailurePolicy> policy,
                                          std::optional<absl::Duration> grace,
                                          const Caller& caller) {
  std::shared_lock<std::shared_timed_mutex> gate(gate_);
  owner.host = LocalHostName();
  if (owner.pid <= 0 || owner.pid > kMaxPid) {
    return absl::InvalidArgumentError(
        absl::StrCat("owner pid ", owner.pid, " is not a process id (1..", kMaxPid, ")"));
  }
  absl::StatusOr<ProcessInfo> info = ReadProcessInfo(static_cast<pid_t>(owner.pid));
  if (!info.ok()) {
    return absl::NotFoundError(absl::StrCat("owner ", owner.name, ": no process ", owner.pid));
  }
  if (absl::Status s = CheckOwnerProcess(owner, caller, *info); !s.ok()) return s;
  owner.start_time = info->start_time;
  if (absl::Status s = owner.Validate(); !s.ok()) return s;
  if (grace && (*grace < absl::ZeroDuration() || *grace > absl::Milliseconds(kMaxGraceMs))) {
    return absl::InvalidArgumentError(
        absl::StrCat("grace_ms must be from 0 to ", kMaxGraceMs));
  }

  for (int attempt = 0;; ++attempt) {
    absl::StatusOr<int> pidfd = OpenPidfd(static_cast<pid_t>(owner.pid), owner.start_time);
    if (!pidfd.ok()) return pidfd.status();
    uint64_t stale_generation = 0;
    {
      absl::MutexLock l(&mu_);
      // An entry of this uuid whose process exited is still being released:
      // wait until it is gone, so the removal of its rows cannot take ours.
      struct DeadGone {
        const std::map<std::string, std::shared_ptr<OwnerEntry>>* owners;
        const std::string* uuid;
        bool operator()() const {
          auto it = owners->find(*uuid);
          return it == owners->end() || !it->second->dead;
        }
      } gone{&owners_, &owner.uuid};
      if (!mu_.AwaitWithTimeout(absl::Condition(&gone), absl::Seconds(10))) {
        close(*pidfd);
        return absl::UnavailableError(absl::StrCat(
            "owner ", owner.uuid, ": the locks of its previous process are still being "
            "released; try again"));
      }
      auto it = owners_.find(owner.uuid);
      if (it != owners_.end() && !it->second->dead) {
        OwnerEntry& e = *it->second;
        if (absl::Status s = MayAct(e, caller, "register again"); !s.ok()) {
          close(*pidfd);
          return s;
        }
        if (e.owner.pid == owner.pid && e.owner.start_time == owner.start_time) {
          close(*pidfd);  // Already watched.
          FailurePolicy new_policy = policy.value_or(e.policy);
          absl::Duration new_grace = grace.value_or(e.grace);
          JournalChange c;
          c.put_owners.push_back(OwnerRow(owner, new_policy, new_grace, e.registrar));
          if (absl::Status s = Journal(c); !s.ok()) return s;
          e.owner = owner;
          e.policy = new_policy;
          e.grace = new_grace;
          return OwnerView{e.owner, e.policy, e.grace, true, Views(e)};
        }
        if (ProcessIsAlive(static_cast<pid_t>(e.owner.pid), e.owner.start_time) ||
            attempt > 0) {
          close(*pidfd);
          return absl::FailedPreconditionError(absl::StrCat(
              "owner ", owner.uuid, " is registered as ", e.owner.Describe(),
              ", which is still running"));
        }
        stale_generation = e.generation;  // Exited; its notice is on its way.
      } else {
        auto e = std::make_shared<OwnerEntry>();
        e->owner = owner;
        e->policy = policy.value_or(FailurePolicy::kTerminate);
        e->grace = grace.value_or(options_.default_grace);
        e->generation = next_generation_++;
        e->registrar = caller.uid;
        JournalChange c;
        c.put_owners.push_back(OwnerRow(owner, e->policy, e->grace, e->registrar));
        if (absl::Status s = Journal(c); !s.ok()) {
          close(*pidfd);
          return s;
        }
        if (absl::Status s = watch_->Watch(owner.uuid, e->generation, *pidfd); !s.ok()) {
          JournalChange undo;
          undo.remove_owners.push_back(owner.uuid);
          if (!Journal(undo).ok()) Owe(undo);
          return s;
        }
        owners_[owner.uuid] = e;
        spdlog::info("registered {} (policy {})", owner.Describe(), FailurePolicyName(e->policy));
        return OwnerView{e->owner, e->policy, e->grace, true, {}};
      }
    }
    close(*pidfd);
    // The previous process of this owner exited: release its locks now
    // rather than waiting for the watch thread, then register afresh.
    gate.unlock();
    OnOwnerExit(owner.uuid, stale_generation);
    gate.lock();
  }
}

absl::Status Agent::SetPolicy(const std::string& uuid, FailurePolicy policy,
                              std::optional<absl::Duration> grace, const Caller& caller) {
  std::shared_lock<std::shared_timed_mutex> gate(gate_);
  if (grace && (*grace < absl::ZeroDuration() || *grace > absl::Milliseconds(kMaxGraceMs))) {
    return absl::InvalidArgumentError(absl::StrCat("grace_ms must be from 0 to ", kMaxGraceMs));
  }
  absl::MutexLock l(&mu_);
  absl::StatusOr<std::shared_ptr<OwnerEntry>> found = LiveOwner(uuid, &caller, "change the policy of");
  if (!found.ok()) return found.status();
  OwnerEntry& e = **found;
  JournalChange c;
  c.put_owners.push_back(OwnerRow(e.owner, policy, grace.value_or(e.grace), e.registrar));
  if (absl::Status s = Journal(c); !s.ok()) return s;
  e.policy = policy;
  e.grace = grace.value_or(e.grace);
  spdlog::info("{}: lock-failure policy {}", e.owner.Describe(), FailurePolicyName(policy));
  return absl::OkStatus();
}

void Agent::OnOwnerExit(const std::string& uuid, uint64_t generation) {
  std::shared_lock<std::shared_timed_mutex> gate(gate_);
  const absl::Time start = absl::Now();
  std::vector<Held> held;
  Owner owner;
  std::shared_ptr<OwnerEntry> entry;
  {
    absl::MutexLock l(&mu_);
    auto it = owners_.find(uuid);
    if (it == owners_.end() || it->second->generation != generation || it->second->dead) return;
    entry = it->second;
    entry->dead = true;
    owner = entry->owner;
    if (entry->queue != nullptr) entry->queue->GiveUp();
    for (auto& [key, h] : entry->locks) {
      if (h.state == Held::State::kHeld) {
        h.state = Held::State::kReleasing;
        held.push_back(h);
      }
    }
  }
  // The dead entry stays in owners_ until its rows are gone, so a new
  // registration of the uuid (a restarted VM) waits instead of having its
  // fresh rows removed with these.
  watch_->Unwatch(uuid, generation);
  ReleaseHeld(owner, held, /*forget=*/true, /*must_release=*/true).IgnoreError();
  {
    absl::MutexLock l(&mu_);
    auto it = owners_.find(uuid);
    if (it != owners_.end() && it->second == entry) owners_.erase(it);
  }
  spdlog::info("owner {} exited: released {} locks in {} us", owner.Describe(), held.size(),
               absl::ToInt64Microseconds(absl::Now() - start));
}

absl::StatusOr<ReleaseResult> Agent::Unregister(const std::string& uuid, const Caller& caller) {
  std::shared_lock<std::shared_timed_mutex> gate(gate_);
  std::vector<Held> held;
  std::shared_ptr<OwnerEntry> entry;
  {
    absl::MutexLock l(&mu_);
    absl::StatusOr<std::shared_ptr<OwnerEntry>> found = LiveOwner(uuid, &caller, "unregister");
    if (!found.ok()) return found.status();
    OwnerEntry& e = **found;
    for (const auto& [key, h] : e.locks) {
      if (h.state != Held::State::kHeld) {
        return absl::FailedPreconditionError(absl::StrCat(
            e.owner.Describe(), " has a request in flight on ", h.resource.Describe()));
      }
    }
    // Marked in flight, not yet forgotten: if the journal cannot record
    // the release, the owner and its locks stay exactly as they were.
    for (auto& [key, h] : e.locks) {
      h.state = Held::State::kReleasing;
      held.push_back(h);
    }
    entry = *found;
  }
  if (absl::Status s = ReleaseHeld(entry->owner, held, /*forget=*/true, /*must_release=*/false);
      !s.ok()) {
    if (!RestoreAfterFailedRelease(entry, held)) return s;
    // Its process exited meanwhile, and its exit took the owner row: the
    // locks must go whatever the journal says.
    ReleaseHeld(entry->owner, held, /*forget=*/true, /*must_release=*/true).IgnoreError();
  }
  bool erased = false;
  {
    absl::MutexLock l(&mu_);
    entry->dead = true;
    entry->locks.clear();
    auto it = owners_.find(uuid);
    // Its process may have exited meanwhile (and the uuid been registered
    // again): touch only the entry this call released.
    if (it != owners_.end() && it->second == entry) {
      owners_.erase(it);
      erased = true;
    }
  }
  if (erased) watch_->Unwatch(uuid, entry->generation);
  spdlog::info("unregistered {}: released {} locks", entry->owner.Describe(), held.size());
  return Released(held);
}

// ---------------------------------------------------------------------------
// Locks

namespace {
// How long an acquire with a hand-off state waits for the owner's queued
// request: the source released before the destination asks, so the grant
// is due within milliseconds (the DLM's completion AST).
constexpr absl::Duration kClaimWait = absl::Seconds(5);
}  // namespace

absl::StatusOr<std::vector<LockView>> Agent::Acquire(const std::string& uuid,
                                                     const std::vector<ResourceSpec>& specs,
                                                     const AcquireOptions& options,
                                                     const std::optional<std::string>& state,
                                                     const Caller& caller) {
  const absl::Duration wait = state ? kClaimWait
                              : options.wait ? options.timeout
                                             : absl::ZeroDuration();
  if (auto claimed = Claim(uuid, specs, state, wait, caller)) return *std::move(claimed);
  return AcquirePlanned(uuid, specs, options, state, caller, /*queued=*/false);
}

absl::Status Agent::Queue(const std::string& uuid, const std::vector<ResourceSpec>& specs,
                          const Caller& caller) {
  std::shared_lock<std::shared_timed_mutex> gate(gate_);
  if (specs.empty()) return absl::InvalidArgumentError("queue names no resource");
  auto q = std::make_shared<QueuedRequest>();
  for (size_t i = 0; i < specs.size(); ++i) {
    absl::StatusOr<std::vector<Planned>> p = Plan(specs[i]);
    if (!p.ok()) {
      return absl::Status(p.status().code(),
                          absl::StrCat("resources[", i, "]: ", p.status().message()));
    }
    for (const Planned& one : *p) {
      if (!one.backend->caps.queues) {
        return absl::UnimplementedError(absl::StrCat(
            "backend ", one.backend->name, " cannot queue a request ahead of time (no "
            "ordered queue): acquire when the resource is needed"));
      }
      q->keys.insert(one.key);
    }
  }
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("queue: pipe: ", strerror(errno)));
  }
  q->cancel_fd = fds[0];
  q->give_up_fd = fds[1];
  absl::MutexLock l(&mu_);
  if (stopping_) return absl::UnavailableError("latchd is stopping");
  absl::StatusOr<std::shared_ptr<OwnerEntry>> found = LiveOwner(uuid, &caller, "queue requests for");
  if (!found.ok()) return found.status();
  OwnerEntry& e = **found;
  if (e.queue != nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(e.owner.Describe(), " has a queued request already"));
  }
  for (const std::string& key : q->keys) {
    auto held = e.locks.find(key);
    if (held != e.locks.end()) {
      return absl::FailedPreconditionError(absl::StrCat(
          e.owner.name, " already holds ", held->second.resource.Describe()));
    }
  }
  e.queue = q;
  ++queue_threads_;
  std::thread([this, uuid, specs, caller, q] {
    AcquireOptions o;
    o.wait = true;
    o.timeout = absl::InfiniteDuration();
    o.cancel_fd = q->cancel_fd;
    absl::StatusOr<std::vector<LockView>> r =
        AcquirePlanned(uuid, specs, o, std::nullopt, caller, /*queued=*/true);
    if (!r.ok()) spdlog::info("queued request of {} ended: {}", uuid, r.status().ToString());
    absl::MutexLock l(&mu_);
    q->done = true;
    q->result = r.status();
    --queue_threads_;
  }).detach();
  return absl::OkStatus();
}

std::optional<absl::StatusOr<std::vector<LockView>>> Agent::Claim(
    const std::string& uuid, const std::vector<ResourceSpec>& specs,
    const std::optional<std::string>& state, absl::Duration wait, const Caller& caller) {
  std::shared_lock<std::shared_timed_mutex> gate(gate_);
  {
    // Most acquires have no queue to claim: answer that before planning
    // (Plan looks disks' identities up), so they plan once, not twice.
    absl::MutexLock l(&mu_);
    auto it = owners_.find(uuid);
    if (it == owners_.end() || it->second->queue == nullptr) return std::nullopt;
  }
  std::vector<Planned> plan;
  for (const ResourceSpec& spec : specs) {
    absl::StatusOr<std::vector<Planned>> p = Plan(spec);
    if (!p.ok()) return std::nullopt;  // the acquire reports it
    for (Planned& one : *p) plan.push_back(std::move(one));
  }
  struct Item {
    LoadedBackend* backend;
    Resource resource;
    LockMode mode;
    uint64_t token;
    std::string key;
  };
  std::vector<Item> items;
  std::shared_ptr<OwnerEntry> entry;
  {
    absl::MutexLock l(&mu_);
    absl::StatusOr<std::shared_ptr<OwnerEntry>> found =
        LiveOwner(uuid, &caller, "acquire locks for");
    if (!found.ok()) return std::nullopt;
    entry = *std::move(found);
    std::shared_ptr<QueuedRequest> q = entry->queue;
    if (q == nullptr || plan.empty()) return std::nullopt;
    for (const Planned& p : plan) {
      if (!q->keys.count(p.key)) return std::nullopt;
    }
    auto done = [&q]() { return q->done; };
    mu_.AwaitWithTimeout(absl::Condition(&done), wait);
    if (!q->done) {
      // Not granted in time: give it up; the acquire then asks anew and is
      // refused naming the holder (or waits, as the caller asked).
      q->GiveUp();
      if (!mu_.AwaitWithTimeout(absl::Condition(&done), absl::Seconds(30))) {
        return absl::StatusOr<std::vector<LockView>>(absl::UnavailableError(absl::StrCat(
            "the queued request of ", entry->owner.Describe(), " could not be given up")));
      }
    }
    entry->queue.reset();
    for (const Planned& p : plan) {
      auto h = entry->locks.find(p.key);
      if (h == entry->locks.end() || h->second.state != Held::State::kHeld ||
          !h->second.queued || h->second.mode != p.mode) {
        return std::nullopt;
      }
      items.push_back(Item{p.backend, h->second.resource, p.mode, h->second.token, p.key});
    }
  }
  if (state) {
    absl::StatusOr<std::map<std::string, HandoffEntry>> handoff = DecodeHandoff(*state);
    absl::Status bad = handoff.status();
    for (size_t i = 0; bad.ok() && i < items.size(); ++i) {
      auto h = handoff->find(items[i].key);
      if (h == handoff->end()) continue;
      bad = items[i].backend->backend->CheckSuccession(entry->owner, items[i].resource,
                                                        items[i].mode, h->second.fencing_token,
                                                        items[i].token);
    }
    if (!bad.ok()) {
      // The queued grant is not the hand-off's successor: let it go.
      std::vector<Held> gone;
      {
        absl::MutexLock l(&mu_);
        for (const Item& it : items) {
          auto h = entry->locks.find(it.key);
          if (h == entry->locks.end() || h->second.state != Held::State::kHeld) continue;
          h->second.state = Held::State::kReleasing;
          gone.push_back(h->second);
        }
      }
      ReleaseHeld(entry->owner, gone, /*forget=*/false, /*must_release=*/true).IgnoreError();
      {
        absl::MutexLock l(&mu_);
        for (const Item& it : items) entry->locks.erase(it.key);
      }
      return absl::StatusOr<std::vector<LockView>>(absl::AbortedError(
          absl::StrCat("hand-off refused: ", bad.message())));
    }
  }
  absl::MutexLock l(&mu_);
  std::vector<LockView> out;
  for (const Item& it : items) {
    auto h = entry->locks.find(it.key);
    if (h == entry->locks.end() || h->second.state != Held::State::kHeld) {
      return absl::StatusOr<std::vector<LockView>>(absl::AbortedError(absl::StrCat(
          it.resource.Describe(), " was lost while its queued grant was claimed")));
    }
    h->second.queued = false;
    out.push_back(LockView{h->second.backend, h->second.resource, h->second.mode,
                           h->second.token, "", 0});
  }
  return absl::StatusOr<std::vector<LockView>>(FoldDiskNames(std::move(out)));
}

absl::StatusOr<std::vector<LockView>> Agent::AcquirePlanned(
    const std::string& uuid, const std::vector<ResourceSpec>& specs,
    const AcquireOptions& options, const std::optional<std::string>& state,
    const Caller& caller, bool queued) {
  std::shared_lock<std::shared_timed_mutex> gate(gate_);
  if (specs.empty()) return absl::InvalidArgumentError("acquire names no resource");
  std::vector<Planned> plan;
  plan.reserve(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    absl::StatusOr<std::vector<Planned>> p = Plan(specs[i]);
    if (!p.ok()) {
      return absl::Status(p.status().code(),
                          absl::StrCat("resources[", i, "]: ", p.status().message()));
    }
    for (Planned& one : *p) plan.push_back(std::move(one));
  }
  // One global order, so owners asking for overlapping sets cannot deadlock.
  std::sort(plan.begin(), plan.end(),
            [](const Planned& a, const Planned& b) { return a.key < b.key; });
  for (size_t i = 1; i < plan.size(); ++i) {
    if (plan[i].key == plan[i - 1].key) {
      if (plan[i].resource.path != plan[i - 1].resource.path) {
        return absl::InvalidArgumentError(absl::StrCat(
            "acquire names one disk twice: ", plan[i - 1].resource.path, " and ",
            plan[i].resource.path, " are the same disk (", plan[i].resource.identity_kind,
            " identity ", plan[i].resource.identity, ")"));
      }
      return absl::InvalidArgumentError(
          absl::StrCat("acquire names ", plan[i].resource.Describe(), " twice"));
    }
  }
  std::map<std::string, HandoffEntry> handoff;
  if (state) {
    absl::StatusOr<std::map<std::string, HandoffEntry>> h = DecodeHandoff(*state);
    if (!h.ok()) return h.status();
    handoff = std::move(*h);
  }

  // Reserve the keys in the owner's table so no concurrent request of the
  // same owner touches them; journal intents for backends whose locks would
  // outlive a crash of latchd.
  std::shared_ptr<OwnerEntry> entry;
  Owner owner;
  {
    absl::MutexLock l(&mu_);
    absl::StatusOr<std::shared_ptr<OwnerEntry>> found = LiveOwner(uuid, &caller, "acquire locks for");
    if (!found.ok()) return found.status();
    entry = *std::move(found);
    owner = entry->owner;
    for (const Planned& p : plan) {
      auto held = entry->locks.find(p.key);
      if (held != entry->locks.end()) {
        return absl::FailedPreconditionError(absl::StrCat(
            owner.name, " already holds ", p.resource.Describe(),
            held->second.state == Held::State::kHeld
                ? absl::StrCat(" (", LockModeName(held->second.mode), ")")
                : std::string(" (a request for it is in flight)")));
      }
    }
    JournalChange intents;
    for (const Planned& p : plan) {
      Held h;
      h.backend = p.backend->name;
      h.resource = p.resource;
      h.mode = p.mode;
      h.state = Held::State::kAcquiring;
      h.queued = queued;
      if (p.backend->caps.survives_holder_death) {
        intents.put_locks.push_back(Row(owner, h.backend, h.resource, h.mode, 0, "",
                                        JournalLockState::kAcquiring));
      }
      entry->locks[p.key] = std::move(h);
    }
    if (absl::Status s = Journal(intents); !s.ok()) {
      for (const Planned& p : plan) entry->locks.erase(p.key);
      return s;
    }
  }

  const absl::Time deadline = options.wait && options.timeout != absl::InfiniteDuration()
                                  ? absl::Now() + options.timeout
                                  : absl::InfiniteFuture();
  std::vector<Grant> grants;
  absl::Status failure;
  for (const Planned& p : plan) {
    AcquireOptions o;
    o.wait = options.wait;
    o.cancel_fd = options.cancel_fd;
    o.timeout = options.wait ? std::max(absl::ZeroDuration(), deadline - absl::Now())
                             : absl::ZeroDuration();
    if (deadline == absl::InfiniteFuture()) o.timeout = absl::InfiniteDuration();
    auto h = handoff.find(p.key);
    if (h != handoff.end()) o.expect_token = h->second.fencing_token;
    absl::StatusOr<Grant> g = p.backend->backend->Acquire(owner, p.resource, p.mode, o);
    if (!g.ok()) {
      failure = g.status();
      if (p.resource.kind == ResourceKind::kDisk) {
        absl::MutexLock l(&mu_);
        if (std::string note = AliasNote(p.key, p.resource); !note.empty()) {
          failure = absl::Status(failure.code(), absl::StrCat(failure.message(), "; ", note));
        }
      }
      break;
    }
    grants.push_back(*g);
    FaultPoint("agent.acquire.after-backend");
  }
  // A grant that raced with the client's departure is undone rather than
  // journaled for an owner whose client gave up.
  if (failure.ok() && options.wait && WaitCancelled(options.cancel_fd)) {
    failure = absl::CancelledError(absl::StrCat(
        "the client of ", owner.name, " went away while its acquire was answered; undone"));
  }

  std::vector<Held> rollback;
  std::optional<std::vector<LockView>> success;
  {
    absl::MutexLock l(&mu_);
    if (failure.ok() && entry->dead) {
      failure = absl::FailedPreconditionError(
          absl::StrCat(owner.Describe(), " exited during the acquire"));
    }
    for (size_t i = 0; failure.ok() && i < plan.size(); ++i) {
      auto h = entry->locks.find(plan[i].key);
      if (h == entry->locks.end() || h->second.lost) {
        failure = absl::AbortedError(absl::StrCat(plan[i].resource.Describe(),
                                                  " was reported lost during the acquire"));
      }
    }
    if (failure.ok()) {
      JournalChange c;
      for (size_t i = 0; i < plan.size(); ++i) {
        const Planned& p = plan[i];
        c.put_locks.push_back(Row(owner, p.backend->name, p.resource, p.mode,
                                  grants[i].fencing_token, grants[i].backend_token,
                                  JournalLockState::kHeld));
      }
      failure = Journal(c);
      if (!failure.ok()) {
        failure = absl::InternalError(absl::StrCat(
            "cannot journal the locks, so none was taken: ", failure.message()));
      }
    }
    if (failure.ok()) {
      std::vector<LockView> out;
      for (size_t i = 0; i < plan.size(); ++i) {
        Held& h = entry->locks.find(plan[i].key)->second;  // present: checked above
        h.token = grants[i].fencing_token;
        h.backend_token = grants[i].backend_token;
        h.state = Held::State::kHeld;
        out.push_back(LockView{h.backend, h.resource, h.mode, h.token, "", 0, h.queued});
      }
      success = FoldDiskNames(std::move(out));
    }
    for (size_t i = 0; !success && i < grants.size(); ++i) {
      Held h;
      h.backend = plan[i].backend->name;
      h.resource = plan[i].resource;
      h.mode = plan[i].mode;
      h.token = grants[i].fencing_token;
      h.backend_token = grants[i].backend_token;
      rollback.push_back(std::move(h));
    }
  }
  if (success) {
    FaultPoint("agent.acquire.after-journal");
    return *std::move(success);
  }
  // Undo in reverse order what was granted, then forget the reservations.
  std::reverse(rollback.begin(), rollback.end());
  ReleaseHeld(owner, rollback, /*forget=*/false, /*must_release=*/true).IgnoreError();
  {
    absl::MutexLock l(&mu_);
    JournalChange c;
    for (const Planned& p : plan) {
      auto it = entry->locks.find(p.key);
      if (it != entry->locks.end() && it->second.state == Held::State::kAcquiring) {
        if (p.backend->caps.survives_holder_death) {
          c.remove_locks.push_back(Row(owner, p.backend->name, p.resource, p.mode, 0, "",
                                       JournalLockState::kAcquiring));
        }
        entry->locks.erase(it);
      }
    }
    if (!Journal(c).ok()) Owe(c);
  }
  if (failure.code() == absl::StatusCode::kAborted && state) {
    return absl::AbortedError(absl::StrCat("hand-off refused: ", failure.message()));
  }
  return failure;
}

absl::Status Agent::ReleaseHeld(const Owner& owner, const std::vector<Held>& locks, bool forget,
                                bool must_release) {
  // Journal first, so the journal never misses a lock a backend still
  // holds: posixfd rows go at once (a crash releases those locks anyway);
  // rows of backends whose locks outlive latchd become "releasing" intents
  // until the backend has let go.
  JournalChange first, second;
  bool any_survives = false;
  for (const Held& h : locks) {
    JournalLock row = Row(owner, h.backend, h.resource, h.mode, h.token, h.backend_token,
                          JournalLockState::kReleasing);
    if (Survives(h.backend)) {
      any_survives = true;
      first.put_locks.push_back(row);
      second.remove_locks.push_back(row);
    } else {
      first.remove_locks.push_back(row);
    }
  }
  if (forget) (any_survives ? second : first).remove_owners.push_back(owner.uuid);
  {
    absl::MutexLock l(&mu_);
    if (absl::Status s = Journal(first); !s.ok()) {
      if (!must_release) {
        return absl::Status(s.code(), absl::StrCat(s.message(), "; nothing was released"));
      }
      Owe(first);
    }
  }
  FaultPoint("agent.release.after-journal");
  for (const Held& h : locks) {
    absl::StatusOr<LoadedBackend*> b = FindBackend(h.backend);
    if (!b.ok()) continue;
    absl::Status s = (*b)->backend->Release(owner, h.resource);
    if (!s.ok()) {
      spdlog::error("releasing {} of {}: {}", h.resource.Describe(), owner.Describe(),
                    s.ToString());
    }
  }
  if (!second.empty()) {
    // The locks are gone; a "releasing" row left behind is dropped by
    // recovery, and owed until a later write succeeds.
    absl::MutexLock l(&mu_);
    if (!Journal(second).ok()) Owe(second);
  }
  return absl::OkStatus();
}

absl::StatusOr<ReleaseResult> Agent::Release(
    const std::string& uuid, const std::optional<std::vector<ResourceSpec>>& specs,
    const Caller& caller) {
  std::shared_lock<std::shared_timed_mutex> gate(gate_);
  std::vector<std::string> keys;
  std::vector<Resource> described;
  std::vector<size_t> spec_of;  // which spec each key came from
  if (specs) {
    if (specs->empty()) return absl::InvalidArgumentError("release names no resource");
    for (size_t i = 0; i < specs->size(); ++i) {
      ResourceSpec s = (*specs)[i];
      // Release does not care about the mode; plan with one every backend
      // grants so the check in Plan cannot refuse it.
      s.mode = LockMode::kExclusive;
      if (s.kind == ResourceKind::kDisk) {
        // A disk named by exactly the canonical path it was locked under
        // needs no path resolution (realpath costs a syscall per component).
        std::vector<std::pair<std::string, Resource>> held = FindHeldDisk(uuid, s);
        if (!held.empty()) {
          for (auto& [key, r] : held) {
            keys.push_back(key);
            described.push_back(r);
            spec_of.push_back(i);
          }
          continue;
        }
      }
      absl::StatusOr<std::vector<Planned>> p = Plan(s);
      if (!p.ok()) {
        return absl::Status(p.status().code(),
                            absl::StrCat("resources[", i, "]: ", p.status().message()));
      }
      for (const Planned& one : *p) {
        keys.push_back(one.key);
        described.push_back(one.resource);
        spec_of.push_back(i);
        if (one.resource.kind != ResourceKind::kDisk) continue;
        // Another spelling of a disk the owner holds: release every name it
        // took for it (its path name is that of its own path).
        std::string holder_path;
        {
          absl::MutexLock l(&mu_);
          auto o = owners_.find(uuid);
          if (o != owners_.end()) {
            auto h = o->second->locks.find(one.key);
            if (h != o->second->locks.end()) holder_path = h->second.resource.path;
          }
        }
        if (holder_path.empty() || holder_path == s.target) continue;
        ResourceSpec by_holder = s;
        by_holder.target = holder_path;
        for (auto& [key, r] : FindHeldDisk(uuid, by_holder)) {
          keys.push_back(key);
          described.push_back(r);
          spec_of.push_back(i);
        }
      }
    }
  }
  // One entry per key (a disk's identity name can come twice above). The
  // path name of the caller's spelling, when the owner holds the disk
  // under another spelling, is no lock it holds: drop it, not an error.
  {
    absl::MutexLock l(&mu_);
    auto o = owners_.find(uuid);
    auto holds = [&](const std::string& k) {
      return o != owners_.end() && o->second->locks.count(k) > 0;
    };
    std::vector<std::string> k2;
    std::vector<Resource> d2;
    std::set<std::string> seen;
    for (size_t i = 0; i < keys.size(); ++i) {
      if (!seen.insert(keys[i]).second) continue;
      if (!holds(keys[i]) && described[i].kind == ResourceKind::kDisk &&
          described[i].naming == DiskNaming::kPath) {
        bool same_disk_held = false;
        for (size_t j = 0; j < keys.size(); ++j) {
          same_disk_held |= j != i && spec_of[j] == spec_of[i] && holds(keys[j]);
        }
        if (same_disk_held) continue;
      }
      k2.push_back(keys[i]);
      d2.push_back(described[i]);
    }
    keys = std::move(k2);
    described = std::move(d2);
  }
  std::vector<Held> held;
  std::shared_ptr<OwnerEntry> entry;
  {
    absl::MutexLock l(&mu_);
    absl::StatusOr<std::shared_ptr<OwnerEntry>> found = LiveOwner(uuid, &caller, "release locks of");
    if (!found.ok()) return found.status();
    entry = *std::move(found);
    if (!specs) {
      for (const auto& [key, h] : entry->locks) {
        if (h.state == Held::State::kHeld) keys.push_back(key);
      }
    }
    for (size_t i = 0; i < keys.size(); ++i) {
      auto h = entry->locks.find(keys[i]);
      if (h != entry->locks.end() && h->second.state == Held::State::kHeld) continue;
      if (h != entry->locks.end()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "a request of ", entry->owner.name, " on ", h->second.resource.Describe(),
            " is in flight"));
      }
      for (const auto& [other_uuid, other] : owners_) {
        auto oh = other->locks.find(keys[i]);
        if (other_uuid != uuid && oh != other->locks.end()) {
          return absl::PermissionDeniedError(absl::StrCat(
              described[i].Describe(), " is held by ", other->owner.Describe(), ", not by ",
              entry->owner.name, "; nothing was released"));
        }
      }
      return absl::NotFoundError(absl::StrCat(entry->owner.name, " holds no lock on ",
                                              described[i].Describe(),
                                              "; nothing was released"));
    }
    for (const std::string& k : keys) {
      Held& h = entry->locks[k];
      h.state = Held::State::kReleasing;
      held.push_back(h);
    }
  }
  if (absl::Status s = ReleaseHeld(entry->owner, held, /*forget=*/false, /*must_release=*/false);
      !s.ok()) {
    if (!RestoreAfterFailedRelease(entry, held)) return s;
    ReleaseHeld(entry->owner, held, /*forget=*/false, /*must_release=*/true).IgnoreError();
  }
  {
    absl::MutexLock l(&mu_);
    for (const std::string& k : keys) entry->locks.erase(k);
  }
  return Released(held);
}

std::vector<std::pair<std::string, Resource>> Agent::FindHeldDisk(const std::string& uuid,
                                                                  const ResourceSpec& spec) {
  std::vector<std::pair<std::string, Resource>> out;
  absl::StatusOr<LoadedBackend*> b = FindBackend(spec.backend);
  if (!b.ok()) return out;
  const std::string& ls = spec.lockspace.empty() ? options_.lockspace : spec.lockspace;
  absl::MutexLock l(&mu_);
  auto it = owners_.find(uuid);
  if (it == owners_.end()) return out;
  for (const auto& [key, h] : it->second->locks) {
    if (h.resource.kind == ResourceKind::kDisk && h.backend == (*b)->name &&
        h.resource.lockspace == ls && h.resource.path == spec.target) {
      out.emplace_back(key, h.resource);
    }
  }
  return out;
}

std::vector<Agent::Held> Agent::DetachDiskNames(OwnerEntry* e, const std::string& backend,
                                                const Resource& disk) {
  std::vector<Held> out;
  for (auto it = e->locks.begin(); it != e->locks.end();) {
    if (it->second.state == Held::State::kHeld &&
        SameDisk(it->second.backend, it->second.resource, backend, disk)) {
      out.push_back(std::move(it->second));
      it = e->locks.erase(it);
    } else {
      ++it;
    }
  }
  return out;
}

void Agent::ReleaseInBackends(const Owner& owner, const std::vector<Held>& names) {
  for (const Held& h : names) {
    absl::StatusOr<LoadedBackend*> b = FindBackend(h.backend);
    absl::Status s = b.ok() ? (*b)->backend->Release(owner, h.resource) : b.status();
    if (s.ok()) {
      spdlog::info("released {} of {}: another name of the same disk was lost",
                   h.resource.Describe(), owner.Describe());
    } else if (absl::IsNotFound(s)) {
      // The backend lost this name too (a failed sanlock lockspace takes
      // every lease in it): nothing is left to release.
      spdlog::info("{} of {} was lost with the other name of its disk", h.resource.Describe(),
                   owner.Describe());
    } else {
      spdlog::error("cannot release {} of {} with the lost name of its disk: {}",
                    h.resource.Describe(), owner.Describe(), s.ToString());
    }
  }
}

std::string Agent::AliasNote(const std::string& key, const Resource& r) {
  std::vector<std::string> notes;
  for (const auto& [uuid, e] : owners_) {
    auto h = e->locks.find(key);
    if (h == e->locks.end() || h->second.state != Held::State::kHeld) continue;
    if (h->second.resource.path == r.path) continue;
    notes.push_back(absl::StrCat("disk ", r.path, " is the same disk as ", h->second.resource.path,
                                 " (", r.identity_kind, " identity), held ",
                                 LockModeName(h->second.mode), " by ", e->owner.Describe(),
                                 " on this host"));
  }
  return absl::StrJoin(notes, "; ");
}

absl::StatusOr<OwnerView> Agent::Inquire(const std::string& uuid) {
  std::shared_lock<std::shared_timed_mutex> gate(gate_);
  absl::MutexLock l(&mu_);
  absl::StatusOr<std::shared_ptr<OwnerEntry>> found = LiveOwner(uuid, nullptr, "inquire");
  if (!found.ok()) return found.status();
  const OwnerEntry& e = **found;
  return OwnerView{e.owner, e.policy, e.grace,
                   ProcessIsAlive(static_cast<pid_t>(e.owner.pid), e.owner.start_time),
                   Views(e)};
}

absl::StatusOr<std::vector<HoldersView>> Agent::Holders(const std::vector<ResourceSpec>& specs) {
  std::shared_lock<std::shared_timed_mutex> gate(gate_);
  std::vector<HoldersView> out;
  for (size_t i = 0; i < specs.size(); ++i) {
    absl::StatusOr<std::vector<Planned>> planned = Plan(specs[i]);
    if (!planned.ok()) return planned.status();
    for (const Planned& p : *planned) {
      absl::StatusOr<std::vector<HolderInfo>> h = p.backend->backend->Inquire(p.resource);
      if (!h.ok()) return h.status();
      HoldersView v{i, p.backend->name, p.resource, *std::move(h), {}};
      absl::MutexLock l(&mu_);
      for (const HolderInfo& hi : v.holders) {
        auto o = owners_.find(hi.owner.uuid);
        if (o == owners_.end()) continue;
        auto held = o->second->locks.find(p.key);
        if (held != o->second->locks.end()) v.local_paths[hi.owner.uuid] = held->second.resource.path;
      }
      out.push_back(std::move(v));
    }
  }
  return out;
}

absl::StatusOr<std::string> Agent::BackendAdmin(const std::string& backend,
                                                const std::string& request, const Caller& caller) {
  if (!caller.privileged) {
    return absl::PermissionDeniedError(absl::StrCat(
        "uid ", caller.uid, " may not run backend commands (root or latchd's uid may)"));
  }
  absl::StatusOr<LoadedBackend*> b = FindBackend(backend);
  if (!b.ok()) return b.status();
  absl::StatusOr<std::string> out = (*b)->backend->Admin(request);
  if (out.ok()) {
    spdlog::info("backend {} command {} done", (*b)->name, request);
  } else {
    spdlog::warn("backend {} command {} failed: {}", (*b)->name, request,
                 std::string(out.status().message()));
  }
  return out;
}

std::vector<std::string> Agent::BackendNames() const {
  std::vector<std::string> names;
  for (const LoadedBackend& b : backends_) names.push_back(b.name);
  return names;
}

AgentStatus Agent::Status() {
  std::shared_lock<std::shared_timed_mutex> gate(gate_);
  AgentStatus st;
  st.host = LocalHostName();
  st.boot_id = boot_id_;
  st.journal_path = options_.journal_path;
  st.disk_names = options_.disk_names;
  for (LoadedBackend& b : backends_) st.backends.push_back({b.name, b.backend->Health(), b.backend->StateJson()});
  {
    // Copy under the lock; the /proc reads happen outside it, so a status
    // of 10,000 locks does not stall lock requests.
    absl::MutexLock l(&mu_);
    st.owners.reserve(owners_.size());
    for (const auto& [uuid, e] : owners_) {
      if (e->dead) continue;
      st.owners.push_back(OwnerView{e->owner, e->policy, e->grace, false, Views(*e)});
    }
  }
  for (OwnerView& o : st.owners) {
    o.alive = ProcessIsAlive(static_cast<pid_t>(o.owner.pid), o.owner.start_time);
  }
  return st;
}

void Agent::LockLost(const std::string& uuid, const std::string& backend,
                     const Resource& resource, const std::string& reason) {
  std::shared_ptr<OwnerEntry> entry;
  std::vector<Held> siblings;
  {
    absl::MutexLock l(&mu_);
    auto it = owners_.find(uuid);
    if (it == owners_.end()) return;
    entry = it->second;
    auto h = entry->locks.find(KeyOf(backend, resource));
    if (h == entry->locks.end()) return;
    if (h->second.state != Held::State::kHeld) {
      // An acquire or release of it is in flight: that request ends it
      // (an acquire fails and rolls back; a release was letting go anyway).
      h->second.lost = true;
      spdlog::warn("{} lost {} while a request on it was in flight: {}", entry->owner.Describe(),
                   resource.Describe(), reason);
      return;
    }
    JournalChange c;
    c.remove_locks.push_back(Row(entry->owner, backend, resource, h->second.mode, 0, "",
                                 JournalLockState::kHeld));
    const Resource lost = h->second.resource;
    entry->locks.erase(h);
    // A disk is one lock whatever number of names it took: its other names
    // go with the lost one (a request in flight on them ends them itself).
    siblings = DetachDiskNames(entry.get(), backend, lost);
    for (const Held& o : siblings) {
      c.remove_locks.push_back(Row(entry->owner, o.backend, o.resource, o.mode, 0, "",
                                   JournalLockState::kHeld));
    }
    if (!Journal(c).ok()) Owe(c);
  }
  ReleaseInBackends(entry->owner, siblings);
  spdlog::error("LOCK FAILURE: {} lost {}: {}", entry->owner.Describe(), resource.Describe(),
                reason);
  ApplyPolicy(*entry, resource.Describe());
}

void Agent::ApplyPolicy(const OwnerEntry& e, const std::string& what) {
  switch (e.policy) {
    case FailurePolicy::kTerminate: {
      absl::Status s = watch_->Signal(e.owner.uuid, e.generation, SIGTERM);
      spdlog::error("lock failure of {} on {}: policy terminate: SIGTERM {}, SIGKILL in {} ms",
                    e.owner.Describe(), what, s.ok() ? "sent" : s.ToString(),
                    absl::ToInt64Milliseconds(e.grace));
      watch_->KillAfter(e.owner.uuid, e.generation, e.grace);
      break;
    }
    case FailurePolicy::kPause: {
      absl::Status s = watch_->Signal(e.owner.uuid, e.generation, SIGSTOP);
      spdlog::error("lock failure of {} on {}: policy pause: SIGSTOP {}", e.owner.Describe(),
                    what, s.ok() ? "sent" : s.ToString());
      break;
    }
    case FailurePolicy::kIgnore:
      spdlog::error("lock failure of {} on {}: policy ignore: the owner keeps running",
                    e.owner.Describe(), what);
      break;
  }
}

// ---------------------------------------------------------------------------
// Planned restart

absl::Status Agent::PrepareExec(absl::Duration drain) {
  if (exec_prepared_) return absl::OkStatus();  // The reexec op came first.
  // A queued request waits with the gate held: give them up (their owners'
  // acquires then ask anew).
  CancelQueues();
  if (!gate_.try_lock_for(std::chrono::milliseconds(absl::ToInt64Milliseconds(drain)))) {
    return absl::UnavailableError(absl::StrCat(
        "requests still in flight after ", absl::FormatDuration(drain),
        " (a waiting acquire?); try the restart again later"));
  }
  for (size_t i = 0; i < backends_.size(); ++i) {
    absl::Status s = backends_[i].backend->PrepareExec();
    if (!s.ok()) {
      gate_.unlock();
      return absl::Status(s.code(), absl::StrCat("backend ", backends_[i].name,
                                                 " cannot keep its locks across exec: ",
                                                 s.message()));
    }
  }
  {
    absl::MutexLock l(&mu_);
    journal_.reset();  // Closed cleanly; the new program reopens it.
  }
  exec_prepared_ = true;
  return absl::OkStatus();
}

void Agent::CancelExec() {
  if (!exec_prepared_) return;
  JournalOpenReport report;
  absl::StatusOr<std::unique_ptr<latchkey::Journal>> j =
      Journal::Open(options_.journal_path, boot_id_, &report);
  if (!j.ok()) {
    spdlog::critical("cannot reopen the journal after a failed re-exec: {}",
                     j.status().ToString());
    std::abort();  // Serving without a journal would lose locks on the next crash.
  }
  journal_ = std::move(*j);
  exec_prepared_ = false;
  gate_.unlock();
}

size_t Agent::owner_count() const {
  absl::MutexLock l(&mu_);
  return owners_.size();
}

size_t Agent::lock_count() const {
  absl::MutexLock l(&mu_);
  size_t n = 0;
  for (const auto& [uuid, e] : owners_) n += Views(*e).size();
  return n;
}

}  // namespace latchkey
