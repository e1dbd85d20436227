#include "core/abi_types.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace latchkey {
namespace abi {
namespace {

}  // namespace

lk_owner ToAbi(const Owner& o) {
  lk_owner out;
  out.uuid = o.uuid.c_str();
  out.name = o.name.c_str();
  out.host = o.host.c_str();
  out.pid = o.pid;
  out.start_time = o.start_time;
  return out;
}

lk_resource ToAbi(const Resource& r) {
  lk_resource out;
  out.kind = static_cast<uint32_t>(r.kind);
  out.lockspace = r.lockspace.c_str();
  out.name = r.name.c_str();
  out.path = r.path.c_str();
  out.offset = r.offset;
  return out;
}

lk_acquire_options ToAbi(const AcquireOptions& o) {
  lk_acquire_options out;
  out.flags = o.wait ? LK_ACQUIRE_WAIT : 0;
  if (o.expect_token.has_value()) out.flags |= LK_ACQUIRE_EXPECT_TOKEN;
  if (o.cancel_fd >= 0) out.flags |= LK_ACQUIRE_CANCEL_FD;
  out.cancel_fd = o.cancel_fd;
  out.timeout_ms = o.timeout == absl::InfiniteDuration() ? -1 : absl::ToInt64Milliseconds(o.timeout);
  out.expect_token = o.expect_token.value_or(0);
  return out;
}

absl::Status FromAbi(const lk_owner* o, Owner* out) {
  if (o == nullptr) return absl::InvalidArgumentError("owner is NULL");
  if (o->uuid == nullptr || o->name == nullptr || o->host == nullptr) {
    return absl::InvalidArgumentError("owner uuid, name or host is NULL");
  }
  out->uuid.assign(o->uuid);
  out->name.assign(o->name);
  out->host.assign(o->host);
  out->pid = o->pid;
  out->start_time = o->start_time;
  return absl::OkStatus();
}

absl::Status FromAbi(const lk_resource* r, Resource* out) {
  if (r == nullptr) return absl::InvalidArgumentError("resource is NULL");
  if (r->kind != LK_RESOURCE_DISK && r->kind != LK_RESOURCE_LEASE) {
    return absl::InvalidArgumentError(absl::StrCat("unknown resource kind ", r->kind));
  }
  if (r->lockspace == nullptr || r->name == nullptr) {
    return absl::InvalidArgumentError("lockspace or resource name is NULL");
  }
  out->kind = static_cast<ResourceKind>(r->kind);
  out->lockspace.assign(r->lockspace);
  out->name.assign(r->name);
  out->path.assign(r->path == nullptr ? "" : r->path);
  out->offset = r->offset;
  return absl::OkStatus();
}

absl::StatusOr<Owner> FromAbi(const lk_owner* o) {
  Owner out;
  if (absl::Status s = FromAbi(o, &out); !s.ok()) return s;
  return out;
}

absl::StatusOr<Resource> FromAbi(const lk_resource* r) {
  Resource out;
  if (absl::Status s = FromAbi(r, &out); !s.ok()) return s;
  return out;
}

AcquireOptions FromAbi(const lk_acquire_options* o) {
  AcquireOptions out;
  if (o == nullptr) return out;
  out.wait = (o->flags & LK_ACQUIRE_WAIT) != 0;
  out.timeout = o->timeout_ms < 0 ? absl::InfiniteDuration() : absl::Milliseconds(o->timeout_ms);
  if ((o->flags & LK_ACQUIRE_EXPECT_TOKEN) != 0) out.expect_token = o->expect_token;
  if ((o->flags & LK_ACQUIRE_CANCEL_FD) != 0) out.cancel_fd = o->cancel_fd;
  return out;
}

Capabilities FromAbi(const lk_capabilities& c) {
  Capabilities out;
  out.modes = c.modes;
  out.folded_modes = c.folded_modes == nullptr ? "" : c.folded_modes;
  out.survives_holder_death = (c.flags & LK_CAP_SURVIVES_HOLDER_DEATH) != 0;
  out.orphan_adoption = (c.flags & LK_CAP_ORPHAN_ADOPTION) != 0;
  out.holder_identity = (c.flags & LK_CAP_HOLDER_IDENTITY) != 0;
  out.fencing_tokens = (c.flags & LK_CAP_FENCING_TOKENS) != 0;
  out.queues = (c.flags & LK_CAP_QUEUES) != 0;
  out.no_exclusion = (c.flags & LK_CAP_NO_EXCLUSION) != 0;
  out.max_name_len = c.max_name_len == 0 || c.max_name_len > kMaxNameLen ? kMaxNameLen
                                                                          : c.max_name_len;
  return out;
}

absl::Status GrantToAbi(const Grant& g, lk_grant* out) {
  if (g.backend_token.size() >= LK_BACKEND_TOKEN_MAX) {
    return absl::InternalError(absl::StrCat("backend token is ", g.backend_token.size(),
                                            " bytes; the ABI allows ",
                                            LK_BACKEND_TOKEN_MAX - 1));
  }
  out->mode = static_cast<uint32_t>(g.mode);
  out->fencing_token = g.fencing_token;
  memcpy(out->backend_token, g.backend_token.c_str(), g.backend_token.size() + 1);
  return absl::OkStatus();
}

absl::StatusOr<Grant> GrantFromAbi(const lk_grant& g) {
  absl::StatusOr<LockMode> mode = LockModeFromInt(g.mode);
  if (!mode.ok()) {
    return absl::InternalError(absl::StrCat("plugin returned a grant with ", mode.status().message()));
  }
  Grant out;
  out.mode = *mode;
  out.fencing_token = g.fencing_token;
  out.backend_token = std::string(g.backend_token, strnlen(g.backend_token, LK_BACKEND_TOKEN_MAX));
  return out;
}

void StatusToError(const absl::Status& status, lk_error* err) {
  if (err == nullptr) return;
  err->code = static_cast<int>(status.code());
  const absl::string_view msg = status.message();
  const size_t n = std::min(msg.size(), sizeof err->message - 1);
  memcpy(err->message, msg.data(), n);
  err->message[n] = '\0';
}

absl::Status ErrorToStatus(int rc, const lk_error& err) {
  if (rc == 0) return absl::OkStatus();
  const std::string msg(err.message, strnlen(err.message, sizeof err.message));
  int code = err.code;
  // A plugin that failed without a proper code must not look like success.
  if (code <= 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    code = static_cast<int>(absl::StatusCode::kInternal);
  }
  return absl::Status(static_cast<absl::StatusCode>(code),
                      msg.empty() ? "backend plugin failed without a message" : msg);
}

std::vector<lk_setting> SettingsToAbi(const Config& config, std::deque<std::string>* storage) {
  std::vector<lk_setting> out;
  for (const ConfigEntry& e : config.entries()) {
    lk_setting s;
    storage->push_back(e.key);
    s.key = storage->back().c_str();
    storage->push_back(e.value.ToSource());
    s.value = storage->back().c_str();
    storage->push_back(e.file);
    s.file = storage->back().c_str();
    s.line = e.line;
    out.push_back(s);
  }
  return out;
}

absl::StatusOr<Config> SettingsFromAbi(const lk_setting* settings, size_t n) {
  Config out;
  if (n > 0 && settings == nullptr) return absl::InvalidArgumentError("settings are NULL");
  for (size_t i = 0; i < n; ++i) {
    const lk_setting& s = settings[i];
    if (s.key == nullptr || s.value == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("setting ", i, " has a NULL key or value"));
    }
    ConfigEntry e;
    e.key = s.key;
    e.file = s.file == nullptr ? "<settings>" : s.file;
    e.line = s.line;
    absl::StatusOr<ConfigValue> v = ConfigValue::ParseSource(s.value);
    if (!v.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(e.Where(), ": bad value for '", e.key, "': ", v.status().message()));
    }
    e.value = *std::move(v);
    out.Set(std::move(e));
  }
  return out;
}

}  // namespace abi
}  // namespace latchkey
