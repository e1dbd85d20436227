#include "tools/lockcheck/history.h"

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace latchkey {
namespace lockcheck {
namespace {

using json = nlohmann::json;

absl::Status Bad(size_t line, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("line ", line, ": ", what));
}

absl::StatusOr<std::string> Text(const json& j, const char* key, size_t line) {
  if (!j.contains(key) || !j[key].is_string() || j[key].get<std::string>().empty()) {
    return Bad(line, absl::StrCat("\"", key, "\" must be a non-empty string"));
  }
  return j[key].get<std::string>();
}

}  // namespace

absl::StatusOr<std::vector<Event>> ReadHistory(std::istream& in, size_t max_events) {
  std::vector<Event> out;
  std::string line;
  size_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    if (out.size() >= max_events) return Bad(n, absl::StrCat("more than ", max_events, " events"));
    const json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return Bad(n, "not a JSON object");
    Event e;
    e.line = n;
    e.text = line;
    absl::StatusOr<std::string> type = Text(j, "type", n);
    if (!type.ok()) return type.status();
    if (*type == "invoke") {
      e.type = EventType::kInvoke;
    } else if (*type == "ok") {
      e.type = EventType::kOk;
    } else if (*type == "fail") {
      e.type = EventType::kFail;
    } else if (*type == "info") {
      e.type = EventType::kInfo;
    } else if (*type == "lost") {
      e.type = EventType::kLost;
    } else {
      return Bad(n, absl::StrCat("unknown type \"", *type, "\" (invoke, ok, fail, info, lost)"));
    }
    absl::StatusOr<std::string> process = Text(j, "process", n);
    if (!process.ok()) return process.status();
    e.process = *process;
    absl::StatusOr<std::string> resource = Text(j, "resource", n);
    if (!resource.ok()) return resource.status();
    e.resource = *resource;
    if (e.type != EventType::kLost) {
      absl::StatusOr<std::string> op = Text(j, "op", n);
      if (!op.ok()) return op.status();
      if (*op == "acquire") {
        e.op = Op::kAcquire;
      } else if (*op == "convert") {
        e.op = Op::kConvert;
      } else if (*op == "release") {
        e.op = Op::kRelease;
      } else {
        return Bad(n, absl::StrCat("unknown op \"", *op, "\" (acquire, convert, release)"));
      }
      if (e.op != Op::kRelease) {
        absl::StatusOr<std::string> mode = Text(j, "mode", n);
        if (!mode.ok()) return mode.status();
        absl::StatusOr<LockMode> m = ParseLockMode(*mode);
        if (!m.ok()) return Bad(n, std::string(m.status().message()));
        e.mode = *m;
      }
    }
    if (!j.contains("time_ns") || !j["time_ns"].is_number_integer()) {
      return Bad(n, "\"time_ns\" must be a whole number");
    }
    e.time_ns = j["time_ns"].get<int64_t>();
    if (j.contains("uncertainty_ns")) {
      if (!j["uncertainty_ns"].is_number_integer() || j["uncertainty_ns"].get<int64_t>() < 0) {
        return Bad(n, "\"uncertainty_ns\" must be a whole number, 0 or more");
      }
      e.uncertainty_ns = j["uncertainty_ns"].get<int64_t>();
    }
    if (j.contains("token") && !j["token"].is_null()) {
      if (!j["token"].is_number_unsigned()) return Bad(n, "\"token\" must be a whole number");
      e.token = j["token"].get<uint64_t>();
    }
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace lockcheck
}  // namespace latchkey
