// The CPU backend's bf16 layer kernels against the fp64 reference, with the flash-attention rule: on the
// same bf16-representable inputs, the kernel's error against the reference is at most twice the error of a
// naive bf16 implementation (every product's output rounded to bf16, as PyTorch eager on bf16 tensors).
// Shapes are ragged and token blocks do not divide the rows; inputs are fresh random values, never zeros.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <iterator>
#include <limits>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/gemm.h"
#include "kernels/layers.h"
#include "kernels/ref/layers_ref.h"
#include "test_util.h"

namespace rw::test {
namespace {

using kernels::bf16;
using kernels::Device;
using kernels::DType;
using kernels::Exec;

const Exec kRef{Device::kRef};
const Exec kCpu{Device::kCpu};

float R(double x) { return kernels::ToFloat(kernels::ToBf16(float(x))); }

// Fresh random values that bf16 represents exactly (so no input rounding happens anywhere).
std::vector<float> RandomBf16(size_t n, uint64_t seed, double scale = 1.0) {
  auto x = Random(n, seed, scale);
  for (auto& v : x) v = R(v);
  return x;
}

std::vector<bf16> ToBf16(const std::vector<float>& x) {
  std::vector<bf16> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = kernels::ToBf16(x[i]);
  return out;
}

// C (m x n) = A (m x k) B^T, B given (n x k): a naive bf16 product, fp32 accumulation, bf16 output.
std::vector<float> NaiveAbt(int64_t m, int64_t n, int64_t k, const std::vector<float>& a, const std::vector<float>& b) {
  std::vector<float> c(m * n);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      float acc = 0.f;
      for (int64_t p = 0; p < k; ++p) acc += a[i * k + p] * b[j * k + p];
      c[i * n + j] = R(acc);
    }
  return c;
}
std::vector<float> Transpose(int64_t rows, int64_t cols, const std::vector<float>& x) {
  std::vector<float> t(x.size());
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) t[j * rows + i] = x[i * cols + j];
  return t;
}

void ExpectWithinTwiceNaive(const char* what, const std::vector<float>& got, const std::vector<float>& naive,
                            const std::vector<float>& want) {
  const Diff dg = Compare(got, want), dn = Compare(naive, want);
  std::printf("  %-4s bf16 kernel: max_abs_diff=%.3e nmse=%.3e | naive bf16: max_abs_diff=%.3e nmse=%.3e\n", what,
              dg.max_abs, dg.nmse, dn.max_abs, dn.nmse);
  EXPECT_FALSE(dg.inf_mismatch) << what;
  EXPECT_LE(dg.max_abs, 2 * dn.max_abs + 1e-7) << what;
  EXPECT_LE(dg.nmse, 2 * dn.nmse + 1e-14) << what;
}

TEST(Bf16Layers, TheCpuReportsTheBf16GemmPathItTakes) {
  // The name the log prints agrees with the path the GEMMs take: a library kernel (never oneDNN's reference
  // one), or the widened fallback.
  const std::string path = kernels::cpu::Bf16GemmPath();
  std::printf("bf16 GEMM path: %s\n", path.c_str());
  if (kernels::cpu::Bf16GemmHasLibrary()) {
    EXPECT_EQ(path.rfind("oneDNN ", 0), 0u) << path;
    EXPECT_EQ(path.find(" ref"), std::string::npos) << path;
  } else {
    EXPECT_EQ(path.rfind("fp32 sgemm on widened bf16", 0), 0u) << path;
  }
}

