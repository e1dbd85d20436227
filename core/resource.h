// Resources: what a lock protects.
//
// A resource is a lockspace plus a name, unique together. Two kinds exist:
//
//   * a disk: named after what the storage says it is (core/disk_identity.h:
//     WWID, device-mapper UUID, file system UUID + file handle, NFS file
//     handle...), so every spelling of it on every host that sees it gives
//     one name: the hex SHA-256 of the identity, cut to the backend's name
//     limit (DLM 64 bytes, sanlock 48). The caller's canonical path is kept
//     for messages and for backends that lock the storage itself. The older
//     naming scheme (DiskNaming::kPath: the digest of the canonical path) is
//     still built for hosts and journals that use it.
//   * a lease: an explicit lockspace and key, as libvirt's <lease> element
//     carries, plus where the lease lives on storage (path + offset) for
//     backends that need it (sanlock).
//
// Example:
//   absl::StatusOr<Resource> disk =
//       Resource::Disk("/var/lib/images/vm1.qcow2", "default", 64);
//   if (!disk.ok()) return disk.status();  // message names the path
//
// Thread safety: Resource is a plain value.
#ifndef LATCHKEY_CORE_RESOURCE_H_
#define LATCHKEY_CORE_RESOURCE_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/disk_identity.h"

namespace latchkey {

// The numeric values are part of the plugin ABI (core/plugin_abi.h).
enum class ResourceKind : uint32_t {
  kDisk = 1,
  kLease = 2,
};

const char* ResourceKindName(ResourceKind kind);

// How a disk resource is named. kPath is what latchkey before disk
// identities used (scheme 1); kIdentity is scheme 2. The two never give
// equal names.
enum class DiskNaming {
  kIdentity,
  kPath,
};

// The longest lockspace or resource name any backend accepts (DLM's limit).
// A backend may declare a shorter one (Capabilities::max_name_len).
inline constexpr size_t kMaxNameLen = 64;
// Paths longer than this are refused (PATH_MAX minus the terminator).
inline constexpr size_t kMaxPathLen = 4095;

struct Resource {
  ResourceKind kind = ResourceKind::kLease;
  std::string lockspace;
  std::string name;
  // Disk: the canonical image path. Lease: the lease's storage (may be
  // empty when the backend keeps leases itself).
  std::string path;
  uint64_t offset = 0;  // Lease storage offset; 0 for disks.
  // Disk only, filled by Disk() (not carried by the plugin ABI): how the
  // name was made, the identity (DiskIdentity::id and ::kind; "path" when
  // the storage said nothing about itself, with the reason) and what a
  // lock on the storage itself locks (DiskIdentity::anchor).
  DiskNaming naming = DiskNaming::kIdentity;
  std::string identity;
  std::string identity_kind;
  std::string identity_reason;
  std::string anchor;

  // Builds a disk resource. `image_path` is made canonical (symlinks, "..",
  // relative parts resolved) when the file exists; a missing file keeps its
  // absolute, lexically normalised path so a lock may be taken before the
  // image is created (and is named by that path: see docs/disk-identity.md).
  // `max_name_len` is the backend's limit (<= 64).
  // `known`, when given, is the identity a caller in another mount
  // namespace found for the path (see docs/disk-identity.md); otherwise it
  // is found here.
  static absl::StatusOr<Resource> Disk(absl::string_view image_path,
                                       absl::string_view lockspace,
                                       size_t max_name_len = kMaxNameLen,
                                       DiskNaming naming = DiskNaming::kIdentity,
                                       const DiskIdentity* known = nullptr);

  // Builds a lease resource; `path` and `offset` may be empty/0.
  static absl::StatusOr<Resource> Lease(absl::string_view lockspace,
                                        absl::string_view key,
                                        absl::string_view path = "",
                                        uint64_t offset = 0);

  // "lockspace/name": a key unique per resource, for maps.
  std::string Key() const;

  // Human description for messages: "disk /path (lockspace L, name N)" or
  // "lease L/K".
  std::string Describe() const;

  // OK when lockspace, name and path satisfy the rules below, against the
  // backend's name limit.
  absl::Status Validate(size_t max_name_len = kMaxNameLen) const;

  // The fields the plugin ABI carries (identity fields are derived).
  bool operator==(const Resource& o) const {
    return kind == o.kind && lockspace == o.lockspace && name == o.name &&
           path == o.path && offset == o.offset;
  }
};

// A lockspace or resource name: 1..max_len characters from [A-Za-z0-9_.-],
// not starting with '.' or '-'. So a name can never escape a directory or
// look like an option. `what` ("lockspace", "lease key") starts the message.
absl::Status ValidateName(absl::string_view what, absl::string_view name,
                          size_t max_len = kMaxNameLen);

// The scheme-1 disk name for a canonical path: hex SHA-256 of the path cut
// to max_len (<= 64). Scheme 2 is DiskIdentityName (core/disk_identity.h).
std::string DiskResourceName(absl::string_view canonical_path,
                             size_t max_len = kMaxNameLen);

// "identity" / "path".
const char* DiskNamingName(DiskNaming naming);

// Canonical absolute form of `path` (see Resource::Disk).
absl::StatusOr<std::string> CanonicalImagePath(absl::string_view path);

}  // namespace latchkey

#endif  // LATCHKEY_CORE_RESOURCE_H_
