#include "core/disk_identity.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/sha256.h"

// FS_IOC_GETFSUUID (Linux 6.5) is newer than the build's kernel headers;
// its number and layout are part of the kernel's ABI.
#ifndef FS_IOC_GETFSUUID
struct latchkey_fsuuid2 {
  uint8_t len;
  uint8_t uuid[16];
};
#define FS_IOC_GETFSUUID _IOR(0x15, 0, struct latchkey_fsuuid2)
#else
using latchkey_fsuuid2 = fsuuid2;
#endif

namespace latchkey {
namespace {

constexpr long kNfsSuperMagic = 0x6969;
constexpr int kMaxDepth = 8;  // loop over a block device over ...

std::string Hex(const void* data, size_t n) {
  return absl::BytesToHexString(absl::string_view(static_cast<const char*>(data), n));
}

// A sysfs attribute, whitespace trimmed; empty when absent or unreadable.
std::string ReadAttr(const std::string& path) {
  std::ifstream in(path);
  if (!in) return "";
  std::stringstream s;
  s << in.rdbuf();
  return std::string(absl::StripAsciiWhitespace(s.str()));
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// Identity attributes are printed into ids; keep them to one printable line.
std::string Clean(absl::string_view v) {
  std::string out;
  for (char c : v) {
    const unsigned char u = static_cast<unsigned char>(c);
    out.push_back(u > 0x20 && u < 0x7f && c != ':' ? c : '_');
  }
  return out;
}

DiskIdentity PathIdentity(const std::string& path, std::string reason) {
  DiskIdentity d;
  d.id = absl::StrCat("path:", path);
  d.kind = "path";
  d.anchor = path;
  d.reason = std::move(reason);
  return d;
}

std::string MachineId(const IdentityEnv& env) {
  std::string id = ReadAttr(env.machine_id_file);
  if (!id.empty()) return Clean(id);
  char host[HOST_NAME_MAX + 1] = {};
  if (gethostname(host, sizeof host - 1) == 0 && host[0] != '\0') return Clean(host);
  return "unknown-host";
}

// A multipath map's WWID as scsi_id prints it ("3" + NAA hex, "2" + EUI-64
// hex), in the form the kernel's sysfs wwid attribute uses ("naa.", "eui."),
// so a path device and its multipath device have one identity.
std::string WwidFromMultipath(absl::string_view w) {
  std::string lower = absl::AsciiStrToLower(w);
  if (lower.size() > 1 && lower[0] == '3') return absl::StrCat("naa.", lower.substr(1));
  if (lower.size() > 1 && lower[0] == '2') return absl::StrCat("eui.", lower.substr(1));
  return lower;
}

std::string NormalizeWwid(absl::string_view w) {
  std::string lower = absl::AsciiStrToLower(w);
  // The kernel prints "naa.", "eui.", "t10." prefixes in lower case already
  // and hex in lower case; keep t10 text as is apart from case and spaces.
  return Clean(lower);
}

absl::StatusOr<DiskIdentity> IdentifyAt(const std::string& path, const IdentityEnv& env,
                                        int depth);

// The block device major:minor, by what its sysfs directory says.
absl::StatusOr<DiskIdentity> IdentifyBlock(const std::string& path, dev_t rdev,
                                           const IdentityEnv& env, int depth) {
  const std::string devno = absl::StrCat(major(rdev), ":", minor(rdev));
  const std::string link = absl::StrCat(env.sysfs, "/dev/block/", devno);
  char resolved[PATH_MAX];
  if (realpath(link.c_str(), resolved) == nullptr) {
    return PathIdentity(path, absl::StrCat("block device ", devno, " has no ", link));
  }
  const std::string dir = resolved;
  std::string kname = dir.substr(dir.rfind('/') + 1);
  for (absl::string_view line : absl::StrSplit(ReadAttr(dir + "/uevent"), '\n')) {
    if (absl::ConsumePrefix(&line, "DEVNAME=")) kname = std::string(line);
  }
  const std::string node = absl::StrCat(env.devfs, "/", kname);
  auto weak = [&](std::string why) {
    // Without an identity, at least every device node of this device is one
    // name: the kernel's.
    return PathIdentity(node, std::move(why));
  };

  // A partition: its disk, plus where it lies on it.
  if (Exists(dir + "/partition")) {
    const std::string parent_dir = dir.substr(0, dir.rfind('/'));
    const std::string parent_devno = ReadAttr(parent_dir + "/dev");
    std::vector<std::string> mm = absl::StrSplit(parent_devno, ':');
    unsigned pmaj = 0, pmin = 0;
    if (mm.size() != 2 || !absl::SimpleAtoi(mm[0], &pmaj) || !absl::SimpleAtoi(mm[1], &pmin)) {
      return weak(absl::StrCat("partition ", kname, ": its disk's number is unreadable"));
    }
    const std::string parent_name = parent_dir.substr(parent_dir.rfind('/') + 1);
    absl::StatusOr<DiskIdentity> disk = IdentifyBlock(absl::StrCat(env.devfs, "/", parent_name),
                                                      makedev(pmaj, pmin), env, depth + 1);
    if (!disk.ok()) return disk.status();
    if (disk->weak()) {
      return weak(absl::StrCat("partition ", kname, " of a disk without identity (",
                               disk->reason, ")"));
    }
    DiskIdentity d;
    d.id = absl::StrCat(disk->id, ":part:start=", ReadAttr(dir + "/start"),
                        ":size=", ReadAttr(dir + "/size"));
    d.kind = "partition";
    d.anchor = node;
    return d;
  }

  // Device-mapper: LVM, multipath, crypt... carry a UUID when their tool set one.
  if (std::string uuid = ReadAttr(dir + "/dm/uuid"); !uuid.empty()) {
    DiskIdentity d;
    d.anchor = node;
    if (absl::StartsWith(uuid, "mpath-")) {
      d.id = absl::StrCat("wwid:", WwidFromMultipath(uuid.substr(6)));
      d.kind = "wwid";
    } else {
      d.id = absl::StrCat("dm:", Clean(uuid));
      d.kind = "dm-uuid";
    }
    return d;
  }
  if (Exists(dir + "/dm")) {
    return weak(absl::StrCat("device-mapper device ", kname, " (",
                             ReadAttr(dir + "/dm/name"), ") has no UUID"));
  }

  // A loop device is its backing file.
  if (Exists(dir + "/loop")) {
    const std::string backing = ReadAttr(dir + "/loop/backing_file");
    if (backing.empty()) return weak(absl::StrCat("loop device ", kname, " has no backing file"));
    if (absl::EndsWith(backing, " (deleted)")) {
      return weak(absl::StrCat("loop device ", kname, ": its backing file was deleted"));
    }
    if (depth >= kMaxDepth) return weak(absl::StrCat("loop device ", kname, ": nested too deep"));
    absl::StatusOr<DiskIdentity> file = IdentifyAt(backing, env, depth + 1);
    if (!file.ok() || file->weak()) {
      return weak(absl::StrCat("loop device ", kname, ": its backing file ", backing,
                               " has no identity (",
                               file.ok() ? file->reason : std::string(file.status().message()),
                               ")"));
    }
    DiskIdentity d = *std::move(file);
    const std::string offset = ReadAttr(dir + "/loop/offset");
    const std::string limit = ReadAttr(dir + "/loop/sizelimit");
    if ((!offset.empty() && offset != "0") || (!limit.empty() && limit != "0")) {
      // Another extent of the file: another disk. (The file and the loop
      // over its whole length stay one.)
      d.id = absl::StrCat(d.id, ":loop:offset=", offset, ":sizelimit=", limit);
      d.kind = "loop";
      d.anchor = node;
    }
    return d;
  }

  if (std::string uuid = ReadAttr(dir + "/md/uuid"); !uuid.empty()) {
    DiskIdentity d;
    d.id = absl::StrCat("md:", Clean(uuid));
    d.kind = "md-uuid";
    d.anchor = node;
    return d;
  }
  for (const char* attr : {"/wwid", "/device/wwid"}) {
    if (std::string w = ReadAttr(dir + attr); !w.empty()) {
      DiskIdentity d;
      d.id = absl::StrCat("wwid:", NormalizeWwid(w));
      d.kind = "wwid";
      d.anchor = node;
      return d;
    }
  }
  for (const char* attr : {"/serial", "/device/serial"}) {
    if (std::string s = ReadAttr(dir + attr); !s.empty()) {
      DiskIdentity d;
      const std::string model = ReadAttr(dir + "/device/model");
      d.id = absl::StrCat("serial:", Clean(model), ":", Clean(s));
      d.kind = "serial";
      d.anchor = node;
      return d;
    }
  }
  return weak(absl::StrCat("block device ", kname, " (", devno,
                           ") has no WWID, serial, device-mapper or MD UUID"));
}

// open(path, flags) without following any symlink on the way (openat2
// RESOLVE_NO_SYMLINKS; on kernels before 5.6, O_NOFOLLOW for the last
// component only), with O_NOATIME where allowed. -1 on failure.
int OpenNoSymlinks(const std::string& path, int flags) {
  for (int noatime : {(flags & O_PATH) ? 0 : O_NOATIME, 0}) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = static_cast<uint64_t>(flags | O_CLOEXEC | O_NOFOLLOW | noatime);
    how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    long fd = syscall(SYS_openat2, AT_FDCWD, path.c_str(), &how, sizeof how);
    if (fd < 0 && errno == ENOSYS) {
      fd = open(path.c_str(), static_cast<int>(how.flags));
    }
    if (fd >= 0) return static_cast<int>(fd);
    if (errno != EPERM) return -1;  // EPERM: O_NOATIME on another's file
  }
  return -1;
}

absl::StatusOr<DiskIdentity> IdentifyFile(const std::string& path, const struct stat& st,
                                          const IdentityEnv& env) {
  // Everything is asked of one descriptor of exactly the inode that was
  // stat'ed, so a rename or swap meanwhile cannot mix two files into one
  // identity. The path is canonical, so no symlink may appear on the way:
  // one that does was swapped in since, perhaps towards a device whose
  // open() acts (a tape rewinds). Without read access (latchctl run by a
  // user), an O_PATH descriptor still gives the handle, not the UUID.
  bool readable = true;
  int fd = OpenNoSymlinks(path, O_RDONLY | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) {
    readable = false;
    fd = OpenNoSymlinks(path, O_PATH);
  }
  if (fd < 0) return PathIdentity(path, absl::StrCat("cannot open it: ", strerror(errno)));
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  struct stat again;
  if (fstat(fd, &again) != 0 || !S_ISREG(again.st_mode) || again.st_dev != st.st_dev ||
      again.st_ino != st.st_ino) {
    return PathIdentity(path, "it changed while it was being identified");
  }

  // The handle: inode and generation on local file systems, the server's
  // own handle on NFS.
  std::vector<unsigned char> buf(sizeof(struct file_handle) + MAX_HANDLE_SZ);
  auto* fh = reinterpret_cast<struct file_handle*>(buf.data());
  fh->handle_bytes = MAX_HANDLE_SZ;
  int mount_id = 0;
  if (name_to_handle_at(fd, "", fh, &mount_id, AT_EMPTY_PATH) != 0) {
    return PathIdentity(path, absl::StrCat("its file system gives no file handles (",
                                           strerror(errno), ")"));
  }
  const std::string handle =
      absl::StrCat("fh:", fh->handle_type, ":", Hex(fh->f_handle, fh->handle_bytes));

  struct statfs fs;
  if (fstatfs(fd, &fs) != 0) {
    return PathIdentity(path, absl::StrCat("statfs failed: ", strerror(errno)));
  }
  DiskIdentity d;
  d.anchor = path;
  if (fs.f_type == kNfsSuperMagic) {
    // The server's handle names the export and the file; every client gets
    // the same bytes, whatever server name or path it mounted.
    d.id = absl::StrCat("nfs:", handle);
    d.kind = "nfs-file";
    return d;
  }
  // The file system's UUID. Asking through a descriptor of our own is
  // harmless to locks: latchkey's are OFD locks, which another descriptor's
  // close() keeps.
  latchkey_fsuuid2 u{};
  bool have_uuid = readable && ioctl(fd, FS_IOC_GETFSUUID, &u) == 0 && u.len > 0 &&
                   u.len <= sizeof u.uuid;
  // An all-zero UUID (mke2fs -U null, some image builders) names nothing.
  bool zero = true;
  for (size_t i = 0; have_uuid && i < u.len; ++i) zero &= u.uuid[i] == 0;
  if (zero) have_uuid = false;
  if (have_uuid) {
    d.id = absl::StrCat("fs:", Hex(u.uuid, u.len), ":", handle);
    d.kind = "file";
    return d;
  }
  // No UUID (tmpfs, overlay, a kernel before 6.5, no read access): the file
  // is one on this host only.
  d.id = absl::StrCat("host:", MachineId(env), ":dev=", major(st.st_dev), ":", minor(st.st_dev),
                      ":", handle);
  d.kind = "host-file";
  return d;
}

absl::StatusOr<DiskIdentity> IdentifyAt(const std::string& path, const IdentityEnv& env,
                                        int depth) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    const int e = errno;
    if (e == ENOENT || e == ENOTDIR) {
      return PathIdentity(path, "it does not exist (yet)");
    }
    return PathIdentity(path, absl::StrCat("stat failed: ", strerror(e)));
  }
  if (S_ISBLK(st.st_mode)) return IdentifyBlock(path, st.st_rdev, env, depth);
  if (S_ISREG(st.st_mode)) return IdentifyFile(path, st, env);
  if (S_ISDIR(st.st_mode)) {
    return PathIdentity(path, "it is a directory");
  }
  if (S_ISCHR(st.st_mode)) return PathIdentity(path, "it is a character device");
  return absl::InvalidArgumentError(
      absl::StrCat("disk path '", path, "' is neither a file nor a block device"));
}

}  // namespace

absl::StatusOr<DiskIdentity> IdentifyDisk(const std::string& canonical_path,
                                          const IdentityEnv& env) {
  return IdentifyAt(canonical_path, env, 0);
}

std::string DiskIdentityName(absl::string_view id, size_t max_len) {
  std::string hex = Sha256Hex(absl::StrCat("latchkey disk identity v2\n", id));
  if (max_len < hex.size()) hex.resize(max_len);
  return hex;
}

}  // namespace latchkey