TEST(Bf16Layers, GemmWidenedAndLibraryPathsAgreeOnRaggedTransposedShapes) {
  // Every (trans_a, trans_b) with alpha and beta: the library's bf16 product against fp32 sgemm on the same
  // (exactly widened) values; both accumulate in fp32, so they agree to fp32 rounding.
  const int64_t m = 37, n = 29, k = 70;
  const auto a = RandomBf16(m * k, 1), b = RandomBf16(k * n, 2), c0 = Random(m * n, 3);
  const auto ab = ToBf16(a), bb = ToBf16(b);
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      std::vector<float> got = c0, want = c0;
      const int64_t lda = ta ? m : k, ldb = tb ? k : n;
      kernels::cpu::GemmBf16(ta, tb, m, n, k, 0.5f, ab.data(), lda, bb.data(), ldb, 1.f, got.data(), n);
      kernels::cpu::Sgemm(ta, tb, m, n, k, 0.5f, a.data(), lda, b.data(), ldb, 1.f, want.data(), n);
      std::vector<float> widened = c0;  // the path of a CPU without bf16 units
      kernels::cpu::GemmBf16Widened(ta, tb, m, n, k, 0.5f, ab.data(), lda, bb.data(), ldb, 1.f, widened.data(), n);
      std::printf("[gemm bf16 ta=%d tb=%d]\n", ta, tb);
      ExpectClose("c (library)", got, want, 1e-12);
      ExpectClose("c (widened)", widened, want, 0.0);
    }
}

TEST(Bf16Layers, LinearWithinTwiceTheNaiveError) {
  const int64_t n = 45, in = 131, out = 67;
  const auto x = RandomBf16(n * in, 11), w = RandomBf16(out * in, 12), dy = RandomBf16(n * out, 13);
  const auto dw0 = Random(out * in, 14, 0.1);
  // fp64 reference on the same values.
  std::vector<float> y_ref(n * out), dx_ref(n * in), dw_ref = dw0;
  ASSERT_TRUE(kernels::LinearForward(kRef, n, in, out, x.data(), w.data(), y_ref.data()).ok());
  ASSERT_TRUE(kernels::LinearBackward(kRef, n, in, out, x.data(), w.data(), dy.data(), dx_ref.data(), dw_ref.data()).ok());
  // The kernel: bf16 weights and x; y both as bf16 and as fp32; dy given in fp32 (it rounds it: exact here).
  const auto xb = ToBf16(x), wb = ToBf16(w);
  std::vector<float> y(n * out), dx(n * in), dw = dw0;
  std::vector<bf16> yb(n * out);
  ASSERT_TRUE(kernels::LinearForward(kCpu, n, in, out, xb.data(), wb.data(), y.data()).ok());
  ASSERT_TRUE(kernels::LinearForward(kCpu, n, in, out, x.data(), wb.data(), yb.data()).ok());  // fp32 x rounded
  ASSERT_TRUE(kernels::LinearBackward(kCpu, n, in, out, xb.data(), wb.data(), dy.data(), dx.data(), dw.data()).ok());
  std::vector<float> y_from_b(n * out);
  for (int64_t i = 0; i < n * out; ++i) y_from_b[i] = kernels::ToFloat(yb[i]);
  // Naive: each product's output rounded.
  const auto y_naive = NaiveAbt(n, out, in, x, w);
  const auto dx_naive = NaiveAbt(n, in, out, dy, Transpose(out, in, w));
  auto dw_naive = NaiveAbt(out, in, n, Transpose(n, out, dy), Transpose(n, in, x));
  for (size_t i = 0; i < dw_naive.size(); ++i) dw_naive[i] += dw0[i];
  std::printf("[linear bf16]\n");
  ExpectWithinTwiceNaive("y", y, y_naive, y_ref);
  ExpectWithinTwiceNaive("ybf", y_from_b, y_naive, y_ref);
  ExpectWithinTwiceNaive("dx", dx, dx_naive, dx_ref);
  ExpectWithinTwiceNaive("dw", dw, dw_naive, dw_ref);
}

TEST(Bf16Layers, RmsNormWritesTheRoundedFp32Result) {
  const int64_t n = 19, e = 257;
  const auto x = Random(n * e, 21), w = Random(e, 22);
  std::vector<float> y(n * e), r(n), r_b(n);
  std::vector<bf16> yb(n * e);
  ASSERT_TRUE(kernels::RmsNormForward(kCpu, n, e, x.data(), w.data(), 1e-5f, y.data(), r.data()).ok());
  ASSERT_TRUE(kernels::RmsNormForward(kCpu, n, e, x.data(), w.data(), 1e-5f, yb.data(), r_b.data()).ok());
  int64_t mismatches = 0;
  for (int64_t i = 0; i < n * e; ++i) mismatches += yb[i].bits != kernels::ToBf16(y[i]).bits;
  EXPECT_EQ(mismatches, 0) << "bf16 output must be the fp32 result rounded to nearest even";
  EXPECT_EQ(r, r_b) << "rstd is fp32 in both";
}

