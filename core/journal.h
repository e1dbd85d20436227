// The journal: what latchd holds, persisted so a restarted latchd can adopt
// it. One SQLite database under the agent's state directory.
//
// It stores owners (identity and lock-failure policy) and locks (owner,
// backend, resource, mode, fencing token, the backend's own token) plus the
// boot id of the machine. Every Apply is one SQLite transaction: a crash at
// any instant, even inside Apply, leaves either the state before it or the
// state after it.
//
// Lock rows carry a state. `kHeld` is an ordinary lock. `kAcquiring` and
// `kReleasing` are write-ahead intents, used by latchd for backends whose
// locks survive their holder (DLM, sanlock): written before the backend call
// so that a crash can never leave a lock in a backend that the journal does
// not know of. Backends whose locks die with latchd (posixfd) need no
// intents: one Apply per acquire or release.
//
// Durability: records are only ever used within one boot (Open discards
// rows of an earlier boot), so a commit needs to survive a crash of the
// process, not of the machine. The journal therefore runs in WAL mode and
// does not fsync each commit; a machine crash at worst leaves a database
// that Open detects as corrupt and moves aside.
//
// Example:
//   JournalOpenReport report;
//   absl::StatusOr<std::unique_ptr<Journal>> j =
//       Journal::Open("/run/latchkey/journal.db", CurrentBootId(), &report);
//   JournalChange c;
//   c.put_locks.push_back(JournalLock{"posixfd", record, JournalLockState::kHeld});
//   absl::Status s = (*j)->Apply(c);
//
// Thread safety: a Journal may be used from many threads; calls serialise.
#ifndef LATCHKEY_CORE_JOURNAL_H_
#define LATCHKEY_CORE_JOURNAL_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/backend.h"

namespace latchkey {

enum class JournalLockState { kHeld = 1, kAcquiring = 2, kReleasing = 3 };

// "held", "acquiring", "releasing".
const char* JournalLockStateName(JournalLockState state);

struct JournalOwner {
  Owner owner;
  // latchd's lock-failure policy, opaque to the journal (latchd writes
  // "NAME/GRACE_MS", e.g. "terminate/5000").
  std::string policy;
};

// A lock row. Its key is (record.owner.uuid, backend, record.resource
// lockspace, record.resource name). The owner row must exist (put it in the
// same or an earlier change).
struct JournalLock {
  std::string backend;
  LockRecord record;
  JournalLockState state = JournalLockState::kHeld;
};

// One transaction's worth of changes, applied in this order: put_owners,
// put_locks, remove_locks, remove_owners.
struct JournalChange {
  std::vector<JournalOwner> put_owners;   // insert or replace, by uuid
  std::vector<JournalLock> put_locks;     // insert or replace, by key
  std::vector<JournalLock> remove_locks;  // by key; other fields ignored
  std::vector<std::string> remove_owners; // by uuid; removes their locks too

  bool empty() const {
    return put_owners.empty() && put_locks.empty() && remove_locks.empty() &&
           remove_owners.empty();
  }
};

struct JournalContents {
  std::vector<JournalOwner> owners;
  std::vector<JournalLock> locks;
  // Rows that could not be turned into an owner or a lock (bad uuid, name,
  // mode, ...), one message each naming the row; they are not returned,
  // so nothing is ever adopted on a guess.
  std::vector<std::string> problems;
};

// What Open found, for the caller to log.
struct JournalOpenReport {
  bool created = false;  // no journal existed (or it was moved aside)
  // Non-empty when an unreadable or corrupt journal was renamed to this
  // path; `moved_aside_reason` says what was wrong with it.
  std::string moved_aside;
  std::string moved_aside_reason;
  // Non-empty when the journal was written during another boot; its rows
  // were discarded.
  std::string previous_boot_id;
  size_t discarded_owners = 0;
  size_t discarded_locks = 0;
};

class Journal {
 public:
  // Opens the journal at `path`, creating it (mode 0600) when missing. The
  // directory must exist. A file that is not a journal, fails SQLite's
  // integrity check or has an unknown schema is renamed to
  // "<path>.corrupt-<UTC time>" (with its -wal/-shm files) and a fresh
  // journal is created. Rows from a boot other than `boot_id` are deleted.
  // Errors: FailedPrecondition when the directory is missing or not
  // writable, naming the path.
  static absl::StatusOr<std::unique_ptr<Journal>> Open(const std::string& path,
                                                       const std::string& boot_id,
                                                       JournalOpenReport* report);

  // Reads a journal without creating, repairing or changing anything (for
  // `latchctl journal`). `boot_id` receives the boot it was written in.
  static absl::StatusOr<JournalContents> ReadOnly(const std::string& path,
                                                  std::string* boot_id);

  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  // Applies `change` as one transaction. On error nothing changed.
  // InvalidArgument for a lock whose owner row does not exist; DataLoss
  // when SQLite reports corruption; Internal for other SQLite errors.
  absl::Status Apply(const JournalChange& change);

  // Every owner and lock, owners by uuid, locks by key.
  absl::StatusOr<JournalContents> Load();

  const std::string& path() const { return path_; }

 private:
  struct Db;
  Journal(std::string path, std::unique_ptr<Db> db);

  std::string path_;
  std::unique_ptr<Db> db_;
};

// This boot's id (/proc/sys/kernel/random/boot_id), or "" when unknown.
std::string CurrentBootId();

}  // namespace latchkey

#endif  // LATCHKEY_CORE_JOURNAL_H_
