// Disk identity: what a disk is, whatever path reached it.
//
// A lock named after a path can be dodged by another spelling of the same
// storage: a hard link, a bind mount, a loop device over the image, a second
// device node, another host's mount point. IdentifyDisk() asks the storage
// itself (the rules, and what each protects against, are in
// docs/disk-identity.md):
//
//   block device   WWID (SCSI VPD 0x83, NVMe), device-mapper UUID (LVM LV,
//                  multipath: its WWID, so a path device and its multipath
//                  device agree), MD array UUID, or the device's serial;
//                  a loop device is its backing file (plus offset and size
//                  limit when set); a partition is its disk plus start and
//                  length.
//   regular file   the file system's UUID plus the file handle (inode and
//                  generation); on NFS the server's file handle alone, the
//                  same on every client whatever it was mounted as; a file
//                  system without a UUID gives a host-local identity.
//   otherwise      the canonical path ("path" kind): only as strong as the
//                  path, and `reason` says why.
//
// Identities are computed in the caller's mount namespace (latchd, or the
// libvirt adapter in libvirtd), never inside a guest's.
//
// Example:
//   absl::StatusOr<DiskIdentity> id = IdentifyDisk("/var/lib/images/vm1.img");
//   if (id.ok()) name = DiskIdentityName(id->id, 64);
//
// Thread safety: IdentifyDisk is reentrant.
#ifndef LATCHKEY_CORE_DISK_IDENTITY_H_
#define LATCHKEY_CORE_DISK_IDENTITY_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace latchkey {

struct DiskIdentity {
  // The identity, a printable string such as "fs:<uuid>:fh:1:<hex>" or
  // "wwid:naa.6001405..." or "path:/dev/vda". Equal ids are one disk.
  std::string id;
  // How it was found: "file", "nfs-file", "host-file", "wwid", "dm-uuid",
  // "md-uuid", "serial", "loop", "partition" or "path".
  std::string kind;
  // What a lock on the storage itself (posixfd lock_target = "image")
  // locks: the file for regular files (hard links and bind mounts are one
  // inode), the backing file of a loop device, /dev/<kernel name> for other
  // block devices (so a second device node is the same one), the path when
  // nothing better is known.
  std::string anchor;
  // Set when kind is "path": why no stronger identity was found.
  std::string reason;

  bool weak() const { return kind == "path"; }
};

// Where IdentifyDisk reads the system; tests point these at fixtures.
struct IdentityEnv {
  std::string sysfs = "/sys";
  std::string devfs = "/dev";
  std::string machine_id_file = "/etc/machine-id";
};

// Identifies the disk at `canonical_path` (absolute, as CanonicalImagePath
// makes it). Fails only on a path that cannot be a disk (a directory, a
// socket); a missing file, or storage that says nothing about itself, gives
// a "path" identity.
absl::StatusOr<DiskIdentity> IdentifyDisk(const std::string& canonical_path,
                                          const IdentityEnv& env = IdentityEnv());

// The resource name for an identity: hex SHA-256 of a versioned preimage,
// cut to max_len (<= 64). Never equal to a path-based name
// (DiskResourceName), so the two naming schemes cannot collide.
std::string DiskIdentityName(absl::string_view id, size_t max_len);

}  // namespace latchkey

#endif  // LATCHKEY_CORE_DISK_IDENTITY_H_