TEST(Bf16Layers, CastRoundsToNearestEvenAndWidensExactly) {
  const int64_t n = 100003;  // past the size where the cast goes parallel
  auto x = Random(n, 31, 100.0);
  x[0] = 1.f + 1.f / 256.f;  // a tie: rounds to even (1.0)
  x[1] = 1.f + 3.f / 256.f;  // a tie: rounds to even (1 + 4/256)
  // Values the vector path must round exactly as the scalar ToBf16: NaNs (kept quiet), infinities, the
  // largest float (rounds to inf), subnormals (rounded, not flushed) and -0; in the vector body and its tail.
  const float specials[] = {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::infinity(), std::numeric_limits<float>::max(),
                            std::numeric_limits<float>::denorm_min(), -3.3e-39f, 1.2e-38f, -0.f};
  uint32_t signalling = 0x7f800001u;  // a signalling NaN: must come out a quiet one
  for (int64_t at : {int64_t(2), int64_t(16), n - 9}) {
    for (size_t j = 0; j < std::size(specials); ++j) x[at + int64_t(j)] = specials[j];
    std::memcpy(&x[at + int64_t(std::size(specials))], &signalling, 4);
  }
  // Ragged lengths: a tail shorter than the vector, one vector and a tail, the threaded path.
  for (int64_t len : {int64_t(1), int64_t(13), int64_t(17), int64_t(40000)}) {
    std::vector<bf16> part(static_cast<size_t>(len) + 1, bf16{0x1234});
    ASSERT_TRUE(kernels::Cast(kCpu, len, x.data() + 2, part.data()).ok());
    for (int64_t i = 0; i < len; ++i) ASSERT_EQ(part[i].bits, kernels::ToBf16(x[2 + i]).bits) << len << " " << i;
    EXPECT_EQ(part[len].bits, 0x1234) << "the cast wrote past its " << len << " elements";
  }
  std::vector<bf16> b(n), b_ref(n);
  std::vector<float> back(n);
  ASSERT_TRUE(kernels::Cast(kCpu, n, x.data(), b.data()).ok());
  ASSERT_TRUE(kernels::Cast(kRef, n, x.data(), b_ref.data()).ok());
  ASSERT_TRUE(kernels::Cast(kCpu, n, b.data(), back.data()).ok());
  EXPECT_EQ(kernels::ToFloat(b[0]), 1.f);
  EXPECT_EQ(kernels::ToFloat(b[1]), 1.f + 4.f / 256.f);
  double worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(b[i].bits, b_ref[i].bits) << i;
    if (!std::isfinite(x[i]) || std::fabs(x[i]) < 1e-30f || std::fabs(x[i]) > 1e38f) continue;
    worst = std::max(worst, std::fabs(double(back[i]) - x[i]) / std::fabs(double(x[i])));
  }
  std::printf("cast: worst relative rounding error %.3e (bf16 half-ulp 3.9e-3)\n", worst);
  EXPECT_LE(worst, 1.0 / 256.0);
}

