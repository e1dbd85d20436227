// lock_holder: takes one lock in its own process and holds it until its
// standard input closes, then releases it. Test helper for the contract
// suite (two processes contending, a holder killed).
//
//   lock_holder PLUGIN_FILE BACKEND SETTINGS_FILE UUID NAME disk|lease
//               LOCKSPACE PATH_OR_KEY MODE
//
// Prints "granted TOKEN", or "error CODE MESSAGE" and exits 1; after
// release prints "released".
#include <unistd.h>

#include <cstdio>
#include <string>

#include "core/config.h"
#include "core/plugin_loader.h"

using namespace latchkey;

int main(int argc, char** argv) {
  if (argc != 10) {
    fprintf(stderr, "usage: lock_holder PLUGIN BACKEND SETTINGS UUID NAME KIND LOCKSPACE RES MODE\n");
    return 2;
  }
  const std::string plugin = argv[1];
  auto fail = [](const absl::Status& s) {
    printf("error %d %s\n", static_cast<int>(s.code()), std::string(s.message()).c_str());
    fflush(stdout);
    return 1;
  };
  absl::StatusOr<Config> settings = Config::ParseFile(argv[3]);
  if (!settings.ok()) return fail(settings.status());
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      LoadBackend({plugin.substr(0, plugin.rfind('/'))}, argv[2], *settings);
  if (!backend.ok()) return fail(backend.status());
  const size_t max_len = (*backend)->capabilities().max_name_len;
  absl::StatusOr<Resource> resource = std::string(argv[6]) == "disk"
                                          ? Resource::Disk(argv[8], argv[7], max_len)
                                          : Resource::Lease(argv[7], argv[8]);
  if (!resource.ok()) return fail(resource.status());
  absl::StatusOr<LockMode> mode = ParseLockMode(argv[9]);
  if (!mode.ok()) return fail(mode.status());
  const Owner owner = OwnerForThisProcess(argv[4], argv[5]);
  absl::StatusOr<Grant> g = (*backend)->Acquire(owner, *resource, *mode, {});
  if (!g.ok()) return fail(g.status());
  printf("granted %llu\n", static_cast<unsigned long long>(g->fencing_token));
  fflush(stdout);
  char buf[64];
  while (read(0, buf, sizeof buf) > 0) {
  }
  if (absl::Status s = (*backend)->Release(owner, *resource); !s.ok()) return fail(s);
  printf("released\n");
  fflush(stdout);
  return 0;
}
