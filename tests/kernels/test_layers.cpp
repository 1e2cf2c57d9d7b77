// Per-token layers and AdamW against their scalar references, on random inputs at ragged shapes and
// block sizes; the references' gradients against finite differences in fp64.
#include <gtest/gtest.h>

#include <functional>
#include <tuple>

#include "kernels/backend.h"
#include "kernels/device_memory.h"
#include "kernels/layers.h"
#include "kernels/ref/layers_ref.h"
#include "test_util.h"

namespace rw::test {
namespace {

using kernels::Device;
using kernels::Exec;

const Exec kRef{Device::kRef};
const Exec kCpu{Device::kCpu};

// Central differences of a scalar function of x, in fp64.
std::vector<double> FiniteDiff(std::vector<double>& x, const std::function<double()>& f, double eps = 1e-6) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + eps;
    const double p = f();
    x[i] = keep - eps;
    const double m = f();
    x[i] = keep;
    g[i] = (p - m) / (2 * eps);
  }
  return g;
}

double Dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

TEST(Linear, CpuMatchesReferenceAndReferenceMatchesFiniteDifferences) {
  const int64_t n = 37, in = 65, out = 33;
  auto x = Random(n * in, 41), w = Random(out * in, 42), dy = Random(n * out, 43), dw0 = Random(out * in, 44, 0.1);
  std::vector<float> y[2], dx[2], dw[2];
  int i = 0;
  for (const Exec& ex : {kRef, kCpu}) {
    y[i].resize(n * out);
    dx[i].resize(n * in);
    dw[i] = dw0;
    ASSERT_TRUE(kernels::LinearForward(ex, n, in, out, x.data(), w.data(), y[i].data()).ok());
    ASSERT_TRUE(kernels::LinearBackward(ex, n, in, out, x.data(), w.data(), dy.data(), dx[i].data(), dw[i].data()).ok());
    ++i;
  }
  std::printf("[linear cpu vs ref]\n");
  ExpectClose("y", y[1], y[0], 1e-11);
  ExpectClose("dx", dx[1], dx[0], 1e-11);
  ExpectClose("dw", dw[1], dw[0], 1e-11);
  const int64_t fn = 3, fi = 4, fo = 5;
  auto X = Random<double>(fn * fi, 45), W = Random<double>(fo * fi, 46), G = Random<double>(fn * fo, 47);
  std::vector<double> Y(fn * fo), DX(fn * fi), DW(fo * fi, 0.0);
  auto loss = [&] {
    kernels::ref::LinearForward<double>(fn, fi, fo, X.data(), W.data(), Y.data());
    return Dot(Y, G);
  };
  kernels::ref::LinearBackward<double>(fn, fi, fo, X.data(), W.data(), G.data(), DX.data(), DW.data());
  ExpectClose("fd dx", DX, FiniteDiff(X, loss), 1e-12);
  ExpectClose("fd dw", DW, FiniteDiff(W, loss), 1e-12);
}

TEST(RmsNorm, CpuMatchesReferenceForwardAndBackward) {
  for (auto [n, e] : {std::pair<int64_t, int64_t>{37, 129}, {5, 4096}, {1, 3}}) {
    auto x = Random(n * e, 1), w = Random(e, 2), dy = Random(n * e, 3), dw0 = Random(e, 4, 0.1);
    std::vector<float> y[2], r[2], dx[2], dw[2];
    int i = 0;
    for (const Exec& ex : {kRef, kCpu}) {
      y[i].resize(n * e);
      r[i].resize(n);
      dx[i].resize(n * e);
      dw[i] = dw0;
      ASSERT_TRUE(kernels::RmsNormForward(ex, n, e, x.data(), w.data(), 1e-5f, y[i].data(), r[i].data()).ok());
      ASSERT_TRUE(kernels::RmsNormBackward(ex, n, e, x.data(), w.data(), r[i].data(), dy.data(), dx[i].data(),
                                           dw[i].data()).ok());
      ++i;
    }
    std::printf("[rmsnorm cpu vs ref] n=%ld e=%ld\n", long(n), long(e));
    ExpectClose("y", y[1], y[0], 1e-12);
    ExpectClose("dx", dx[1], dx[0], 1e-11);
    ExpectClose("dw", dw[1], dw[0], 1e-11);
  }
}

