// Fuzz target: the hand-off state decoder (agent/handoff.h).
//
// Properties: DecodeHandoff never crashes; a decoded state encodes to a
// string that decodes to the same entries, and that encoding is a fixed
// point (encode(decode(encode(x))) == encode(x)); every entry's key is its
// HandoffKey; a refusal says why.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "agent/handoff.h"
#include "fuzz/fuzz_util.h"

namespace {

using latchkey::HandoffEntry;

bool Same(const HandoffEntry& a, const HandoffEntry& b) {
  return a.backend == b.backend && a.lockspace == b.lockspace && a.name == b.name &&
         a.mode == b.mode && a.fencing_token == b.fencing_token;
}

std::vector<HandoffEntry> Values(const std::map<std::string, HandoffEntry>& m) {
  std::vector<HandoffEntry> v;
  for (const auto& [key, e] : m) v.push_back(e);
  return v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view state(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<std::map<std::string, HandoffEntry>> decoded = latchkey::DecodeHandoff(state);
  if (!decoded.ok()) {
    FUZZ_CHECK(decoded.status().code() == absl::StatusCode::kInvalidArgument,
               decoded.status().ToString());
    FUZZ_CHECK(!decoded.status().message().empty(), "a refusal says why");
    return 0;
  }
  for (const auto& [key, e] : *decoded) {
    FUZZ_CHECK(key == latchkey::HandoffKey(e.backend, e.lockspace, e.name), key);
  }
  const std::string encoded = latchkey::EncodeHandoff(Values(*decoded));
  absl::StatusOr<std::map<std::string, HandoffEntry>> again = latchkey::DecodeHandoff(encoded);
  FUZZ_CHECK(again.ok(), absl::StrCat(encoded, ": ", again.status().ToString()));
  FUZZ_CHECK(again->size() == decoded->size(), encoded);
  for (auto a = again->begin(), d = decoded->begin(); a != again->end(); ++a, ++d) {
    FUZZ_CHECK(a->first == d->first && Same(a->second, d->second), encoded);
  }
  FUZZ_CHECK(latchkey::EncodeHandoff(Values(*again)) == encoded, encoded);
  return 0;
}
