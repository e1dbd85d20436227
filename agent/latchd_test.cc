// latchd end to end, against the real daemon and real owner processes:
// adoption after kill -9, owner death, planned re-exec with no window,
// lock-failure policies, the journal across crashes and corruption, and bad
// input of every kind.
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/client.h"
#include "agent/testing/latchd_process.h"
#include "core/journal.h"
#include "core/plugin_loader.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace latchkey {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;
using testing::KillAndReap;
using testing::LatchdProcess;
using testing::ProcessState;
using testing::SpawnSleeper;
using testing::TempDir;
using testing::Vm;



// Waits for child `pid` to end; its wait status, or -1 on timeout.
int WaitChild(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) return st;
    absl::SleepFor(absl::Milliseconds(2));
  }
  return -1;
}

class LatchdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir("latchd");
    d_ = std::make_unique<LatchdProcess>(dir_);
    ASSERT_TRUE(d_->Start().ok()) << d_->Log();
    Reconnect();
  }
  void TearDown() override {
    if (::testing::Test::HasFailure()) fprintf(stderr, "latchd log:\n%s\n", d_->Log().c_str());
  }

  void Reconnect() {
    absl::StatusOr<LatchdClient> c = d_->Connect();
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = std::make_unique<LatchdClient>(std::move(*c));
  }
  absl::StatusOr<json> Call(json req) { return client_->Call(req); }

  void Register(const Vm& vm, const std::string& policy = "terminate", int grace_ms = 5000) {
    absl::StatusOr<json> r = Call(
        {{"op", "register"}, {"owner", vm.Owner()}, {"policy", policy}, {"grace_ms", grace_ms}});
    ASSERT_TRUE(r.ok()) << r.status();
  }
  absl::StatusOr<json> Acquire(const Vm& vm, json resources, json extra = json::object()) {
    json req = {{"op", "acquire"}, {"uuid", vm.uuid}, {"resources", resources}};
    req.update(extra);
    return Call(req);
  }
  std::string Disk(const std::string& n) const { return dir_ + "/" + n + ".img"; }

  // owner name -> "resource-name:mode:token" strings from status.
  std::map<std::string, std::vector<std::string>> Held() {
    std::map<std::string, std::vector<std::string>> out;
    absl::StatusOr<json> st = Call({{"op", "status"}});
    EXPECT_TRUE(st.ok()) << st.status();
    if (!st.ok()) return out;
    for (const json& o : (*st)["owners"]) {
      auto& v = out[o["owner"]["name"].get<std::string>()];
      for (const json& l : o["locks"]) {
        v.push_back(absl::StrCat(l["path"].get<std::string>().empty()
                                     ? l["name"].get<std::string>()
                                     : l["path"].get<std::string>(),
                                 ":", l["mode"].get<std::string>(), ":",
                                 l["fencing_token"].get<uint64_t>()));
      }
    }
    return out;
  }

  // A backend in this test process on latchd's lock directory: an
  // independent contender outside latchd.
  std::unique_ptr<Backend> Contender() {
    absl::StatusOr<Config> cfg =
        Config::ParseText(absl::StrCat("lock_dir = \"", d_->lock_dir(), "\""), "<test>");
    EXPECT_TRUE(cfg.ok());
    absl::StatusOr<std::unique_ptr<Backend>> b =
        LoadBackend({LatchdProcess::PluginDir()}, "posixfd", *cfg);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? std::move(*b) : nullptr;
  }

  std::string dir_;
  std::unique_ptr<LatchdProcess> d_;
  std::unique_ptr<LatchdClient> client_;
};

