// The sanlock lab: N sanlock "hosts" on one machine, each a real sanlock
// daemon with its own run directory (SANLOCK_RUN_DIR), its own /var/log (a
// private mount namespace) and a fixed host name, all over one shared lease
// file or loop device. Used by tests, the demo, benchmarks and researchers;
// see lab/README.md for the layout and the CLI (lab/sanlock_lab_main.cc).
//
// Every daemon is stopped by its PID: Stop() (and the destructor) asks each
// to shut down, waits for that PID, and SIGKILLs it after a deadline.
//
// Example:
//   SanlockLabOptions o;
//   o.dir = "/tmp/lab"; o.hosts = 3;
//   absl::StatusOr<std::unique_ptr<SanlockLab>> lab = SanlockLab::Start(o);
//   ... (*lab)->RunDir(2) is host 2's SANLOCK_RUN_DIR ...
//   (*lab)->Fence(2);     // sanlock direct release_id: host 2 is "fenced"
//
// Thread safety: thread-compatible.
#ifndef LATCHKEY_LAB_SANLOCK_LAB_H_
#define LATCHKEY_LAB_SANLOCK_LAB_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace latchkey {
namespace lab {

struct SanlockLabOptions {
  // Created if missing; everything lives here. Empty: a fresh private
  // /tmp/lk-lab.XXXXXX (short, as the daemons' socket paths must be) that
  // Stop() removes.
  std::string dir;
  int hosts = 2;                // 1..64; host K has host_id K and name "hostK".
  std::string lockspace = "lab";
  int io_timeout = 1;           // Seconds, written into every host slot.
  uint64_t size_mib = 64;       // Size of the shared lease file.
  bool loop_device = false;     // Put the lease file behind a loop device.
  bool join = false;            // Each host joins the lockspace (add_lockspace).
  int resources = 4;            // Manual resource leases "res0".. at 1 MiB steps.
  int num_hosts = 0;            // Host slots read per resource lease (-n); 0 = all.
  // 4096: the shared storage is a loop device with 4096-byte logical
  // sectors (implies loop_device), the lockspace and resources are written
  // with sanlock's 4K geometry (8 MiB alignment, resources at 8 MiB steps).
  uint32_t sector_size = 512;
  // 4096: LeaseDir() is an ext4 file system on a loop device with
  // 4096-byte sectors (direct I/O needs 4096-byte blocks there), mounted
  // before the daemons start and unmounted by Stop().
  uint32_t lease_dir_sector = 0;
};

// The shared storage layout (offsets into LeasePath()).
inline constexpr uint64_t kMiB = 1024 * 1024;
inline constexpr uint64_t kLockspaceOffset = 0;
// Manual resource leases "res<i>" at kResourceOffset + i MiB.
inline constexpr uint64_t kResourceOffset = 1 * kMiB;

class SanlockLab {
 public:
  static absl::StatusOr<std::unique_ptr<SanlockLab>> Start(const SanlockLabOptions& options);
  // Attaches to a lab a CLI started earlier (reads DIR/lab.env).
  static absl::StatusOr<std::unique_ptr<SanlockLab>> Attach(const std::string& dir);
  ~SanlockLab();  // Stop() when still running and owned (not attached).
  SanlockLab(const SanlockLab&) = delete;
  SanlockLab& operator=(const SanlockLab&) = delete;

  // Shuts every daemon down (killing their lease holders) and waits for
  // each PID; SIGKILL after 10 s. Detaches the loop device.
  absl::Status Stop();

  const SanlockLabOptions& options() const { return options_; }
  int hosts() const { return options_.hosts; }
  std::string LeasePath() const { return lease_path_; }
  std::string LeaseDir() const { return options_.dir + "/leases.d"; }
  std::string HostDir(int host) const;
  std::string RunDir(int host) const { return HostDir(host) + "/run"; }
  std::string HostName(int host) const;
  pid_t DaemonPid(int host) const;
  // "NAME:PATH:OFFSET" as the sanlock backend's `lockspaces` setting wants it.
  std::string LockspaceSpec() const;
  // Where manual lease res<i> lives.
  uint64_t ResourceOffset(int i) const { return (1 + i) * Align(); }
  // The alignment of the lab's lockspace and resources.
  uint64_t Align() const { return options_.sector_size == 4096 ? 8 * kMiB : kMiB; }

  // Faults.
  absl::Status KillDaemon(int host);              // SIGKILL, waits for the PID
  absl::Status Freeze(int host);                  // SIGSTOP
  absl::Status Thaw(int host);                    // SIGCONT
  absl::Status Fence(int host);                   // sanlock direct release_id
  absl::Status RestartDaemon(int host);           // after KillDaemon
  absl::Status Join(int host);                    // sanlock client add_lockspace
  // `sanlock client status` of one host.
  absl::StatusOr<std::string> ClientStatus(int host) const;

  // Runs the sanlock command line tool against host `host` (0: no daemon).
  absl::StatusOr<std::string> Sanlock(int host, const std::vector<std::string>& args) const;

 private:
  explicit SanlockLab(SanlockLabOptions o) : options_(std::move(o)) {}
  absl::Status StartDaemon(int host);
  absl::Status WaitDaemonGone(int host, absl::Duration timeout);
  absl::Status WriteEnvFile() const;

  SanlockLabOptions options_;
  std::string lease_path_;
  std::string loop_;
  std::string lease_dir_loop_;  // lease_dir_sector: its device, mounted on LeaseDir()
  std::vector<pid_t> pids_;  // Index host-1.
  bool owned_ = true;
  bool remove_dir_ = false;  // Start() made options_.dir itself
  bool stopped_ = false;
};

// Runs `argv` with `env` added, capturing stdout+stderr; the exit status is
// returned with the output (non-zero exit is an error naming the command).
absl::StatusOr<std::string> RunCommand(const std::vector<std::string>& argv,
                                       const std::vector<std::string>& env = {});

}  // namespace lab
}  // namespace latchkey

#endif  // LATCHKEY_LAB_SANLOCK_LAB_H_
