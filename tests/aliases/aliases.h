// Real aliases of one disk, for tests: a hard link, a bind mount, a loop
// device over an image (optionally at an offset, or with a partition
// table), a second device node. Each is built with the kernel's own calls
// and undone by its destructor. They need root; a kind the machine cannot
// build (no loop driver) comes back as an error that says so, and the
// caller reports what it could not test.
//
// Example:
//   absl::StatusOr<LoopDevice> loop = LoopDevice::Attach("/tmp/x.img");
//   if (loop.ok()) Use(loop->path());  // "/dev/loop3", detached when it goes
#ifndef LATCHKEY_TESTS_ALIASES_ALIASES_H_
#define LATCHKEY_TESTS_ALIASES_ALIASES_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace latchkey {
namespace aliases {

// Makes this thread's mount namespace private (unshare + MS_PRIVATE on /),
// so bind mounts made afterwards stay in it and vanish with the process.
absl::Status EnterPrivateMountNamespace();

// A bind mount of `source` (file or directory) on `target` (created if
// missing), unmounted by the destructor.
class BindMount {
 public:
  static absl::StatusOr<BindMount> Make(const std::string& source, const std::string& target);
  BindMount(BindMount&& o) noexcept : target_(std::move(o.target_)) { o.target_.clear(); }
  BindMount& operator=(BindMount&&) = delete;
  ~BindMount();

 private:
  explicit BindMount(std::string target) : target_(std::move(target)) {}
  std::string target_;
};

// A loop device over a file, detached by the destructor.
class LoopDevice {
 public:
  // `offset` bytes into the file; `partscan`: let the kernel read a
  // partition table (partitions appear as pathp1, ...).
  static absl::StatusOr<LoopDevice> Attach(const std::string& file, uint64_t offset = 0,
                                           bool partscan = false);
  LoopDevice(LoopDevice&& o) noexcept : path_(std::move(o.path_)), fd_(o.fd_) { o.fd_ = -1; }
  LoopDevice& operator=(LoopDevice&&) = delete;
  ~LoopDevice();
  const std::string& path() const { return path_; }

 private:
  LoopDevice(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_ = -1;
};

// A device-mapper linear device over the whole of block device `under`,
// named `name` with UUID `uuid` (as LVM names an LV "LVM-<vg><lv>"), made
// with the kernel's dm ioctls (no dmsetup, no udev); removed by the
// destructor. path() is /dev/dm-N.
class DmLinear {
 public:
  static absl::StatusOr<DmLinear> Make(const std::string& name, const std::string& uuid,
                                       const std::string& under);
  DmLinear(DmLinear&& o) noexcept : name_(std::move(o.name_)), path_(std::move(o.path_)) {
    o.name_.clear();
  }
  DmLinear& operator=(DmLinear&&) = delete;
  ~DmLinear();
  const std::string& path() const { return path_; }

 private:
  DmLinear(std::string name, std::string path) : name_(std::move(name)), path_(std::move(path)) {}
  std::string name_;
  std::string path_;
};

// A second block device node at `alias` for the device `device` names.
absl::Status MknodAlias(const std::string& device, const std::string& alias);

// Writes an MBR with one Linux partition starting at sector `start` of
// `sectors` sectors into `image` (which must be large enough).
absl::Status WriteMbr(const std::string& image, uint32_t start, uint32_t sectors);

// Waits (up to `seconds`) for `path` to exist: partition nodes appear
// through devtmpfs a moment after the scan LOOP_CONFIGURE does.
bool WaitForPath(const std::string& path, double seconds = 1.0);

}  // namespace aliases
}  // namespace latchkey

#endif  // LATCHKEY_TESTS_ALIASES_ALIASES_H_
