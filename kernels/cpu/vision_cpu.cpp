// The CPU kernels of the VQGAN's ops (kernels/vision.h): convolution as im2col blocks times the kernel
// matrix (the GEMM library's rate), GroupNorm with fp64 statistics, upsampling by row copies, and the
// nearest code screened by one GEMM and settled in fp64.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/gemm.h"

namespace rw::kernels::cpu {
namespace {
int Threads(const Exec& ex) { return ex.num_threads > 0 ? ex.num_threads : DefaultThreads(); }
}  // namespace

Status Conv2dForward(const Exec& ex, const Conv2dShape& s, const float* x, const float* w, const float* bias,
                     float* y) {
  const int nt = Threads(ex);
  const int64_t oh = s.out_h(), ow = s.out_w(), kdim = s.kh * s.kw * s.cin;
  // Flax's (kh, kw, cin, cout) kernel is the (kh kw cin) x cout matrix the patches multiply.
  const bool pointwise = s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad_top == 0 && s.pad_left == 0 &&
                         s.pad_bottom == 0 && s.pad_right == 0;
  if (pointwise) {
    ParallelSgemm(nt, false, false, s.n * s.h * s.w, s.cout, s.cin, 1.f, x, s.cin, w, s.cout, 0.f, y, s.cout);
  } else {
    // Output rows in blocks whose patch matrix stays near 8M floats.
    const int64_t rows = std::clamp<int64_t>((int64_t(1) << 23) / std::max<int64_t>(ow * kdim, 1), 1, oh);
    std::vector<float> patches(size_t(rows * ow * kdim));
    for (int64_t b = 0; b < s.n; ++b)
      for (int64_t i0 = 0; i0 < oh; i0 += rows) {
        const int64_t nr = std::min(rows, oh - i0);
#pragma omp parallel for num_threads(nt) schedule(static) collapse(2)
        for (int64_t i = 0; i < nr; ++i)
          for (int64_t j = 0; j < ow; ++j) {
            float* dst = patches.data() + (i * ow + j) * kdim;
            for (int64_t u = 0; u < s.kh; ++u) {
              const int64_t r = (i0 + i) * s.stride + u - s.pad_top;
              for (int64_t v = 0; v < s.kw; ++v, dst += s.cin) {
                const int64_t q = j * s.stride + v - s.pad_left;
                if (r < 0 || r >= s.h || q < 0 || q >= s.w)
                  std::memset(dst, 0, sizeof(float) * size_t(s.cin));
                else
                  std::memcpy(dst, x + ((b * s.h + r) * s.w + q) * s.cin, sizeof(float) * size_t(s.cin));
              }
            }
          }
        ParallelSgemm(nt, false, false, nr * ow, s.cout, kdim, 1.f, patches.data(), kdim, w, s.cout, 0.f,
                      y + (b * oh + i0) * ow * s.cout, s.cout);
      }
  }
  if (bias) {
    const int64_t pixels = s.n * oh * ow;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t p = 0; p < pixels; ++p)
      for (int64_t o = 0; o < s.cout; ++o) y[p * s.cout + o] += bias[o];
  }
  return Status::Ok();
}

Status GroupNormForward(const Exec& ex, int64_t n, int64_t pixels, int64_t c, int64_t groups, float eps,
                        const float* x, const float* scale, const float* bias, bool silu, float* y) {
  const int nt = Threads(ex);
  const int64_t cg = c / groups;
  std::vector<double> mean(static_cast<size_t>(n * groups)), rstd(static_cast<size_t>(n * groups));
  // Statistics per (image, group) in fp64: the mean first, then the squared deviations (two passes, no
  // cancellation).
#pragma omp parallel for num_threads(nt) schedule(static) collapse(2)
  for (int64_t b = 0; b < n; ++b)
    for (int64_t g = 0; g < groups; ++g) {
      double sum = 0, sq = 0;
      for (int64_t p = 0; p < pixels; ++p) {
        const float* px = x + (b * pixels + p) * c + g * cg;
        for (int64_t k = 0; k < cg; ++k) sum += double(px[k]);
      }
      const double count = double(pixels * cg), mu = sum / count;
      for (int64_t p = 0; p < pixels; ++p) {
        const float* px = x + (b * pixels + p) * c + g * cg;
        for (int64_t k = 0; k < cg; ++k) {
          const double d = double(px[k]) - mu;
          sq += d * d;
        }
      }
      mean[size_t(b * groups + g)] = mu;
      rstd[size_t(b * groups + g)] = 1.0 / std::sqrt(sq / count + double(eps));
    }
  // y = x * a + c per channel, a = rstd * scale, c = bias - mean * a; then SiLU.
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> a(static_cast<size_t>(c)), off(static_cast<size_t>(c));
    int64_t image = -1;
#pragma omp for schedule(static)
    for (int64_t bp = 0; bp < n * pixels; ++bp) {
      const int64_t b = bp / pixels;
      if (b != image) {
        image = b;
        for (int64_t ch = 0; ch < c; ++ch) {
          const size_t gi = size_t(b * groups + ch / cg);
          a[size_t(ch)] = float(rstd[gi] * double(scale[ch]));
          off[size_t(ch)] = float(double(bias[ch]) - mean[gi] * rstd[gi] * double(scale[ch]));
        }
      }
      const float* px = x + bp * c;
      float* py = y + bp * c;
      if (silu) {
        for (int64_t ch = 0; ch < c; ++ch) {
          const float v = px[ch] * a[size_t(ch)] + off[size_t(ch)];
          py[ch] = v / (1.f + std::exp(-v));
        }
      } else {
        for (int64_t ch = 0; ch < c; ++ch) py[ch] = px[ch] * a[size_t(ch)] + off[size_t(ch)];
      }
    }
  }
  return Status::Ok();
}

