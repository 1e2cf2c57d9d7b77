// `ringworld eval`: the mean loss and perplexity of a checkpoint on a prepared dataset, over a ring of device
// actors in this process.
#include <cstdio>
#include <fstream>

#include "cli/commands.h"
#include "actors/local_ring.h"

namespace rw::cli {

int Eval(const std::string& checkpoint, const std::string& data, int ring, const std::string& layout, int64_t seq_len) {
  if (ring < 1) {
    std::fprintf(stderr, "ringworld eval: --ring: must be >= 1, got %d\n", ring);
    return 2;
  }
  if (!std::ifstream(checkpoint + "/config.json").good()) {
    std::fprintf(stderr, "ringworld eval: --checkpoint: %s has no config.json\n", checkpoint.c_str());
    return 2;
  }
  if (!std::ifstream(data + "/meta.json").good()) {
    std::fprintf(stderr, "ringworld eval: --data: %s is not a prepared dataset (run ringworld data prepare)\n",
                 data.c_str());
    return 2;
  }
  std::string error;
  const auto reports = actors::OnLocalRing<actors::eval_report>(ring, /*job=*/2, actors::eval_atom::value,
                                                        actors::eval_task{1, checkpoint, data, seq_len, layout}, &error);
  if (!error.empty()) {
    std::fprintf(stderr, "ringworld eval: %s\n", error.c_str());
    return 1;
  }
  const actors::eval_report& result = reports.front();  // every rank has the same result
  std::printf("{\"loss\": %.6f, \"perplexity\": %.4f, \"tokens\": %lld}\n", result.loss, result.perplexity,
              (long long)result.tokens);
  return 0;
}

}  // namespace rw::cli
