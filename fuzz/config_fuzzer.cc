// Fuzz target: the config parser (core/config.h), on any text.
//
// Properties checked beyond "no crash, no sanitizer report":
//   * every error names its origin and line ("fuzz.conf:N: ...");
//   * every value round-trips: ParseSource(v.ToSource()) == v;
//   * the parsed entries written back as "key = value" lines parse to the
//     same entries;
//   * the typed getters, CheckKeys and Section answer without crashing and
//     agree with the value's type.
#include <cstdint>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/config.h"
#include "fuzz/fuzz_util.h"

namespace latchkey {
namespace {

void CheckGetters(const Config& c, const ConfigEntry& e) {
  const ConfigValue::Type t = e.value.type();
  absl::StatusOr<std::string> s = c.GetString(e.key, "d");
  FUZZ_CHECK(s.ok() == (t == ConfigValue::Type::kString), e.key);
  if (s.ok()) FUZZ_CHECK(*s == e.value.str(), e.key);
  absl::StatusOr<int64_t> i = c.GetInt(e.key, 0, INT64_MIN, INT64_MAX);
  FUZZ_CHECK(i.ok() == (t == ConfigValue::Type::kInt), e.key);
  if (i.ok()) FUZZ_CHECK(*i == e.value.integer(), e.key);
  // Errors name the entry's place.
  absl::StatusOr<int64_t> bounded = c.GetInt(e.key, 0, 0, 10);
  if (!bounded.ok()) FUZZ_CHECK(absl::StartsWith(bounded.status().message(), e.Where()), e.key);
  absl::StatusOr<bool> b = c.GetBool(e.key, false);
  if (b.ok()) FUZZ_CHECK(t == ConfigValue::Type::kInt && (e.value.integer() == 0 || e.value.integer() == 1), e.key);
  absl::StatusOr<std::vector<std::string>> l = c.GetStringList(e.key, {});
  if (l.ok()) FUZZ_CHECK(l->size() == e.value.list().size(), e.key);
  absl::StatusOr<std::string> ch = c.GetChoice(e.key, "a", {"a", "b", e.value.str()});
  if (t == ConfigValue::Type::kString) FUZZ_CHECK(ch.ok() && *ch == e.value.str(), e.key);
}

}  // namespace
}  // namespace latchkey

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using latchkey::Config;
  using latchkey::ConfigEntry;
  using latchkey::ConfigValue;
  const absl::string_view text(reinterpret_cast<const char*>(data), size);

  // One value alone, as ParseSource reads it.
  absl::StatusOr<ConfigValue> one = ConfigValue::ParseSource(text);
  if (one.ok()) {
    absl::StatusOr<ConfigValue> again = ConfigValue::ParseSource(one->ToSource());
    FUZZ_CHECK(again.ok() && *again == *one, one->ToSource());
  }

  absl::StatusOr<Config> c = Config::ParseText(text, "fuzz.conf");
  if (!c.ok()) {
    FUZZ_CHECK(absl::StartsWith(c.status().message(), "fuzz.conf:"), std::string(c.status().message()));
    return 0;
  }
  std::string rebuilt;
  for (const ConfigEntry& e : c->entries()) {
    FUZZ_CHECK(e.line >= 1 && e.file == "fuzz.conf", e.Where());
    FUZZ_CHECK(c->Find(e.key) == &e, e.key);
    const std::string src = e.value.ToSource();
    absl::StatusOr<ConfigValue> v = ConfigValue::ParseSource(src);
    FUZZ_CHECK(v.ok(), absl::StrCat(e.key, " = ", src, ": ", v.status().ToString()));
    FUZZ_CHECK(*v == e.value, absl::StrCat(e.key, " = ", src));
    absl::StrAppend(&rebuilt, e.key, " = ", src, "\n");
    latchkey::CheckGetters(*c, e);
  }
  absl::StatusOr<Config> back = Config::ParseText(rebuilt, "rebuilt.conf");
  FUZZ_CHECK(back.ok(), absl::StrCat(rebuilt, ": ", back.status().ToString()));
  FUZZ_CHECK(back->entries().size() == c->entries().size(), rebuilt);
  for (size_t i = 0; i < c->entries().size(); ++i) {
    FUZZ_CHECK(back->entries()[i].key == c->entries()[i].key, rebuilt);
    FUZZ_CHECK(back->entries()[i].value == c->entries()[i].value, rebuilt);
  }

  if (!c->entries().empty()) {
    const std::string& first = c->entries()[0].key;
    // Keys are unique, so only a one-entry config passes with one known key.
    FUZZ_CHECK(c->CheckKeys({first}).ok() == (c->entries().size() == 1), first);
    std::vector<std::string> all;
    for (const ConfigEntry& e : c->entries()) all.push_back(e.key);
    FUZZ_CHECK(c->CheckKeys(all).ok(), "every key is known");
    const std::string prefix = first.substr(0, first.size() / 2);
    Config section = c->Section(prefix);
    for (const ConfigEntry& e : section.entries()) {
      const ConfigEntry* orig = c->Find(prefix + e.key);
      FUZZ_CHECK(orig != nullptr && orig->value == e.value, prefix + e.key);
    }
  }
  return 0;
}
