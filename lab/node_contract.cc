#include "lab/node_contract.h"

#include <stdlib.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/time.h"

namespace latchkey {
namespace lab {

absl::Status InstallContractSuite(ClusterLab* lab, const std::string& plugin_runfile) {
  if (absl::Status s = lab->Install({Runfile("tests/contract/contract_suite_main"),
                                     Runfile("tests/contract/lock_holder"),
                                     Runfile(plugin_runfile)});
      !s.ok()) {
    return s;
  }
  const std::string fixtures = lab->shared() + "/srcdir/latchkey/tests/testdata";
  const std::string cmd = absl::StrCat("mkdir -p '", fixtures, "' && cp '",
                                       Runfile("tests/testdata/latchkey-badabi.so"), "' '",
                                       fixtures, "/'");
  if (system(cmd.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot copy the contract fixtures: ", cmd));
  }
  return absl::OkStatus();
}

absl::StatusOr<ClusterLab::Result> RunContractSuite(ClusterLab* lab, int node,
                                                    const std::string& backend,
                                                    const std::string& settings,
                                                    const std::string& tmp_parent) {
  // The settings go in single quotes: close, escape, reopen for any quote.
  const std::string quoted = absl::StrReplaceAll(settings, {{"'", "'\\''"}});
  return lab->Run(
      node,
      {"/bin/sh", "-c",
       absl::StrCat("t=$(mktemp -d ", tmp_parent, "/contract.XXXXXX) && cd $t && "
                    "TEST_SRCDIR=/shared/srcdir TEST_TMPDIR=$t /shared/bin/contract_suite_main "
                    "--backend=", backend, " --plugin=/shared/bin/latchkey-", backend, ".so '--settings=",
                    quoted, "' --holder=/shared/bin/lock_holder; rc=$?; cd /; rm -rf $t; exit $rc")},
      absl::Minutes(10));
}

}  // namespace lab
}  // namespace latchkey
