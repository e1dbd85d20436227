#include "tools/latchbench/clock_sync.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace latchkey {
namespace bench {
namespace {

constexpr uint64_t kMagic = 0x6c6b636c6f636b31;  // "lkclock1"

// A probe carries magic, sequence and t1; the answer adds t2 and t3. All
// fields in host order: both ends are this program on one architecture.
struct Packet {
  uint64_t magic;
  uint64_t seq;
  int64_t t1, t2, t3;
};

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

absl::Status Errno(const std::string& what) {
  return absl::UnavailableError(absl::StrCat(what, ": ", strerror(errno)));
}

}  // namespace

int64_t RealtimeNs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

nlohmann::json ClockOffset::ToJson() const {
  return {{"offset_ns", offset_ns},
          {"uncertainty_ns", uncertainty_ns},
          {"min_rtt_ns", min_rtt_ns},
          {"samples", samples}};
}

ClockOffset FromExchange(int64_t t1, int64_t t2, int64_t t3, int64_t t4) {
  ClockOffset o;
  o.offset_ns = ((t2 - t1) + (t3 - t4)) / 2;
  o.min_rtt_ns = (t4 - t1) - (t3 - t2);
  o.uncertainty_ns = (o.min_rtt_ns + 1) / 2;
  o.samples = 1;
  return o;
}

absl::Status ServeClock(int port, const std::atomic<bool>* stop) {
  if (port <= 0 || port > 65535) return absl::InvalidArgumentError(absl::StrCat("bad port ", port));
  Fd s(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (s.get() < 0) return Errno("socket");
  sockaddr_in a = {};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  if (bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    return Errno(absl::StrCat("bind UDP port ", port));
  }
  while (!*stop) {
    pollfd p = {s.get(), POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;
    Packet pk;
    sockaddr_in from = {};
    socklen_t len = sizeof from;
    const ssize_t n = recvfrom(s.get(), &pk, sizeof pk, 0, reinterpret_cast<sockaddr*>(&from), &len);
    const int64_t t2 = RealtimeNs();
    if (n != static_cast<ssize_t>(sizeof pk) || pk.magic != kMagic) continue;  // not a probe
    pk.t2 = t2;
    pk.t3 = RealtimeNs();
    sendto(s.get(), &pk, sizeof pk, 0, reinterpret_cast<sockaddr*>(&from), len);
  }
  return absl::OkStatus();
}

absl::StatusOr<ClockOffset> ProbeClock(const std::string& address, int port, int probes,
                                       int gap_ms) {
  if (probes < 1 || probes > 100000) {
    return absl::InvalidArgumentError(absl::StrCat("probes must be 1..100000, not ", probes));
  }
  sockaddr_in to = {};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(port));
  if (port <= 0 || port > 65535 || inet_pton(AF_INET, address.c_str(), &to.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("not an IPv4 address and port: ", address, ":", port));
  }
  Fd s(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (s.get() < 0) return Errno("socket");
  if (connect(s.get(), reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) return Errno("connect");
  ClockOffset best;
  int answered = 0;
  for (int i = 0; i < probes; ++i) {
    Packet pk = {kMagic, static_cast<uint64_t>(i), RealtimeNs(), 0, 0};
    if (send(s.get(), &pk, sizeof pk, 0) != static_cast<ssize_t>(sizeof pk)) return Errno("send");
    const int64_t deadline = pk.t1 + 500'000'000;
    for (;;) {  // this probe's answer; stale answers to earlier probes are dropped
      const int64_t now = RealtimeNs();
      if (now >= deadline) break;
      pollfd p = {s.get(), POLLIN, 0};
      if (poll(&p, 1, static_cast<int>((deadline - now) / 1'000'000) + 1) <= 0) continue;
      Packet got;
      const ssize_t n = recv(s.get(), &got, sizeof got, 0);
      const int64_t t4 = RealtimeNs();
      if (n != static_cast<ssize_t>(sizeof got) || got.magic != kMagic || got.seq != pk.seq) {
        continue;
      }
      ClockOffset o = FromExchange(got.t1, got.t2, got.t3, t4);
      if (answered == 0 || o.min_rtt_ns < best.min_rtt_ns) best = o;
      ++answered;
      break;
    }
    if (gap_ms > 0) usleep(static_cast<useconds_t>(gap_ms) * 1000);
  }
  if (answered * 4 < probes) {
    return absl::UnavailableError(absl::StrCat("only ", answered, " of ", probes, " clock probes to ",
                                               address, ":", port, " were answered"));
  }
  best.samples = answered;
  return best;
}

}  // namespace bench
}  // namespace latchkey
