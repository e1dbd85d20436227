#include "backends/dlm/lockspace_users.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace latchkey {
namespace dlmbe {
namespace {

bool HasDeviceOpen(const std::string& fd_dir, dev_t rdev) {
  DIR* d = opendir(fd_dir.c_str());
  if (d == nullptr) return false;
  bool found = false;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    struct stat st;
    if (stat(absl::StrCat(fd_dir, "/", e->d_name).c_str(), &st) == 0 && S_ISCHR(st.st_mode) &&
        st.st_rdev == rdev) {
      found = true;
      break;
    }
  }
  closedir(d);
  return found;
}

}  // namespace

std::vector<DeviceUser> DeviceUsers(dev_t rdev, pid_t self, const std::string& proc) {
  std::vector<DeviceUser> out;
  DIR* d = opendir(proc.c_str());
  if (d == nullptr) return out;
  while (dirent* e = readdir(d)) {
    int pid;
    if (!absl::SimpleAtoi(e->d_name, &pid) || pid <= 0 || pid == self) continue;
    const std::string dir = absl::StrCat(proc, "/", pid);
    if (!HasDeviceOpen(dir + "/fd", rdev)) continue;
    DeviceUser u;
    u.pid = pid;
    std::ifstream comm(dir + "/comm");
    std::getline(comm, u.comm);
    out.push_back(std::move(u));
  }
  closedir(d);
  std::sort(out.begin(), out.end(),
            [](const DeviceUser& a, const DeviceUser& b) { return a.pid < b.pid; });
  return out;
}

std::string DescribeUsers(const std::vector<DeviceUser>& users) {
  std::string out;
  for (const DeviceUser& u : users) {
    absl::StrAppend(&out, out.empty() ? "" : ", ", u.comm.empty() ? "?" : u.comm, " (pid ",
                    u.pid, ")");
  }
  return out;
}

}  // namespace dlmbe
}  // namespace latchkey
