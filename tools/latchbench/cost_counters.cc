#include "tools/latchbench/cost_counters.h"

#include <dirent.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "tools/latchbench/environment.h"

namespace latchkey {
namespace bench {
namespace {

double TicksToSeconds(uint64_t ticks) {
  static const long hz = sysconf(_SC_CLK_TCK) > 0 ? sysconf(_SC_CLK_TCK) : 100;
  return static_cast<double>(ticks) / static_cast<double>(hz);
}

}  // namespace

const std::vector<std::string>& CostDaemons() {
  static const std::vector<std::string> kDaemons = {"latchd",  "sanlock",   "wdmd",
                                                    "corosync", "dlm_controld", "iscsid"};
  return kDaemons;
}

std::map<std::string, std::array<uint64_t, 4>> ParseDiskstats(const std::string& text) {
  // major minor name reads merged sectors ms writes merged sectors ms ...
  std::map<std::string, std::array<uint64_t, 4>> out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipWhitespace());
    if (f.size() < 10) continue;
    uint64_t reads = 0, rsect = 0, writes = 0, wsect = 0;
    if (!absl::SimpleAtoi(f[3], &reads) || !absl::SimpleAtoi(f[5], &rsect) ||
        !absl::SimpleAtoi(f[7], &writes) || !absl::SimpleAtoi(f[9], &wsect)) {
      continue;
    }
    out[std::string(f[2])] = {reads, rsect * 512, writes, wsect * 512};
  }
  return out;
}

std::map<std::string, std::array<uint64_t, 4>> ParseNetDev(const std::string& text) {
  // "  eth0: rx_bytes rx_packets errs drop fifo frame compressed multicast
  //          tx_bytes tx_packets ..."
  std::map<std::string, std::array<uint64_t, 4>> out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos) continue;
    const std::string name(absl::StripAsciiWhitespace(line.substr(0, colon)));
    std::vector<absl::string_view> f =
        absl::StrSplit(line.substr(colon + 1), ' ', absl::SkipWhitespace());
    if (name.empty() || f.size() < 10) continue;
    uint64_t rxb = 0, rxp = 0, txb = 0, txp = 0;
    if (!absl::SimpleAtoi(f[0], &rxb) || !absl::SimpleAtoi(f[1], &rxp) ||
        !absl::SimpleAtoi(f[8], &txb) || !absl::SimpleAtoi(f[9], &txp)) {
      continue;
    }
    out[name] = {rxp, rxb, txp, txb};
  }
  return out;
}

bool ParseProcStat(const std::string& text, std::string* comm, uint64_t* ticks) {
  // pid (comm) state ppid ... utime(14) stime(15); comm may hold spaces
  // and parentheses, so it ends at the last ')'.
  const size_t open = text.find('('), close = text.rfind(')');
  if (open == std::string::npos || close == std::string::npos || close < open) return false;
  *comm = text.substr(open + 1, close - open - 1);
  std::vector<absl::string_view> f =
      absl::StrSplit(absl::string_view(text).substr(close + 1), ' ', absl::SkipWhitespace());
  // f[0] is field 3 (state): utime is field 14, f[11]; stime f[12].
  uint64_t ut = 0, st = 0;
  if (f.size() < 13 || !absl::SimpleAtoi(f[11], &ut) || !absl::SimpleAtoi(f[12], &st)) {
    return false;
  }
  *ticks = ut + st;
  return true;
}

bool ParseCpuLine(const std::string& text, uint64_t* busy, uint64_t* total) {
  const std::string line = text.substr(0, text.find('\n'));
  std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipWhitespace());
  if (f.size() < 5 || f[0] != "cpu") return false;
  *busy = *total = 0;
  for (size_t i = 1; i < f.size(); ++i) {
    uint64_t v = 0;
    if (!absl::SimpleAtoi(f[i], &v)) return false;
    *total += v;
    if (i != 4 && i != 5) *busy += v;  // idle (4) and iowait (5) are not busy
  }
  return true;
}