TEST(RmsNorm, ReferenceGradientsMatchFiniteDifferencesInFp64) {
  const int64_t n = 3, e = 7;
  auto x = Random<double>(n * e, 5), w = Random<double>(e, 6), g = Random<double>(n * e, 7);
  std::vector<double> y(n * e), r(n), dx(n * e), dw(e, 0.0);
  auto loss = [&] {
    kernels::ref::RmsNormForward<double>(n, e, x.data(), w.data(), 1e-5, y.data(), r.data());
    return Dot(y, g);
  };
  loss();
  kernels::ref::RmsNormBackward<double>(n, e, x.data(), w.data(), r.data(), g.data(), dx.data(), dw.data());
  ExpectClose("fd dx", dx, FiniteDiff(x, loss), 1e-12);
  ExpectClose("fd dw", dw, FiniteDiff(w, loss), 1e-12);
}

TEST(Rope, CpuMatchesReferenceAtLargePositionsAndLargeTheta) {
  const int64_t s = 33, h = 3, d = 128;
  std::vector<int64_t> pos(s);
  for (int64_t t = 0; t < s; ++t) pos[t] = (t % 2) ? 1000000 - t * 977 : t;  // near 1M and near 0
  for (double theta : {10000.0, 5e7}) {
    auto x = Random(s * h * d, 8);
    std::vector<float> y_ref(x.size()), y_cpu = x;  // cpu runs in place
    ASSERT_TRUE(kernels::Rope(kRef, s, h, d, kernels::Dense3(x.data(), h, d), kernels::Dense3(y_ref.data(), h, d),
                              pos.data(), theta, false).ok());
    ASSERT_TRUE(kernels::Rope(kCpu, s, h, d, kernels::Dense3(y_cpu.data(), h, d),
                              kernels::Dense3(y_cpu.data(), h, d), pos.data(), theta, false).ok());
    std::printf("[rope cpu vs ref] theta=%g\n", theta);
    ExpectClose("y (in place)", y_cpu, y_ref, 1e-12);
    std::vector<float> back(x.size());
    ASSERT_TRUE(kernels::Rope(kCpu, s, h, d, kernels::Dense3(y_cpu.data(), h, d), kernels::Dense3(back.data(), h, d),
                              pos.data(), theta, true).ok());
    ExpectClose("inverse(forward(x)) vs x", back, x, 1e-12);
  }
}

TEST(Rope, MatchesTheHuggingFaceRotateHalfFormulaByHand) {
  // d = 4, one head, position 3, theta 100: inv_freq = {1, 100^-0.5 = 0.1}.
  std::vector<float> x = {0.5f, -1.f, 2.f, 0.25f}, y(4);
  const int64_t pos = 3;
  ASSERT_TRUE(kernels::Rope(kRef, 1, 1, 4, kernels::Dense3(x.data(), 1, 4), kernels::Dense3(y.data(), 1, 4), &pos,
                            100.0, false).ok());
  const double a0 = 3.0, a1 = 0.3;
  const std::vector<double> want = {0.5 * std::cos(a0) - 2.0 * std::sin(a0), -1.0 * std::cos(a1) - 0.25 * std::sin(a1),
                                    2.0 * std::cos(a0) + 0.5 * std::sin(a0), 0.25 * std::cos(a1) + -1.0 * std::sin(a1)};
  ExpectClose("rope by hand", y, want, 1e-13);
}

