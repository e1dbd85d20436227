// The plugin boundary, exercised with fixture plugins (tests/testdata): no
// lock backend is involved, so these pass with no backend built.
#include "core/plugin_loader.h"

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/cpp/runfiles/runfiles.h"

namespace latchkey {
namespace {

using ::bazel::tools::cpp::runfiles::Runfiles;
using ::testing::HasSubstr;

class PluginLoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    runfiles_.reset(Runfiles::CreateForTest(&error));
    ASSERT_NE(runfiles_, nullptr) << error;
    const std::string probe = runfiles_->Rlocation("latchkey/tests/testdata/latchkey-probe.so");
    dir_ = probe.substr(0, probe.rfind('/'));
  }

  std::unique_ptr<Backend> Probe(const std::string& conf = "") {
    absl::StatusOr<Config> c = Config::ParseText(conf, "probe.conf");
    EXPECT_TRUE(c.ok()) << c.status();
    absl::StatusOr<std::unique_ptr<Backend>> b = LoadBackend({dir_}, "probe", *c);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? *std::move(b) : nullptr;
  }

  std::unique_ptr<Runfiles> runfiles_;
  std::string dir_;
};

TEST_F(PluginLoaderTest, EveryFieldCrossesTheAbi) {
  std::unique_ptr<Backend> b = Probe("greeting = \"hi\"\n");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->name(), "probe");
  EXPECT_EQ(b->capabilities().max_name_len, 16u);
  EXPECT_TRUE(b->capabilities().modes & LockModeBit(LockMode::kExclusive));
  EXPECT_FALSE(b->capabilities().modes & LockModeBit(LockMode::kSharedWrite));

  Owner o{"01234567-89ab-cdef-0123-456789abcdef", "vm1", 12, 34, "hostA"};
  Resource r = *Resource::Lease("ls", "key", "/leases", 512);
  absl::StatusOr<Grant> g =
      b->Acquire(o, r, LockMode::kSharedRead, {true, absl::Milliseconds(1500), std::nullopt});
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->mode, LockMode::kSharedRead);
  EXPECT_EQ(g->fencing_token, 12034u);
  EXPECT_EQ(g->backend_token,
            "hi|01234567-89ab-cdef-0123-456789abcdef|hostA|ls/key|/leases|512|wait|1500|"
            "noexpect");

  absl::StatusOr<std::vector<HolderInfo>> all = b->Inquire(std::nullopt);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].resource.name, "all");
  EXPECT_EQ((*all)[0].fencing_token, 42u);
  absl::StatusOr<std::vector<HolderInfo>> one = b->Inquire(r);
  EXPECT_EQ((*one)[0].resource.Key(), "ls/key");

  LockRecord rec{o, r, LockMode::kExclusive, 9, "tok"};
  absl::StatusOr<Grant> adopted = b->Adopt(rec);
  ASSERT_TRUE(adopted.ok());
  EXPECT_EQ(adopted->fencing_token, 10u);
  EXPECT_EQ(adopted->backend_token, "tok|prepared=0");
  EXPECT_TRUE(b->Health().ok());
}

