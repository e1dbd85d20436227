// Exporting a C++ Backend as a plugin.
//
// A backend plugin implements latchkey::Backend and a factory, then exports
// the descriptor once, in one .cc of its shared object:
//
//   absl::StatusOr<std::unique_ptr<latchkey::Backend>> NewMyBackend(
//       const latchkey::Config& settings);
//   LATCHKEY_EXPORT_BACKEND("mine", "what it is", kMyCapabilities, NewMyBackend);
//
// The thunks behind the descriptor translate the C ABI (plugin_abi.h) into
// Backend calls: they validate every pointer, turn absl::Status into
// lk_error, and catch every exception so none crosses the boundary. They
// also enforce what the capabilities promise: a mode the backend does not
// grant, or an expect_token for a backend without fencing tokens, is refused
// (InvalidArgument) before the backend sees it.
// `settings` are the backend's own keys (prefix stripped), each keeping the
// file:line it came from; the factory must reject unknown keys
// (Config::CheckKeys).
#ifndef LATCHKEY_CORE_PLUGIN_EXPORT_H_
#define LATCHKEY_CORE_PLUGIN_EXPORT_H_

#include <memory>

#include "absl/status/statusor.h"
#include "core/backend.h"
#include "core/config.h"
#include "core/plugin_abi.h"

namespace latchkey {
namespace plugin_export {

using Factory = absl::StatusOr<std::unique_ptr<Backend>> (*)(const Config& settings);

// The C++ view of a descriptor's capabilities, so a backend declares them
// once (as lk_capabilities) and returns CapabilitiesFromAbi(kCaps).
Capabilities CapabilitiesFromAbi(const lk_capabilities& caps);

int OpenWith(Factory factory, const lk_setting* settings, size_t n, lk_backend** out,
             lk_error* err);
void Close(lk_backend* backend);
int Acquire(lk_backend* backend, const lk_owner* owner, const lk_resource* resource,
            uint32_t mode, const lk_acquire_options* options, lk_grant* out, lk_error* err);
int Convert(lk_backend* backend, const lk_owner* owner, const lk_resource* resource,
            uint32_t mode, const lk_acquire_options* options, lk_grant* out, lk_error* err);
int Release(lk_backend* backend, const lk_owner* owner, const lk_resource* resource,
            lk_error* err);
int Inquire(lk_backend* backend, const lk_resource* resource, lk_holder_fn emit, void* ctx,
            lk_error* err);
int Adopt(lk_backend* backend, const lk_record* record, lk_grant* out, lk_error* err);
int Health(lk_backend* backend, lk_error* err);
int PrepareExec(lk_backend* backend, lk_error* err);
void FinishAdoption(lk_backend* backend);
int DescribeState(lk_backend* backend, lk_text_fn emit, void* ctx, lk_error* err);
int Admin(lk_backend* backend, const char* request, lk_text_fn emit, void* ctx, lk_error* err);
int CheckSuccession(lk_backend* backend, const lk_owner* owner, const lk_resource* resource,
                    uint32_t mode, uint64_t since_token, uint64_t granted_token, lk_error* err);
void WatchEvents(lk_backend* backend, lk_event_fn fn, void* ctx);

template <Factory F>
int Open(const lk_setting* settings, size_t n, lk_backend** out, lk_error* err) {
  return OpenWith(F, settings, n, out, err);
}

template <Factory F>
constexpr lk_backend_descriptor Describe(const char* name, const char* description,
                                         lk_capabilities caps) {
  return lk_backend_descriptor{LK_BACKEND_ABI_VERSION,
                               sizeof(lk_backend_descriptor),
                               name,
                               description,
                               caps,
                               &Open<F>,
                               &Close,
                               &Acquire,
                               &Convert,
                               &Release,
                               &Inquire,
                               &Adopt,
                               &Health,
                               &PrepareExec,
                               &FinishAdoption,
                               &DescribeState,
                               &WatchEvents,
                               &Admin,
                               &CheckSuccession};
}

}  // namespace plugin_export
}  // namespace latchkey

#define LATCHKEY_EXPORT_BACKEND(NAME, DESCRIPTION, CAPABILITIES, FACTORY)                 \
  extern "C" __attribute__((visibility("default"))) const lk_backend_descriptor           \
      latchkey_backend =                                                                  \
          ::latchkey::plugin_export::Describe<FACTORY>(NAME, DESCRIPTION, CAPABILITIES)

#endif  // LATCHKEY_CORE_PLUGIN_EXPORT_H_
