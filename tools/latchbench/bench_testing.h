// What latchbench's own tests share: running the latchbench binary from the
// runfiles and looking at what it left behind.
#ifndef LATCHKEY_TOOLS_LATCHBENCH_BENCH_TESTING_H_
#define LATCHKEY_TOOLS_LATCHBENCH_BENCH_TESTING_H_

#include <string>

namespace latchkey {
namespace bench {
namespace testing {

struct Ran {
  int status = -1;  // exit code
  std::string out;  // stdout and stderr
};

// The latchbench binary in the runfiles.
std::string Latchbench();
// Runs `latchbench ARGS` through the shell (ARGS may quote), output captured.
Ran Latch(const std::string& args);
// $TEST_TMPDIR, or /tmp.
std::string Tmp();
// Processes whose command line mentions `needle`.
int ProcessesMentioning(const std::string& needle);
// The names of /tmp/latchbench-node.* directories (latchbench --hosts'
// copies on a host that is this machine), space-separated; "" when none.
std::string NodeCopiesLeft();

}  // namespace testing
}  // namespace bench
}  // namespace latchkey

#endif  // LATCHKEY_TOOLS_LATCHBENCH_BENCH_TESTING_H_
