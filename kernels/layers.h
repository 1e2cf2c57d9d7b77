// The per-token layers of a LLaMA block and the optimizer: RMSNorm, RoPE, SwiGLU feed-forward,
// cross-entropy over an lm_head, embedding, AdamW, casts. Each has one entry point per direction that
// validates once and dispatches through the backend table of Exec::device (kernels/backend.h).
//
// Conventions: activations are (N, E) row-major (N tokens, E model width). Weights use the Hugging Face
// Linear layout (out_features, in_features). Activation gradients are written (=); weight gradients are
// accumulated (+=) so that micro-batches and ring ranks can add into one buffer.
//
// Precision: operands typed `View` may be fp32 or bf16. An op computes in its weights' dtype: fp32 weights
// give the fp32 path (every operand fp32); bf16 weights (the compute copy of mixed precision) give bf16
// GEMMs with fp32 accumulation, bf16 or fp32 activations in (fp32 ones are rounded to bf16 first) and the
// output written in its view's dtype. Statistics (rstd, loss, lse), activation gradients that feed a
// residual add, and weight gradients are always fp32. Which backend runs which (op, dtype): backend.h.
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace rw::kernels {

// Where and how an op runs.
struct Exec {
  Device device = Device::kCpu;
  int num_threads = 0;     // CPU: 0 means all cores
  void* stream = nullptr;  // CUDA: cudaStream_t
};

// ---- Linear (no bias, Hugging Face layout) ------------------------------------------------------------------
// y (N, out) = x (N, in) W^T with W (out, in).
Status LinearForward(const Exec& ex, int64_t n, int64_t in, int64_t out, View x, View w, View y);
// dx = dy W (written, fp32 or bf16; skipped when dx is null);  dw += dy^T x (fp32).
Status LinearBackward(const Exec& ex, int64_t n, int64_t in, int64_t out, View x, View w, View dy, View dx,
                      float* dw);

// ---- RMSNorm ----------------------------------------------------------------------------------------
// y = x * rstd * w,  rstd = 1 / sqrt(mean(x^2) + eps)
// x: (N, E) fp32 (the residual stream); w: (E) fp32; y: (N, E) fp32 or bf16; rstd: (N), saved for the
// backward. The reduction is fp32 in every precision.
Status RmsNormForward(const Exec& ex, int64_t n, int64_t e, const float* x, const float* w, float eps,
                      View y, float* rstd);
// dx = rstd * (w*dy - x * rstd^2 * mean(x * w * dy));  dw += sum_rows dy * x * rstd. x, dy and dx are
// activations of one dtype (the op's; the tables run fp32); w, rstd and dw fp32.
Status RmsNormBackward(const Exec& ex, int64_t n, int64_t e, View x, const float* w, const float* rstd, View dy,
                       View dx, float* dw);

// ---- RoPE (rotate-half, as Hugging Face LLaMA) --------------------------------------------------------
// For each row s with position pos[s] and pair i < D/2, angle a = pos[s] * theta^(-2i/D):
//   y[i] = x[i] cos a - x[i + D/2] sin a;   y[i + D/2] = x[i + D/2] cos a + x[i] sin a
// inverse = true rotates by -a: the backward (dx from dy), since the rotation is orthogonal.
// x, y: (S, H, D) views (y may equal x: in place). Angles are computed in fp64 so that positions near
// 1M keep full precision.
Status Rope(const Exec& ex, int64_t s, int64_t h, int64_t d, View3 x, View3 y, const int64_t* pos,
            double theta, bool inverse);

// ---- SwiGLU feed-forward, blockwise over tokens ---------------------------------------------------------
// y = (silu(x Wg^T) * (x Wu^T)) Wd^T, computed `block` tokens at a time so the (N, F) intermediate never
// exists for the whole shard. x: (N, E); w_gate, w_up: (F, E); w_down: (E, F); y: (N, E).
struct FfnWeights {  // one dtype for all three
  View w_gate;
  View w_up;
  View w_down;
};
struct FfnGrads {
  float* w_gate = nullptr;  // (F, E) +=
  float* w_up = nullptr;    // (F, E) +=
  float* w_down = nullptr;  // (E, F) +=
};
// The token block the blockwise ops (FFN, cross-entropy) take when the caller gives none: rows of a
// (rows x width) fp32 scratch of about 4M floats, clamped to [16, 1024].
int64_t TokenBlock(int64_t width);
// In bf16 the gate/up products and silu(g) u are fp32 per block, rounded to bf16 for the down product.
Status FfnForward(const Exec& ex, int64_t n, int64_t e, int64_t f, View x, FfnWeights w, View y,
                  int64_t block = 0);
// Recomputes the gate/up projections per block; writes dx (N, E) fp32, accumulates the weight gradients.
Status FfnBackward(const Exec& ex, int64_t n, int64_t e, int64_t f, View x, FfnWeights w, View dy, float* dx,
                   FfnGrads dw, int64_t block = 0);

// ---- Cross-entropy over an lm_head, blockwise over tokens -------------------------------------------------
// logits = h W^T (V columns), computed `block` tokens at a time so the logits of a whole shard never
// exist. loss[i] = lse(logits_i) - logits_i[target_i], 0 where target_i < 0 (ignored). Logits, softmax and
// loss are fp32 in every precision.
// h: (N, E); w: (V, E); target: (N); loss: (N). weighted_sum (optional) = sum_i weight[i] * loss[i]
// (weight null means 1).
Status CrossEntropyForward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, View h, View w,
                           const int32_t* target, const float* weight, float* loss, double* weighted_sum,
                           int64_t block = 0);
// d(grad_scale * sum_i weight[i] loss[i]):  dlogits_i = grad_scale weight[i] (softmax_i - onehot_i)
// dh = dlogits W (written), dw += dlogits^T h.
Status CrossEntropyBackward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, View h, View w,
                            const int32_t* target, const float* weight, float grad_scale, float* dh, float* dw,
                            int64_t block = 0);

// ---- AdamW (decoupled weight decay, PyTorch order) -------------------------------------------------------
//   p *= 1 - lr wd;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)       (t = step, counted from 1)
struct AdamWHyper {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.f;
};
// param, grad and the moments m, v in one dtype (the tables run fp32 master weights and moments).
Status AdamWStep(const Exec& ex, int64_t n, View param, View grad, View m, View v, const AdamWHyper& hp,
                 int64_t step);

// ---- Elementwise ---------------------------------------------------------------------------------------
// dst += src over n elements of one dtype: how gradients that travel the ring collect each rank's share.
Status AddInto(const Exec& ex, int64_t n, View src, View dst);

// dst = src over n elements, converting between fp32 and bf16 (round-to-nearest-even): the bf16 compute
// copy of the weights after each optimizer step, activations entering a bf16 op.
Status Cast(const Exec& ex, int64_t n, View src, View dst);

// ---- Embedding ---------------------------------------------------------------------------------------
// x[i] = table[ids[i]] (rows of E); the backward scatter-adds dtable[ids[i]] += dx[i] in token order
// (deterministic). table: (V, E) and the rows in one dtype (the tables run fp32); ids are checked against
// `vocab`.
Status EmbeddingForward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, const int32_t* ids, View table,
                        View x);
Status EmbeddingBackward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, const int32_t* ids, View dx,
                         View dtable);

}  // namespace rw::kernels
