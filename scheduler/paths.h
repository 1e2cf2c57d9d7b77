// Path confinement for jobs the daemon accepts: every path a job names must resolve (after symlinks) inside
// one of the daemon's roots. Relative paths are taken relative to the root.
#pragma once

#include <string>

#include "kernels/common.h"

namespace rw::scheduler {

// Resolves `path` (field names the job setting, for errors) inside `root`: no ".." component, and the
// resolved path, symlinks followed as far as they exist, lies under the resolved root. *out is absolute.
kernels::Status ConfinePath(const std::string& field, const std::string& path, const std::string& root,
                            std::string* out);

}  // namespace rw::scheduler
