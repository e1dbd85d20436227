#include "tools/latchbench/hosts_runner.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "tools/latchbench/handoff_samples.h"

namespace latchkey {
namespace bench {
namespace {

using json = nlohmann::json;

constexpr char kDefaultSocket[] = "/run/latchkey/latchd.sock";  // agent/client.h
// latchbench's leases on a host's latchd: in a lockspace of their own.
constexpr char kLockspace[] = "latchbench";

bool Plain(absl::string_view s) {
  for (char c : s) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) &&
        std::string("._-@:/+").find(c) == std::string::npos) {
      return false;
    }
  }
  return true;
}

// The first line of a command's error output (or of its output), for a
// message.
std::string FirstLine(const RemoteShell::Result& r) {
  std::string s(absl::StripAsciiWhitespace(r.err.empty() ? r.out : r.err));
  if (s.empty()) return absl::StrCat("exit status ", r.status);
  s = s.substr(0, s.find('\n'));
  return r.status == 124 ? s + " (timed out)" : s;
}

}  // namespace

absl::StatusOr<std::vector<HostSpec>> ParseHosts(const std::string& list) {
  std::vector<HostSpec> hosts;
  for (absl::string_view entry : absl::StrSplit(list, ',')) {
    HostSpec h;
    std::pair<std::string, std::string> p = absl::StrSplit(entry, absl::MaxSplits('=', 1));
    h.host = p.first;
    h.socket = p.second.empty() ? kDefaultSocket : p.second;
    if (h.host.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--hosts: an entry without a host ('", entry, "'): HOST[=SOCKET],..."));
    }
    if (!Plain(h.host) || !Plain(h.socket)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--hosts: '", entry, "' has a character other than letters, digits and ._-@:/+"));
    }
    if (h.socket[0] != '/') {
      return absl::InvalidArgumentError(
          absl::StrCat("--hosts: the socket of ", h.host, " must be an absolute path, not '",
                       h.socket, "'"));
    }
    if (h.socket.size() > 107) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--hosts: the socket of ", h.host, " is longer than a Unix socket path may be (107)"));
    }
    hosts.push_back(std::move(h));
  }
  return hosts;
}

absl::StatusOr<std::unique_ptr<HostsRunner>> HostsRunner::Start(const HostsSetup& setup) {
  absl::StatusOr<RemoteShell> sh = RemoteShell::Parse(setup.rsh);
  if (!sh.ok()) return sh.status();
  if (setup.hosts.empty()) return absl::InvalidArgumentError("--hosts names no host");
  std::unique_ptr<HostsRunner> r(new HostsRunner(setup, *sh));
  r->topology_ = {{"rsh", setup.rsh}, {"hosts", json::array()}};
  for (size_t i = 0; i < setup.hosts.size(); ++i) {
    const HostSpec& h = setup.hosts[i];
    // A private directory, the binary written into it from our stdin.
    absl::StatusOr<RemoteShell::Result> c = r->sh_.Run(
        h.host,
        "d=$(mktemp -d /tmp/latchbench-node.XXXXXX) && cat > \"$d/latchbench-node\" && "
        "chmod 700 \"$d/latchbench-node\" && echo \"$d\"",
        absl::Minutes(5), setup.node_binary);
    if (!c.ok()) return c.status();
    const std::string dir(absl::StripAsciiWhitespace(c->out));
    if (c->status != 0 || dir.rfind("/tmp/latchbench-node.", 0) != 0) {
      return absl::UnavailableError(absl::StrCat(r->Where(i), ": cannot copy latchbench-node (",
                                                 r->sh_.Argv(h.host, "...")[0],
                                                 "): ", FirstLine(*c)));
    }
    r->dirs_.push_back(dir);
    absl::StatusOr<RemoteShell::Result> hello =
        r->sh_.Run(h.host, r->Node(i, {"hello", h.socket}), absl::Seconds(60));
    if (!hello.ok()) return hello.status();
    json j = json::parse(hello->out, nullptr, false);
    if (hello->status != 0 || !j.is_object() || !j.contains("hello")) {
      return absl::UnavailableError(absl::StrCat(r->Where(i), ": no answer from latchd at ",
                                                 h.socket, ": ", FirstLine(*hello)));
    }
    j["host"] = h.host;
    j["socket"] = h.socket;
    r->topology_["hosts"].push_back(j);
  }
  return r;
}

