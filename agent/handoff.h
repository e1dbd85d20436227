// Hand-off state strings: what an owner held, with each lock's fencing
// token, so the next holder can prove nobody took a resource in between
// (docs/protocol.md, "state string").
//
//   latchkey1;posixfd:default:3fa9...:ex:17;posixfd:LS:lease1:sr:4
//
// Names, lockspaces and backend names cannot contain ':' or ';' (they are
// validated to [A-Za-z0-9_.-]), so the format needs no escaping.
//
// Thread safety: plain functions on values.
#ifndef LATCHKEY_AGENT_HANDOFF_H_
#define LATCHKEY_AGENT_HANDOFF_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/lock_mode.h"

namespace latchkey {

struct HandoffEntry {
  std::string backend;
  std::string lockspace;
  std::string name;
  LockMode mode = LockMode::kExclusive;
  uint64_t fencing_token = 0;
};

// "backend:lockspace:name", the key entries are matched by.
std::string HandoffKey(absl::string_view backend, absl::string_view lockspace,
                       absl::string_view name);

std::string EncodeHandoff(const std::vector<HandoffEntry>& entries);

// Entries by HandoffKey. InvalidArgument naming the bad part for anything
// that EncodeHandoff could not have produced.
absl::StatusOr<std::map<std::string, HandoffEntry>> DecodeHandoff(absl::string_view state);

}  // namespace latchkey

#endif  // LATCHKEY_AGENT_HANDOFF_H_
