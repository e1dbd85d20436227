#include "core/fault.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

namespace latchkey {
namespace {

struct Armed {
  bool on = false;
  std::string name;
  long hit = 0;
  std::atomic<long> seen{0};
};

Armed& State() {
  static Armed* armed = [] {
    auto* a = new Armed;
    const char* spec = getenv("LATCHKEY_FAULT");
    if (spec == nullptr) return a;
    const char* colon = strrchr(spec, ':');
    if (colon == nullptr) return a;
    char* end = nullptr;
    const long n = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || *end != '\0' || n < 1) return a;
    a->name.assign(spec, colon);
    a->hit = n;
    a->on = true;
    return a;
  }();
  return *armed;
}

}  // namespace

void FaultPoint(const char* name) {
  Armed& a = State();
  if (!a.on || a.name != name) return;
  if (a.seen.fetch_add(1) + 1 == a.hit) {
    kill(getpid(), SIGKILL);
    _exit(137);  // Not reached.
  }
}

bool FaultArmed() { return State().on; }

}  // namespace latchkey
