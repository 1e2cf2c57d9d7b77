// Needle-in-a-haystack retrieval as in the LWM paper (Figure 3): for each context length and needle depth,
// documents with "The special magic {city} number is: {7 digits}" hidden at that depth of filler text and
// the question at the end; the prompt is prefilled over the ring (sharded KV cache), the answer decoded
// greedily, and a trial counts when all 7 digits come back.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/transport.h"

namespace rw::runtime {

struct NeedleConfig {
  std::vector<int64_t> lengths;  // context lengths in tokens
  std::vector<double> depths;    // needle depth in [0, 1] (0: start of the haystack, 1: its end)
  int64_t trials = 4;            // documents per (length, depth)
  uint64_t seed = 1;
  std::string layout = "zigzag";
  int num_threads = 1;
  kernels::Device device = kernels::Device::kCpu;  // the rank's device: prefill and decoding run on its backend
  Status Validate() const;  // errors name the option (--lengths, --depths, --trials, --layout)
};

struct NeedleResult {
  std::vector<int64_t> lengths;
  std::vector<double> depths;
  std::vector<std::vector<double>> accuracy;  // [length][depth], in [0, 1]
  struct Sample {
    int64_t length;
    double depth;
    std::string expected, got;
  };
  std::vector<Sample> samples;  // every trial
  std::string ToJson() const;
};

// Runs the evaluation on this rank of a ring (every rank gets the same result).
Status NeedleRank(Transport& t, const std::string& checkpoint_dir, const NeedleConfig& cfg, NeedleResult* out);

}  // namespace rw::runtime
