#include "core/journal.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <map>
#include <set>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "core/fault.h"

namespace latchkey {

// Schema, version 1. Both PRAGMA user_version and the meta 'schema' row
// must match, so a foreign SQLite file is never taken for a journal.
//
// u64 values (start_time, offset, fencing_token) are stored as the int64
// with the same bits: exact both ways, but tokens >= 2^63 read as negative
// numbers in the sqlite3 shell. backend_token is a BLOB: any bytes.
//
// "offset" is quoted everywhere: it is an SQL keyword.
namespace {

constexpr char kSchemaMarker[] = "latchkey-journal-1";
constexpr int kUserVersion = 1;
// Only latchd writes; a short wait covers latchctl's readers.
constexpr int kBusyTimeoutMs = 2000;
// ReadOnly copies a quiescent journal into memory up to this size.
constexpr off_t kMaxMemoryImage = 64 << 20;

constexpr char kCreateSql[] =
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE owners (uuid TEXT PRIMARY KEY, name TEXT NOT NULL,"
    " pid INTEGER NOT NULL, start_time INTEGER NOT NULL, host TEXT NOT NULL,"
    " policy TEXT NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE locks (owner_uuid TEXT NOT NULL, backend TEXT NOT NULL,"
    " lockspace TEXT NOT NULL, name TEXT NOT NULL, kind INTEGER NOT NULL,"
    " path TEXT NOT NULL, \"offset\" INTEGER NOT NULL, mode INTEGER NOT NULL,"
    " fencing_token INTEGER NOT NULL, backend_token BLOB NOT NULL,"
    " state INTEGER NOT NULL,"
    " PRIMARY KEY (owner_uuid, backend, lockspace, name)) WITHOUT ROWID;"
    "PRAGMA user_version = 1;";

constexpr char kSelectOwners[] =
    "SELECT uuid, name, pid, start_time, host, policy FROM owners ORDER BY uuid";
constexpr char kSelectLocks[] =
    "SELECT owner_uuid, backend, lockspace, name, kind, path, \"offset\", mode,"
    " fencing_token, backend_token, state FROM locks"
    " ORDER BY owner_uuid, backend, lockspace, name";

struct DbCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using DbPtr = std::unique_ptr<sqlite3, DbCloser>;

struct StmtFinalizer {
  void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); }
};
using StmtPtr = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

// Resets a (cached) statement when the scope ends, whatever happened.
class Resetter {
 public:
  explicit Resetter(sqlite3_stmt* s) : s_(s) {}
  ~Resetter() { sqlite3_reset(s_); }
  Resetter(const Resetter&) = delete;
  Resetter& operator=(const Resetter&) = delete;

