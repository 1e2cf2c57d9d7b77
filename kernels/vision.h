// The ops of an image VQGAN (runtime/vqgan.h): 2-D convolution, GroupNorm (with SiLU fused after it),
// nearest-neighbour 2x upsampling and the nearest codebook entry. Inference only (no backward): the VQGAN
// turns frames into codes and codes into frames; it is not trained here.
//
// Images are NHWC (batch, height, width, channels), fp32, rows contiguous, as Flax (and LWM's VQGAN) keeps
// them; a convolution's kernel is (kh, kw, cin, cout), Flax's layout, so converted weights are used as they
// are. Entry points validate once and dispatch through the device's backend table (kernels/backend.h).
#pragma once

#include <cstdint>

#include "kernels/common.h"
#include "kernels/layers.h"  // Exec

namespace rw::kernels {

struct Conv2dShape {
  int64_t n = 1, h = 0, w = 0, cin = 0, cout = 0;  // input (n, h, w, cin), output channels
  int64_t kh = 3, kw = 3, stride = 1;
  int64_t pad_top = 1, pad_left = 1, pad_bottom = 1, pad_right = 1;  // zeros around the input
  int64_t out_h() const { return (h + pad_top + pad_bottom - kh) / stride + 1; }
  int64_t out_w() const { return (w + pad_left + pad_right - kw) / stride + 1; }
  // "SAME" for an odd kernel at stride 1 (Flax's default): pad (k - 1) / 2 on every side.
  static Conv2dShape Same(int64_t n, int64_t h, int64_t w, int64_t cin, int64_t cout, int64_t k);
};

// y (n, out_h, out_w, cout) = conv(x, w) + bias. w: (kh, kw, cin, cout); bias: (cout) or null.
Status Conv2dForward(const Exec& ex, const Conv2dShape& s, const float* x, const float* w, const float* bias,
                     float* y);

// GroupNorm over each image's (pixels x channels of a group): y = (x - mean) / sqrt(var + eps) * scale +
// bias per channel (variance biased, statistics in fp64 on ref and fp32-with-compensation elsewhere), then
// y = y * sigmoid(y) when `silu`. x, y: (n, pixels, c), c a multiple of `groups`; y may be x.
Status GroupNormForward(const Exec& ex, int64_t n, int64_t pixels, int64_t c, int64_t groups, float eps,
                        const float* x, const float* scale, const float* bias, bool silu, float* y);

// y (n, 2h, 2w, c): each pixel of x repeated into a 2 x 2 block.
Status UpsampleNearest2x(const Exec& ex, int64_t n, int64_t h, int64_t w, int64_t c, const float* x, float* y);

// For each of n vectors of z (n, d): the index of the codebook row (k, d) at the least squared distance,
// ties to the lower index. The CPU backend screens with a GEMM and settles every near tie in fp64, so its
// choice is the exact argmin's.
Status NearestCode(const Exec& ex, int64_t n, int64_t d, int64_t k, const float* z, const float* codebook,
                   int32_t* index);

}  // namespace rw::kernels
