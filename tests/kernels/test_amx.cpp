// The AMX tile products and row passes (kernels/cpu/amx.h) against scalar references, and the bf16
// attention on AMX against the same kernel with AMX turned off, on one machine. Each test skips with the
// reason on a CPU without AMX-BF16 (the attention bf16 tests of test_attention.cpp then cover the other path).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <array>
#include <limits>
#include <tuple>
#include <vector>

#include "attention_harness.h"
#include "kernels/cpu/amx.h"
#include "kernels/cpu/vec.h"
#include "test_util.h"

namespace rw::test {
namespace {

using kernels::bf16;
namespace amx = kernels::cpu::amx;

#define SKIP_WITHOUT_AMX()                                                    \
  do {                                                                        \
    std::printf("bf16 attention path: %s\n", amx::Describe());                \
    if (!amx::Available()) GTEST_SKIP() << "no AMX here: " << amx::Describe(); \
  } while (0)

std::vector<bf16> RandomBf16(size_t n, uint64_t seed) {
  const auto x = Random(n, seed);
  std::vector<bf16> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = kernels::ToBf16(x[i]);
  return out;
}

TEST(Amx, GemmOnPackedOperandsEqualsTheScalarProductAtRaggedShapes) {
  SKIP_WITHOUT_AMX();
  // Logical shapes that are not tile multiples: the caller pads (Up16 / Up32), as the attention does.
  for (auto [m, n, k] : std::vector<std::array<int64_t, 3>>{{1, 1, 1}, {17, 33, 31}, {48, 16, 64}, {100, 70, 130}}) {
    const int64_t m16 = amx::Up16(m), n16 = amx::Up16(n), k32 = amx::Up32(k);
    const auto a = RandomBf16(size_t(m * k), 11 + m), bt = RandomBf16(size_t(n * k), 12 + n),
               b = RandomBf16(size_t(k * n), 13 + k);
    std::vector<bf16> ap(size_t(m16 * k32));
    for (int64_t i = 0; i < m; ++i) std::copy_n(&a[i * k], k, &ap[i * k32]);
    // C1 = A Bt^T (B packed from its transpose), C2 = A B (B packed from rows), C2 accumulated onto C1's values.
    std::vector<bf16> p1(size_t(k32 * n16 * 2)), p2(size_t(k32 * n16 * 2));
    amx::PackTransposed(bt.data(), n, k, k, n16, k32, p1.data());
    amx::PackRows(b.data(), k, n, n, k32, n16, p2.data());
    std::vector<float> c1(size_t(m16 * n16), std::nanf("")), c2(size_t(m16 * n16));
    amx::Gemm(m16, n16, k32, ap.data(), k32, p1.data(), 2 * n16, c1.data(), n16, false);
    c2 = c1;
    amx::Gemm(m16, n16, k32, ap.data(), k32, p2.data(), 2 * n16, c2.data(), n16, true);
    double max1 = 0, max2 = 0;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double want1 = 0, want2 = 0;
        for (int64_t p = 0; p < k; ++p) {
          want1 += double(kernels::ToFloat(a[i * k + p])) * kernels::ToFloat(bt[j * k + p]);
          want2 += double(kernels::ToFloat(a[i * k + p])) * kernels::ToFloat(b[p * n + j]);
        }
        max1 = std::max(max1, std::abs(c1[i * n16 + j] - want1));
        max2 = std::max(max2, std::abs(c2[i * n16 + j] - (c1[i * n16 + j] + want2)));
      }
    std::printf("  m=%lld n=%lld k=%lld: max abs diff A B^T %.3e, C + A B %.3e\n", (long long)m, (long long)n,
                (long long)k, max1, max2);
    // Products of bf16 values are exact in fp32; what is left is fp32 accumulation over k terms.
    EXPECT_LE(max1, 1e-5 * std::sqrt(double(k)) * 4);
    EXPECT_LE(max2, 1e-5 * std::sqrt(double(k)) * 8);
  }
}

TEST(Amx, TransposeAndRowPassesMatchScalarCode) {
  SKIP_WITHOUT_AMX();
  const int64_t rows = 64, cols = 48;
  std::vector<bf16> in = RandomBf16(size_t(rows * cols), 5), out(size_t(cols * rows));
  amx::TransposeBf16(in.data(), cols, rows, cols, out.data(), rows);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) ASSERT_EQ(out[c * rows + r].bits, in[r * cols + c].bits) << r << "," << c;

  const int64_t n = 37, n_pad = 64;  // a tail of 5 lanes, then padding
  auto x = Random(size_t(n), 7, 4.0);
  x[3] = -std::numeric_limits<float>::infinity();  // a masked score
  std::vector<float> lse = Random(size_t(n), 8);
  lse[5] = -std::numeric_limits<float>::infinity();  // a row that sees nothing
  float want_max = -std::numeric_limits<float>::infinity();
  for (float v : x) want_max = std::max(want_max, v);
  EXPECT_EQ(amx::RowMax(x.data(), n), want_max);
  EXPECT_EQ(amx::RowMax(x.data(), 0), -std::numeric_limits<float>::infinity());

