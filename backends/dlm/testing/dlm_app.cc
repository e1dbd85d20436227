// dlm_app: another program using the kernel DLM beside latchkey, with raw
// libdlm, for the lab tests (an application sharing a lockspace, its
// orphans, its lock value blocks). One command per run, in lockspace LS:
//
//   dlm_app hold LS NAME MODE     lock NAME (waiting), print "held PID", keep
//                                 it until stdin closes
//   dlm_app orphan LS NAME MODE   a persistent lock, then exit: it stays on
//                                 this node as an orphan; prints "orphaned"
//   dlm_app adopt LS NAME MODE    adopt this node's orphan (LKF_ORPHAN) and
//                                 release it: "adopted", or "none" (no such
//                                 orphan), "other-mode"
//   dlm_app try LS NAME MODE      "granted" (then released) or "busy"
//   dlm_app setlvb LS NAME TEXT   write TEXT as NAME's lock value block and
//                                 keep an NL lock (so the DLM keeps it) until
//                                 stdin closes; prints "set"
//   dlm_app getlvb LS NAME        print the lock value block: "lvb HEX TEXT"
//
// MODE: nl pr cw ex. Locks are released without writing a lock value block
// (converted to NL first: libdlm's own unlock sends uninitialised bytes).
// Exit status 0, or 1 with the reason on stderr.
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <condition_variable>
#include <mutex>
#include <string>

extern "C" {
#include <libdlm.h>
}

namespace {

struct Request {
  dlm_lksb lksb{};
  char lvb[DLM_LVB_LEN] = {0};
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
};

void Ast(void* arg) {
  Request* r = static_cast<Request*>(arg);
  std::lock_guard<std::mutex> l(r->mu);
  r->done = true;
  r->cv.notify_all();
}

int Die(const std::string& why) {
  fprintf(stderr, "dlm_app: %s\n", why.c_str());
  return 1;
}

int Mode(const std::string& m) {
  if (m == "nl") return LKM_NLMODE;
  if (m == "pr") return LKM_PRMODE;
  if (m == "cw") return LKM_CWMODE;
  if (m == "ex") return LKM_EXMODE;
  return -1;
}

// Sends a request and waits for its AST; returns sb_status (0 granted,
// EAGAIN refused) or -errno of the call itself.
int Lock(dlm_lshandle_t ls, Request* r, int mode, uint32_t flags, const std::string& name) {
  {
    std::lock_guard<std::mutex> l(r->mu);
    r->done = false;
  }
  r->lksb.sb_lvbptr = r->lvb;
  if (dlm_ls_lock(ls, mode, &r->lksb, flags, name.data(), name.size(), 0, Ast, r, nullptr,
                  nullptr) != 0) {
    return -errno;
  }
  std::unique_lock<std::mutex> l(r->mu);
  r->cv.wait(l, [r] { return r->done; });
  return r->lksb.sb_status;
}

// Down to NL (writes nothing), then unlock.
int Release(dlm_lshandle_t ls, Request* r, const std::string& name) {
  int st = Lock(ls, r, LKM_NLMODE, LKF_CONVERT, name);
  if (st != 0) return st;
  {
    std::lock_guard<std::mutex> l(r->mu);
    r->done = false;
  }
  if (dlm_ls_unlock(ls, r->lksb.sb_lkid, 0, &r->lksb, r) != 0) return -errno;
  std::unique_lock<std::mutex> l(r->mu);
  r->cv.wait(l, [r] { return r->done; });
  return 0;
}

void WaitForStdinEof() {
  char buf[64];
  while (read(0, buf, sizeof(buf)) > 0) {
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) return Die("usage: dlm_app hold|orphan|adopt|try|setlvb|getlvb LS NAME [ARG]");
  const std::string cmd = argv[1], name = argv[3];
  const bool has_mode = cmd == "hold" || cmd == "orphan" || cmd == "adopt" || cmd == "try";
  if ((has_mode || cmd == "setlvb") && argc != 5) return Die("missing or extra argument");
  const int mode = has_mode ? Mode(argv[4]) : LKM_NLMODE;
  if (mode < 0) return Die(std::string("unknown mode ") + argv[4]);
  dlm_lshandle_t ls = dlm_create_lockspace(argv[2], 0600);
  if (ls == nullptr) return Die(std::string("lockspace ") + argv[2] + ": " + strerror(errno));
  if (dlm_ls_pthread_init(ls) != 0) return Die(std::string("pthread init: ") + strerror(errno));
  setvbuf(stdout, nullptr, _IONBF, 0);
  Request r;
  if (cmd == "hold") {
    const int st = Lock(ls, &r, mode, 0, name);
    if (st != 0) return Die("hold: status " + std::to_string(st));
    printf("held %d\n", getpid());
    WaitForStdinEof();
    Release(ls, &r, name);
    return 0;
  }
  if (cmd == "orphan") {
    const int st = Lock(ls, &r, mode, LKF_PERSISTENT, name);
    if (st != 0) return Die("orphan: status " + std::to_string(st));
    printf("orphaned\n");
    _exit(0);  // the lockspace fd closes with the process: the lock stays
  }
  if (cmd == "adopt") {
    r.lksb.sb_lvbptr = r.lvb;
    // An orphan is handed over at once, without a completion AST.
    if (dlm_ls_lock(ls, mode, &r.lksb, LKF_PERSISTENT | LKF_ORPHAN, name.data(), name.size(), 0,
                    Ast, &r, nullptr, nullptr) != 0) {
      if (errno == ENOENT) return printf("none\n"), 0;
      if (errno == EAGAIN) return printf("other-mode\n"), 0;
      return Die(std::string("adopt: ") + strerror(errno));
    }
    printf("adopted\n");
    const int st = Release(ls, &r, name);
    if (st != 0) return Die("release: status " + std::to_string(st));
    return 0;
  }
  if (cmd == "try") {
    const int st = Lock(ls, &r, mode, LKF_NOQUEUE, name);
    if (st == EAGAIN) return printf("busy\n"), 0;
    if (st != 0) return Die("try: status " + std::to_string(st));
    printf("granted\n");
    Release(ls, &r, name);
    return 0;
  }
  if (cmd == "setlvb") {
    int st = Lock(ls, &r, LKM_EXMODE, LKF_VALBLK, name);
    if (st != 0) return Die("setlvb: EX status " + std::to_string(st));
    memset(r.lvb, 0, sizeof(r.lvb));
    strncpy(r.lvb, argv[4], sizeof(r.lvb));
    st = Lock(ls, &r, LKM_NLMODE, LKF_CONVERT | LKF_VALBLK, name);  // writes the LVB
    if (st != 0) return Die("setlvb: convert status " + std::to_string(st));
    printf("set\n");
    WaitForStdinEof();
    Release(ls, &r, name);
    return 0;
  }
  if (cmd == "getlvb") {
    const int st = Lock(ls, &r, LKM_NLMODE, LKF_VALBLK, name);
    if (st != 0) return Die("getlvb: status " + std::to_string(st));
    std::string hex, text;
    for (char c : r.lvb) {
      char b[3];
      snprintf(b, sizeof(b), "%02x", static_cast<unsigned char>(c));
      hex += b;
      text += (c >= 0x21 && c < 0x7f) ? c : '.';
    }
    printf("lvb %s %s\n", hex.c_str(), text.c_str());
    Release(ls, &r, name);
    return 0;
  }
  return Die("unknown command " + cmd);
}
