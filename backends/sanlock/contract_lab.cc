// The sanlock contract suite's lab: one real sanlock daemon (host1) with the
// lockspace "contract" joined, for the whole test binary. Linked into
// //backends/sanlock:sanlock_contract_test (see contract.bzl's `lab`).
#include <stdlib.h>

#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "lab/sanlock_lab.h"

namespace {

class SanlockLabEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    latchkey::lab::SanlockLabOptions o;  // dir empty: a private one, removed at Stop
    o.hosts = 1;
    o.lockspace = "contract";
    o.join = true;
    o.resources = 0;
    auto lab = latchkey::lab::SanlockLab::Start(o);
    ASSERT_TRUE(lab.ok()) << lab.status();
    lab_ = std::move(*lab);
    setenv("LATCHKEY_CONTRACT_LAB", lab_->options().dir.c_str(), 1);
  }
  void TearDown() override {
    if (lab_) EXPECT_TRUE(lab_->Stop().ok());
  }

 private:
  std::unique_ptr<latchkey::lab::SanlockLab> lab_;
};

const auto* const kEnv = ::testing::AddGlobalTestEnvironment(new SanlockLabEnvironment);

}  // namespace
