// What the contract suite runs against, from its command line (set by
// backend_contract_test in contract.bzl).
#ifndef LATCHKEY_TESTS_CONTRACT_CONTRACT_ENV_H_
#define LATCHKEY_TESTS_CONTRACT_CONTRACT_ENV_H_

#include <string>

namespace latchkey {
namespace contract {

struct Environment {
  std::string backend;        // --backend
  std::string plugin;         // --plugin: the plugin file
  std::string settings;       // --settings: conf text, @TMP@ per test
  std::string holder_binary;  // --holder: tests/contract/lock_holder
};

const Environment& Env();

}  // namespace contract
}  // namespace latchkey

#endif  // LATCHKEY_TESTS_CONTRACT_CONTRACT_ENV_H_
