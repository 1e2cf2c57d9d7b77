// Fast CPU versions of the per-token layers: rows in parallel (OpenMP) for the elementwise ops, and
// token blocks through multi-threaded OpenBLAS for the projections (the block products are large, so
// BLAS's own threads use the cores better than splitting blocks across threads would).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "kernels/backends.h"
#include "kernels/cpu/vec.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace rw::kernels::cpu {
namespace {
int Threads(const Exec& ex) { return ex.num_threads > 0 ? ex.num_threads : DefaultThreads(); }
inline float Sigmoid(float g) { return 1.f / (1.f + FastExp(-g)); }
}  // namespace

void LinearForward(const Exec& ex, int64_t n, int64_t in, int64_t out, const float* x, const float* w, float* y) {
  ParallelSgemm(Threads(ex), false, true, n, out, in, 1.f, x, in, w, in, 0.f, y, out);
}

void LinearBackward(const Exec& ex, int64_t n, int64_t in, int64_t out, const float* x, const float* w,
                    const float* dy, float* dx, float* dw) {
  if (dx) ParallelSgemm(Threads(ex), false, false, n, in, out, 1.f, dy, out, w, in, 0.f, dx, in);
  ParallelSgemm(Threads(ex), true, false, out, in, n, 1.f, dy, out, x, in, 1.f, dw, in);
}

void RmsNormForward(const Exec& ex, int64_t n, int64_t e, const float* x, const float* w, float eps,
                    float* y, float* rstd) {
#pragma omp parallel for num_threads(Threads(ex)) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * e;
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < e; ++j) ss += xi[j] * xi[j];
    const float r = 1.f / std::sqrt(ss / float(e) + eps);
    float* yi = y + i * e;
#pragma omp simd
    for (int64_t j = 0; j < e; ++j) yi[j] = xi[j] * r * w[j];
    rstd[i] = r;
  }
}

void RmsNormBackward(const Exec& ex, int64_t n, int64_t e, const float* x, const float* w,
                     const float* rstd, const float* dy, float* dx, float* dw) {
  const int nt = Threads(ex);
  // dw is shared by all rows: each thread sums its rows into a private copy, then copies add in order.
  std::vector<float> dw_part(size_t(nt) * e, 0.f);
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    float* mine = dw_part.data() + size_t(omp_get_thread_num()) * e;
#else
    float* mine = dw_part.data();
#endif
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float* xi = x + i * e;
      const float* gi = dy + i * e;
      const float r = rstd[i];
      float dot = 0.f;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < e; ++j) dot += xi[j] * w[j] * gi[j];
      const float k = r * r * dot / float(e);
      float* dxi = dx + i * e;
#pragma omp simd
      for (int64_t j = 0; j < e; ++j) {
        dxi[j] = r * (w[j] * gi[j] - xi[j] * k);
        mine[j] += gi[j] * xi[j] * r;
      }
    }
  }
  for (int t = 0; t < nt; ++t)
    for (int64_t j = 0; j < e; ++j) dw[j] += dw_part[size_t(t) * e + j];
}

void Rope(const Exec& ex, int64_t s, int64_t h, int64_t d, View3 x, View3 y, const int64_t* pos,
          double theta, bool inverse) {
  const int64_t half = d / 2;
  std::vector<double> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) inv_freq[i] = std::pow(theta, -2.0 * double(i) / double(d));
#pragma omp parallel num_threads(Threads(ex))
  {
    std::vector<float> cs(half), sn(half);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < s; ++t) {
      for (int64_t i = 0; i < half; ++i) {
        const double a = double(pos[t]) * inv_freq[i];  // fp64: positions up to ~1M keep precision
        cs[i] = float(std::cos(a));
        sn[i] = float(inverse ? -std::sin(a) : std::sin(a));
      }
      for (int64_t hh = 0; hh < h; ++hh) {
        const float* in = x.at<float>(t, hh);
        float* out = y.at<float>(t, hh);
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          const float x0 = in[i], x1 = in[i + half];
          out[i] = x0 * cs[i] - x1 * sn[i];
          out[i + half] = x1 * cs[i] + x0 * sn[i];
        }
      }
    }
  }
}

void FfnForward(const Exec& ex, int64_t n, int64_t e, int64_t f, const float* x, FfnWeights w, float* y,
                int64_t block) {
  std::vector<float> g(block * f), u(block * f);
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const int64_t nb = std::min(block, n - b0);
    const float* xb = x + b0 * e;
    ParallelSgemm(Threads(ex), false, true, nb, f, e, 1.f, xb, e, w.w_gate, e, 0.f, g.data(), f);
    ParallelSgemm(Threads(ex), false, true, nb, f, e, 1.f, xb, e, w.w_up, e, 0.f, u.data(), f);
#pragma omp parallel for simd num_threads(Threads(ex))
    for (int64_t i = 0; i < nb * f; ++i) g[i] = g[i] * Sigmoid(g[i]) * u[i];
    ParallelSgemm(Threads(ex), false, true, nb, e, f, 1.f, g.data(), f, w.w_down, f, 0.f, y + b0 * e, e);
  }
}