TEST_F(LatchdTest, KillNineWhileOwnersHoldLocksThenEveryLockIsHeldAgain) {
  Vm a("vm-a"), b("vm-b"), c("vm-c");
  Register(a);
  Register(b);
  Register(c);
  ASSERT_TRUE(Acquire(a, {{{"disk", Disk("a")}}, {{"disk", Disk("base")}, {"mode", "shared-read"}}}).ok());
  ASSERT_TRUE(Acquire(b, {{{"disk", Disk("b")}}, {{"disk", Disk("base")}, {"mode", "shared-read"}}}).ok());
  ASSERT_TRUE(Acquire(c, {{{"lease", "shared-scratch"}, {"mode", "shared-write"}}}).ok());
  const auto before = Held();

  d_->Kill(SIGKILL);
  ASSERT_TRUE(d_->Start().ok()) << d_->Log();
  Reconnect();
  const auto after = Held();
  EXPECT_EQ(after.size(), 3u);
  for (const auto& [name, locks] : before) {
    ASSERT_EQ(after.at(name).size(), locks.size()) << name;
  }
  EXPECT_THAT(d_->Log(), HasSubstr("adopted 5 locks of 3 owners"));

  // Held for real: an outside contender is refused every one of them.
  std::unique_ptr<Backend> other = Contender();
  ASSERT_NE(other, nullptr);
  const latchkey::Owner intruder = OwnerForThisProcess(RandomUuid(), "intruder");
  for (const char* n : {"a", "b", "base"}) {
    absl::StatusOr<Resource> r = Resource::Disk(Disk(n), "default");
    ASSERT_TRUE(r.ok());
    absl::StatusOr<Grant> g = other->Acquire(intruder, *r, LockMode::kExclusive, {});
    EXPECT_TRUE(IsLockBusy(g.status())) << n << ": " << g.status();
  }
  // And the owners' later releases work.
  for (const Vm* vm : {&a, &b, &c}) {
    absl::StatusOr<json> r = Call({{"op", "release"}, {"uuid", vm->uuid}});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_FALSE((*r)["released"].empty());
  }
  absl::StatusOr<Resource> ra = Resource::Disk(Disk("a"), "default");
  absl::StatusOr<Grant> g = other->Acquire(intruder, *ra, LockMode::kExclusive, {});
  EXPECT_TRUE(g.ok()) << g.status();
  EXPECT_TRUE(other->Release(intruder, *ra).ok());
}

TEST_F(LatchdTest, KilledOwnerLocksAreFreeWithin100ms) {
  Vm a("vm-a"), b("vm-b");
  Register(a);
  Register(b);
  ASSERT_TRUE(Acquire(a, {{{"disk", Disk("a")}}, {{"lease", "l1"}, {"mode", "shared-write"}}}).ok());
  // b waits for the disk on its own connection.
  absl::StatusOr<LatchdClient> waiter = d_->Connect();
  ASSERT_TRUE(waiter.ok());
  std::atomic<bool> granted{false};
  absl::Time granted_at;
  std::thread t([&] {
    absl::StatusOr<json> r = waiter->Call({{"op", "acquire"},
                                           {"uuid", b.uuid},
                                           {"resources", {{{"disk", Disk("a")}}}},
                                           {"wait", true},
                                           {"timeout_ms", 10000}},
                                          absl::Seconds(20));
    granted_at = absl::Now();
    granted = r.ok();
  });
  absl::SleepFor(absl::Milliseconds(100));  // b is queued behind a
  const absl::Time killed_at = absl::Now();
  kill(a.pid, SIGKILL);
  t.join();
  ASSERT_TRUE(granted);
  const absl::Duration freed = granted_at - killed_at;
  fprintf(stderr, "owner killed -> waiter granted: %s\n", absl::FormatDuration(freed).c_str());
  // latchd learns of the death from the owner's pidfd, not by polling: the
  // waiter gets the disk as soon as latchd is scheduled (a few ms; the figure
  // above), and only a missed event would keep it waiting for its 10 s
  // timeout. 1 s separates the two on a loaded machine and under ASan.
  EXPECT_LT(freed, absl::Seconds(1));
  const auto held = Held();
  EXPECT_EQ(held.count("vm-a"), 0u);  // a is forgotten, with all its locks
  ASSERT_EQ(held.at("vm-b").size(), 1u);
}

