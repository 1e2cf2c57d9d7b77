#include "scheduler/paths.h"

#include <filesystem>

namespace rw::scheduler {

namespace fs = std::filesystem;

kernels::Status ConfinePath(const std::string& field, const std::string& path, const std::string& root,
                            std::string* out) {
  RW_REQUIRE(!path.empty(), field << ": empty path");
  const fs::path p(path);
  for (const auto& part : p)
    RW_REQUIRE(part != "..", field << ": '" << path << "' contains '..' (paths must stay inside " << root << ")");
  std::error_code ec;
  const fs::path base = fs::weakly_canonical(fs::absolute(root), ec);
  RW_REQUIRE(!ec, field << ": cannot resolve the root " << root << ": " << ec.message());
  fs::path full = fs::weakly_canonical(p.is_absolute() ? p : base / p, ec);
  RW_REQUIRE(!ec, field << ": cannot resolve '" << path << "': " << ec.message());
  // One spelling per directory: "ck/a/", "ck/a/." and "ck//a" are "ck/a" (the daemon compares these to
  // give each checkpoint directory one owner).
  full = full.lexically_normal();
  while (full.has_relative_path() && !full.has_filename()) full = full.parent_path();
  auto b = base.begin();
  auto f = full.begin();
  for (; b != base.end() && !b->empty(); ++b, ++f)
    RW_REQUIRE(f != full.end() && *f == *b, field << ": '" << path << "' resolves to " << full.string()
                                                 << ", outside " << base.string());
  *out = full.string();
  return kernels::Status::Ok();
}

}  // namespace rw::scheduler