TEST_F(PluginLoaderTest, ExpectTokenCrossesTheAbi) {
  std::unique_ptr<Backend> b = Probe();
  ASSERT_NE(b, nullptr);
  Owner o{"01234567-89ab-cdef-0123-456789abcdef", "vm1", 1, 0, "h"};
  Resource r = *Resource::Lease("ls", "key");
  // Zero is a token like any other: set-to-zero is not unset.
  for (uint64_t t : {uint64_t{0}, uint64_t{1}, uint64_t{0xfedcba9876543210}, ~uint64_t{0}}) {
    AcquireOptions opts;
    opts.expect_token = t;
    absl::StatusOr<Grant> g = b->Acquire(o, r, LockMode::kExclusive, opts);
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_THAT(g->backend_token, ::testing::EndsWith(absl::StrCat("|nowait|0|expect=", t)));
    g = b->Convert(o, r, LockMode::kSharedRead, opts);
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_THAT(g->backend_token, ::testing::EndsWith(absl::StrCat("|expect=", t)));
  }
  AcquireOptions waiting{true, absl::InfiniteDuration(), 7};
  absl::StatusOr<Grant> g = b->Acquire(o, r, LockMode::kExclusive, waiting);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_THAT(g->backend_token, ::testing::EndsWith("|wait|forever|expect=7"));
  g = b->Acquire(o, r, LockMode::kExclusive, {});
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_THAT(g->backend_token, ::testing::EndsWith("|nowait|0|noexpect"));

  // A backend without fencing tokens never sees a hand-off check: the
  // boundary refuses it.
  std::unique_ptr<Backend> unfenced = Probe("fencing_tokens = 0\n");
  ASSERT_NE(unfenced, nullptr);
  AcquireOptions handoff;
  handoff.expect_token = 5;
  for (bool convert : {false, true}) {
    g = convert ? unfenced->Convert(o, r, LockMode::kExclusive, handoff)
                : unfenced->Acquire(o, r, LockMode::kExclusive, handoff);
    EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument) << g.status();
    EXPECT_THAT(g.status().message(), HasSubstr("no fencing tokens"));
    EXPECT_THAT(g.status().message(), HasSubstr("ls/key"));
  }
  EXPECT_TRUE(unfenced->Acquire(o, r, LockMode::kExclusive, {}).ok());
}

TEST_F(PluginLoaderTest, PrepareExecAndFinishAdoptionReachThePlugin) {
  std::unique_ptr<Backend> b = Probe();
  ASSERT_NE(b, nullptr);
  Owner o{"01234567-89ab-cdef-0123-456789abcdef", "vm1", 1, 0, "h"};
  LockRecord rec{o, *Resource::Lease("ls", "key"), LockMode::kExclusive, 9, "tok"};
  ASSERT_TRUE(b->PrepareExec().ok());
  ASSERT_TRUE(b->PrepareExec().ok());
  absl::StatusOr<Grant> adopted = b->Adopt(rec);
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  EXPECT_EQ(adopted->backend_token, "tok|prepared=2");
  b->FinishAdoption();
  adopted = b->Adopt(rec);
  EXPECT_EQ(adopted.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(adopted.status().message(), HasSubstr("after finish_adoption"));

  std::unique_ptr<Backend> refusing = Probe("fail_prepare_exec = 1\n");
  ASSERT_NE(refusing, nullptr);
  absl::Status s = refusing->PrepareExec();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("probe was told to refuse exec"));
}

