// The client side of the latchd protocol (docs/protocol.md): connect to
// latchd's Unix socket, send one request, read its response.
//
// Call() fills in "v" and "id", writes the request as one line and reads one
// response line. A response with "ok": true is returned as its result object
// (the response without "v", "id" and "ok"); one with "ok": false becomes an
// absl::Status whose code is the protocol's error code and whose message is
// latchd's message, so callers act on codes exactly as for local calls.
//
// Example:
//   absl::StatusOr<LatchdClient> c =
//       LatchdClient::Connect(DefaultSocketPath(), absl::Seconds(10));
//   if (!c.ok()) return c.status();  // "latchd is not running at ..." etc.
//   absl::StatusOr<nlohmann::json> r = c->Call({{"op", "status"}});
//   if (!r.ok()) return r.status();
//   for (const auto& o : (*r)["owners"]) ...
//
// Thread safety: thread-compatible. A LatchdClient is one connection; use
// one per thread (or serialise calls yourself).
#ifndef LATCHKEY_AGENT_CLIENT_H_
#define LATCHKEY_AGENT_CLIENT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include <nlohmann/json.hpp>

namespace latchkey {

// The longest request line latchd accepts, newline included.
inline constexpr size_t kMaxRequestLine = 65536;

// Where latchd listens unless told otherwise.
inline constexpr char kDefaultLatchdSocket[] = "/run/latchkey/latchd.sock";

// $LATCHD_SOCKET when set and non-empty, else kDefaultLatchdSocket.
std::string DefaultSocketPath();

// The absl code for a protocol error code name ("unavailable",
// "failed_precondition", ...); kUnknown for a name it does not know.
absl::StatusCode StatusCodeFromName(absl::string_view name);

class LatchdClient {
 public:
  // Connects to the latchd socket at `socket_path`, waiting at most
  // `timeout` (latchd may be busy re-executing; its backlog holds us).
  // `timeout` is also the default limit for each Call.
  // Errors, each naming the socket path:
  //   FailedPrecondition: nothing listens there ("latchd is not running at
  //     PATH"): the socket is missing or the connection was refused.
  //   PermissionDenied: the socket cannot be opened by this user.
  //   DeadlineExceeded: latchd did not accept within `timeout`.
  //   InvalidArgument: the path is too long for a Unix socket.
  static absl::StatusOr<LatchdClient> Connect(const std::string& socket_path,
                                              absl::Duration timeout);

  LatchdClient(LatchdClient&& other) noexcept;
  LatchdClient& operator=(LatchdClient&& other) noexcept;
  LatchdClient(const LatchdClient&) = delete;
  LatchdClient& operator=(const LatchdClient&) = delete;
  ~LatchdClient();

  // Sends `request` (a JSON object with at least "op"; "v" and "id" are set
  // here) and returns the result object of its response. Waits at most the
  // Connect timeout, or `timeout` in the second form (InfiniteDuration: no
  // limit; use it, or a limit longer than the wait, for a waiting acquire).
  // Errors: latchd's code and message when it refused the request;
  // otherwise
  //   InvalidArgument: `request` is not an object, or is longer than a
  //     request line may be (kMaxRequestLine);
  //   DeadlineExceeded: no complete response within the limit;
  //   Internal: the connection broke, latchd closed it, or the response is
  //     malformed (the message names the socket).
  // After such a transport failure the connection is closed (connected()
  // is false) and every later Call fails: connect again. A connection
  // latchd closed while it was idle (docs/protocol.md, "Limits") is opened
  // again before a request is sent, never after. Errors latchd
  // sends leave the connection open.
  absl::StatusOr<nlohmann::json> Call(const nlohmann::json& request);
  absl::StatusOr<nlohmann::json> Call(const nlohmann::json& request,
                                      absl::Duration timeout);

  bool connected() const { return fd_ >= 0; }
  const std::string& socket_path() const { return socket_path_; }

 private:
  LatchdClient(int fd, std::string socket_path, absl::Duration timeout)
      : fd_(fd), socket_path_(std::move(socket_path)), timeout_(timeout) {}

  // latchd closes connections idle for its idle_timeout_ms: when it has,
  // connects again (nothing was in flight, so nothing is lost or repeated).
  absl::Status ReopenIfClosedWhileIdle();
  absl::Status WriteAll(const std::string& data, absl::Time deadline);
  absl::StatusOr<std::string> ReadLine(absl::Time deadline);
  void Close();
  absl::Status Broken(const std::string& what);  // Close(); Internal naming the socket

  int fd_ = -1;
  std::string socket_path_;
  absl::Duration timeout_;
  int64_t next_id_ = 1;
  std::string buffer_;  // bytes read past the last response line
};

}  // namespace latchkey

#endif  // LATCHKEY_AGENT_CLIENT_H_
