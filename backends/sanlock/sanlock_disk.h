// What the sanlock backend reads from lease storage itself, without the
// daemon: the storage's sector size, sanlock's on-disk leader records (the
// first sector of every lease and of every host's delta lease), and aligned
// direct I/O for latchkey's own records (lease_area.h).
//
// Facts about sanlock's format used here (sanlock 3.8, src/leader.h and
// src/ondisk.c): a leader record is little-endian; magic at byte 0
// (0x06152010 for a resource lease, 0x12212010 for a host's delta lease),
// sector_size at 12, owner_id at 32, owner_generation at 40, lver at 48, the
// lockspace name at 56 and the resource name (a host's name in a delta
// lease) at 104, 48 bytes each, timestamp at 152. Leader flags 0x10..0x80
// give the alignment (1, 2, 4, 8 MiB); without them 512-byte sectors mean
// 1 MiB and 4096-byte sectors 8 MiB. Host K's delta lease is at
// offset + (K-1) * sector_size.
//
// Thread safety: every function is thread-safe.
#ifndef LATCHKEY_BACKENDS_SANLOCK_SANLOCK_DISK_H_
#define LATCHKEY_BACKENDS_SANLOCK_SANLOCK_DISK_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace latchkey {
namespace sanlockbe {

inline constexpr uint64_t kMiB = 1024 * 1024;

// Sector size and alignment of a lockspace or lease. sanlock accepts
// 512/1M (2000 hosts) and 4096 with 1M, 2M, 4M or 8M (250..2000 hosts).
struct Geometry {
  uint32_t sector = 512;
  uint64_t align = kMiB;

  // Checks a pair; the error names it and lists the valid ones.
  static absl::StatusOr<Geometry> Make(uint32_t sector, uint64_t align);
  // The default for a sector size: 512 -> 1 MiB, 4096 -> 8 MiB (sanlock's).
  static Geometry ForSector(uint32_t sector);

  int max_hosts() const;       // host_ids a lease of this geometry serves
  uint32_t ResourceFlags() const;   // SANLK_RES_ALIGN* | SANLK_RES_SECTOR*
  uint32_t LockspaceFlags() const;  // SANLK_LSF_ALIGN* | SANLK_LSF_SECTOR*
  std::string ToString() const;     // "4096-byte sectors, 8 MiB alignment"
  bool operator==(const Geometry& o) const { return sector == o.sector && align == o.align; }
  bool operator!=(const Geometry& o) const { return !(*this == o); }
};

// The logical sector size of the storage at `path`: a block device's
// (BLKSSZGET), or, for a regular file, its file system's device's (sysfs),
// or without a device (NFS) the smallest direct-I/O read the file accepts
// (512 or 4096; its first 4096 bytes must be written, not a hole).
absl::StatusOr<uint32_t> StorageSectorSize(const std::string& path);

// Size in bytes of a block device or regular file.
absl::StatusOr<uint64_t> StorageSize(const std::string& path);

inline constexpr uint32_t kPaxosMagic = 0x06152010;
inline constexpr uint32_t kDeltaMagic = 0x12212010;

// A leader record as sanlock wrote it.
struct LeaderRecord {
  uint32_t magic = 0;
  uint32_t version = 0;
  uint32_t flags = 0;
  uint32_t sector_size = 0;
  uint64_t num_hosts = 0;
  uint64_t max_hosts = 0;
  uint64_t owner_id = 0;
  uint64_t owner_generation = 0;
  uint64_t lver = 0;
  std::string lockspace;
  std::string resource;  // a host's name in a delta lease
  uint64_t timestamp = 0;  // 0: free (a resource lease released)

  bool IsPaxos() const { return magic == kPaxosMagic; }
  bool IsDelta() const { return magic == kDeltaMagic; }
  // The geometry the record says its lease has; an error for a record
  // that is not sanlock's or has a size sanlock never writes.
  absl::StatusOr<Geometry> GetGeometry() const;
};

// Reads the leader record at `offset` (a multiple of 4096 or of the
// storage's sector size). A blank or foreign sector gives a record with
// magic 0 or another value, not an error; I/O failures are errors.
absl::StatusOr<LeaderRecord> ReadLeader(const std::string& path, uint64_t offset);

// A host's name as its daemon wrote it into its delta lease (the `-e`
// name), "" when unknown; unprintable bytes become '?'.
std::string ReadHostName(const std::string& path, uint64_t lockspace_offset,
                         uint32_t sector, uint64_t host_id);

// Direct I/O of whole sectors: `offset` and `data.size()` must be
// multiples of `sector`. Write is followed by fdatasync.
absl::StatusOr<std::string> ReadSectors(const std::string& path, uint64_t offset, size_t len,
                                        uint32_t sector);
absl::Status WriteSectors(const std::string& path, uint64_t offset, const std::string& data,
                          uint32_t sector);

}  // namespace sanlockbe
}  // namespace latchkey

#endif  // LATCHKEY_BACKENDS_SANLOCK_SANLOCK_DISK_H_
