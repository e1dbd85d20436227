/* A plugin from a future latchkey, built for ABI version 99 (this one speaks
 * LK_BACKEND_ABI_VERSION): only abi_version is meaningful. */
#include "core/plugin_abi.h"

__attribute__((visibility("default"))) const lk_backend_descriptor latchkey_backend = {
    .abi_version = 99,
    .struct_size = sizeof(lk_backend_descriptor),
    .name = "badabi",
};
