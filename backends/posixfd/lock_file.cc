#include "backends/posixfd/lock_file.h"

#include <fcntl.h>

#include <cstring>
#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace latchkey {
namespace posixfd {
namespace {

constexpr uint32_t kRecordMagic = 0x52484b4c;  // "LKHR"
constexpr size_t kUuidField = 40, kNameField = 136, kHostField = 72;
constexpr size_t kUuidAt = 32, kNameAt = kUuidAt + kUuidField, kHostAt = kNameAt + kNameField;
constexpr size_t kContinuesAt = kHostAt + kHostField;
static_assert(kContinuesAt + 8 <= kRecordSize, "record fields overflow");

void Put32(unsigned char* p, uint32_t v) { memcpy(p, &v, 4); }
void Put64(unsigned char* p, uint64_t v) { memcpy(p, &v, 8); }
uint32_t Get32(const unsigned char* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
uint64_t Get64(const unsigned char* p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

void PutString(unsigned char* p, size_t field, const std::string& s) {
  const size_t n = std::min(s.size(), field - 1);
  memcpy(p, s.data(), n);
  memset(p + n, 0, field - n);
}
std::string GetString(const unsigned char* p, size_t field) {
  return std::string(reinterpret_cast<const char*>(p),
                     strnlen(reinterpret_cast<const char*>(p), field));
}

}  // namespace

Header DecodeHeader(const unsigned char buf[kHeaderSize]) {
  Header h;
  h.initialised = memcmp(buf, kMagic, sizeof kMagic) == 0;
  if (!h.initialised) return h;
  h.token = Get64(buf + 8);
  h.kind = Get32(buf + 16) == static_cast<uint32_t>(ResourceKind::kDisk) ? ResourceKind::kDisk
                                                                         : ResourceKind::kLease;
  h.path_len = Get32(buf + 20);
  h.offset = Get64(buf + 24);
  return h;
}

void EncodeHeaderTail(uint64_t token, const Resource& r, unsigned char out[kHeaderSize - 8]) {
  Put64(out, token);
  Put32(out + 8, static_cast<uint32_t>(r.kind));
  Put32(out + 12, static_cast<uint32_t>(r.path.size()));
  Put64(out + 16, r.offset);
}

ConflictTokens DecodeConflictTokens(const unsigned char in[kConflictSize], uint64_t header_token) {
  if (Get64(in) != header_token) return ConflictTokens{header_token, header_token};
  return ConflictTokens{Get64(in + 8), Get64(in + 16)};
}

void EncodeConflictTokens(uint64_t header_token, const ConflictTokens& c,
                          unsigned char out[kConflictSize]) {
  Put64(out, header_token);
  Put64(out + 8, c.shared_read);
  Put64(out + 16, c.shared_write);
}

ConflictTokens AfterGrant(ConflictTokens c, LockMode mode, uint64_t token) {
  if (mode != LockMode::kSharedRead) c.shared_read = token;    // shared-write, exclusive
  if (mode != LockMode::kSharedWrite) c.shared_write = token;  // shared-read, exclusive
  return c;
}

uint64_t LastConflicting(const ConflictTokens& c, uint64_t header_token, LockMode mode) {
  switch (mode) {
    case LockMode::kSharedRead:
      return c.shared_read;
    case LockMode::kSharedWrite:
      return c.shared_write;
    case LockMode::kExclusive:
      break;
  }
  return header_token;
}

void EncodeRecord(const Owner& owner, LockMode mode, uint64_t token,
                  unsigned char out[kRecordSize], uint64_t continues) {
  // Every byte of the record is written (the fields end in zero padding),
  // so no stale bytes of an earlier holder survive.
  Put32(out, kRecordMagic);
  Put32(out + 4, static_cast<uint32_t>(mode));
  Put64(out + 8, token);
  Put64(out + 16, static_cast<uint64_t>(owner.pid));
  Put64(out + 24, owner.start_time);
  PutString(out + kUuidAt, kUuidField, owner.uuid);
  PutString(out + kNameAt, kNameField, owner.name);
  PutString(out + kHostAt, kHostField, owner.host);
  Put64(out + kContinuesAt, continues);
  memset(out + kContinuesAt + 8, 0, kRecordSize - kContinuesAt - 8);
}

bool DecodeRecord(const unsigned char in[kRecordSize], Record* out) {
  if (Get32(in) != kRecordMagic) return false;
  absl::StatusOr<LockMode> mode = LockModeFromInt(Get32(in + 4));
  if (!mode.ok()) return false;
  out->mode = *mode;
  out->token = Get64(in + 8);
  out->owner.pid = static_cast<int64_t>(Get64(in + 16));
  out->owner.start_time = Get64(in + 24);
  out->owner.uuid = GetString(in + kUuidAt, kUuidField);
  out->owner.name = GetString(in + kNameAt, kNameField);
  out->owner.host = GetString(in + kHostAt, kHostField);
  out->continues = Get64(in + kContinuesAt);
  return true;
}

std::vector<OfdLock> ParseFdInfoLocks(absl::string_view fdinfo) {
  std::vector<OfdLock> out;
  for (absl::string_view line : absl::StrSplit(fdinfo, '\n')) {
    if (!absl::ConsumePrefix(&line, "lock:")) continue;
    const std::vector<absl::string_view> f =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    // f: "1:" OFDLCK ADVISORY READ|WRITE PID MAJ:MIN:INO START END
    if (f.size() != 8 || f[1] != "OFDLCK") continue;
    OfdLock l;
    if (f[3] == "WRITE") {
      l.write = true;
    } else if (f[3] != "READ") {
      continue;
    }
    int64_t start = 0, end = 0;
    if (!absl::SimpleAtoi(f[6], &start)) continue;
    if (f[7] == "EOF") {
      end = std::numeric_limits<int64_t>::max();
    } else if (!absl::SimpleAtoi(f[7], &end)) {
      continue;
    }
    l.start = static_cast<off_t>(start);
    l.end = static_cast<off_t>(end);
    out.push_back(l);
  }
  return out;
}

short OfdLockAt(const std::vector<OfdLock>& locks, off_t byte) {
  for (const OfdLock& l : locks) {
    if (l.start <= byte && byte <= l.end) return l.write ? F_WRLCK : F_RDLCK;
  }
  return F_UNLCK;
}

std::string StateFileName(const Resource& r) { return absl::StrCat(r.lockspace, ":", r.name); }

bool ParseStateFileName(const std::string& file, std::string* lockspace, std::string* name) {
  const size_t colon = file.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= file.size()) return false;
  *lockspace = file.substr(0, colon);
  *name = file.substr(colon + 1);
  return ValidateName("lockspace", *lockspace).ok() && ValidateName("name", *name).ok();
}

}  // namespace posixfd
}  // namespace latchkey
