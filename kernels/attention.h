// Blockwise attention with online softmax: the compute of one ring step.
//
// A device holds a query shard and, at each ring step, one visiting key/value block. Masks are decided
// by *global* token index (causal) and *segment id* (packed documents), never by local position, so the
// same call serves every layout (contiguous, zigzag, striped) and every visiting block.
//
// Math, per query head h and query row i (scale c = 1/sqrt(D) unless given):
//   s_ij = c * q_i . k_j                     for allowed j (causal: idx_k(j) <= idx_q(i); same segment)
//   lse_i = log sum_j exp(s_ij),  o_i = sum_j exp(s_ij - lse_i) v_j
// A row with no allowed key has o_i = 0 and lse_i = -inf (never NaN).
// Backward, with delta_i = do_i . o_i and p_ij = exp(s_ij - lse_i):
//   dv_j += sum_i p_ij do_i;  ds_ij = p_ij (do_i . v_j - delta_i);  dq_i += c sum_j ds_ij k_j;
//   dk_j += c sum_i ds_ij q_i
// Gradients accumulate (+=) so that dK, dV can travel the ring collecting each device's share.
#pragma once

#include "kernels/common.h"

namespace rw::kernels {

// Where each row of a tensor sits in the global sequence.
struct TokenInfo {
  const int64_t* index = nullptr;    // (S) global token index, used by the causal mask; null: offset + s
  int64_t offset = 0;                // global index of row 0 when index is null
  const int32_t* segment = nullptr;  // (S) document id; null: one document. Negative: padding, masked.
  int64_t Index(int64_t s) const { return index ? index[s] : offset + s; }
  int32_t Segment(int64_t s) const { return segment ? segment[s] : 0; }
};

struct AttentionParams {
  Device device = Device::kCpu;
  DType dtype = DType::kF32;  // of q, k, v, dout. ref: f32. cpu: f32 or bf16. cuda: bf16 or f16.
  DType o_dtype = DType::kF32;  // of o. cpu: f32 (the running (O, lse) stays fp32 across ring hops);
                                // cuda: the same as dtype.
  int64_t sq = 0, sk = 0;     // query rows, key rows
  int64_t hq = 0, hkv = 0;    // query heads, key/value heads; hq % hkv == 0 (grouped-query attention)
  int64_t d = 0;              // head dim (CUDA: 64 or 128)

  View3 q;            // (Sq, Hq, D)
  View3 k, v;         // (Sk, Hkv, D)
  View3 o;            // (Sq, Hq, D) o_dtype: forward output, backward input
  float* lse = nullptr;  // (Hq, Sq) fp32, row-major: forward output, backward input

  TokenInfo q_tok, k_tok;
  bool causal = false;
  float scale = 0.f;  // 0: 1/sqrt(D)

  int block_q = 0, block_k = 0;  // 0: backend default. Must be >= 1.
  int num_threads = 0;           // CPU: 0 means all cores
  void* stream = nullptr;        // CUDA: cudaStream_t; null is the default stream

  // Backward only.
  View3 dout;              // (Sq, Hq, D) dtype
  float* delta = nullptr;  // (Hq, Sq) fp32, rowsum(dout * o); written by AttentionBackwardPrep
  View3 dq;                // (Sq, Hq, D) fp32, accumulated
  View3 dk, dv;            // (Sk, Hkv, D) fp32, accumulated

  float Scale() const;
};

// o, lse := attention(q, k, v) under the masks.
Status AttentionForward(const AttentionParams& p);

// delta := rowsum(dout * o). Once per backward, before any AttentionBackward over the blocks.
Status AttentionBackwardPrep(const AttentionParams& p);

// dq += ..., dk += ..., dv += ... for this (q shard, kv block) pair, given the *final* o, lse, delta.
Status AttentionBackward(const AttentionParams& p);

// Online-softmax merge of a partial result into a running one (o in `dtype`: f32 on ref and cpu, the
// attention's o_dtype on cuda):
//   lse = log(e^lse_acc + e^lse_part);  o_acc = o_acc e^(lse_acc - lse) + o_part e^(lse_part - lse)
// o_*: (Sq, Hq, D) views; lse_*: (Hq, Sq). Rows where both are -inf stay o = 0, lse = -inf.
Status AttentionMerge(Device device, DType dtype, int64_t sq, int64_t hq, int64_t d, View3 o_acc,
                      float* lse_acc, View3 o_part, const float* lse_part, void* stream = nullptr);

// Checks shapes, strides, pointers and block sizes; the message names the argument.
Status ValidateAttention(const AttentionParams& p, bool backward);

// Floating-point operations of a forward (matmul work only, 4*Sq*Sk*D per head, halved when causal
// over aligned square shards). Backward is 2.5x forward. Used by benchmarks.
double AttentionForwardFlops(int64_t sq, int64_t sk, int64_t hq, int64_t d, bool causal);

}  // namespace rw::kernels
