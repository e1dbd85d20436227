// Fuzz target: latchd's request path as latchd runs it: Server::HandleLine
// (line checks, JSON parsing, field validation, dispatch) against a real
// Agent with the posixfd plugin and a journal in a scratch directory.
//
// The input is request lines, one per line, answered in order. A line that
// starts with "@u " is sent by an unprivileged peer (uid 65534), any other
// by root. After each input every owner is unregistered, so inputs start
// from the same empty agent (thousands of inputs a second, no restart).
//
// Safety: an owner's process is what latchd watches and, on a lock
// failure, signals. Every owner pid that could name a process (1..2^31-1)
// is replaced by the pid of a sleeping child this fuzzer started, so no
// input can make latchd signal a real process; other values reach latchd
// unchanged (it must refuse them). Waits cannot hang: each request gets a
// cancel descriptor that already reports a hang-up, so a waiting acquire
// ends at once (Cancelled).
//
// Properties: every answer is one JSON object line of protocol version 1
// with a boolean "ok", and either a result or an error with a known code
// and a message; a reexec that succeeded is cancelled again and the agent
// keeps serving; after unregistering everything the agent holds nothing.
//
// LATCHKEY_FUZZ_VERBOSE=1 prints each request and its answer (for reading
// what a seed or a reproducer does).
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "agent/agent.h"
#include "agent/server.h"
#include "core/config.h"
#include "fuzz/fuzz_util.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace latchkey {
namespace {

using json = nlohmann::json;

struct Fixture {
  std::string dir;
  std::unique_ptr<Agent> agent;
  std::unique_ptr<Server> server;
  pid_t owner_pid = -1;  // the sleeping child every owner pid becomes
  int cancel_fd = -1;    // read end of a pipe whose write end is closed
  bool verbose = false;  // $LATCHKEY_FUZZ_VERBOSE: print requests and answers
};

Fixture* g = nullptr;

// A child that only sleeps: it dies with the fuzzer (PR_SET_PDEATHSIG, and
// KillSleeper at exit) and holds none of its output descriptors.
pid_t SpawnSleeper() {
  const pid_t parent = getpid();
  const pid_t pid = fork();
  FUZZ_CHECK(pid >= 0, "fork");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(0);
    const int null = open("/dev/null", O_RDWR);
    for (int fd = 0; fd < 3; ++fd) dup2(null, fd);
    while (true) pause();
  }
  return pid;
}

void KillSleeper() {
  if (g != nullptr && g->owner_pid > 0) {
    kill(g->owner_pid, SIGKILL);
    waitpid(g->owner_pid, nullptr, 0);
  }
}

// The sleeper, started again if a policy stopped or killed it.
pid_t OwnerPid() {
  int status = 0;
  const pid_t r = waitpid(g->owner_pid, &status, WNOHANG | WUNTRACED);
  if (r == g->owner_pid && WIFSTOPPED(status)) {
    kill(g->owner_pid, SIGCONT);
  } else if (r == g->owner_pid) {
    g->owner_pid = SpawnSleeper();
  }
  return g->owner_pid;
}

// The line with any plausible owner pid replaced by the sleeper's.
std::string Sanitized(const std::string& line) {
  if (line.find("owner") == std::string::npos) return line;
  json req = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (req.is_discarded() || !req.is_object()) return line;
  auto o = req.find("owner");
  if (o == req.end() || !o->is_object()) return line;
  auto pid = o->find("pid");
  if (pid == o->end() || !pid->is_number_integer()) return line;
  const bool plausible = pid->is_number_unsigned() ? pid->get<uint64_t>() >= 1 && pid->get<uint64_t>() <= 0x7fffffff
                                                   : pid->get<int64_t>() >= 1 && pid->get<int64_t>() <= 0x7fffffff;
  if (!plausible) return line;
  *pid = OwnerPid();
  return req.dump(-1, ' ', false, json::error_handler_t::replace);
}