CostSnapshot TakeCostSnapshot() {
  CostSnapshot s;
  s.disk = ParseDiskstats(ReadFile("/proc/diskstats"));
  s.net = ParseNetDev(ReadFile("/proc/net/dev"));
  uint64_t busy = 0, total = 0;
  if (ParseCpuLine(ReadFile("/proc/stat"), &busy, &total)) s.machine_busy_seconds = TicksToSeconds(busy);
  std::string comm;
  uint64_t ticks = 0;
  if (ParseProcStat(ReadFile("/proc/self/stat"), &comm, &ticks)) s.cpu["self"] = TicksToSeconds(ticks);
  DIR* d = opendir("/proc");
  if (d == nullptr) return s;
  const std::vector<std::string>& daemons = CostDaemons();
  while (dirent* e = readdir(d)) {
    int pid = 0;
    if (!absl::SimpleAtoi(e->d_name, &pid)) continue;
    if (!ParseProcStat(ReadFile(std::string("/proc/") + e->d_name + "/stat"), &comm, &ticks)) {
      continue;
    }
    for (const std::string& name : daemons) {
      if (comm == name) s.cpu[name] += TicksToSeconds(ticks);
    }
  }
  closedir(d);
  return s;
}

nlohmann::json CostDelta(const CostSnapshot& before, const CostSnapshot& after, int cycles) {
  nlohmann::json disk = nlohmann::json::object(), net = nlohmann::json::object(),
                 cpu = nlohmann::json::object();
  for (const auto& [dev, a] : after.disk) {
    auto b = before.disk.find(dev);
    if (b == before.disk.end()) continue;
    const auto d = [&](int i) { return a[i] >= b->second[i] ? a[i] - b->second[i] : 0; };
    if (d(0) + d(2) == 0) continue;
    disk[dev] = {{"reads", d(0)}, {"read_bytes", d(1)}, {"writes", d(2)}, {"write_bytes", d(3)}};
  }
  for (const auto& [iface, a] : after.net) {
    auto b = before.net.find(iface);
    if (iface == "lo" || b == before.net.end()) continue;
    const auto d = [&](int i) { return a[i] >= b->second[i] ? a[i] - b->second[i] : 0; };
    if (d(0) + d(2) == 0) continue;
    net[iface] = {{"rx_packets", d(0)}, {"rx_bytes", d(1)}, {"tx_packets", d(2)}, {"tx_bytes", d(3)}};
  }
  for (const auto& [name, a] : after.cpu) {
    auto b = before.cpu.find(name);
    cpu[name] = b == before.cpu.end() ? a : std::max(0.0, a - b->second);
  }
  return {{"cycles", cycles},
          {"disk", disk},
          {"net", net},
          {"cpu_seconds", cpu},
          {"machine_busy_seconds",
           std::max(0.0, after.machine_busy_seconds - before.machine_busy_seconds)}};
}

namespace {

// Adds b's numbers into a, key by key (objects merged).
void AddInto(nlohmann::json& a, const nlohmann::json& b) {
  if (b.is_number()) {
    a = (a.is_number() ? a.get<double>() : 0.0) + b.get<double>();
    return;
  }
  if (!b.is_object()) return;
  if (!a.is_object()) a = nlohmann::json::object();
  for (auto it = b.begin(); it != b.end(); ++it) AddInto(a[it.key()], it.value());
}

void DivideBy(nlohmann::json& a, double n) {
  if (a.is_number()) {
    a = a.get<double>() / n;
  } else if (a.is_object()) {
    for (auto& v : a) DivideBy(v, n);
  }
}

void MultiplyBy(nlohmann::json& a, double f) {
  if (a.is_number()) {
    a = a.get<double>() * f;
  } else if (a.is_object()) {
    for (auto& v : a) MultiplyBy(v, f);
  }
}

}  // namespace

nlohmann::json ScaledCost(const nlohmann::json& delta, double factor) {
  nlohmann::json s = delta;
  if (s.is_object()) s.erase("cycles");
  MultiplyBy(s, factor);
  return s;
}

nlohmann::json CostPerCycle(const std::vector<nlohmann::json>& deltas) {
  nlohmann::json sum;
  double cycles = 0;
  for (const nlohmann::json& d : deltas) {
    if (!d.is_object() || !d.contains("cycles")) continue;
    cycles += d["cycles"].get<double>();
    nlohmann::json rest = d;
    rest.erase("cycles");
    rest.erase("seconds");  // a run's own length, and its idle interval's
    rest.erase("background_idle_seconds");
    AddInto(sum, rest);
  }
  if (cycles <= 0 || sum.is_null()) return nullptr;
  DivideBy(sum, cycles);
  sum["cycles"] = cycles;
  return sum;
}

}  // namespace bench
}  // namespace latchkey
