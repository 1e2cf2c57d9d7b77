// Internal: the CUDA backend's kernels (device pointers, the stream in Exec / AttentionParams). Only the
// .cu files and the table (cuda/backend_cuda.cpp) include this; callers use the entry points.
#pragma once

#include "kernels/attention.h"
#include "kernels/layers.h"

namespace rw::kernels {

namespace cuda {
bool DevicePresent();
Status AttentionForward(const AttentionParams& p);
Status AttentionBackwardPrep(const AttentionParams& p);
Status AttentionBackward(const AttentionParams& p);
Status AttentionMerge(DType dtype, int64_t sq, int64_t hq, int64_t d, View3 o_acc, float* lse_acc,
                      View3 o_part, const float* lse_part, void* stream);
Status RmsNormForward(const Exec& ex, int64_t n, int64_t e, const float* x, const float* w, float eps,
                      float* y, float* rstd);
Status RmsNormBackward(const Exec& ex, int64_t n, int64_t e, const float* x, const float* w,
                       const float* rstd, const float* dy, float* dx, float* dw);
Status Rope(const Exec& ex, int64_t s, int64_t h, int64_t d, View3 x, View3 y, const int64_t* pos,
            double theta, bool inverse);
Status FfnForward(const Exec& ex, int64_t n, int64_t e, int64_t f, const float* x, FfnWeights w, float* y,
                  int64_t block);
Status FfnBackward(const Exec& ex, int64_t n, int64_t e, int64_t f, const float* x, FfnWeights w,
                   const float* dy, float* dx, FfnGrads dw, int64_t block);
Status CrossEntropyForward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, const float* h,
                           const float* w, const int32_t* target, const float* weight, float* loss,
                           double* weighted_sum, int64_t block);
Status CrossEntropyBackward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, const float* h,
                            const float* w, const int32_t* target, const float* weight, float grad_scale,
                            float* dh, float* dw, int64_t block);
Status AdamWStep(const Exec& ex, int64_t n, float* p, const float* g, float* m, float* v,
                 const AdamWHyper& hp, int64_t step);
Status AddInto(const Exec& ex, int64_t n, const float* src, float* dst);
Status LinearForward(const Exec& ex, int64_t n, int64_t in, int64_t out, const float* x, const float* w, float* y);
Status LinearBackward(const Exec& ex, int64_t n, int64_t in, int64_t out, const float* x, const float* w,
                      const float* dy, float* dx, float* dw);
}  // namespace cuda

}  // namespace rw::kernels