Status UpsampleNearest2x(const Exec& ex, int64_t n, int64_t h, int64_t w, int64_t c, const float* x, float* y) {
  const int nt = Threads(ex);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t row = 0; row < n * 2 * h; ++row) {
    const int64_t b = row / (2 * h), i = row % (2 * h);
    const float* src = x + (b * h + i / 2) * w * c;
    float* dst = y + row * 2 * w * c;
    for (int64_t j = 0; j < w; ++j) {
      std::memcpy(dst + 2 * j * c, src + j * c, sizeof(float) * size_t(c));
      std::memcpy(dst + (2 * j + 1) * c, src + j * c, sizeof(float) * size_t(c));
    }
  }
  return Status::Ok();
}

Status NearestCode(const Exec& ex, int64_t n, int64_t d, int64_t k, const float* z, const float* codebook,
                   int32_t* index) {
  const int nt = Threads(ex);
  // |c_j|^2 in fp64, and the largest, for the screening's error bound.
  std::vector<double> cn(static_cast<size_t>(k));
  double cmax = 0;
  for (int64_t j = 0; j < k; ++j) {
    double s = 0;
    for (int64_t t = 0; t < d; ++t) s += double(codebook[j * d + t]) * double(codebook[j * d + t]);
    cn[size_t(j)] = s;
    cmax = std::max(cmax, s);
  }
  auto exact = [&](int64_t i, int64_t j) {
    double s = 0;
    for (int64_t t = 0; t < d; ++t) {
      const double diff = double(z[i * d + t]) - double(codebook[j * d + t]);
      s += diff * diff;
    }
    return s;
  };
  // Blocks of rows: dist_j = |c_j|^2 - 2 z.c_j (+ |z|^2, the same for every j) from one GEMM; every code
  // within the fp32 dot product's error bound of the least is settled by its exact fp64 distance.
  const int64_t rows = std::clamp<int64_t>((int64_t(1) << 22) / k, 1, n);
  std::vector<float> dots(size_t(rows * k));
  for (int64_t i0 = 0; i0 < n; i0 += rows) {
    const int64_t nr = std::min(rows, n - i0);
    ParallelSgemm(nt, false, true, nr, k, d, 1.f, z + i0 * d, d, codebook, d, 0.f, dots.data(), k);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < nr; ++r) {
      const int64_t i = i0 + r;
      double zn = 0;
      for (int64_t t = 0; t < d; ++t) zn += double(z[i * d + t]) * double(z[i * d + t]);
      const float* dr = dots.data() + r * k;
      double best = INFINITY;
      for (int64_t j = 0; j < k; ++j) best = std::min(best, cn[size_t(j)] - 2.0 * double(dr[j]));
      // |fl(z.c) - z.c| <= 1.01 d eps |z||c| <= d eps (|z|^2 + |c|^2): twice that, as the bound on the
      // screened distances' error, both ways.
      const double tol = 4.0 * double(d + 2) * double(FLT_EPSILON) * (zn + cmax);
      double exact_best = INFINITY;
      int32_t at = 0;
      for (int64_t j = 0; j < k; ++j)
        if (cn[size_t(j)] - 2.0 * double(dr[j]) <= best + tol) {
          const double e = exact(i, j);
          if (e < exact_best) exact_best = e, at = int32_t(j);
        }
      index[i] = at;
    }
  }
  return Status::Ok();
}

}  // namespace rw::kernels::cpu
