/* The C ABI between latchkey and a backend plugin.
 *
 * A backend plugin is a shared object named latchkey-NAME.so that exports one
 * data symbol, `latchkey_backend` (LK_BACKEND_SYMBOL), of type
 * lk_backend_descriptor. The loader reads `abi_version` first and touches
 * nothing else unless it equals LK_BACKEND_ABI_VERSION, then checks
 * `struct_size`, then every function pointer.
 *
 * Rules on both sides:
 *  - Every string is NUL-terminated UTF-8 owned by the caller and valid only
 *    during the call; a plugin copies what it keeps.
 *  - Functions return 0 on success. On failure they return non-zero and fill
 *    *err: `code` is an absl::StatusCode number, `message` a NUL-terminated
 *    text naming the resource and, where known, the holder.
 *  - No C++ exception ever crosses this boundary.
 *  - A backend handle may be used from many threads at once.
 *
 * Version history:
 *   1  first.
 *   2  expect_token in lk_acquire_options (LK_ACQUIRE_EXPECT_TOKEN), the
 *      prepare_exec and finish_adoption entry points.
 *   3  describe_state (a JSON object for status output) and watch_events
 *      (the backend reports lost locks: lk_event).
 *   4  cancel_fd in lk_acquire_options (LK_ACQUIRE_CANCEL_FD): a waiting
 *      acquire or convert ends when its caller gives up.
 *   5  admin: administrative commands on the backend's own objects (the
 *      sanlock backend's lease areas), for `latchctl leases`.
 *   6  check_succession and LK_CAP_QUEUES: a waiting request queued before
 *      a holder lets go is granted before anyone asking later, and a grant
 *      can be checked to be the first conflicting one since a token (how
 *      latchd closes libvirt's migration window).
 *   7  LK_CAP_NO_EXCLUSION: a backend that grants every request (the nop
 *      backend, the floor of a benchmark). A loader of version 6 would
 *      take it for a lock, so the version changes with the flag.
 *
 * Plugin authors normally do not write against this header directly: they
 * implement latchkey::Backend and export it with LATCHKEY_EXPORT_BACKEND
 * (core/plugin_export.h).
 */
#ifndef LATCHKEY_CORE_PLUGIN_ABI_H_
#define LATCHKEY_CORE_PLUGIN_ABI_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LK_BACKEND_ABI_VERSION 7u
#define LK_BACKEND_SYMBOL "latchkey_backend"

/* Lock modes (same numbers as latchkey::LockMode). */
#define LK_MODE_SHARED_READ 1u
#define LK_MODE_SHARED_WRITE 2u
#define LK_MODE_EXCLUSIVE 3u

/* Resource kinds (same numbers as latchkey::ResourceKind). */
#define LK_RESOURCE_DISK 1u
#define LK_RESOURCE_LEASE 2u

/* lk_capabilities.flags */
#define LK_CAP_SURVIVES_HOLDER_DEATH 0x1u
#define LK_CAP_ORPHAN_ADOPTION 0x2u
#define LK_CAP_HOLDER_IDENTITY 0x4u
#define LK_CAP_FENCING_TOKENS 0x8u
/* Waiting requests are queued in order: one queued before the holder lets
 * go is granted before any request made later (the DLM's queues). */
#define LK_CAP_QUEUES 0x10u
/* The backend grants every request and excludes nobody: no conflict is
 * ever refused or waited for. Only for measuring the framework's own cost;
 * latchd loads such a backend only when configured to (benchmark_backends). */
#define LK_CAP_NO_EXCLUSION 0x20u

/* lk_acquire_options.flags */
#define LK_ACQUIRE_WAIT 0x1u
#define LK_ACQUIRE_EXPECT_TOKEN 0x2u /* expect_token is set (hand-off check) */
#define LK_ACQUIRE_CANCEL_FD 0x4u    /* cancel_fd is set (since version 4) */

#define LK_ERROR_MESSAGE_MAX 1024
#define LK_BACKEND_TOKEN_MAX 256

typedef struct lk_error {
  int code;
  char message[LK_ERROR_MESSAGE_MAX];
} lk_error;

typedef struct lk_owner {
  const char *uuid;
  const char *name;
  const char *host;
  int64_t pid;
  uint64_t start_time;
} lk_owner;

typedef struct lk_resource {
  uint32_t kind;
  const char *lockspace;
  const char *name;
  const char *path; /* "" when none */
  uint64_t offset;
} lk_resource;

typedef struct lk_acquire_options {
  uint32_t flags;
  /* With LK_ACQUIRE_CANCEL_FD: while waiting, the plugin polls this
   * descriptor with no events requested; a hang-up or error on it means the
   * caller gave up, and the call returns code 1 (Cancelled) having changed
   * nothing (latchkey::AcquireOptions::cancel_fd). */
  int32_t cancel_fd;
  int64_t timeout_ms; /* with LK_ACQUIRE_WAIT; < 0 waits forever */
  /* With LK_ACQUIRE_EXPECT_TOKEN, the hand-off check: refuse (Aborted) if,
   * since the grant that carried this fencing token, anyone was granted the
   * resource in a mode conflicting with the one asked for
   * (latchkey::AcquireOptions::expect_token). */
  uint64_t expect_token;
} lk_acquire_options;