TEST_F(LatchdTest, PidReuseIsDetectedThroughTheStartTime) {
  Vm a("vm-a");
  absl::StatusOr<json> r = Call({{"op", "register"},
                                 {"owner", {{"uuid", a.uuid}, {"name", "x"}, {"pid", a.pid},
                                            {"start_time", 1}}}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("pid was reused"));
}

TEST_F(LatchdTest, OwnersThatDiedWhileLatchdWasDownAreReleased) {
  Vm a("vm-a"), b("vm-b");
  Register(a);
  Register(b);
  ASSERT_TRUE(Acquire(a, {{{"disk", Disk("a")}}}).ok());
  ASSERT_TRUE(Acquire(b, {{{"disk", Disk("b")}}}).ok());
  d_->Kill(SIGKILL);
  KillAndReap(a.pid);
  a.pid = -1;
  ASSERT_TRUE(d_->Start().ok());
  Reconnect();
  const auto held = Held();
  EXPECT_EQ(held.count("vm-a"), 0u);
  EXPECT_EQ(held.at("vm-b").size(), 1u);
  Vm c("vm-c");
  Register(c);
  EXPECT_TRUE(Acquire(c, {{{"disk", Disk("a")}}}).ok());
  std::string boot;
  d_->Kill(SIGKILL);
  absl::StatusOr<JournalContents> j = Journal::ReadOnly(d_->journal(), &boot);
  ASSERT_TRUE(j.ok()) << j.status();
  for (const JournalOwner& o : j->owners) EXPECT_NE(o.owner.name, "vm-a");
}

TEST_F(LatchdTest, PlannedReexecKeepsEveryLockWithNoWindow) {
  Vm a("vm-a"), b("vm-b");
  Register(a);
  Register(b);
  ASSERT_TRUE(Acquire(a, {{{"disk", Disk("a")}}, {{"lease", "l1"}, {"mode", "shared-read"}}}).ok());
  ASSERT_TRUE(Acquire(b, {{{"disk", Disk("b")}, {"mode", "shared-write"}}}).ok());
  const auto before = Held();

  // An outside contender hammers the resources across the whole re-exec.
  std::unique_ptr<Backend> other = Contender();
  ASSERT_NE(other, nullptr);
  const latchkey::Owner intruder = OwnerForThisProcess(RandomUuid(), "intruder");
  std::vector<Resource> targets = {*Resource::Disk(Disk("a"), "default"),
                                   *Resource::Disk(Disk("b"), "default"),
                                   *Resource::Lease("default", "l1")};
  std::atomic<bool> stop{false};
  std::atomic<int> attempts{0}, intrusions{0};
  std::thread hammer([&] {
    while (!stop) {
      for (const Resource& r : targets) {
        absl::StatusOr<Grant> g = other->Acquire(intruder, r, LockMode::kExclusive, {});
        ++attempts;
        if (g.ok()) {
          ++intrusions;
          other->Release(intruder, r).IgnoreError();
        }
      }
    }
  });
  absl::SleepFor(absl::Milliseconds(20));
  const pid_t pid = d_->pid();
  absl::StatusOr<json> r = Call({{"op", "reexec"}});
  ASSERT_TRUE(r.ok()) << r.status();
  // Same process, new program: wait for it to answer again.
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  absl::StatusOr<LatchdClient> c = absl::UnavailableError("not yet");
  // The old program may still answer a connection made just before its
  // exec (which then drops it): wait for the new one's first log line.
  while (absl::Now() < deadline) {
    if (d_->Log().find("starting after a planned re-exec") == std::string::npos) {
      absl::SleepFor(absl::Milliseconds(5));
      continue;
    }
    c = d_->Connect(absl::Seconds(1));
    if (c.ok() && c->Call({{"op", "hello"}}).ok()) break;
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_TRUE(c.ok());
  client_ = std::make_unique<LatchdClient>(std::move(*c));
  absl::SleepFor(absl::Milliseconds(20));
  stop = true;
  hammer.join();
  EXPECT_EQ(d_->pid(), pid);
  EXPECT_GT(attempts.load(), 10);
  EXPECT_EQ(intrusions.load(), 0) << "an outside owner got a lock during the re-exec";
  // The very same grants: the fencing tokens did not move.
  EXPECT_EQ(Held(), before);
  EXPECT_THAT(d_->Log(), HasSubstr("starting after a planned re-exec"));
  ASSERT_TRUE(Call({{"op", "release"}, {"uuid", a.uuid}}).ok());
  EXPECT_TRUE(other->Acquire(intruder, targets[0], LockMode::kExclusive, {}).ok());
}

// posixfd locks die with latchd: one taken by somebody else while latchd
// was down cannot be adopted. That is a lock failure of its owner.
class PolicyTest : public LatchdTest,
                   public ::testing::WithParamInterface<const char*> {};

TEST_P(PolicyTest, LockLostWhileLatchdWasDownAppliesThePolicy) {
  const std::string policy = GetParam();
  Vm a("vm-a");
  Register(a, policy, 300);
  ASSERT_TRUE(Acquire(a, {{{"disk", Disk("a")}}}).ok());
  d_->Kill(SIGKILL);
  std::unique_ptr<Backend> other = Contender();
  ASSERT_NE(other, nullptr);
  const latchkey::Owner intruder = OwnerForThisProcess(RandomUuid(), "intruder");
  const Resource disk = *Resource::Disk(Disk("a"), "default");
  ASSERT_TRUE(other->Acquire(intruder, disk, LockMode::kExclusive, {}).ok());
  ASSERT_TRUE(d_->Start().ok());
  Reconnect();
  EXPECT_THAT(d_->Log(), HasSubstr("LOCK FAILURE"));
  EXPECT_THAT(d_->Log(), HasSubstr(absl::StrCat("policy ", policy)));
  if (policy == "terminate") {
    const int st = WaitChild(a.pid, absl::Seconds(5));
    ASSERT_NE(st, -1) << "owner still running";
    EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM) << st;
    a.pid = -1;
  } else if (policy == "pause") {
    absl::Time deadline = absl::Now() + absl::Seconds(5);
    while (ProcessState(a.pid) != 'T' && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    EXPECT_EQ(ProcessState(a.pid), 'T');
  } else {
    absl::SleepFor(absl::Milliseconds(100));
    EXPECT_EQ(ProcessState(a.pid), 'S');
  }
  // Never granted on a guess: latchd does not claim the lost lock.
  const auto held = Held();
  if (held.count("vm-a")) {
    EXPECT_TRUE(held.at("vm-a").empty());
  }
  EXPECT_TRUE(other->Release(intruder, disk).ok());
}

INSTANTIATE_TEST_SUITE_P(Policies, PolicyTest,
                         ::testing::Values("terminate", "pause", "ignore"));

TEST_F(LatchdTest, TerminateEscalatesToSigkillAfterTheGrace) {
  // An owner that ignores SIGTERM.
  const pid_t stubborn = fork();
  if (stubborn == 0) {
    signal(SIGTERM, SIG_IGN);
    for (;;) pause();
  }
  absl::SleepFor(absl::Milliseconds(20));
  const std::string uuid = RandomUuid();
  ASSERT_TRUE(Call({{"op", "register"},
                    {"owner", {{"uuid", uuid}, {"name", "stubborn"}, {"pid", stubborn}}},
                    {"grace_ms", 200}})
                  .ok());
  ASSERT_TRUE(Call({{"op", "acquire"}, {"uuid", uuid}, {"resources", {{{"disk", Disk("s")}}}}})
                  .ok());
  d_->Kill(SIGKILL);
  std::unique_ptr<Backend> other = Contender();
  const latchkey::Owner intruder = OwnerForThisProcess(RandomUuid(), "intruder");
  ASSERT_TRUE(other->Acquire(intruder, *Resource::Disk(Disk("s"), "default"),
                             LockMode::kExclusive, {})
                  .ok());
  const absl::Time start = absl::Now();
  ASSERT_TRUE(d_->Start().ok());
  const int st = WaitChild(stubborn, absl::Seconds(10));
  if (st == -1) KillAndReap(stubborn);
  ASSERT_NE(st, -1);
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << st;
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(200));
}

TEST_F(LatchdTest, HandoffStateIsCheckedAtAcquire) {
  Vm src("src"), dst("dst"), thief("thief");
  Register(src);
  Register(dst);
  Register(thief);
  ASSERT_TRUE(Acquire(src, {{{"disk", Disk("m")}}}).ok());
  absl::StatusOr<json> rel = Call({{"op", "release"}, {"uuid", src.uuid}});
  ASSERT_TRUE(rel.ok());
  const std::string state = (*rel)["state"];
  // Nobody in between: the destination gets it.
  absl::StatusOr<json> got = Acquire(dst, {{{"disk", Disk("m")}}}, {{"state", state}});
  ASSERT_TRUE(got.ok()) << got.status();
  absl::StatusOr<json> rel2 = Call({{"op", "release"}, {"uuid", dst.uuid}});
  ASSERT_TRUE(rel2.ok());
  // Somebody took it in between: the hand-off is refused, nothing held.
  ASSERT_TRUE(Acquire(thief, {{{"disk", Disk("m")}}}).ok());
  ASSERT_TRUE(Call({{"op", "release"}, {"uuid", thief.uuid}}).ok());
  absl::StatusOr<json> refused =
      Acquire(src, {{{"disk", Disk("m")}}, {{"disk", Disk("n")}}}, {{"state", (*rel2)["state"]}});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kAborted) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("hand-off refused"));
  EXPECT_TRUE(Held().at("src").empty());
}

