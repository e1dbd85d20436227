// latchd's socket side: accepts connections on a Unix stream socket, checks
// each peer's uid, reads newline-delimited JSON requests and answers them
// through an Agent. The protocol is docs/protocol.md.
//
// One thread per connection: requests of one connection are answered in
// order, and a waiting acquire blocks only its own connection. A waiting
// acquire ends (cancelled, nothing taken) when its client disconnects.
//
// No peer can take the server from others: a connection with nothing in
// flight closes after `idle_timeout`, a request line must arrive whole
// within `request_timeout`, a response must be taken within
// `send_timeout`, and one uid holds at most `max_clients_per_uid`
// connections. When a limit is reached, the connection of that uid (or, at
// `max_clients`, of anyone) that has gone longest without an answered
// request, idle or trickling one in, is closed to make room. Never closed
// for room: a connection being answered, one whose request bytes wait
// unread, and a privileged peer's (root, latchd's uid) for an unprivileged
// newcomer. When none can go, privileged peers still get one of
// kAdminReserve extra connections, so an administrator can always ask for
// `status`.
//
// Thread safety: Start and Stop from one thread; HandleLine is thread-safe.
#ifndef LATCHKEY_AGENT_SERVER_H_
#define LATCHKEY_AGENT_SERVER_H_

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/agent.h"

namespace latchkey {

inline constexpr int kProtocolVersion = 1;

// Connections beyond every limit that privileged peers may still open.
inline constexpr size_t kAdminReserve = 8;

struct ServerOptions {
  std::string socket_path = "/run/latchkey/latchd.sock";
  std::vector<uid_t> allowed_uids = {0};
  size_t max_request_bytes = 65536;
  size_t max_clients = 1024;
  size_t max_clients_per_uid = 256;
  absl::Duration idle_timeout = absl::Seconds(60);
  absl::Duration request_timeout = absl::Seconds(10);
  absl::Duration send_timeout = absl::Seconds(10);
  // A listening socket inherited across a re-exec; -1 binds socket_path.
  int inherited_fd = -1;
};

class Server {
 public:
  // Binds socket_path (mode 0600; refuses when another latchd answers
  // there, removes a stale socket file otherwise) or takes inherited_fd,
  // and starts accepting. `on_reexec` runs after a successful `reexec`
  // response has been sent.
  static absl::StatusOr<std::unique_ptr<Server>> Start(Agent* agent, ServerOptions options,
                                                       std::function<void()> on_reexec);

  // Stops accepting and shuts every connection down (a waiting acquire on
  // one is cancelled). With `keep_listening` the listening socket stays
  // open (for a re-exec); otherwise it is closed and its file removed.
  // Connection threads are not waited for: the process is about to exit
  // or exec.
  void Stop(bool keep_listening);

  int listen_fd() const { return listen_fd_; }

  // Answers one request line (without its newline) from `caller` with one
  // response line (without newline); never throws, whatever the line.
  // `cancel_fd` is passed to a waiting acquire (AcquireOptions::cancel_fd);
  // -1 for none. Sets *reexec when the request was a successful `reexec`.
  std::string HandleLine(const std::string& line, const Caller& caller, int cancel_fd,
                         bool* reexec);

 private:
  struct Conn;
  Server(Agent* agent, ServerOptions options, std::function<void()> on_reexec, int fd);
  void AcceptLoop();
  // Registers a new connection of `caller`, closing an idle one when a
  // limit is reached. Null (and a reason) when it must be refused.
  std::shared_ptr<Conn> Admit(int fd, const Caller& caller, std::string* refusal);
  // The connection to close to make room (nothing in flight, longest
  // without an answered request), of `uid` only unless `any_uid`.
  // REQUIRES: conn_mu_ held.
  std::shared_ptr<Conn> IdlestLocked(const Caller& newcomer, bool any_uid) const;
  void Serve(std::shared_ptr<Conn> conn);
  // The error line (with its newline) for a request over max_request_bytes.
  std::string TooLong() const;
  std::string Handle(const std::string& line, const Caller& caller, int cancel_fd,
                     bool* reexec);

  Agent* const agent_;
  const ServerOptions options_;
  const std::function<void()> on_reexec_;
  const int listen_fd_;
  int stop_fd_ = -1;
  std::thread accept_thread_;
  std::mutex conn_mu_;
  std::map<int, std::shared_ptr<Conn>> conns_;  // by descriptor
  std::map<uid_t, size_t> per_uid_;
};

}  // namespace latchkey

#endif  // LATCHKEY_AGENT_SERVER_H_
