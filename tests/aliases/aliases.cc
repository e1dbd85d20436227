#include "tests/aliases/aliases.h"

#include <fcntl.h>
#include <linux/dm-ioctl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace latchkey {
namespace aliases {
namespace {

absl::Status Errno(const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", strerror(errno)));
}

}  // namespace

absl::Status EnterPrivateMountNamespace() {
  if (unshare(CLONE_NEWNS) != 0) return Errno("unshare(CLONE_NEWNS)");
  if (mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    return Errno("making / private in the new mount namespace");
  }
  return absl::OkStatus();
}

absl::StatusOr<BindMount> BindMount::Make(const std::string& source, const std::string& target) {
  struct stat st;
  if (stat(source.c_str(), &st) != 0) return Errno(absl::StrCat("stat ", source));
  if (S_ISDIR(st.st_mode)) {
    if (mkdir(target.c_str(), 0700) != 0 && errno != EEXIST) return Errno("mkdir " + target);
  } else {
    const int fd = open(target.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0) return Errno("creating " + target);
    close(fd);
  }
  if (mount(source.c_str(), target.c_str(), nullptr, MS_BIND, nullptr) != 0) {
    return Errno(absl::StrCat("bind mount ", source, " on ", target));
  }
  return BindMount(target);
}

BindMount::~BindMount() {
  if (!target_.empty()) umount2(target_.c_str(), MNT_DETACH);
}

namespace {

// One attempt; EBUSY when another process took the free device first.
absl::StatusOr<std::pair<std::string, int>> AttachOnce(const std::string& file, uint64_t offset,
                                                       bool partscan, int* err_out);

}  // namespace

absl::StatusOr<LoopDevice> LoopDevice::Attach(const std::string& file, uint64_t offset,
                                              bool partscan) {
  // Tests run in parallel: another may take the device LOOP_CTL_GET_FREE
  // named between that call and ours; ask again.
  for (int attempt = 0;; ++attempt) {
    int err = 0;
    absl::StatusOr<std::pair<std::string, int>> r = AttachOnce(file, offset, partscan, &err);
    if (r.ok()) return LoopDevice(r->first, r->second);
    if (err != EBUSY || attempt == 20) return r.status();
    absl::SleepFor(absl::Milliseconds(10));
  }
}

namespace {

absl::StatusOr<std::pair<std::string, int>> AttachOnce(const std::string& file, uint64_t offset,
                                                       bool partscan, int* err_out) {
  const int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (ctl < 0) return Errno("no loop driver here (/dev/loop-control)");
  const int n = ioctl(ctl, LOOP_CTL_GET_FREE);
  close(ctl);
  if (n < 0) return Errno("LOOP_CTL_GET_FREE");
  const std::string path = absl::StrCat("/dev/loop", n);
  // devtmpfs makes the node; without it, make one.
  struct stat st;
  if (stat(path.c_str(), &st) != 0 &&
      mknod(path.c_str(), S_IFBLK | 0600, makedev(7, static_cast<unsigned>(n))) != 0) {
    return Errno("mknod " + path);
  }
  const int backing = open(file.c_str(), O_RDWR | O_CLOEXEC);
  if (backing < 0) return Errno("open " + file);
  const int dev = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (dev < 0) {
    close(backing);
    return Errno("open " + path);
  }
  struct loop_config config;
  memset(&config, 0, sizeof config);
  config.fd = static_cast<uint32_t>(backing);
  config.info.lo_offset = offset;
  config.info.lo_flags = partscan ? LO_FLAGS_PARTSCAN : 0;
  strncpy(reinterpret_cast<char*>(config.info.lo_file_name), file.c_str(), LO_NAME_SIZE - 1);
  const int rc = ioctl(dev, LOOP_CONFIGURE, &config);
  const int err = errno;
  close(backing);
  if (rc != 0) {
    close(dev);
    errno = err;
    *err_out = err;
    return Errno(absl::StrCat("LOOP_CONFIGURE ", path, " over ", file));
  }
  return std::make_pair(path, dev);
}

}  // namespace

LoopDevice::~LoopDevice() {
  if (fd_ < 0) return;
  ioctl(fd_, LOOP_CLR_FD, 0);
  close(fd_);
}

namespace {

// One dm ioctl on /dev/mapper/control; `extra` follows the header.
absl::Status DmIoctl(unsigned long cmd, const std::string& name, const std::string& uuid,
                     uint32_t flags, const std::string& extra, uint32_t target_count,
                     uint64_t* dev_out) {
  const int ctl = open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
  if (ctl < 0) return Errno("no device-mapper here (/dev/mapper/control)");
  std::string buf(sizeof(struct dm_ioctl) + extra.size() + 16384, '\0');
  auto* io = reinterpret_cast<struct dm_ioctl*>(buf.data());
  io->version[0] = DM_VERSION_MAJOR;
  io->version[1] = 0;
  io->version[2] = 0;
  io->data_size = static_cast<uint32_t>(buf.size());
  io->data_start = sizeof(struct dm_ioctl);
  io->target_count = target_count;
  io->flags = flags;
  strncpy(io->name, name.c_str(), DM_NAME_LEN - 1);
  if (!uuid.empty()) strncpy(io->uuid, uuid.c_str(), DM_UUID_LEN - 1);
  memcpy(buf.data() + sizeof(struct dm_ioctl), extra.data(), extra.size());
  const int rc = ioctl(ctl, cmd, io);
  const int err = errno;
  close(ctl);
  if (rc != 0) {
    errno = err;
    return Errno(absl::StrCat("device-mapper ioctl on ", name));
  }
  if (dev_out != nullptr) *dev_out = io->dev;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DmLinear> DmLinear::Make(const std::string& name, const std::string& uuid,
                                        const std::string& under) {
  struct stat st;
  if (stat(under.c_str(), &st) != 0) return Errno("stat " + under);
  const int fd = open(under.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno("open " + under);
  uint64_t bytes = 0;
  const int rc = ioctl(fd, BLKGETSIZE64, &bytes);
  close(fd);
  if (rc != 0) return Errno("BLKGETSIZE64 " + under);
  if (absl::Status s = DmIoctl(DM_DEV_CREATE, name, uuid, 0, "", 0, nullptr); !s.ok()) return s;
  // One linear target over the whole device.
  const std::string params = absl::StrCat(major(st.st_rdev), ":", minor(st.st_rdev), " 0");
  std::string target(sizeof(struct dm_target_spec), '\0');
  auto* spec = reinterpret_cast<struct dm_target_spec*>(target.data());
  spec->sector_start = 0;
  spec->length = bytes / 512;
  strncpy(spec->target_type, "linear", DM_MAX_TYPE_NAME - 1);
  target += params;
  target.push_back('\0');
  while (target.size() % 8 != 0) target.push_back('\0');
  reinterpret_cast<struct dm_target_spec*>(target.data())->next =
      static_cast<uint32_t>(target.size());
  DmLinear made(name, "");
  uint64_t dev = 0;
  if (absl::Status s = DmIoctl(DM_TABLE_LOAD, name, "", 0, target, 1, nullptr); !s.ok()) return s;
  if (absl::Status s = DmIoctl(DM_DEV_SUSPEND, name, "", 0, "", 0, &dev); !s.ok()) return s;
  made.path_ = absl::StrCat("/dev/dm-", minor(static_cast<dev_t>(dev)));
  struct stat node;
  if (stat(made.path_.c_str(), &node) != 0 &&
      mknod(made.path_.c_str(), S_IFBLK | 0600, static_cast<dev_t>(dev)) != 0) {
    return Errno("mknod " + made.path_);
  }
  return made;
}

DmLinear::~DmLinear() {
  if (name_.empty()) return;
  for (int i = 0; i < 50; ++i) {
    if (DmIoctl(DM_DEV_REMOVE, name_, "", 0, "", 0, nullptr).ok()) return;
    usleep(20000);  // still open for a moment (a lock's descriptor closing)
  }
}

absl::Status MknodAlias(const std::string& device, const std::string& alias) {
  struct stat st;
  if (stat(device.c_str(), &st) != 0) return Errno("stat " + device);
  if (!S_ISBLK(st.st_mode)) return absl::InvalidArgumentError(device + " is no block device");
  if (mknod(alias.c_str(), S_IFBLK | 0600, st.st_rdev) != 0) return Errno("mknod " + alias);
  return absl::OkStatus();
}

absl::Status WriteMbr(const std::string& image, uint32_t start, uint32_t sectors) {
  unsigned char mbr[512] = {};
  unsigned char* e = mbr + 446;  // the first partition entry
  e[4] = 0x83;                   // Linux
  auto put32 = [](unsigned char* p, uint32_t v) {
    for (int i = 0; i < 4; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
  };
  put32(e + 8, start);
  put32(e + 12, sectors);
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  const int fd = open(image.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return Errno("open " + image);
  const ssize_t n = pwrite(fd, mbr, sizeof mbr, 0);
  close(fd);
  if (n != static_cast<ssize_t>(sizeof mbr)) return Errno("writing the MBR of " + image);
  return absl::OkStatus();
}

bool WaitForPath(const std::string& path, double seconds) {
  const absl::Time end = absl::Now() + absl::Seconds(seconds);
  struct stat st;
  while (stat(path.c_str(), &st) != 0) {
    if (absl::Now() > end) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return true;
}

}  // namespace aliases
}  // namespace latchkey
