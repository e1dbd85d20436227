#include "core/plugin_export.h"

#include <exception>

#include "absl/strings/str_cat.h"
#include "core/abi_types.h"

namespace latchkey {
namespace plugin_export {
namespace {

Backend* Cast(lk_backend* b) { return reinterpret_cast<Backend*>(b); }

// Runs `body` (returning absl::Status), filling *err; never lets an
// exception out.
template <typename Body>
int Guard(lk_error* err, Body body) {
  absl::Status s;
  try {
    s = body();
  } catch (const std::exception& e) {
    s = absl::InternalError(absl::StrCat("backend plugin threw: ", e.what()));
  } catch (...) {
    s = absl::InternalError("backend plugin threw a non-standard exception");
  }
  if (s.ok()) return 0;
  abi::StatusToError(s, err);
  return -1;
}

absl::Status NullBackend() { return absl::InvalidArgumentError("backend handle is NULL"); }

// Converts and validates an owner and a resource, so that every backend
// sees only well-formed input, checked against its own name limit.
// Each thread converts into the same two objects, so their strings keep
// their capacity and the hot path allocates nothing. Backends receive them
// as const references and copy what they keep (backend.h).
Owner& ThreadOwner() {
  thread_local Owner owner;
  return owner;
}
Resource& ThreadResource() {
  thread_local Resource resource;
  return resource;
}

absl::Status CheckedInput(Backend* backend, const lk_owner* owner, const lk_resource* resource,
                          Owner* o, Resource* r, const Capabilities& caps) {
  if (absl::Status s = abi::FromAbi(owner, o); !s.ok()) return s;
  if (absl::Status s = o->Validate(); !s.ok()) return s;
  if (absl::Status s = abi::FromAbi(resource, r); !s.ok()) return s;
  if (absl::Status s = r->Validate(caps.max_name_len); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(backend->name(), " backend: ", s.message()));
  }
  return absl::OkStatus();
}

// The checked owner and resource of a call that names both (this thread's
// copies: valid until the thread's next call).
absl::Status OwnerAndResource(lk_backend* backend, const lk_owner* owner,
                              const lk_resource* resource, Owner** o, Resource** r) {
  if (backend == nullptr) return NullBackend();
  *o = &ThreadOwner();
  *r = &ThreadResource();
  return CheckedInput(Cast(backend), owner, resource, *o, *r, Cast(backend)->capabilities());
}

absl::Status DoAcquireOrConvert(bool convert, lk_backend* backend, const lk_owner* owner,
                                const lk_resource* resource, uint32_t mode,
                                const lk_acquire_options* options, lk_grant* out) {
  if (backend == nullptr) return NullBackend();
  if (out == nullptr) return absl::InvalidArgumentError("grant output is NULL");
  Owner& o = ThreadOwner();
  Resource& r = ThreadResource();
  const Capabilities caps = Cast(backend)->capabilities();
  if (absl::Status s = CheckedInput(Cast(backend), owner, resource, &o, &r, caps); !s.ok()) {
    return s;
  }
  absl::StatusOr<LockMode> m = LockModeFromInt(mode);
  if (!m.ok()) return m.status();
  if ((caps.modes & LockModeBit(*m)) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the ", Cast(backend)->name(), " backend does not grant mode ", LockModeName(*m)));
  }
  const AcquireOptions opts = abi::FromAbi(options);
  if (opts.expect_token.has_value() && !caps.fencing_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the ", Cast(backend)->name(), " backend has no fencing tokens, so it cannot check ",
        "the hand-off token (expect_token ", *opts.expect_token, ") for ", r.Describe()));
  }
  absl::StatusOr<Grant> g = convert ? Cast(backend)->Convert(o, r, *m, opts)
                                    : Cast(backend)->Acquire(o, r, *m, opts);
  if (!g.ok()) return g.status();
  return abi::GrantToAbi(*g, out);
}

}  // namespace

Capabilities CapabilitiesFromAbi(const lk_capabilities& caps) { return abi::FromAbi(caps); }

int OpenWith(Factory factory, const lk_setting* settings, size_t n, lk_backend** out,
             lk_error* err) {
  return Guard(err, [&]() -> absl::Status {
    if (out == nullptr) return absl::InvalidArgumentError("backend output is NULL");
    absl::StatusOr<Config> config = abi::SettingsFromAbi(settings, n);
    if (!config.ok()) return config.status();
    absl::StatusOr<std::unique_ptr<Backend>> b = factory(*config);
    if (!b.ok()) return b.status();
    *out = reinterpret_cast<lk_backend*>(b->release());
    return absl::OkStatus();
  });
}

void Close(lk_backend* backend) { delete Cast(backend); }

int Acquire(lk_backend* backend, const lk_owner* owner, const lk_resource* resource,
            uint32_t mode, const lk_acquire_options* options, lk_grant* out, lk_error* err) {
  return Guard(err, [&] {
    return DoAcquireOrConvert(false, backend, owner, resource, mode, options, out);
  });
}

int Convert(lk_backend* backend, const lk_owner* owner, const lk_resource* resource,
            uint32_t mode, const lk_acquire_options* options, lk_grant* out, lk_error* err) {
  return Guard(err, [&] {
    return DoAcquireOrConvert(true, backend, owner, resource, mode, options, out);
  });
}

