// A synthetic ring-attention problem that any rank can build for its own rows alone: every global row's
// values come from a counter-based generator seeded by (seed, tensor, row), so no rank ever holds the
// whole sequence. Used by ring self-tests and benchmarks, in one process or across many.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/layout.h"
#include "runtime/ring_attention.h"

namespace rw::runtime {

struct SyntheticAttention {
  uint64_t seed = 1;
  int64_t L = 0, hq = 1, hkv = 1, d = 64;
  bool causal = true;
  int64_t doc_len = 0;  // > 0: packed documents of this many tokens (by global index)
};

// One rank's inputs and outputs, host memory, dense (S, H, D).
struct ShardData {
  int64_t s = 0, hq = 0, hkv = 0, d = 0;
  bool causal = true;
  std::vector<float> q, k, v, dout;
  std::vector<int64_t> index;
  std::vector<int32_t> segment;  // empty: one document
  std::vector<float> o, lse, dq, dk, dv;
};

// Rows of `rank` under `layout` (layout.global_len() must equal spec.L).
Status MakeShard(const SyntheticAttention& spec, const Layout& layout, int rank, ShardData* out);

// Ring attention forward + backward over this rank's shard; fills the outputs.
Status RunShard(Transport& t, ShardData& shard, MsgTag tag, int num_threads, RingStats* fwd, RingStats* bwd);

// Writes o, lse, dq, dk, dv (fp32, in that order) to `path` (atomically: temp file, then rename).
Status WriteOutputs(const ShardData& shard, const std::string& path);

}  // namespace rw::runtime
