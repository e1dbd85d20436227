#include "core/owner.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/escaping.h"
#include "core/utf8.h"

namespace latchkey {
namespace {

bool IsUuid(const std::string& s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
      return false;
    }
  }
  return true;
}

// Reads a /proc file (a few KiB at most). False when it cannot be opened.
bool ReadSmallFile(const std::string& path, std::string* out) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[4096];
  out->clear();
  for (;;) {
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out->append(buf, static_cast<size_t>(n));
    if (out->size() > (1 << 16)) break;
  }
  close(fd);
  return !out->empty();
}

}  // namespace

absl::Status Owner::Validate() const {
  if (!IsUuid(uuid)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "owner uuid '", absl::CHexEscape(uuid.substr(0, 64)),
        "' is not a 36-character uuid (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"));
  }
  if (name.empty() || name.size() > kMaxOwnerNameLen) {
    return absl::InvalidArgumentError(absl::StrCat(
        "owner name must be 1..", kMaxOwnerNameLen, " bytes, got ", name.size()));
  }
  for (char c : name) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError(absl::StrCat(
          "owner name '", absl::CHexEscape(name), "' has a control character"));
    }
  }
  if (!IsValidUtf8(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("owner name '", absl::CHexEscape(name), "' is not valid UTF-8"));
  }
  if (pid <= 0 || pid > 0x7fffffff) {
    return absl::InvalidArgumentError(
        absl::StrCat("owner ", name, ": pid ", pid, " is not a process id"));
  }
  if (host.empty() || host.size() > kMaxHostNameLen) {
    return absl::InvalidArgumentError(absl::StrCat(
        "owner ", name, ": host name must be 1..", kMaxHostNameLen, " bytes"));
  }
  for (char c : host) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError(
          absl::StrCat("owner ", name, ": host name has a space or control character"));
    }
  }
  if (!IsValidUtf8(host)) {
    return absl::InvalidArgumentError(absl::StrCat("owner ", name, ": host name '",
                                                   absl::CHexEscape(host), "' is not valid UTF-8"));
  }
  return absl::OkStatus();
}

std::string Owner::Describe() const {
  return absl::StrCat(name, " (uuid ", uuid, ", pid ", pid, " on host ", host, ")");
}

absl::StatusOr<uint64_t> ProcessStartTime(pid_t pid) {
  const std::string path = absl::StrCat("/proc/", pid, "/stat");
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("no process ", pid));
  }
  char buf[1024];
  const ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return absl::NotFoundError(absl::StrCat("no process ", pid));
  buf[n] = '\0';
  // The command name (field 2) may hold spaces and ')': fields after it
  // start after the last ')'.
  const char* close_paren = strrchr(buf, ')');
  if (close_paren == nullptr) {
    return absl::InternalError(absl::StrCat("cannot parse ", path));
  }
  std::vector<absl::string_view> fields =
      absl::StrSplit(absl::string_view(close_paren + 2), ' ', absl::SkipEmpty());
  // fields[0] is field 3 (state); start time is field 22.
  uint64_t start = 0;
  if (fields.size() < 20 || !absl::SimpleAtoi(fields[19], &start)) {
    return absl::InternalError(absl::StrCat("cannot parse start time in ", path));
  }
  return start;
}

absl::StatusOr<ProcessInfo> ReadProcessInfo(pid_t pid) {
  ProcessInfo info;
  const std::string stat_path = absl::StrCat("/proc/", pid, "/stat");
  std::string stat;
  if (!ReadSmallFile(stat_path, &stat)) return absl::NotFoundError(absl::StrCat("no process ", pid));
  const size_t close_paren = stat.rfind(')');
  std::vector<absl::string_view> fields;
  if (close_paren != std::string::npos && close_paren + 2 < stat.size()) {
    fields = absl::StrSplit(absl::string_view(stat).substr(close_paren + 2), ' ',
                            absl::SkipEmpty());
  }
  if (fields.size() < 20 || fields[0].empty() || !absl::SimpleAtoi(fields[19], &info.start_time)) {
    return absl::InternalError(absl::StrCat("cannot parse ", stat_path));
  }
  info.state = fields[0][0];
  const std::string status_path = absl::StrCat("/proc/", pid, "/status");
  std::string status;
  if (!ReadSmallFile(status_path, &status)) {
    return absl::NotFoundError(absl::StrCat("no process ", pid));
  }
  bool have_tgid = false, have_uid = false;
  for (absl::string_view line : absl::StrSplit(status, '\n')) {
    std::vector<absl::string_view> f = absl::StrSplit(line, absl::ByAnyChar(" \t"),
                                                      absl::SkipEmpty());
    if (f.size() >= 2 && f[0] == "Tgid:") have_tgid = absl::SimpleAtoi(f[1], &info.tgid);
    if (f.size() >= 4 && f[0] == "Uid:") {
      have_uid = absl::SimpleAtoi(f[1], &info.real_uid) &&
                 absl::SimpleAtoi(f[2], &info.effective_uid) &&
                 absl::SimpleAtoi(f[3], &info.saved_uid);
    }
  }
  if (!have_tgid || !have_uid) {
    return absl::InternalError(absl::StrCat("cannot parse Tgid/Uid in ", status_path));
  }
  return info;
}

bool ProcessIsAlive(pid_t pid, uint64_t start_time) {
  absl::StatusOr<uint64_t> actual = ProcessStartTime(pid);
  if (!actual.ok()) return false;
  return start_time == 0 || *actual == start_time;
}

std::string LocalHostName() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
  std::string h(buf);
  if (h.size() > kMaxHostNameLen) h.resize(kMaxHostNameLen);
  return h;
}

Owner OwnerForThisProcess(const std::string& uuid, const std::string& name) {
  Owner o;
  o.uuid = uuid;
  o.name = name;
  o.pid = getpid();
  o.start_time = ProcessStartTime(getpid()).value_or(0);
  o.host = LocalHostName();
  return o;
}

std::string RandomUuid() {
  uint8_t b[16];
  std::random_device rd;  // /dev/urandom on Linux.
  for (auto& x : b) x = static_cast<uint8_t>(rd());
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  return absl::StrFormat(
      "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
      b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
      b[13], b[14], b[15]);
}

}  // namespace latchkey