int Release(lk_backend* backend, const lk_owner* owner, const lk_resource* resource,
            lk_error* err) {
  return Guard(err, [&]() -> absl::Status {
    Owner* o = nullptr;
    Resource* r = nullptr;
    if (absl::Status s = OwnerAndResource(backend, owner, resource, &o, &r); !s.ok()) return s;
    return Cast(backend)->Release(*o, *r);
  });
}

int Inquire(lk_backend* backend, const lk_resource* resource, lk_holder_fn emit, void* ctx,
            lk_error* err) {
  return Guard(err, [&]() -> absl::Status {
    if (backend == nullptr) return NullBackend();
    if (emit == nullptr) return absl::InvalidArgumentError("inquire callback is NULL");
    std::optional<Resource> which;
    if (resource != nullptr) {
      absl::StatusOr<Resource> r = abi::FromAbi(resource);
      if (!r.ok()) return r.status();
      if (absl::Status s = r->Validate(Cast(backend)->capabilities().max_name_len); !s.ok()) {
        return s;
      }
      which = *r;
    }
    absl::StatusOr<std::vector<HolderInfo>> holders = Cast(backend)->Inquire(which);
    if (!holders.ok()) return holders.status();
    for (const HolderInfo& h : *holders) {
      lk_holder out;
      out.owner = abi::ToAbi(h.owner);
      out.resource = abi::ToAbi(h.resource);
      out.mode = static_cast<uint32_t>(h.mode);
      out.fencing_token = h.fencing_token;
      emit(ctx, &out);
    }
    return absl::OkStatus();
  });
}

int Adopt(lk_backend* backend, const lk_record* record, lk_grant* out, lk_error* err) {
  return Guard(err, [&]() -> absl::Status {
    if (backend == nullptr) return NullBackend();
    if (record == nullptr || out == nullptr) {
      return absl::InvalidArgumentError("adopt record or output is NULL");
    }
    LockRecord rec;
    if (absl::Status s = CheckedInput(Cast(backend), &record->owner, &record->resource,
                                      &rec.owner, &rec.resource, Cast(backend)->capabilities());
        !s.ok()) {
      return s;
    }
    absl::StatusOr<LockMode> m = LockModeFromInt(record->mode);
    if (!m.ok()) return m.status();
    rec.mode = *m;
    rec.fencing_token = record->fencing_token;
    rec.backend_token = record->backend_token == nullptr ? "" : record->backend_token;
    absl::StatusOr<Grant> g = Cast(backend)->Adopt(rec);
    if (!g.ok()) return g.status();
    return abi::GrantToAbi(*g, out);
  });
}

int Health(lk_backend* backend, lk_error* err) {
  return Guard(err, [&]() -> absl::Status {
    if (backend == nullptr) return NullBackend();
    return Cast(backend)->Health();
  });
}

int PrepareExec(lk_backend* backend, lk_error* err) {
  return Guard(err, [&]() -> absl::Status {
    if (backend == nullptr) return NullBackend();
    return Cast(backend)->PrepareExec();
  });
}

void FinishAdoption(lk_backend* backend) {
  if (backend == nullptr) return;
  // No error channel: an exception is swallowed here rather than let out.
  try {
    Cast(backend)->FinishAdoption();
  } catch (...) {
  }
}

int DescribeState(lk_backend* backend, lk_text_fn emit, void* ctx, lk_error* err) {
  return Guard(err, [&]() -> absl::Status {
    if (backend == nullptr) return NullBackend();
    if (emit == nullptr) return absl::InvalidArgumentError("describe_state: emit is NULL");
    const std::string text = Cast(backend)->StateJson();
    emit(ctx, text.c_str());
    return absl::OkStatus();
  });
}

int Admin(lk_backend* backend, const char* request, lk_text_fn emit, void* ctx, lk_error* err) {
  return Guard(err, [&]() -> absl::Status {
    if (backend == nullptr) return NullBackend();
    if (emit == nullptr || request == nullptr) {
      return absl::InvalidArgumentError("admin: request or emit is NULL");
    }
    absl::StatusOr<std::string> out = Cast(backend)->Admin(request);
    if (!out.ok()) return out.status();
    emit(ctx, out->c_str());
    return absl::OkStatus();
  });
}

int CheckSuccession(lk_backend* backend, const lk_owner* owner, const lk_resource* resource,
                    uint32_t mode, uint64_t since_token, uint64_t granted_token, lk_error* err) {
  return Guard(err, [&]() -> absl::Status {
    Owner* o = nullptr;
    Resource* r = nullptr;
    if (absl::Status s = OwnerAndResource(backend, owner, resource, &o, &r); !s.ok()) return s;
    absl::StatusOr<LockMode> m = LockModeFromInt(mode);
    if (!m.ok()) return m.status();
    return Cast(backend)->CheckSuccession(*o, *r, *m, since_token, granted_token);
  });
}

void WatchEvents(lk_backend* backend, lk_event_fn fn, void* ctx) {
  if (backend == nullptr) return;
  try {
    if (fn == nullptr) {
      Cast(backend)->WatchLockLoss(nullptr);
      return;
    }
    Cast(backend)->WatchLockLoss([fn, ctx](const LockLoss& loss) {
      lk_event e{};
      e.kind = LK_EVENT_LOCK_LOST;
      e.owner = abi::ToAbi(loss.owner);
      e.resource = abi::ToAbi(loss.resource);
      e.reason = loss.reason.c_str();
      fn(ctx, &e);
    });
  } catch (...) {
  }
}

}  // namespace plugin_export
}  // namespace latchkey
