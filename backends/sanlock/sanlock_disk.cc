#include "backends/sanlock/sanlock_disk.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <fstream>
#include <memory>

#include "absl/strings/str_cat.h"

extern "C" {
#include <sanlock.h>
}

namespace latchkey {
namespace sanlockbe {
namespace {

constexpr size_t kBufAlign = 4096;

struct FreeDeleter {
  void operator()(void* p) const { free(p); }
};
using AlignedBuf = std::unique_ptr<char, FreeDeleter>;

AlignedBuf Aligned(size_t len) {
  void* p = nullptr;
  if (posix_memalign(&p, kBufAlign, len) != 0) return nullptr;
  memset(p, 0, len);
  return AlignedBuf(static_cast<char*>(p));
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

uint32_t Le32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return uint32_t{u[0]} | uint32_t{u[1]} << 8 | uint32_t{u[2]} << 16 | uint32_t{u[3]} << 24;
}
uint64_t Le64(const char* p) { return uint64_t{Le32(p)} | uint64_t{Le32(p + 4)} << 32; }

std::string Field(const char* p, size_t n) {
  std::string s(p, strnlen(p, n));
  for (char& c : s) {
    if (!isprint(static_cast<unsigned char>(c))) c = '?';
  }
  return s;
}

}  // namespace

absl::StatusOr<Geometry> Geometry::Make(uint32_t sector, uint64_t align) {
  const bool ok = (sector == 512 && align == kMiB) ||
                  (sector == 4096 && (align == kMiB || align == 2 * kMiB || align == 4 * kMiB ||
                                      align == 8 * kMiB));
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sanlock: ", sector, "-byte sectors with ", align / kMiB,
        " MiB alignment is not a geometry sanlock supports (512 with 1 MiB, or 4096 with 1, 2, "
        "4 or 8 MiB)"));
  }
  return Geometry{sector, align};
}

Geometry Geometry::ForSector(uint32_t sector) {
  return sector == 4096 ? Geometry{4096, 8 * kMiB} : Geometry{512, kMiB};
}

int Geometry::max_hosts() const {
  if (sector == 512) return 2000;
  return static_cast<int>(250 * (align / kMiB));
}

uint32_t Geometry::ResourceFlags() const {
  uint32_t f = sector == 4096 ? SANLK_RES_SECTOR4K : SANLK_RES_SECTOR512;
  switch (align / kMiB) {
    case 2: return f | SANLK_RES_ALIGN2M;
    case 4: return f | SANLK_RES_ALIGN4M;
    case 8: return f | SANLK_RES_ALIGN8M;
    default: return f | SANLK_RES_ALIGN1M;
  }
}

uint32_t Geometry::LockspaceFlags() const {
  uint32_t f = sector == 4096 ? SANLK_LSF_SECTOR4K : SANLK_LSF_SECTOR512;
  switch (align / kMiB) {
    case 2: return f | SANLK_LSF_ALIGN2M;
    case 4: return f | SANLK_LSF_ALIGN4M;
    case 8: return f | SANLK_LSF_ALIGN8M;
    default: return f | SANLK_LSF_ALIGN1M;
  }
}

std::string Geometry::ToString() const {
  return absl::StrCat(sector, "-byte sectors, ", align / kMiB, " MiB alignment");
}

// stat() of lease storage, which must be a block device or a regular file.
absl::StatusOr<struct stat> StatStorage(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sanlock: lease storage ", path, ": ", strerror(errno)));
  }
  if (!S_ISBLK(st.st_mode) && !S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("sanlock: lease storage ", path, " is neither a file nor a block device"));
  }
  return st;
}

absl::StatusOr<uint64_t> StorageSize(const std::string& path) {
  absl::StatusOr<struct stat> st = StatStorage(path);
  if (!st.ok()) return st.status();
  if (!S_ISBLK(st->st_mode)) return static_cast<uint64_t>(st->st_size);
  Fd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  uint64_t size = 0;
  if (fd.get() < 0 || ioctl(fd.get(), BLKGETSIZE64, &size) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sanlock: cannot size ", path, ": ", strerror(errno)));
  }
  return size;
}

absl::StatusOr<uint32_t> StorageSectorSize(const std::string& path) {
  absl::StatusOr<struct stat> stat_or = StatStorage(path);
  if (!stat_or.ok()) return stat_or.status();
  const struct stat& st = *stat_or;
  if (S_ISBLK(st.st_mode)) {
    Fd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
    int size = 0;
    if (fd.get() < 0 || ioctl(fd.get(), BLKSSZGET, &size) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("sanlock: cannot read the sector size of ", path, ": ", strerror(errno)));
    }
    if (size != 512 && size != 4096) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sanlock: ", path, " has ", size, "-byte sectors; sanlock supports 512 and 4096"));
    }
    return static_cast<uint32_t>(size);
  }
  // The file system's device, when it has one: its logical block size
  // (a partition's queue is its disk's).
  if (major(st.st_dev) != 0) {
    for (const char* q : {"queue", "../queue"}) {
      std::ifstream in(absl::StrCat("/sys/dev/block/", major(st.st_dev), ":", minor(st.st_dev),
                                    "/", q, "/logical_block_size"));
      uint32_t size = 0;
      if (in >> size && (size == 512 || size == 4096)) return size;
    }
  }
  // No device (NFS and the like): the smallest direct read accepted. A hole
  // is read without touching the device, hence the written first block.
  if (st.st_size < 4096) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sanlock: ", path, " is too small (", st.st_size, " bytes) to tell its sector size"));
  }
  Fd fd(open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
  if (fd.get() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sanlock: cannot open ", path, " for direct I/O (sanlock needs it): ", strerror(errno)));
  }
  AlignedBuf buf = Aligned(4096);
  if (!buf) return absl::ResourceExhaustedError("sanlock: out of memory");
  if (pread(fd.get(), buf.get(), 512, 0) == 512) return 512u;
  const int err = errno;
  if (err == EINVAL && pread(fd.get(), buf.get(), 4096, 0) == 4096) return 4096u;
  return absl::InvalidArgumentError(absl::StrCat("sanlock: direct reads of ", path,
                                                 " fail: ", strerror(err)));
}