TEST(Rope, BackwardIsTheTransposeOfForward) {
  // <rope(x), g> == <x, rope^-1(g)> because the rotation is orthogonal.
  const int64_t s = 9, h = 2, d = 16;
  std::vector<int64_t> pos = {0, 5, 1, 77, 3, 4, 123456, 8, 9};
  auto x = Random<double>(s * h * d, 9), g = Random<double>(s * h * d, 10);
  std::vector<double> y(x.size()), dx(x.size());
  kernels::ref::Rope<double>(s, h, d, kernels::Dense3(x.data(), h, d), kernels::Dense3(y.data(), h, d), pos.data(),
                             500000.0, false);
  kernels::ref::Rope<double>(s, h, d, kernels::Dense3(g.data(), h, d), kernels::Dense3(dx.data(), h, d), pos.data(),
                             500000.0, true);
  const double lhs = Dot(y, g), rhs = Dot(x, dx);
  std::printf("  <rope(x),g>=%.15f <x,rope^T(g)>=%.15f diff=%.3e\n", lhs, rhs, std::fabs(lhs - rhs));
  EXPECT_NEAR(lhs, rhs, 1e-12);
}

TEST(Ffn, CpuMatchesReferenceAcrossRaggedTokenBlocks) {
  const int64_t n = 37, e = 48, f = 136;
  auto x = Random(n * e, 11), wg = Random(f * e, 12, 0.2), wu = Random(f * e, 13, 0.2), wd = Random(e * f, 14, 0.2),
       dy = Random(n * e, 15);
  std::vector<float> y_ref(n * e), dx_ref(n * e), dwg_ref(f * e, 0.5f), dwu_ref(f * e, 0.5f), dwd_ref(e * f, 0.5f);
  kernels::FfnWeights w{wg.data(), wu.data(), wd.data()};
  ASSERT_TRUE(kernels::FfnForward(kRef, n, e, f, x.data(), w, y_ref.data()).ok());
  ASSERT_TRUE(kernels::FfnBackward(kRef, n, e, f, x.data(), w, dy.data(), dx_ref.data(),
                                   {dwg_ref.data(), dwu_ref.data(), dwd_ref.data()}).ok());
  for (int64_t block : {1, 8, 16, 64}) {
    std::vector<float> y(n * e), dx(n * e), dwg(f * e, 0.5f), dwu(f * e, 0.5f), dwd(e * f, 0.5f);
    ASSERT_TRUE(kernels::FfnForward(kCpu, n, e, f, x.data(), w, y.data(), block).ok());
    ASSERT_TRUE(kernels::FfnBackward(kCpu, n, e, f, x.data(), w, dy.data(), dx.data(),
                                     {dwg.data(), dwu.data(), dwd.data()}, block).ok());
    std::printf("[ffn cpu vs ref] block=%ld\n", long(block));
    ExpectClose("y", y, y_ref, 1e-11);
    ExpectClose("dx", dx, dx_ref, 1e-11);
    ExpectClose("dw_gate", dwg, dwg_ref, 1e-11);
    ExpectClose("dw_up", dwu, dwu_ref, 1e-11);
    ExpectClose("dw_down", dwd, dwd_ref, 1e-11);
  }
}

TEST(Ffn, ReferenceGradientsMatchFiniteDifferencesInFp64) {
  const int64_t n = 3, e = 4, f = 6;
  auto x = Random<double>(n * e, 16), wg = Random<double>(f * e, 17), wu = Random<double>(f * e, 18),
       wd = Random<double>(e * f, 19), g = Random<double>(n * e, 20);
  std::vector<double> y(n * e), dx(n * e), dwg(f * e, 0.0), dwu(f * e, 0.0), dwd(e * f, 0.0);
  auto loss = [&] {
    kernels::ref::FfnForward<double>(n, e, f, x.data(), wg.data(), wu.data(), wd.data(), y.data());
    return Dot(y, g);
  };
  kernels::ref::FfnBackward<double>(n, e, f, x.data(), wg.data(), wu.data(), wd.data(), g.data(), dx.data(),
                                    dwg.data(), dwu.data(), dwd.data());
  ExpectClose("fd dx", dx, FiniteDiff(x, loss), 1e-12);
  ExpectClose("fd dw_gate", dwg, FiniteDiff(wg, loss), 1e-12);
  ExpectClose("fd dw_up", dwu, FiniteDiff(wu, loss), 1e-12);
  ExpectClose("fd dw_down", dwd, FiniteDiff(wd, loss), 1e-12);
}

