#include "core/config.h"

#include <cerrno>
#include <fstream>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace latchkey {
namespace {

// Largest config file accepted; a bigger one is certainly not a config.
constexpr size_t kMaxConfigBytes = 1 << 20;

// A recursive-descent parser over the whole text, tracking the line.
class Parser {
 public:
  Parser(absl::string_view text, absl::string_view origin)
      : text_(text), origin_(origin) {}

  absl::Status ParseAll(Config* out) {
    while (true) {
      SkipBlank(/*newlines=*/true);
      if (AtEnd()) return absl::OkStatus();
      const int line = line_;
      std::string key;
      if (absl::Status s = ParseKey(&key); !s.ok()) return s;
      SkipBlank(false);
      if (AtEnd() || Peek() != '=') {
        return Error(absl::StrCat("expected '=' after key '", key, "'"));
      }
      ++pos_;
      SkipBlank(false);
      ConfigValue value;
      if (absl::Status s = ParseValue(&value, /*in_list=*/false); !s.ok()) return s;
      SkipBlank(false);
      if (!AtEnd() && Peek() == ';') ++pos_;
      SkipBlank(false);
      if (!AtEnd() && Peek() != '\n') {
        return Error(absl::StrCat("unexpected '", absl::CHexEscape(text_.substr(pos_, 1)),
                                  "' after the value of '", key, "'"));
      }
      if (const ConfigEntry* prev = out->Find(key); prev != nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            origin_, ":", line, ": duplicate key '", key, "' (first set at line ",
            prev->line, ")"));
      }
      ConfigEntry e;
      e.key = std::move(key);
      e.value = std::move(value);
      e.file = std::string(origin_);
      e.line = line;
      out->Set(std::move(e));
    }
  }

  // Parses exactly one value and nothing else.
  absl::Status ParseSingle(ConfigValue* out) {
    SkipBlank(true);
    if (absl::Status s = ParseValue(out, false); !s.ok()) return s;
    SkipBlank(true);
    if (!AtEnd()) return Error("unexpected text after the value");
    return absl::OkStatus();
  }

 private:
  bool AtEnd() const { return pos_ >= text_.size(); }
  char Peek() const { return text_[pos_]; }

  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(origin_, ":", line_, ": ", what));
  }

  // Skips spaces, tabs, carriage returns and comments; newlines too when
  // asked (between statements and inside lists).
  void SkipBlank(bool newlines) {
    while (!AtEnd()) {
      const char c = Peek();
      if (c == ' ' || c == '\t' || c == '\r') {
        ++pos_;
      } else if (c == '#') {
        while (!AtEnd() && Peek() != '\n') ++pos_;
      } else if (c == '\n' && newlines) {
        ++pos_;
        ++line_;
      } else {
        return;
      }
    }
  }

  absl::Status ParseKey(std::string* key) {
    const size_t start = pos_;
    while (!AtEnd()) {
      const char c = Peek();
      const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                      (pos_ > start && c >= '0' && c <= '9');
      if (!ok) break;
      ++pos_;
    }
    if (pos_ == start) {
      return Error(absl::StrCat("expected a key, found '",
                                absl::CHexEscape(text_.substr(pos_, 1)), "'"));
    }
    *key = std::string(text_.substr(start, pos_ - start));
    return absl::OkStatus();
  }

  absl::Status ParseValue(ConfigValue* out, bool in_list) {
    if (AtEnd() || Peek() == '\n') return Error("missing value");
    const char c = Peek();
    if (c == '"' || c == '\'') {
      const size_t start = ++pos_;
      while (!AtEnd() && Peek() != c && Peek() != '\n') ++pos_;
      if (AtEnd() || Peek() != c) {
        return Error(absl::StrCat("unterminated string (missing closing ", std::string(1, c), ")"));
      }
      *out = ConfigValue::String(std::string(text_.substr(start, pos_ - start)));
      ++pos_;
      return absl::OkStatus();
    }
    if (c == '[') {
      if (in_list) return Error("lists cannot be nested");
      ++pos_;
      std::vector<ConfigValue> items;
      while (true) {
        SkipBlank(true);
        if (AtEnd()) return Error("unterminated list (missing ']')");
        if (Peek() == ']') {
          ++pos_;
          break;
        }
        ConfigValue item;
        if (absl::Status s = ParseValue(&item, true); !s.ok()) return s;
        items.push_back(std::move(item));
        SkipBlank(true);
        if (AtEnd()) return Error("unterminated list (missing ']')");
        if (Peek() == ',') {
          ++pos_;
        } else if (Peek() != ']') {
          return Error("expected ',' or ']' in list");
        }
      }
      *out = ConfigValue::List(std::move(items));
      return absl::OkStatus();
    }
    if (c == '-' || c == '+' || (c >= '0' && c <= '9')) {
      const size_t start = pos_;
      if (c == '-' || c == '+') ++pos_;
      while (!AtEnd() && Peek() >= '0' && Peek() <= '9') ++pos_;
      const absl::string_view digits = text_.substr(start, pos_ - start);
      if (!AtEnd() && (isalpha(static_cast<unsigned char>(Peek())) || Peek() == '.')) {
        return Error(absl::StrCat("bad number '", digits, std::string(1, Peek()), "...': only integers are allowed"));
      }
      int64_t v = 0;
      if (!absl::SimpleAtoi(digits, &v)) {
        return Error(absl::StrCat("integer '", digits, "' is out of range"));
      }
      *out = ConfigValue::Int(v);
      return absl::OkStatus();
    }
    return Error(absl::StrCat("expected a value (\"string\", integer or [ list ]), found '",
                              absl::CHexEscape(text_.substr(pos_, 1)), "'"));
  }

  absl::string_view text_;
  absl::string_view origin_;
  size_t pos_ = 0;
  int line_ = 1;
};