 private:
  sqlite3_stmt* s_;
};

bool IsCorruptCode(int rc) {
  const int primary = rc & 0xff;
  return primary == SQLITE_CORRUPT || primary == SQLITE_NOTADB ||
         primary == SQLITE_FORMAT;
}

std::string SqliteText(sqlite3* db, int rc) {
  return absl::StrCat(sqlite3_errmsg(db), " (SQLite code ", rc, ")");
}

// Apply and Load: the header promises DataLoss or Internal.
absl::Status SqlError(const std::string& path, absl::string_view what,
                      sqlite3* db, int rc) {
  std::string msg = absl::StrCat("journal ", path, ": ", what, ": ", SqliteText(db, rc));
  if (IsCorruptCode(rc)) return absl::DataLossError(msg);
  return absl::InternalError(msg);
}

// Open and ReadOnly: errors the operator can act on get their own codes.
absl::Status OpenError(const std::string& path, absl::string_view what,
                       sqlite3* db, int rc) {
  std::string msg = absl::StrCat("journal ", path, ": ", what, ": ",
                                 db != nullptr ? SqliteText(db, rc)
                                               : std::string(sqlite3_errstr(rc)));
  switch (rc & 0xff) {
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_FORMAT:
      return absl::DataLossError(msg);
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::UnavailableError(msg);
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_AUTH:
      return absl::FailedPreconditionError(msg);
    default:
      return absl::InternalError(msg);
  }
}

absl::Status ErrnoError(const std::string& what, int err) {
  std::string msg = absl::StrCat(what, ": ", strerror(err));
  if (err == ENOENT) return absl::NotFoundError(msg);
  if (err == EACCES || err == EPERM || err == EROFS) {
    return absl::FailedPreconditionError(msg);
  }
  return absl::InternalError(msg);
}

bool Exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

std::string Quote(absl::string_view s) { return absl::StrCat("'", absl::CHexEscape(s), "'"); }

// Runs SQL without results (schema, pragmas, transaction control).
int Exec(sqlite3* db, const char* sql) {
  return sqlite3_exec(db, sql, nullptr, nullptr, nullptr);
}

int Prepare(sqlite3* db, const char* sql, StmtPtr* out, unsigned flags = 0) {
  sqlite3_stmt* s = nullptr;
  const int rc = sqlite3_prepare_v3(db, sql, -1, flags, &s, nullptr);
  out->reset(s);
  return rc;
}

void BindText(sqlite3_stmt* s, int i, const std::string& v) {
  sqlite3_bind_text(s, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
}

void BindBlob(sqlite3_stmt* s, int i, const std::string& v) {
  sqlite3_bind_blob(s, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
}

void BindU64(sqlite3_stmt* s, int i, uint64_t v) {
  sqlite3_bind_int64(s, i, static_cast<sqlite3_int64>(v));
}

std::string ColumnBytes(sqlite3_stmt* s, int col) {
  const void* p = sqlite3_column_blob(s, col);
  const int n = sqlite3_column_bytes(s, col);
  return p == nullptr ? std::string() : std::string(static_cast<const char*>(p), n);
}

// Reads one value of the single-column query `sql`; false when no row.
int QueryText(sqlite3* db, const char* sql, std::string* out, bool* found) {
  StmtPtr s;
  int rc = Prepare(db, sql, &s);
  if (rc != SQLITE_OK) return rc;
  rc = sqlite3_step(s.get());
  *found = rc == SQLITE_ROW;
  if (rc == SQLITE_ROW) {
    *out = ColumnBytes(s.get(), 0);
    return SQLITE_OK;
  }
  return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

// Decides whether `db` holds a usable journal. Returns an error only for
// trouble with the file that is not the file's content (locked, I/O); a
// content problem (not a database, corrupt, foreign schema) comes back as OK
// with `*bad` saying what is wrong. On success `*boot_id` is the stored one.
absl::Status CheckContents(const std::string& path, sqlite3* db, std::string* bad,
                           std::string* boot_id) {
  bad->clear();
  std::vector<std::string> rows;
  {
    StmtPtr s;
    int rc = Prepare(db, "PRAGMA quick_check", &s);
    while (rc == SQLITE_OK) {
      const int step = sqlite3_step(s.get());
      if (step == SQLITE_ROW) {
        if (rows.size() < 5) rows.push_back(ColumnBytes(s.get(), 0));
        continue;
      }
      if (step != SQLITE_DONE) rc = step;
      break;
    }
    if (rc != SQLITE_OK) {
      if (IsCorruptCode(rc)) {
        *bad = absl::StrCat("SQLite cannot read it: ", SqliteText(db, rc));
        return absl::OkStatus();
      }
      return OpenError(path, "reading", db, rc);
    }
  }
  if (rows.size() != 1 || rows[0] != "ok") {
    *bad = absl::StrCat("integrity check failed: ", absl::StrJoin(rows, "; "));
    return absl::OkStatus();
  }

  std::string version_text;
  bool found = false;
  int rc = QueryText(db, "PRAGMA user_version", &version_text, &found);
  if (rc != SQLITE_OK) return OpenError(path, "reading user_version", db, rc);
  std::string marker;
  rc = QueryText(db, "SELECT value FROM meta WHERE key = 'schema'", &marker, &found);
  if (rc == SQLITE_ERROR) {
    *bad = absl::StrCat("unknown schema (user_version ", version_text,
                        "): ", sqlite3_errmsg(db));
    return absl::OkStatus();
  }
  if (rc != SQLITE_OK) return OpenError(path, "reading the schema marker", db, rc);
  if (!found) {
    *bad = absl::StrCat("unknown schema: no schema marker (user_version ", version_text, ")");
    return absl::OkStatus();
  }
  if (marker != kSchemaMarker || version_text != absl::StrCat(kUserVersion)) {
    *bad = absl::StrCat("unknown schema ", Quote(marker), " with user_version ",
                        version_text, " (expected '", kSchemaMarker,
                        "' with user_version ", kUserVersion, ")");
    return absl::OkStatus();
  }
  rc = QueryText(db, "SELECT value FROM meta WHERE key = 'boot_id'", boot_id, &found);
  if (rc != SQLITE_OK) return OpenError(path, "reading the boot id", db, rc);
  if (!found) {
    *bad = "schema marker present but no boot_id row in table meta";
    return absl::OkStatus();
  }
  // The marker could be right and a table still be wrong; preparing the
  // reads checks every column exists.
  for (const char* sql : {kSelectOwners, kSelectLocks}) {
    StmtPtr s;
    rc = Prepare(db, sql, &s);
    if (rc == SQLITE_ERROR) {
      *bad = absl::StrCat("schema does not match its marker: ", sqlite3_errmsg(db));
      return absl::OkStatus();
    }
    if (rc != SQLITE_OK) return OpenError(path, "reading the schema", db, rc);
  }
  return absl::OkStatus();
}

// Reads the columns of one row, checking SQLite's dynamic types; the first
// mismatch is kept in problem().
class RowReader {
 public:
  explicit RowReader(sqlite3_stmt* s) : s_(s) {}

  std::string Text(int col, const char* name) {
    Expect(col, name, SQLITE_TEXT, "text");
    return ColumnBytes(s_, col);
  }
  std::string Bytes(int col, const char* name) {
    const int t = sqlite3_column_type(s_, col);
    if (t != SQLITE_BLOB && t != SQLITE_TEXT) Expect(col, name, SQLITE_BLOB, "a blob");
    return ColumnBytes(s_, col);
  }
  int64_t Int(int col, const char* name) {
    Expect(col, name, SQLITE_INTEGER, "an integer");
    return sqlite3_column_int64(s_, col);
  }
  uint64_t U64(int col, const char* name) { return static_cast<uint64_t>(Int(col, name)); }

  const std::string& problem() const { return problem_; }

 private:
  void Expect(int col, const char* name, int type, const char* what) {
    if (!problem_.empty() || sqlite3_column_type(s_, col) == type) return;
    problem_ = absl::StrCat("column ", name, " is not ", what);
  }

  sqlite3_stmt* s_;
  std::string problem_;
};

absl::StatusOr<JournalContents> ReadContents(const std::string& path, sqlite3* db) {
  // One read transaction: owners and locks from the same commit.
  int rc = Exec(db, "BEGIN");
  if (rc != SQLITE_OK) return SqlError(path, "starting a read", db, rc);
  struct EndRead {
    sqlite3* db;
    ~EndRead() { Exec(db, "COMMIT"); }
  } end_read{db};

  JournalContents out;
  std::map<std::string, const Owner*> valid_owners;
  std::set<std::string> all_owners;
  StmtPtr s;
  rc = Prepare(db, kSelectOwners, &s);
  if (rc != SQLITE_OK) return SqlError(path, "reading owners", db, rc);
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) {
    RowReader r(s.get());
    JournalOwner o;
    o.owner.uuid = r.Text(0, "uuid");
    o.owner.name = r.Text(1, "name");
    o.owner.pid = r.Int(2, "pid");
    o.owner.start_time = r.U64(3, "start_time");
    o.owner.host = r.Text(4, "host");
    o.policy = r.Text(5, "policy");
    const std::string raw_uuid = ColumnBytes(s.get(), 0);
    all_owners.insert(raw_uuid);
    std::string problem = r.problem();
    if (problem.empty()) {
      absl::Status v = o.owner.Validate();
      if (!v.ok()) problem = std::string(v.message());
    }
    if (!problem.empty()) {
      out.problems.push_back(absl::StrCat("owner row ", Quote(raw_uuid), ": ", problem));
      continue;
    }
    out.owners.push_back(std::move(o));
  }
  if (rc != SQLITE_DONE) return SqlError(path, "reading owners", db, rc);
  // Pointers into out.owners are stable now that it is complete.
  for (const JournalOwner& o : out.owners) valid_owners[o.owner.uuid] = &o.owner;

  rc = Prepare(db, kSelectLocks, &s);
  if (rc != SQLITE_OK) return SqlError(path, "reading locks", db, rc);
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) {
    RowReader r(s.get());
    JournalLock l;
    const std::string uuid = r.Text(0, "owner_uuid");
    l.backend = r.Text(1, "backend");
    l.record.resource.lockspace = r.Text(2, "lockspace");
    l.record.resource.name = r.Text(3, "name");
    const int64_t kind = r.Int(4, "kind");
    l.record.resource.path = r.Text(5, "path");
    l.record.resource.offset = r.U64(6, "offset");
    const int64_t mode = r.Int(7, "mode");
    l.record.fencing_token = r.U64(8, "fencing_token");
    l.record.backend_token = r.Bytes(9, "backend_token");
    const int64_t state = r.Int(10, "state");

    std::string problem = r.problem();
    if (problem.empty()) {
      auto it = valid_owners.find(uuid);
      if (it != valid_owners.end()) {
        l.record.owner = *it->second;
      } else if (all_owners.count(uuid) != 0) {
        problem = "its owner row is invalid";
      } else {
        problem = "it has no owner row";
      }
    }
    if (problem.empty()) {
      absl::Status v = ValidateName("backend", l.backend);
      if (v.ok()) {
        if (kind != 1 && kind != 2) {
          v = absl::InvalidArgumentError(absl::StrCat("unknown resource kind ", kind));
        } else {
          l.record.resource.kind = static_cast<ResourceKind>(kind);
          v = l.record.resource.Validate();
        }
      }
      if (v.ok()) {
        if (mode < 1 || mode > 3) {
          v = absl::InvalidArgumentError(absl::StrCat("unknown lock mode number ", mode));
        } else {
          absl::StatusOr<LockMode> m = LockModeFromInt(static_cast<uint32_t>(mode));
          if (m.ok()) l.record.mode = *m;
          v = m.status();
        }
      }
      if (v.ok() && (state < 1 || state > 3)) {
        v = absl::InvalidArgumentError(absl::StrCat("unknown lock state ", state));
      }
      if (!v.ok()) problem = std::string(v.message());
      l.state = static_cast<JournalLockState>(state);
    }
    if (!problem.empty()) {
      out.problems.push_back(absl::StrCat(
          "lock row (owner ", Quote(ColumnBytes(s.get(), 0)), ", backend ",
          Quote(ColumnBytes(s.get(), 1)), ", lockspace ", Quote(ColumnBytes(s.get(), 2)),
          ", name ", Quote(ColumnBytes(s.get(), 3)), "): ", problem));
      continue;
    }
    out.locks.push_back(std::move(l));
  }
  if (rc != SQLITE_DONE) return SqlError(path, "reading locks", db, rc);
  return out;
}

std::string UtcStamp() {
  const time_t now = time(nullptr);
  struct tm tm;
  gmtime_r(&now, &tm);
  char buf[32];
  strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}

constexpr const char* kCompanions[] = {"-wal", "-shm", "-journal"};

// Renames the journal and its companion files to a fresh
// "<path>.corrupt-<stamp>[.N]" name; returns that name.
absl::StatusOr<std::string> MoveAside(const std::string& path) {
  const std::string base = absl::StrCat(path, ".corrupt-", UtcStamp());
  std::string dest = base;
  auto taken = [](const std::string& d) {
    if (Exists(d)) return true;
    for (const char* c : kCompanions) {
      if (Exists(d + c)) return true;
    }
    return false;
  };
  for (int i = 1; taken(dest); ++i) dest = absl::StrCat(base, ".", i);
  if (rename(path.c_str(), dest.c_str()) != 0) {
    return ErrnoError(absl::StrCat("journal ", path, ": cannot move it aside to ", dest), errno);
  }
  // A companion left behind would be read with the fresh database: a stale
  // WAL replayed onto it would corrupt it. So failing here fails Open.
  for (const char* c : kCompanions) {
    const std::string from = path + c;
    if (rename(from.c_str(), (dest + c).c_str()) != 0 && errno != ENOENT) {
      return ErrnoError(absl::StrCat("journal ", path, ": cannot move ", from,
                                     " aside to ", dest, c),
                        errno);
    }
  }
  return dest;
}

// Builds a complete journal under a temporary name and renames it into
// place, so `path` is never an empty or half-made journal.
absl::Status CreateFresh(const std::string& path, const std::string& boot_id) {
  const std::string tmp = path + ".new";
  for (const std::string& p : {tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"}) {
    if (unlink(p.c_str()) != 0 && errno != ENOENT) {
      return ErrnoError(absl::StrCat("journal ", path, ": cannot remove stale ", p), errno);
    }
  }
  // Created by hand so the mode is 0600 whatever the umask; SQLite gives its
  // -wal and -shm files the database file's mode.
  const int fd = open(tmp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    // Whatever the errno, the directory cannot take the journal: fix that first.
    return absl::FailedPreconditionError(
        absl::StrCat("journal ", path, ": cannot create ", tmp, ": ", strerror(errno)));
  }
  const int chmod_rc = fchmod(fd, 0600);
  const int chmod_errno = errno;
  close(fd);
  if (chmod_rc != 0) {
    unlink(tmp.c_str());
    return ErrnoError(absl::StrCat("journal ", path, ": cannot chmod ", tmp), chmod_errno);
  }

  absl::Status status;
  {
    sqlite3* raw = nullptr;
    int rc = sqlite3_open_v2(tmp.c_str(), &raw, SQLITE_OPEN_READWRITE, nullptr);
    DbPtr db(raw);
    if (rc == SQLITE_OK) rc = Exec(db.get(), "BEGIN");
    if (rc == SQLITE_OK) rc = Exec(db.get(), kCreateSql);
    StmtPtr s;
    if (rc == SQLITE_OK) {
      rc = Prepare(db.get(), "INSERT INTO meta (key, value) VALUES ('schema', ?1), ('boot_id', ?2)", &s);
    }
    if (rc == SQLITE_OK) {
      sqlite3_bind_text(s.get(), 1, kSchemaMarker, -1, SQLITE_STATIC);
      BindText(s.get(), 2, boot_id);
      rc = sqlite3_step(s.get());
      if (rc == SQLITE_DONE) rc = SQLITE_OK;
    }
    s.reset();
    if (rc == SQLITE_OK) rc = Exec(db.get(), "COMMIT");
    if (rc != SQLITE_OK) status = OpenError(path, absl::StrCat("creating ", tmp), db.get(), rc);
  }
  if (status.ok()) {
    // Orphans of a journal that was deleted by hand: a stale WAL would be
    // replayed onto the new database.
    for (const char* c : kCompanions) {
      const std::string p = path + c;
      if (unlink(p.c_str()) != 0 && errno != ENOENT) {
        status = ErrnoError(absl::StrCat("journal ", path, ": cannot remove stale ", p), errno);
        break;
      }
    }
  }
  if (status.ok() && rename(tmp.c_str(), path.c_str()) != 0) {
    status = ErrnoError(absl::StrCat("journal ", path, ": cannot rename ", tmp), errno);
  }
  if (!status.ok()) unlink(tmp.c_str());
  return status;
}

// Opens an existing journal file and checks it; see CheckContents for how
// `bad` and the status split the outcomes.
absl::Status OpenExisting(const std::string& path, DbPtr* out, std::string* bad,
                          std::string* boot_id) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return ErrnoError(absl::StrCat("journal ", path), errno);
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("journal ", path, " is not a regular file"));
  }
  // SQLite would take an empty file for an empty database.
  if (st.st_size == 0) {
    *bad = "the file is empty (0 bytes)";
    return absl::OkStatus();
  }
  sqlite3* raw = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &raw,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr);
  DbPtr db(raw);
  if (rc != SQLITE_OK) return OpenError(path, "opening", db.get(), rc);
  sqlite3_extended_result_codes(db.get(), 1);
  sqlite3_busy_timeout(db.get(), kBusyTimeoutMs);
  // Until the file is known good, closing must not checkpoint a WAL into
  // it: a file moved aside should stay as it was found.
  sqlite3_db_config(db.get(), SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr);
  absl::Status s = CheckContents(path, db.get(), bad, boot_id);
  if (!s.ok()) return s;
  // A bad file's connection closes here, before the file is moved aside.
  if (bad->empty()) *out = std::move(db);
  return absl::OkStatus();
}

}  // namespace

