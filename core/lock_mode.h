// Lock modes and their compatibility.
//
// latchkey has three modes, with the compatibility of DLM's PR / CW / EX:
//
//                 shared-read  shared-write  exclusive
//   shared-read       yes          no           no
//   shared-write      no           yes          no
//   exclusive         no           no           no
//
// Readers share with readers, writers of a shareable disk share with each
// other, a reader and a writer never share, and exclusive shares with nobody.
// A backend that cannot tell two modes apart says so in its Capabilities
// (see backend.h); it never grants a mode it does not implement.
//
// Thread safety: everything here is a pure function.
#ifndef LATCHKEY_CORE_LOCK_MODE_H_
#define LATCHKEY_CORE_LOCK_MODE_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace latchkey {

// The numeric values are part of the plugin ABI (core/plugin_abi.h).
enum class LockMode : uint32_t {
  kSharedRead = 1,
  kSharedWrite = 2,
  kExclusive = 3,
};

// True when one owner may hold `a` while another holds `b`.
bool ModesCompatible(LockMode a, LockMode b);

// "shared-read", "shared-write" or "exclusive".
const char* LockModeName(LockMode mode);

// Accepts the names above (and "sr", "sw", "ex"). Anything else is
// InvalidArgument naming the text and the accepted names.
absl::StatusOr<LockMode> ParseLockMode(absl::string_view text);

// Validates a number received over the plugin ABI or a wire protocol.
absl::StatusOr<LockMode> LockModeFromInt(uint32_t value);

// Bit for `mode` in a mode mask (Capabilities::modes).
constexpr uint32_t LockModeBit(LockMode mode) {
  return 1u << static_cast<uint32_t>(mode);
}

}  // namespace latchkey

#endif  // LATCHKEY_CORE_LOCK_MODE_H_
