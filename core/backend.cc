#include "core/backend.h"

#include <poll.h>

namespace latchkey {

bool WaitCancelled(int cancel_fd) {
  if (cancel_fd < 0) return false;
  pollfd p = {cancel_fd, 0, 0};
  // No events asked for: only a hang-up, an error or a closed descriptor
  // can be reported, never data a client pipelined behind its request.
  return poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR | POLLNVAL)) != 0;
}

}  // namespace latchkey
