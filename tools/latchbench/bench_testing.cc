#include "tools/latchbench/bench_testing.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <fstream>
#include <memory>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "tools/cpp/runfiles/runfiles.h"

namespace latchkey {
namespace bench {
namespace testing {

std::string Latchbench() {
  std::string err;
  std::unique_ptr<bazel::tools::cpp::runfiles::Runfiles> rf(
      bazel::tools::cpp::runfiles::Runfiles::CreateForTest(&err));
  return rf == nullptr ? "" : rf->Rlocation("latchkey/tools/latchbench/latchbench");
}

Ran Latch(const std::string& args) {
  Ran r;
  FILE* p = popen(absl::StrCat(Latchbench(), " ", args, " 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

std::string Tmp() {
  const char* t = getenv("TEST_TMPDIR");
  return t != nullptr ? t : "/tmp";
}


int ProcessesMentioning(const std::string& needle) {
  int n = 0;
  DIR* d = opendir("/proc");
  if (d == nullptr) return -1;
  while (dirent* e = readdir(d)) {
    std::ifstream in(absl::StrCat("/proc/", e->d_name, "/cmdline"));
    std::stringstream s;
    s << in.rdbuf();
    if (s.str().find(needle) != std::string::npos) ++n;
  }
  closedir(d);
  return n;
}

std::string NodeCopiesLeft() {
  std::string left;
  DIR* d = opendir("/tmp");
  if (d == nullptr) return "(cannot read /tmp)";
  while (dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name.rfind("latchbench-node.", 0) == 0) left += (left.empty() ? "" : " ") + name;
  }
  closedir(d);
  return left;
}

}  // namespace testing
}  // namespace bench
}  // namespace latchkey
