// Fault points: named places where a test can make the process die as if
// killed (SIGKILL), to check that every crash leaves consistent state.
//
// Armed only through the environment, read once:
//   LATCHKEY_FAULT=NAME:N   the N-th time (1-based) point NAME is reached,
//                           the process kills itself with SIGKILL.
// Unarmed, a point costs one predictable branch.
//
// Example:
//   FaultPoint("journal.after-commit");
//
// Thread safety: thread-safe.
#ifndef LATCHKEY_CORE_FAULT_H_
#define LATCHKEY_CORE_FAULT_H_

namespace latchkey {

// Kills the process when armed for `name` and this is the chosen hit.
void FaultPoint(const char* name);

// True when LATCHKEY_FAULT names a point (for logging at start).
bool FaultArmed();

}  // namespace latchkey

#endif  // LATCHKEY_CORE_FAULT_H_
