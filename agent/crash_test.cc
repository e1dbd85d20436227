// latchd crashes at 200 random points during mixed acquire/release traffic:
// after every crash the journal must be consistent, every lock an owner was
// told it holds must come back, and no two owners may ever hold conflicting
// locks. The last is checked by a witness, not by asking latchd: each
// holder records itself in shared memory while it believes it holds a lock.
//
// Set-up. Worker processes (forked before any latchd runs) each register
// themselves as an owner (own pid, a fixed uuid, policy "ignore" so a lost
// lock is reported to the test instead of killing the worker) and loop:
// acquire 1-2 of 5 resources (4 disks, 1 lease) in random modes without
// waiting, or release some of what they hold, holding up to 2 at a time
// across many requests (and so across crashes). A worker:
//   * enters the witness for a lock only after latchd's grant reached it,
//     and leaves it before sending the release;
//   * marks a resource "uncertain" while a request on it is unanswered;
//   * when the connection breaks (latchd died), keeps its witness entries
//     and beliefs as they are, reconnects until latchd is back, registers
//     again (same uuid, same pid) and resynchronises with `inquire`: a lock
//     latchd holds that the worker does not believe it holds (an acquire
//     whose reply was lost) is released; a lock the worker holds (is in the
//     witness for) that latchd does not hold is a LOST LOCK: counted as a
//     failure, and the worker leaves the witness for it.
//
// Each of the 200 iterations: with the workers parked at a safe point and
// latchd down, the journal is read with Journal::ReadOnly and checked
// (readable, no problem rows, every lock row's owner row present, no two
// owners holding conflicting held rows, every lock a worker holds present
// with its mode, no lock nobody holds or asked for); then latchd starts,
// armed about half the time with a fault point (LATCHKEY_FAULT=NAME:N, a
// SIGKILL at the N-th hit; a crash during recovery counts as the
// iteration's crash), and its `status` is checked against the workers'
// beliefs the same way; the workers run until the fault kills latchd (at
// most 1 s, then it is SIGKILLed and counted as "not reached"), or, the
// other half, until the test SIGKILLs it after 0-100 ms.
//
// Knobs for investigation (defaults are the test): LATCHKEY_CRASH_ITERATIONS,
// LATCHKEY_CRASH_SEED, LATCHKEY_CRASH_MODES (e.g. "ex" or "sr,sw,ex"),
// LATCHKEY_CRASH_FAULTS (fault point names, comma-separated, or "none" for
// SIGKILL only); pass them with --test_env. LATCHKEY_CRASH_CONFIG is added
// to latchd's configuration (another backend: agent/crash_cluster_test runs
// this binary in a cluster lab node on the DLM and on sanlock, with
// LATCHKEY_LATCHD and LATCHKEY_PLUGIN_DIR naming latchd and the plugins).
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/client.h"
#include "agent/testing/latchd_process.h"
#include "core/journal.h"
#include "core/lock_mode.h"
#include "core/resource.h"
#include "gtest/gtest.h"
#include <nlohmann/json.hpp>

