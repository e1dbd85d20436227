#include "backends/sanlock/lease_area.h"

#include <fcntl.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace latchkey {
namespace sanlockbe {
namespace {

constexpr char kAreaMagic[16] = "LATCHKEY-LEASES";
constexpr char kLayoutMagic[16] = "LATCHKEY-LAYOUT";
constexpr uint32_t kEntryMagic = 0x45534b4c;  // "LKSE"

// Header fields (sector 0 of unit 0).
constexpr size_t kHVersion = 16, kHSector = 20, kHAlign = 24, kHSlots = 32, kHLockspace = 40,
                 kHId = 88, kHCreatedAt = 104, kHCreatedBy = 112;
// Entry fields.
constexpr size_t kEName = 0, kEGeneration = 48, kEAllocatedAt = 56, kEAllocatedBy = 64,
                 kEIdleLver = 72, kEIdleSince = 80, kEIdleObserver = 88, kEMagic = 96;
// Layout record fields.
constexpr size_t kLVersion = 16, kLKind = 20, kLAreaId = 24, kLAreaOffset = 40, kLWrittenAt = 48,
                 kLWrittenBy = 56, kLAreaPath = 120, kLAreaPathLen = 256;

void Put32(std::string* b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) (*b)[at + i] = static_cast<char>(v >> (8 * i));
}
void Put64(std::string* b, size_t at, uint64_t v) {
  for (int i = 0; i < 8; ++i) (*b)[at + i] = static_cast<char>(v >> (8 * i));
}
void PutStr(std::string* b, size_t at, size_t n, const std::string& s) {
  for (size_t i = 0; i < n; ++i) (*b)[at + i] = i < s.size() ? s[i] : '\0';
}
uint32_t Get32(const std::string& b, size_t at) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = v << 8 | static_cast<unsigned char>(b[at + i]);
  return v;
}
uint64_t Get64(const std::string& b, size_t at) {
  return uint64_t{Get32(b, at)} | uint64_t{Get32(b, at + 4)} << 32;
}
std::string GetStr(const std::string& b, size_t at, size_t n) {
  return std::string(b.data() + at, strnlen(b.data() + at, n));
}
bool AllZero(const std::string& b) {
  for (char c : b) {
    if (c != 0) return false;
  }
  return true;
}
uint64_t Now() { return static_cast<uint64_t>(time(nullptr)); }

size_t IndexBytes(uint32_t slots, uint32_t sector) {
  const size_t raw = size_t{slots} * kEntrySize;
  return (raw + sector - 1) / sector * sector;
}

SlotEntry DecodeEntry(const std::string& b, size_t at, uint32_t slot) {
  SlotEntry e;
  e.slot = slot;
  if (Get32(b, at + kEMagic) != kEntryMagic) return e;  // never written: free
  e.name = GetStr(b, at + kEName, 48);
  e.generation = Get64(b, at + kEGeneration);
  e.allocated_at = Get64(b, at + kEAllocatedAt);
  e.allocated_by = Get64(b, at + kEAllocatedBy);
  e.idle_lver = Get64(b, at + kEIdleLver);
  e.idle_since = Get64(b, at + kEIdleSince);
  e.idle_observer = Get64(b, at + kEIdleObserver);
  return e;
}

void EncodeEntry(std::string* b, size_t at, const SlotEntry& e) {
  PutStr(b, at, kEntrySize, "");
  PutStr(b, at + kEName, 48, e.name);
  Put64(b, at + kEGeneration, e.generation);
  Put64(b, at + kEAllocatedAt, e.allocated_at);
  Put64(b, at + kEAllocatedBy, e.allocated_by);
  Put64(b, at + kEIdleLver, e.idle_lver);
  Put64(b, at + kEIdleSince, e.idle_since);
  Put64(b, at + kEIdleObserver, e.idle_observer);
  Put32(b, at + kEMagic, kEntryMagic);
}

