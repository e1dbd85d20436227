// latchkey.so through libvirt's plugin interface, without libvirt: the test
// loads it with dlopen as libvirtd does, and provides virReportErrorHelper
// itself (exported with -rdynamic) to read what libvirt would show.
#include <dlfcn.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "agent/testing/latchd_process.h"
#include "libvirt-adapter/adapter.h"
#include "libvirt-adapter/lock_driver_abi.h"

namespace {
std::string g_last_error;
int g_last_code = 0;
}  // namespace

extern "C" __attribute__((visibility("default"))) void virReportErrorHelper(
    int domain, int code, const char*, const char*, size_t, const char* fmt, ...) {
  char buf[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  g_last_error = buf;
  g_last_code = domain * 1000 + code;
}

namespace latchkey {
namespace {

using ::testing::HasSubstr;

class PluginTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string so = testing::Runfile("libvirt-adapter/latchkey.so");
    handle_ = dlopen(so.c_str(), RTLD_NOW | RTLD_LOCAL);
    ASSERT_NE(handle_, nullptr) << dlerror();
    driver_ = static_cast<LkDriver*>(dlsym(handle_, "virLockDriverImpl"));
    ASSERT_NE(driver_, nullptr);
    g_last_error.clear();
  }
  void TearDown() override {
    if (driver_) driver_->deinit();
    if (handle_) dlclose(handle_);
  }
  std::string WriteConfig(const std::string& text) {
    const std::string path = absl::StrCat(getenv("TEST_TMPDIR"), "/qemu-latchkey.conf");
    std::ofstream(path) << text;
    return path;
  }
  void* handle_ = nullptr;
  LkDriver* driver_ = nullptr;
};

TEST_F(PluginTest, DeclaresLibvirtsVersionAndStateStrings) {
  EXPECT_EQ(driver_->version, 1000000u);
  EXPECT_EQ(driver_->flags, kLkDriverUsesState);
  // Only the driver symbol is exported.
  EXPECT_EQ(dlsym(handle_, "_ZN8latchkey7libvirt7Adapter7AcquireERKNS0_6DomainERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEEi"), nullptr);
}

TEST_F(PluginTest, BadConfigIsNamedWithFileAndLine) {
  const std::string path = WriteConfig("socket = \"/tmp/x.sock\"\nreadonly_disks = \"maybe\"\n");
  EXPECT_EQ(driver_->init(1000000, path.c_str(), 0), -1);
  EXPECT_THAT(g_last_error, HasSubstr(path + ":2"));
  EXPECT_THAT(g_last_error, HasSubstr("readonly_disks"));

  WriteConfig("sockett = \"/tmp/x.sock\"\n");
  EXPECT_EQ(driver_->init(1000000, path.c_str(), 0), -1);
  EXPECT_THAT(g_last_error, HasSubstr("unknown key 'sockett'"));

  WriteConfig("auto_disk_leases = \"yes\"\n");
  EXPECT_EQ(driver_->init(1000000, path.c_str(), 0), -1);
  EXPECT_THAT(g_last_error, HasSubstr("auto_disk_leases"));

  EXPECT_EQ(driver_->init(999, path.c_str(), 0), -1);
  EXPECT_THAT(g_last_error, HasSubstr("version 999"));
}

TEST_F(PluginTest, MissingConfigGivesDefaults) {
  absl::StatusOr<libvirt::AdapterConfig> c = libvirt::AdapterConfig::Load("/nonexistent/qemu-latchkey.conf");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->socket, "/run/latchkey/latchd.sock");
  EXPECT_TRUE(c->auto_disk_leases);
  EXPECT_FALSE(c->require_lease_for_disks);
  EXPECT_EQ(c->readonly_disks, libvirt::ReadonlyDisks::kUnlocked);
  absl::StatusOr<libvirt::AdapterConfig> d = libvirt::AdapterConfig::Parse("auto_disk_leases = 0\n", "t");
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(d->require_lease_for_disks) << "follows auto_disk_leases, as in libvirt's sanlock driver";
}

TEST_F(PluginTest, DomainWithoutUuidIsRefused) {
  ASSERT_EQ(driver_->init(1000000, "/nonexistent/qemu-latchkey.conf", 0), 0);
  LkParam params[1] = {};
  params[0].type = kLkParamString;
  params[0].key = "name";
  params[0].value.str = const_cast<char*>("vm1");
  LkManager m = {driver_, nullptr};
  EXPECT_EQ(driver_->new_manager(&m, kLkObjectDomain, 1, params, 0), -1);
  EXPECT_THAT(g_last_error, HasSubstr("without uuid"));
}

TEST_F(PluginTest, LatchdNotRunningIsSaid) {
  const std::string path = WriteConfig("socket = \"/tmp/lk-no-such-latchd.sock\"\n");
  ASSERT_EQ(driver_->init(1000000, path.c_str(), 0), 0);
  LkParam params[3] = {};
  params[0].type = kLkParamUuid;
  params[0].key = "uuid";
  memcpy(params[0].value.uuid, "0123456789abcdef", 16);
  params[1].type = kLkParamString;
  params[1].key = "name";
  params[1].value.str = const_cast<char*>("vm1");
  params[2].type = kLkParamUInt;
  params[2].key = "pid";
  params[2].value.ui = getpid();
  LkManager m = {driver_, nullptr};
  ASSERT_EQ(driver_->new_manager(&m, kLkObjectDomain, 3, params, 0), 0);
  ASSERT_EQ(driver_->add_resource(&m, kLkResourceDisk, "/tmp/disk.img", 0, nullptr, 0), 0);
  EXPECT_EQ(driver_->acquire(&m, nullptr, kLkAcquireRegisterOnly, 0, nullptr), -1);
  EXPECT_THAT(g_last_error, HasSubstr("latchkey: latchd is not running at /tmp/lk-no-such-latchd.sock"));
  EXPECT_THAT(g_last_error, HasSubstr(path));
  EXPECT_EQ(g_last_code, kLkErrorDomainLocking * 1000 + kLkErrorInternal);
  char* state = nullptr;
  EXPECT_EQ(driver_->release(&m, &state, 0), -1);
  EXPECT_EQ(state, nullptr);
  // <on_lockfailure>restart</on_lockfailure> cannot be honoured: refused.
  EXPECT_EQ(driver_->acquire(&m, nullptr, 0, kLkFailureRestart, nullptr), -1);
  EXPECT_THAT(g_last_error, HasSubstr("<on_lockfailure>restart</on_lockfailure> is not supported"));
  driver_->free_manager(&m);
  EXPECT_EQ(m.private_data, nullptr);
}

}  // namespace
}  // namespace latchkey
