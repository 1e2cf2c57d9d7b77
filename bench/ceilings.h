// The ceilings every benchmark prints its ratios against, measured in the same run: a 2048^3 GEMM on
// `threads` threads, fp32 (sgemm, the library's own threads) and bf16 (fp32 accumulation, rows split over
// the threads as the kernels call it). Each is the median of `reps` runs after a warm-up; bf16 takes the
// better of B and B^T layouts (the kernels use both; oneDNN's speed differs between them by run).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/common.h"
#include "kernels/cpu/gemm.h"

namespace rw::bench {

inline double MedianGemmSeconds(int reps, void (*fn)(void*), void* arg) {
  fn(arg);
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn(arg);
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct GemmInputs {
  static constexpr int64_t n = 2048;
  int threads = 1;
  bool trans_b = false;
  std::vector<float> a, b, c;
  std::vector<kernels::bf16> ab, bb;
  explicit GemmInputs(int t) : threads(t), a(n * n), b(n * n), c(n * n), ab(n * n), bb(n * n) {
    std::mt19937_64 g(7);
    std::uniform_real_distribution<float> d(-1.f, 1.f);
    for (int64_t i = 0; i < n * n; ++i) {
      a[i] = d(g);
      b[i] = d(g);
      ab[i] = kernels::ToBf16(a[i]);
      bb[i] = kernels::ToBf16(b[i]);
    }
  }
};

inline double SgemmCeiling(int threads, int reps = 5) {
  GemmInputs in(threads);
  kernels::cpu::SetBlasThreads(threads);
  const double t = MedianGemmSeconds(reps, [](void* p) {
    auto& x = *static_cast<GemmInputs*>(p);
    kernels::cpu::Sgemm(false, false, x.n, x.n, x.n, 1.f, x.a.data(), x.n, x.b.data(), x.n, 0.f, x.c.data(), x.n);
  }, &in);
  kernels::cpu::SetBlasThreads(1);
  return 2.0 * double(in.n) * in.n * in.n / t / 1e9;
}

inline double Bf16Ceiling(int threads, int reps = 5) {
  GemmInputs in(threads);
  double best = 0;
  for (bool tb : {false, true}) {
    in.trans_b = tb;
    const double t = MedianGemmSeconds(reps, [](void* p) {
      auto& x = *static_cast<GemmInputs*>(p);
      kernels::cpu::ParallelGemm(x.threads, kernels::DType::kBF16, false, x.trans_b, x.n, x.n, x.n, 1.f, x.ab.data(),
                                 x.n, x.bb.data(), x.n, 0.f, x.c.data(), x.n);
    }, &in);
    best = std::max(best, 2.0 * double(in.n) * in.n * in.n / t / 1e9);
  }
  return best;
}

}  // namespace rw::bench
