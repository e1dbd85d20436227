// latchkey.so through libvirt's plugin interface, without libvirt: the test
// loads it with dlopen as libvirtd does, and provides virReportErrorHelper
// itself (exported with -rdynamic) to read what libvirt would show.
#include <dlfcn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

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
using ::testing::Not;

constexpr int kBusy = kLkErrorDomainLocking * 1000 + kLkErrorResourceBusy;
constexpr int kConfSyntax = kLkErrorDomainLocking * 1000 + kLkErrorConfig;

// Two domain uuids as libvirt passes them (16 bytes) and as text.
constexpr char kUuidA[] = "0123456789abcdef";
constexpr char kUuidAText[] = "30313233-3435-3637-3839-616263646566";
constexpr char kUuidB[] = "fedcba9876543210";

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
  // init() with `path`; the error it reported ("" when none).
  int Init(const std::string& path) {
    g_last_error.clear();
    g_last_code = 0;
    return driver_->init(1000000, path.c_str(), 0);
  }
  // A manager for domain `name` (uuid: 16 bytes, QEMU's pid `pid`) with `disks`.
  void NewDomain(LkManager* m, const char* name, const char* uuid, pid_t pid,
                 const std::vector<std::string>& disks) {
    LkParam params[3] = {};
    params[0].type = kLkParamUuid;
    params[0].key = "uuid";
    memcpy(params[0].value.uuid, uuid, 16);
    params[1].type = kLkParamString;
    params[1].key = "name";
    params[1].value.str = const_cast<char*>(name);
    params[2].type = kLkParamUInt;
    params[2].key = "pid";
    params[2].value.ui = pid;
    *m = {driver_, nullptr};
    ASSERT_EQ(driver_->new_manager(m, kLkObjectDomain, 3, params, 0), 0) << g_last_error;
    for (const std::string& d : disks) {
      ASSERT_EQ(driver_->add_resource(m, kLkResourceDisk, d.c_str(), 0, nullptr, 0), 0);
    }
  }
  // The register-only acquire of the forked QEMU child; the error it reported.
  int EarlyCheck(LkManager* m) {
    g_last_error.clear();
    g_last_code = 0;
    return driver_->acquire(m, nullptr, kLkAcquireRegisterOnly, 0, nullptr);
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

// A config that exists but cannot be read as a file is refused at load,
// naming the file and why; before, it was read as empty (the defaults).
TEST_F(PluginTest, ConfigThatIsNotAReadableFileIsRefusedAtLoad) {
  const std::string tmp = getenv("TEST_TMPDIR");
  const int kSystem = kLkErrorDomainLocking * 1000 + kLkErrorSystem;
  const std::string dir = tmp + "/conf-dir";
  ASSERT_EQ(mkdir(dir.c_str(), 0755), 0);
  EXPECT_EQ(Init(dir), -1);
  EXPECT_THAT(g_last_error, HasSubstr(dir + " is a directory, not a regular file"));
  EXPECT_EQ(g_last_code, kSystem);

  const std::string fifo = tmp + "/conf-fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0644), 0);
  EXPECT_EQ(Init(fifo), -1);  // and does not block on the FIFO
  EXPECT_THAT(g_last_error, HasSubstr(fifo + " is a FIFO, not a regular file"));

  const std::string link = tmp + "/conf-link";
  ASSERT_EQ(symlink("/nonexistent/qemu-latchkey.conf", link.c_str()), 0);
  EXPECT_EQ(Init(link), -1);
  EXPECT_THAT(g_last_error, HasSubstr(link + " is a symbolic link to a missing file"));

  const std::string under_file = WriteConfig("") + "/x.conf";  // ENOTDIR
  EXPECT_EQ(Init(under_file), -1);
  EXPECT_THAT(g_last_error, HasSubstr(under_file + ": cannot read it"));

  if (geteuid() != 0) {  // root reads any file
    const std::string path = WriteConfig("socket = \"/tmp/x.sock\"\n");
    ASSERT_EQ(chmod(path.c_str(), 0), 0);
    EXPECT_EQ(Init(path), -1);
    EXPECT_THAT(g_last_error, HasSubstr(path + ": cannot open it: Permission denied"));
    chmod(path.c_str(), 0644);
  }
}

TEST_F(PluginTest, MissingConfigGivesDefaultsAndSaysSo) {
  ::testing::internal::CaptureStderr();
  const int rc = Init("/nonexistent/qemu-latchkey.conf");
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(rc, 0) << g_last_error;
  EXPECT_THAT(err, HasSubstr("latchkey: /nonexistent/qemu-latchkey.conf does not exist; using the "
                             "defaults (latchd at /run/latchkey/latchd.sock)"));

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

// Every string setting is checked at load: UTF-8 (the bad bytes shown
// escaped, never raw), names by the project's rules, the socket as a path.
// Before, a non-UTF-8 backend failed only at start, in a JSON exception.
TEST_F(PluginTest, StringSettingsAreCheckedAtLoad) {
  for (const char* key : {"backend", "socket", "lockspace", "readonly_disks", "lock_failure_policy"}) {
    SCOPED_TRACE(key);
    const std::string path = WriteConfig(absl::StrCat("# bad bytes\n", key, " = \"ab\xff\xfe\"\n"));
    EXPECT_EQ(Init(path), -1);
    EXPECT_THAT(g_last_error, HasSubstr(absl::StrCat(path, ":2: '", key, "' is not valid UTF-8: \"ab\\xff\\xfe\"")));
    EXPECT_EQ(g_last_error.find('\xff'), std::string::npos) << "raw bytes in: " << g_last_error;
    EXPECT_EQ(g_last_code, kConfSyntax);
  }
  const std::string path = WriteConfig("backend = \"../posixfd\"\n");
  EXPECT_EQ(Init(path), -1);
  EXPECT_THAT(g_last_error, HasSubstr(path + ":1: backend '../posixfd' must not start with '.' or '-'"));
  WriteConfig("backend = \"pos ixfd\"\n");
  EXPECT_EQ(Init(path), -1);
  EXPECT_THAT(g_last_error, HasSubstr(path + ":1: backend 'pos ixfd' has a character outside [A-Za-z0-9_.-]"));
  WriteConfig("lockspace = \"a/b\"\n");
  EXPECT_EQ(Init(path), -1);
  EXPECT_THAT(g_last_error, HasSubstr(path + ":1: lockspace 'a/b' has a character outside"));
  WriteConfig("\nsocket = \"latchd.sock\"\n");
  EXPECT_EQ(Init(path), -1);
  EXPECT_THAT(g_last_error, HasSubstr(path + ":2: 'socket' must be an absolute path"));
  WriteConfig(absl::StrCat("socket = \"/", std::string(120, 's'), "\"\n"));
  EXPECT_EQ(Init(path), -1);
  EXPECT_THAT(g_last_error, HasSubstr(path + ":1: 'socket' is 121 bytes long; a Unix socket path holds at most 107"));
  WriteConfig("socket = \"/tmp/x.sock\"\nbackend = \"posixfd\"\nlockspace = \"vms\"\n");
  EXPECT_EQ(Init(path), 0) << g_last_error;
}

// Text from libvirt that JSON cannot carry is refused before any request,
// as an invalid argument, not as a config syntax error.
TEST_F(PluginTest, NonUtf8DomainTextIsAnInvalidArgument) {
  ASSERT_EQ(Init("/nonexistent/qemu-latchkey.conf"), 0);
  LkManager m;
  NewDomain(&m, "vm1", kUuidA, getpid(), {"/var/lib/images/a\xff.img"});
  EXPECT_EQ(EarlyCheck(&m), -1);
  EXPECT_THAT(g_last_error, HasSubstr("domain 'vm1': disk path '/var/lib/images/a\\xff.img' is not valid UTF-8"));
  EXPECT_EQ(g_last_code, kLkErrorDomainLocking * 1000 + kLkErrorInvalidArg);
  EXPECT_EQ(driver_->acquire(&m, nullptr, 0, 0, nullptr), -1);
  EXPECT_EQ(g_last_code, kLkErrorDomainLocking * 1000 + kLkErrorInvalidArg);
  driver_->free_manager(&m);
}

// A latchd that accepts but never answers is latchd failing ("internal
// error"), not a busy resource.
TEST_F(PluginTest, LatchdThatDoesNotAnswerIsAnInternalError) {
  const std::string sock = testing::TempDir("mute") + "/l.sock";
  const std::string short_sock = absl::StrCat("/tmp/lk-mute-", getpid(), ".sock");
  const std::string& path = sock.size() < 100 ? sock : short_sock;
  const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  unlink(path.c_str());
  memcpy(addr.sun_path, path.c_str(), path.size());
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << strerror(errno);
  ASSERT_EQ(listen(fd, 8), 0);  // never accepted: the backlog holds the client
  ASSERT_EQ(Init(WriteConfig(absl::StrCat("socket = \"", path, "\"\ntimeout_ms = 200\n"))), 0);
  LkManager m;
  NewDomain(&m, "vm1", kUuidA, getpid(), {"/tmp/disk.img"});
  EXPECT_EQ(EarlyCheck(&m), -1);
  EXPECT_THAT(g_last_error, HasSubstr("latchd failed while serving the request"));
  EXPECT_THAT(g_last_error, HasSubstr("did not answer in time"));
  EXPECT_EQ(g_last_code, kLkErrorDomainLocking * 1000 + kLkErrorInternal);
  driver_->free_manager(&m);
  close(fd);
  unlink(path.c_str());
}

// Whether latchd loads the configured backend is known only to latchd: it
// is asked when a domain starts, and the answer says what it loads.
TEST_F(PluginTest, BackendLatchdDoesNotLoadIsNamedAtStart) {
  testing::LatchdProcess d(testing::TempDir("latchd"));
  ASSERT_TRUE(d.Start().ok());
  const std::string path = WriteConfig(absl::StrCat("socket = \"", d.socket(), "\"\nbackend = \"nope\"\n"));
  ASSERT_EQ(Init(path), 0) << "the name is well-formed: " << g_last_error;
  testing::Vm qemu("vm1");
  LkManager m;
  NewDomain(&m, "vm1", kUuidA, qemu.pid, {"/tmp/disk.img"});
  EXPECT_EQ(EarlyCheck(&m), -1);
  EXPECT_THAT(g_last_error, HasSubstr(absl::StrCat("latchd at ", d.socket(),
                                                   " does not load backend 'nope' (it loads: posixfd); "
                                                   "set 'backend' in ", path, ":2 to one of them")));
  EXPECT_EQ(g_last_code, kLkErrorDomainLocking * 1000 + kLkErrorConfigUnsupported);
  EXPECT_EQ(driver_->acquire(&m, nullptr, 0, 0, nullptr), -1);
  EXPECT_EQ(g_last_code, kLkErrorDomainLocking * 1000 + kLkErrorConfigUnsupported);
  driver_->free_manager(&m);
  driver_->deinit();
  ASSERT_EQ(Init(WriteConfig(absl::StrCat("socket = \"", d.socket(), "\"\nbackend = \"posixfd\"\n"))), 0);
  NewDomain(&m, "vm1", kUuidA, qemu.pid, {"/tmp/disk.img"});
  EXPECT_EQ(EarlyCheck(&m), 0) << g_last_error;
  driver_->free_manager(&m);
}

// A process that looks like libvirt's QEMU for `uuid` ("-uuid UUID" in its
// command line); no child of its own, so killing it leaves nothing behind.
pid_t SpawnFakeQemu(const std::string& uuid) {
  int p[2];
  if (pipe(p) != 0) return -1;
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(p[0], 0);
    close(p[1]);
    execl("/bin/sh", "qemu-system-x86_64", "-c", "read x", "-uuid", uuid.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  close(p[0]);  // p[1] stays open in this process: `read` blocks
  for (int i = 0; i < 500; ++i) {  // until exec has replaced the command line
    std::ifstream in(absl::StrCat("/proc/", pid, "/cmdline"));
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (text.find("-uuid") != std::string::npos) break;
    usleep(10000);
  }
  return pid;
}

// A refusal names the holder for what it is: a domain only when the holder
// is libvirt's QEMU for that uuid on this host, otherwise an owner (here
// what `latchctl run` registers). Before, every holder was a "domain".
TEST_F(PluginTest, RefusalNamesWhatTheHolderIs) {
  testing::LatchdProcess d(testing::TempDir("latchd"));
  ASSERT_TRUE(d.Start().ok());
  const std::string dir = testing::TempDir("disks");
  const std::string disk1 = dir + "/one.img", disk2 = dir + "/two.img";
  std::ofstream(disk1) << "";
  std::ofstream(disk2) << "";
  absl::StatusOr<LatchdClient> c = d.Connect();
  ASSERT_TRUE(c.ok()) << c.status();

  testing::Vm tool("qemu-img");  // as `latchctl run -- qemu-img ...` registers
  ASSERT_TRUE(c->Call({{"op", "register"}, {"owner", tool.Owner()}}).ok());
  ASSERT_TRUE(c->Call({{"op", "acquire"}, {"uuid", tool.uuid},
                       {"resources", {{{"disk", disk1}, {"mode", "exclusive"}}}}}).ok());
  const pid_t alpha = SpawnFakeQemu(kUuidAText);
  ASSERT_GT(alpha, 0);
  ASSERT_TRUE(c->Call({{"op", "register"},
                       {"owner", {{"uuid", kUuidAText}, {"name", "alpha"}, {"pid", alpha}}}}).ok());
  ASSERT_TRUE(c->Call({{"op", "acquire"}, {"uuid", kUuidAText},
                       {"resources", {{{"disk", disk2}, {"mode", "exclusive"}}}}}).ok());

  ASSERT_EQ(Init(WriteConfig(absl::StrCat("socket = \"", d.socket(), "\"\n"))), 0);
  testing::Vm qemu("beta");
  LkManager m;
  NewDomain(&m, "beta", kUuidB, qemu.pid, {disk1});
  EXPECT_EQ(EarlyCheck(&m), -1);
  EXPECT_THAT(g_last_error, HasSubstr(absl::StrCat("domain 'beta' cannot lock disk ", disk1,
                                                   " exclusive: it is held exclusive by owner "
                                                   "'qemu-img' (uuid ", tool.uuid, ", pid ", tool.pid,
                                                   " on host ")));
  EXPECT_THAT(g_last_error, HasSubstr("not a libvirt domain of this host"));
  EXPECT_THAT(g_last_error, Not(HasSubstr("domain 'qemu-img'")));
  EXPECT_EQ(g_last_code, kBusy);
  driver_->free_manager(&m);

  NewDomain(&m, "beta", kUuidB, qemu.pid, {disk2});
  EXPECT_EQ(EarlyCheck(&m), -1);
  EXPECT_THAT(g_last_error, HasSubstr(absl::StrCat("it is held exclusive by domain 'alpha' (uuid ",
                                                   kUuidAText, ", pid ", alpha, ") on host ")));
  EXPECT_EQ(g_last_code, kBusy);
  driver_->free_manager(&m);
  testing::KillAndReap(alpha);
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