TEST(CrossEntropy, CpuMatchesReferenceWithWeightsIgnoredTargetsAndRaggedBlocks) {
  const int64_t n = 37, e = 32, vocab = 101;
  auto h = Random(n * e, 21), w = Random(vocab * e, 22, 0.5), weight = Random(n, 23);
  std::vector<int32_t> target(n);
  for (int64_t i = 0; i < n; ++i) target[i] = (i % 7 == 3) ? -1 : int32_t((i * 37 + 5) % vocab);
  std::vector<float> loss_ref(n), dh_ref(n * e), dw_ref(vocab * e, 0.25f);
  double sum_ref = 0;
  ASSERT_TRUE(kernels::CrossEntropyForward(kRef, n, e, vocab, h.data(), w.data(), target.data(), weight.data(),
                                           loss_ref.data(), &sum_ref).ok());
  ASSERT_TRUE(kernels::CrossEntropyBackward(kRef, n, e, vocab, h.data(), w.data(), target.data(), weight.data(),
                                            0.37f, dh_ref.data(), dw_ref.data()).ok());
  for (int64_t block : {1, 8, 64}) {
    std::vector<float> loss(n), dh(n * e), dw(vocab * e, 0.25f);
    double sum = 0;
    ASSERT_TRUE(kernels::CrossEntropyForward(kCpu, n, e, vocab, h.data(), w.data(), target.data(), weight.data(),
                                             loss.data(), &sum, block).ok());
    ASSERT_TRUE(kernels::CrossEntropyBackward(kCpu, n, e, vocab, h.data(), w.data(), target.data(), weight.data(),
                                              0.37f, dh.data(), dw.data(), block).ok());
    std::printf("[cross-entropy cpu vs ref] block=%ld weighted_sum cpu=%.9f ref=%.9f\n", long(block), sum, sum_ref);
    EXPECT_NEAR(sum, sum_ref, 1e-5 * std::fabs(sum_ref));
    ExpectClose("loss", loss, loss_ref, 1e-12);
    ExpectClose("dh", dh, dh_ref, 1e-11);
    ExpectClose("dw", dw, dw_ref, 1e-11);
  }
  for (int64_t i = 0; i < n; ++i)
    if (target[i] < 0) {
      EXPECT_EQ(loss_ref[i], 0.f);
    }
}

TEST(CrossEntropy, ReferenceGradientsMatchFiniteDifferencesInFp64) {
  const int64_t n = 4, e = 5, vocab = 7;
  auto h = Random<double>(n * e, 24), w = Random<double>(vocab * e, 25), weight = Random<double>(n, 26);
  std::vector<int32_t> target = {3, -1, 0, 6};
  std::vector<double> loss(n), dh(n * e), dw(vocab * e, 0.0);
  auto f = [&] { return kernels::ref::CrossEntropyForward<double>(n, e, vocab, h.data(), w.data(), target.data(),
                                                                  weight.data(), loss.data()); };
  kernels::ref::CrossEntropyBackward<double>(n, e, vocab, h.data(), w.data(), target.data(), weight.data(), 1.0,
                                             dh.data(), dw.data());
  ExpectClose("fd dh", dh, FiniteDiff(h, f), 1e-12);
  ExpectClose("fd dw", dw, FiniteDiff(w, f), 1e-12);
}

TEST(CrossEntropy, TargetOutsideVocabularyIsAnErrorNamingTheToken) {
  std::vector<float> h(8, 1.f), w(24, 1.f), loss(2);
  std::vector<int32_t> target = {1, 3};
  const auto st = kernels::CrossEntropyForward(kCpu, 2, 4, 3, h.data(), w.data(), target.data(), nullptr, loss.data(),
                                               nullptr);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("target[1]"), std::string::npos) << st.message();
}

