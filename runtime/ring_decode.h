// Inference over the ring: the prompt is prefilled over the ring (each rank runs the forward on its shard and
// keeps that shard's keys and values: the KV cache is sharded across the devices, never gathered), then
// every new token runs through the layers on every rank; each rank attends the token's query to its own
// cache rows, the partial results (o, lse) travel once around the ring, and every rank merges them in rank
// order, so all ranks hold the same bits. Generated tokens' keys and values join the last rank's cache.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/layout.h"
#include "runtime/model.h"
#include "runtime/transport.h"

namespace rw::runtime {

class RingDecoder {
 public:
  // `ex`: the rank's device and kernel threads (host-memory devices: the KV cache is a host array).
  RingDecoder(Transport& t, const ModelConfig& c, const ParamTable& table, const float* params, kernels::Exec ex,
              uint64_t job_tag = 0);
  // Prefills `prompt` (token ids) laid out over the ring with `layout` (padded at the end to what the layout
  // needs; padding is never attended); `logits` gets the distribution after the last prompt token.
  Status Prefill(const std::vector<int32_t>& prompt, LayoutKind layout, std::vector<float>* logits);
  // Feeds one token at the next position; `logits` for the token after it (the same on every rank).
  Status Step(int32_t token, std::vector<float>* logits);
  int64_t position() const { return pos_; }
  int64_t cache_rows() const { return int64_t(cache_.index.size()); }  // this rank's share

 private:
  Transport& t_;
  const ModelConfig& c_;
  const ParamTable& tb_;
  const float* p_;
  kernels::Exec ex_;
  uint64_t job_;
  KvCache cache_;
  int64_t pos_ = 0;
  uint32_t step_ = 0;  // message tags of decode steps
};

struct SamplingConfig;

// Generation over the ring: loads the checkpoint, prefills `prompt` over the ring (layout `layout`), then
// samples up to max_tokens (stopping after eos when eos >= 0); every rank gets the same tokens.
Status GenerateRank(Transport& t, const std::string& checkpoint_dir, const std::vector<int32_t>& prompt,
                    const SamplingConfig& s, int64_t max_tokens, int32_t eos, const std::string& layout,
                    kernels::Exec ex, std::vector<int32_t>* out);

}  // namespace rw::runtime
