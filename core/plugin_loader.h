// Finding and loading backend plugins.
//
// A backend NAME lives in a shared object latchkey-NAME.so. The loader looks
// for it along a plugin path, in each directory D as D/latchkey-NAME.so and
// then D/NAME/latchkey-NAME.so (the second form matches Bazel's output tree,
// bazel-bin/backends/NAME/). It dlopens the first it finds, checks the
// descriptor's ABI version before anything else, then every entry point.
//
// Example:
//   absl::StatusOr<std::unique_ptr<Backend>> b =
//       LoadBackend(DefaultPluginPath(), "posixfd", config.Section("posixfd_"));
//
// Errors: NotFound for an unknown backend (naming every file looked for and
// the backends that are available); FailedPrecondition naming the file for a
// plugin that cannot be loaded, lacks the symbol, or has another ABI
// version; InvalidArgument for a malformed backend name; whatever the
// backend's own open returns for bad settings.
//
// Plugins are never unloaded: code that may have registered thread-local
// destructors or atexit handlers must stay mapped until exit.
//
// Thread safety: all functions are thread-safe.
#ifndef LATCHKEY_CORE_PLUGIN_LOADER_H_
#define LATCHKEY_CORE_PLUGIN_LOADER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/backend.h"
#include "core/config.h"

namespace latchkey {

// Where installed plugins live.
inline constexpr char kSystemPluginDir[] = "/usr/lib/latchkey/backends";

// $LATCHKEY_PLUGIN_PATH (colon-separated) when set; otherwise the
// "backends" directory beside the running program's parent directory (so
// bazel-bin/tools/latchctl finds bazel-bin/backends/*), then
// kSystemPluginDir.
std::vector<std::string> DefaultPluginPath();

struct PluginInfo {
  std::string name;
  std::string file;
  std::string description;
  Capabilities capabilities;
};

// Loads backend `name` and opens it with `settings` (the backend's own
// keys, e.g. config.Section("posixfd_")).
absl::StatusOr<std::unique_ptr<Backend>> LoadBackend(
    const std::vector<std::string>& plugin_path, const std::string& name,
    const Config& settings);

// Loads a plugin file and validates its descriptor, without opening it.
absl::StatusOr<PluginInfo> ProbePlugin(const std::string& file);

// Every plugin found along the path (first one wins per name). Files that
// fail to load are reported in `errors` (one message each) when non-null.
std::vector<PluginInfo> ListPlugins(const std::vector<std::string>& plugin_path,
                                    std::vector<std::string>* errors = nullptr);

}  // namespace latchkey

#endif  // LATCHKEY_CORE_PLUGIN_LOADER_H_