namespace latchkey {
namespace {

using ::latchkey::testing::LatchdProcess;
using ::latchkey::testing::TempDir;
using json = nlohmann::json;

constexpr int kWorkers = 4;
constexpr int kDisks = 4;
constexpr int kResources = kDisks + 1;  // the last one is a lease
constexpr size_t kMaxHeld = 2;          // locks a worker holds at once
// LATCHKEY_CRASH_LOCKSPACE: a lockspace the backend has (sanlock's are
// configured, not created).
const std::string& LockspaceName() {
  static const std::string* name = [] {
    const char* e = getenv("LATCHKEY_CRASH_LOCKSPACE");
    return new std::string(e != nullptr ? e : "crashtest");
  }();
  return *name;
}
constexpr int kMaxMessages = 64;
constexpr int kDefaultIterations = 200;

// ---------------------------------------------------------------------------
// Shared memory: the witness, the workers' beliefs, counters, messages.
// Created (MAP_SHARED | MAP_ANONYMOUS) before the workers fork.

struct ResourceWitness {
  std::atomic<int> holders[4];         // by LockMode number: current holders
  std::atomic<uint64_t> max_token;     // largest fencing token granted so far
};

struct WorkerShared {
  std::atomic<uint64_t> ack_epoch;     // the pause epoch it is parked for
  std::atomic<int> registered;         // a register reply has reached it
  std::atomic<int> belief[kResources];     // 0, or the LockMode it holds (in the witness)
  std::atomic<int> uncertain[kResources];  // 1: a request on it is unanswered
  std::atomic<uint64_t> acquires, grants, grants_by_mode[4], refusals, releases,
      resyncs, resync_releases, transport_errors;
};

struct Counters {
  std::atomic<uint64_t> witness_violations;
  std::atomic<uint64_t> lost_locks;          // found by a worker's resync or a release
  std::atomic<uint64_t> lost_locks_status;   // found by the test in latchd's status
  std::atomic<uint64_t> token_regressions;
  std::atomic<uint64_t> journal_inconsistencies;
  std::atomic<uint64_t> state_mismatches;    // latchd holds what nobody asked for, modes
  std::atomic<uint64_t> unexpected_errors;   // latchd refusals other than "busy"
  std::atomic<uint64_t> latchd_failures;     // died on its own, hung, failed to start
};

struct Shared {
  std::atomic<uint64_t> pause_word;  // epoch << 1 | paused
  ResourceWitness res[kResources];
  WorkerShared worker[kWorkers];
  Counters c;
  std::atomic<int> messages;
  char message[kMaxMessages][480];
};

Shared* g_shared = nullptr;

// Counts a failure and keeps its message (the first kMaxMessages of them).
void Fail(std::atomic<uint64_t>* counter, const std::string& msg) {
  counter->fetch_add(1);
  const int i = g_shared->messages.fetch_add(1);
  if (i < kMaxMessages) {
    snprintf(g_shared->message[i], sizeof g_shared->message[i], "[pid %d] %s", getpid(),
             msg.c_str());
  }
  fprintf(stderr, "FAILURE [pid %d]: %s\n", getpid(), msg.c_str());
}

// ---------------------------------------------------------------------------
// The resources and the owners, fixed before the workers fork.

struct TestResource {
  std::string label;   // "disk0", ..., "lease"
  bool lease = false;
  std::string target;  // image path or lease key
  std::string name;    // latchd's resource name
  std::string path_name;  // a disk's scheme-1 name, which latchd also takes
};
std::vector<TestResource> g_res;
std::vector<LockMode> g_modes;  // modes the workers ask for

std::string WorkerUuid(int w) {
  char buf[40];
  snprintf(buf, sizeof buf, "6c617463-6b65-4000-8000-%012x", 0xc0de00 + w);
  return buf;
}

int WorkerOf(const std::string& uuid) {
  for (int w = 0; w < kWorkers; ++w) {
    if (WorkerUuid(w) == uuid) return w;
  }
  return -1;
}

json Spec(int r, std::optional<LockMode> mode) {
  json s = {{"lockspace", LockspaceName()}};
  s[g_res[r].lease ? "lease" : "disk"] = g_res[r].target;
  if (mode) s["mode"] = LockModeName(*mode);
  return s;
}

int ResourceIndex(const std::string& lockspace, const std::string& name) {
  if (lockspace != LockspaceName()) return -1;
  for (int r = 0; r < kResources; ++r) {
    if (g_res[r].name == name || (!g_res[r].path_name.empty() && g_res[r].path_name == name)) {
      return r;
    }
  }
  return -1;
}

// A lock object of latchd's protocol: resource index and mode (0 when the
// mode is unreadable), or -1.
int LockIndex(const json& l, int* mode) {
  if (!l.is_object() || !l.contains("lockspace") || !l.contains("name") ||
      !l["lockspace"].is_string() || !l["name"].is_string()) {
    return -1;
  }
  *mode = 0;
  if (l.contains("mode") && l["mode"].is_string()) {
    absl::StatusOr<LockMode> m = ParseLockMode(l["mode"].get<std::string>());
    if (m.ok()) *mode = static_cast<int>(*m);
  }
  return ResourceIndex(l["lockspace"].get<std::string>(), l["name"].get<std::string>());
}

const char* ModeName(int m) {
  return m == 0 ? "none" : LockModeName(static_cast<LockMode>(m));
}

// Other workers' beliefs on resource r, for messages.
std::string Holders(int r) {
  std::vector<std::string> parts;
  for (int w = 0; w < kWorkers; ++w) {
    const int b = g_shared->worker[w].belief[r].load();
    if (b != 0) parts.push_back(absl::StrCat("worker", w, ":", ModeName(b)));
  }
  return parts.empty() ? "nobody" : absl::StrJoin(parts, ",");
}

// ---------------------------------------------------------------------------
// The workers.

class Worker {
 public:
  Worker(int index, std::string socket, uint32_t seed)
      : index_(index),
        me_(g_shared->worker[index]),
        socket_(std::move(socket)),
        uuid_(WorkerUuid(index)),
        name_(absl::StrCat("crash-worker-", index)),
        rng_(seed) {}

  [[noreturn]] void Run() {
    for (;;) {
      SafePoint();
      if (!synced_) {
        if (!Resync()) usleep(1000);
        continue;
      }
      Step();
      usleep(50 + rng_() % 350);
    }
  }

 private:
  // Parks while the test asks for a pause. Called only between requests,
  // where the beliefs and "uncertain" marks say exactly what the worker
  // knows.
  void SafePoint() {
    for (;;) {
      const uint64_t w = g_shared->pause_word.load();
      if ((w & 1) == 0) return;
      me_.ack_epoch.store(w >> 1);
      usleep(200);
    }
  }

  // A broken connection (latchd died) as LatchdClient reports it, as
  // opposed to an error response of latchd.
  static bool Transport(const absl::Status& s) {
    return s.code() == absl::StatusCode::kDeadlineExceeded ||
           (s.code() == absl::StatusCode::kInternal && absl::StartsWith(s.message(), "latchd at "));
  }

  absl::StatusOr<json> Call(const json& request) {
    if (!client_) return absl::InternalError("latchd at (none): not connected");
    absl::StatusOr<json> r = client_->Call(request, absl::Seconds(10));
    if (!r.ok() && Transport(r.status())) {
      client_.reset();
      synced_ = false;
      me_.transport_errors++;
    }
    return r;
  }

  // An error response of latchd (the connection is still up): unexpected.
  void Unexpected(const std::string& what, const absl::Status& s) {
    Fail(&g_shared->c.unexpected_errors,
         absl::StrCat("worker", index_, ": ", what, ": ", s.ToString()));
    synced_ = false;  // Learn the truth again before going on.
  }

