// The ceilings every benchmark prints its ratios against, measured in the same run: a 2048^3 GEMM on
// `threads` threads, fp32 (sgemm, the library's own threads) and bf16 (fp32 accumulation, rows split over
// the threads as the kernels call it). Each is the median of `reps` runs after a warm-up; bf16 takes the
// better of B and B^T layouts (the kernels use both; oneDNN's speed differs between them by run).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "kernels/common.h"
#include "kernels/cpu/gemm.h"

namespace rw::bench {

// Median wall time of `reps` runs of fn after one warm-up.
inline double MedianSeconds(int reps, const std::function<void()>& fn) {
  fn();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct GemmInputs {
  static constexpr int64_t n = 2048;
  std::vector<float> a, b, c;
  std::vector<kernels::bf16> ab, bb;
  GemmInputs() : a(n * n), b(n * n), c(n * n), ab(n * n), bb(n * n) {
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
  GemmInputs in;
  kernels::cpu::SetBlasThreads(threads);
  const int64_t n = in.n;
  const double t = MedianSeconds(reps, [&] {
    kernels::cpu::Sgemm(false, false, n, n, n, 1.f, in.a.data(), n, in.b.data(), n, 0.f, in.c.data(), n);
  });
  kernels::cpu::SetBlasThreads(1);
  return 2.0 * double(in.n) * in.n * in.n / t / 1e9;
}

inline double Bf16Ceiling(int threads, int reps = 5) {
  GemmInputs in;
  double best = 0;
  for (bool tb : {false, true}) {
    const int64_t n = in.n;
    const double t = MedianSeconds(reps, [&] {
      kernels::cpu::ParallelGemm(threads, kernels::DType::kBF16, false, tb, n, n, n, 1.f, in.ab.data(), n,
                                 in.bb.data(), n, 0.f, in.c.data(), n);
    });
    best = std::max(best, 2.0 * double(in.n) * in.n * in.n / t / 1e9);
  }
  return best;
}

}  // namespace rw::bench