TEST(AdamW, CpuMatchesReferenceOverSeveralSteps) {
  const int64_t n = 1001;
  auto p_ref = Random(n, 27), m_ref = std::vector<float>(n, 0.f), v_ref = std::vector<float>(n, 0.f);
  auto p_cpu = p_ref, m_cpu = m_ref, v_cpu = v_ref;
  kernels::AdamWHyper hp{3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f};
  for (int64_t step = 1; step <= 5; ++step) {
    auto g = Random(n, 100 + step);
    ASSERT_TRUE(kernels::AdamWStep(kRef, n, p_ref.data(), g.data(), m_ref.data(), v_ref.data(), hp, step).ok());
    ASSERT_TRUE(kernels::AdamWStep(kCpu, n, p_cpu.data(), g.data(), m_cpu.data(), v_cpu.data(), hp, step).ok());
  }
  std::printf("[adamw cpu vs ref] 5 steps\n");
  ExpectClose("param", p_cpu, p_ref, 1e-12);
  ExpectClose("m", m_cpu, m_ref, 1e-12);
  ExpectClose("v", v_cpu, v_ref, 1e-12);
}

TEST(AdamW, FirstStepMovesEachWeightByLrTimesSignAfterDecay) {
  // Step 1 from m = v = 0: m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps).
  std::vector<float> p = {1.f, -2.f, 0.5f}, g = {0.3f, -4.f, 1e-3f}, m(3, 0.f), v(3, 0.f);
  kernels::AdamWHyper hp{0.01f, 0.9f, 0.999f, 1e-8f, 0.1f};
  ASSERT_TRUE(kernels::AdamWStep(kCpu, 3, p.data(), g.data(), m.data(), v.data(), hp, 1).ok());
  const std::vector<double> want = {1.0 * 0.999 - 0.01, -2.0 * 0.999 + 0.01, 0.5 * 0.999 - 0.01 * 1e-3 / (1e-3 + 1e-8)};
  ExpectClose("params", p, want, 1e-12);
}

TEST(Layers, BadArgumentsAreRejectedWithTheArgumentNamed) {
  std::vector<float> a(64, 1.f);
  std::vector<int64_t> pos(4, 0);
  auto starts = [](const kernels::Status& st, const char* field) {
    EXPECT_FALSE(st.ok());
    EXPECT_EQ(st.message().rfind(field, 0), 0u) << st.message();
  };
  starts(kernels::RmsNormForward(kCpu, 2, 0, a.data(), a.data(), 1e-5f, a.data(), a.data()), "e");
  starts(kernels::RmsNormForward(kCpu, 2, 4, a.data(), a.data(), -1.f, a.data(), a.data()), "eps");
  starts(kernels::RmsNormForward(kCpu, 2, 4, nullptr, a.data(), 1e-5f, a.data(), a.data()), "x");
  starts(kernels::Rope(kCpu, 2, 1, 3, kernels::Dense3(a.data(), 1, 3), kernels::Dense3(a.data(), 1, 3), pos.data(),
                       1e4, false), "d");
  starts(kernels::Rope(kCpu, 2, 1, 4, kernels::Dense3(a.data(), 1, 4), kernels::Dense3(a.data(), 1, 4), pos.data(),
                       0.5, false), "rope_theta");
  starts(kernels::FfnForward(kCpu, 2, 4, 0, a.data(), {a.data(), a.data(), a.data()}, a.data()), "f");
  starts(kernels::FfnForward(kCpu, 2, 4, 4, a.data(), {a.data(), nullptr, a.data()}, a.data()), "w.w_up");
  starts(kernels::AdamWStep(kCpu, 4, a.data(), a.data(), a.data(), a.data(), {}, 0), "step");
  starts(kernels::AdamWStep(kCpu, 4, a.data(), a.data(), a.data(), a.data(), {1e-3f, 1.5f}, 1), "beta1");
#ifndef RW_HAVE_CUDA
  starts(kernels::RmsNormForward(Exec{Device::kCuda}, 2, 4, a.data(), a.data(), 1e-5f, a.data(), a.data()), "device");
#endif
  // The ops over dtype views: operands of another dtype than the op's are named; a dtype no table runs
  // (bf16 AdamW, embedding, add, RMSNorm backward) is refused, and nothing is written.
  std::vector<kernels::bf16> h(64, kernels::bf16{0x3f80});
  const std::vector<float> before = a;
  starts(kernels::AddInto(kCpu, 4, a.data(), h.data()), "dst: dtype bf16 differs from src's f32");
  starts(kernels::AdamWStep(kCpu, 4, a.data(), a.data(), h.data(), a.data(), {}, 1), "m: dtype bf16 differs");
  starts(kernels::RmsNormBackward(kCpu, 2, 4, a.data(), a.data(), a.data(), h.data(), a.data(), a.data()),
         "dy: dtype bf16 differs from x's f32");
  const int32_t ids[2] = {0, 1};
  starts(kernels::EmbeddingForward(kCpu, 2, 4, 4, ids, a.data(), h.data()), "x: dtype bf16 differs from table's");
  const kernels::Status bf = kernels::AddInto(kCpu, 4, h.data(), h.data());
  EXPECT_FALSE(bf.ok());
  EXPECT_NE(bf.message().find("bf16"), std::string::npos) << bf.message();
  EXPECT_EQ(a, before);
  EXPECT_EQ(h[0].bits, 0x3f80);
}

}  // namespace
}  // namespace rw::test

