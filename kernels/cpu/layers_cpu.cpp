// Fast CPU versions of the per-token layers: rows in parallel (OpenMP) for the elementwise ops, and token
// blocks through GEMMs whose rows are split across the threads (kernels/cpu/gemm.h) for the projections.
//
// Precision: an op computes in its weights' dtype. fp32 is the path these kernels always had (the same
// operations in the same order; the GEMM library below them decides the bits: cpu/gemm.h). bf16: every GEMM takes bf16
// operands and accumulates in fp32; what lies between GEMMs (silu, softmax, the loss, norms) is fp32, and
// is rounded to bf16 only where it becomes the operand of the next GEMM.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/scratch.h"
#include "kernels/cpu/vec.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace rw::kernels::cpu {
namespace {
int Threads(const Exec& ex) { return ex.num_threads > 0 ? ex.num_threads : DefaultThreads(); }
inline float Sigmoid(float g) { return 1.f / (1.f + FastExp(-g)); }

#if defined(__x86_64__)
// ToBf16 on 16 lanes, bit for bit (round to nearest even, NaN kept quiet, subnormals rounded like any other
// value: VCVTNEPS2BF16 would flush them, so the rounding of an fp32 activation would depend on the CPU).
__attribute__((target("avx512f,avx512bw"))) void RoundSpan512(const float* src, int64_t n, bf16* dst) {
  const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff);
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
  const __m512i quiet = _mm512_set1_epi32(0x40);
  int64_t i = 0;
  auto round16 = [&](__m512i u) {
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
    const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(bias, lsb)), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs_mask), inf);
    return _mm512_cvtepi32_epi16(_mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), quiet));
  };
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), round16(_mm512_loadu_si512(src + i)));
  if (i < n) {
    const __mmask16 k = __mmask16((1u << (n - i)) - 1);
    _mm256_mask_storeu_epi16(dst + i, k, round16(_mm512_maskz_loadu_epi32(k, src + i)));
  }
}
#endif

void RoundSpan(const float* src, int64_t n, bf16* dst) {
#if defined(__x86_64__)
  static const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  if (avx512) return RoundSpan512(src, n, dst);
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = ToBf16(src[i]);
}

void RoundTo(int threads, const float* src, int64_t n, bf16* dst) {
  const int nt = n < (int64_t(1) << 15) ? 1 : threads;
  if (nt == 1) return RoundSpan(src, n, dst);
  // Equal spans of whole cache lines (16 floats) per thread.
  const int64_t lines = (n + 15) / 16;
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
#else
    const int64_t t = 0, T = 1;
#endif
    const int64_t b = std::min(n, lines * t / T * 16), e = std::min(n, lines * (t + 1) / T * 16);
    if (e > b) RoundSpan(src + b, e - b, dst + b);
  }
}

// An operand in the op's compute dtype: the caller's memory when it is in that dtype already, else a copy
// rounded to it (an fp32 activation entering a bf16 op).
class Operand {
 public:
  // `copy`: where a rounded copy goes (the site's scratch buffer).
  Operand(int threads, View v, int64_t count, DType compute, std::vector<bf16>& copy) : p_(v.data) {
    if (v.dtype == compute) return;
    copy.resize(size_t(count));
    RoundTo(threads, v.as<const float>(), count, copy.data());
    p_ = copy.data();
  }
  const void* get() const { return p_; }
  // The operand `elems` elements further on.
  const void* at(int64_t elems, DType compute) const {
    return static_cast<const char*>(p_) + elems * DTypeSize(compute);
  }

 private:
  const void* p_;
};

// fp32 results into an output of either dtype.
void Store(int threads, const float* src, int64_t n, View dst) {
  if (dst.dtype == DType::kF32) {
    if (dst.as<float>() != src) std::copy_n(src, n, dst.as<float>());
  } else {
    RoundTo(threads, src, n, dst.as<bf16>());
  }
}

