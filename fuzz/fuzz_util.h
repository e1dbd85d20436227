// Helpers shared by the fuzz targets in fuzz/: a checked assertion that
// works in every build (libFuzzer, the gcc replay binary, --config=asan),
// a reader that turns fuzz bytes into values, and the runfiles lookup for
// targets that load plugins.
//
// Thread safety: a ByteReader belongs to one thread.
#ifndef LATCHKEY_FUZZ_FUZZ_UTIL_H_
#define LATCHKEY_FUZZ_FUZZ_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <string>

// Aborts with file:line and `what` when `cond` is false: a property of the
// code under test failed for this input (libFuzzer saves it as a crash).
#define FUZZ_CHECK(cond, what)                                          \
  do {                                                                  \
    if (!(cond)) ::latchkey::fuzz::CheckFailed(__FILE__, __LINE__, #cond, (what)); \
  } while (0)

namespace latchkey {
namespace fuzz {

[[noreturn]] void CheckFailed(const char* file, int line, const char* cond,
                              const std::string& what);

// Reads values from the fuzz input, front to back. Past the end every read
// gives zero or the empty string, so any input decodes to something.
class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size) : p_(data), end_(data + size) {}

  bool empty() const { return p_ == end_; }
  size_t remaining() const { return static_cast<size_t>(end_ - p_); }

  uint8_t Byte();
  bool Bool() { return Byte() & 1; }
  uint32_t U32();
  uint64_t U64();
  // A string of length Byte() % (max_len + 1), or fewer bytes at the end.
  std::string String(size_t max_len = 255);
  // Everything not read yet.
  std::string Rest();

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

// Records argv[0] for Runfile(); call from LLVMFuzzerInitialize.
void SetProgram(const char* argv0);
// The path of `path` (relative to the workspace, e.g.
// "backends/posixfd/latchkey-posixfd.so") among the runfiles; aborts when
// it cannot be found.
std::string Runfile(const std::string& path);

// A fresh private directory for the process's scratch files: under
// /dev/shm when it exists (no disk writes), else $TMPDIR or /tmp. Removed
// at exit.
std::string ScratchDir(const std::string& tag);

}  // namespace fuzz
}  // namespace latchkey

#endif  // LATCHKEY_FUZZ_FUZZ_UTIL_H_