absl::StatusOr<uint64_t> ParseSize(const std::string& text) {
  uint64_t mult = 1;
  std::string digits = text;
  if (!digits.empty() && (digits.back() == 'M' || digits.back() == 'G')) {
    mult = digits.back() == 'M' ? kMiB : 1024 * kMiB;
    digits.pop_back();
  }
  uint64_t v = 0;
  if (!absl::SimpleAtoi(digits, &v) || v > (uint64_t{1} << 50) / mult) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a size (bytes, or NM, NG)"));
  }
  return v * mult;
}

}  // namespace

absl::StatusOr<AreaConf> AreaConf::Parse(const std::string& spec) {
  std::vector<std::string> parts = absl::StrSplit(spec, ':');
  AreaConf c;
  if (parts.size() != 4 || parts[0].empty() || parts[1].empty() || parts[1][0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat(
        "lease area '", spec, "' must be LOCKSPACE:/ABSOLUTE/PATH:OFFSET:SIZE (SIZE in bytes, or "
        "with M or G)"));
  }
  c.lockspace = parts[0];
  c.path = parts[1];
  absl::StatusOr<uint64_t> off = ParseSize(parts[2]);
  absl::StatusOr<uint64_t> size = ParseSize(parts[3]);
  if (!off.ok() || !size.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "lease area '", spec, "': ", !off.ok() ? off.status().message() : size.status().message()));
  }
  c.offset = *off;
  c.size = *size;
  if (c.offset % kMiB != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("lease area '", spec, "': offset must be a multiple of 1 MiB"));
  }
  return c;
}

std::string AreaConf::ToString() const {
  return absl::StrCat(lockspace, ":", path, ":", offset, ":", size);
}

std::string LayoutRecord::Describe() const {
  switch (kind) {
    case Kind::kNone: return "nothing recorded";
    case Kind::kFiles:
      return absl::StrCat("lease files in a lease_dir (recorded by ", written_by, ")");
    case Kind::kSlots:
      return absl::StrCat("slots of lease area ", area_id, " (", area_path, ":", area_offset,
                          ", recorded by ", written_by, ")");
  }
  return "?";
}

absl::StatusOr<LayoutRecord> ReadLayout(const std::string& ls_path, uint64_t ls_offset,
                                        const Geometry& ls_geo) {
  absl::StatusOr<std::string> b =
      ReadSectors(ls_path, ls_offset + ls_geo.align - ls_geo.sector, ls_geo.sector, ls_geo.sector);
  if (!b.ok()) return b.status();
  LayoutRecord r;
  if (AllZero(*b)) return r;
  if (memcmp(b->data(), kLayoutMagic, 16) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the lockspace at ", ls_path, ":", ls_offset,
        " has something else in the sector where latchkey records where its automatic leases "
        "live (the last of its first ", ls_geo.align / kMiB, " MiB)"));
  }
  if (Get32(*b, kLVersion) != 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the lockspace's layout record has version ", Get32(*b, kLVersion),
        "; this latchkey reads version 1"));
  }
  r.kind = static_cast<LayoutRecord::Kind>(Get32(*b, kLKind));
  r.area_id = absl::BytesToHexString(b->substr(kLAreaId, 16));
  r.area_offset = Get64(*b, kLAreaOffset);
  r.written_at = Get64(*b, kLWrittenAt);
  r.written_by = GetStr(*b, kLWrittenBy, 64);
  r.area_path = GetStr(*b, kLAreaPath, kLAreaPathLen);
  return r;
}

absl::Status WriteLayout(const std::string& ls_path, uint64_t ls_offset, const Geometry& ls_geo,
                         const LayoutRecord& r) {
  std::string b(ls_geo.sector, '\0');
  if (r.kind != LayoutRecord::Kind::kNone) {
    memcpy(b.data(), kLayoutMagic, 16);
    Put32(&b, kLVersion, 1);
    Put32(&b, kLKind, static_cast<uint32_t>(r.kind));
    PutStr(&b, kLAreaId, 16, absl::HexStringToBytes(r.area_id));
    Put64(&b, kLAreaOffset, r.area_offset);
    Put64(&b, kLWrittenAt, r.written_at);
    PutStr(&b, kLWrittenBy, 64, r.written_by);
    PutStr(&b, kLAreaPath, kLAreaPathLen, r.area_path);
  }
  return WriteSectors(ls_path, ls_offset + ls_geo.align - ls_geo.sector, b, ls_geo.sector);
}

