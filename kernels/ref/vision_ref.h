// Scalar references of the VQGAN's ops (kernels/vision.h): the spec. Plain loops, fp64 accumulation.
// Templated on T so that tests can run them in fp64.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/vision.h"

namespace rw::kernels::ref {

template <class T>
void Conv2dForward(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y) {
  const int64_t oh = s.out_h(), ow = s.out_w();
  for (int64_t b = 0; b < s.n; ++b)
    for (int64_t i = 0; i < oh; ++i)
      for (int64_t j = 0; j < ow; ++j)
        for (int64_t o = 0; o < s.cout; ++o) {
          double acc = bias ? double(bias[o]) : 0.0;
          for (int64_t u = 0; u < s.kh; ++u) {
            const int64_t r = i * s.stride + u - s.pad_top;
            if (r < 0 || r >= s.h) continue;
            for (int64_t v = 0; v < s.kw; ++v) {
              const int64_t q = j * s.stride + v - s.pad_left;
              if (q < 0 || q >= s.w) continue;
              const T* px = x + ((b * s.h + r) * s.w + q) * s.cin;
              const T* pw = w + (u * s.kw + v) * s.cin * s.cout + o;
              for (int64_t c = 0; c < s.cin; ++c) acc += double(px[c]) * double(pw[c * s.cout]);
            }
          }
          y[((b * oh + i) * ow + j) * s.cout + o] = T(acc);
        }
}

template <class T>
void GroupNormForward(int64_t n, int64_t pixels, int64_t c, int64_t groups, double eps, const T* x, const T* scale,
                      const T* bias, bool silu, T* y) {
  const int64_t cg = c / groups;
  for (int64_t b = 0; b < n; ++b)
    for (int64_t g = 0; g < groups; ++g) {
      double sum = 0, sq = 0;
      for (int64_t p = 0; p < pixels; ++p)
        for (int64_t k = 0; k < cg; ++k) sum += double(x[(b * pixels + p) * c + g * cg + k]);
      const double count = double(pixels * cg), mean = sum / count;
      for (int64_t p = 0; p < pixels; ++p)
        for (int64_t k = 0; k < cg; ++k) {
          const double d = double(x[(b * pixels + p) * c + g * cg + k]) - mean;
          sq += d * d;
        }
      const double rstd = 1.0 / std::sqrt(sq / count + eps);
      for (int64_t p = 0; p < pixels; ++p)
        for (int64_t k = 0; k < cg; ++k) {
          const int64_t ch = g * cg + k, at = (b * pixels + p) * c + ch;
          double v = (double(x[at]) - mean) * rstd * double(scale[ch]) + double(bias[ch]);
          if (silu) v = v / (1.0 + std::exp(-v));
          y[at] = T(v);
        }
    }
}

template <class T>
void UpsampleNearest2x(int64_t n, int64_t h, int64_t w, int64_t c, const T* x, T* y) {
  for (int64_t b = 0; b < n; ++b)
    for (int64_t i = 0; i < 2 * h; ++i)
      for (int64_t j = 0; j < 2 * w; ++j)
        for (int64_t k = 0; k < c; ++k)
          y[((b * 2 * h + i) * 2 * w + j) * c + k] = x[((b * h + i / 2) * w + j / 2) * c + k];
}

// The squared distance of z to every code, in fp64; the least (ties: the lower index).
template <class T>
void NearestCode(int64_t n, int64_t d, int64_t k, const T* z, const T* codebook, int32_t* index) {
  for (int64_t i = 0; i < n; ++i) {
    double best = INFINITY;
    int32_t at = 0;
    for (int64_t j = 0; j < k; ++j) {
      double dist = 0;
      for (int64_t t = 0; t < d; ++t) {
        const double diff = double(z[i * d + t]) - double(codebook[j * d + t]);
        dist += diff * diff;
      }
      if (dist < best) best = dist, at = int32_t(j);
    }
    index[i] = at;
  }
}

}  // namespace rw::kernels::ref