TEST_F(PluginLoaderTest, ErrorsAndExceptionsBecomeStatuses) {
  std::unique_ptr<Backend> b = Probe();
  ASSERT_NE(b, nullptr);
  Resource r = *Resource::Lease("ls", "key");
  Owner busy{"01234567-89ab-cdef-0123-456789abcdef", "busy", 1, 0, "h"};
  absl::StatusOr<Grant> g = b->Acquire(busy, r, LockMode::kExclusive, {});
  EXPECT_TRUE(IsLockBusy(g.status()));
  EXPECT_THAT(g.status().message(), HasSubstr("lease ls/key is held by someone"));

  Owner thrower = busy;
  thrower.name = "throw";
  g = b->Acquire(thrower, r, LockMode::kExclusive, {});
  EXPECT_EQ(g.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(g.status().message(), HasSubstr("probe was told to throw"));

  EXPECT_EQ(b->Release(busy, r).code(), absl::StatusCode::kNotFound);
}

TEST_F(PluginLoaderTest, BoundaryValidatesInputAgainstBackendLimits) {
  std::unique_ptr<Backend> b = Probe();
  ASSERT_NE(b, nullptr);
  Owner o{"01234567-89ab-cdef-0123-456789abcdef", "vm1", 1, 0, "h"};
  // 17 bytes: fine for the core (64) but over this backend's 16.
  Resource longer = *Resource::Lease("ls", "k234567890123456x");
  absl::StatusOr<Grant> g = b->Acquire(o, longer, LockMode::kExclusive, {});
  EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(g.status().message(), HasSubstr("limit is 16"));

  Resource r = *Resource::Lease("ls", "key");
  g = b->Acquire(o, r, LockMode::kSharedWrite, {});
  EXPECT_THAT(g.status().message(), HasSubstr("does not grant mode shared-write"));

  Owner bad = o;
  bad.uuid = "nope";
  EXPECT_THAT(b->Acquire(bad, r, LockMode::kExclusive, {}).status().message(),
              HasSubstr("uuid"));
  EXPECT_THAT(b->Release(bad, r).message(), HasSubstr("uuid"));
}

TEST_F(PluginLoaderTest, SettingsKeepTheirFileAndLine) {
  absl::StatusOr<Config> c = Config::ParseText("greeting = 1\n", "my.conf");
  absl::StatusOr<std::unique_ptr<Backend>> b = LoadBackend({dir_}, "probe", *c);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(b.status().message(), HasSubstr("my.conf:1: 'greeting' must be a string"));

  c = Config::ParseText("\ncolour = \"red\"\n", "my.conf");
  b = LoadBackend({dir_}, "probe", *c);
  EXPECT_THAT(b.status().message(), HasSubstr("my.conf:2: unknown key 'colour'"));

  c = Config::ParseText("fail_open = 1\n", "my.conf");
  b = LoadBackend({dir_}, "probe", *c);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(b.status().message(), HasSubstr("backend probe: my.conf:1: told to fail"));
}

TEST_F(PluginLoaderTest, UnknownBackendNamesWhereItLooked) {
  absl::StatusOr<std::unique_ptr<Backend>> b = LoadBackend({dir_}, "nosuch", Config());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(b.status().message(), HasSubstr("unknown backend 'nosuch'"));
  EXPECT_THAT(b.status().message(), HasSubstr(dir_ + "/latchkey-nosuch.so"));
  EXPECT_THAT(b.status().message(), HasSubstr("available: probe"));

  b = LoadBackend({dir_}, "../probe", Config());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(PluginLoaderTest, WrongAbiAndMissingSymbolNameTheFile) {
  absl::StatusOr<std::unique_ptr<Backend>> b = LoadBackend({dir_}, "badabi", Config());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(b.status().message(), HasSubstr(dir_ + "/latchkey-badabi.so"));
  EXPECT_THAT(b.status().message(), HasSubstr("ABI version 99; this latchkey speaks version 7"));

  b = LoadBackend({dir_}, "nosymbol", Config());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(b.status().message(), HasSubstr("latchkey-nosymbol.so does not export"));

  b = LoadBackend({dir_}, "noexec", Config());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(b.status().message(),
              HasSubstr("latchkey-noexec.so leaves entry point 'prepare_exec' of its "
                        "descriptor NULL"));

  std::vector<std::string> errors;
  std::vector<PluginInfo> found = ListPlugins({dir_}, &errors);
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].name, "probe");
  EXPECT_EQ(errors.size(), 3u);
}

TEST_F(PluginLoaderTest, NotASharedObjectNamesTheFile) {
  const std::string dir = std::string(getenv("TEST_TMPDIR")) + "/junk";
  mkdir(dir.c_str(), 0700);
  FILE* f = fopen((dir + "/latchkey-junk.so").c_str(), "w");
  fputs("garbage", f);
  fclose(f);
  absl::StatusOr<std::unique_ptr<Backend>> b = LoadBackend({dir}, "junk", Config());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(b.status().message(), HasSubstr("cannot load backend plugin " + dir));
}

}  // namespace
}  // namespace latchkey