uint32_t LeaseArea::SlotsFor(uint64_t size, const Geometry& geo) {
  const uint64_t units = size / geo.align;
  if (units < 3) return 0;
  const uint64_t by_index = (geo.align - geo.sector) / kEntrySize;
  return static_cast<uint32_t>(std::min(units - 2, by_index));
}

absl::StatusOr<LeaseArea> LeaseArea::Open(const AreaConf& conf) {
  absl::StatusOr<std::string> b = ReadSectors(conf.path, conf.offset, 4096, 512);
  if (!b.ok()) return b.status();
  const std::string where = absl::StrCat("lease area ", conf.path, ":", conf.offset);
  if (AllZero(b->substr(0, 512))) {
    return absl::NotFoundError(absl::StrCat(where, " is not formatted"));
  }
  if (memcmp(b->data(), kAreaMagic, 16) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        where, " holds something that is not a latchkey lease area; latchkey will not use or "
               "overwrite it (format it with --force if it is really free)"));
  }
  if (Get32(*b, kHVersion) != kAreaVersion) {
    return absl::FailedPreconditionError(absl::StrCat(where, " has format version ",
                                                      Get32(*b, kHVersion),
                                                      "; this latchkey reads version 1"));
  }
  LeaseArea a;
  a.conf_ = conf;
  absl::StatusOr<Geometry> geo = Geometry::Make(Get32(*b, kHSector), Get64(*b, kHAlign));
  if (!geo.ok()) return absl::FailedPreconditionError(absl::StrCat(where, ": ", geo.status().message()));
  a.geo_ = *geo;
  a.slots_ = Get32(*b, kHSlots);
  a.id_ = absl::BytesToHexString(b->substr(kHId, 16));
  a.created_at_ = Get64(*b, kHCreatedAt);
  a.created_by_ = GetStr(*b, kHCreatedBy, 64);
  const std::string ls = GetStr(*b, kHLockspace, 48);
  if (ls != conf.lockspace) {
    return absl::FailedPreconditionError(absl::StrCat(
        where, " belongs to lockspace '", ls, "', not '", conf.lockspace, "'"));
  }
  if (a.slots_ == 0 || a.slots_ > SlotsFor(conf.size, a.geo_)) {
    return absl::FailedPreconditionError(absl::StrCat(
        where, " has ", a.slots_, " slots, more than the configured size (", conf.size,
        " bytes) holds: every host must configure the same area"));
  }
  return a;
}

absl::StatusOr<LeaseArea> LeaseArea::Format(const AreaConf& conf, const Geometry& geo,
                                            const std::string& host, bool force) {
  const std::string where = absl::StrCat("lease area ", conf.path, ":", conf.offset);
  if (conf.offset % geo.align != 0) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": the offset must be a multiple of ",
                                                   geo.align / kMiB, " MiB (", geo.ToString(),
                                                   ")"));
  }
  const uint32_t slots = SlotsFor(conf.size, geo);
  if (slots == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": ", conf.size, " bytes hold no slot (an area needs 3 units of ",
        geo.align / kMiB, " MiB: header, allocator, one slot)"));
  }
  absl::StatusOr<uint64_t> size = StorageSize(conf.path);
  if (!size.ok()) return size.status();
  if (*size < conf.offset + conf.size) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": the storage is ", *size,
                                                   " bytes, too small for ", conf.size,
                                                   " bytes at offset ", conf.offset));
  }
  if (!force) {
    for (uint64_t at : {conf.offset, conf.offset + geo.align, conf.offset + 2 * geo.align}) {
      absl::StatusOr<std::string> b = ReadSectors(conf.path, at, 4096, 512);
      if (!b.ok()) return b.status();
      if (!AllZero(*b)) {
        return absl::FailedPreconditionError(absl::StrCat(
            where, " is not blank (at byte ", at, "): it may hold an area or leases in use; "
                   "format refuses unless forced"));
      }
    }
  }
  std::string id(16, '\0');
  if (getrandom(id.data(), id.size(), 0) != 16) {
    return absl::InternalError("cannot read random bytes for the area id");
  }
  // The index first, the header last: a half-formatted area is not one.
  absl::Status st = WriteSectors(conf.path, conf.offset + geo.sector,
                                 std::string(IndexBytes(slots, geo.sector), '\0'), geo.sector);
  if (!st.ok()) return st;
  std::string h(geo.sector, '\0');
  memcpy(h.data(), kAreaMagic, 16);
  Put32(&h, kHVersion, kAreaVersion);
  Put32(&h, kHSector, geo.sector);
  Put64(&h, kHAlign, geo.align);
  Put32(&h, kHSlots, slots);
  PutStr(&h, kHLockspace, 48, conf.lockspace);
  PutStr(&h, kHId, 16, id);
  Put64(&h, kHCreatedAt, Now());
  PutStr(&h, kHCreatedBy, 64, host);
  st = WriteSectors(conf.path, conf.offset, h, geo.sector);
  if (!st.ok()) return st;
  return Open(conf);
}

