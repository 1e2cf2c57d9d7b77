// Blockwise RingAttention over a Transport: the forward and backward of one attention layer when the
// sequence is sharded across the R ranks of a ring (see "The ring" in ../shared/DESIGN.md).
//
// Each rank holds S = L / R rows of Q, K, V (in the layout's order) and the global index and segment id
// of each row. Forward, step s = 0..R-1: post the send of the visiting K/V block to the next rank and the
// receive of the following one from the previous rank (double buffer), compute attention of the local Q
// against the visiting block (skipped when the causal/segment masks empty it), merge into the running
// (O, lse), then wait for the transfers. Backward rotates K/V the same way, and the dK/dV of each block
// travel one step behind it: a rank adds its share to what arrives from the previous rank (incoming +
// own, a fixed order) and passes it on; after R steps every block's dK/dV is home.
//
// Per step compute overlaps the transfer; RingStats measures how well: overlap = compute / wall.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/attention.h"
#include "runtime/transport.h"

namespace rw::runtime {

// The ring's working memory: the travelling K/V block and the one arriving (double buffer), the forward's
// partial (O, lse) of a block before its merge, the backward's delta and its dK/dV buffers. Sized by the
// first call and reused by every later one (grown, never shrunk), so a rank that keeps one per job
// allocates nothing per layer or step.
struct RingBuffers {
  std::vector<unsigned char> block[2];
  std::vector<float> o_part, lse_part;
  std::vector<float> delta, dkv[2], incoming;
};

struct RingAttentionConfig {
  kernels::Device device = kernels::Device::kCpu;  // ref or cpu (cuda rides the nccl transport)
  // Of q, k, v, dout and the travelling K/V blocks (bf16 halves the ring's forward bytes). The running
  // (O, lse), dQ and the travelling dK/dV stay fp32 in every precision: rounding them at each hop would
  // make the error grow with the ring size.
  kernels::DType dtype = kernels::DType::kF32;
  int64_t s = 0;                                   // rows per rank
  int64_t hq = 0, hkv = 0, d = 0;
  bool causal = true;
  float scale = 0.f;  // 0: 1/sqrt(D)
  int block_q = 0, block_k = 0;
  int num_threads = 1;  // kernel threads per rank (one per rank when ranks >= cores)
  MsgTag tag;           // job, epoch, step, layer of this call; hops are numbered here
  RingBuffers* buffers = nullptr;  // null: the call makes its own
};

// This rank's rows of Q, K and V. q: (S, Hq, D), k, v: (S, Hkv, D), dense row-major in the config's dtype.
struct RankQkv {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const int64_t* index = nullptr;    // (S) global token index of each row
  const int32_t* segment = nullptr;  // (S) document id, negative = padding; null: one document
};

struct RingStats {
  double wall_seconds = 0;     // the whole ring loop
  double compute_seconds = 0;  // kernel time inside it
  int blocks_computed = 0;
  int blocks_skipped = 0;  // emptied by the masks
  double overlap_ratio() const { return wall_seconds > 0 ? compute_seconds / wall_seconds : 1.0; }
};

// o: (S, Hq, D) fp32 output; lse: (Hq, S) fp32 output (saved for the backward).
Status RingAttentionForward(Transport& t, const RingAttentionConfig& c, const RankQkv& shard, float* o,
                            float* lse, RingStats* stats = nullptr);

// Given the forward's o and lse and the output gradient dout (S, Hq, D) in the config's dtype: writes dq
// (S, Hq, D) and this rank's dk, dv (S, Hkv, D), all fp32.
Status RingAttentionBackward(Transport& t, const RingAttentionConfig& c, const RankQkv& shard, const float* o,
                             const float* lse, const void* dout, float* dq, float* dk, float* dv,
                             RingStats* stats = nullptr);

}  // namespace rw::runtime
