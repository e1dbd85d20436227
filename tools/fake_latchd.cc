// A broken "latchd" for latchctl_test.sh: listens on a Unix socket and
// never answers ("mute": accepts, reads, keeps the connection open), closes
// every connection at once ("close"), or never accepts, its backlog full
// ("full": connecting times out). Runs until killed.
//
//   fake_latchd SOCKET mute|close|full
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  const std::string mode = argc == 3 ? argv[2] : "";
  if (mode != "mute" && mode != "close" && mode != "full") {
    fprintf(stderr, "usage: fake_latchd SOCKET mute|close|full\n");
    return 2;
  }
  const bool mute = mode == "mute";
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  if (strlen(argv[1]) >= sizeof(addr.sun_path)) {
    fprintf(stderr, "fake_latchd: socket path too long: %s\n", argv[1]);
    return 2;
  }
  strcpy(addr.sun_path, argv[1]);
  const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  unlink(argv[1]);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      listen(fd, mode == "full" ? 0 : 16) != 0) {
    perror("fake_latchd");
    return 1;
  }
  if (mode == "full") {
    // A backlog of 0 holds one pending connection: take it ourselves.
    const int self = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(self, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      perror("fake_latchd: connect");
      return 1;
    }
    for (;;) pause();
  }
  std::vector<int> held;  // mute: open connections that never get an answer
  for (;;) {
    const int c = accept(fd, nullptr, nullptr);
    if (c < 0) continue;
    if (mute) {
      char buf[4096];
      (void)!read(c, buf, sizeof(buf));  // take the request, answer nothing
      held.push_back(c);
    } else {
      close(c);
    }
  }
}
