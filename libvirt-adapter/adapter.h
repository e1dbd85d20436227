// The libvirt adapter's logic, free of libvirt's ABI: its configuration
// (qemu-latchkey.conf), the domain a lock manager describes, and the calls
// libvirt makes, each turned into latchd requests (docs/protocol.md).
// latchkey_plugin.cc wraps this in libvirt's plugin interface; docs/libvirt.md
// is the user's side.
//
// Thread safety: an AdapterConfig is immutable after Parse; a Domain belongs
// to one lock manager, which libvirt uses from one thread at a time.
#ifndef LATCHKEY_LIBVIRT_ADAPTER_ADAPTER_H_
#define LATCHKEY_LIBVIRT_ADAPTER_ADAPTER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/config.h"

namespace latchkey {
namespace libvirt {

// What readonly disks get.
enum class ReadonlyDisks { kUnlocked, kSharedRead };

struct AdapterConfig {
  std::string file;  // where it came from, for messages ("" = defaults)
  bool file_missing = false;  // Load found no file: these are the defaults
  std::string socket = "/run/latchkey/latchd.sock";
  std::string backend;    // "" = latchd's default backend
  std::string backend_where;  // "file:line" of the backend setting, for messages
  std::string lockspace;  // "" = latchd's default lockspace
  bool auto_disk_leases = true;
  bool require_lease_for_disks = false;
  ReadonlyDisks readonly_disks = ReadonlyDisks::kUnlocked;
  std::string lock_failure_policy = "terminate";  // for <on_lockfailure> default
  int64_t terminate_grace_ms = 5000;
  int64_t timeout_ms = 30000;  // limit for each latchd request

  // Reads `path`; a missing file gives the defaults (file_missing). Errors
  // name the file: InvalidArgument "file:line: ..." for its content
  // (syntax, unknown keys, wrong types, names, non-UTF-8 text);
  // FailedPrecondition or PermissionDenied when it cannot be read (a
  // directory, a FIFO, no permission, a dangling symlink).
  static absl::StatusOr<AdapterConfig> Load(const std::string& path);
  static absl::StatusOr<AdapterConfig> Parse(const std::string& text,
                                             const std::string& origin);
  static absl::StatusOr<AdapterConfig> FromConfig(const Config& conf, const std::string& origin);
};

struct DomainResource {
  bool lease = false;  // false: a disk
  std::string name;    // disk: the image path; lease: the key
  bool readonly = false;
  bool shared = false;
  std::string lease_lockspace;  // leases only
  std::string lease_path;
  uint64_t lease_offset = 0;
};

// One lock manager's view: the domain and the resources added to it.
struct Domain {
  std::string uuid;
  std::string name;
  int64_t pid = 0;  // QEMU's pid (the forked child's before exec)
  std::vector<DomainResource> resources;
};

// The libvirt calls. Errors carry a message fit for the user; their code
// says which libvirt error to raise: Unavailable / Aborted the resource is
// busy or the hand-off failed; InvalidArgument libvirt's input cannot be
// sent (not UTF-8) or latchd refused it; Unimplemented qemu-latchkey.conf,
// latchd or the domain ask for something the other cannot do (a backend
// latchd does not load, <on_lockfailure>restart); FailedPrecondition /
// Internal latchd is not running, failed or did not answer.
class Adapter {
 public:
  explicit Adapter(const AdapterConfig& config) : config_(config) {}

  // Register-only acquire (the forked QEMU child): registers the owner with
  // latchd under the policy for `on_failure`, takes nothing, and refuses
  // early when another domain holds one of the resources (so the user reads
  // who, instead of QEMU's own image-locking error).
  absl::Status Register(const Domain& d, int on_failure) const;
  // Daemon-side acquire: registers (again) and takes every lockable resource
  // not yet held, all or nothing; `state` (may be empty) is checked by latchd.
  absl::Status Acquire(const Domain& d, const std::string& state, int on_failure) const;
  // Releases the resources of `d` this owner holds; returns the state string
  // for them. When none is held, the state of this domain's last release in
  // this process (libvirt releases a pausing domain twice and keeps the
  // second answer), or nullopt.
  absl::StatusOr<std::optional<std::string>> Release(const Domain& d) const;
  // The state string for everything the owner holds (nullopt: not known to
  // latchd).
  absl::StatusOr<std::optional<std::string>> Inquire(const Domain& d) const;

  // Connects to latchd and checks that it loads the configured backend
  // (what Register and Acquire check first); on success, the backends it
  // loads. For `latchctl libvirt-check`.
  absl::StatusOr<std::vector<std::string>> CheckLatchd() const;

  const AdapterConfig& config() const { return config_; }

 private:
  const AdapterConfig& config_;
};

// `text` with every byte that is not part of well-formed UTF-8, and every
// control character, written as \xNN: fit for a message.
std::string EscapeForMessage(const std::string& text);

}  // namespace libvirt
}  // namespace latchkey

#endif  // LATCHKEY_LIBVIRT_ADAPTER_ADAPTER_H_
