// libvirt's lock-manager plugin interface, as libvirt 9.0 (and every release
// since 2011) calls it on x86_64. Debian ships no header for it, so the
// layout is declared here from the facts recorded in ../shared/LAB-NOTES.md
// (section 4); the static_asserts pin the sizes libvirt relies on.
//
// libvirt dlopens "<lock_manager>.so" and reads the data symbol
// `virLockDriverImpl`, a LkDriver. Every call gets a LkManager whose
// `private_data` belongs to the plugin.
#ifndef LATCHKEY_LIBVIRT_ADAPTER_LOCK_DRIVER_ABI_H_
#define LATCHKEY_LIBVIRT_ADAPTER_LOCK_DRIVER_ABI_H_

#include <stddef.h>
#include <stdint.h>

extern "C" {

// The driver version libvirt passes to init and expects in LkDriver.
inline constexpr uint32_t kLkDriverVersion = 1000000;
// LkDriver.flags: the plugin produces and consumes state strings.
inline constexpr uint32_t kLkDriverUsesState = 1u << 0;

// Param value types.
enum LkParamType : int {
  kLkParamString = 0,
  kLkParamCString = 1,
  kLkParamInt = 2,
  kLkParamLong = 3,
  kLkParamUInt = 4,
  kLkParamULong = 5,
  kLkParamDouble = 6,
  kLkParamUuid = 7,
};

struct LkParam {
  int type;         // LkParamType
  const char* key;  // "uuid", "name", "id", "pid", "uri", "path", "offset", "lockspace"
  union {
    int i;
    long long l;
    unsigned int ui;
    unsigned long long ul;
    double d;
    char* str;
    const char* cstr;
    unsigned char uuid[16];
  } value;
};
static_assert(sizeof(LkParam) == 32, "libvirt's param is 32 bytes");
static_assert(offsetof(LkParam, value) == 16, "the value union starts at byte 16");

struct LkManager {
  const void* driver;
  void* private_data;
};

// new(): the object is a domain; the "started" flag is informational.
inline constexpr uint32_t kLkObjectDomain = 0;
inline constexpr uint32_t kLkNewStarted = 1u << 0;
// add_resource(): types and flags.
inline constexpr uint32_t kLkResourceDisk = 0;
inline constexpr uint32_t kLkResourceLease = 1;
inline constexpr uint32_t kLkResourceReadonly = 1u << 0;
inline constexpr uint32_t kLkResourceShared = 1u << 1;
// acquire(): register-only is the call in the forked QEMU child before exec.
inline constexpr uint32_t kLkAcquireRegisterOnly = 1u << 0;
inline constexpr uint32_t kLkAcquireRestrict = 1u << 1;
// acquire()'s on_failure argument: the domain's <on_lockfailure>.
enum LkFailureAction : int {
  kLkFailureDefault = 0,
  kLkFailurePoweroff = 1,
  kLkFailureRestart = 2,
  kLkFailurePause = 3,
  kLkFailureIgnore = 4,
};

struct LkDriver {
  uint32_t version;
  uint32_t flags;
  int (*init)(uint32_t version, const char* config_file, uint32_t flags);
  int (*deinit)(void);
  int (*new_manager)(LkManager* manager, uint32_t object_type, size_t nparams,
                     LkParam* params, uint32_t flags);
  void (*free_manager)(LkManager* manager);
  int (*add_resource)(LkManager* manager, uint32_t type, const char* name,
                      size_t nparams, LkParam* params, uint32_t flags);
  // `*fd`, when set by the plugin in the register-only call, stays open in QEMU.
  int (*acquire)(LkManager* manager, const char* state, uint32_t flags,
                 int on_failure, int* fd);
  // `state` may be NULL (the caller does not want one); libvirt frees it.
  int (*release)(LkManager* manager, char** state, uint32_t flags);
  int (*inquire)(LkManager* manager, char** state, uint32_t flags);
};
static_assert(sizeof(LkDriver) == 72, "libvirt's driver struct is 72 bytes");

// libvirt's error reporting, exported by libvirt.so under a private symbol
// version, so it is looked up at run time and never linked:
//   void virReportErrorHelper(int domain, int code, const char* file,
//                             const char* func, size_t line, const char* fmt, ...);
using LkReportErrorFn = void (*)(int, int, const char*, const char*, size_t,
                                 const char*, ...);
inline constexpr char kLkReportErrorSymbol[] = "virReportErrorHelper";
inline constexpr int kLkErrorDomainLocking = 42;  // VIR_FROM_LOCKING
inline constexpr int kLkErrorInternal = 1;        // VIR_ERR_INTERNAL_ERROR: "internal error: %s"
inline constexpr int kLkErrorInvalidArg = 8;      // VIR_ERR_INVALID_ARG: "invalid argument: %s"
inline constexpr int kLkErrorConfig = 33;         // VIR_ERR_CONF_SYNTAX: "configuration file syntax error: %s"
inline constexpr int kLkErrorSystem = 38;         // VIR_ERR_SYSTEM_ERROR: the message alone
inline constexpr int kLkErrorConfigUnsupported = 67;  // VIR_ERR_CONFIG_UNSUPPORTED: "unsupported configuration: %s"
inline constexpr int kLkErrorResourceBusy = 87;   // VIR_ERR_RESOURCE_BUSY: "resource busy: %s"

}  // extern "C"

#endif  // LATCHKEY_LIBVIRT_ADAPTER_LOCK_DRIVER_ABI_H_
