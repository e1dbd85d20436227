// UTF-8 validity. latchkey's names, paths and messages travel as JSON text
// (latchd's protocol, the journal's readers, status output), which must be
// UTF-8: anything else is refused where it enters, never discovered where
// it is printed.
#ifndef LATCHKEY_CORE_UTF8_H_
#define LATCHKEY_CORE_UTF8_H_

#include <cstddef>

#include "absl/strings/string_view.h"

namespace latchkey {

// True when `text` is well-formed UTF-8 (RFC 3629: no overlong forms, no
// surrogates, nothing above U+10FFFF). NUL bytes are valid UTF-8; callers
// that refuse them check separately.
bool IsValidUtf8(absl::string_view text);

// The offset of the first byte that makes `text` invalid UTF-8, or
// absl::string_view::npos when it is valid.
size_t FirstInvalidUtf8(absl::string_view text);

}  // namespace latchkey

#endif  // LATCHKEY_CORE_UTF8_H_