TEST_F(LatchdTest, BadRequestsGetClearErrorsAndLoseNothing) {
  Vm a("vm-a"), b("vm-b");
  Register(a);
  Register(b);
  ASSERT_TRUE(Acquire(a, {{{"disk", Disk("a")}}, {{"lease", "l1"}, {"mode", "shared-read"}}}).ok());
  const auto before = Held();

  struct Case {
    json request;
    absl::StatusCode code;
    const char* message;
  } cases[] = {
      {{{"op", "frobnicate"}}, absl::StatusCode::kInvalidArgument, "unknown op 'frobnicate'"},
      {{{"op", "acquire"}, {"uuid", a.uuid}, {"resorces", json::array()}},
       absl::StatusCode::kInvalidArgument, "missing field 'resources'"},
      {{{"op", "acquire"}, {"uuid", a.uuid}, {"resources", {{{"disk", Disk("x")}}}}, {"bogus", 1}},
       absl::StatusCode::kInvalidArgument, "unknown field 'bogus'"},
      {{{"op", "acquire"}, {"uuid", a.uuid}, {"resources", {{{"disk", 7}}}}},
       absl::StatusCode::kInvalidArgument, "'resources[0].disk' must be a string"},
      {{{"op", "acquire"}, {"uuid", a.uuid}, {"resources", {{{"lease", std::string(65, 'k')}}}}},
       absl::StatusCode::kInvalidArgument, "the limit is 64"},
      {{{"op", "acquire"}, {"uuid", a.uuid}, {"resources", {{{"lease", "../etc"}}}}},
       absl::StatusCode::kInvalidArgument, "lease key"},
      {{{"op", "acquire"}, {"uuid", a.uuid}, {"resources", {{{"disk", Disk("x")}, {"mode", "rw"}}}}},
       absl::StatusCode::kInvalidArgument, "unknown lock mode 'rw'"},
      {{{"op", "acquire"}, {"uuid", a.uuid}, {"resources", {{{"disk", Disk("x")}, {"backend", "nope"}}}}},
       absl::StatusCode::kInvalidArgument, "backend 'nope' is not loaded"},
      {{{"op", "acquire"}, {"uuid", a.uuid}, {"resources", {{{"disk", Disk("a")}}}}},
       absl::StatusCode::kFailedPrecondition, "already holds"},
      // posixfd has no ordered queue; nothing is queued or changed.
      {{{"op", "queue"}, {"uuid", a.uuid}, {"resources", {{{"disk", Disk("x")}}}}},
       absl::StatusCode::kUnimplemented, "cannot queue a request ahead of time"},
      {{{"op", "queue"}, {"uuid", a.uuid}, {"resources", json::array()}},
       absl::StatusCode::kInvalidArgument, "queue names no resource"},
      {{{"op", "acquire"}, {"uuid", "not-a-uuid"}, {"resources", {{{"disk", Disk("x")}}}}},
       absl::StatusCode::kNotFound, "not registered"},
      {{{"op", "acquire"}, {"uuid", a.uuid}, {"resources", {{{"disk", Disk("x")}}}}, {"state", "junk"}},
       absl::StatusCode::kInvalidArgument, "state string"},
      {{{"op", "register"}, {"owner", {{"uuid", "xyz"}, {"name", "v"}, {"pid", a.pid}}}},
       absl::StatusCode::kInvalidArgument, "uuid"},
      {{{"op", "register"}, {"owner", {{"uuid", RandomUuid()}, {"name", "v"}, {"pid", 0}}}},
       absl::StatusCode::kInvalidArgument, "pid"},
      {{{"op", "register"}, {"owner", {{"uuid", a.uuid}, {"name", "dup"}, {"pid", b.pid}}}},
       absl::StatusCode::kFailedPrecondition, "still running"},
      {{{"op", "set_policy"}, {"uuid", a.uuid}, {"policy", "explode"}},
       absl::StatusCode::kInvalidArgument, "unknown lock-failure policy 'explode'"},
      // Releasing another owner's lock.
      {{{"op", "release"}, {"uuid", b.uuid}, {"resources", {{{"disk", Disk("a")}}}}},
       absl::StatusCode::kPermissionDenied, "is held by vm-a"},
      {{{"op", "release"}, {"uuid", b.uuid}, {"resources", {{{"disk", Disk("zzz")}}}}},
       absl::StatusCode::kNotFound, "holds no lock"},
      {{{"op", "release"}, {"uuid", a.uuid}, {"resources", {{{"disk", Disk("a")}}, {{"disk", Disk("zzz")}}}}},
       absl::StatusCode::kNotFound, "nothing was released"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<json> r = Call(c.request);
    ASSERT_FALSE(r.ok()) << c.request.dump();
    EXPECT_EQ(r.status().code(), c.code) << c.request.dump() << " -> " << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.message)) << c.request.dump();
  }

  // Raw lines the client library would never send, on one connection.
  const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  strncpy(addr.sun_path, d_->socket().c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  FILE* in = fdopen(dup(fd), "r");
  auto send_line = [&](const std::string& s) {
    ASSERT_EQ(write(fd, s.data(), s.size()), static_cast<ssize_t>(s.size()));
  };
  auto read_line = [&]() {
    char* line = nullptr;
    size_t cap = 0;
    const ssize_t n = getline(&line, &cap, in);
    std::string out = n > 0 ? std::string(line, n) : std::string();
    free(line);
    return out;
  };
  send_line("this is not json\n");
  EXPECT_THAT(read_line(), HasSubstr("request is not valid JSON"));
  send_line("[1,2,3]\n");
  EXPECT_THAT(read_line(), HasSubstr("must be a JSON object"));
  send_line("{\"v\":2,\"op\":\"status\"}\n");
  EXPECT_THAT(read_line(), HasSubstr("protocol version 2 is not spoken here"));
  send_line("{\"op\":\"status\"}\n");
  EXPECT_THAT(read_line(), HasSubstr("missing field 'v'"));
  send_line(std::string("\x01\x02\xff\xfe binary\n", 13));
  EXPECT_THAT(read_line(), HasSubstr("invalid_argument"));
  const std::string big = "{\"v\":1,\"op\":\"status\",\"pad\":\"" + std::string(200000, 'x') + "\"}\n";
  send_line(big);
  EXPECT_THAT(read_line(), HasSubstr("request exceeds 65536 bytes"));
  // Just over the limit, arriving in one read: refused all the same.
  const std::string just = "{\"v\":1,\"op\":\"status\",\"pad\":\"" + std::string(65520, 'x') + "\"}\n";
  ASSERT_GT(just.size(), 65536u);
  send_line(just);
  EXPECT_THAT(read_line(), HasSubstr("request exceeds 65536 bytes"));
  send_line("{\"v\":1,\"id\":42,\"op\":\"hello\"}\n");
  const std::string hello = read_line();
  EXPECT_THAT(hello, HasSubstr("\"id\":42"));
  EXPECT_THAT(hello, HasSubstr("\"ok\":true"));
  fclose(in);
  close(fd);

  EXPECT_EQ(Held(), before) << "a bad request changed what is held";
  EXPECT_TRUE(Call({{"op", "hello"}}).ok());
}