// fp32 scratch for an fp32 result: the output itself when it is fp32, else `tmp`.
float* ResultBuffer(View out, int64_t n, std::vector<float>& tmp) {
  if (out.dtype == DType::kF32) return out.as<float>();
  tmp.resize(size_t(n));
  return tmp.data();
}

// An fp32 intermediate as the next GEMM's operand: itself in fp32, a rounded copy in bf16.
const void* Narrow(int threads, DType compute, const std::vector<float>& x, int64_t n, std::vector<bf16>& tmp) {
  if (compute == DType::kF32) return x.data();
  tmp.resize(size_t(n));
  RoundTo(threads, x.data(), n, tmp.data());
  return tmp.data();
}
}  // namespace

Status LinearForward(const Exec& ex, int64_t n, int64_t in, int64_t out, View x, View w, View y) {
  const DType ct = w.dtype;
  const Operand X(Threads(ex), x, n * in, ct, Scratch<bf16, struct LinearFwdX>(0));
  float* yf = ResultBuffer(y, n * out, Scratch<float, struct LinearFwdY>(0));
  ParallelGemm(Threads(ex), ct, false, true, n, out, in, 1.f, X.get(), in, w.data, in, 0.f, yf, out);
  Store(Threads(ex), yf, n * out, y);
  return Status::Ok();
}

Status LinearBackward(const Exec& ex, int64_t n, int64_t in, int64_t out, View x, View w, View dy, View dx,
                      float* dw) {
  const DType ct = w.dtype;
  const Operand X(Threads(ex), x, n * in, ct, Scratch<bf16, struct LinearBwdX>(0)),
      Dy(Threads(ex), dy, n * out, ct, Scratch<bf16, struct LinearBwdDy>(0));
  if (dx) {
    float* dxf = ResultBuffer(dx, n * in, Scratch<float, struct LinearBwdDx>(0));
    ParallelGemm(Threads(ex), ct, false, false, n, in, out, 1.f, Dy.get(), out, w.data, in, 0.f, dxf, in);
    Store(Threads(ex), dxf, n * in, dx);
  }
  ParallelGemm(Threads(ex), ct, true, false, out, in, n, 1.f, Dy.get(), out, X.get(), in, 1.f, dw, in);
  return Status::Ok();
}

Status RmsNormForward(const Exec& ex, int64_t n, int64_t e, const float* x, const float* w, float eps, View y,
                      float* rstd) {
  const bool narrow = y.dtype == DType::kBF16;
#pragma omp parallel for num_threads(Threads(ex)) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * e;
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < e; ++j) ss += xi[j] * xi[j];
    const float r = 1.f / std::sqrt(ss / float(e) + eps);
    if (narrow) {
      bf16* yi = y.as<bf16>() + i * e;
#pragma omp simd
      for (int64_t j = 0; j < e; ++j) yi[j] = ToBf16(xi[j] * r * w[j]);
    } else {
      float* yi = y.as<float>() + i * e;
#pragma omp simd
      for (int64_t j = 0; j < e; ++j) yi[j] = xi[j] * r * w[j];
    }
    rstd[i] = r;
  }
  return Status::Ok();
}

Status RmsNormBackward(const Exec& ex, int64_t n, int64_t e, const float* x, const float* w,
                     const float* rstd, const float* dy, float* dx, float* dw) {
  const int nt = Threads(ex);
  // dw is shared by all rows: each thread sums its rows into a private copy, then copies add in order.
  std::vector<float>& dw_part = Scratch<float, struct RmsNormDw>(size_t(nt) * e);
  std::fill(dw_part.begin(), dw_part.end(), 0.f);
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
  return Status::Ok();
}

// The cos/sin table of a rotation, kept by the calling thread (a rank) for the next call with the same
// positions, theta, d and direction: a layer's q and k, every layer of a step, and the backward rotate by the
// same positions, so a step computes each table once instead of 4 x layers times. The angles are fp64 (so
// positions up to ~1M keep their precision) and the table holds exactly the values the loop used to compute
// per call: results are bitwise the same. Tables over kMaxRopeCacheBytes are computed per call.
struct RopeTable {
  double theta = 0;
  int64_t d = 0;
  bool inverse = false;
  std::vector<int64_t> pos;
  std::vector<float> cs, sn;  // (s, d / 2)
};
constexpr size_t kMaxRopeCacheBytes = size_t(64) << 20;