  void Enter(int r, LockMode m, uint64_t token) {
    ResourceWitness& w = g_shared->res[r];
    w.holders[static_cast<int>(m)].fetch_add(1);
    const int sr = w.holders[1].load(), sw = w.holders[2].load(), ex = w.holders[3].load();
    bool bad = false;
    switch (m) {
      case LockMode::kSharedRead:
        bad = sw > 0 || ex > 0;
        break;
      case LockMode::kSharedWrite:
        bad = sr > 0 || ex > 0;
        break;
      case LockMode::kExclusive:
        bad = sr > 0 || sw > 0 || ex > 1;
        break;
    }
    if (bad) {
      Fail(&g_shared->c.witness_violations,
           absl::StrCat("WITNESS: worker", index_, " was granted ", LockModeName(m), " on ",
                        g_res[r].label, " (token ", token, ") while holders were sr=", sr,
                        " sw=", sw, " ex=", ex, " counting itself; beliefs: ", Holders(r)));
    }
    uint64_t prev = w.max_token.load();
    if (m == LockMode::kExclusive && token <= prev) {
      Fail(&g_shared->c.token_regressions,
           absl::StrCat("worker", index_, " was granted exclusive ", g_res[r].label,
                        " with fencing token ", token, ", not above the earlier grant's ", prev));
    }
    while (prev < token && !w.max_token.compare_exchange_weak(prev, token)) {
    }
    me_.belief[r].store(static_cast<int>(m));
  }

  void Leave(int r) {
    const int m = me_.belief[r].exchange(0);
    if (m != 0) g_shared->res[r].holders[m].fetch_sub(1);
  }

  // Reconnects, registers and reconciles with what latchd holds for us.
  bool Resync() {
    if (!client_) {
      absl::StatusOr<LatchdClient> c = LatchdClient::Connect(socket_, absl::Seconds(2));
      if (!c.ok()) return false;
      client_.emplace(std::move(*c));
    }
    absl::StatusOr<json> reg = Call({{"op", "register"},
                                     {"owner", {{"uuid", uuid_}, {"name", name_}, {"pid", getpid()}}},
                                     {"policy", "ignore"}});
    if (!reg.ok()) {
      if (client_) {
        Unexpected("register (same uuid, same pid) refused", reg.status());
        client_.reset();
        usleep(10000);
      }
      return false;
    }
    me_.registered.store(1);
    absl::StatusOr<json> inq = Call({{"op", "inquire"}, {"uuid", uuid_}});
    if (!inq.ok()) {
      if (client_) {
        Unexpected("inquire after register refused", inq.status());
        client_.reset();
      }
      return false;
    }
    int held[kResources] = {};
    if (!(*inq)["locks"].is_array()) {
      Unexpected("inquire", absl::InternalError(absl::StrCat("no locks array: ", inq->dump())));
      return false;
    }
    for (const json& l : (*inq)["locks"]) {
      int mode;
      const int r = LockIndex(l, &mode);
      if (r < 0) {
        Fail(&g_shared->c.state_mismatches,
             absl::StrCat("worker", index_, ": inquire names a lock it never asked for: ", l.dump()));
        continue;
      }
      held[r] = mode;
    }
    std::vector<int> extra;
    for (int r = 0; r < kResources; ++r) {
      const int b = me_.belief[r].load();
      if (b != 0 && held[r] == 0) {
        Fail(&g_shared->c.lost_locks,
             absl::StrCat("LOST LOCK: worker", index_, " was granted ", ModeName(b), " on ",
                          g_res[r].label, " and never released it, but latchd (after a crash) "
                          "does not hold it for it any more"));
        Leave(r);
        me_.uncertain[r].store(0);
      } else if (b != 0 && held[r] != b) {
        Fail(&g_shared->c.state_mismatches,
             absl::StrCat("worker", index_, " holds ", ModeName(b), " on ", g_res[r].label,
                          " but latchd says ", ModeName(held[r])));
      } else if (b == 0 && held[r] != 0) {
        if (me_.uncertain[r].load() == 0) {
          Fail(&g_shared->c.state_mismatches,
               absl::StrCat("worker", index_, ": latchd holds ", ModeName(held[r]), " on ",
                            g_res[r].label, " for it, which it neither holds nor asked for"));
        }
        me_.uncertain[r].store(1);
        extra.push_back(r);
      } else if (b == 0) {
        me_.uncertain[r].store(0);
      }
    }
    if (!extra.empty()) {
      json specs = json::array();
      for (int r : extra) specs.push_back(Spec(r, std::nullopt));
      absl::StatusOr<json> rel = Call({{"op", "release"}, {"uuid", uuid_}, {"resources", specs}});
      if (!rel.ok()) {
        if (client_) Unexpected("releasing the locks of unanswered acquires", rel.status());
        return false;
      }
      for (int r : extra) me_.uncertain[r].store(0);
      me_.resync_releases += extra.size();
    }
    me_.resyncs++;
    synced_ = true;
    return true;
  }

  void Step() {
    std::vector<int> held, free;
    for (int r = 0; r < kResources; ++r) (me_.belief[r].load() != 0 ? held : free).push_back(r);
    const bool acquire = held.empty() || (held.size() < kMaxHeld && rng_() % 100 < 55);
    if (acquire) {
      Acquire(free, kMaxHeld - held.size());
    } else {
      Release(held);
    }
  }

