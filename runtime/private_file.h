// Files written durably: small secrets (the API token, the control channel's key and certificate), written
// whole or not at all and readable by their owner only; and the fsync helpers every durable write uses
// (checkpoints, exports).
#pragma once

#include <string>

#include "kernels/status.h"

namespace rw::runtime {

// Writes `text` to `path` with mode 0600 through a temporary file: written, fsynced, renamed into place.
Status WritePrivateFile(const std::string& path, const std::string& text);

// fsync of a file, or of a directory (its entries: what a rename into it made durable).
Status FsyncPath(const std::string& path, bool directory);
// Writes `text` to `path` (truncating) and fsyncs it.
Status WriteSyncedText(const std::string& path, const std::string& text);

}  // namespace rw::runtime