const RopeTable* CachedRopeTable(int nt, int64_t s, int64_t d, const int64_t* pos, double theta, bool inverse) {
  const int64_t half = d / 2;
  if (size_t(s) * size_t(half) * 2 * sizeof(float) > kMaxRopeCacheBytes) return nullptr;
  thread_local RopeTable tables[2];  // forward and inverse
  RopeTable& t = tables[inverse ? 1 : 0];
  if (t.theta == theta && t.d == d && t.inverse == inverse && t.pos.size() == size_t(s) &&
      std::equal(pos, pos + s, t.pos.begin()))
    return &t;
  t.theta = theta;
  t.d = d;
  t.inverse = inverse;
  t.pos.assign(pos, pos + s);
  t.cs.resize(size_t(s * half));
  t.sn.resize(size_t(s * half));
  std::vector<double>& inv_freq = Scratch<double, struct RopeFreq>(size_t(half));
  for (int64_t i = 0; i < half; ++i) inv_freq[i] = std::pow(theta, -2.0 * double(i) / double(d));
  float* const cs = t.cs.data();
  float* const sn = t.sn.data();
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < s; ++r)
    for (int64_t i = 0; i < half; ++i) {
      const double a = double(pos[r]) * inv_freq[i];
      cs[r * half + i] = float(std::cos(a));
      sn[r * half + i] = float(inverse ? -std::sin(a) : std::sin(a));
    }
  return &t;
}

