#include "fuzz/fuzz_util.h"

#include <ftw.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "tools/cpp/runfiles/runfiles.h"

namespace latchkey {
namespace fuzz {

void CheckFailed(const char* file, int line, const char* cond, const std::string& what) {
  fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed: %s\n", file, line, cond, what.c_str());
  fflush(stderr);
  abort();
}

uint8_t ByteReader::Byte() { return p_ < end_ ? *p_++ : 0; }

uint32_t ByteReader::U32() {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | Byte();
  return v;
}

uint64_t ByteReader::U64() { return (uint64_t{U32()} << 32) | U32(); }

std::string ByteReader::String(size_t max_len) {
  const size_t want = Byte() % (max_len + 1);
  const size_t n = want < remaining() ? want : remaining();
  std::string s(reinterpret_cast<const char*>(p_), n);
  p_ += n;
  return s;
}

std::string ByteReader::Rest() {
  std::string s(reinterpret_cast<const char*>(p_), remaining());
  p_ = end_;
  return s;
}

namespace {
std::string g_argv0;

std::string* g_scratch_root = nullptr;

int RemoveOne(const char* path, const struct stat*, int, struct FTW*) {
  remove(path);
  return 0;
}

// Removes our own mkdtemp directory, depth first, not following symlinks.
void RemoveScratch() {
  if (g_scratch_root != nullptr) nftw(g_scratch_root->c_str(), RemoveOne, 16, FTW_DEPTH | FTW_PHYS);
}
}  // namespace

void SetProgram(const char* argv0) { g_argv0 = argv0 ? argv0 : ""; }

std::string Runfile(const std::string& path) {
  using bazel::tools::cpp::runfiles::Runfiles;
  std::string error;
  std::unique_ptr<Runfiles> r(Runfiles::Create(g_argv0, &error));
  if (r == nullptr) {
    fprintf(stderr, "runfiles: %s\n", error.c_str());
    abort();
  }
  std::string p = r->Rlocation("latchkey/" + path);
  struct stat st;
  if (p.empty() || stat(p.c_str(), &st) != 0) {
    fprintf(stderr, "runfile %s not found (at '%s')\n", path.c_str(), p.c_str());
    abort();
  }
  return p;
}

std::string ScratchDir(const std::string& tag) {
  if (g_scratch_root == nullptr) {
    struct stat st;
    std::string base = "/dev/shm";
    if (stat(base.c_str(), &st) != 0 || access(base.c_str(), W_OK) != 0) {
      const char* t = getenv("TMPDIR");
      base = t != nullptr && t[0] != '\0' ? t : "/tmp";
    }
    std::string tmpl = base + "/latchkey-fuzz-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) {
      perror("mkdtemp");
      abort();
    }
    g_scratch_root = new std::string(tmpl);
    atexit(RemoveScratch);
  }
  const std::string dir = *g_scratch_root + "/" + tag;
  mkdir(dir.c_str(), 0700);
  return dir;
}

}  // namespace fuzz
}  // namespace latchkey
