#include "runtime/private_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>

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

}  // namespace rw::runtime
