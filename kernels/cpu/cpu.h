// Internal: the CPU backend's kernels, with the signatures of its table (kernels/backend.h). Only the
// table (cpu/backend_cpu.cpp) and the kernels' own files include this; callers use the entry points.
#pragma once

#include "kernels/attention.h"
#include "kernels/layers.h"
#include "kernels/vision.h"

namespace rw::kernels::cpu {

// q, k, v, dout in p.dtype (f32 or bf16); o, lse, delta, dq, dk, dv fp32.
Status AttentionForward(const AttentionParams& p);
Status AttentionBackwardPrep(const AttentionParams& p);
Status AttentionBackward(const AttentionParams& p);
// The bf16 forward and backward on AMX tiles (attention_amx.cpp); AttentionForward / AttentionBackward call
// them when amx::Available().
Status AttentionForwardAmx(const AttentionParams& p);
Status AttentionBackwardAmx(const AttentionParams& p);
Status AttentionMerge(DType dtype, int64_t sq, int64_t hq, int64_t d, View3 o_acc, float* lse_acc, View3 o_part,
                      const float* lse_part, void* stream);

Status LinearForward(const Exec& ex, int64_t n, int64_t in, int64_t out, View x, View w, View y);
Status LinearBackward(const Exec& ex, int64_t n, int64_t in, int64_t out, View x, View w, View dy, View dx,
                      float* dw);
Status RmsNormForward(const Exec& ex, int64_t n, int64_t e, const float* x, const float* w, float eps, View y,
                      float* rstd);
Status RmsNormBackward(const Exec& ex, int64_t n, int64_t e, const float* x, const float* w, const float* rstd,
                       const float* dy, float* dx, float* dw);
Status Rope(const Exec& ex, int64_t s, int64_t h, int64_t d, View3 x, View3 y, const int64_t* pos, double theta,
            bool inverse);
Status FfnForward(const Exec& ex, int64_t n, int64_t e, int64_t f, View x, FfnWeights w, View y, int64_t block);
Status FfnBackward(const Exec& ex, int64_t n, int64_t e, int64_t f, View x, FfnWeights w, View dy, float* dx,
                   FfnGrads dw, int64_t block);
Status CrossEntropyForward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, View h, View w,
                           const int32_t* target, const float* weight, float* loss, double* weighted_sum,
                           int64_t block);
Status CrossEntropyBackward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, View h, View w,
                            const int32_t* target, const float* weight, float grad_scale, float* dh, float* dw,
                            int64_t block);
Status AdamWStep(const Exec& ex, int64_t n, float* p, const float* g, float* m, float* v, const AdamWHyper& hp,
                 int64_t step);
Status AddInto(const Exec& ex, int64_t n, const float* src, float* dst);
Status Cast(const Exec& ex, int64_t n, View src, View dst);
Status EmbeddingForward(const Exec& ex, int64_t n, int64_t e, const int32_t* ids, const float* table, float* x);
Status EmbeddingBackward(const Exec& ex, int64_t n, int64_t e, const int32_t* ids, const float* dx, float* dtable);

// The VQGAN's ops (vision_cpu.cpp).
Status Conv2dForward(const Exec& ex, const Conv2dShape& s, const float* x, const float* w, const float* bias,
                     float* y);
Status GroupNormForward(const Exec& ex, int64_t n, int64_t pixels, int64_t c, int64_t groups, float eps,
                        const float* x, const float* scale, const float* bias, bool silu, float* y);
Status UpsampleNearest2x(const Exec& ex, int64_t n, int64_t h, int64_t w, int64_t c, const float* x, float* y);
Status NearestCode(const Exec& ex, int64_t n, int64_t d, int64_t k, const float* z, const float* codebook,
                   int32_t* index);

}  // namespace rw::kernels::cpu
