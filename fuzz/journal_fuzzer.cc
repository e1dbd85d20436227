// Fuzz target: decoding the journal's rows (core/journal.h), through the
// public API only.
//
// A journal is created once per process in a scratch directory. Each input
// is either
//   * rows (first byte & 0x0f != 0x0f): the owners and locks tables are
//     emptied and filled with fuzzed rows, written directly with SQLite
//     (any column may get any SQLite type: integers, text, blobs, reals,
//     or a value from a pool of meaningful ones); then Load() and
//     ReadOnly() read them back;
//   * a whole file (first byte & 0x0f == 0x0f): the rest of the input is
//     written as a journal file, read with ReadOnly() and opened with
//     Open() (which may move it aside as corrupt).
//
// Properties for rows: every row comes back either as an owner or lock or
// as exactly one problem (nothing dropped silently); every owner and lock
// returned is valid (owner, backend name, resource, mode, state) and each
// lock's owner is among the owners; Load() and ReadOnly() agree.
#include <dirent.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/journal.h"
#include "core/lock_mode.h"
#include "core/owner.h"
#include "core/resource.h"
#include "fuzz/fuzz_util.h"

namespace latchkey {
namespace {

constexpr char kBoot[] = "fuzz-boot-id";

struct Value {
  enum Kind { kInt, kText, kBlob, kReal } kind = kInt;
  int64_t i = 0;
  double d = 0;
  std::string s;
  static Value Int(int64_t v) { Value x; x.kind = kInt; x.i = v; return x; }
  static Value Text(std::string v) { Value x; x.kind = kText; x.s = std::move(v); return x; }
  static Value Blob(std::string v) { Value x; x.kind = kBlob; x.s = std::move(v); return x; }
};

const std::vector<Value>& UuidPool() {
  static const auto* p = new std::vector<Value>{
      Value::Text("6f1c2e9a-1b2c-4d3e-8f90-0123456789ab"),
      Value::Text("6F1C2E9A-1B2C-4D3E-8F90-0123456789AB"),
      Value::Text("00000000-0000-0000-0000-000000000000"),
      Value::Text("6f1c2e9a-1b2c-4d3e-8f90-0123456789a"), Value::Text("")};
  return *p;
}

// Meaningful values for each column, by table and column index.
const std::vector<Value>& Pool(bool lock, int col) {
  static const auto* owners = new std::vector<std::vector<Value>>{
      UuidPool(),
      {Value::Text("vm1"), Value::Text(""), Value::Text(std::string(129, 'x')), Value::Text("a\x01" "b")},
      {Value::Int(1), Value::Int(getpid()), Value::Int(0), Value::Int(-1), Value::Int(0x7fffffff),
       Value::Int(0x80000000LL)},
      {Value::Int(0), Value::Int(123456), Value::Int(-1)},
      {Value::Text("h1"), Value::Text(""), Value::Text(std::string(65, 'h'))},
      {Value::Text("terminate/5000"), Value::Text("pause/0"), Value::Text("ignore/1"),
       Value::Text("bogus"), Value::Text("terminate/-1")}};
  static const auto* locks = new std::vector<std::vector<Value>>{
      UuidPool(),
      {Value::Text("posixfd"), Value::Text("sanlock"), Value::Text(""), Value::Text("bad name")},
      {Value::Text("default"), Value::Text("LS"), Value::Text(""), Value::Text(".x")},
      {Value::Text(std::string(64, 'a')), Value::Text("lease1"), Value::Text(""),
       Value::Text(std::string(65, 'b')), Value::Text("../x")},
      {Value::Int(1), Value::Int(2), Value::Int(0), Value::Int(3)},
      {Value::Text("/img/a.qcow2"), Value::Text(""), Value::Text("relative/path")},
      {Value::Int(0), Value::Int(1 << 20), Value::Int(-1)},
      {Value::Int(1), Value::Int(2), Value::Int(3), Value::Int(0), Value::Int(4)},
      {Value::Int(0), Value::Int(1), Value::Int(-1)},
      {Value::Blob(""), Value::Blob("tok"), Value::Text("text-token"), Value::Blob(std::string(300, '\0'))},
      {Value::Int(1), Value::Int(2), Value::Int(3), Value::Int(0), Value::Int(4)}};
  return lock ? (*locks)[col] : (*owners)[col];
}

Value Fuzzed(fuzz::ByteReader& in, bool lock, int col) {
  switch (in.Byte() % 6) {
    case 0:
    case 1: {
      const std::vector<Value>& pool = Pool(lock, col);
      return pool[in.Byte() % pool.size()];
    }
    case 2:
      return Value::Int(static_cast<int64_t>(in.U64()));
    case 3:
      return Value::Text(in.String(80));
    case 4:
      return Value::Blob(in.String(80));
    default: {
      Value v;
      v.kind = Value::kReal;
      const uint64_t bits = in.U64();
      memcpy(&v.d, &bits, sizeof v.d);
      return v;
    }
  }
}

void Bind(sqlite3_stmt* s, int i, const Value& v) {
  switch (v.kind) {
    case Value::kInt: sqlite3_bind_int64(s, i, v.i); break;
    case Value::kText: sqlite3_bind_text(s, i, v.s.data(), static_cast<int>(v.s.size()), SQLITE_TRANSIENT); break;
    case Value::kBlob: sqlite3_bind_blob(s, i, v.s.data(), static_cast<int>(v.s.size()), SQLITE_TRANSIENT); break;
    case Value::kReal: sqlite3_bind_double(s, i, v.d); break;
  }
}

struct State {
  std::string dir;
  std::string path;
  std::unique_ptr<Journal> journal;
  sqlite3* writer = nullptr;
  sqlite3_stmt* put_owner = nullptr;
  sqlite3_stmt* put_lock = nullptr;
};

State& St() {
  static State* s = [] {
    auto* st = new State;
    st->dir = fuzz::ScratchDir("journal");
    st->path = st->dir + "/journal.db";
    JournalOpenReport report;
    absl::StatusOr<std::unique_ptr<Journal>> j = Journal::Open(st->path, kBoot, &report);
    FUZZ_CHECK(j.ok(), j.status().ToString());
    st->journal = *std::move(j);
    FUZZ_CHECK(sqlite3_open(st->path.c_str(), &st->writer) == SQLITE_OK, "open writer");
    sqlite3_busy_timeout(st->writer, 2000);
    FUZZ_CHECK(sqlite3_prepare_v2(st->writer, "INSERT OR REPLACE INTO owners VALUES (?,?,?,?,?,?)",
                                  -1, &st->put_owner, nullptr) == SQLITE_OK,
               sqlite3_errmsg(st->writer));
    FUZZ_CHECK(sqlite3_prepare_v2(st->writer,
                                  "INSERT OR REPLACE INTO locks VALUES (?,?,?,?,?,?,?,?,?,?,?)", -1,
                                  &st->put_lock, nullptr) == SQLITE_OK,
               sqlite3_errmsg(st->writer));
    return st;
  }();
  return *s;
}

int64_t Count(sqlite3* db, const char* table) {
  sqlite3_stmt* s = nullptr;
  const std::string sql = absl::StrCat("SELECT count(*) FROM ", table);
  FUZZ_CHECK(sqlite3_prepare_v2(db, sql.c_str(), -1, &s, nullptr) == SQLITE_OK, sql);
  FUZZ_CHECK(sqlite3_step(s) == SQLITE_ROW, sql);
  const int64_t n = sqlite3_column_int64(s, 0);
  sqlite3_finalize(s);
  return n;
}

void CheckContents(const JournalContents& c, int64_t rows) {
  FUZZ_CHECK(static_cast<int64_t>(c.owners.size() + c.locks.size() + c.problems.size()) == rows,
             absl::StrCat(c.owners.size(), " owners + ", c.locks.size(), " locks + ",
                          c.problems.size(), " problems != ", rows, " rows"));
  std::set<std::string> uuids;
  for (const JournalOwner& o : c.owners) {
    FUZZ_CHECK(o.owner.Validate().ok(), o.owner.Validate().ToString());
    uuids.insert(o.owner.uuid);
  }
  for (const JournalLock& l : c.locks) {
    FUZZ_CHECK(uuids.count(l.record.owner.uuid) == 1, l.record.owner.uuid);
    FUZZ_CHECK(ValidateName("backend", l.backend).ok(), l.backend);
    FUZZ_CHECK(l.record.resource.Validate().ok(), l.record.resource.Validate().ToString());
    FUZZ_CHECK(LockModeFromInt(static_cast<uint32_t>(l.record.mode)).ok(), "mode");
    const int state = static_cast<int>(l.state);
    FUZZ_CHECK(state >= 1 && state <= 3, absl::StrCat("state ", state));
  }
  for (const std::string& p : c.problems) FUZZ_CHECK(!p.empty(), "a problem says what");
}

bool SameContents(const JournalContents& a, const JournalContents& b) {
  if (a.owners.size() != b.owners.size() || a.locks.size() != b.locks.size() ||
      a.problems != b.problems) {
    return false;
  }
  for (size_t i = 0; i < a.owners.size(); ++i) {
    if (a.owners[i].owner.uuid != b.owners[i].owner.uuid || a.owners[i].policy != b.owners[i].policy) return false;
  }
  for (size_t i = 0; i < a.locks.size(); ++i) {
    const LockRecord& x = a.locks[i].record;
    const LockRecord& y = b.locks[i].record;
    if (x.resource.name != y.resource.name || x.fencing_token != y.fencing_token ||
        x.backend_token != y.backend_token || a.locks[i].state != b.locks[i].state) {
      return false;
    }
  }
  return true;
}

void FuzzRows(fuzz::ByteReader& in) {
  State& st = St();
  FUZZ_CHECK(sqlite3_exec(st.writer, "BEGIN; DELETE FROM locks; DELETE FROM owners;", nullptr,
                          nullptr, nullptr) == SQLITE_OK,
             sqlite3_errmsg(st.writer));
  const int rows = in.Byte() % 9;
  for (int r = 0; r < rows && !in.empty(); ++r) {
    const bool lock = in.Bool();
    sqlite3_stmt* s = lock ? st.put_lock : st.put_owner;
    const int cols = lock ? 11 : 6;
    for (int c = 0; c < cols; ++c) Bind(s, c + 1, Fuzzed(in, lock, c));
    sqlite3_step(s);  // a constraint (NOT NULL, primary key) may refuse it
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
  }
  FUZZ_CHECK(sqlite3_exec(st.writer, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK,
             sqlite3_errmsg(st.writer));
  const int64_t total = Count(st.writer, "owners") + Count(st.writer, "locks");

  absl::StatusOr<JournalContents> loaded = st.journal->Load();
  FUZZ_CHECK(loaded.ok(), loaded.status().ToString());
  CheckContents(*loaded, total);

  std::string boot;
  absl::StatusOr<JournalContents> read = Journal::ReadOnly(st.path, &boot);
  FUZZ_CHECK(read.ok(), read.status().ToString());
  FUZZ_CHECK(boot == kBoot, boot);
  CheckContents(*read, total);
  FUZZ_CHECK(SameContents(*loaded, *read), "Load and ReadOnly agree");

  // The journal still takes changes: forget every valid owner.
  JournalChange forget;
  for (const JournalOwner& o : loaded->owners) forget.remove_owners.push_back(o.owner.uuid);
  absl::Status applied = st.journal->Apply(forget);
  FUZZ_CHECK(applied.ok(), applied.ToString());
}

void FuzzWholeFile(const std::string& bytes) {
  const std::string dir = fuzz::ScratchDir("whole");
  const std::string path = dir + "/whole.db";
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  std::string boot;
  absl::StatusOr<JournalContents> read = Journal::ReadOnly(path, &boot);
  if (read.ok()) CheckContents(*read, static_cast<int64_t>(read->owners.size() + read->locks.size() + read->problems.size()));

  JournalOpenReport report;
  absl::StatusOr<std::unique_ptr<Journal>> j = Journal::Open(path, kBoot, &report);
  if (j.ok()) {
    absl::StatusOr<JournalContents> loaded = (*j)->Load();
    FUZZ_CHECK(loaded.ok(), loaded.status().ToString());
    // Open kept rows of this boot only; all of them valid or reported.
    CheckContents(*loaded, static_cast<int64_t>(loaded->owners.size() + loaded->locks.size() + loaded->problems.size()));
  } else {
    FUZZ_CHECK(!j.status().message().empty(), "an error says why");
  }
  j = absl::InternalError("closed");
  // Remove everything this mode left: the file, its companions, and the
  // copies Open moved aside (whole.db.corrupt-*).
  if (DIR* d = opendir(dir.c_str())) {
    std::vector<std::string> names;
    while (dirent* e = readdir(d)) {
      if (strncmp(e->d_name, "whole.db", 8) == 0) names.push_back(dir + "/" + e->d_name);
    }
    closedir(d);
    for (const std::string& n : names) unlink(n.c_str());
  }
}

}  // namespace
}  // namespace latchkey

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  latchkey::fuzz::SetProgram((*argv)[0]);
  (void)argc;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  latchkey::fuzz::ByteReader in(data, size);
  const uint8_t mode = in.Byte();
  if ((mode & 0x0f) == 0x0f) {
    latchkey::FuzzWholeFile(in.Rest());
  } else {
    latchkey::FuzzRows(in);
  }
  return 0;
}
