// Fuzz target: the posixfd lock-file decoders (backends/posixfd/lock_file.h),
// on the bytes of a state file.
//
// The input is laid out as a state file is: the header at 0, the exclusive
// holder's record at kExclusiveRecord, the conflict tokens at
// kConflictOffset (short inputs are zero-padded). Bytes from kPathOffset on
// are text: the first line a state file name, the rest an fdinfo listing.
//
// Properties: a decoded record re-encodes to one that decodes the same (once
// its strings fit their fields); decoded modes are valid; the conflict
// tokens answer each mode with the last conflicting grant; a parsed state
// file name is exactly StateFileName of its parts.
#include <fcntl.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "backends/posixfd/lock_file.h"
#include "core/lock_mode.h"
#include "core/owner.h"
#include "core/resource.h"
#include "fuzz/fuzz_util.h"

namespace latchkey {
namespace posixfd {
namespace {

constexpr LockMode kModes[] = {LockMode::kSharedRead, LockMode::kSharedWrite,
                               LockMode::kExclusive};

bool SameRecord(const Record& a, const Record& b) {
  return a.owner.uuid == b.owner.uuid && a.owner.name == b.owner.name &&
         a.owner.host == b.owner.host && a.owner.pid == b.owner.pid &&
         a.owner.start_time == b.owner.start_time && a.mode == b.mode && a.token == b.token &&
         a.continues == b.continues;
}

void CheckRecord(const unsigned char* bytes) {
  Record r;
  if (!DecodeRecord(bytes, &r)) return;
  FUZZ_CHECK(LockModeFromInt(static_cast<uint32_t>(r.mode)).ok(), "decoded mode is valid");
  (void)r.owner.Validate();  // must not crash on any decoded owner
  (void)r.owner.Describe();
  unsigned char out[kRecordSize];
  EncodeRecord(r.owner, r.mode, r.token, out, r.continues);
  Record once;
  FUZZ_CHECK(DecodeRecord(out, &once), "an encoded record decodes");
  // Strings that filled their whole field lose their last byte (the field
  // keeps a terminating zero); after that the record is a fixed point.
  unsigned char again_bytes[kRecordSize];
  EncodeRecord(once.owner, once.mode, once.token, again_bytes, once.continues);
  FUZZ_CHECK(memcmp(out, again_bytes, kRecordSize) == 0, "encoding is a fixed point");
  Record again;
  FUZZ_CHECK(DecodeRecord(again_bytes, &again) && SameRecord(again, once), r.owner.Describe());
  if (r.owner.uuid.size() < 40 && r.owner.name.size() < 136 && r.owner.host.size() < 72) {
    FUZZ_CHECK(SameRecord(once, r), r.owner.Describe());
  }
}

void CheckConflicts(const unsigned char* block, uint64_t header_token, uint64_t grant) {
  const ConflictTokens c = DecodeConflictTokens(block, header_token);
  unsigned char out[kConflictSize];
  EncodeConflictTokens(header_token, c, out);
  const ConflictTokens back = DecodeConflictTokens(out, header_token);
  FUZZ_CHECK(back.shared_read == c.shared_read && back.shared_write == c.shared_write,
             "conflict tokens round-trip");
  for (LockMode granted : kModes) {
    const ConflictTokens after = AfterGrant(c, granted, grant);
    for (LockMode asked : kModes) {
      const uint64_t last = LastConflicting(after, grant, asked);
      if (!ModesCompatible(granted, asked)) {
        FUZZ_CHECK(last == grant, absl::StrCat(LockModeName(granted), " then ", LockModeName(asked)));
      } else {
        FUZZ_CHECK(last == LastConflicting(c, grant, asked),
                   absl::StrCat(LockModeName(granted), " then ", LockModeName(asked)));
      }
    }
  }
}

}  // namespace
}  // namespace posixfd
}  // namespace latchkey

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace latchkey::posixfd;  // NOLINT: the constants of one format
  std::vector<unsigned char> file(data, data + size);
  if (file.size() < static_cast<size_t>(kPathOffset)) file.resize(kPathOffset, 0);

  const Header h = DecodeHeader(file.data());
  if (h.initialised) {
    unsigned char tail[kHeaderSize - 8];
    latchkey::Resource r;
    r.kind = h.kind;
    r.path.assign(h.path_len < 4096 ? h.path_len : 0, 'p');
    r.offset = h.offset;
    EncodeHeaderTail(h.token, r, tail);
    if (h.path_len < 4096) {
      unsigned char whole[kHeaderSize];
      memcpy(whole, kMagic, sizeof kMagic);
      memcpy(whole + 8, tail, sizeof tail);
      const Header back = DecodeHeader(whole);
      FUZZ_CHECK(back.initialised && back.token == h.token && back.kind == h.kind &&
                     back.path_len == h.path_len && back.offset == h.offset,
                 "header round-trips");
    }
  }
  CheckRecord(file.data() + kExclusiveRecord);
  CheckConflicts(file.data() + kConflictOffset, h.token, h.token + 1);

  if (size > static_cast<size_t>(kPathOffset)) {
    const std::string text(reinterpret_cast<const char*>(data) + kPathOffset, size - kPathOffset);
    const size_t nl = text.find('\n');
    const std::string name = text.substr(0, nl);
    std::string lockspace, resource;
    if (ParseStateFileName(name, &lockspace, &resource)) {
      latchkey::Resource r;
      r.lockspace = lockspace;
      r.name = resource;
      FUZZ_CHECK(StateFileName(r) == name, name);
    }
    if (nl != std::string::npos) {
      const std::vector<OfdLock> locks = ParseFdInfoLocks(text.substr(nl + 1));
      for (const OfdLock& l : locks) {
        const short at = OfdLockAt(locks, l.start);
        FUZZ_CHECK(at != F_UNLCK || l.start > l.end, "a listed lock covers its start");
      }
      (void)OfdLockAt(locks, kGate);
      (void)OfdLockAt(locks, kWriteClass);
    }
  }
  return 0;
}
