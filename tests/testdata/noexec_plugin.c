/* A plugin built against this ABI version that leaves the entry points new in
 * versions 2 and 3 (prepare_exec, finish_adoption, describe_state,
 * watch_events) NULL: the loader must refuse it
 * before anything of it runs. */
#include "core/plugin_abi.h"

static int Open(const lk_setting *settings, size_t n, lk_backend **out, lk_error *err) {
  (void)settings;
  (void)n;
  (void)out;
  err->code = 13; /* Internal: never reached */
  err->message[0] = '\0';
  return -1;
}
static void Close(lk_backend *b) { (void)b; }
static int Acquire(lk_backend *b, const lk_owner *o, const lk_resource *r, uint32_t m,
                   const lk_acquire_options *opts, lk_grant *out, lk_error *err) {
  (void)b, (void)o, (void)r, (void)m, (void)opts, (void)out, (void)err;
  return -1;
}
static int Release(lk_backend *b, const lk_owner *o, const lk_resource *r, lk_error *err) {
  (void)b, (void)o, (void)r, (void)err;
  return -1;
}
static int Inquire(lk_backend *b, const lk_resource *r, lk_holder_fn emit, void *ctx,
                   lk_error *err) {
  (void)b, (void)r, (void)emit, (void)ctx, (void)err;
  return -1;
}
static int Adopt(lk_backend *b, const lk_record *rec, lk_grant *out, lk_error *err) {
  (void)b, (void)rec, (void)out, (void)err;
  return -1;
}
static int Health(lk_backend *b, lk_error *err) {
  (void)b, (void)err;
  return -1;
}

__attribute__((visibility("default"))) const lk_backend_descriptor latchkey_backend = {
    .abi_version = LK_BACKEND_ABI_VERSION,
    .struct_size = sizeof(lk_backend_descriptor),
    .name = "noexec",
    .description = "forgot the version 2 entry points",
    .open = Open,
    .close = Close,
    .acquire = Acquire,
    .convert = Acquire,
    .release = Release,
    .inquire = Inquire,
    .adopt = Adopt,
    .health = Health,
};
