// Attention kernels against the scalar reference: every present backend, fresh random inputs, ragged
// shapes, block sizes 1/16/64/128, document boundaries inside blocks, fully masked rows, GQA, causal and
// not. The reference itself is checked by finite differences in fp64.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "attention_harness.h"
#include "kernels/attention.h"
#include "kernels/ref/attention_ref.h"

namespace rw::test {
namespace {

std::vector<AttnCase> Cases() {
  return {
      // name, sq, sk, hq, hkv, d, causal, bq, bk, q_off, k_off, doc_len, pad_q, pad_k, zigzag, explicit
      {"square_noncausal_b16", 64, 64, 2, 2, 64, false, 16, 16},
      {"square_causal_b16", 64, 64, 2, 2, 64, true, 16, 16},
      {"ragged_causal_b16_b64", 77, 131, 2, 1, 64, true, 16, 64, 54, 0},
      {"ragged_noncausal_defaults", 100, 37, 3, 3, 64, false},
      {"block1_tiny", 5, 7, 2, 1, 8, true, 1, 1, 2, 0},
      {"block128_d128_gqa4", 200, 300, 4, 1, 128, true, 128, 128, 100, 0},
      {"block64_gqa2_d128", 130, 130, 4, 2, 128, false, 64, 64},
      {"docs_inside_blocks_causal", 96, 96, 2, 1, 64, true, 32, 32, 0, 0, 23},
      {"docs_inside_blocks_noncausal", 90, 90, 2, 2, 64, false, 16, 64, 0, 0, 17},
      {"future_block_fully_masked", 40, 40, 2, 2, 64, true, 16, 16, 0, 40},
      {"partially_masked_rows_offset", 48, 64, 2, 1, 64, true, 16, 16, 10, 30},
      {"padding_rows_and_keys", 70, 70, 2, 2, 64, true, 16, 16, 0, 0, 0, 9, 13},
      {"zigzag_index_arrays", 64, 64, 4, 2, 64, true, 16, 16, 0, 0, 0, 0, 0, true},
      {"zigzag_with_docs", 64, 64, 2, 1, 64, true, 16, 16, 0, 0, 21, 0, 0, true},
      {"explicit_index_offsets", 33, 65, 2, 1, 64, true, 16, 16, 40, 0, 0, 0, 0, false, true},
      {"sq1_decode_row", 1, 129, 8, 2, 128, true, 16, 64, 128, 0},
  };
}

// The fp32 reference on the same inputs the device saw.
AttnOutputs Reference(const AttnCase& c, const AttnInputs& in) { return RunAttention(Device::kRef, c, in); }

void CheckAll(const AttnOutputs& got, const AttnOutputs& want, double tol_o, double tol_grad) {
  ExpectClose("o", got.o, want.o, tol_o);
  ExpectClose("lse", got.lse, want.lse, tol_o);
  ExpectClose("dq", got.dq, want.dq, tol_grad);
  ExpectClose("dk", got.dk, want.dk, tol_grad);
  ExpectClose("dv", got.dv, want.dv, tol_grad);
  EXPECT_FALSE(AnyNan(got.o) || AnyNan(got.dq) || AnyNan(got.dk) || AnyNan(got.dv)) << "NaN in output";
}

class AttentionCase : public ::testing::TestWithParam<AttnCase> {};

TEST_P(AttentionCase, CpuMatchesReference) {
  const AttnCase& c = GetParam();
  const AttnInputs in = MakeInputs(c, 1000 + c.sq * 7 + c.sk);
  std::printf("[cpu vs ref] %s\n", c.name.c_str());
  CheckAll(RunAttention(Device::kCpu, c, in), Reference(c, in), 1e-10, 1e-10);
}

TEST_P(AttentionCase, CudaBf16MatchesReference) {
  if (!kernels::CudaAvailable()) GTEST_SKIP() << "no CUDA device on this machine: cuda attention not run";
  AttnCase c = GetParam();
  if (c.d != 64 && c.d != 128) GTEST_SKIP() << "cuda attention takes head dim 64 or 128";
  c.block_q = c.block_k = 0;  // the CUDA kernel has fixed tiles
  for (DType dt : {DType::kBF16, DType::kF16}) {
    const AttnInputs in = RoundFor(dt, MakeInputs(c, 2000 + c.sq));
    std::printf("[cuda %s vs ref] %s\n", kernels::DTypeName(dt), c.name.c_str());
    // bf16 keeps 8 mantissa bits (relative 4e-3): NMSE of outputs rounded to bf16 is ~1e-5.
    const double tol = dt == DType::kBF16 ? 1e-4 : 1e-5;
    CheckAll(RunAttention(Device::kCuda, c, in, dt), Reference(c, in), tol, tol);
  }
}

// What a plain bf16 implementation computes (PyTorch eager on bf16 tensors): each product accumulates in
// fp32 and its output is rounded to bf16 (S, P, O, dP, dS, dQ, dK, dV); softmax runs in fp32 on the
// rounded S. Materialized, row by row. The flash-attention rule measures the fast kernel against it.
AttnOutputs NaiveBf16(const AttnCase& c, const AttnInputs& in) {
  const AttnTokens tok = MakeTokens(c);
  AttentionParams p;  // only for the mask (ref::Allowed)
  p.causal = c.causal;
  p.q_tok.offset = c.q_offset;
  p.k_tok.offset = c.k_offset;
  if (tok.use_index) {
    p.q_tok.index = tok.qidx.data();
    p.k_tok.index = tok.kidx.data();
  }
  if (tok.use_seg) {
    p.q_tok.segment = tok.qseg.data();
    p.k_tok.segment = tok.kseg.data();
  }
  auto r = [](double x) { return double(kernels::ToFloat(kernels::ToBf16(float(x)))); };
  const int64_t g = c.hq / c.hkv, D = c.d;
  const double sc = 1.0 / std::sqrt(double(D));
  AttnOutputs out;
  out.o.assign(c.sq * c.hq * D, 0.f);
  out.lse.assign(c.hq * c.sq, -std::numeric_limits<float>::infinity());
  out.dq = in.dq0;
  out.dk = in.dk0;
  out.dv = in.dv0;
  std::vector<double> dk_acc(in.dk0.size(), 0.0), dv_acc(in.dv0.size(), 0.0);
  for (int64_t h = 0; h < c.hq; ++h) {
    const int64_t hk = h / g;
    for (int64_t i = 0; i < c.sq; ++i) {
      const float* q = &in.q[(i * c.hq + h) * D];
      const float* dout = &in.dout[(i * c.hq + h) * D];
      std::vector<double> s(c.sk, -INFINITY), pr(c.sk, 0.0);
      double m = -INFINITY;
      for (int64_t j = 0; j < c.sk; ++j) {
        if (!kernels::ref::Allowed(p, i, j)) continue;
        float dot = 0.f;
        for (int64_t x = 0; x < D; ++x) dot += q[x] * in.k[(j * c.hkv + hk) * D + x];
        s[j] = r(r(dot) * sc);
        m = std::max(m, s[j]);
      }
      if (m == -INFINITY) continue;
      double l = 0;
      for (int64_t j = 0; j < c.sk; ++j) l += s[j] == -INFINITY ? 0.0 : std::exp(s[j] - m);
      for (int64_t j = 0; j < c.sk; ++j) pr[j] = s[j] == -INFINITY ? 0.0 : r(std::exp(s[j] - m) / l);
      out.lse[h * c.sq + i] = float(m + std::log(l));
      std::vector<double> o(D, 0.0);
      for (int64_t j = 0; j < c.sk; ++j)
        for (int64_t x = 0; x < D; ++x) o[x] += pr[j] * in.v[(j * c.hkv + hk) * D + x];
      for (int64_t x = 0; x < D; ++x) out.o[(i * c.hq + h) * D + x] = float(r(o[x]));
      double delta = 0;
      for (int64_t x = 0; x < D; ++x) delta += r(o[x]) * dout[x];
      std::vector<double> dq(D, 0.0);
      for (int64_t j = 0; j < c.sk; ++j) {
        if (pr[j] == 0.0) continue;
        double dp = 0;
        for (int64_t x = 0; x < D; ++x) dp += double(dout[x]) * in.v[(j * c.hkv + hk) * D + x];
        const double ds = r(pr[j] * (r(dp) - delta));
        for (int64_t x = 0; x < D; ++x) {
          dq[x] += ds * in.k[(j * c.hkv + hk) * D + x];
          dk_acc[(j * c.hkv + hk) * D + x] += ds * q[x];
          dv_acc[(j * c.hkv + hk) * D + x] += pr[j] * dout[x];
        }
      }
      for (int64_t x = 0; x < D; ++x) out.dq[(i * c.hq + h) * D + x] += float(r(dq[x] * sc));
    }
  }
  for (size_t i = 0; i < dk_acc.size(); ++i) {
    out.dk[i] += float(r(dk_acc[i] * sc));
    out.dv[i] += float(r(dv_acc[i]));
  }
  return out;
}

// The flash-attention rule: the kernel's error against the fp64 reference is at most twice that of the
// naive bf16 implementation (plus a floor for outputs both get exactly).
void ExpectWithinTwiceNaive(const std::string& what, const std::vector<float>& got,
                            const std::vector<float>& naive, const std::vector<float>& want) {
  const Diff dg = Compare(got, want), dn = Compare(naive, want);
  std::printf("  %-5s bf16 kernel: max_abs_diff=%.3e nmse=%.3e | naive bf16: max_abs_diff=%.3e nmse=%.3e\n",
              what.c_str(), dg.max_abs, dg.nmse, dn.max_abs, dn.nmse);
  EXPECT_FALSE(dg.inf_mismatch) << what << ": infinities or NaNs differ";
  EXPECT_LE(dg.max_abs, 2 * dn.max_abs + 1e-6) << what;
  EXPECT_LE(dg.nmse, 2 * dn.nmse + 1e-12) << what;
}

TEST_P(AttentionCase, CpuBf16WithinTwiceTheNaiveBf16Error) {
  const AttnCase& c = GetParam();
  const AttnInputs in = RoundFor(DType::kBF16, MakeInputs(c, 3000 + c.sq * 5 + c.sk));
  std::printf("[cpu bf16 vs fp64 ref, naive bf16 beside] %s\n", c.name.c_str());
  const AttnOutputs got = RunAttention(Device::kCpu, c, in, DType::kBF16), want = Reference(c, in),
                    naive = NaiveBf16(c, in);
  ExpectWithinTwiceNaive("o", got.o, naive.o, want.o);
  ExpectWithinTwiceNaive("dq", got.dq, naive.dq, want.dq);
  ExpectWithinTwiceNaive("dk", got.dk, naive.dk, want.dk);
  ExpectWithinTwiceNaive("dv", got.dv, naive.dv, want.dv);
  ExpectClose("lse (fp32 statistics)", got.lse, want.lse, 1e-10);
  EXPECT_FALSE(AnyNan(got.o) || AnyNan(got.dq) || AnyNan(got.dk) || AnyNan(got.dv)) << "NaN in output";
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionCase, ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return info.param.name; });

TEST(Attention, FullyMaskedRowsGiveZeroOutputMinusInfLseAndNoNan) {
  // Queries at global 0..15 against keys at 16..31, causal: nothing is visible.
  AttnCase c{"all_masked", 16, 16, 2, 1, 64, true, 16, 16, 0, 16};
  const AttnInputs in = MakeInputs(c, 7);
  for (Device dev : {Device::kRef, Device::kCpu}) {
    const AttnOutputs out = RunAttention(dev, c, in);
    for (float x : out.o) ASSERT_EQ(x, 0.f);
    for (float x : out.lse) ASSERT_EQ(x, -std::numeric_limits<float>::infinity());
    // Gradients stay what they were (+=: nothing added).
    ExpectClose(std::string(kernels::DeviceName(dev)) + " dq unchanged", out.dq, in.dq0, 0);
    ExpectClose(std::string(kernels::DeviceName(dev)) + " dk unchanged", out.dk, in.dk0, 0);
  }
}

TEST(Attention, CpuBackwardIsBitwiseReproducibleAcrossRunsWithThreads) {
  // Many key blocks add into each dQ block; the adds happen in key-block order whatever the timing.
  AttnCase c{"repro", 300, 300, 4, 2, 64, true, 16, 16, 0, 0, 77};
  const AttnInputs in = MakeInputs(c, 99);
  const AttnOutputs first = RunAttention(Device::kCpu, c, in);
  for (int run = 0; run < 4; ++run) {
    const AttnOutputs again = RunAttention(Device::kCpu, c, in);
    ASSERT_EQ(0, std::memcmp(first.dq.data(), again.dq.data(), first.dq.size() * 4)) << "dq differs, run " << run;
    ASSERT_EQ(0, std::memcmp(first.dk.data(), again.dk.data(), first.dk.size() * 4)) << "dk differs, run " << run;
    ASSERT_EQ(0, std::memcmp(first.o.data(), again.o.data(), first.o.size() * 4)) << "o differs, run " << run;
  }
}

TEST(Attention, MergeOfTwoKeyHalvesEqualsAttentionOverAllKeys) {
  // Split keys in two blocks, as two ring steps would see them; merge must equal the full attention.
  const int64_t sq = 45, sk = 70, h = 2, d = 64, half = 31;
  for (Device dev : {Device::kRef, Device::kCpu}) {
    AttnCase full{"full", sq, sk, h, h, d, true, 16, 16, 60, 0, 25};
    AttnCase a = full, b = full;
    a.sk = half;
    b.sk = sk - half;
    b.k_offset = half;
    AttnInputs in = MakeInputs(full, 11);
    AttnInputs ia = in, ib = in;
    ia.k.assign(in.k.begin(), in.k.begin() + half * h * d);
    ia.v.assign(in.v.begin(), in.v.begin() + half * h * d);
    ib.k.assign(in.k.begin() + half * h * d, in.k.end());
    ib.v.assign(in.v.begin() + half * h * d, in.v.end());
    ia.dk0.resize(ia.k.size());
    ia.dv0.resize(ia.k.size());
    ib.dk0.resize(ib.k.size());
    ib.dv0.resize(ib.k.size());
    // Documents by global index: the key arrays carry their offset so segments line up.
    const AttnOutputs want = RunAttention(dev, full, in);
    AttnOutputs pa = RunAttention(dev, a, ia);
    const AttnOutputs pb = RunAttention(dev, b, ib);
    auto st = kernels::AttentionMerge(dev, DType::kF32, sq, h, d, kernels::Dense3(pa.o.data(), h, d),
                                      pa.lse.data(), kernels::Dense3(pb.o.data(), h, d), pb.lse.data());
    ASSERT_TRUE(st.ok()) << st.message();
    std::printf("[merge %s]\n", kernels::DeviceName(dev));
    ExpectClose("merged o", pa.o, want.o, 1e-10);
    ExpectClose("merged lse", pa.lse, want.lse, 1e-10);
  }
}

// Loss L = sum(o * g); checks dL/dq, dL/dk, dL/dv of the fp64 reference by central differences.
TEST(Attention, ReferenceGradientsMatchFiniteDifferencesInFp64) {
  AttnCase c{"fd", 6, 9, 4, 2, 8, true, 0, 0, 4, 0, 5};
  const AttnTokens tok = MakeTokens(c);
  auto q = Random<double>(c.sq * c.hq * c.d, 21), k = Random<double>(c.sk * c.hkv * c.d, 22),
       v = Random<double>(c.sk * c.hkv * c.d, 23), g = Random<double>(c.sq * c.hq * c.d, 24);
  std::vector<double> o(q.size()), lse(c.hq * c.sq), delta(c.hq * c.sq);
  std::vector<double> dq(q.size(), 0.0), dk(k.size(), 0.0), dv(v.size(), 0.0);
  AttentionParams p;
  p.sq = c.sq;
  p.sk = c.sk;
  p.hq = c.hq;
  p.hkv = c.hkv;
  p.d = c.d;
  p.causal = true;
  p.q = kernels::Dense3(q.data(), c.hq, c.d);
  p.k = kernels::Dense3(k.data(), c.hkv, c.d);
  p.v = kernels::Dense3(v.data(), c.hkv, c.d);
  p.o = kernels::Dense3(o.data(), c.hq, c.d);
  p.dout = kernels::Dense3(g.data(), c.hq, c.d);
  p.dq = kernels::Dense3(dq.data(), c.hq, c.d);
  p.dk = kernels::Dense3(dk.data(), c.hkv, c.d);
  p.dv = kernels::Dense3(dv.data(), c.hkv, c.d);
  p.q_tok.offset = c.q_offset;
  p.q_tok.segment = tok.qseg.data();
  p.k_tok.segment = tok.kseg.data();
  auto loss = [&]() {
    kernels::ref::AttentionForward<double>(p, lse.data());
    double l = 0;
    for (size_t i = 0; i < o.size(); ++i) l += o[i] * g[i];
    return l;
  };
  loss();
  kernels::ref::AttentionBackwardPrep<double>(p, delta.data());
  kernels::ref::AttentionBackward<double, double>(p, lse.data(), delta.data());
  const double eps = 1e-6;
  for (auto [name, x, grad] : {std::tuple{"dq", &q, &dq}, {"dk", &k, &dk}, {"dv", &v, &dv}}) {
    std::vector<double> fd(x->size());
    for (size_t i = 0; i < x->size(); ++i) {
      const double keep = (*x)[i];
      (*x)[i] = keep + eps;
      const double lp = loss();
      (*x)[i] = keep - eps;
      const double lm = loss();
      (*x)[i] = keep;
      fd[i] = (lp - lm) / (2 * eps);
    }
    ExpectClose(std::string("fd ") + name, *grad, fd, 1e-12);
  }
}

TEST(Attention, BadArgumentsAreRejectedWithTheArgumentNamed) {
  std::vector<float> buf(4096, 1.f);
  AttentionParams good;
  good.device = Device::kCpu;
  good.sq = good.sk = 4;
  good.hq = 2;
  good.hkv = 1;
  good.d = 8;
  good.q = kernels::Dense3(buf.data(), 2, 8);
  good.k = good.v = kernels::Dense3(buf.data(), 1, 8);
  good.o = kernels::Dense3(buf.data() + 1024, 2, 8);
  good.lse = buf.data() + 2048;
  ASSERT_TRUE(kernels::ValidateAttention(good, false).ok());
  struct Bad {
    const char* field;
    std::function<void(AttentionParams&)> change;
  };
  const std::vector<Bad> bads = {
      {"hkv", [](AttentionParams& p) { p.hkv = 3; }},
      {"hq", [](AttentionParams& p) { p.hq = 0; }},
      {"sq", [](AttentionParams& p) { p.sq = -1; }},
      {"d", [](AttentionParams& p) { p.d = 0; }},
      {"q", [](AttentionParams& p) { p.q.data = nullptr; }},
      {"k", [](AttentionParams& p) { p.k.stride_s = 4; }},  // rows overlap
      {"lse", [](AttentionParams& p) { p.lse = nullptr; }},
      {"block_q", [](AttentionParams& p) { p.block_q = -2; }},
      {"block_k", [](AttentionParams& p) { p.block_k = 100000; }},
      {"dtype", [](AttentionParams& p) { p.dtype = DType::kF16; }},
      {"o_dtype", [](AttentionParams& p) { p.o_dtype = DType::kBF16; }},  // the cpu writes o in f32
      {"scale", [](AttentionParams& p) { p.scale = std::numeric_limits<float>::quiet_NaN(); }},
  };
  for (const auto& b : bads) {
    AttentionParams p = good;
    b.change(p);
    const auto st = kernels::AttentionForward(p);
    ASSERT_FALSE(st.ok()) << b.field;
    EXPECT_EQ(st.message().rfind(b.field, 0), 0u) << "message should start with the field: " << st.message();
  }
  AttentionParams p = good;  // backward needs its buffers
  const auto st = kernels::AttentionBackward(p);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("dout"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace rw::test
