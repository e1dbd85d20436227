#include "agent/request_check.h"

#include "absl/strings/str_cat.h"
#include "core/utf8.h"

namespace latchkey {

absl::Status CheckRequestLine(absl::string_view line, size_t max_depth) {
  const size_t nul = line.find('\0');
  if (nul != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("request contains a NUL byte (at byte ", nul, ")"));
  }
  const size_t bad = FirstInvalidUtf8(line);
  if (bad != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("request is not valid UTF-8 (at byte ", bad, ")"));
  }
  size_t depth = 0;
  bool in_string = false, escaped = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) {
        return absl::InvalidArgumentError(absl::StrCat(
            "request nests arrays or objects more than ", max_depth, " deep (at byte ", i, ")"));
      }
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return absl::OkStatus();
}

}  // namespace latchkey
