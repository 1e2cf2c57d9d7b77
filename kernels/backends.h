// Internal: the per-device implementations behind the public entry points. Only the dispatch files
// include this; callers use kernels/attention.h and kernels/layers.h.
#pragma once

#include "kernels/attention.h"
#include "kernels/layers.h"

namespace rw::kernels {

namespace cpu {
Status AttentionForward(const AttentionParams& p);
Status AttentionBackwardPrep(const AttentionParams& p);
Status AttentionBackward(const AttentionParams& p);
Status AttentionMerge(int64_t sq, int64_t hq, int64_t d, View3 o_acc, float* lse_acc, View3 o_part,
                      const float* lse_part);
}  // namespace cpu

#ifdef RW_HAVE_CUDA
namespace cuda {
bool DevicePresent();
Status AttentionForward(const AttentionParams& p);
Status AttentionBackwardPrep(const AttentionParams& p);
Status AttentionBackward(const AttentionParams& p);
Status AttentionMerge(DType dtype, int64_t sq, int64_t hq, int64_t d, View3 o_acc, float* lse_acc,
                      View3 o_part, const float* lse_part, void* stream);
}  // namespace cuda
#endif

}  // namespace rw::kernels
