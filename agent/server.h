// latchd's socket side: accepts connections on a Unix stream socket, checks
// each peer's uid, reads newline-delimited JSON requests and answers them
// through an Agent. The protocol is docs/protocol.md.
//
// One thread per connection: requests of one connection are answered in
// order, and a waiting acquire blocks only its own connection.
//
// Thread safety: Start and Stop from one thread; HandleLine is thread-safe.
#ifndef LATCHKEY_AGENT_SERVER_H_
#define LATCHKEY_AGENT_SERVER_H_

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/agent.h"

namespace latchkey {

inline constexpr int kProtocolVersion = 1;

struct ServerOptions {
  std::string socket_path = "/run/latchkey/latchd.sock";
  std::vector<uid_t> allowed_uids = {0};
  size_t max_request_bytes = 65536;
  size_t max_clients = 1024;
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

  // Stops accepting and shuts every connection down. With `keep_listening`
  // the listening socket stays open (for a re-exec); otherwise it is closed
  // and its file removed. Connection threads blocked in a waiting acquire
  // are not waited for: the process is about to exit or exec.
  void Stop(bool keep_listening);

  int listen_fd() const { return listen_fd_; }

  // Answers one request line (without its newline) with one response line
  // (without newline). Sets *reexec when the request was a successful
  // `reexec`.
  std::string HandleLine(const std::string& line, bool* reexec);

 private:
  Server(Agent* agent, ServerOptions options, std::function<void()> on_reexec, int fd);
  void AcceptLoop();
  std::string TooLong() const;
  void Serve(int fd);

  Agent* const agent_;
  const ServerOptions options_;
  const std::function<void()> on_reexec_;
  const int listen_fd_;
  int stop_fd_ = -1;
  std::thread accept_thread_;
  std::atomic<size_t> clients_{0};
  std::mutex conn_mu_;
  std::vector<int> conns_;
};

}  // namespace latchkey

#endif  // LATCHKEY_AGENT_SERVER_H_
