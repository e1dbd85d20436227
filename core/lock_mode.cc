#include "core/lock_mode.h"

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace latchkey {

bool ModesCompatible(LockMode a, LockMode b) {
  if (a == LockMode::kExclusive || b == LockMode::kExclusive) return false;
  return a == b;  // PR+PR and CW+CW; PR vs CW conflict.
}

const char* LockModeName(LockMode mode) {
  switch (mode) {
    case LockMode::kSharedRead:
      return "shared-read";
    case LockMode::kSharedWrite:
      return "shared-write";
    case LockMode::kExclusive:
      return "exclusive";
  }
  return "invalid-mode";
}

absl::StatusOr<LockMode> ParseLockMode(absl::string_view text) {
  const std::string t = absl::AsciiStrToLower(text);
  if (t == "shared-read" || t == "sr") return LockMode::kSharedRead;
  if (t == "shared-write" || t == "sw") return LockMode::kSharedWrite;
  if (t == "exclusive" || t == "ex") return LockMode::kExclusive;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown lock mode '", text,
      "' (expected shared-read, shared-write or exclusive)"));
}

absl::StatusOr<LockMode> LockModeFromInt(uint32_t value) {
  if (value >= 1 && value <= 3) return static_cast<LockMode>(value);
  return absl::InvalidArgumentError(
      absl::StrCat("unknown lock mode number ", value,
                   " (expected 1 shared-read, 2 shared-write, 3 exclusive)"));
}

}  // namespace latchkey
