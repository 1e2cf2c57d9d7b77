// `ringworld train`: the embedded mode. One process holds the device actors of the ring (in-process
// transport), forms the ring by messages, and drives the same per-rank training loop a daemon's workers
// run; it prints progress and writes metrics.jsonl.
#pragma once

#include <string>
#include <vector>

namespace rw::cli {

int Train(const std::string& job_path, const std::vector<std::string>& overrides);

}  // namespace rw::cli