  void Acquire(std::vector<int> free, size_t room) {
    std::shuffle(free.begin(), free.end(), rng_);
    free.resize(std::min<size_t>(std::min(room, free.size()), 1 + rng_() % 2));
    std::vector<LockMode> modes;
    json specs = json::array();
    for (int r : free) {
      modes.push_back(g_modes[rng_() % g_modes.size()]);
      me_.uncertain[r].store(1);
      specs.push_back(Spec(r, modes.back()));
    }
    me_.acquires++;
    absl::StatusOr<json> reply =
        Call({{"op", "acquire"}, {"uuid", uuid_}, {"resources", specs}, {"wait", false}});
    if (!reply.ok()) {
      if (!client_) return;  // latchd died: whether it was granted is uncertain
      // Refused, nothing taken: busy, or (sanlock) a lockspace still
      // joining after latchd's start, which the backend documents as
      // "retry, or wait" (backends/sanlock/README.md, Errors).
      if (reply.status().code() == absl::StatusCode::kUnavailable ||
          (reply.status().code() == absl::StatusCode::kFailedPrecondition &&
           absl::StrContains(reply.status().message(), "is still joining"))) {
        for (int r : free) me_.uncertain[r].store(0);
        me_.refusals++;
        return;
      }
      Unexpected("acquire", reply.status());
      return;
    }
    std::map<int, std::pair<int, uint64_t>> got;  // resource -> mode, token
    if ((*reply)["locks"].is_array()) {
      for (const json& l : (*reply)["locks"]) {
        int mode;
        const int r = LockIndex(l, &mode);
        const uint64_t token =
            l.contains("fencing_token") && l["fencing_token"].is_number_unsigned()
                ? l["fencing_token"].get<uint64_t>()
                : 0;
        if (r >= 0) got[r] = {mode, token};
      }
    }
    for (size_t i = 0; i < free.size(); ++i) {
      auto g = got.find(free[i]);
      if (g == got.end() || g->second.first != static_cast<int>(modes[i])) {
        Unexpected("acquire reply", absl::InternalError(absl::StrCat(
                                        "asked ", LockModeName(modes[i]), " on ",
                                        g_res[free[i]].label, ", reply: ", reply->dump())));
        return;  // uncertain stays: the resync sorts it out
      }
    }
    // Granted: only now does the worker believe it holds them.
    for (size_t i = 0; i < free.size(); ++i) {
      Enter(free[i], modes[i], got[free[i]].second);
      me_.uncertain[free[i]].store(0);
      me_.grants_by_mode[static_cast<int>(modes[i])]++;
    }
    me_.grants++;
  }

  void Release(std::vector<int> held) {
    std::shuffle(held.begin(), held.end(), rng_);
    if (held.size() > 1 && rng_() % 2 == 0) held.resize(1);
    json specs = json::array();
    for (int r : held) {
      // Out of the witness before asking: once latchd lets go, someone
      // else may be granted it at once.
      me_.uncertain[r].store(1);
      Leave(r);
      specs.push_back(Spec(r, std::nullopt));
    }
    absl::StatusOr<json> reply = Call({{"op", "release"}, {"uuid", uuid_}, {"resources", specs}});
    if (!reply.ok()) {
      if (!client_) return;
      if (reply.status().code() == absl::StatusCode::kNotFound) {
        // Same connection, so the same latchd process that granted it.
        Fail(&g_shared->c.lost_locks,
             absl::StrCat("LOST LOCK: worker", index_, " held ",
                          absl::StrJoin(held, ",", [](std::string* out, int r) {
                            out->append(g_res[r].label);
                          }),
                          " but latchd says: ", reply.status().ToString()));
        synced_ = false;
        return;
      }
      Unexpected("release", reply.status());
      return;
    }
    std::set<int> released;
    if ((*reply)["released"].is_array()) {
      for (const json& l : (*reply)["released"]) {
        int mode;
        released.insert(LockIndex(l, &mode));
      }
    }
    if (released != std::set<int>(held.begin(), held.end())) {
      Unexpected("release reply", absl::InternalError(reply->dump()));
      return;
    }
    for (int r : held) me_.uncertain[r].store(0);
    me_.releases++;
  }

