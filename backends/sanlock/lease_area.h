// Automatic sanlock leases as slots in a lease area on shared block storage
// (or an LV, or a file): the area's on-disk format, version 1, and the
// allocator that gives each resource name one slot that every host finds.
// Documented in backends/sanlock/README.md ("Lease areas").
//
// Layout, in units of the area's alignment A (1 MiB on 512-byte sectors,
// 8 MiB on 4096), starting at the configured offset:
//   unit 0  sector 0: the header (HeaderRecord); sectors 1..: the index,
//           one 128-byte entry per slot, 4 or 32 to a sector.
//   unit 1  the allocator lease, a sanlock lease named "latchkey.alloc".
//   unit 2+i  slot i: a sanlock lease named after the resource it serves.
//
// Safety argument (why two hosts never make two leases for one name):
//  * Every change of the index is made holding the allocator lease
//    exclusively, after re-reading the index under it, so two creators are
//    serialised and the second finds the first's entry.
//  * A slot's lease is written (sanlock_write_resource) before its entry
//    names it, so whoever finds an entry finds an initialised lease.
//  * A slot is freed only by a host holding the slot's own lease
//    exclusively (nobody else holds or is acquiring it), and the entry is
//    cleared before that lease is released.
//  * A host that found a slot by reading the index without the allocator
//    lease verifies, after acquiring the slot's lease and before granting,
//    that the entry still names the same resource with the same generation
//    (Verify); if not, the slot was freed or reused meanwhile and it
//    releases and looks again.
//
// Where automatic leases live is recorded in the lockspace itself (the
// LayoutRecord, in the last sector of the lockspace's first alignment unit,
// which sanlock zeroes at init and never uses: 2000 host records end
// before it), so a host configured for lease files while others use slots
// (or another area) is refused instead of making a second lease.
//
// Thread safety: LeaseArea is immutable after Open and thread-safe; index
// writes are serialised by the caller's allocator lease.
#ifndef LATCHKEY_BACKENDS_SANLOCK_LEASE_AREA_H_
#define LATCHKEY_BACKENDS_SANLOCK_LEASE_AREA_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "backends/sanlock/sanlock_disk.h"

namespace latchkey {
namespace sanlockbe {

inline constexpr char kAllocatorLease[] = "latchkey.alloc";
inline constexpr uint32_t kAreaVersion = 1;
inline constexpr size_t kEntrySize = 128;

// The `lease_areas` setting: "LOCKSPACE:/PATH:OFFSET:SIZE".
struct AreaConf {
  std::string lockspace;
  std::string path;
  uint64_t offset = 0;
  uint64_t size = 0;
  static absl::StatusOr<AreaConf> Parse(const std::string& spec);
  std::string ToString() const;
};

// One index entry. An empty name is a free slot.
struct SlotEntry {
  uint32_t slot = 0;
  std::string name;
  uint64_t generation = 0;     // bumped at every allocation of the slot
  uint64_t allocated_at = 0;   // unix seconds, allocating host's clock
  uint64_t allocated_by = 0;   // host_id
  // Idle tracking for freeing unused leases: the lease's lver when
  // observer (a host_id) first saw it free at that lver, and when (the
  // observer's own clock; only the observer compares against it).
  uint64_t idle_lver = 0;
  uint64_t idle_since = 0;
  uint64_t idle_observer = 0;
  bool used() const { return !name.empty(); }
};

// Where automatic leases of a lockspace live, as recorded in it.
struct LayoutRecord {
  enum class Kind : uint32_t { kNone = 0, kFiles = 1, kSlots = 2 };
  Kind kind = Kind::kNone;
  std::string area_id;     // the area's id (hex), for kSlots
  std::string area_path;   // where the recording host saw it (information)
  uint64_t area_offset = 0;
  std::string written_by;  // host name
  uint64_t written_at = 0;
  std::string Describe() const;
};

absl::StatusOr<LayoutRecord> ReadLayout(const std::string& ls_path, uint64_t ls_offset,
                                        const Geometry& ls_geo);
absl::Status WriteLayout(const std::string& ls_path, uint64_t ls_offset, const Geometry& ls_geo,
                         const LayoutRecord& record);

class LeaseArea {
 public:
  // Reads the header. NotFound when the area is not formatted (blank);
  // FailedPrecondition naming what is there otherwise.
  static absl::StatusOr<LeaseArea> Open(const AreaConf& conf);

