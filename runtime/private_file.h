// Small secrets on disk (the API token, the control channel's key and certificate): written whole or not
// at all, readable by their owner only.
#pragma once

#include <string>

#include "kernels/status.h"

namespace rw::runtime {

// Writes `text` to `path` with mode 0600 through a temporary file: written, fsynced, renamed into place.
Status WritePrivateFile(const std::string& path, const std::string& text);

}  // namespace rw::runtime