absl::Status TypeError(const ConfigEntry& e, absl::string_view wanted) {
  return absl::InvalidArgumentError(absl::StrCat(e.Where(), ": '", e.key, "' must be ",
                                                 wanted, ", got ", e.value.TypeName(), " ",
                                                 e.value.ToSource()));
}

}  // namespace

ConfigValue ConfigValue::String(std::string s) {
  ConfigValue v;
  v.type_ = Type::kString;
  v.str_ = std::move(s);
  return v;
}

ConfigValue ConfigValue::Int(int64_t i) {
  ConfigValue v;
  v.type_ = Type::kInt;
  v.int_ = i;
  return v;
}

ConfigValue ConfigValue::List(std::vector<ConfigValue> items) {
  ConfigValue v;
  v.type_ = Type::kList;
  v.list_ = std::move(items);
  return v;
}

absl::StatusOr<ConfigValue> ConfigValue::ParseSource(absl::string_view text) {
  ConfigValue v;
  Parser p(text, "<value>");
  if (absl::Status s = p.ParseSingle(&v); !s.ok()) return s;
  return v;
}

std::string ConfigValue::ToSource() const {
  switch (type_) {
    case Type::kString: {
      // The syntax has no escapes: pick the quote the string lacks.
      const char q = str_.find('"') == std::string::npos ? '"' : '\'';
      return absl::StrCat(std::string(1, q), str_, std::string(1, q));
    }
    case Type::kInt:
      return absl::StrCat(int_);
    case Type::kList: {
      std::vector<std::string> parts;
      for (const ConfigValue& item : list_) parts.push_back(item.ToSource());
      return absl::StrCat("[ ", absl::StrJoin(parts, ", "), parts.empty() ? "]" : " ]");
    }
  }
  return "";
}

const char* ConfigValue::TypeName() const {
  switch (type_) {
    case Type::kString:
      return "string";
    case Type::kInt:
      return "integer";
    case Type::kList:
      return "list";
  }
  return "?";
}

std::string ConfigEntry::Where() const { return absl::StrCat(file, ":", line); }

absl::StatusOr<Config> Config::ParseText(absl::string_view text, absl::string_view origin) {
  if (text.size() > kMaxConfigBytes) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": config is ", text.size(),
                                                   " bytes; the limit is ", kMaxConfigBytes));
  }
  Config c;
  Parser p(text, origin);
  if (absl::Status s = p.ParseAll(&c); !s.ok()) return s;
  return c;
}

