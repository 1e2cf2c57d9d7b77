#include "runtime/private_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

namespace rw::runtime {

Status WritePrivateFile(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  RW_REQUIRE(fd >= 0, path << ": cannot create");
  const bool ok = ::write(fd, text.data(), text.size()) == ssize_t(text.size()) && ::fsync(fd) == 0;
  ::close(fd);
  RW_REQUIRE(ok && std::rename(tmp.c_str(), path.c_str()) == 0, path << ": cannot write");
  return Status::Ok();
}

Status FsyncPath(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  RW_REQUIRE(fd >= 0, path << ": cannot open to fsync");
  const int rc = ::fsync(fd);
  ::close(fd);
  RW_REQUIRE(rc == 0, path << ": fsync failed");
  return Status::Ok();
}

Status WriteSyncedText(const std::string& path, const std::string& text) {
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << text;
    RW_REQUIRE(f.good(), path << ": write failed");
  }
  return FsyncPath(path, false);
}

}  // namespace rw::runtime