void FfnBackward(const Exec& ex, int64_t n, int64_t e, int64_t f, const float* x, FfnWeights w,
                 const float* dy, float* dx, FfnGrads dw, int64_t block) {
  std::vector<float> g(block * f), u(block * f), a(block * f), da(block * f);
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const int64_t nb = std::min(block, n - b0);
    const float* xb = x + b0 * e;
    const float* dyb = dy + b0 * e;
    ParallelSgemm(Threads(ex), false, true, nb, f, e, 1.f, xb, e, w.w_gate, e, 0.f, g.data(), f);
    ParallelSgemm(Threads(ex), false, true, nb, f, e, 1.f, xb, e, w.w_up, e, 0.f, u.data(), f);
    ParallelSgemm(Threads(ex), false, false, nb, f, e, 1.f, dyb, e, w.w_down, f, 0.f, da.data(), f);
    // a = silu(g) u;  du = da silu(g) (into u's slot after use);  dg = da u silu'(g) (into g)
#pragma omp parallel for simd num_threads(Threads(ex))
    for (int64_t i = 0; i < nb * f; ++i) {
      const float sg = Sigmoid(g[i]), silu = g[i] * sg;
      a[i] = silu * u[i];
      const float dgi = da[i] * u[i] * sg * (1.f + g[i] * (1.f - sg));
      u[i] = da[i] * silu;
      g[i] = dgi;
    }
    ParallelSgemm(Threads(ex), true, false, e, f, nb, 1.f, dyb, e, a.data(), f, 1.f, dw.w_down, f);
    ParallelSgemm(Threads(ex), false, false, nb, e, f, 1.f, g.data(), f, w.w_gate, e, 0.f, dx + b0 * e, e);
    ParallelSgemm(Threads(ex), false, false, nb, e, f, 1.f, u.data(), f, w.w_up, e, 1.f, dx + b0 * e, e);
    ParallelSgemm(Threads(ex), true, false, f, e, nb, 1.f, g.data(), f, xb, e, 1.f, dw.w_gate, e);
    ParallelSgemm(Threads(ex), true, false, f, e, nb, 1.f, u.data(), f, xb, e, 1.f, dw.w_up, e);
  }
}

namespace {
// Row-wise log-sum-exp of a block of logits, in fp32 with the max trick.
float RowLse(const float* z, int64_t vocab) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t c = 0; c < vocab; ++c) m = std::max(m, z[c]);
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t c = 0; c < vocab; ++c) s += FastExp(z[c] - m);
  return m + std::log(s);
}
}  // namespace

double CrossEntropyForward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, const float* h,
                           const float* w, const int32_t* target, const float* weight, float* loss,
                           int64_t block) {
  std::vector<float> z(block * vocab);
  double total = 0;
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const int64_t nb = std::min(block, n - b0);
    ParallelSgemm(Threads(ex), false, true, nb, vocab, e, 1.f, h + b0 * e, e, w, e, 0.f, z.data(), vocab);
#pragma omp parallel for num_threads(Threads(ex)) reduction(+ : total) schedule(static)
    for (int64_t i = 0; i < nb; ++i) {
      const int64_t r = b0 + i;
      if (target[r] < 0) {
        loss[r] = 0.f;
        continue;
      }
      const float* zi = z.data() + i * vocab;
      loss[r] = RowLse(zi, vocab) - zi[target[r]];
      total += double(weight ? weight[r] : 1.f) * double(loss[r]);
    }
  }
  return total;
}

void CrossEntropyBackward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, const float* h,
                          const float* w, const int32_t* target, const float* weight, float grad_scale,
                          float* dh, float* dw, int64_t block) {
  std::vector<float> z(block * vocab);
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const int64_t nb = std::min(block, n - b0);
    ParallelSgemm(Threads(ex), false, true, nb, vocab, e, 1.f, h + b0 * e, e, w, e, 0.f, z.data(), vocab);
    // dz = grad_scale w_i (softmax - onehot); rows with no target or zero weight give 0.
#pragma omp parallel for num_threads(Threads(ex)) schedule(static)
    for (int64_t i = 0; i < nb; ++i) {
      const int64_t r = b0 + i;
      float* zi = z.data() + i * vocab;
      const float wi = (target[r] < 0) ? 0.f : grad_scale * (weight ? weight[r] : 1.f);
      if (wi == 0.f) {
        std::fill(zi, zi + vocab, 0.f);
        continue;
      }
      const float lse = RowLse(zi, vocab);
#pragma omp simd
      for (int64_t c = 0; c < vocab; ++c) zi[c] = wi * FastExp(zi[c] - lse);
      zi[target[r]] -= wi;
    }
    ParallelSgemm(Threads(ex), false, false, nb, e, vocab, 1.f, z.data(), vocab, w, e, 0.f, dh + b0 * e, e);
    ParallelSgemm(Threads(ex), true, false, vocab, e, nb, 1.f, z.data(), vocab, h + b0 * e, e, 1.f, dw, e);
  }
}

void AdamWStep(const Exec& ex, int64_t n, float* p, const float* g, float* m, float* v,
               const AdamWHyper& hp, int64_t step) {
  const float b1 = hp.beta1, b2 = hp.beta2;
  const float inv_c1 = float(1.0 / (1.0 - std::pow(double(b1), double(step))));
  const float inv_c2 = float(1.0 / (1.0 - std::pow(double(b2), double(step))));
  const float decay = 1.f - hp.lr * hp.weight_decay;
#pragma omp parallel for simd num_threads(Threads(ex)) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float mi = b1 * m[i] + (1.f - b1) * g[i];
    const float vi = b2 * v[i] + (1.f - b2) * g[i] * g[i];
    p[i] = p[i] * decay - hp.lr * (mi * inv_c1) / (std::sqrt(vi * inv_c2) + hp.eps);
    m[i] = mi;
    v[i] = vi;
  }
}

void AddInto(const Exec& ex, int64_t n, const float* src, float* dst) {
  // Small adds stay on the calling thread: a ring step's dK/dV add must not wake a thread team.
  const int nt = n < (int64_t(1) << 16) ? 1 : Threads(ex);
#pragma omp parallel for simd num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}

}  // namespace rw::kernels::cpu