const char* JournalLockStateName(JournalLockState state) {
  switch (state) {
    case JournalLockState::kHeld:
      return "held";
    case JournalLockState::kAcquiring:
      return "acquiring";
    case JournalLockState::kReleasing:
      return "releasing";
  }
  return "invalid-state";
}

struct Journal::Db {
  absl::Mutex mu;
  // Declared first so it is destroyed last, after the statements.
  DbPtr db ABSL_GUARDED_BY(mu);
  StmtPtr begin ABSL_GUARDED_BY(mu);
  StmtPtr commit ABSL_GUARDED_BY(mu);
  StmtPtr rollback ABSL_GUARDED_BY(mu);
  StmtPtr put_owner ABSL_GUARDED_BY(mu);
  StmtPtr owner_exists ABSL_GUARDED_BY(mu);
  StmtPtr put_lock ABSL_GUARDED_BY(mu);
  StmtPtr remove_lock ABSL_GUARDED_BY(mu);
  StmtPtr remove_owner_locks ABSL_GUARDED_BY(mu);
  StmtPtr remove_owner ABSL_GUARDED_BY(mu);
};

Journal::Journal(std::string path, std::unique_ptr<Db> db)
    : path_(std::move(path)), db_(std::move(db)) {}

Journal::~Journal() = default;

