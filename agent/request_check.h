// The checks a raw request line passes before latchd parses it: cheap, one
// pass, no allocation, no recursion. They bound what the JSON parser and
// every later walk of the parsed value (copying the id, printing the
// response) can be made to do by one line from any allowed peer.
//
// Example:
//   if (absl::Status s = CheckRequestLine(line); !s.ok()) return Error(s);
//   json req = json::parse(line, nullptr, false);
#ifndef LATCHKEY_AGENT_REQUEST_CHECK_H_
#define LATCHKEY_AGENT_REQUEST_CHECK_H_

#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace latchkey {

// Arrays and objects may nest this deep in a request (the deepest valid
// request nests 3 levels; an `id` may use the rest).
inline constexpr size_t kMaxRequestDepth = 16;

// InvalidArgument, naming the byte offset, when `line` holds a NUL byte,
// is not UTF-8, or nests arrays/objects deeper than `max_depth` (brackets
// inside JSON strings do not count). Says nothing about JSON syntax: the
// parser judges that.
absl::Status CheckRequestLine(absl::string_view line, size_t max_depth = kMaxRequestDepth);

}  // namespace latchkey

#endif  // LATCHKEY_AGENT_REQUEST_CHECK_H_
