// Resources: what a lock protects.
//
// A resource is a lockspace plus a name, unique together. Two kinds exist:
//
//   * a disk: named after the canonical path of an image. The name is a hex
//     SHA-256 digest of that path, cut to the backend's name limit (DLM 64
//     bytes, sanlock 48), so every host that sees the same image through the
//     same canonical path derives the same name. The path is kept for
//     messages and for backends that lock the image itself.
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

namespace latchkey {

// The numeric values are part of the plugin ABI (core/plugin_abi.h).
enum class ResourceKind : uint32_t {
  kDisk = 1,
  kLease = 2,
};

const char* ResourceKindName(ResourceKind kind);

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

  // Builds a disk resource. `image_path` is made canonical (symlinks, "..",
  // relative parts resolved) when the file exists; a missing file keeps its
  // absolute, lexically normalised path so a lock may be taken before the
  // image is created. `max_name_len` is the backend's limit (<= 64).
  static absl::StatusOr<Resource> Disk(absl::string_view image_path,
                                       absl::string_view lockspace,
                                       size_t max_name_len = kMaxNameLen);

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

// The disk name for a canonical path: hex SHA-256 cut to max_len (<= 64).
std::string DiskResourceName(absl::string_view canonical_path,
                             size_t max_len = kMaxNameLen);

// Canonical absolute form of `path` (see Resource::Disk).
absl::StatusOr<std::string> CanonicalImagePath(absl::string_view path);

}  // namespace latchkey

#endif  // LATCHKEY_CORE_RESOURCE_H_
