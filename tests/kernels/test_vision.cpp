// The VQGAN's ops (kernels/vision.h) on the CPU backend against their fp64 references, on random inputs at
// ragged shapes; the nearest code exact on near ties; bad arguments named.
#include <gtest/gtest.h>

#include "kernels/ref/vision_ref.h"
#include "kernels/vision.h"
#include "test_util.h"

namespace rw::test {
namespace {

using kernels::Conv2dShape;
using kernels::Device;
using kernels::Exec;

const Exec kCpu{Device::kCpu};

std::vector<double> Wide(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

TEST(Vision, ConvolutionsMatchTheReference) {
  struct Case {
    const char* name;
    Conv2dShape s;
  };
  auto same = [](int64_t n, int64_t h, int64_t w, int64_t ci, int64_t co, int64_t k) {
    return Conv2dShape::Same(n, h, w, ci, co, k);
  };
  Conv2dShape down;  // LWM's downsampling: pad one row and column at the bottom and right, 3x3 stride 2
  down.n = 2, down.h = 9, down.w = 7, down.cin = 5, down.cout = 6, down.stride = 2;
  down.pad_top = down.pad_left = 0, down.pad_bottom = down.pad_right = 1;
  Conv2dShape big_block = same(1, 37, 61, 19, 23, 3);  // several blocks of output rows
  for (const Case& c : {Case{"3x3 same, ragged", same(2, 7, 5, 3, 5, 3)}, Case{"1x1", same(3, 6, 11, 7, 4, 1)},
                        Case{"3x3 stride 2, pad bottom/right", down}, Case{"5x5 same", same(1, 8, 9, 4, 3, 5)},
                        Case{"3x3 wide", big_block}}) {
    const Conv2dShape& s = c.s;
    const auto x = Random(size_t(s.n * s.h * s.w * s.cin), 11), w = Random(size_t(s.kh * s.kw * s.cin * s.cout), 12),
               bias = Random(size_t(s.cout), 13);
    std::vector<float> y(size_t(s.n * s.out_h() * s.out_w() * s.cout));
    ASSERT_TRUE(kernels::Conv2dForward(kCpu, s, x.data(), w.data(), bias.data(), y.data()).ok()) << c.name;
    std::vector<double> want(y.size());
    const auto xd = Wide(x), wd = Wide(w), bd = Wide(bias);
    kernels::ref::Conv2dForward<double>(s, xd.data(), wd.data(), bd.data(), want.data());
    std::printf("[conv2d %s: (%lld,%lld,%lld,%lld) -> %lldx%lldx%lld]\n", c.name, (long long)s.n, (long long)s.h,
                (long long)s.w, (long long)s.cin, (long long)s.out_h(), (long long)s.out_w(), (long long)s.cout);
    ExpectClose("y", y, want, 1e-11);
  }
  // Without a bias.
  const Conv2dShape s = same(1, 4, 4, 2, 3, 3);
  const auto x = Random(32, 21), w = Random(54, 22);
  std::vector<float> y(48);
  std::vector<double> want(48);
  ASSERT_TRUE(kernels::Conv2dForward(kCpu, s, x.data(), w.data(), nullptr, y.data()).ok());
  const auto xd = Wide(x), wd = Wide(w);
  kernels::ref::Conv2dForward<double>(s, xd.data(), wd.data(), nullptr, want.data());
  ExpectClose("y (no bias)", y, want, 1e-11);
}

TEST(Vision, GroupNormAndSiluMatchTheReference) {
  const int64_t n = 2, pixels = 35, c = 12;
  for (int64_t groups : {1, 3, 12})
    for (bool silu : {false, true}) {
      // A mean far from zero: the statistics must not cancel.
      auto x = Random(size_t(n * pixels * c), 31 + groups, 2.0);
      for (auto& v : x) v += 30.f;
      const auto scale = Random(size_t(c), 32), bias = Random(size_t(c), 33);
      std::vector<float> y(x.size());
      ASSERT_TRUE(kernels::GroupNormForward(kCpu, n, pixels, c, groups, 1e-6f, x.data(), scale.data(), bias.data(), silu,
                                            y.data()).ok());
      std::vector<double> want(x.size());
      const auto xd = Wide(x), sd = Wide(scale), bd = Wide(bias);
      kernels::ref::GroupNormForward<double>(n, pixels, c, groups, 1e-6, xd.data(), sd.data(), bd.data(), silu,
                                             want.data());
      std::printf("[group norm, %lld groups%s]\n", (long long)groups, silu ? ", silu" : "");
      ExpectClose("y", y, want, 1e-11);
      // In place gives the same.
      ASSERT_TRUE(kernels::GroupNormForward(kCpu, n, pixels, c, groups, 1e-6f, x.data(), scale.data(), bias.data(), silu,
                                            x.data()).ok());
      EXPECT_EQ(x, y);
    }
}

TEST(Vision, UpsamplingRepeatsEachPixel) {
  const int64_t n = 2, h = 3, w = 5, c = 7;
  const auto x = Random(size_t(n * h * w * c), 41);
  std::vector<float> y(size_t(4 * x.size())), want(y.size());
  ASSERT_TRUE(kernels::UpsampleNearest2x(kCpu, n, h, w, c, x.data(), y.data()).ok());
  kernels::ref::UpsampleNearest2x<float>(n, h, w, c, x.data(), want.data());
  EXPECT_EQ(y, want);
}

// Random codes, then adversarial ones: z halfway between two codes and moved by 1e-7 of their distance
// toward the second (an fp32 dot product cannot tell them apart; the exact distance can), and duplicated
// codes (ties go to the lower index).
TEST(Vision, TheNearestCodeIsTheExactArgmin) {
  const int64_t n = 300, d = 64, k = 515;
  auto z = Random(size_t(n * d), 51), codebook = Random(size_t(k * d), 52);
  std::vector<int32_t> got(static_cast<size_t>(n)), want(static_cast<size_t>(n));
  ASSERT_TRUE(kernels::NearestCode(kCpu, n, d, k, z.data(), codebook.data(), got.data()).ok());
  kernels::ref::NearestCode<float>(n, d, k, z.data(), codebook.data(), want.data());
  EXPECT_EQ(got, want);
  // Near ties.
  int hard = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t a = (i * 7) % k, b = (i * 13 + 1) % k;
    if (a == b) continue;
    for (int64_t t = 0; t < d; ++t) {
      const double mid = 0.5 * (double(codebook[size_t(a * d + t)]) + double(codebook[size_t(b * d + t)]));
      z[size_t(i * d + t)] = float(mid + 1e-7 * (double(codebook[size_t(b * d + t)]) - mid));
    }
    ++hard;
  }
  for (int64_t t = 0; t < d; ++t) codebook[size_t(200 * d + t)] = codebook[size_t(100 * d + t)];  // a duplicate
  for (int64_t t = 0; t < d; ++t) z[size_t(5 * d + t)] = codebook[size_t(200 * d + t)];
  ASSERT_TRUE(kernels::NearestCode(kCpu, n, d, k, z.data(), codebook.data(), got.data()).ok());
  kernels::ref::NearestCode<float>(n, d, k, z.data(), codebook.data(), want.data());
  int differ = 0;
  for (int64_t i = 0; i < n; ++i) differ += got[size_t(i)] != want[size_t(i)];
  std::printf("[nearest code] %d of %lld vectors on near ties; %d differ from the fp64 argmin\n", hard, (long long)n,
              differ);
  EXPECT_EQ(differ, 0);
  EXPECT_EQ(got[5], 100);
}

TEST(Vision, BadArgumentsAreNamed) {
  std::vector<float> buf(4096, 1.f);
  std::vector<int32_t> idx(8);
  auto msg = [](const kernels::Status& s) { return s.ok() ? std::string("ok") : s.message(); };
  EXPECT_NE(msg(kernels::GroupNormForward(kCpu, 1, 4, 12, 5, 1e-6f, buf.data(), buf.data(), buf.data(), true,
                                          buf.data())).find("groups: 5 does not divide the 12 channels"),
            std::string::npos);
  Conv2dShape s = Conv2dShape::Same(1, 2, 2, 1, 1, 5);
  s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = 0;
  EXPECT_NE(msg(kernels::Conv2dForward(kCpu, s, buf.data(), buf.data(), nullptr, buf.data())).find("kh, kw"),
            std::string::npos);
  s = Conv2dShape::Same(1, 4, 4, 0, 1, 3);
  EXPECT_NE(msg(kernels::Conv2dForward(kCpu, s, buf.data(), buf.data(), nullptr, buf.data())).find("cin: must be >= 1"),
            std::string::npos);
  EXPECT_NE(msg(kernels::NearestCode(kCpu, 2, 4, 2, nullptr, buf.data(), idx.data())).find("z: null"), std::string::npos);
  const kernels::Status cuda = kernels::UpsampleNearest2x(Exec{Device::kCuda}, 1, 1, 1, 1, buf.data(), buf.data());
  ASSERT_FALSE(cuda.ok());
  std::printf("  on cuda: %s\n", cuda.message().c_str());
}

}  // namespace
}  // namespace rw::test
