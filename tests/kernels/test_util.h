// Helpers shared by the kernel tests: fresh random inputs (never zeros) and scale-free comparisons that
// always print max abs diff and NMSE.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace rw::test {

// Uniform in [-scale, scale] with no exact zeros, from a seed the test names (so a failure reproduces).
template <class T = float>
std::vector<T> Random(size_t n, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> dist(-scale, scale);
  std::vector<T> out(n);
  for (auto& x : out) {
    double v = dist(gen);
    if (v == 0.0) v = scale * 1e-3;
    x = T(v);
  }
  return out;
}

struct Diff {
  double max_abs = 0;  // max |a - b| over finite entries
  double nmse = 0;     // sum (a - b)^2 / sum b^2
  bool inf_mismatch = false;  // an infinity or NaN where the other side has none (or not the same)
};

template <class A, class B>
Diff Compare(const std::vector<A>& got, const std::vector<B>& want) {
  Diff d;
  double num = 0, den = 0;
  EXPECT_EQ(got.size(), want.size());
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const double g = double(got[i]), w = double(want[i]);
    if (!std::isfinite(g) || !std::isfinite(w)) {
      if (!(g == w)) d.inf_mismatch = true;  // NaN never equals anything
      continue;
    }
    d.max_abs = std::max(d.max_abs, std::fabs(g - w));
    num += (g - w) * (g - w);
    den += w * w;
  }
  d.nmse = den > 0 ? num / den : num;
  return d;
}

// Prints and checks: NMSE under `nmse_tol` and no infinity/NaN disagreement.
template <class A, class B>
void ExpectClose(const std::string& what, const std::vector<A>& got, const std::vector<B>& want,
                 double nmse_tol) {
  const Diff d = Compare(got, want);
  std::printf("  %-28s max_abs_diff=%.3e nmse=%.3e\n", what.c_str(), d.max_abs, d.nmse);
  EXPECT_FALSE(d.inf_mismatch) << what << ": infinities or NaNs differ";
  EXPECT_LE(d.nmse, nmse_tol) << what << ": max_abs_diff=" << d.max_abs;
}

inline bool AnyNan(const std::vector<float>& x) {
  for (float v : x)
    if (std::isnan(v)) return true;
  return false;
}

}  // namespace rw::test