TEST(Bf16Layers, FfnWithinTwiceTheNaiveErrorAcrossRaggedBlocks) {
  const int64_t n = 53, e = 72, f = 136;
  const auto x = RandomBf16(n * e, 41), wg = RandomBf16(f * e, 42, 0.3), wu = RandomBf16(f * e, 43, 0.3),
             wd = RandomBf16(e * f, 44, 0.3), dy = RandomBf16(n * e, 45);
  const auto gw0 = Random(f * e, 46, 0.1), uw0 = Random(f * e, 47, 0.1), dw0 = Random(e * f, 48, 0.1);
  std::vector<float> y_ref(n * e), dx_ref(n * e), g_ref = gw0, u_ref = uw0, d_ref = dw0;
  ASSERT_TRUE(kernels::FfnForward(kRef, n, e, f, x.data(), {wg.data(), wu.data(), wd.data()}, y_ref.data()).ok());
  ASSERT_TRUE(kernels::FfnBackward(kRef, n, e, f, x.data(), {wg.data(), wu.data(), wd.data()}, dy.data(),
                                   dx_ref.data(), {g_ref.data(), u_ref.data(), d_ref.data()})
                  .ok());
  // Naive: g, u, a, y rounded; backward da, du, dg and every product rounded.
  auto g = NaiveAbt(n, f, e, x, wg), u = NaiveAbt(n, f, e, x, wu);
  std::vector<float> a(n * f), du(n * f), dg(n * f);
  for (int64_t i = 0; i < n * f; ++i) {
    const double s = 1.0 / (1.0 + std::exp(-double(g[i])));
    a[i] = R(g[i] * s * u[i]);
  }
  const auto y_naive = NaiveAbt(n, e, f, a, wd);
  const auto da = NaiveAbt(n, f, e, dy, Transpose(e, f, wd));
  for (int64_t i = 0; i < n * f; ++i) {
    const double s = 1.0 / (1.0 + std::exp(-double(g[i])));
    du[i] = R(da[i] * g[i] * s);
    dg[i] = R(da[i] * u[i] * s * (1.0 + g[i] * (1.0 - s)));
  }
  auto dx_naive = NaiveAbt(n, e, f, dg, Transpose(f, e, wg));
  const auto dx_u = NaiveAbt(n, e, f, du, Transpose(f, e, wu));
  for (int64_t i = 0; i < n * e; ++i) dx_naive[i] = R(dx_naive[i] + dx_u[i]);
  auto add = [](std::vector<float> p, const std::vector<float>& base) {
    for (size_t i = 0; i < p.size(); ++i) p[i] += base[i];
    return p;
  };
  const auto gw_naive = add(NaiveAbt(f, e, n, Transpose(n, f, dg), Transpose(n, e, x)), gw0);
  const auto uw_naive = add(NaiveAbt(f, e, n, Transpose(n, f, du), Transpose(n, e, x)), uw0);
  const auto dw_naive = add(NaiveAbt(e, f, n, Transpose(n, e, dy), Transpose(n, f, a)), dw0);
  const auto xb = ToBf16(x), wgb = ToBf16(wg), wub = ToBf16(wu), wdb = ToBf16(wd);
  for (int64_t block : {16, 53, 7}) {
    std::vector<float> y(n * e), dx(n * e), gw = gw0, uw = uw0, dw = dw0;
    ASSERT_TRUE(kernels::FfnForward(kCpu, n, e, f, xb.data(), {wgb.data(), wub.data(), wdb.data()}, y.data(), block).ok());
    ASSERT_TRUE(kernels::FfnBackward(kCpu, n, e, f, xb.data(), {wgb.data(), wub.data(), wdb.data()}, dy.data(),
                                     dx.data(), {gw.data(), uw.data(), dw.data()}, block)
                    .ok());
    std::printf("[ffn bf16, block %lld]\n", (long long)block);
    ExpectWithinTwiceNaive("y", y, y_naive, y_ref);
    ExpectWithinTwiceNaive("dx", dx, dx_naive, dx_ref);
    ExpectWithinTwiceNaive("dwg", gw, gw_naive, g_ref);
    ExpectWithinTwiceNaive("dwu", uw, uw_naive, u_ref);
    ExpectWithinTwiceNaive("dwd", dw, dw_naive, d_ref);
  }
}