  const float c = 0.125f, m = 0.3f;
  std::vector<float> e = x, ec = x;
  std::vector<bf16> eb(size_t(n_pad), bf16{0x1234}), ecb(size_t(n_pad), bf16{0x1234});
  const float sum = amx::ExpRow(e.data(), n, c, m, eb.data(), n_pad);
  amx::ExpRowColumns(ec.data(), n, c, lse.data(), ecb.data(), n_pad);
  double want_sum = 0, max_rel = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double w = std::exp(double(c) * x[i] - m);
    const double wc = lse[i] == -std::numeric_limits<float>::infinity() ? 0.0 : std::exp(double(c) * x[i] - lse[i]);
    want_sum += w;
    max_rel = std::max(max_rel, std::abs(ec[i] - wc) / std::max(wc, 1e-30));
    EXPECT_EQ(ecb[i].bits, kernels::ToBf16(ec[i]).bits) << i;
    // ExpRow leaves x and writes only the rounded value: within half a bf16 ulp of the exact one, and the
    // polynomial's error.
    EXPECT_LE(std::abs(kernels::ToFloat(eb[i]) - w), w * (1.0 / 256 + 2e-6)) << i;
    EXPECT_EQ(e[i], x[i]) << i;
  }
  EXPECT_EQ(eb[3].bits, 0);
  EXPECT_EQ(ec[5], 0.f);
  for (int64_t i = n; i < n_pad; ++i) EXPECT_EQ(eb[i].bits, 0) << "padding " << i;
  std::printf("  exp rows: max relative error %.3e, sum %.6f vs %.6f\n", max_rel, sum, want_sum);
  EXPECT_LE(max_rel, 2e-6);  // the polynomial's 2e-7, and the rounding of x log2(e) for |x| up to ~10
  EXPECT_NEAR(sum, want_sum, 1e-5 * want_sum);

  std::vector<float> dp = Random(size_t(n), 9), p = Random(size_t(n), 10), delta = Random(size_t(n), 11);
  std::vector<float> want(dp.size());
  for (int64_t i = 0; i < n; ++i) want[i] = p[i] * (dp[i] - delta[i]);
  std::vector<bf16> db(size_t(n_pad), bf16{0x1234});
  amx::DsRow(dp.data(), p.data(), delta.data(), n, db.data(), n_pad);
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(db[i].bits, kernels::ToBf16(want[i]).bits) << i;
  for (int64_t i = n; i < n_pad; ++i) EXPECT_EQ(db[i].bits, 0) << "padding " << i;
}

// The AMX attention and the library-GEMM attention compute the same bf16 algorithm; they differ only in
// fp32 summation order and in exp's rounding, far below the bf16 rounding both share.
TEST(Amx, AttentionAgreesWithTheLibraryPathAndIsBitwiseReproducible) {
  SKIP_WITHOUT_AMX();
  for (const AttnCase& c : std::vector<AttnCase>{
           {"gqa4_ragged_docs", 203, 203, 8, 2, 64, true, 64, 128, 0, 0, 37},
           {"d80_noncausal_pad", 77, 150, 2, 1, 80, false, 32, 64, 0, 0, 0, 5, 11},
           {"d16_offsets", 96, 64, 8, 4, 16, true, 16, 16, 64, 0}}) {
    const AttnInputs in = RoundFor(kernels::DType::kBF16, MakeInputs(c, 4242 + c.sq));
    const AttnOutputs with_amx = RunAttention(kernels::Device::kCpu, c, in, kernels::DType::kBF16);
    const AttnOutputs again = RunAttention(kernels::Device::kCpu, c, in, kernels::DType::kBF16);
    amx::SetAllowed(false);
    const AttnOutputs library = RunAttention(kernels::Device::kCpu, c, in, kernels::DType::kBF16);
    amx::SetAllowed(true);
    std::printf("[amx vs library bf16 path] %s\n", c.name.c_str());
    for (auto [name, got, want] : {std::tuple{"o", &with_amx.o, &library.o}, std::tuple{"dq", &with_amx.dq, &library.dq},
                                   std::tuple{"dk", &with_amx.dk, &library.dk}, std::tuple{"dv", &with_amx.dv, &library.dv},
                                   std::tuple{"lse", &with_amx.lse, &library.lse}}) {
      const Diff d = Compare(*got, *want);
      std::printf("  %-4s max_abs_diff=%.3e nmse=%.3e\n", name, d.max_abs, d.nmse);
      EXPECT_FALSE(d.inf_mismatch) << name;
      EXPECT_LE(d.nmse, 1e-4) << name;
    }
    EXPECT_EQ(0, std::memcmp(with_amx.dq.data(), again.dq.data(), with_amx.dq.size() * 4)) << c.name;
    EXPECT_EQ(0, std::memcmp(with_amx.dk.data(), again.dk.data(), with_amx.dk.size() * 4)) << c.name;
    EXPECT_EQ(0, std::memcmp(with_amx.o.data(), again.o.data(), with_amx.o.size() * 4)) << c.name;
  }
}

}  // namespace
}  // namespace rw::test
