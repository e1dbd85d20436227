// lockcheck: checks a recorded lock history (docs/lockcheck.md).
//
//   lockcheck [--json] HISTORY
//
// Prints what it read and every violation with the lines of the history
// that show it (--json: one JSON document instead). Exit codes: 0 no
// violation, 1 violations found, 2 bad usage or a history it cannot read.
#include <cstdio>
#include <fstream>
#include <string>

#include "tools/lockcheck/checker.h"
#include "tools/lockcheck/history.h"

int main(int argc, char** argv) {
  using namespace latchkey::lockcheck;
  bool as_json = false;
  std::string path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json") {
      as_json = true;
    } else if (path.empty() && !a.empty() && a[0] != '-') {
      path = a;
    } else {
      fprintf(stderr, "usage: lockcheck [--json] HISTORY\n");
      return 2;
    }
  }
  if (path.empty()) {
    fprintf(stderr, "usage: lockcheck [--json] HISTORY\n");
    return 2;
  }
  std::ifstream in(path);
  if (!in) {
    fprintf(stderr, "lockcheck: cannot read %s\n", path.c_str());
    return 2;
  }
  absl::StatusOr<std::vector<Event>> h = ReadHistory(in);
  if (!h.ok()) {
    fprintf(stderr, "lockcheck: %s: %s\n", path.c_str(), std::string(h.status().message()).c_str());
    return 2;
  }
  const Report r = Check(*h);
  if (as_json) {
    printf("%s\n", r.ToJson(*h).dump(1).c_str());
  } else {
    printf("%s: %zu events, %zu operations, %zu grants, %zu losses, %zu unknown outcomes: "
           "%zu violations\n",
           path.c_str(), r.events, r.operations, r.grants, r.losses, r.unknown,
           r.violations.size());
    for (const Violation& v : r.violations) {
      printf("\n%s on %s: %s\n", v.kind.c_str(), v.resource.c_str(), v.what.c_str());
      for (size_t l : v.lines) {
        for (const Event& e : *h) {
          if (e.line == l) printf("  %6zu  %s\n", l, e.text.c_str());
        }
      }
    }
  }
  return r.violations.empty() ? 0 : 1;
}
