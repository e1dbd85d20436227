// sanlock's return codes in words: what each means and what to do about it.
// Every code in sanlock_rv.h and every -errno the daemon returns to the
// calls the backend makes has a text here (sanlock_errors_test.cc checks).
#ifndef LATCHKEY_BACKENDS_SANLOCK_SANLOCK_ERRORS_H_
#define LATCHKEY_BACKENDS_SANLOCK_SANLOCK_ERRORS_H_

#include <string>
#include <vector>

namespace latchkey {
namespace sanlockbe {

// "what it means (NAME)", with advice where there is something to do.
std::string RvText(int rv);

// The codes of sanlock_rv.h, for tests.
std::vector<int> AllSanlockCodes();

}  // namespace sanlockbe
}  // namespace latchkey

#endif  // LATCHKEY_BACKENDS_SANLOCK_SANLOCK_ERRORS_H_