TEST(Bf16Layers, CrossEntropyWithinTwiceTheNaiveErrorWithWeightsAndIgnoredTargets) {
  const int64_t n = 41, e = 48, vocab = 301;
  const auto h = RandomBf16(n * e, 51), w = RandomBf16(vocab * e, 52, 0.5), weight = Random(n, 53);
  std::vector<int32_t> target(n);
  for (int64_t i = 0; i < n; ++i) target[i] = i % 7 == 3 ? -1 : int32_t((i * 37) % vocab);
  const auto dw0 = Random(vocab * e, 54, 0.1);
  std::vector<float> loss_ref(n), dh_ref(n * e), dw_ref = dw0;
  double sum_ref = 0;
  ASSERT_TRUE(kernels::CrossEntropyForward(kRef, n, e, vocab, h.data(), w.data(), target.data(), weight.data(),
                                           loss_ref.data(), &sum_ref)
                  .ok());
  ASSERT_TRUE(kernels::CrossEntropyBackward(kRef, n, e, vocab, h.data(), w.data(), target.data(), weight.data(), 0.7f,
                                            dh_ref.data(), dw_ref.data())
                  .ok());
  // Naive: bf16 logits, fp32 softmax on them, bf16 dlogits, bf16 products.
  const auto z = NaiveAbt(n, vocab, e, h, w);
  std::vector<float> loss_naive(n, 0.f), dz(n * vocab, 0.f);
  for (int64_t i = 0; i < n; ++i) {
    if (target[i] < 0) continue;
    double m = -INFINITY, s = 0;
    for (int64_t c = 0; c < vocab; ++c) m = std::max(m, double(z[i * vocab + c]));
    for (int64_t c = 0; c < vocab; ++c) s += std::exp(z[i * vocab + c] - m);
    loss_naive[i] = float(m + std::log(s) - z[i * vocab + target[i]]);
    for (int64_t c = 0; c < vocab; ++c)
      dz[i * vocab + c] = R(0.7 * weight[i] * (std::exp(z[i * vocab + c] - m) / s - (c == target[i])));
  }
  const auto dh_naive = NaiveAbt(n, e, vocab, dz, Transpose(vocab, e, w));
  auto dw_naive = NaiveAbt(vocab, e, n, Transpose(n, vocab, dz), Transpose(n, e, h));
  for (size_t i = 0; i < dw_naive.size(); ++i) dw_naive[i] += dw0[i];
  const auto hb = ToBf16(h), wb = ToBf16(w);
  for (int64_t block : {8, 41}) {
    std::vector<float> loss(n), dh(n * e), dw = dw0;
    double sum = 0;
    ASSERT_TRUE(kernels::CrossEntropyForward(kCpu, n, e, vocab, hb.data(), wb.data(), target.data(), weight.data(),
                                             loss.data(), &sum, block)
                    .ok());
    ASSERT_TRUE(kernels::CrossEntropyBackward(kCpu, n, e, vocab, hb.data(), wb.data(), target.data(), weight.data(),
                                              0.7f, dh.data(), dw.data(), block)
                    .ok());
    std::printf("[cross-entropy bf16, block %lld] weighted sum %.6f (ref %.6f)\n", (long long)block, sum, sum_ref);
    ExpectWithinTwiceNaive("loss", loss, loss_naive, loss_ref);
    ExpectWithinTwiceNaive("dh", dh, dh_naive, dh_ref);
    ExpectWithinTwiceNaive("dw", dw, dw_naive, dw_ref);
  }
}

TEST(Bf16Layers, BackendsSayWhatTheyRunAndRefuseTheRest) {
  // The cpu table runs the GEMM ops in bf16; the reference runs fp32 only (and casts); f16 nowhere on the CPU.
  const kernels::Backend* b = nullptr;
  EXPECT_TRUE(kernels::Dispatch(Device::kCpu, kernels::Op::kFfnBackward, DType::kBF16, &b).ok());
  const auto st = kernels::Dispatch(Device::kRef, kernels::Op::kLinearForward, DType::kBF16, &b);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("ref backend has no linear_forward in bf16"), std::string::npos) << st.message();
  const auto f16 = kernels::Dispatch(Device::kCpu, kernels::Op::kAttentionForward, DType::kF16, &b);
  EXPECT_FALSE(f16.ok());
  // Mixed operands are named: fp32 weights with a bf16 activation.
  std::vector<float> w(4 * 8, 0.5f), y(2 * 4);
  std::vector<bf16> x(2 * 8, kernels::ToBf16(1.f));
  const auto mixed = kernels::LinearForward(kCpu, 2, 8, 4, x.data(), w.data(), y.data());
  ASSERT_FALSE(mixed.ok());
  EXPECT_EQ(mixed.message().rfind("x:", 0), 0u) << mixed.message();
}

}  // namespace
}  // namespace rw::test