HostsRunner::~HostsRunner() {
  for (size_t i = 0; i < dirs_.size(); ++i) {
    (void)sh_.Run(setup_.hosts[i].host, absl::StrCat("rm -rf ", ShellQuote(dirs_[i])),
                  absl::Seconds(60));
  }
}

std::string HostsRunner::Where(size_t i) const {
  return absl::StrCat("host", i + 1, " (", setup_.hosts[i].host, ")");
}

std::string HostsRunner::Node(size_t i, const std::vector<std::string>& args) const {
  std::string cmd = ShellQuote(dirs_[i] + "/latchbench-node");
  for (const std::string& a : args) absl::StrAppend(&cmd, " ", ShellQuote(a));
  return cmd;
}

std::vector<std::string> HostsRunner::Backends() const {
  std::vector<std::string> common;
  for (const json& b : topology_["hosts"][0]["hello"].value("backends", json::array())) {
    if (!b.is_string()) continue;
    bool everywhere = true;
    for (const json& h : topology_["hosts"]) {
      bool has = false;
      for (const json& c : h["hello"].value("backends", json::array())) has = has || c == b;
      everywhere = everywhere && has;
    }
    if (everywhere) common.push_back(b.get<std::string>());
  }
  return common;
}

absl::StatusOr<std::vector<double>> HostsRunner::Cycles(int host, const std::string& backend,
                                                        LockMode mode, const std::string& lease,
                                                        int warmup, int cycles,
                                                        double max_seconds) {
  const size_t i = static_cast<size_t>(host - 1);
  absl::StatusOr<RemoteShell::Result> r = sh_.Run(
      setup_.hosts[i].host,
      Node(i, {"cycles", backend, "latchd", std::string(LockModeName(mode)), kLockspace, lease,
               absl::StrCat(warmup), absl::StrCat(cycles),
               absl::StrCat("--socket=", setup_.hosts[i].socket),
               absl::StrCat("--max-seconds=", max_seconds)}),
      absl::Minutes(30));
  if (!r.ok()) return r.status();
  json j = json::parse(r->out, nullptr, false);
  if (r->status != 0 || !j.is_object() || !j.contains("samples") || !j["samples"].is_array()) {
    return absl::InternalError(absl::StrCat(Where(i), ": ", FirstLine(*r)));
  }
  last_cost_ = j.contains("cost") ? j["cost"] : json();
  if (last_cost_.is_object()) last_cost_["node"] = absl::StrCat("host", host);
  return j["samples"].get<std::vector<double>>();
}