absl::StatusOr<std::unique_ptr<Journal>> Journal::Open(const std::string& path,
                                                       const std::string& boot_id,
                                                       JournalOpenReport* report) {
  JournalOpenReport ignored;
  if (report == nullptr) report = &ignored;
  *report = JournalOpenReport();

  const size_t slash = path.rfind('/');
  const std::string dir =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  struct stat st;
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "journal ", path, ": directory ", dir, " does not exist or is not a directory"));
  }
  // Writes go to the directory too (-wal, -shm, renames).
  if (access(dir.c_str(), W_OK | X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "journal ", path, ": directory ", dir, " is not writable: ", strerror(errno)));
  }

  auto d = std::make_unique<Db>();
  absl::MutexLock lock(&d->mu);
  std::string stored_boot_id;
  for (int attempt = 0;; ++attempt) {
    if (!Exists(path)) {
      absl::Status s = CreateFresh(path, boot_id);
      if (!s.ok()) return s;
      report->created = true;
    }
    std::string bad;
    absl::Status s = OpenExisting(path, &d->db, &bad, &stored_boot_id);
    if (!s.ok()) return s;
    if (bad.empty()) break;
    if (attempt > 0) {
      return absl::InternalError(
          absl::StrCat("journal ", path, ": a freshly created journal fails its check: ", bad));
    }
    absl::StatusOr<std::string> dest = MoveAside(path);
    if (!dest.ok()) return dest.status();
    report->moved_aside = *dest;
    report->moved_aside_reason = bad;
  }
  sqlite3* db = d->db.get();
  sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 0, nullptr);

  // WAL without a sync per commit: see the header's durability paragraph.
  // NORMAL (not OFF) still syncs at checkpoints, so a machine crash loses
  // recent commits (which the boot id discards anyway) but does not corrupt
  // the file.
  std::string mode;
  bool found = false;
  int rc = QueryText(db, "PRAGMA journal_mode = WAL", &mode, &found);
  if (rc != SQLITE_OK) return OpenError(path, "switching to WAL mode", db, rc);
  if (absl::AsciiStrToLower(mode) != "wal") {
    return absl::FailedPreconditionError(absl::StrCat(
        "journal ", path, ": the file system does not support SQLite's WAL mode (got ",
        mode, ")"));
  }
  rc = Exec(db, "PRAGMA synchronous = NORMAL; PRAGMA journal_size_limit = 4194304");
  if (rc != SQLITE_OK) return OpenError(path, "setting pragmas", db, rc);

  if (stored_boot_id != boot_id) {
    std::string owners, locks;
    rc = Exec(db, "BEGIN IMMEDIATE");
    if (rc == SQLITE_OK) rc = QueryText(db, "SELECT count(*) FROM owners", &owners, &found);
    if (rc == SQLITE_OK) rc = QueryText(db, "SELECT count(*) FROM locks", &locks, &found);
    if (rc == SQLITE_OK) rc = Exec(db, "DELETE FROM locks; DELETE FROM owners");
    StmtPtr s;
    if (rc == SQLITE_OK) {
      rc = Prepare(db, "UPDATE meta SET value = ?1 WHERE key = 'boot_id'", &s);
    }
    if (rc == SQLITE_OK) {
      BindText(s.get(), 1, boot_id);
      rc = sqlite3_step(s.get());
      if (rc == SQLITE_DONE) rc = SQLITE_OK;
    }
    s.reset();
    if (rc == SQLITE_OK) rc = Exec(db, "COMMIT");
    if (rc != SQLITE_OK) {
      absl::Status err = OpenError(path, "discarding the rows of an earlier boot", db, rc);
      if (!sqlite3_get_autocommit(db)) Exec(db, "ROLLBACK");
      return err;
    }
    report->previous_boot_id = stored_boot_id.empty() ? "(unknown)" : stored_boot_id;
    // count(*) is always a number.
    if (!absl::SimpleAtoi(owners, &report->discarded_owners)) report->discarded_owners = 0;
    if (!absl::SimpleAtoi(locks, &report->discarded_locks)) report->discarded_locks = 0;
  }

  struct {
    StmtPtr* stmt;
    const char* sql;
  } const statements[] = {
      {&d->begin, "BEGIN IMMEDIATE"},
      {&d->commit, "COMMIT"},
      {&d->rollback, "ROLLBACK"},
      {&d->put_owner,
       "INSERT OR REPLACE INTO owners (uuid, name, pid, start_time, host, policy)"
       " VALUES (?1, ?2, ?3, ?4, ?5, ?6)"},
      {&d->owner_exists, "SELECT 1 FROM owners WHERE uuid = ?1"},
      {&d->put_lock,
       "INSERT OR REPLACE INTO locks (owner_uuid, backend, lockspace, name, kind,"
       " path, \"offset\", mode, fencing_token, backend_token, state)"
       " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"},
      {&d->remove_lock,
       "DELETE FROM locks WHERE owner_uuid = ?1 AND backend = ?2 AND lockspace = ?3"
       " AND name = ?4"},
      {&d->remove_owner_locks, "DELETE FROM locks WHERE owner_uuid = ?1"},
      {&d->remove_owner, "DELETE FROM owners WHERE uuid = ?1"},
  };
  for (const auto& st : statements) {
    rc = Prepare(db, st.sql, st.stmt, SQLITE_PREPARE_PERSISTENT);
    if (rc != SQLITE_OK) return OpenError(path, "preparing statements", db, rc);
  }
  return std::unique_ptr<Journal>(new Journal(path, std::move(d)));
}

