// `ringworld train`: the embedded mode. One process holds the device actors of the ring (in-process
// transport), forms the ring by messages, and drives the same per-rank training loop a daemon's workers
// run; it prints progress and writes metrics.jsonl.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rw::cli {

int Train(const std::string& job_path, const std::vector<std::string>& overrides);
int Eval(const std::string& checkpoint, const std::string& data, int ring, const std::string& layout, int64_t seq_len);
int DataPrepare(const std::vector<std::string>& inputs, const std::string& output, const std::string& tokenizer,
                bool skip_bad);

}  // namespace rw::cli