typedef struct lk_grant {
  uint32_t mode;
  uint64_t fencing_token;
  char backend_token[LK_BACKEND_TOKEN_MAX];
} lk_grant;

typedef struct lk_holder {
  lk_owner owner;
  lk_resource resource;
  uint32_t mode;
  uint64_t fencing_token;
} lk_holder;

typedef struct lk_record {
  lk_owner owner;
  lk_resource resource;
  uint32_t mode;
  uint64_t fencing_token;
  const char *backend_token;
} lk_record;

/* One configuration setting: `value` is the value's source text in libvirt
 * conf syntax ("string", 12, [ "a", "b" ]); file and line locate it. */
typedef struct lk_setting {
  const char *key;
  const char *value;
  const char *file;
  int line;
} lk_setting;

typedef struct lk_capabilities {
  uint32_t modes; /* bit (1 << LK_MODE_x) per granted mode */
  uint32_t flags; /* LK_CAP_* */
  uint32_t max_name_len;
  const char *folded_modes; /* "" when every granted mode is distinct */
} lk_capabilities;

typedef struct lk_backend lk_backend; /* opaque, owned by the plugin */

typedef void (*lk_holder_fn)(void *ctx, const lk_holder *holder);
typedef void (*lk_text_fn)(void *ctx, const char *text);

/* lk_event.kind */
#define LK_EVENT_LOCK_LOST 1u /* the owner's lock on the resource is gone */

typedef struct lk_event {
  uint32_t kind;
  lk_owner owner; /* fields the backend cannot know are "" / 0 */
  lk_resource resource;
  const char *reason; /* for logs: why the lock is gone */
} lk_event;

typedef void (*lk_event_fn)(void *ctx, const lk_event *event);

typedef struct lk_backend_descriptor {
  uint32_t abi_version; /* LK_BACKEND_ABI_VERSION */
  uint32_t struct_size; /* sizeof(lk_backend_descriptor) */
  const char *name;
  const char *description;
  lk_capabilities capabilities;

  int (*open)(const lk_setting *settings, size_t n_settings, lk_backend **out,
              lk_error *err);
  void (*close)(lk_backend *backend);
  int (*acquire)(lk_backend *backend, const lk_owner *owner,
                 const lk_resource *resource, uint32_t mode,
                 const lk_acquire_options *options, lk_grant *out,
                 lk_error *err);
  int (*convert)(lk_backend *backend, const lk_owner *owner,
                 const lk_resource *resource, uint32_t new_mode,
                 const lk_acquire_options *options, lk_grant *out,
                 lk_error *err);
  int (*release)(lk_backend *backend, const lk_owner *owner,
                 const lk_resource *resource, lk_error *err);
  /* resource == NULL: every resource the backend can see. */
  int (*inquire)(lk_backend *backend, const lk_resource *resource,
                 lk_holder_fn emit, void *ctx, lk_error *err);
  int (*adopt)(lk_backend *backend, const lk_record *record, lk_grant *out,
               lk_error *err);
  int (*health)(lk_backend *backend, lk_error *err);
  /* Since version 2. Before an execve() of the calling process: keep every
   * held lock across it (latchkey::Backend::PrepareExec). */
  int (*prepare_exec)(lk_backend *backend, lk_error *err);
  /* Since version 2. After the last adopt of a start: release every
   * inherited lock no adopt claimed (latchkey::Backend::FinishAdoption). */
  void (*finish_adoption)(lk_backend *backend);
  /* Since version 3. Emits one JSON object describing the backend's own
   * state for status output (lockspaces, hosts); "{}" when it has none. */
  int (*describe_state)(lk_backend *backend, lk_text_fn emit, void *ctx,
                        lk_error *err);
  /* Since version 3. From now on the backend calls fn(ctx, event), from a
   * thread of its own, whenever it learns that a held lock is lost (a lease
   * expired, a lockspace failed); the lock is already gone from its tables.
   * fn NULL stops the reports; once that call returns none is running. */
  void (*watch_events)(lk_backend *backend, lk_event_fn fn, void *ctx);
  /* Since version 5. An administrative command: `request` is a JSON object
   * text {"command": NAME, ...}; on success emit() gets one JSON value, the
   * result. A backend without such commands fails with code 12
   * (Unimplemented) naming itself (latchkey::Backend::Admin). */
  int (*admin)(lk_backend *backend, const char *request, lk_text_fn emit,
               void *ctx, lk_error *err);
  /* Since version 6. Whether `granted_token`, a grant in `mode` the owner
   * holds on `resource`, is the first grant conflicting with `mode` since
   * the grant that carried `since_token` (a hand-off checked after the
   * grant: the request was queued before the state was known). 0, or code
   * 10 (Aborted) naming what moved; 12 (Unimplemented) when the backend
   * cannot tell (latchkey::Backend::CheckSuccession). */
  int (*check_succession)(lk_backend *backend, const lk_owner *owner,
                          const lk_resource *resource, uint32_t mode,
                          uint64_t since_token, uint64_t granted_token,
                          lk_error *err);
} lk_backend_descriptor;

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* LATCHKEY_CORE_PLUGIN_ABI_H_ */