namespace rw::test {
namespace {

TEST(Embedding, CpuMatchesReferenceWithRepeatedIdsAndRefusesIdsOutsideTheVocabulary) {
  const int64_t n = 50, e = 24, vocab = 17;
  const auto table = Random(vocab * e, 61), dx = Random(n * e, 62), dt0 = Random(vocab * e, 63, 0.1);
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = int32_t((i * 7) % vocab);  // every id several times
  std::vector<float> x[2], dt[2];
  int k = 0;
  for (const Exec& ex : {kRef, kCpu}) {
    x[k].resize(n * e);
    dt[k] = dt0;
    ASSERT_TRUE(kernels::EmbeddingForward(ex, n, e, vocab, ids.data(), table.data(), x[k].data()).ok());
    ASSERT_TRUE(kernels::EmbeddingBackward(ex, n, e, vocab, ids.data(), dx.data(), dt[k].data()).ok());
    ++k;
  }
  std::printf("[embedding cpu vs ref]\n");
  ExpectClose("x", x[1], x[0], 0.0);
  ExpectClose("dtable", dt[1], dt[0], 0.0);  // the same adds in the same (token) order
  ids[3] = int32_t(vocab);
  const auto st = kernels::EmbeddingForward(kCpu, n, e, vocab, ids.data(), table.data(), x[1].data());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.message().rfind("ids[3]:", 0), 0u) << st.message();
  ids[3] = -1;
  EXPECT_FALSE(kernels::EmbeddingBackward(kCpu, n, e, vocab, ids.data(), dx.data(), dt[1].data()).ok());
}

// Device memory goes through the device's table: host devices malloc and memcpy; a device without a table
// in this build, or a GPU the machine lacks, is an error, never a crash.
TEST(DeviceMemory, GoesThroughTheDevicesTable) {
  for (Device d : {Device::kRef, Device::kCpu}) {
    void* p = nullptr;
    ASSERT_TRUE(kernels::DeviceAlloc(d, 64, &p).ok());
    const std::vector<uint8_t> src(64, 7);
    std::vector<uint8_t> back(64, 0);
    ASSERT_TRUE(kernels::CopyToDevice(d, p, src.data(), 64).ok());
    ASSERT_TRUE(kernels::DeviceMemset(d, static_cast<uint8_t*>(p) + 32, 3, 32).ok());
    ASSERT_TRUE(kernels::CopyToHost(d, back.data(), p, 64).ok());
    ASSERT_TRUE(kernels::DeviceSynchronize(d).ok());
    EXPECT_EQ(back[0], 7);
    EXPECT_EQ(back[63], 3);
    kernels::DeviceFree(d, p);
  }
  void* p = nullptr;
  const kernels::Status st = kernels::DeviceAlloc(Device::kCuda, 64, &p);
  if (!kernels::FindBackend(Device::kCuda) || !kernels::FindBackend(Device::kCuda)->available()) {
    EXPECT_FALSE(st.ok());
    std::printf("  cuda without a GPU: %s\n", st.message().c_str());
  } else {
    EXPECT_TRUE(st.ok()) << st.message();
    kernels::DeviceFree(Device::kCuda, p);
  }
}

}  // namespace
}  // namespace rw::test
