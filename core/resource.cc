#include "core/resource.h"

#include <climits>
#include <cstdlib>
#include <vector>

#include <unistd.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/disk_identity.h"
#include "core/sha256.h"
#include "core/utf8.h"

namespace latchkey {

const char* ResourceKindName(ResourceKind kind) {
  switch (kind) {
    case ResourceKind::kDisk:
      return "disk";
    case ResourceKind::kLease:
      return "lease";
  }
  return "invalid-kind";
}

absl::Status ValidateName(absl::string_view what, absl::string_view name,
                          size_t max_len) {
  if (name.empty()) return absl::InvalidArgumentError(absl::StrCat(what, " is empty"));
  if (name.size() > max_len) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " '", name.substr(0, 80), name.size() > 80 ? "..." : "",
                     "' is ", name.size(), " bytes long; the limit is ", max_len));
  }
  if (name[0] == '.' || name[0] == '-') {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " '", name, "' must not start with '.' or '-'"));
  }
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " '", absl::CHexEscape(name), "' has a character outside [A-Za-z0-9_.-]"));
    }
  }
  return absl::OkStatus();
}

std::string DiskResourceName(absl::string_view canonical_path, size_t max_len) {
  std::string hex = Sha256Hex(canonical_path);
  if (max_len < hex.size()) hex.resize(max_len);
  return hex;
}

absl::StatusOr<std::string> CanonicalImagePath(absl::string_view path) {
  if (path.empty()) return absl::InvalidArgumentError("disk path is empty");
  if (path.size() > kMaxPathLen) {
    return absl::InvalidArgumentError(absl::StrCat(
        "disk path is ", path.size(), " bytes long; the limit is ", kMaxPathLen));
  }
  if (path.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError("disk path contains a NUL byte");
  }
  if (!IsValidUtf8(path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "disk path '", absl::CHexEscape(path), "' is not valid UTF-8 (byte ",
        FirstInvalidUtf8(path), "); latchkey names disks by UTF-8 paths"));
  }
  std::string p(path);
  char resolved[PATH_MAX];
  if (realpath(p.c_str(), resolved) != nullptr) {
    // A UTF-8 name may lead, through a symlink, to one that is not: refuse
    // it here rather than store a name no answer could carry.
    if (!IsValidUtf8(resolved)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "disk path '", path, "' resolves to '", absl::CHexEscape(resolved),
          "', which is not valid UTF-8 (byte ", FirstInvalidUtf8(resolved),
          "); latchkey names disks by UTF-8 paths: rename the image"));
    }
    return std::string(resolved);
  }

  // Not there (yet): normalise lexically against the working directory.
  if (p[0] != '/') {
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "disk path '", path, "' is relative and the working directory is unknown"));
    }
    p = absl::StrCat(cwd, "/", p);
  }
  std::vector<absl::string_view> parts;
  for (absl::string_view part : absl::StrSplit(p, '/', absl::SkipEmpty())) {
    if (part == ".") continue;
    if (part == "..") {
      if (!parts.empty()) parts.pop_back();
      continue;
    }
    parts.push_back(part);
  }
  return absl::StrCat("/", absl::StrJoin(parts, "/"));
}

const char* DiskNamingName(DiskNaming naming) {
  return naming == DiskNaming::kPath ? "path" : "identity";
}

absl::StatusOr<Resource> Resource::Disk(absl::string_view image_path,
                                        absl::string_view lockspace,
                                        size_t max_name_len, DiskNaming naming,
                                        const DiskIdentity* known) {
  absl::StatusOr<std::string> canonical = CanonicalImagePath(image_path);
  if (!canonical.ok()) return canonical.status();
  Resource r;
  r.kind = ResourceKind::kDisk;
  r.lockspace = std::string(lockspace);
  r.path = *std::move(canonical);
  absl::StatusOr<DiskIdentity> id =
      known != nullptr ? absl::StatusOr<DiskIdentity>(*known) : IdentifyDisk(r.path);
  if (!id.ok()) return id.status();
  if (id->anchor.empty()) id->anchor = r.path;
  r.naming = naming;
  r.identity = std::move(id->id);
  r.identity_kind = std::move(id->kind);
  r.identity_reason = std::move(id->reason);
  r.anchor = std::move(id->anchor);
  r.name = naming == DiskNaming::kPath ? DiskResourceName(r.path, max_name_len)
                                       : DiskIdentityName(r.identity, max_name_len);
  absl::Status s = r.Validate(max_name_len);
  if (!s.ok()) return s;
  return r;
}

absl::StatusOr<Resource> Resource::Lease(absl::string_view lockspace,
                                         absl::string_view key,
                                         absl::string_view path, uint64_t offset) {
  Resource r;
  r.kind = ResourceKind::kLease;
  r.lockspace = std::string(lockspace);
  r.name = std::string(key);
  r.path = std::string(path);
  r.offset = offset;
  absl::Status s = r.Validate();
  if (!s.ok()) return s;
  return r;
}

absl::Status Resource::Validate(size_t max_name_len) const {
  if (kind != ResourceKind::kDisk && kind != ResourceKind::kLease) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown resource kind ", static_cast<uint32_t>(kind)));
  }
  absl::Status s = ValidateName("lockspace", lockspace, max_name_len);
  if (!s.ok()) return s;
  s = ValidateName(kind == ResourceKind::kDisk ? "disk resource name" : "lease key",
                   name, max_name_len);
  if (!s.ok()) return s;
  if (kind == ResourceKind::kDisk && path.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("disk resource ", name, " has no image path"));
  }
  if (path.size() > kMaxPathLen || path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        ResourceKindName(kind), " ", name, ": path is too long or has a NUL byte"));
  }
  if (!IsValidUtf8(path)) {
    return absl::InvalidArgumentError(absl::StrCat(ResourceKindName(kind), " ", name,
                                                   ": path '", absl::CHexEscape(path),
                                                   "' is not valid UTF-8"));
  }
  return absl::OkStatus();
}

std::string Resource::Key() const { return absl::StrCat(lockspace, "/", name); }

std::string Resource::Describe() const {
  if (kind == ResourceKind::kDisk) {
    return absl::StrCat("disk ", path, " (lockspace ", lockspace, ", resource ", name, ")");
  }
  if (path.empty()) return absl::StrCat("lease ", lockspace, "/", name);
  return absl::StrCat("lease ", lockspace, "/", name, " (", path, ":", offset, ")");
}

}  // namespace latchkey