absl::StatusOr<json> HostsRunner::MeasureClocks() {
  constexpr int kProbes = 200;
  if (hosts() < 2) return absl::FailedPreconditionError("one host has no clock to compare");
  // Host 1's server, in the background there: its PID is our answer.
  absl::StatusOr<RemoteShell::Result> server = sh_.Run(
      setup_.hosts[0].host,
      absl::StrCat(Node(0, {"clock-serve", absl::StrCat(setup_.clock_port)}),
                   " >/dev/null 2>&1 </dev/null & echo $!"),
      absl::Seconds(60));
  if (!server.ok()) return server.status();
  const std::string pid(absl::StripAsciiWhitespace(server->out));
  if (server->status != 0 || pid.empty()) {
    return absl::InternalError(absl::StrCat(Where(0), ": clock server: ", FirstLine(*server)));
  }
  std::string address = setup_.hosts[0].host;
  if (size_t at = address.rfind('@'); at != std::string::npos) address = address.substr(at + 1);
  json hosts = json::array();
  absl::Status failed;
  for (size_t k = 1; k < setup_.hosts.size() && failed.ok(); ++k) {
    absl::StatusOr<RemoteShell::Result> r = sh_.Run(
        setup_.hosts[k].host,
        Node(k, {"clock-probe", address, absl::StrCat(setup_.clock_port), absl::StrCat(kProbes)}),
        absl::Seconds(60));
    json o;
    if (!r.ok()) {
      failed = r.status();
    } else if (r->status != 0 || !(o = json::parse(r->out, nullptr, false)).is_object()) {
      failed = absl::InternalError(
          absl::StrCat("clock probe from ", Where(k), " to ", address, ":", setup_.clock_port,
                       " (UDP): ", FirstLine(*r)));
    } else {
      o["offset_ns"] = -o["offset_ns"].get<int64_t>();  // host k's minus host 1's
      o["host"] = k + 1;
      if (k == 1) {
        clock_offset_ = o["offset_ns"].get<int64_t>();
        clock_uncertainty_ = o["uncertainty_ns"].get<int64_t>();
        clocks_measured_ = true;
      }
      hosts.push_back(o);
    }
  }
  (void)sh_.Run(setup_.hosts[0].host, absl::StrCat("kill ", pid, " 2>/dev/null; true"),
                absl::Seconds(60));
  if (!failed.ok()) return failed;
  return json{{"reference", "host1"},
              {"hosts", hosts},
              {"measured_at", absl::ToUnixNanos(absl::Now())},
              {"method", "NTP-style UDP exchange between the hosts, the exchange with the "
                         "shortest round trip of 200; true offset within +- uncertainty"}};
}

absl::StatusOr<std::vector<double>> HostsRunner::Handoffs(const std::string& backend,
                                                          const std::string& lease, int rounds,
                                                          int hold_ms, double max_seconds) {
  if (hosts() < 2) return absl::FailedPreconditionError("hand-offs need two hosts");
  if (!clocks_measured_) {
    if (absl::StatusOr<json> c = MeasureClocks(); !c.ok()) return c.status();
  }
  // Both loops at once; each prints its log when it ends.
  std::vector<std::pair<std::string, std::string>> commands;
  for (size_t i : {0, 1}) {
    const std::string log = absl::StrCat(dirs_[i], "/handoff.log");
    commands.emplace_back(
        setup_.hosts[i].host,
        absl::StrCat(Node(i, {"handoff", backend, "latchd", kLockspace, lease,
                              absl::StrCat(rounds), absl::StrCat(hold_ms), log,
                              absl::StrCat("--socket=", setup_.hosts[i].socket),
                              absl::StrCat("--max-seconds=", max_seconds)}),
                     " >/dev/null 2>&1; cat ", ShellQuote(log), "; rm -f ", ShellQuote(log)));
  }
  // A waiting acquire gives up after 120 s: this bounds the wait.
  const double limit = (max_seconds > 0 ? max_seconds : 600) + 150;
  absl::StatusOr<std::vector<RemoteShell::Result>> r =
      sh_.RunAll(commands, absl::Seconds(limit));
  if (!r.ok()) return r.status();
  std::vector<HandoffEvent> events;
  for (size_t i : {0, 1}) {
    if ((*r)[i].status != 0) {
      return absl::InternalError(absl::StrCat(Where(i), "'s hand-off loop: ", FirstLine((*r)[i])));
    }
    if (absl::Status s = ParseHandoffLog((*r)[i].out, static_cast<int>(i) + 1, Where(i), &events);
        !s.ok()) {
      return s;
    }
  }
  return HandoffSamples(std::move(events), clock_offset_, clock_uncertainty_, lease);
}

}  // namespace bench
}  // namespace latchkey
