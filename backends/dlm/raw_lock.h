// One raw libdlm lock driven with the asynchronous calls and a condition
// variable: what the dlm backend does underneath, so it is the fair baseline
// for benchmarks (latchbench's raw path, dlm_bench_node). Not used by the
// backend itself.
//
//   RawDlmLock l;
//   if (l.Lock(ls, "name", LKM_EXMODE) && l.Unlock(ls)) ...
#ifndef LATCHKEY_BACKENDS_DLM_RAW_LOCK_H_
#define LATCHKEY_BACKENDS_DLM_RAW_LOCK_H_

#include <condition_variable>
#include <mutex>
#include <string>

extern "C" {
#include <libdlm.h>
}

namespace latchkey {

class RawDlmLock {
 public:
  // Takes `name` in `mode` (LKM_*MODE), waiting for the grant; false on an
  // error or a refusal (status() says which).
  bool Lock(dlm_lshandle_t ls, const std::string& name, int mode) {
    if (dlm_ls_lock(ls, mode, &lksb_, 0, name.data(), name.size(), 0, &RawDlmLock::Ast, this,
                    nullptr, nullptr) != 0) {
      return false;
    }
    Wait();
    return status_ == 0;
  }
  // Drops the lock; true once the DLM says it is unlocked.
  bool Unlock(dlm_lshandle_t ls) {
    if (dlm_ls_unlock(ls, lksb_.sb_lkid, 0, &lksb_, this) < 0) return false;
    Wait();
    return status_ == EUNLOCK;
  }
  // The last completion's sb_status (0 granted, EUNLOCK unlocked, ...).
  int status() const { return status_; }

 private:
  static void Ast(void* arg) {
    RawDlmLock* r = static_cast<RawDlmLock*>(arg);
    std::lock_guard<std::mutex> l(r->mu_);
    r->status_ = r->lksb_.sb_status;
    r->done_ = true;
    r->cv_.notify_one();
  }
  void Wait() {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [this] { return done_; });
    done_ = false;
  }

  dlm_lksb lksb_{};
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  int status_ = 0;
};

}  // namespace latchkey

#endif  // LATCHKEY_BACKENDS_DLM_RAW_LOCK_H_