TEST_F(LatchdTest, PeerWithADisallowedUidIsRefused) {
  Vm a("vm-a");
  Register(a);
  ASSERT_TRUE(Acquire(a, {{{"disk", Disk("a")}}}).ok());
  // Let uid 65534 reach the socket file, so SO_PEERCRED is what refuses it.
  chmod(d_->socket_dir().c_str(), 0755);
  chmod(d_->socket().c_str(), 0666);
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  const pid_t child = fork();
  if (child == 0) {
    close(pipefd[0]);
    signal(SIGPIPE, SIG_IGN);  // latchd may close before our write lands
    if (setgid(65534) != 0 || setuid(65534) != 0) _exit(3);
    const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, d_->socket().c_str(), sizeof(addr.sun_path) - 1);
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) _exit(4);
    const char req[] = "{\"v\":1,\"op\":\"release\",\"uuid\":\"x\"}\n";
    (void)!write(fd, req, sizeof(req) - 1);
    char buf[512];
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n > 0) (void)!write(pipefd[1], buf, n);
    _exit(0);
  }
  close(pipefd[1]);
  char buf[512] = {};
  const ssize_t n = read(pipefd[0], buf, sizeof(buf) - 1);
  close(pipefd[0]);
  int st;
  waitpid(child, &st, 0);
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "child status " << st;
  ASSERT_GT(n, 0);
  EXPECT_THAT(std::string(buf), HasSubstr("permission_denied"));
  EXPECT_THAT(std::string(buf), HasSubstr("uid 65534 may not use latchd"));
  EXPECT_EQ(Held().at("vm-a").size(), 1u);
}

