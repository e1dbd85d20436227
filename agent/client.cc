#include "agent/client.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace latchkey {
namespace {

// A response line longer than this is treated as a broken latchd.
constexpr size_t kMaxResponseLine = 64 << 20;

struct CodeName {
  absl::StatusCode code;
  const char* name;
};

constexpr CodeName kCodeNames[] = {
    {absl::StatusCode::kOk, "ok"},
    {absl::StatusCode::kCancelled, "cancelled"},
    {absl::StatusCode::kUnknown, "unknown"},
    {absl::StatusCode::kInvalidArgument, "invalid_argument"},
    {absl::StatusCode::kDeadlineExceeded, "deadline_exceeded"},
    {absl::StatusCode::kNotFound, "not_found"},
    {absl::StatusCode::kAlreadyExists, "already_exists"},
    {absl::StatusCode::kPermissionDenied, "permission_denied"},
    {absl::StatusCode::kResourceExhausted, "resource_exhausted"},
    {absl::StatusCode::kFailedPrecondition, "failed_precondition"},
    {absl::StatusCode::kAborted, "aborted"},
    {absl::StatusCode::kOutOfRange, "out_of_range"},
    {absl::StatusCode::kUnimplemented, "unimplemented"},
    {absl::StatusCode::kInternal, "internal"},
    {absl::StatusCode::kUnavailable, "unavailable"},
    {absl::StatusCode::kDataLoss, "data_loss"},
    {absl::StatusCode::kUnauthenticated, "unauthenticated"},
};

// Milliseconds left until `deadline`, for poll(): -1 for no limit.
int PollTimeoutMs(absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return -1;
  const absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  const int64_t ms = absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1)));
  return ms > INT_MAX ? INT_MAX : static_cast<int>(ms);
}

absl::Time DeadlineAfter(absl::Duration timeout) {
  return timeout == absl::InfiniteDuration() ? absl::InfiniteFuture() : absl::Now() + timeout;
}

}  // namespace

std::string DefaultSocketPath() {
  const char* env = getenv("LATCHD_SOCKET");
  return env != nullptr && env[0] != '\0' ? env : kDefaultLatchdSocket;
}

absl::StatusCode StatusCodeFromName(absl::string_view name) {
  for (const CodeName& c : kCodeNames) {
    if (name == c.name) return c.code;
  }
  return absl::StatusCode::kUnknown;
}

absl::StatusOr<LatchdClient> LatchdClient::Connect(const std::string& socket_path,
                                                   absl::Duration timeout) {
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("latchd socket path '", socket_path, "' must be 1..",
                                                   sizeof(addr.sun_path) - 1, " bytes long"));
  }
  memcpy(addr.sun_path, socket_path.data(), socket_path.size());

  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("cannot create a socket for latchd at ", socket_path,
                                            ": ", strerror(errno)));
  }
  // A blocking connect to a Unix socket waits while latchd's backlog is
  // full; SO_SNDTIMEO bounds that wait (0 would mean "no limit").
  timeval tv = {0, 0};
  if (timeout != absl::InfiniteDuration()) {
    tv = absl::ToTimeval(std::max(timeout, absl::Microseconds(1)));
  }
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));

  int rc;
  do {
    rc = connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    const int err = errno;
    close(fd);
    const std::string why = strerror(err);
    switch (err) {
      case ENOENT:
      case ECONNREFUSED:
      case ENOTDIR:
        return absl::FailedPreconditionError(absl::StrCat(
            "latchd is not running at ", socket_path, " (connect: ", why,
            "); start latchd, or name its socket with --socket or $LATCHD_SOCKET"));
      case EACCES:
      case EPERM:
        return absl::PermissionDeniedError(
            absl::StrCat("cannot connect to latchd at ", socket_path, ": ", why));
      case EAGAIN:
      case EINPROGRESS:
      case ETIMEDOUT:
        return absl::DeadlineExceededError(absl::StrCat(
            "latchd at ", socket_path, " did not accept the connection within ",
            absl::FormatDuration(timeout)));
      default:
        return absl::FailedPreconditionError(
            absl::StrCat("cannot connect to latchd at ", socket_path, ": ", why));
    }
  }
  return LatchdClient(fd, socket_path, timeout);
}

LatchdClient::LatchdClient(LatchdClient&& other) noexcept
    : fd_(other.fd_),
      socket_path_(std::move(other.socket_path_)),
      timeout_(other.timeout_),
      next_id_(other.next_id_),
      buffer_(std::move(other.buffer_)) {
  other.fd_ = -1;
}

LatchdClient& LatchdClient::operator=(LatchdClient&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
    socket_path_ = std::move(other.socket_path_);
    timeout_ = other.timeout_;
    next_id_ = other.next_id_;
    buffer_ = std::move(other.buffer_);
  }
  return *this;
}

LatchdClient::~LatchdClient() {
  if (fd_ >= 0) close(fd_);
}

void LatchdClient::Close() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  buffer_.clear();
}

absl::Status LatchdClient::Broken(const std::string& what) {
  Close();
  return absl::InternalError(absl::StrCat("latchd at ", socket_path_, ": ", what));
}