absl::Status Journal::Apply(const JournalChange& change) {
  if (change.empty()) return absl::OkStatus();
  // Bad input is refused before the transaction, so it never reaches a row
  // that Load would then have to reject.
  for (const JournalOwner& o : change.put_owners) {
    absl::Status v = o.owner.Validate();
    if (!v.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("journal ", path_, ": ", v.message()));
    }
  }
  for (const JournalLock& l : change.put_locks) {
    absl::Status v = ValidateName("backend", l.backend);
    if (v.ok()) v = l.record.resource.Validate();
    if (v.ok()) v = LockModeFromInt(static_cast<uint32_t>(l.record.mode)).status();
    if (v.ok() && (static_cast<int>(l.state) < 1 || static_cast<int>(l.state) > 3)) {
      v = absl::InvalidArgumentError(
          absl::StrCat("unknown lock state ", static_cast<int>(l.state)));
    }
    if (v.ok() && l.record.backend_token.size() > (1u << 30)) {
      v = absl::InvalidArgumentError("backend token is larger than 1 GiB");
    }
    if (!v.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "journal ", path_, ": lock on ", l.record.resource.Describe(), ": ", v.message()));
    }
  }

  Db& d = *db_;
  absl::MutexLock lock(&d.mu);
  sqlite3* db = d.db.get();
  // Runs a cached statement to completion; OK or the SQLite code.
  auto run = [](sqlite3_stmt* s) {
    Resetter reset(s);
    const int rc = sqlite3_step(s);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
  };

  int rc = run(d.begin.get());
  if (rc != SQLITE_OK) return SqlError(path_, "starting a transaction", db, rc);

  absl::Status status;
  auto fail = [&](absl::string_view what) {
    status = SqlError(path_, what, db, rc);
  };
  for (const JournalOwner& o : change.put_owners) {
    sqlite3_stmt* s = d.put_owner.get();
    BindText(s, 1, o.owner.uuid);
    BindText(s, 2, o.owner.name);
    sqlite3_bind_int64(s, 3, o.owner.pid);
    BindU64(s, 4, o.owner.start_time);
    BindText(s, 5, o.owner.host);
    BindText(s, 6, o.policy);
    if ((rc = run(s)) != SQLITE_OK) {
      fail(absl::StrCat("writing owner ", o.owner.uuid));
      break;
    }
  }
  for (size_t i = 0; status.ok() && i < change.put_locks.size(); ++i) {
    const JournalLock& l = change.put_locks[i];
    const Resource& r = l.record.resource;
    {
      sqlite3_stmt* s = d.owner_exists.get();
      Resetter reset(s);
      BindText(s, 1, l.record.owner.uuid);
      rc = sqlite3_step(s);
      if (rc == SQLITE_DONE) {
        status = absl::InvalidArgumentError(absl::StrCat(
            "journal ", path_, ": lock on ", r.Describe(), " (backend ", l.backend,
            ") names owner ", l.record.owner.uuid,
            ", which has no owner row; put the owner first"));
        break;
      }
      if (rc != SQLITE_ROW) {
        fail("looking up an owner");
        break;
      }
    }
    sqlite3_stmt* s = d.put_lock.get();
    BindText(s, 1, l.record.owner.uuid);
    BindText(s, 2, l.backend);
    BindText(s, 3, r.lockspace);
    BindText(s, 4, r.name);
    sqlite3_bind_int(s, 5, static_cast<int>(r.kind));
    BindText(s, 6, r.path);
    BindU64(s, 7, r.offset);
    sqlite3_bind_int(s, 8, static_cast<int>(l.record.mode));
    BindU64(s, 9, l.record.fencing_token);
    BindBlob(s, 10, l.record.backend_token);
    sqlite3_bind_int(s, 11, static_cast<int>(l.state));
    if ((rc = run(s)) != SQLITE_OK) fail(absl::StrCat("writing the lock on ", r.Describe()));
  }
  for (size_t i = 0; status.ok() && i < change.remove_locks.size(); ++i) {
    const JournalLock& l = change.remove_locks[i];
    sqlite3_stmt* s = d.remove_lock.get();
    BindText(s, 1, l.record.owner.uuid);
    BindText(s, 2, l.backend);
    BindText(s, 3, l.record.resource.lockspace);
    BindText(s, 4, l.record.resource.name);
    if ((rc = run(s)) != SQLITE_OK) {
      fail(absl::StrCat("removing the lock on ", l.record.resource.Describe()));
    }
  }
  for (size_t i = 0; status.ok() && i < change.remove_owners.size(); ++i) {
    const std::string& uuid = change.remove_owners[i];
    BindText(d.remove_owner_locks.get(), 1, uuid);
    BindText(d.remove_owner.get(), 1, uuid);
    if ((rc = run(d.remove_owner_locks.get())) != SQLITE_OK ||
        (rc = run(d.remove_owner.get())) != SQLITE_OK) {
      fail(absl::StrCat("removing owner ", uuid));
    }
  }
  if (status.ok()) {
    FaultPoint("journal.before-commit");
    rc = run(d.commit.get());
    if (rc == SQLITE_OK) {
      FaultPoint("journal.after-commit");
      return absl::OkStatus();
    }
    fail("committing");
  }
  // Some errors end the transaction by themselves.
  if (!sqlite3_get_autocommit(db)) run(d.rollback.get());
  return status;
}

