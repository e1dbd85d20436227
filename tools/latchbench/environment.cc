#include "tools/latchbench/environment.h"

#include <stdio.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace latchkey {
namespace bench {
namespace {


// The value of the first "KEY : value" line of /proc/cpuinfo or
// /proc/meminfo whose key is `key`; "" when none.
std::string Field(const std::string& text, const std::string& key) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos) continue;
    if (absl::StripAsciiWhitespace(line.substr(0, colon)) == key) {
      return std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    }
  }
  return "";
}

// Installed versions of the packages a comparison depends on, from dpkg;
// empty when dpkg-query is missing.
nlohmann::json Packages() {
  nlohmann::json out = nlohmann::json::object();
  FILE* p = popen(
      "dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\\n' sanlock libsanlock1 "
      "libdlm3 dlm-controld corosync libvirt-daemon qemu-system-x86 2>/dev/null",
      "r");
  if (p == nullptr) return out;
  char line[512];
  while (fgets(line, sizeof line, p) != nullptr) {
    std::vector<std::string> w = absl::StrSplit(absl::StripAsciiWhitespace(line), ' ',
                                                absl::SkipEmpty());
    if (w.size() == 3 && w[0] == "ii") out[w[1]] = w[2];
  }
  pclose(p);
  return out;
}

}  // namespace

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::array<double, 3> LoadAverage() {
  std::array<double, 3> out = {-1, -1, -1};
  std::vector<std::string> w =
      absl::StrSplit(ReadFile("/proc/loadavg"), ' ', absl::SkipEmpty());
  for (size_t i = 0; i < 3 && i < w.size(); ++i) {
    if (!absl::SimpleAtod(w[i], &out[i])) out[i] = -1;
  }
  return out;
}

nlohmann::json DescribeEnvironment() {
  nlohmann::json env;
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) == 0) env["hostname"] = host;
  struct utsname u;
  if (uname(&u) == 0) {
    env["kernel"] = std::string(u.release);
    env["kernel_build"] = std::string(u.version);
    env["machine"] = std::string(u.machine);
  }
  const std::string cpuinfo = ReadFile("/proc/cpuinfo");
  env["cpu_model"] = Field(cpuinfo, "model name");
  env["cpus_online"] = sysconf(_SC_NPROCESSORS_ONLN);
  int64_t kb = 0;
  const std::string mem_text = Field(ReadFile("/proc/meminfo"), "MemTotal");
  absl::string_view mem = mem_text;
  if (absl::ConsumeSuffix(&mem, " kB") && absl::SimpleAtoi(mem, &kb)) env["mem_total_kb"] = kb;
  const std::array<double, 3> load = LoadAverage();
  env["load"] = {load[0], load[1], load[2]};
  env["packages"] = Packages();
  return env;
}

std::string NowRfc3339() {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
}

}  // namespace bench
}  // namespace latchkey
