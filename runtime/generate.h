// Decoding with a key/value cache: the per-token layer path every decoder shares (DecodeToken), sampling,
// and the single-device Decoder (each new token attends to the cached keys and values of all earlier
// tokens; the reference the ring decoder of ring_decode.h is tested against). `ringworld generate` runs
// the ring decoder (GenerateRank), on a ring of one or more devices.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "kernels/layers.h"
#include "runtime/model.h"

namespace rw::runtime {

struct SamplingConfig {
  double temperature = 0;  // 0: greedy
  int64_t top_k = 0;       // 0: no top-k cut
  double top_p = 1.0;      // nucleus: smallest set of tokens with this much probability
  uint64_t seed = 1;
  Status Validate() const;
};

// One token through the model at position `pos`, as every decoder runs it: per layer RMSNorm, q/k/v, RoPE,
// then `attend(l, q, k, v, out)` (the one part decoders differ in: the token's rotated q (H, D), k and v
// (Hkv, D) in, its attention output (H, D) out), o_proj, residual, RMSNorm, SwiGLU, residual; final norm and
// lm_head into `logits` (every id: with a vision vocabulary, vision_head's logits after the text ones; each
// head's are a softmax of their own, so a sampler draws within one vocabulary).
using AttendFn = std::function<Status(int64_t layer, const float* q, const float* k, const float* v, float* out)>;
Status DecodeToken(const ModelConfig& c, const ParamTable& t, const float* params, const kernels::Exec& ex,
                   int32_t token, int64_t pos, const AttendFn& attend, std::vector<float>* logits);

class Decoder {
 public:
  // `ex`: the device and kernel threads (host-memory devices: the KV cache is a host array).
  Decoder(const ModelConfig& c, const ParamTable& t, const float* params, kernels::Exec ex);
  // Feeds one token at the next position; fills `logits` (total_vocab) for the token after it.
  Status Step(int32_t token, std::vector<float>* logits);
  int64_t position() const { return pos_; }

 private:
  const ModelConfig& c_;
  const ParamTable& t_;
  const float* p_;
  kernels::Exec ex_;
  int64_t pos_ = 0;
  std::vector<std::vector<float>> k_cache_, v_cache_;  // per layer, (T, Hkv, D), grown per token
};

// Picks the next token from logits under the sampling settings (rng state carried by the caller).
int32_t Sample(const std::vector<float>& logits, const SamplingConfig& s, uint64_t* rng_state);

}  // namespace rw::runtime