const std::set<std::string>& Codes() {
  static const auto* c = new std::set<std::string>{
      "cancelled",     "unknown",           "invalid_argument", "deadline_exceeded",
      "not_found",     "already_exists",    "permission_denied", "resource_exhausted",
      "failed_precondition", "aborted",     "out_of_range",     "unimplemented",
      "internal",      "unavailable",       "data_loss",        "unauthenticated"};
  return *c;
}

void CheckAnswer(const std::string& line, const std::string& answer) {
  FUZZ_CHECK(answer.find('\n') == std::string::npos, answer);
  const json a = json::parse(answer, nullptr, /*allow_exceptions=*/false);
  FUZZ_CHECK(!a.is_discarded() && a.is_object(), line + " -> " + answer);
  FUZZ_CHECK(a.contains("v") && a["v"] == 1, answer);
  FUZZ_CHECK(a.contains("ok") && a["ok"].is_boolean(), answer);
  if (!a["ok"].get<bool>()) {
    FUZZ_CHECK(a.contains("error") && a["error"].is_object(), answer);
    const json& e = a["error"];
    FUZZ_CHECK(e.contains("code") && e["code"].is_string() && Codes().count(e["code"].get<std::string>()),
               answer);
    FUZZ_CHECK(e.contains("message") && e["message"].is_string() && !e["message"].get<std::string>().empty(),
               answer);
  }
}

void ResetAgent() {
  for (const OwnerView& o : g->agent->Status().owners) {
    absl::StatusOr<ReleaseResult> r = g->agent->Unregister(o.owner.uuid, Caller::Internal());
    FUZZ_CHECK(r.ok() || r.status().code() == absl::StatusCode::kNotFound, r.status().ToString());
  }
  FUZZ_CHECK(g->agent->owner_count() == 0 && g->agent->lock_count() == 0, "the agent holds nothing");
}

}  // namespace
}  // namespace latchkey

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  using namespace latchkey;  // NOLINT
  (void)argc;
  fuzz::SetProgram((*argv)[0]);
  spdlog::set_level(spdlog::level::off);
  g = new Fixture;
  g->dir = fuzz::ScratchDir("protocol");
  g->verbose = getenv("LATCHKEY_FUZZ_VERBOSE") != nullptr;
  g->owner_pid = SpawnSleeper();
  atexit(KillSleeper);
  int p[2];
  FUZZ_CHECK(pipe(p) == 0, "pipe");
  close(p[1]);
  g->cancel_fd = p[0];

  const std::string plugin = fuzz::Runfile("backends/posixfd/latchkey-posixfd.so");
  AgentOptions options;
  options.plugin_path = {plugin.substr(0, plugin.rfind('/'))};
  options.journal_path = g->dir + "/journal.db";
  absl::StatusOr<Config> conf =
      Config::ParseText(absl::StrCat("posixfd_lock_dir = \"", g->dir, "/locks\"\n"), "fuzz");
  FUZZ_CHECK(conf.ok(), conf.status().ToString());
  options.backend_config = *conf;
  absl::StatusOr<std::unique_ptr<Agent>> agent = Agent::Start(options);
  FUZZ_CHECK(agent.ok(), agent.status().ToString());
  g->agent = *std::move(agent);
  ServerOptions so;
  so.socket_path = g->dir + "/latchd.sock";
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(g->agent.get(), so, [] {});
  FUZZ_CHECK(server.ok(), server.status().ToString());
  g->server = *std::move(server);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace latchkey;  // NOLINT
  const std::string input(reinterpret_cast<const char*>(data), size);
  int n = 0;
  for (absl::string_view piece : absl::StrSplit(input, '\n')) {
    if (++n > 32) break;
    std::string line(piece);
    Caller caller{0, getpid(), true};
    if (absl::ConsumePrefix(&piece, "@u ")) {
      line = std::string(piece);
      caller = Caller{65534, OwnerPid(), false};
    }
    bool reexec = false;
    const std::string answer = g->server->HandleLine(Sanitized(line), caller, g->cancel_fd, &reexec);
    CheckAnswer(line, answer);
    if (g->verbose) fprintf(stderr, "> %s\n< %s\n", line.c_str(), answer.c_str());
    if (reexec) g->agent->CancelExec();
  }
  ResetAgent();
  return 0;
}