void CorruptJournal(const std::string& path, bool truncate_only) {
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  if (truncate_only) {
    ASSERT_EQ(truncate(path.c_str(), st.st_size / 2), 0);
    return;
  }
  const int fd = open(path.c_str(), O_WRONLY);
  const std::string junk(4096, '\x5a');
  ASSERT_EQ(pwrite(fd, junk.data(), junk.size(), 0), static_cast<ssize_t>(junk.size()));
  close(fd);
}

class JournalDamageTest : public LatchdTest, public ::testing::WithParamInterface<bool> {};

TEST_P(JournalDamageTest, DamagedJournalIsMovedAsideAndNothingIsGrantedOnAGuess) {
  Vm a("vm-a");
  Register(a);
  for (int i = 0; i < 40; ++i) {
    ASSERT_TRUE(Acquire(a, {{{"lease", absl::StrCat("l", i)}}}).ok());
  }
  d_->Kill(SIGKILL);
  // Fold the WAL into the database first, so the damage hits real pages.
  {
    JournalOpenReport rep;
    auto j = Journal::Open(d_->journal(), CurrentBootId(), &rep);
    ASSERT_TRUE(j.ok());
  }
  CorruptJournal(d_->journal(), GetParam());
  ASSERT_TRUE(d_->Start().ok()) << d_->Log();
  Reconnect();
  EXPECT_THAT(d_->Log(), HasSubstr("was unreadable"));
  EXPECT_THAT(d_->Log(), HasSubstr(".corrupt-"));
  // Nothing adopted without a record; latchd serves.
  EXPECT_TRUE(Held().empty());
  Vm b("vm-b");
  Register(b);
  EXPECT_TRUE(Acquire(b, {{{"lease", "l0"}}}).ok());
  EXPECT_EQ(Held().at("vm-b").size(), 1u);
}