absl::Status LatchdClient::WriteAll(const std::string& data, absl::Time deadline) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n =
        send(fd_, data.data() + done, data.size() - done, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p = {fd_, POLLOUT, 0};
      const int r = poll(&p, 1, PollTimeoutMs(deadline));
      if (r == 0) return absl::DeadlineExceededError("sending the request timed out");
      if (r < 0 && errno != EINTR) return absl::InternalError(strerror(errno));
      continue;
    }
    return absl::InternalError(absl::StrCat("sending the request: ", strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> LatchdClient::ReadLine(absl::Time deadline) {
  size_t scanned = 0;
  for (;;) {
    const size_t nl = buffer_.find('\n', scanned);
    if (nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return line;
    }
    scanned = buffer_.size();
    if (buffer_.size() > kMaxResponseLine) {
      return Broken(absl::StrCat("response longer than ", kMaxResponseLine, " bytes"));
    }
    pollfd p = {fd_, POLLIN, 0};
    const int r = poll(&p, 1, PollTimeoutMs(deadline));
    if (r == 0) {
      Close();
      return absl::DeadlineExceededError(
          absl::StrCat("latchd at ", socket_path_, " did not answer in time"));
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      return Broken(absl::StrCat("poll: ", strerror(errno)));
    }
    char chunk[65536];
    const ssize_t n = recv(fd_, chunk, sizeof(chunk), MSG_DONTWAIT);
    if (n > 0) {
      buffer_.append(chunk, static_cast<size_t>(n));
    } else if (n == 0) {
      return Broken(buffer_.empty() ? "latchd closed the connection without answering"
                                    : "latchd closed the connection in the middle of a response");
    } else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
      return Broken(absl::StrCat("reading the response: ", strerror(errno)));
    }
  }
}

absl::Status LatchdClient::ReopenIfClosedWhileIdle() {
  if (!buffer_.empty()) return absl::OkStatus();
  pollfd p = {fd_, POLLIN, 0};
  char c;
  if (poll(&p, 1, 0) <= 0 || recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT) != 0) {
    return absl::OkStatus();  // open (or with bytes to read: the answer path reports them)
  }
  // latchd closed the connection while nothing was in flight (its idle
  // timeout): nothing of ours is lost, so connect again before sending.
  absl::StatusOr<LatchdClient> fresh = Connect(socket_path_, timeout_);
  if (!fresh.ok()) {
    return Broken(absl::StrCat("latchd closed the connection, and connecting again failed: ",
                               fresh.status().message()));
  }
  std::swap(fd_, fresh->fd_);
  return absl::OkStatus();
}

absl::StatusOr<nlohmann::json> LatchdClient::Call(const nlohmann::json& request) {
  return Call(request, timeout_);
}

absl::StatusOr<nlohmann::json> LatchdClient::Call(const nlohmann::json& request,
                                                  absl::Duration timeout) {
  if (fd_ < 0) {
    return absl::InternalError(
        absl::StrCat("the connection to latchd at ", socket_path_, " is closed; connect again"));
  }
  if (!request.is_object() || !request.contains("op")) {
    return absl::InvalidArgumentError("a latchd request must be a JSON object with an \"op\"");
  }
  nlohmann::json req = request;
  const int64_t id = next_id_++;
  req["v"] = 1;
  req["id"] = id;
  std::string line;
  try {
    line = req.dump();
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("request cannot be sent: ", e.what()));
  }
  line += '\n';
  if (line.size() > kMaxRequestLine) {
    return absl::InvalidArgumentError(absl::StrCat("request is ", line.size(),
                                                   " bytes long; latchd takes at most ",
                                                   kMaxRequestLine));
  }

  const absl::Time deadline = DeadlineAfter(timeout);
  if (absl::Status s = ReopenIfClosedWhileIdle(); !s.ok()) return s;
  if (absl::Status w = WriteAll(line, deadline); !w.ok()) {
    // latchd may have answered and closed before reading (a peer it does
    // not allow gets one permission_denied response): prefer that answer.
    absl::StatusOr<std::string> early = ReadLine(absl::Now());
    if (!early.ok()) {
      if (w.code() == absl::StatusCode::kDeadlineExceeded) {
        Close();
        return absl::DeadlineExceededError(
            absl::StrCat("latchd at ", socket_path_, " did not take the request in time"));
      }
      return Broken(std::string(w.message()));
    }
    line = *std::move(early);
  } else {
    absl::StatusOr<std::string> got = ReadLine(deadline);
    if (!got.ok()) return got.status();
    line = *std::move(got);
  }

  nlohmann::json resp = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (resp.is_discarded() || !resp.is_object()) {
    return Broken(absl::StrCat("response is not a JSON object: ", line.substr(0, 200)));
  }
  const auto ok = resp.find("ok");
  if (ok == resp.end() || !ok->is_boolean()) {
    return Broken(absl::StrCat("response lacks a boolean \"ok\": ", line.substr(0, 200)));
  }
  const auto rid = resp.find("id");
  const bool id_matches = rid != resp.end() && rid->is_number_integer() && *rid == id;
  // An error sent before latchd read any request (permission_denied) has no id.
  const bool unsolicited_error = !ok->get<bool>() && (rid == resp.end() || rid->is_null());
  if (!id_matches && !unsolicited_error) {
    return Broken(absl::StrCat("response id ", rid == resp.end() ? "(none)" : rid->dump(),
                               " does not match request id ", id));
  }
  if (!ok->get<bool>()) {
    const auto err = resp.find("error");
    std::string code = "unknown";
    std::string message = "latchd refused the request without saying why";
    if (err != resp.end() && err->is_object()) {
      if (auto c = err->find("code"); c != err->end() && c->is_string()) code = *c;
      if (auto m = err->find("message"); m != err->end() && m->is_string()) message = *m;
    }
    const absl::StatusCode sc = StatusCodeFromName(code);
    if (sc == absl::StatusCode::kOk) {
      return Broken(absl::StrCat("error response with code \"ok\": ", line.substr(0, 200)));
    }
    if (sc == absl::StatusCode::kUnknown && code != "unknown") {
      message = absl::StrCat(code, ": ", message);
    }
    return absl::Status(sc, message);
  }
  resp.erase("v");
  resp.erase("id");
  resp.erase("ok");
  return resp;
}

}  // namespace latchkey
