// The main() of the fuzz targets outside libFuzzer: runs each file named on
// the command line, and each file in each directory named (sorted, not
// recursive), through LLVMFuzzerTestOneInput once. A missing directory is
// skipped (a target may have no saved regressions), but replaying nothing
// at all fails. A crash or a failed
// FUZZ_CHECK aborts, which fails the test or shows the reproducer's stack.
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);

namespace {

std::vector<std::string> FilesOf(const std::string& arg) {
  struct stat st;
  if (stat(arg.c_str(), &st) != 0) return {};
  if (!S_ISDIR(st.st_mode)) return {arg};
  std::vector<std::string> out;
  DIR* d = opendir(arg.c_str());
  if (d == nullptr) return out;
  while (dirent* e = readdir(d)) {
    const std::string path = arg + "/" + e->d_name;
    if (e->d_name[0] != '.' && stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      out.push_back(path);
    }
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (LLVMFuzzerInitialize != nullptr) LLVMFuzzerInitialize(&argc, &argv);
  size_t runs = 0;
  for (int i = 1; i < argc; ++i) {
    if (argv[i][0] == '-') continue;  // libFuzzer flags, for a shared command line
    for (const std::string& file : FilesOf(argv[i])) {
      std::ifstream in(file, std::ios::binary);
      const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      fprintf(stderr, "replaying %s (%zu bytes)\n", file.c_str(), bytes.size());
      LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      ++runs;
    }
  }
  printf("replayed %zu inputs\n", runs);
  // Nothing replayed means a missing corpus, not a pass.
  return runs == 0 ? 1 : 0;
}