INSTANTIATE_TEST_SUITE_P(GarbageOrTruncated, JournalDamageTest, ::testing::Bool());

TEST_F(LatchdTest, SecondLatchdOnTheSameStateDirectoryIsRefused) {
  LatchdProcess second(dir_);  // same config, same state dir
  absl::Status s = second.Start({}, absl::Seconds(5));
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("another latchd is running"));
  EXPECT_TRUE(Call({{"op", "hello"}}).ok());
}

// The nop backend grants every request: latchd loads it only when the
// configuration says it is there for benchmarking, and says so in its log.
TEST(BenchmarkBackendTest, NopIsLoadedOnlyWhenBenchmarkBackendsNamesIt) {
  LatchdProcess refused(TempDir("nop-refused"), "backends = [ \"posixfd\", \"nop\" ]\n");
  absl::Status s = refused.Start({}, absl::Seconds(5));
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(refused.Log(), HasSubstr("backend nop grants every request and excludes nobody"));
  EXPECT_THAT(refused.Log(), HasSubstr("benchmark_backends"));

  LatchdProcess typo(TempDir("nop-typo"),
                     "backends = [ \"posixfd\" ]\nbenchmark_backends = [ \"nop\" ]\n");
  ASSERT_FALSE(typo.Start({}, absl::Seconds(5)).ok());
  EXPECT_THAT(typo.Log(), HasSubstr("benchmark_backends names 'nop', which 'backends' does not list"));

  LatchdProcess ok(TempDir("nop-ok"), "backends = [ \"posixfd\", \"nop\" ]\n"
                                      "benchmark_backends = [ \"nop\" ]\n");
  ASSERT_TRUE(ok.Start().ok()) << ok.Log();
  EXPECT_THAT(ok.Log(), HasSubstr("for benchmarks only"));
  absl::StatusOr<LatchdClient> c = ok.Connect();
  ASSERT_TRUE(c.ok()) << c.status();
  // Two owners both get the same lease exclusively: nop excludes nobody,
  // and latchd's own bookkeeping (journal, status) works as for any backend.
  Vm a("vm-a"), b("vm-b");
  for (const Vm* vm : {&a, &b}) {
    absl::StatusOr<json> r = c->Call({{"op", "register"}, {"owner", vm->Owner()}});
    ASSERT_TRUE(r.ok()) << r.status();
    r = c->Call({{"op", "acquire"},
                 {"uuid", vm->uuid},
                 {"resources", {{{"lease", "bench-1"}, {"backend", "nop"}, {"mode", "exclusive"}}}}});
    ASSERT_TRUE(r.ok()) << r.status();
  }
  absl::StatusOr<json> st = c->Call({{"op", "status"}});
  ASSERT_TRUE(st.ok()) << st.status();
  int locks = 0;
  for (const json& o : (*st)["owners"]) locks += static_cast<int>(o["locks"].size());
  EXPECT_EQ(locks, 2) << st->dump();
  // The default backend (posixfd) is a lock as always.
  EXPECT_TRUE(
      c->Call({{"op", "acquire"}, {"uuid", a.uuid}, {"resources", {{{"lease", "real-1"}}}}}).ok());
  EXPECT_FALSE(
      c->Call({{"op", "acquire"}, {"uuid", b.uuid}, {"resources", {{{"lease", "real-1"}}}}}).ok());
}

TEST_F(LatchdTest, BadConfigNamesTheLine) {
  const std::string dir = TempDir("badconf");
  LatchdProcess bad(dir, "posixfd_lock_dri = \"/x\"\n");
  absl::Status s = bad.Start({}, absl::Seconds(5));
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(bad.Log(), HasSubstr("latchd.conf:6: unknown"));
}

}  // namespace
}  // namespace latchkey
