// The on-disk format and lock-byte protocol of the posixfd backend.
//
// Each resource has a state file in the lock directory, named
// "LOCKSPACE:NAME" (both validated to [A-Za-z0-9_.-], so ':' separates them
// unambiguously and no name can leave the directory). It holds:
//
//   [0, 32)        header: magic "LKPOSIX1", fencing token (u64), resource
//                  kind (u32), path length (u32), lease offset (u64)
//   [32, 544)      the exclusive holder's record
//   [544, 568)     conflict tokens: the header token they were written with
//                  (u64), then the token of the last grant that conflicts
//                  with shared-read (a shared-write or exclusive grant) and
//                  of the last that conflicts with shared-write (shared-read
//                  or exclusive), u64 each. Every grant rewrites [0, 568).
//                  They answer the hand-off check (AcquireOptions::
//                  expect_token): the last grant conflicting with exclusive
//                  is simply the header's token.
//   [1024, 5120)   the resource path (disk image or lease storage)
//   [8192 + 512*i) shared holder slot i's record, i < kSharedSlots
//
// Locks are OFD byte-range locks (F_OFD_SETLK) at kLockBase, far beyond any
// data (and beyond the bytes QEMU locks in images), on the lock target: the
// state file itself, or the disk image when lock_target = "image".
//
//   G  kLockBase+0  gate: write-locked while a holder is admitted, so the
//                   token and the records change under one writer
//   A  kLockBase+1  read-locked by every shared-read holder
//   B  kLockBase+2  read-locked by every shared-write holder
//   Si kLockBase+16+i  write-locked by the shared holder using slot i
//
// exclusive    = write lock on [G, B] for the whole hold (one fcntl);
// shared-read  = under G: no lock on B by anyone else, then read-lock A;
// shared-write = under G: no lock on A by anyone else, then read-lock B.
// So read+read and write+write share, read and write exclude each other,
// exclusive excludes all: DLM's PR / CW / EX matrix. A record is live only
// while its lock (A..B for exclusive, Si for a slot) is held, so records
// of dead holders need no clean-up: the kernel drops a dead process's
// locks when its descriptors close.
//
// OFD locks belong to the open file description, not the process, so two
// owners in one process (each with its own open()) exclude each other, the
// trap classic fcntl locks fall into.
//
// For the same reason a lock survives execve() when its descriptors do:
// PrepareExec clears FD_CLOEXEC on every held lock's descriptors, and the
// backend opened by the new program finds them in /proc/self/fd, proves from
// /proc/self/fdinfo/FD which lock bytes each description holds and from the
// holder record whose lock it is, and adopts it without ever unlocking.
#ifndef LATCHKEY_BACKENDS_POSIXFD_LOCK_FILE_H_
#define LATCHKEY_BACKENDS_POSIXFD_LOCK_FILE_H_

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/backend.h"

namespace latchkey {
namespace posixfd {

inline constexpr off_t kLockBase = off_t{0x4C4B} << 32;  // "LK", ~80 TiB in
inline constexpr off_t kGate = kLockBase;
inline constexpr off_t kReadClass = kLockBase + 1;
inline constexpr off_t kWriteClass = kLockBase + 2;
inline constexpr off_t kSlotLockBase = kLockBase + 16;
inline constexpr int kSharedSlots = 128;

inline constexpr off_t kTokenOffset = 8;
inline constexpr size_t kHeaderSize = 32;
inline constexpr off_t kExclusiveRecord = 32;
inline constexpr size_t kRecordSize = 512;
inline constexpr off_t kConflictOffset = kExclusiveRecord + kRecordSize;
inline constexpr size_t kConflictSize = 24;
inline constexpr off_t kPathOffset = 1024;
static_assert(kConflictOffset + kConflictSize <= kPathOffset, "layout overlaps");
inline constexpr off_t kSlotRecordBase = 8192;
inline constexpr char kMagic[8] = {'L', 'K', 'P', 'O', 'S', 'I', 'X', '1'};

inline off_t SlotRecord(int i) { return kSlotRecordBase + static_cast<off_t>(kRecordSize) * i; }

// Header fields.
struct Header {
  bool initialised = false;  // the magic is present
  uint64_t token = 0;
  ResourceKind kind = ResourceKind::kLease;
  uint32_t path_len = 0;
  uint64_t offset = 0;
};

Header DecodeHeader(const unsigned char buf[kHeaderSize]);
// Encodes bytes [kTokenOffset, kHeaderSize): token, kind, path length, offset.
void EncodeHeaderTail(uint64_t token, const Resource& r, unsigned char out[kHeaderSize - 8]);

// The tokens of the last grants that conflict with each shared mode.
struct ConflictTokens {
  uint64_t shared_read = 0;   // last shared-write or exclusive grant
  uint64_t shared_write = 0;  // last shared-read or exclusive grant
};
// Decodes the block. A block not written with the header's current token
// (a file older than the block, or written by an older posixfd) cannot be
// trusted: then every grant so far counts as conflicting (both are
// `header_token`), the safe answer.
ConflictTokens DecodeConflictTokens(const unsigned char in[kConflictSize], uint64_t header_token);
void EncodeConflictTokens(uint64_t header_token, const ConflictTokens& c,
                          unsigned char out[kConflictSize]);
// The block once `mode` was granted with `token`.
ConflictTokens AfterGrant(ConflictTokens c, LockMode mode, uint64_t token);
// The token of the last grant that conflicts with `mode` (exclusive
// conflicts with every grant: the header's token).
uint64_t LastConflicting(const ConflictTokens& c, uint64_t header_token, LockMode mode);

// A holder's record: who, which mode, which token.
struct Record {
  Owner owner;
  LockMode mode = LockMode::kExclusive;
  uint64_t token = 0;
  // Non-zero for a grant Adopt made by re-acquiring: the token of the
  // journaled grant it continues. A later Adopt of that same journaled
  // grant (its adopter died before journaling this one) does not count
  // this grant as a conflicting one.
  uint64_t continues = 0;
};
void EncodeRecord(const Owner& owner, LockMode mode, uint64_t token,
                  unsigned char out[kRecordSize], uint64_t continues = 0);
// false when the bytes hold no record.
bool DecodeRecord(const unsigned char in[kRecordSize], Record* out);

// A lock of one open file description, as /proc/self/fdinfo/FD lists it:
// the kernel lists there exactly the OFD locks the description behind FD
// holds, which F_OFD_GETLK through that same description cannot see.
struct OfdLock {
  bool write = false;
  off_t start = 0;
  off_t end = 0;  // inclusive; the largest off_t for "to end of file"
};
// The OFDLCK entries of an fdinfo text ("lock:\t1: OFDLCK ADVISORY  WRITE
// -1 fe:00:1234 START END"); other lines and other lock kinds are skipped.
std::vector<OfdLock> ParseFdInfoLocks(absl::string_view fdinfo);
// How `locks` cover `byte`: F_UNLCK, F_RDLCK or F_WRLCK.
short OfdLockAt(const std::vector<OfdLock>& locks, off_t byte);

// State file name for a resource: "LOCKSPACE:NAME".
std::string StateFileName(const Resource& r);
// Inverse of StateFileName; false for other names.
bool ParseStateFileName(const std::string& file, std::string* lockspace, std::string* name);

}  // namespace posixfd
}  // namespace latchkey

#endif  // LATCHKEY_BACKENDS_POSIXFD_LOCK_FILE_H_
