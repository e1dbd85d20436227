// latchkey.so: libvirt's lock-manager plugin interface (lock_driver_abi.h)
// on top of the Adapter. The only exported symbol is virLockDriverImpl
// (exports.lds).
//
// Errors go through libvirt's own error reporting, looked up at run time, so
// `virsh` shows our message; in the forked QEMU child libvirt prints that
// error to the child's stderr and quotes it ("Process exited prior to
// exec: ..."). Without libvirt's symbol, the message goes to stderr. No C++
// exception ever leaves a call into libvirt.
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "libvirt-adapter/adapter.h"
#include "libvirt-adapter/lock_driver_abi.h"

namespace latchkey {
namespace libvirt {
namespace {

constexpr char kDefaultConfig[] = "/etc/libvirt/qemu-latchkey.conf";

std::unique_ptr<AdapterConfig> g_config;

// Which libvirt error (and so which label before our message) `s` raises.
// Only qemu-latchkey.conf's content, at load, is a "configuration file
// syntax error"; an unreadable file is a system error, as libvirt reports
// its own unreadable config files.
int LibvirtCode(const absl::Status& s, bool at_load) {
  if (at_load) {
    return s.code() == absl::StatusCode::kInvalidArgument ? kLkErrorConfig : kLkErrorSystem;
  }
  switch (s.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kDeadlineExceeded:  // latchd's own answer: a wait ran out
      return kLkErrorResourceBusy;
    case absl::StatusCode::kInvalidArgument:
      return kLkErrorInvalidArg;
    case absl::StatusCode::kUnimplemented:
      return kLkErrorConfigUnsupported;
    default:
      return kLkErrorInternal;
  }
}

// Reports `s`; returns -1 for the caller to hand back to libvirt. The
// message never carries raw invalid UTF-8 or control bytes.
int Fail(const absl::Status& s, const char* func, bool at_load = false) {
  const std::string msg = absl::StrCat("latchkey: ", EscapeForMessage(std::string(s.message())));
  auto report = reinterpret_cast<LkReportErrorFn>(dlsym(RTLD_DEFAULT, kLkReportErrorSymbol));
  if (report != nullptr) {
    report(kLkErrorDomainLocking, LibvirtCode(s, at_load), __FILE__, func, __LINE__, "%s",
           msg.c_str());
  } else {
    fprintf(stderr, "%s\n", msg.c_str());
    fflush(stderr);
  }
  return -1;
}

// Runs `body`, turning an escaping exception into a reported error.
template <typename F>
int Guarded(const char* func, F body) {
  try {
    return body();
  } catch (const std::exception& e) {
    return Fail(absl::InternalError(absl::StrCat("unexpected failure: ", e.what())), func);
  } catch (...) {
    return Fail(absl::InternalError("unexpected failure"), func);
  }
}

Domain* DomainOf(LkManager* m) { return static_cast<Domain*>(m->private_data); }

std::string UuidText(const unsigned char u[16]) {
  return absl::StrFormat("%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                         u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10],
                         u[11], u[12], u[13], u[14], u[15]);
}

bool IntegerParam(const LkParam& p, int64_t* out) {
  switch (p.type) {
    case kLkParamInt: *out = p.value.i; return true;
    case kLkParamLong: *out = p.value.l; return true;
    case kLkParamUInt: *out = p.value.ui; return true;
    case kLkParamULong: *out = static_cast<int64_t>(p.value.ul); return true;
    default: return false;
  }
}

const char* StringParam(const LkParam& p) {
  if (p.type == kLkParamString) return p.value.str;
  if (p.type == kLkParamCString) return p.value.cstr;
  return nullptr;
}

bool Is(const LkParam& p, const char* key) { return p.key != nullptr && strcmp(p.key, key) == 0; }

int Init(uint32_t version, const char* config_file, uint32_t /*flags*/) {
  return Guarded(__func__, [&] {
    if (version != kLkDriverVersion) {
      return Fail(absl::FailedPreconditionError(absl::StrCat(
                      "libvirt asks for lock driver version ", version, "; latchkey speaks ",
                      kLkDriverVersion)),
                  __func__);
    }
    absl::StatusOr<AdapterConfig> c = AdapterConfig::Load(config_file ? config_file : kDefaultConfig);
    if (!c.ok()) return Fail(c.status(), __func__, /*at_load=*/true);
    if (c->file_missing) {
      // libvirt has no logging entry point for plugins; libvirtd's stderr
      // goes to its journal under systemd.
      fprintf(stderr, "latchkey: %s does not exist; using the defaults (latchd at %s)\n",
              EscapeForMessage(c->file).c_str(), c->socket.c_str());
      fflush(stderr);
    }
    g_config = std::make_unique<AdapterConfig>(*std::move(c));
    return 0;
  });
}

int Deinit() {
  g_config.reset();
  return 0;
}

int NewManager(LkManager* m, uint32_t object_type, size_t nparams, LkParam* params, uint32_t) {
  return Guarded(__func__, [&] {
    if (g_config == nullptr) return Fail(absl::FailedPreconditionError("not initialised"), __func__);
    if (object_type != kLkObjectDomain) {
      return Fail(absl::InvalidArgumentError(absl::StrCat("unsupported object type ", object_type)),
                  __func__);
    }
    auto d = std::make_unique<Domain>();
    for (size_t i = 0; i < nparams; ++i) {
      const LkParam& p = params[i];
      if (Is(p, "uuid") && p.type == kLkParamUuid) {
        d->uuid = UuidText(p.value.uuid);
      } else if (Is(p, "name") && StringParam(p) != nullptr) {
        d->name = StringParam(p);
      } else if (Is(p, "pid")) {
        IntegerParam(p, &d->pid);
      }
    }
    if (d->uuid.empty() || d->name.empty() || d->pid <= 0) {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
                      "libvirt described a domain without ",
                      d->uuid.empty() ? "uuid" : d->name.empty() ? "name" : "a process id")),
                  __func__);
    }
    m->private_data = d.release();
    return 0;
  });
}

