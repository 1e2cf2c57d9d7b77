// Internal: fast CPU versions of kernels/layers.h, called by its dispatch after validation.
#pragma once

#include "kernels/layers.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace rw::kernels::cpu {
void LinearForward(const Exec& ex, int64_t n, int64_t in, int64_t out, const float* x, const float* w, float* y);
void LinearBackward(const Exec& ex, int64_t n, int64_t in, int64_t out, const float* x, const float* w,
                    const float* dy, float* dx, float* dw);
void RmsNormForward(const Exec& ex, int64_t n, int64_t e, const float* x, const float* w, float eps,
                    float* y, float* rstd);
void RmsNormBackward(const Exec& ex, int64_t n, int64_t e, const float* x, const float* w,
                     const float* rstd, const float* dy, float* dx, float* dw);
void Rope(const Exec& ex, int64_t s, int64_t h, int64_t d, View3 x, View3 y, const int64_t* pos,
          double theta, bool inverse);
void FfnForward(const Exec& ex, int64_t n, int64_t e, int64_t f, const float* x, FfnWeights w, float* y,
                int64_t block);
void FfnBackward(const Exec& ex, int64_t n, int64_t e, int64_t f, const float* x, FfnWeights w,
                 const float* dy, float* dx, FfnGrads dw, int64_t block);
double CrossEntropyForward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, const float* h,
                           const float* w, const int32_t* target, const float* weight, float* loss,
                           int64_t block);
void CrossEntropyBackward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, const float* h,
                          const float* w, const int32_t* target, const float* weight, float grad_scale,
                          float* dh, float* dw, int64_t block);
void AdamWStep(const Exec& ex, int64_t n, float* p, const float* g, float* m, float* v,
               const AdamWHyper& hp, int64_t step);
void AddInto(const Exec& ex, int64_t n, const float* src, float* dst);
}  // namespace rw::kernels::cpu