absl::StatusOr<std::vector<SlotEntry>> LeaseArea::ReadIndex() const {
  absl::StatusOr<std::string> b =
      ReadSectors(conf_.path, conf_.offset + geo_.sector, IndexBytes(slots_, geo_.sector),
                  geo_.sector);
  if (!b.ok()) return b.status();
  std::vector<SlotEntry> out;
  out.reserve(slots_);
  for (uint32_t i = 0; i < slots_; ++i) out.push_back(DecodeEntry(*b, i * kEntrySize, i));
  return out;
}

absl::StatusOr<SlotEntry> LeaseArea::ReadEntry(uint32_t slot) const {
  if (slot >= slots_) return absl::OutOfRangeError(absl::StrCat("no slot ", slot));
  const uint64_t at = uint64_t{slot} * kEntrySize;
  const uint64_t sector_at = at / geo_.sector * geo_.sector;
  absl::StatusOr<std::string> b =
      ReadSectors(conf_.path, conf_.offset + geo_.sector + sector_at, geo_.sector, geo_.sector);
  if (!b.ok()) return b.status();
  return DecodeEntry(*b, at - sector_at, slot);
}

absl::Status LeaseArea::WriteEntry(const SlotEntry& e) const {
  if (e.slot >= slots_) return absl::OutOfRangeError(absl::StrCat("no slot ", e.slot));
  const uint64_t at = uint64_t{e.slot} * kEntrySize;
  const uint64_t sector_at = at / geo_.sector * geo_.sector;
  const uint64_t disk_at = conf_.offset + geo_.sector + sector_at;
  absl::StatusOr<std::string> b = ReadSectors(conf_.path, disk_at, geo_.sector, geo_.sector);
  if (!b.ok()) return b.status();
  EncodeEntry(&*b, at - sector_at, e);
  return WriteSectors(conf_.path, disk_at, *b, geo_.sector);
}

