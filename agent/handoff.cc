#include "agent/handoff.h"

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/resource.h"

namespace latchkey {
namespace {

constexpr absl::string_view kMagic = "latchkey1";

const char* ShortMode(LockMode m) {
  switch (m) {
    case LockMode::kSharedRead:
      return "sr";
    case LockMode::kSharedWrite:
      return "sw";
    case LockMode::kExclusive:
      return "ex";
  }
  return "?";
}

}  // namespace

std::string HandoffKey(absl::string_view backend, absl::string_view lockspace,
                       absl::string_view name) {
  return absl::StrCat(backend, ":", lockspace, ":", name);
}

std::string EncodeHandoff(const std::vector<HandoffEntry>& entries) {
  std::string out(kMagic);
  for (const HandoffEntry& e : entries) {
    absl::StrAppend(&out, ";", HandoffKey(e.backend, e.lockspace, e.name), ":",
                    ShortMode(e.mode), ":", e.fencing_token);
  }
  return out;
}

absl::StatusOr<std::map<std::string, HandoffEntry>> DecodeHandoff(absl::string_view state) {
  std::vector<absl::string_view> parts = absl::StrSplit(state, ';');
  if (parts.empty() || parts[0] != kMagic) {
    return absl::InvalidArgumentError(
        absl::StrCat("state string does not start with '", kMagic, "'"));
  }
  std::map<std::string, HandoffEntry> out;
  for (size_t i = 1; i < parts.size(); ++i) {
    std::vector<absl::string_view> f = absl::StrSplit(parts[i], ':');
    HandoffEntry e;
    if (f.size() != 5) {
      return absl::InvalidArgumentError(absl::StrCat(
          "state string entry ", i, " '", parts[i],
          "' is not BACKEND:LOCKSPACE:NAME:MODE:TOKEN"));
    }
    e.backend = std::string(f[0]);
    e.lockspace = std::string(f[1]);
    e.name = std::string(f[2]);
    absl::Status s = ValidateName("state string backend", e.backend);
    if (s.ok()) s = ValidateName("state string lockspace", e.lockspace);
    if (s.ok()) s = ValidateName("state string resource name", e.name);
    if (!s.ok()) return s;
    absl::StatusOr<LockMode> mode = ParseLockMode(f[3]);
    if (!mode.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("state string entry ", i, ": ", mode.status().message()));
    }
    e.mode = *mode;
    if (!absl::SimpleAtoi(f[4], &e.fencing_token)) {
      return absl::InvalidArgumentError(
          absl::StrCat("state string entry ", i, ": token '", f[4], "' is not a number"));
    }
    const std::string key = HandoffKey(e.backend, e.lockspace, e.name);
    if (!out.emplace(key, std::move(e)).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("state string names ", key, " twice"));
    }
  }
  return out;
}

}  // namespace latchkey