  const int index_;
  WorkerShared& me_;
  const std::string socket_;
  const std::string uuid_;
  const std::string name_;
  std::mt19937 rng_;
  std::optional<LatchdClient> client_;
  bool synced_ = false;
};

pid_t SpawnWorker(int index, const std::string& socket, uint32_t seed) {
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid != 0) return pid;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(1);
  Worker(index, socket, seed).Run();
}

// ---------------------------------------------------------------------------
// The test's side.

uint64_t g_epoch = 0;

// Asks every worker to park at its next safe point and waits until all do.
bool PauseWorkers() {
  ++g_epoch;
  g_shared->pause_word.store(g_epoch << 1 | 1);
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  for (;;) {
    bool all = true;
    for (int w = 0; w < kWorkers; ++w) {
      if (g_shared->worker[w].ack_epoch.load() != g_epoch) all = false;
    }
    if (all) return true;
    if (absl::Now() > deadline) return false;
    usleep(200);
  }
}

void ResumeWorkers() { g_shared->pause_word.store(g_epoch << 1); }

// Compares what latchd (or its journal) says worker w holds with what the
// worker knows. `held[r]`: the mode held, 0 for none. The workers are
// parked.
void Compare(int w, const int held[kResources], const std::string& where,
             std::atomic<uint64_t>* missing_counter, std::atomic<uint64_t>* other_counter) {
  WorkerShared& ws = g_shared->worker[w];
  for (int r = 0; r < kResources; ++r) {
    const int b = ws.belief[r].load();
    const int u = ws.uncertain[r].load();
    if (b != 0 && held[r] == 0) {
      Fail(missing_counter,
           absl::StrCat(where, ": worker", w, " was granted ", ModeName(b), " on ",
                        g_res[r].label, " and still holds it, but it is not there (LOST LOCK)"));
    } else if (b != 0 && held[r] != b) {
      Fail(other_counter, absl::StrCat(where, ": worker", w, " holds ", ModeName(b), " on ",
                                       g_res[r].label, " but it says ", ModeName(held[r])));
    } else if (b == 0 && held[r] != 0 && u == 0) {
      Fail(other_counter,
           absl::StrCat(where, ": ", ModeName(held[r]), " lock of worker", w, " on ",
                        g_res[r].label, ", which it neither holds nor has a request for"));
    }
  }
}

// latchd is down, the workers are parked.
void CheckJournal(const std::string& path, bool may_be_missing, int iteration) {
  std::atomic<uint64_t>* bad = &g_shared->c.journal_inconsistencies;
  const std::string where = absl::StrCat("journal after crash ", iteration);
  std::string boot_id;
  absl::StatusOr<JournalContents> j = Journal::ReadOnly(path, &boot_id);
  if (!j.ok()) {
    if (may_be_missing && j.status().code() == absl::StatusCode::kNotFound) return;
    Fail(bad, absl::StrCat(where, ": unreadable: ", j.status().ToString()));
    return;
  }
  if (boot_id != CurrentBootId()) {
    Fail(bad, absl::StrCat(where, ": boot id '", boot_id, "', this boot is '", CurrentBootId(), "'"));
  }
  for (const std::string& p : j->problems) Fail(bad, absl::StrCat(where, ": problem row: ", p));
  std::set<std::string> owners;
  for (const JournalOwner& o : j->owners) {
    owners.insert(o.owner.uuid);
    if (WorkerOf(o.owner.uuid) < 0) {
      Fail(bad, absl::StrCat(where, ": owner row of a stranger: ", o.owner.Describe()));
    }
  }
  for (int w = 0; w < kWorkers; ++w) {
    if (g_shared->worker[w].registered.load() != 0 && owners.count(WorkerUuid(w)) == 0) {
      Fail(bad, absl::StrCat(where, ": no owner row for registered worker", w));
    }
  }
  int held[kWorkers][kResources] = {};
  std::map<std::string, std::vector<const JournalLock*>> by_resource;
  for (const JournalLock& l : j->locks) {
    const LockRecord& rec = l.record;
    const std::string desc = absl::StrCat(rec.resource.Describe(), " of ", rec.owner.Describe(), " (",
                                          LockModeName(rec.mode), ", ",
                                          JournalLockStateName(l.state), ")");
    if (owners.count(rec.owner.uuid) == 0) {
      Fail(bad, absl::StrCat(where, ": lock row without its owner row: ", desc));
    }
    const int w = WorkerOf(rec.owner.uuid);
    const int r = ResourceIndex(rec.resource.lockspace, rec.resource.name);
    if (w < 0 || r < 0) {
      Fail(bad, absl::StrCat(where, ": lock row of an unknown owner or resource: ", desc));
      continue;
    }
    if (l.state != JournalLockState::kHeld) {
      // posixfd locks need no intents (core/journal.h); tolerated while a
      // request on it was unanswered.
      if (g_shared->worker[w].uncertain[r].load() == 0) {
        Fail(bad, absl::StrCat(where, ": intent row nobody has a request for: ", desc));
      }
      continue;
    }
    held[w][r] = static_cast<int>(rec.mode);
    by_resource[absl::StrCat(l.backend, "/", rec.resource.lockspace, "/", rec.resource.name)]
        .push_back(&l);
  }
  for (const auto& [key, rows] : by_resource) {
    for (size_t a = 0; a < rows.size(); ++a) {
      for (size_t b = a + 1; b < rows.size(); ++b) {
        const LockRecord& x = rows[a]->record;
        const LockRecord& y = rows[b]->record;
        if (x.owner.uuid != y.owner.uuid && !ModesCompatible(x.mode, y.mode)) {
          Fail(bad, absl::StrCat(where, ": conflicting held rows on ", x.resource.Describe(), ": ",
                                 LockModeName(x.mode), " by ", x.owner.name, ", ",
                                 LockModeName(y.mode), " by ", y.owner.name));
        }
      }
    }
  }
  for (int w = 0; w < kWorkers; ++w) Compare(w, held[w], where, bad, bad);
}

// latchd is up, the workers are parked.
// Waits (up to 15 s) until every backend of latchd is healthy: a sanlock
// lockspace joins in the background after each start, and traffic sent
// meanwhile would be refused. Returns the last complaint, or "".
std::string WaitHealthy(const LatchdProcess& d) {
  std::string why = "no answer";
  const absl::Time until = absl::Now() + absl::Seconds(15);
  while (absl::Now() < until) {
    absl::StatusOr<LatchdClient> c = d.Connect(absl::Seconds(5));
    absl::StatusOr<json> st = c.ok() ? c->Call({{"op", "status"}}, absl::Seconds(10)) : c.status();
    if (st.ok() && (*st)["backends"].is_array()) {
      why.clear();
      for (const json& b : (*st)["backends"]) {
        if (!b.value("healthy", false)) why = b.dump();
      }
      if (why.empty()) return "";
    } else if (!st.ok()) {
      why = st.status().ToString();
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  return why;
}

void CheckStatus(const LatchdProcess& d, const std::string& where) {
  absl::StatusOr<LatchdClient> c = d.Connect(absl::Seconds(5));
  absl::StatusOr<json> st = c.ok() ? c->Call({{"op", "status"}}, absl::Seconds(10)) : c.status();
  if (!st.ok()) {
    Fail(&g_shared->c.latchd_failures, absl::StrCat(where, ": status: ", st.status().ToString()));
    return;
  }
  std::map<std::string, const json*> owners;
  if ((*st)["owners"].is_array()) {
    for (const json& o : (*st)["owners"]) {
      if (o.contains("owner") && o["owner"].contains("uuid")) {
        owners[o["owner"]["uuid"].get<std::string>()] = &o;
      }
    }
  }
  for (int w = 0; w < kWorkers; ++w) {
    int held[kResources] = {};
    auto it = owners.find(WorkerUuid(w));
    if (it == owners.end()) {
      if (g_shared->worker[w].registered.load() != 0) {
        Fail(&g_shared->c.state_mismatches,
             absl::StrCat(where, ": registered worker", w, " is not an owner"));
      }
    } else {
      const json& o = *it->second;
      if (!o.value("alive", false)) {
        Fail(&g_shared->c.state_mismatches, absl::StrCat(where, ": worker", w, " not alive: ", o.dump()));
      }
      if (o["locks"].is_array()) {
        for (const json& l : o["locks"]) {
          int mode;
          const int r = LockIndex(l, &mode);
          if (r < 0) {
            Fail(&g_shared->c.state_mismatches, absl::StrCat(where, ": unknown lock ", l.dump()));
          } else {
            held[r] = mode;
          }
        }
      }
    }
    Compare(w, held, where, &g_shared->c.lost_locks_status, &g_shared->c.state_mismatches);
  }
}

std::string EnvOr(const char* name, const std::string& fallback) {
  const char* v = getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

struct FaultPointSpec {
  std::string name;
  int max_hit;  // N is drawn from 1..max_hit
  int armed = 0, at_start = 0, in_traffic = 0, not_reached = 0;
};

TEST(CrashTest, CrashesKeepJournalConsistentAndLocksExclusive) {
  const absl::Time began = absl::Now();
  int iterations = kDefaultIterations;
  ASSERT_TRUE(absl::SimpleAtoi(EnvOr("LATCHKEY_CRASH_ITERATIONS", "200"), &iterations));
  uint32_t seed = static_cast<uint32_t>(absl::ToUnixMicros(absl::Now()));
  if (getenv("LATCHKEY_CRASH_SEED") != nullptr) {
    ASSERT_TRUE(absl::SimpleAtoi(getenv("LATCHKEY_CRASH_SEED"), &seed));
  }
  std::mt19937 rng(seed);
  for (absl::string_view m : absl::StrSplit(EnvOr("LATCHKEY_CRASH_MODES", "sr,sw,ex"), ',')) {
    absl::StatusOr<LockMode> mode = ParseLockMode(m);
    ASSERT_TRUE(mode.ok()) << mode.status();
    g_modes.push_back(*mode);
  }
  std::vector<FaultPointSpec> faults;
  for (absl::string_view f : absl::StrSplit(
           EnvOr("LATCHKEY_CRASH_FAULTS",
                 "journal.before-commit,journal.after-commit,agent.acquire.after-backend,"
                 "agent.acquire.after-journal,agent.release.after-journal,"
                 "agent.recover.after-adopt"),
           ',')) {
    if (f.empty() || f == "none") continue;
    // Recovery adopts at most a handful of locks per start.
    faults.push_back({std::string(f), f == "agent.recover.after-adopt" ? 4 : 40});
  }

  const std::string dir = TempDir("crash");
  const std::string images = dir + "/images";
  ASSERT_EQ(mkdir(images.c_str(), 0700), 0);
  ASSERT_EQ(mkdir((dir + "/latchd").c_str(), 0700), 0);
  for (int i = 0; i < kDisks; ++i) {
    TestResource t;
    t.label = absl::StrCat("disk", i);
    t.target = absl::StrCat(images, "/vm", i, ".qcow2");
    std::ofstream(t.target) << "image " << i << "\n";
    // Names as the backend cuts them (LATCHKEY_CRASH_NAME_LEN: sanlock's 47).
    size_t name_len = kMaxNameLen;
    ASSERT_TRUE(absl::SimpleAtoi(EnvOr("LATCHKEY_CRASH_NAME_LEN", std::to_string(kMaxNameLen)),
                                 &name_len));
    absl::StatusOr<Resource> r = Resource::Disk(t.target, LockspaceName(), name_len);
    ASSERT_TRUE(r.ok()) << r.status();
    t.name = r->name;
    // latchd's default disk_names = "identity+path" takes this name too.
    t.path_name = DiskResourceName(r->path, name_len);
    g_res.push_back(t);
  }
  {
    TestResource t;
    t.label = "lease";
    t.lease = true;
    t.target = "crash-lease";
    absl::StatusOr<Resource> r = Resource::Lease(LockspaceName(), t.target);
    ASSERT_TRUE(r.ok()) << r.status();
    t.name = r->name;
    g_res.push_back(t);
  }

  void* mem = mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                   -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  g_shared = new (mem) Shared();

  LatchdProcess d(dir + "/latchd", EnvOr("LATCHKEY_CRASH_CONFIG", ""));
  // Parked from the start: no latchd runs yet.
  g_shared->pause_word.store(g_epoch << 1 | 1);
  std::vector<pid_t> workers;
  for (int w = 0; w < kWorkers; ++w) {
    const pid_t pid = SpawnWorker(w, d.socket(), seed + 1 + w);
    ASSERT_GT(pid, 0);
    workers.push_back(pid);
  }
  auto stop_workers = [&] {
    for (pid_t& pid : workers) {
      if (pid > 0) testing::KillAndReap(pid, SIGKILL);
      pid = -1;
    }
  };
  auto workers_alive = [&] {
    for (int w = 0; w < kWorkers; ++w) {
      int st;
      if (workers[w] > 0 && waitpid(workers[w], &st, WNOHANG) == workers[w]) {
        Fail(&g_shared->c.latchd_failures,
             absl::StrCat("worker", w, " (pid ", workers[w], ") died, wait status ", st,
                          " (a lock-failure policy applied to it?)"));
        workers[w] = -1;
        return false;
      }
    }
    return true;
  };

  int sigkills = 0, died_on_their_own = 0;
  bool ok = PauseWorkers();
  if (!ok) Fail(&g_shared->c.latchd_failures, "the workers did not park");
  for (int it = 0; ok && it < iterations; ++it) {
    if (!workers_alive()) break;
    // latchd is down and the workers are parked.
    CheckJournal(d.journal(), /*may_be_missing=*/it == 0, it);
    FaultPointSpec* fault = nullptr;
    std::vector<std::string> env;
    if (!faults.empty() && rng() % 2 == 0) {
      fault = &faults[rng() % faults.size()];
      const int n = 1 + static_cast<int>(rng() % fault->max_hit);
      env.push_back(absl::StrCat("LATCHKEY_FAULT=", fault->name, ":", n));
      fault->armed++;
    }
    absl::Status started = d.Start(env, absl::Seconds(20));
    if (!started.ok()) {
      if (fault != nullptr && !d.running() &&
          absl::StrContains(started.message(), "exited during start (status 9)")) {
        fault->at_start++;  // A crash during recovery: this iteration's crash.
        continue;
      }
      Fail(&g_shared->c.latchd_failures, absl::StrCat("iteration ", it, ": latchd did not start: ",
                                                      started.ToString().substr(0, 4000)));
      if (d.running()) d.Kill(SIGKILL);
      continue;
    }
    CheckStatus(d, absl::StrCat("latchd status after restart ", it));
    if (const std::string why = WaitHealthy(d); !why.empty() && d.running()) {
      Fail(&g_shared->c.latchd_failures,
           absl::StrCat("iteration ", it, ": a backend stayed unhealthy: ", why.substr(0, 500)));
    }
    ResumeWorkers();
    if (fault != nullptr) {
      int st = 0;
      if (d.WaitExit(absl::Seconds(1), &st)) {
        if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) {
          fault->in_traffic++;
        } else {
          Fail(&g_shared->c.latchd_failures,
               absl::StrCat("iteration ", it, ": latchd armed with ", env[0],
                            " ended with wait status ", st, ", not by SIGKILL"));
        }
      } else {
        d.Kill(SIGKILL);
        fault->not_reached++;
      }
    } else {
      const absl::Duration delay = absl::Microseconds(rng() % 100001);
      int st = 0;
      if (d.WaitExit(delay, &st)) {
        ++died_on_their_own;
        Fail(&g_shared->c.latchd_failures,
             absl::StrCat("iteration ", it, ": latchd died on its own, wait status ", st));
      } else {
        d.Kill(SIGKILL);
        ++sigkills;
      }
    }
    if (!PauseWorkers()) {
      Fail(&g_shared->c.latchd_failures, "the workers did not park");
      ok = false;
    }
  }

  // Last round: a clean start, traffic, and an exact comparison once every
  // worker has resynchronised.
  if (ok && workers_alive()) {
    CheckJournal(d.journal(), iterations == 0, iterations);
    absl::Status started = d.Start({}, absl::Seconds(20));
    if (!started.ok()) {
      Fail(&g_shared->c.latchd_failures, absl::StrCat("final start: ", started.ToString()));
    } else {
      CheckStatus(d, "latchd status at the final start");
      ResumeWorkers();
      absl::SleepFor(absl::Milliseconds(500));
      if (PauseWorkers()) {
        CheckStatus(d, "latchd status after the final traffic");
        for (int w = 0; w < kWorkers; ++w) {
          for (int r = 0; r < kResources; ++r) {
            if (g_shared->worker[w].uncertain[r].load() != 0) {
              Fail(&g_shared->c.state_mismatches,
                   absl::StrCat("worker", w, " still has an unanswered request on ",
                                g_res[r].label, " with latchd up"));
            }
          }
        }
        d.Kill(SIGKILL);
        CheckJournal(d.journal(), false, iterations + 1);
      } else {
        Fail(&g_shared->c.latchd_failures, "the workers did not park at the end");
      }
    }
  }
  workers_alive();
  stop_workers();
  if (d.running()) d.Kill(SIGKILL);

  // Summary.
  uint64_t acquires = 0, grants = 0, refusals = 0, releases = 0, resyncs = 0,
           resync_releases = 0, transport = 0, by_mode[4] = {};
  for (int w = 0; w < kWorkers; ++w) {
    WorkerShared& ws = g_shared->worker[w];
    acquires += ws.acquires;
    grants += ws.grants;
    refusals += ws.refusals;
    releases += ws.releases;
    resyncs += ws.resyncs;
    resync_releases += ws.resync_releases;
    transport += ws.transport_errors;
    for (int m = 1; m < 4; ++m) by_mode[m] += ws.grants_by_mode[m];
  }
  const std::string log = d.Log();
  int lock_failure_lines = 0;
  std::vector<std::string> lock_failure_examples;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (absl::StrContains(line, "LOCK FAILURE")) {
      if (++lock_failure_lines <= 5) lock_failure_examples.emplace_back(line);
    }
  }
  int fault_crashes = 0;
  std::string per_point;
  for (const FaultPointSpec& f : faults) {
    fault_crashes += f.at_start + f.in_traffic;
    absl::StrAppend(&per_point, "\n    ", f.name, ": armed ", f.armed, ", crashed during start ",
                    f.at_start, ", during traffic ", f.in_traffic,
                    ", not reached in 1 s (SIGKILLed) ", f.not_reached);
  }
  const Counters& c = g_shared->c;
  printf(
      "crash_test summary (seed %u, %d workers, %d resources, modes %s)\n"
      "  iterations %d: %d crashes at fault points, %d plain SIGKILLs (0-100 ms), "
      "%d latchd deaths on its own%s\n"
      "  traffic: %llu acquire requests, %llu granted (locks: %llu sr, %llu sw, %llu ex), "
      "%llu refused busy, %llu releases; %llu broken connections, %llu resyncs, "
      "%llu locks of unanswered acquires released on resync; conversions: none (protocol has no "
      "convert)\n"
      "  failures: witness violations %llu, lost locks (worker) %llu, lost locks (status) %llu, "
      "token regressions %llu, journal inconsistencies %llu, state mismatches %llu, "
      "unexpected latchd errors %llu, latchd failures %llu\n"
      "  latchd log: %d LOCK FAILURE lines\n"
      "  time: %.1f s\n",
      seed, kWorkers, kResources, EnvOr("LATCHKEY_CRASH_MODES", "sr,sw,ex").c_str(), iterations,
      fault_crashes, sigkills, died_on_their_own, per_point.c_str(),
      static_cast<unsigned long long>(acquires), static_cast<unsigned long long>(grants),
      static_cast<unsigned long long>(by_mode[1]), static_cast<unsigned long long>(by_mode[2]),
      static_cast<unsigned long long>(by_mode[3]), static_cast<unsigned long long>(refusals),
      static_cast<unsigned long long>(releases), static_cast<unsigned long long>(transport),
      static_cast<unsigned long long>(resyncs), static_cast<unsigned long long>(resync_releases),
      static_cast<unsigned long long>(c.witness_violations.load()),
      static_cast<unsigned long long>(c.lost_locks.load()),
      static_cast<unsigned long long>(c.lost_locks_status.load()),
      static_cast<unsigned long long>(c.token_regressions.load()),
      static_cast<unsigned long long>(c.journal_inconsistencies.load()),
      static_cast<unsigned long long>(c.state_mismatches.load()),
      static_cast<unsigned long long>(c.unexpected_errors.load()),
      static_cast<unsigned long long>(c.latchd_failures.load()), lock_failure_lines,
      absl::ToDoubleSeconds(absl::Now() - began));
  const int n = std::min(g_shared->messages.load(), kMaxMessages);
  if (n > 0) {
    printf("first %d of %d failure messages:\n", n, g_shared->messages.load());
    for (int i = 0; i < n; ++i) printf("  %s\n", g_shared->message[i]);
  }
  for (const std::string& l : lock_failure_examples) printf("  latchd: %s\n", l.c_str());
  fflush(stdout);

  EXPECT_GT(grants, 0u) << "no traffic: the test proved nothing";
  EXPECT_EQ(c.witness_violations.load(), 0u) << "two owners held conflicting locks";
  EXPECT_EQ(c.lost_locks.load(), 0u) << "a granted lock was gone after a crash";
  EXPECT_EQ(c.lost_locks_status.load(), 0u) << "a granted lock was gone after a crash";
  EXPECT_EQ(c.token_regressions.load(), 0u);
  EXPECT_EQ(c.journal_inconsistencies.load(), 0u);
  EXPECT_EQ(c.state_mismatches.load(), 0u);
  EXPECT_EQ(c.unexpected_errors.load(), 0u);
  EXPECT_EQ(c.latchd_failures.load(), 0u);
  EXPECT_EQ(lock_failure_lines, 0) << "latchd reported lock failures";
  munmap(mem, sizeof(Shared));
}

}  // namespace
}  // namespace latchkey
