/* A plugin from a future latchkey, built for ABI version 4 (this one speaks
 * 3): only abi_version is meaningful. */
#include "core/plugin_abi.h"

__attribute__((visibility("default"))) const lk_backend_descriptor latchkey_backend = {
    .abi_version = 4,
    .struct_size = sizeof(lk_backend_descriptor),
    .name = "badabi",
};