Status Rope(const Exec& ex, int64_t s, int64_t h, int64_t d, View3 x, View3 y, const int64_t* pos,
          double theta, bool inverse) {
  const int64_t half = d / 2;
  const RopeTable* table = CachedRopeTable(Threads(ex), s, d, pos, theta, inverse);
  std::vector<double>& inv_freq = Scratch<double, struct RopeFreq>(size_t(half));
  if (!table)
    for (int64_t i = 0; i < half; ++i) inv_freq[i] = std::pow(theta, -2.0 * double(i) / double(d));
#pragma omp parallel num_threads(Threads(ex))
  {
    std::vector<float>& cs_row = Scratch<float, struct RopeCos>(size_t(half));
    std::vector<float>& sn_row = Scratch<float, struct RopeSin>(size_t(half));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < s; ++t) {
      const float* cs = cs_row.data();
      const float* sn = sn_row.data();
      if (table) {
        cs = table->cs.data() + t * half;
        sn = table->sn.data() + t * half;
      } else {
        for (int64_t i = 0; i < half; ++i) {
          const double a = double(pos[t]) * inv_freq[i];  // fp64: positions up to ~1M keep precision
          cs_row[i] = float(std::cos(a));
          sn_row[i] = float(inverse ? -std::sin(a) : std::sin(a));
        }
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
  return Status::Ok();
}

Status FfnForward(const Exec& ex, int64_t n, int64_t e, int64_t f, View x, FfnWeights w, View y, int64_t block) {
  const DType ct = w.w_gate.dtype;
  const int nt = Threads(ex);
  const Operand X(nt, x, n * e, ct, Scratch<bf16, struct FfnFwdX>(0));
  std::vector<float>& g = Scratch<float, struct FfnFwdGate>(size_t(block * f));
  std::vector<float>& u = Scratch<float, struct FfnFwdUp>(size_t(block * f));
  std::vector<bf16>& an = Scratch<bf16, struct FfnFwdAct>(0);
  float* yf = ResultBuffer(y, n * e, Scratch<float, struct FfnFwdY>(0));
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const int64_t nb = std::min(block, n - b0);
    const void* xb = X.at(b0 * e, ct);
    ParallelGemm(nt, ct, false, true, nb, f, e, 1.f, xb, e, w.w_gate.data, e, 0.f, g.data(), f);
    ParallelGemm(nt, ct, false, true, nb, f, e, 1.f, xb, e, w.w_up.data, e, 0.f, u.data(), f);
#pragma omp parallel for simd num_threads(nt)
    for (int64_t i = 0; i < nb * f; ++i) g[i] = g[i] * Sigmoid(g[i]) * u[i];
    const void* a = Narrow(nt, ct, g, nb * f, an);
    ParallelGemm(nt, ct, false, true, nb, e, f, 1.f, a, f, w.w_down.data, f, 0.f, yf + b0 * e, e);
  }
  Store(nt, yf, n * e, y);
  return Status::Ok();
}

Status FfnBackward(const Exec& ex, int64_t n, int64_t e, int64_t f, View x, FfnWeights w, View dy, float* dx,
                   FfnGrads dw, int64_t block) {
  const DType ct = w.w_gate.dtype;
  const int nt = Threads(ex);
  const Operand X(nt, x, n * e, ct, Scratch<bf16, struct FfnBwdX>(0)),
      Dy(nt, dy, n * e, ct, Scratch<bf16, struct FfnBwdDy>(0));
  std::vector<float>& g = Scratch<float, struct FfnBwdGate>(size_t(block * f));
  std::vector<float>& u = Scratch<float, struct FfnBwdUp>(size_t(block * f));
  std::vector<float>& a = Scratch<float, struct FfnBwdAct>(size_t(block * f));
  std::vector<float>& da = Scratch<float, struct FfnBwdDAct>(size_t(block * f));
  std::vector<bf16>& an = Scratch<bf16, struct FfnBwdActN>(0);
  std::vector<bf16>& un = Scratch<bf16, struct FfnBwdUpN>(0);
  std::vector<bf16>& gn = Scratch<bf16, struct FfnBwdGateN>(0);
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const int64_t nb = std::min(block, n - b0);
    const void* xb = X.at(b0 * e, ct);
    const void* dyb = Dy.at(b0 * e, ct);
    ParallelGemm(nt, ct, false, true, nb, f, e, 1.f, xb, e, w.w_gate.data, e, 0.f, g.data(), f);
    ParallelGemm(nt, ct, false, true, nb, f, e, 1.f, xb, e, w.w_up.data, e, 0.f, u.data(), f);
    ParallelGemm(nt, ct, false, false, nb, f, e, 1.f, dyb, e, w.w_down.data, f, 0.f, da.data(), f);
    // a = silu(g) u;  du = da silu(g) (into u's slot after use);  dg = da u silu'(g) (into g)
#pragma omp parallel for simd num_threads(nt)
    for (int64_t i = 0; i < nb * f; ++i) {
      const float sg = Sigmoid(g[i]), silu = g[i] * sg;
      a[i] = silu * u[i];
      const float dgi = da[i] * u[i] * sg * (1.f + g[i] * (1.f - sg));
      u[i] = da[i] * silu;
      g[i] = dgi;
    }
    const void* ab = Narrow(nt, ct, a, nb * f, an);
    const void* dub = Narrow(nt, ct, u, nb * f, un);
    const void* dgb = Narrow(nt, ct, g, nb * f, gn);
    ParallelGemm(nt, ct, true, false, e, f, nb, 1.f, dyb, e, ab, f, 1.f, dw.w_down, f);
    ParallelGemm(nt, ct, false, false, nb, e, f, 1.f, dgb, f, w.w_gate.data, e, 0.f, dx + b0 * e, e);
    ParallelGemm(nt, ct, false, false, nb, e, f, 1.f, dub, f, w.w_up.data, e, 1.f, dx + b0 * e, e);
    ParallelGemm(nt, ct, true, false, f, e, nb, 1.f, dgb, f, xb, e, 1.f, dw.w_gate, e);
    ParallelGemm(nt, ct, true, false, f, e, nb, 1.f, dub, f, xb, e, 1.f, dw.w_up, e);
  }
  return Status::Ok();
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

Status CrossEntropyForward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, View h, View w,
                           const int32_t* target, const float* weight, float* loss, double* weighted_sum,
                           int64_t block) {
  const DType ct = w.dtype;
  const Operand H(Threads(ex), h, n * e, ct, Scratch<bf16, struct CeFwdH>(0));
  std::vector<float>& z = Scratch<float, struct CeFwdLogits>(size_t(block * vocab));
  double total = 0;
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const int64_t nb = std::min(block, n - b0);
    ParallelGemm(Threads(ex), ct, false, true, nb, vocab, e, 1.f, H.at(b0 * e, ct), e, w.data, e, 0.f, z.data(),
                 vocab);
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
  if (weighted_sum) *weighted_sum = total;
  return Status::Ok();
}