  // Writes a new header and an empty index (the caller then writes the
  // allocator lease). Refuses an area that holds anything unless `force`.
  static absl::StatusOr<LeaseArea> Format(const AreaConf& conf, const Geometry& geo,
                                          const std::string& host, bool force);

  const AreaConf& conf() const { return conf_; }
  const Geometry& geometry() const { return geo_; }
  uint32_t slots() const { return slots_; }
  const std::string& id() const { return id_; }
  uint64_t created_at() const { return created_at_; }
  const std::string& created_by() const { return created_by_; }

  uint64_t AllocatorOffset() const { return conf_.offset + geo_.align; }
  uint64_t SlotOffset(uint32_t slot) const { return conf_.offset + (2 + uint64_t{slot}) * geo_.align; }

  absl::StatusOr<std::vector<SlotEntry>> ReadIndex() const;
  absl::StatusOr<SlotEntry> ReadEntry(uint32_t slot) const;
  // Read-modify-write of the entry's sector. REQUIRES: the allocator lease.
  absl::Status WriteEntry(const SlotEntry& entry) const;

  // The largest slot count an area of `size` bytes at this geometry holds.
  static uint32_t SlotsFor(uint64_t size, const Geometry& geo);

 private:
  AreaConf conf_;
  Geometry geo_;
  uint32_t slots_ = 0;
  std::string id_;
  uint64_t created_at_ = 0;
  std::string created_by_;
};

// What the allocator needs from sanlock, so it can be tested on its own.
class LeaseOps {
 public:
  virtual ~LeaseOps() = default;
  // Tries once to take the lease `name` at `offset` of the area
  // exclusively: Unavailable while another holds it (or its storage
  // hiccups: worth retrying), another error when it cannot work at all.
  virtual absl::Status TryLockExclusive(const std::string& name, uint64_t offset) = 0;
  virtual void Unlock(const std::string& name, uint64_t offset) = 0;
  // Initialises (overwrites) the lease `name` at `offset`.
  virtual absl::Status WriteLease(const std::string& name, uint64_t offset) = 0;
};

// The slot of `name`: found in the index, or allocated under the allocator
// lease (ResourceExhausted when the area is full). `host_id` is recorded.
// While another host holds the allocator lease (most likely creating the
// same name) it re-reads the index between tries instead of balloting, with
// a growing random pause, until `deadline`.
absl::StatusOr<SlotEntry> FindOrAllocate(const LeaseArea& area, LeaseOps& ops,
                                         const std::string& name, uint64_t host_id, bool create,
                                         absl::Time deadline);

// Takes the allocator lease, retrying with a growing random pause until
// `deadline` (Unavailable then).
absl::Status LockAllocator(const LeaseArea& area, LeaseOps& ops, absl::Time deadline);

// After acquiring the slot's lease: whether the index still gives the slot
// to `found` (same name and generation).
absl::Status Verify(const LeaseArea& area, const SlotEntry& found);

// Frees `entry`'s slot. REQUIRES: the caller holds the slot's lease
// exclusively. Takes the allocator lease; a no-op (FailedPrecondition) when
// the entry changed meanwhile.
absl::Status FreeSlot(const LeaseArea& area, LeaseOps& ops, const SlotEntry& entry,
                      absl::Time deadline);

}  // namespace sanlockbe
}  // namespace latchkey

#endif  // LATCHKEY_BACKENDS_SANLOCK_LEASE_AREA_H_
