// Small vectorizable helpers for the CPU backend (the compiler turns these loops into SIMD).
#pragma once

#include <bit>
#include <cstdint>
#include <limits>

namespace rw::kernels::cpu {

// exp(x) for float, about 2 ulp over the range that matters for softmax; exact 0 for x < -87.3
// (including -inf), so masked scores contribute nothing. Branch-free so loops over it vectorize.
//   exp(x) = 2^n * exp(r),  n = round(x / ln2),  r = x - n ln2 in [-ln2/2, ln2/2]
//   exp(r) ~ 1 + r + r^2/2! + ... + r^7/7!  (Horner)
inline float FastExp(float x) {
  const float xc = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  const float t = xc * 1.44269504088896341f;
  const float n = (t + 12582912.f) - 12582912.f;  // round to nearest (1.5 * 2^23 trick)
  const float r = (xc - n * 0.693145751953125f) - n * 1.428606765330187045e-06f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const int32_t bits = (int32_t(n) + 127) << 23;
  const float val = p * std::bit_cast<float>(bits);
  return x < -87.3f ? 0.f : val;
}

}  // namespace rw::kernels::cpu
