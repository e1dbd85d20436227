// Conversions between the plugin C ABI (plugin_abi.h) and the C++ model,
// shared by the plugin side (plugin_export) and the host side
// (plugin_loader). Internal to core: callers use Backend.
//
// The ToAbi functions return structs that point into their C++ argument:
// the argument must outlive the returned struct.
#ifndef LATCHKEY_CORE_ABI_TYPES_H_
#define LATCHKEY_CORE_ABI_TYPES_H_

#include <deque>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/backend.h"
#include "core/config.h"
#include "core/plugin_abi.h"

namespace latchkey {
namespace abi {

lk_owner ToAbi(const Owner& owner);
lk_resource ToAbi(const Resource& resource);
lk_acquire_options ToAbi(const AcquireOptions& options);

// Fail with InvalidArgument on NULL pointers or bad numbers. The forms with
// an output argument reuse its storage (the hot path of every call).
absl::Status FromAbi(const lk_owner* owner, Owner* out);
absl::Status FromAbi(const lk_resource* resource, Resource* out);
absl::StatusOr<Owner> FromAbi(const lk_owner* owner);
absl::StatusOr<Resource> FromAbi(const lk_resource* resource);
AcquireOptions FromAbi(const lk_acquire_options* options);

Capabilities FromAbi(const lk_capabilities& caps);

// Grants: the backend token is cut to fit (LK_BACKEND_TOKEN_MAX - 1); a
// longer one is an Internal error on the plugin side, never silently cut.
absl::Status GrantToAbi(const Grant& grant, lk_grant* out);
absl::StatusOr<Grant> GrantFromAbi(const lk_grant& grant);

void StatusToError(const absl::Status& status, lk_error* err);
absl::Status ErrorToStatus(int rc, const lk_error& err);

// Settings <-> Config. SettingsToAbi keeps the strings it points to in
// `storage`.
std::vector<lk_setting> SettingsToAbi(const Config& config, std::deque<std::string>* storage);
absl::StatusOr<Config> SettingsFromAbi(const lk_setting* settings, size_t n);

}  // namespace abi
}  // namespace latchkey

#endif  // LATCHKEY_CORE_ABI_TYPES_H_
