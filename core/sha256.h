// SHA-256 (FIPS 180-4), used to name disk resources after their canonical
// path. Written here so the core depends on no crypto library.
//
// Thread safety: pure function.
#ifndef LATCHKEY_CORE_SHA256_H_
#define LATCHKEY_CORE_SHA256_H_

#include <array>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace latchkey {

std::array<uint8_t, 32> Sha256(absl::string_view data);

// Lower-case hex of Sha256(data): 64 characters.
std::string Sha256Hex(absl::string_view data);

}  // namespace latchkey

#endif  // LATCHKEY_CORE_SHA256_H_
