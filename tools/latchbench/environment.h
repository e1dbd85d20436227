// What a latchbench result records about the machine it ran on
// (docs/latchbench.md, "environment"): enough to tell whether two results
// can be compared at all.
#ifndef LATCHKEY_TOOLS_LATCHBENCH_ENVIRONMENT_H_
#define LATCHKEY_TOOLS_LATCHBENCH_ENVIRONMENT_H_

#include <array>
#include <string>

#include "nlohmann/json.hpp"

namespace latchkey {
namespace bench {

// The 1, 5 and 15 minute load averages (/proc/loadavg); -1 when unreadable.
std::array<double, 3> LoadAverage();

// hostname, kernel (uname -r and -v), CPU model and count, memory, the
// load at the call, and the Debian versions of the lock stacks' packages
// that are installed (sanlock, libdlm, corosync, libvirt, QEMU).
nlohmann::json DescribeEnvironment();

// A whole file (/proc, /sys); "" when it cannot be read.
std::string ReadFile(const std::string& path);

// Now as RFC 3339 UTC with milliseconds ("2026-12-07T08:30:00.123Z").
std::string NowRfc3339();

}  // namespace bench
}  // namespace latchkey

#endif  // LATCHKEY_TOOLS_LATCHBENCH_ENVIRONMENT_H_