absl::StatusOr<JournalContents> Journal::Load() {
  absl::MutexLock lock(&db_->mu);
  return ReadContents(path_, db_->db.get());
}

absl::StatusOr<JournalContents> Journal::ReadOnly(const std::string& path,
                                                  std::string* boot_id) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return absl::NotFoundError(absl::StrCat("journal ", path, " does not exist"));
    }
    return ErrnoError(absl::StrCat("journal ", path), errno);
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("journal ", path, " is not a regular file"));
  }
  if (st.st_size == 0) {
    return absl::DataLossError(
        absl::StrCat("journal ", path, " is unusable: the file is empty (0 bytes)"));
  }

  // Without a -wal file the journal is quiescent and complete in its main
  // file. A read-only SQLite connection would still create (and leave) a
  // -wal and -shm; reading a copy in memory changes nothing on disk.
  std::string image;  // Outlives `db`, which reads it in place.
  DbPtr db;
  const std::string wal = path + "-wal";
  if (!Exists(wal) && st.st_size <= kMaxMemoryImage) {
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoError(absl::StrCat("journal ", path), errno);
    image.resize(static_cast<size_t>(st.st_size));
    size_t got = 0;
    while (got < image.size()) {
      const ssize_t n = read(fd, &image[got], image.size() - got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    close(fd);
    image.resize(got);
    // A writer that started meanwhile may have changed the file: fall back.
    if (!Exists(wal) && !image.empty()) {
      // Bytes 18 and 19 say "WAL"; an in-memory database cannot have one.
      if (image.size() >= 100 && image[18] == 2 && image[19] == 2) {
        image[18] = image[19] = 1;
      }
      sqlite3* raw = nullptr;
      int rc = sqlite3_open_v2(":memory:", &raw, SQLITE_OPEN_READWRITE, nullptr);
      db.reset(raw);
      if (rc == SQLITE_OK) {
        rc = sqlite3_deserialize(db.get(), "main",
                                 reinterpret_cast<unsigned char*>(&image[0]),
                                 static_cast<sqlite3_int64>(image.size()),
                                 static_cast<sqlite3_int64>(image.size()),
                                 SQLITE_DESERIALIZE_READONLY);
      }
      if (rc != SQLITE_OK) return OpenError(path, "reading a copy", db.get(), rc);
    }
  }
  if (db == nullptr) {
    sqlite3* raw = nullptr;
    const int rc = sqlite3_open_v2(path.c_str(), &raw,
                                   SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr);
    db.reset(raw);
    if (rc != SQLITE_OK) return OpenError(path, "opening read-only", db.get(), rc);
    sqlite3_busy_timeout(db.get(), kBusyTimeoutMs);
  }
  sqlite3_extended_result_codes(db.get(), 1);

  std::string bad, stored_boot_id;
  absl::Status s = CheckContents(path, db.get(), &bad, &stored_boot_id);
  if (!s.ok()) return s;
  if (!bad.empty()) {
    return absl::DataLossError(absl::StrCat("journal ", path, " is unusable: ", bad));
  }
  absl::StatusOr<JournalContents> contents = ReadContents(path, db.get());
  if (contents.ok() && boot_id != nullptr) *boot_id = stored_boot_id;
  return contents;
}

std::string CurrentBootId() {
  const int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  char buf[128];
  const ssize_t n = read(fd, buf, sizeof buf);
  close(fd);
  if (n <= 0) return "";
  return std::string(absl::StripAsciiWhitespace(absl::string_view(buf, n)));
}

}  // namespace latchkey
