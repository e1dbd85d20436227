// The on-disk format and lock-byte protocol of the posixfd backend.
//
// Each resource has a state file in the lock directory, named
// "LOCKSPACE:NAME" (both validated to [A-Za-z0-9_.-], so ':' separates them
// unambiguously and no name can leave the directory). It holds:
//
//   [0, 32)        header: magic "LKPOSIX1", fencing token (u64), resource
//                  kind (u32), path length (u32), lease offset (u64)
//   [32, 544)      the exclusive holder's record
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
#ifndef LATCHKEY_BACKENDS_POSIXFD_LOCK_FILE_H_
#define LATCHKEY_BACKENDS_POSIXFD_LOCK_FILE_H_

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
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
inline constexpr off_t kPathOffset = 1024;
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

// A holder's record: who, which mode, which token.
struct Record {
  Owner owner;
  LockMode mode = LockMode::kExclusive;
  uint64_t token = 0;
};
void EncodeRecord(const Owner& owner, LockMode mode, uint64_t token,
                  unsigned char out[kRecordSize]);
// false when the bytes hold no record.
bool DecodeRecord(const unsigned char in[kRecordSize], Record* out);

// State file name for a resource: "LOCKSPACE:NAME".
std::string StateFileName(const Resource& r);
// Inverse of StateFileName; false for other names.
bool ParseStateFileName(const std::string& file, std::string* lockspace, std::string* name);

}  // namespace posixfd
}  // namespace latchkey

#endif  // LATCHKEY_BACKENDS_POSIXFD_LOCK_FILE_H_