absl::StatusOr<Geometry> LeaderRecord::GetGeometry() const {
  if (!IsPaxos() && !IsDelta()) {
    return absl::NotFoundError("no sanlock leader record there");
  }
  uint64_t align = 0;
  if (flags & 0x80) {
    align = 8 * kMiB;
  } else if (flags & 0x40) {
    align = 4 * kMiB;
  } else if (flags & 0x20) {
    align = 2 * kMiB;
  } else if (flags & 0x10) {
    align = kMiB;
  } else {
    align = Geometry::ForSector(sector_size).align;
  }
  return Geometry::Make(sector_size, align);
}

absl::StatusOr<std::string> ReadSectors(const std::string& path, uint64_t offset, size_t len,
                                        uint32_t sector) {
  if (sector == 0 || offset % sector != 0 || len % sector != 0) {
    return absl::InvalidArgumentError(absl::StrCat("sanlock: unaligned read of ", path, " at ",
                                                   offset, " (", len, " bytes)"));
  }
  Fd fd(open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
  if (fd.get() < 0) {
    return absl::UnavailableError(absl::StrCat("sanlock: cannot open ", path, ": ",
                                               strerror(errno)));
  }
  AlignedBuf buf = Aligned(len);
  if (!buf) return absl::ResourceExhaustedError("sanlock: out of memory");
  size_t done = 0;
  while (done < len) {
    const ssize_t n = pread(fd.get(), buf.get() + done, len - done, offset + done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return absl::UnavailableError(absl::StrCat("sanlock: reading ", path, " at ",
                                                 offset + done, " failed: ", strerror(errno)));
    }
    if (n == 0) {
      return absl::OutOfRangeError(absl::StrCat("sanlock: ", path, " ends before ",
                                                offset + len));
    }
    done += static_cast<size_t>(n);
  }
  return std::string(buf.get(), len);
}

absl::Status WriteSectors(const std::string& path, uint64_t offset, const std::string& data,
                          uint32_t sector) {
  if (sector == 0 || offset % sector != 0 || data.size() % sector != 0) {
    return absl::InvalidArgumentError(absl::StrCat("sanlock: unaligned write of ", path, " at ",
                                                   offset, " (", data.size(), " bytes)"));
  }
  Fd fd(open(path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC));
  if (fd.get() < 0) {
    return absl::UnavailableError(absl::StrCat("sanlock: cannot open ", path, " for writing: ",
                                               strerror(errno)));
  }
  AlignedBuf buf = Aligned(data.size());
  if (!buf) return absl::ResourceExhaustedError("sanlock: out of memory");
  memcpy(buf.get(), data.data(), data.size());
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = pwrite(fd.get(), buf.get() + done, data.size() - done, offset + done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::UnavailableError(absl::StrCat("sanlock: writing ", path, " at ",
                                                 offset + done, " failed: ",
                                                 n < 0 ? strerror(errno) : "no space"));
    }
    done += static_cast<size_t>(n);
  }
  if (fdatasync(fd.get()) != 0) {
    return absl::UnavailableError(absl::StrCat("sanlock: syncing ", path, " failed: ",
                                               strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<LeaderRecord> ReadLeader(const std::string& path, uint64_t offset) {
  // 4096 bytes at a 4096-aligned offset work on 512 and 4096 storage alike.
  const uint64_t base = offset & ~uint64_t{4095};
  absl::StatusOr<std::string> block = ReadSectors(path, base, 4096, 512);
  if (!block.ok()) return block.status();
  const char* p = block->data() + (offset - base);
  if (offset - base > 4096 - 512) return absl::InvalidArgumentError("unaligned leader offset");
  LeaderRecord r;
  r.magic = Le32(p);
  r.version = Le32(p + 4);
  r.flags = Le32(p + 8);
  r.sector_size = Le32(p + 12);
  r.num_hosts = Le64(p + 16);
  r.max_hosts = Le64(p + 24);
  r.owner_id = Le64(p + 32);
  r.owner_generation = Le64(p + 40);
  r.lver = Le64(p + 48);
  r.lockspace = Field(p + 56, 48);
  r.resource = Field(p + 104, 48);
  r.timestamp = Le64(p + 152);
  return r;
}

std::string ReadHostName(const std::string& path, uint64_t lockspace_offset, uint32_t sector,
                         uint64_t host_id) {
  if (host_id == 0 || sector == 0) return "";
  absl::StatusOr<LeaderRecord> r = ReadLeader(path, lockspace_offset + (host_id - 1) * sector);
  if (!r.ok() || !r->IsDelta()) return "";
  return r->resource;
}

}  // namespace sanlockbe
}  // namespace latchkey