Status CrossEntropyBackward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, View h, View w,
                            const int32_t* target, const float* weight, float grad_scale, float* dh, float* dw,
                            int64_t block) {
  const DType ct = w.dtype;
  const Operand H(Threads(ex), h, n * e, ct, Scratch<bf16, struct CeBwdH>(0));
  std::vector<float>& z = Scratch<float, struct CeBwdLogits>(size_t(block * vocab));
  std::vector<bf16>& zn = Scratch<bf16, struct CeBwdLogitsN>(0);
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const int64_t nb = std::min(block, n - b0);
    ParallelGemm(Threads(ex), ct, false, true, nb, vocab, e, 1.f, H.at(b0 * e, ct), e, w.data, e, 0.f, z.data(),
                 vocab);
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
    const void* dz = Narrow(Threads(ex), ct, z, nb * vocab, zn);
    ParallelGemm(Threads(ex), ct, false, false, nb, e, vocab, 1.f, dz, vocab, w.data, e, 0.f, dh + b0 * e, e);
    ParallelGemm(Threads(ex), ct, true, false, vocab, e, nb, 1.f, dz, vocab, H.at(b0 * e, ct), e, 1.f, dw, e);
  }
  return Status::Ok();
}

Status AdamWStep(const Exec& ex, int64_t n, float* p, const float* g, float* m, float* v,
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
  return Status::Ok();
}

Status AddInto(const Exec& ex, int64_t n, const float* src, float* dst) {
  // Small adds stay on the calling thread: a ring step's dK/dV add must not wake a thread team.
  const int nt = n < (int64_t(1) << 16) ? 1 : Threads(ex);
#pragma omp parallel for simd num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
  return Status::Ok();
}

Status Cast(const Exec& ex, int64_t n, View src, View dst) {
  if (src.dtype == dst.dtype) {
    std::copy_n(static_cast<const char*>(src.data), n * DTypeSize(src.dtype), static_cast<char*>(dst.data));
  } else if (src.dtype == DType::kF32) {
    RoundTo(Threads(ex), src.as<const float>(), n, dst.as<bf16>());
  } else {
    const bf16* s = src.as<const bf16>();
    float* d = dst.as<float>();
    const int nt = n < (int64_t(1) << 15) ? 1 : Threads(ex);
#pragma omp parallel for simd num_threads(nt) schedule(static)
    for (int64_t i = 0; i < n; ++i) d[i] = ToFloat(s[i]);
  }
  return Status::Ok();
}

Status EmbeddingForward(const Exec& ex, int64_t n, int64_t e, const int32_t* ids, const float* table, float* x) {
#pragma omp parallel for num_threads(Threads(ex)) schedule(static)
  for (int64_t i = 0; i < n; ++i) std::copy_n(table + int64_t(ids[i]) * e, e, x + i * e);
  return Status::Ok();
}

Status EmbeddingBackward(const Exec&, int64_t n, int64_t e, const int32_t* ids, const float* dx, float* dtable) {
  // Token order on one thread: two tokens of one id add into one row, and the order fixes the sum's bits.
  for (int64_t i = 0; i < n; ++i) {
    float* row = dtable + int64_t(ids[i]) * e;
    const float* g = dx + i * e;
    for (int64_t j = 0; j < e; ++j) row[j] += g[j];
  }
  return Status::Ok();
}

}  // namespace rw::kernels::cpu