void FreeManager(LkManager* m) {
  delete DomainOf(m);
  m->private_data = nullptr;
}

int AddResource(LkManager* m, uint32_t type, const char* name, size_t nparams, LkParam* params,
                uint32_t flags) {
  return Guarded(__func__, [&] {
    if (name == nullptr || *name == '\0') {
      return Fail(absl::InvalidArgumentError("a resource without a name"), __func__);
    }
    DomainResource r;
    r.name = name;
    r.readonly = flags & kLkResourceReadonly;
    r.shared = flags & kLkResourceShared;
    if (type == kLkResourceLease) {
      r.lease = true;
      for (size_t i = 0; i < nparams; ++i) {
        const LkParam& p = params[i];
        int64_t v = 0;
        if (Is(p, "path") && StringParam(p) != nullptr) r.lease_path = StringParam(p);
        if (Is(p, "lockspace") && StringParam(p) != nullptr) r.lease_lockspace = StringParam(p);
        if (Is(p, "offset") && IntegerParam(p, &v)) r.lease_offset = static_cast<uint64_t>(v);
      }
    } else if (type != kLkResourceDisk) {
      return Fail(absl::InvalidArgumentError(
                      absl::StrCat("unsupported resource type ", type, " for ", name)),
                  __func__);
    }
    DomainOf(m)->resources.push_back(std::move(r));
    return 0;
  });
}

int Acquire(LkManager* m, const char* state, uint32_t flags, int on_failure, int* /*fd*/) {
  const bool child = flags & kLkAcquireRegisterOnly;
  return Guarded(__func__, [&] {
    Adapter a(*g_config);
    absl::Status s = child ? a.Register(*DomainOf(m), on_failure)
                           : a.Acquire(*DomainOf(m), state ? state : "", on_failure);
    return s.ok() ? 0 : Fail(s, __func__);
  });
}

// Hands `value` to libvirt, which frees it with g_free (malloc-compatible).
void GiveState(const std::optional<std::string>& value, char** state) {
  if (state != nullptr) *state = value ? strdup(value->c_str()) : nullptr;
}

int Release(LkManager* m, char** state, uint32_t) {
  return Guarded(__func__, [&] {
    absl::StatusOr<std::optional<std::string>> r = Adapter(*g_config).Release(*DomainOf(m));
    if (!r.ok()) return Fail(r.status(), __func__);
    GiveState(*r, state);
    return 0;
  });
}

int Inquire(LkManager* m, char** state, uint32_t) {
  return Guarded(__func__, [&] {
    absl::StatusOr<std::optional<std::string>> r = Adapter(*g_config).Inquire(*DomainOf(m));
    if (!r.ok()) return Fail(r.status(), __func__);
    GiveState(*r, state);
    return 0;
  });
}

}  // namespace
}  // namespace libvirt
}  // namespace latchkey

extern "C" {
__attribute__((visibility("default"))) LkDriver virLockDriverImpl = {
    kLkDriverVersion,
    kLkDriverUsesState,
    latchkey::libvirt::Init,
    latchkey::libvirt::Deinit,
    latchkey::libvirt::NewManager,
    latchkey::libvirt::FreeManager,
    latchkey::libvirt::AddResource,
    latchkey::libvirt::Acquire,
    latchkey::libvirt::Release,
    latchkey::libvirt::Inquire,
};
}  // extern "C"
