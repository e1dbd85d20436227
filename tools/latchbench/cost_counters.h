// What a block of lock cycles costs the machine it runs on, beyond time
// (docs/latchbench.md, "Cost per operation"): the block layer's I/O
// counters (/proc/diskstats), the network interfaces' counters
// (/proc/net/dev), the whole machine's busy CPU (/proc/stat: kernel work
// such as the DLM's included) and the CPU of each lock daemon
// (/proc/PID/stat, by command name). Read before and after the timed part
// of a block; the difference, with the cycles it covers, is the cost.
#ifndef LATCHKEY_TOOLS_LATCHBENCH_COST_COUNTERS_H_
#define LATCHKEY_TOOLS_LATCHBENCH_COST_COUNTERS_H_

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace latchkey {
namespace bench {

struct CostSnapshot {
  // Per block device: reads, bytes read, writes, bytes written.
  std::map<std::string, std::array<uint64_t, 4>> disk;
  // Per network interface: packets and bytes received, sent.
  std::map<std::string, std::array<uint64_t, 4>> net;
  // CPU seconds (user + system) by command name, over every process with
  // that name; "self" is the process taking the snapshot.
  std::map<std::string, double> cpu;
  double machine_busy_seconds = 0;  // all CPUs, everything but idle and iowait
};

// The daemons whose CPU is recorded (and this process as "self").
const std::vector<std::string>& CostDaemons();

// Reads the counters now. Missing files leave their part empty.
CostSnapshot TakeCostSnapshot();

// after - before, for `cycles` cycles: {"cycles", "disk": {dev: {"reads",
// "read_bytes", "writes", "write_bytes"}}, "net": {iface: {"rx_packets",
// "rx_bytes", "tx_packets", "tx_bytes"}}, "cpu_seconds": {name: s},
// "machine_busy_seconds"}. Devices and interfaces that did not move are
// left out; loopback too.
nlohmann::json CostDelta(const CostSnapshot& before, const CostSnapshot& after, int cycles);

// `delta` (CostDelta's shape) with every figure multiplied by `factor`,
// "cycles" left out: an idle interval's counters scaled to a block's
// length, the block's background.
nlohmann::json ScaledCost(const nlohmann::json& delta, double factor);

// Several CostDelta results (one block's runs) summed and divided by their
// cycles: the same shape, every figure per cycle, "cycles" the total.
// A delta's "background" (ScaledCost of an idle interval) is summed and
// divided the same way: the part of each figure the node would have shown
// without the cycles. Null when there is nothing to sum.
nlohmann::json CostPerCycle(const std::vector<nlohmann::json>& deltas);

// Parsers, exposed for tests.
std::map<std::string, std::array<uint64_t, 4>> ParseDiskstats(const std::string& text);
std::map<std::string, std::array<uint64_t, 4>> ParseNetDev(const std::string& text);
// /proc/PID/stat: the command name and user + system clock ticks; false
// when the line does not parse.
bool ParseProcStat(const std::string& text, std::string* comm, uint64_t* ticks);
// /proc/stat's first line: busy and total clock ticks.
bool ParseCpuLine(const std::string& text, uint64_t* busy, uint64_t* total);

}  // namespace bench
}  // namespace latchkey

#endif  // LATCHKEY_TOOLS_LATCHBENCH_COST_COUNTERS_H_
