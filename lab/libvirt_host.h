// A libvirt "host" for tests and labs: a real libvirtd (Debian's 9.0, QEMU
// driver, TCG) in a private mount and UTS namespace, with test-owned
// /etc/libvirt, /run, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt
// and /etc/passwd (which gains the libvirt-qemu user libvirtd wants), its
// own host name and host uuid, listening on its Unix socket and on
// 127.0.0.1:<tcp port> so two hosts can live-migrate. qemu.conf selects
// lock_manager "latchkey", found through LIBVIRT_LOCK_MANAGER_PLUGIN_DIR.
// The machine's own configuration is never read or written.
//
// Every process is stopped by its PID: libvirtd's, and each QEMU's from the
// host's pid files.
//
// Example:
//   LibvirtHostOptions o;
//   o.dir = "/tmp/lk-lv.1/h1"; o.index = 1; o.plugin_dir = ...;
//   o.latchkey_conf = "socket = \"/tmp/x/latchd.sock\"\n";
//   absl::StatusOr<std::unique_ptr<LibvirtHost>> h = LibvirtHost::Start(o);
//   (*h)->Virsh({"define", "/tmp/vm1.xml"});
//
// Thread safety: thread-compatible.
#ifndef LATCHKEY_LAB_LIBVIRT_HOST_H_
#define LATCHKEY_LAB_LIBVIRT_HOST_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace latchkey {
namespace lab {

struct LibvirtHostOptions {
  std::string dir;   // created; short: libvirtd's socket lives under it
  int index = 1;     // 1..50: host name lvhost<index>, tcp port, migration ports, host uuid
  std::string plugin_dir;      // holds latchkey.so
  std::string latchkey_conf;   // the text of /etc/libvirt/qemu-latchkey.conf
  std::string cache_dir;       // shared /var/cache/libvirt (QEMU capabilities); "" = own
  // Extra bind mounts inside the namespace: {source, target}; the target
  // directory must exist.
  std::vector<std::pair<std::string, std::string>> binds;
};

class LibvirtHost {
 public:
  static absl::StatusOr<std::unique_ptr<LibvirtHost>> Start(const LibvirtHostOptions& options);
  ~LibvirtHost();  // Stop()
  LibvirtHost(const LibvirtHost&) = delete;
  LibvirtHost& operator=(const LibvirtHost&) = delete;

  // Starts libvirtd and waits (up to 30 s) until it answers.
  absl::Status StartDaemon();
  // Stops libvirtd only (`sig`, then SIGKILL after 10 s); domains keep running.
  absl::Status StopDaemon(int sig);
  // Kills every QEMU of this host, then libvirtd, each by its PID.
  absl::Status Stop();

  // Runs virsh against this host. The output (stdout+stderr) on success; an
  // error carrying the output otherwise.
  absl::StatusOr<std::string> Virsh(const std::vector<std::string>& args) const;
  // The URI another host migrates to.
  std::string TcpUri() const;
  std::string HostName() const;
  // QEMU's pid for a running domain (from libvirt's pid file), or -1.
  pid_t QemuPid(const std::string& domain) const;
  std::string LogTail(size_t bytes = 4000) const;

 private:
  explicit LibvirtHost(LibvirtHostOptions o) : options_(std::move(o)) {}
  absl::Status Prepare();
  std::string Socket() const { return options_.dir + "/run/libvirt/libvirt-sock"; }

  LibvirtHostOptions options_;
  pid_t pid_ = -1;
};

}  // namespace lab
}  // namespace latchkey

#endif  // LATCHKEY_LAB_LIBVIRT_HOST_H_
