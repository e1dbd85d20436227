// Configuration files in libvirt's conf syntax, used by every config file of
// the project (latchd.conf, qemu-latchkey.conf, backend settings).
//
//   # a comment
//   backend = "posixfd"          # strings in "double" or 'single' quotes
//   wait_timeout_ms = 5000       # integers, optionally signed
//   plugin_path = [ "/usr/lib/latchkey/backends",
//                   "/opt/latchkey" ]    # lists may span lines
//
// Every error names its place as `file:line: what` (syntax errors, unknown
// keys, wrong types, out-of-range values, duplicate keys).
//
// Example:
//   absl::StatusOr<Config> c = Config::ParseFile("/etc/latchkey/latchd.conf");
//   if (!c.ok()) return c.status();
//   if (auto s = c->CheckKeys({"backend", "plugin_path"}); !s.ok()) return s;
//   absl::StatusOr<std::string> b = c->GetString("backend", "posixfd");
//
// Thread safety: a const Config may be read from many threads.
#ifndef LATCHKEY_CORE_CONFIG_H_
#define LATCHKEY_CORE_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace latchkey {

class ConfigValue {
 public:
  enum class Type { kString, kInt, kList };

  static ConfigValue String(std::string s);
  static ConfigValue Int(int64_t i);
  static ConfigValue List(std::vector<ConfigValue> items);

  // Parses one value written in conf syntax (as ToSource produces).
  static absl::StatusOr<ConfigValue> ParseSource(absl::string_view text);

  Type type() const { return type_; }
  const std::string& str() const { return str_; }
  int64_t integer() const { return int_; }
  const std::vector<ConfigValue>& list() const { return list_; }

  // The value in conf syntax; ParseSource(v.ToSource()) == v.
  std::string ToSource() const;
  // "string", "integer" or "list", for messages.
  const char* TypeName() const;

  bool operator==(const ConfigValue& o) const {
    return type_ == o.type_ && str_ == o.str_ && int_ == o.int_ && list_ == o.list_;
  }

 private:
  Type type_ = Type::kString;
  std::string str_;
  int64_t int_ = 0;
  std::vector<ConfigValue> list_;
};

struct ConfigEntry {
  std::string key;
  ConfigValue value;
  std::string file;  // origin: a path or a label such as "<command line>"
  int line = 0;

  // "file:line"
  std::string Where() const;
};

class Config {
 public:
  Config() = default;

  // Parses conf text; `origin` names it in messages.
  static absl::StatusOr<Config> ParseText(absl::string_view text,
                                          absl::string_view origin);
  // Reads and parses a file. NotFound (naming the path) when it is missing.
  static absl::StatusOr<Config> ParseFile(const std::string& path);

  const std::vector<ConfigEntry>& entries() const { return entries_; }
  // nullptr when `key` is not set.
  const ConfigEntry* Find(absl::string_view key) const;
  // Adds or replaces `entry.key`.
  void Set(ConfigEntry entry);

  // InvalidArgument "file:line: unknown key 'k'" for the first key that is
  // neither in `known` nor starts with one of `prefixes`.
  absl::Status CheckKeys(const std::vector<std::string>& known,
                         const std::vector<std::string>& prefixes = {}) const;

  // The entries whose key starts with `prefix`, with the prefix removed
  // (e.g. "posixfd_lock_dir" -> "lock_dir" for prefix "posixfd_").
  Config Section(absl::string_view prefix) const;

  // Typed getters: the default when unset; InvalidArgument "file:line: ..."
  // when set with the wrong type or out of range.
  absl::StatusOr<std::string> GetString(absl::string_view key,
                                        absl::string_view default_value) const;
  absl::StatusOr<int64_t> GetInt(absl::string_view key, int64_t default_value,
                                 int64_t min, int64_t max) const;
  // Booleans are the integers 0 and 1, as in libvirt.
  absl::StatusOr<bool> GetBool(absl::string_view key, bool default_value) const;
  absl::StatusOr<std::vector<std::string>> GetStringList(
      absl::string_view key, const std::vector<std::string>& default_value) const;
  // One of `choices`; the message lists them.
  absl::StatusOr<std::string> GetChoice(absl::string_view key,
                                        absl::string_view default_value,
                                        const std::vector<std::string>& choices) const;

 private:
  std::vector<ConfigEntry> entries_;
};

}  // namespace latchkey

#endif  // LATCHKEY_CORE_CONFIG_H_