absl::StatusOr<Config> Config::ParseFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such config file"));
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": cannot read config: ", strerror(err)));
  }
  std::ostringstream buf;
  buf << in.rdbuf();
  return ParseText(buf.str(), path);
}

const ConfigEntry* Config::Find(absl::string_view key) const {
  for (const ConfigEntry& e : entries_) {
    if (e.key == key) return &e;
  }
  return nullptr;
}

void Config::Set(ConfigEntry entry) {
  for (ConfigEntry& e : entries_) {
    if (e.key == entry.key) {
      e = std::move(entry);
      return;
    }
  }
  entries_.push_back(std::move(entry));
}

absl::Status Config::CheckKeys(const std::vector<std::string>& known,
                               const std::vector<std::string>& prefixes) const {
  for (const ConfigEntry& e : entries_) {
    bool ok = false;
    for (const std::string& k : known) ok = ok || e.key == k;
    for (const std::string& p : prefixes) ok = ok || absl::StartsWith(e.key, p);
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          e.Where(), ": unknown key '", e.key, "' (known keys: ", absl::StrJoin(known, ", "),
          prefixes.empty() ? "" : absl::StrCat("; and keys starting with ",
                                               absl::StrJoin(prefixes, ", ")),
          ")"));
    }
  }
  return absl::OkStatus();
}

Config Config::Section(absl::string_view prefix) const {
  Config out;
  for (const ConfigEntry& e : entries_) {
    if (absl::StartsWith(e.key, prefix) && e.key.size() > prefix.size()) {
      ConfigEntry copy = e;
      copy.key = e.key.substr(prefix.size());
      out.entries_.push_back(std::move(copy));
    }
  }
  return out;
}

absl::StatusOr<std::string> Config::GetString(absl::string_view key,
                                              absl::string_view default_value) const {
  const ConfigEntry* e = Find(key);
  if (e == nullptr) return std::string(default_value);
  if (e->value.type() != ConfigValue::Type::kString) return TypeError(*e, "a string");
  return e->value.str();
}

absl::StatusOr<int64_t> Config::GetInt(absl::string_view key, int64_t default_value,
                                       int64_t min, int64_t max) const {
  const ConfigEntry* e = Find(key);
  if (e == nullptr) return default_value;
  if (e->value.type() != ConfigValue::Type::kInt) return TypeError(*e, "an integer");
  const int64_t v = e->value.integer();
  if (v < min || v > max) {
    return absl::InvalidArgumentError(absl::StrCat(e->Where(), ": '", key, "' is ", v,
                                                   "; allowed range is ", min, "..", max));
  }
  return v;
}

absl::StatusOr<bool> Config::GetBool(absl::string_view key, bool default_value) const {
  const ConfigEntry* e = Find(key);
  if (e == nullptr) return default_value;
  if (e->value.type() != ConfigValue::Type::kInt ||
      (e->value.integer() != 0 && e->value.integer() != 1)) {
    return TypeError(*e, "0 or 1");
  }
  return e->value.integer() == 1;
}

absl::StatusOr<std::vector<std::string>> Config::GetStringList(
    absl::string_view key, const std::vector<std::string>& default_value) const {
  const ConfigEntry* e = Find(key);
  if (e == nullptr) return default_value;
  if (e->value.type() != ConfigValue::Type::kList) return TypeError(*e, "a list of strings");
  std::vector<std::string> out;
  for (const ConfigValue& item : e->value.list()) {
    if (item.type() != ConfigValue::Type::kString) return TypeError(*e, "a list of strings");
    out.push_back(item.str());
  }
  return out;
}

absl::StatusOr<std::string> Config::GetChoice(absl::string_view key,
                                              absl::string_view default_value,
                                              const std::vector<std::string>& choices) const {
  absl::StatusOr<std::string> v = GetString(key, default_value);
  if (!v.ok()) return v;
  for (const std::string& c : choices) {
    if (*v == c) return v;
  }
  const ConfigEntry* e = Find(key);
  return absl::InvalidArgumentError(absl::StrCat(e ? e->Where() : "<default>", ": '", key,
                                                 "' is \"", *v, "\"; expected one of ",
                                                 absl::StrJoin(choices, ", ")));
}

}  // namespace latchkey