namespace {

const SlotEntry* Find(const std::vector<SlotEntry>& index, const std::string& name) {
  for (const SlotEntry& e : index) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

}  // namespace

namespace {

// A random pause growing with the attempt: 50..150 ms, up to 0.4..1.2 s.
void Pause(int attempt) {
  uint32_t r = 0;
  if (getrandom(&r, sizeof(r), 0) != sizeof(r)) r = static_cast<uint32_t>(attempt) * 7919;
  const int base = 50 << std::min(attempt, 3);
  absl::SleepFor(absl::Milliseconds(base + static_cast<int>(r % (2 * base))));
}

}  // namespace

absl::Status LockAllocator(const LeaseArea& area, LeaseOps& ops, absl::Time deadline) {
  for (int attempt = 0;; ++attempt) {
    absl::Status st = ops.TryLockExclusive(kAllocatorLease, area.AllocatorOffset());
    if (st.ok() || !absl::IsUnavailable(st)) return st;
    if (absl::Now() >= deadline) {
      return absl::UnavailableError(absl::StrCat("the allocator lease of lease area ", area.id(),
                                                 " stayed busy: ", st.message()));
    }
    Pause(attempt);
  }
}

absl::StatusOr<SlotEntry> FindOrAllocate(const LeaseArea& area, LeaseOps& ops,
                                         const std::string& name, uint64_t host_id, bool create,
                                         absl::Time deadline) {
  absl::StatusOr<std::vector<SlotEntry>> index;
  for (int attempt = 0;; ++attempt) {
    index = area.ReadIndex();
    if (!index.ok()) return index.status();
    if (const SlotEntry* e = Find(*index, name)) return *e;
    if (!create) {
      return absl::NotFoundError(absl::StrCat("no slot for ", name, " in lease area ", area.id()));
    }
    absl::Status st = ops.TryLockExclusive(kAllocatorLease, area.AllocatorOffset());
    if (st.ok()) break;
    if (!absl::IsUnavailable(st)) return st;
    if (absl::Now() >= deadline) {
      return absl::UnavailableError(absl::StrCat("the allocator lease of lease area ", area.id(),
                                                 " stayed busy: ", st.message()));
    }
    Pause(attempt);
  }
  struct Unlock {
    LeaseOps& ops;
    const LeaseArea& area;
    ~Unlock() { ops.Unlock(kAllocatorLease, area.AllocatorOffset()); }
  } unlock{ops, area};
  index = area.ReadIndex();  // under the allocator lease: the truth
  if (!index.ok()) return index.status();
  if (const SlotEntry* e = Find(*index, name)) return *e;
  const SlotEntry* free_entry = nullptr;
  for (const SlotEntry& e : *index) {
    if (!e.used()) {
      free_entry = &e;
      break;
    }
  }
  if (free_entry == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "lease area ", area.conf().path, ":", area.conf().offset, " is full (", area.slots(),
        " slots): free leases nobody uses with latchctl leases-clean, or configure a larger "
        "area"));
  }
  SlotEntry e = *free_entry;
  e.name = name;
  e.generation += 1;
  e.allocated_at = Now();
  e.allocated_by = host_id;
  e.idle_lver = e.idle_since = e.idle_observer = 0;
  if (absl::Status st = ops.WriteLease(name, area.SlotOffset(e.slot)); !st.ok()) return st;
  if (absl::Status st = area.WriteEntry(e); !st.ok()) return st;
  return e;
}

absl::Status Verify(const LeaseArea& area, const SlotEntry& found) {
  absl::StatusOr<SlotEntry> now = area.ReadEntry(found.slot);
  if (!now.ok()) return now.status();
  if (now->name != found.name || now->generation != found.generation) {
    return absl::AbortedError(absl::StrCat("slot ", found.slot, " of lease area ", area.id(),
                                           " was freed or reused while ", found.name,
                                           " was being acquired"));
  }
  return absl::OkStatus();
}

absl::Status FreeSlot(const LeaseArea& area, LeaseOps& ops, const SlotEntry& entry,
                      absl::Time deadline) {
  if (absl::Status st = LockAllocator(area, ops, deadline); !st.ok()) return st;
  struct Unlock {
    LeaseOps& ops;
    const LeaseArea& area;
    ~Unlock() { ops.Unlock(kAllocatorLease, area.AllocatorOffset()); }
  } unlock{ops, area};
  absl::StatusOr<SlotEntry> now = area.ReadEntry(entry.slot);
  if (!now.ok()) return now.status();
  if (now->name != entry.name || now->generation != entry.generation) {
    return absl::FailedPreconditionError(
        absl::StrCat("slot ", entry.slot, " changed meanwhile; left alone"));
  }
  SlotEntry cleared = *now;
  cleared.name.clear();
  cleared.idle_lver = cleared.idle_since = cleared.idle_observer = 0;
  return area.WriteEntry(cleared);
}

}  // namespace sanlockbe
}  // namespace latchkey
