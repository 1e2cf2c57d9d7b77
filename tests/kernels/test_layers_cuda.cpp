// The CUDA per-token layers and AdamW against the scalar reference (fp32 both), on the same random,
// ragged inputs as the CPU tests. Skipped with a message on machines without a CUDA device.
#include <gtest/gtest.h>

#include "kernels/device_memory.h"
#include "kernels/layers.h"
#include "test_util.h"

namespace rw::test {
namespace {

using kernels::Device;
using kernels::DeviceBuffer;
using kernels::Exec;

const Exec kRef{Device::kRef};
const Exec kCuda{Device::kCuda};

#define SKIP_WITHOUT_CUDA() \
  if (!kernels::CudaAvailable()) GTEST_SKIP() << "no CUDA device on this machine: cuda layers not run"

template <class T>
DeviceBuffer Up(const std::vector<T>& x) {
  DeviceBuffer b(Device::kCuda, x.size() * sizeof(T) + 16);
  EXPECT_TRUE(kernels::CopyToDevice(Device::kCuda, b.get(), x.data(), x.size() * sizeof(T)).ok());
  return b;
}

template <class T>
std::vector<T> Down(const DeviceBuffer& b, size_t n) {
  std::vector<T> out(n);
  EXPECT_TRUE(kernels::CopyToHost(Device::kCuda, out.data(), b.get(), n * sizeof(T)).ok());
  return out;
}

TEST(CudaLayers, RmsNormMatchesReference) {
  SKIP_WITHOUT_CUDA();
  const int64_t n = 37, e = 1029;
  auto x = Random(n * e, 1), w = Random(e, 2), dy = Random(n * e, 3), dw0 = Random(e, 4, 0.1);
  std::vector<float> y(n * e), r(n), dx(n * e), dw = dw0;
  ASSERT_TRUE(kernels::RmsNormForward(kRef, n, e, x.data(), w.data(), 1e-5f, y.data(), r.data()).ok());
  ASSERT_TRUE(kernels::RmsNormBackward(kRef, n, e, x.data(), w.data(), r.data(), dy.data(), dx.data(), dw.data()).ok());
  auto dX = Up(x), dW = Up(w), dDy = Up(dy), dY = Up(y), dR = Up(r), dDx = Up(dx), dDw = Up(dw0);
  ASSERT_TRUE(kernels::RmsNormForward(kCuda, n, e, dX.as<float>(), dW.as<float>(), 1e-5f, dY.as<float>(),
                                      dR.as<float>()).ok());
  ASSERT_TRUE(kernels::RmsNormBackward(kCuda, n, e, dX.as<float>(), dW.as<float>(), dR.as<float>(), dDy.as<float>(),
                                       dDx.as<float>(), dDw.as<float>()).ok());
  ExpectClose("y", Down<float>(dY, n * e), y, 1e-11);
  ExpectClose("dx", Down<float>(dDx, n * e), dx, 1e-11);
  ExpectClose("dw", Down<float>(dDw, e), dw, 1e-10);
}

TEST(CudaLayers, RopeMatchesReferenceNearOneMillionPositions) {
  SKIP_WITHOUT_CUDA();
  const int64_t s = 33, h = 3, d = 128;
  std::vector<int64_t> pos(s);
  for (int64_t t = 0; t < s; ++t) pos[t] = (t % 2) ? 1000000 - t * 977 : t;
  auto x = Random(s * h * d, 8);
  std::vector<float> y(x.size());
  ASSERT_TRUE(kernels::Rope(kRef, s, h, d, kernels::Dense3(x.data(), h, d), kernels::Dense3(y.data(), h, d), pos.data(),
                            5e7, false).ok());
  auto dX = Up(x), dPos = Up(pos);
  ASSERT_TRUE(kernels::Rope(kCuda, s, h, d, kernels::Dense3(dX.get(), h, d), kernels::Dense3(dX.get(), h, d),
                            dPos.as<int64_t>(), 5e7, false).ok());
  ExpectClose("rope (in place)", Down<float>(dX, x.size()), y, 1e-12);
}

TEST(CudaLayers, FfnMatchesReferenceAcrossRaggedBlocks) {
  SKIP_WITHOUT_CUDA();
  const int64_t n = 37, e = 48, f = 136;
  auto x = Random(n * e, 11), wg = Random(f * e, 12, 0.2), wu = Random(f * e, 13, 0.2), wd = Random(e * f, 14, 0.2),
       dy = Random(n * e, 15);
  std::vector<float> y(n * e), dx(n * e), dwg(f * e, 0.5f), dwu(f * e, 0.5f), dwd(e * f, 0.5f);
  ASSERT_TRUE(kernels::FfnForward(kRef, n, e, f, x.data(), {wg.data(), wu.data(), wd.data()}, y.data()).ok());
  ASSERT_TRUE(kernels::FfnBackward(kRef, n, e, f, x.data(), {wg.data(), wu.data(), wd.data()}, dy.data(), dx.data(),
                                   {dwg.data(), dwu.data(), dwd.data()}).ok());
  auto dX = Up(x), dWg = Up(wg), dWu = Up(wu), dWd = Up(wd), dDy = Up(dy), dY = Up(y), dDx = Up(dx);
  auto gWg = Up(std::vector<float>(f * e, 0.5f)), gWu = Up(std::vector<float>(f * e, 0.5f)),
       gWd = Up(std::vector<float>(e * f, 0.5f));
  kernels::FfnWeights w{dWg.as<float>(), dWu.as<float>(), dWd.as<float>()};
  ASSERT_TRUE(kernels::FfnForward(kCuda, n, e, f, dX.as<float>(), w, dY.as<float>(), 16).ok());
  ASSERT_TRUE(kernels::FfnBackward(kCuda, n, e, f, dX.as<float>(), w, dDy.as<float>(), dDx.as<float>(),
                                   {gWg.as<float>(), gWu.as<float>(), gWd.as<float>()}, 16).ok());
  // cuBLAS may use TF32 tensor cores only when asked; the default sgemm is full fp32.
  ExpectClose("y", Down<float>(dY, n * e), y, 1e-10);
  ExpectClose("dx", Down<float>(dDx, n * e), dx, 1e-10);
  ExpectClose("dw_gate", Down<float>(gWg, f * e), dwg, 1e-10);
  ExpectClose("dw_up", Down<float>(gWu, f * e), dwu, 1e-10);
  ExpectClose("dw_down", Down<float>(gWd, e * f), dwd, 1e-10);
}

TEST(CudaLayers, CrossEntropyMatchesReferenceWithWeightsAndIgnoredTargets) {
  SKIP_WITHOUT_CUDA();
  const int64_t n = 37, e = 32, vocab = 1001;
  auto h = Random(n * e, 21), w = Random(vocab * e, 22, 0.5), weight = Random(n, 23);
  std::vector<int32_t> target(n);
  for (int64_t i = 0; i < n; ++i) target[i] = (i % 7 == 3) ? -1 : int32_t((i * 37 + 5) % vocab);
  std::vector<float> loss(n), dh(n * e), dw(vocab * e, 0.25f);
  double sum = 0, dsum = 0;
  ASSERT_TRUE(kernels::CrossEntropyForward(kRef, n, e, vocab, h.data(), w.data(), target.data(), weight.data(),
                                           loss.data(), &sum).ok());
  ASSERT_TRUE(kernels::CrossEntropyBackward(kRef, n, e, vocab, h.data(), w.data(), target.data(), weight.data(), 0.37f,
                                            dh.data(), dw.data()).ok());
  auto dH = Up(h), dW = Up(w), dWt = Up(weight), dT = Up(target), dL = Up(loss), dDh = Up(dh),
       dDw = Up(std::vector<float>(vocab * e, 0.25f));
  ASSERT_TRUE(kernels::CrossEntropyForward(kCuda, n, e, vocab, dH.as<float>(), dW.as<float>(), dT.as<int32_t>(),
                                           dWt.as<float>(), dL.as<float>(), &dsum, 8).ok());
  ASSERT_TRUE(kernels::CrossEntropyBackward(kCuda, n, e, vocab, dH.as<float>(), dW.as<float>(), dT.as<int32_t>(),
                                            dWt.as<float>(), 0.37f, dDh.as<float>(), dDw.as<float>(), 8).ok());
  std::printf("  weighted sum cuda=%.9f ref=%.9f\n", dsum, sum);
  EXPECT_NEAR(dsum, sum, 1e-5 * std::fabs(sum));
  ExpectClose("loss", Down<float>(dL, n), loss, 1e-11);
  ExpectClose("dh", Down<float>(dDh, n * e), dh, 1e-10);
  ExpectClose("dw", Down<float>(dDw, vocab * e), dw, 1e-10);
}

TEST(CudaLayers, AdamWMatchesReferenceOverSeveralSteps) {
  SKIP_WITHOUT_CUDA();
  const int64_t n = 100003;
  auto p = Random(n, 27);
  std::vector<float> m(n, 0.f), v(n, 0.f);
  auto dP = Up(p), dM = Up(m), dV = Up(v);
  kernels::AdamWHyper hp{3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f};
  for (int64_t step = 1; step <= 5; ++step) {
    auto g = Random(n, 100 + step);
    auto dG = Up(g);
    ASSERT_TRUE(kernels::AdamWStep(kRef, n, p.data(), g.data(), m.data(), v.data(), hp, step).ok());
    ASSERT_TRUE(kernels::AdamWStep(kCuda, n, dP.as<float>(), dG.as<float>(), dM.as<float>(), dV.as<float>(), hp, step).ok());
  }
  ExpectClose("param", Down<float>(dP, n), p, 1e-12);
  ExpectClose("m", Down<float>(dM, n), m, 1e-12);
  ExpectClose("v", Down<float>(dV, n), v, 1e-12);
}

}  // namespace
}  // namespace rw::test
