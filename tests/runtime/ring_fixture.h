// Data shared by the ring tests and the multi-process peer: a global problem made from a seed, the
// single-device answer, and the gather/scatter between global order and a rank's local order.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/attention.h"
#include "runtime/layout.h"
#include "runtime/ring_attention.h"

namespace rw::runtime::test {

struct Global {
  int64_t L, hq, hkv, d;
  std::vector<float> q, k, v, dout;
  std::vector<int32_t> seg;  // empty: one document
};

inline std::vector<float> Rand(size_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

inline Global MakeGlobal(int64_t L, bool packed, uint64_t seed) {
  Global G;
  G.L = L;
  G.hq = 4;
  G.hkv = 2;
  G.d = 16;
  G.q = Rand(L * G.hq * G.d, seed);
  G.k = Rand(L * G.hkv * G.d, seed + 1);
  G.v = Rand(L * G.hkv * G.d, seed + 2);
  G.dout = Rand(L * G.hq * G.d, seed + 3);
  if (packed) {  // documents of 3..20 tokens, the last few tokens padding
    std::mt19937 g(seed);
    int32_t doc = 0;
    for (int64_t i = 0; i < L;) {
      const int64_t len = 3 + g() % 18;
      for (int64_t j = 0; j < len && i < L; ++j, ++i) G.seg.push_back(doc);
      ++doc;
    }
    for (int64_t i = L - 3; i < L; ++i) G.seg[i] = -1;
  }
  return G;
}

struct Result {
  std::vector<float> o, lse, dq, dk, dv;  // global order (lse: (H, L))
};

// Every input rounded to bf16 (so a bf16 run and an fp32/fp64 reference see the same values).
inline Global RoundedToBf16(Global G) {
  for (auto* x : {&G.q, &G.k, &G.v, &G.dout})
    for (auto& v : *x) v = kernels::ToFloat(kernels::ToBf16(v));
  return G;
}

inline std::vector<kernels::bf16> ToBf16(const std::vector<float>& x) {
  std::vector<kernels::bf16> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = kernels::ToBf16(x[i]);
  return out;
}

// The whole problem on one device: the fast CPU kernels, or (kRef) the scalar reference with fp64 sums.
inline Result SingleDevice(const Global& G, bool causal, kernels::Device device = kernels::Device::kCpu) {
  Result res{std::vector<float>(G.q.size()), std::vector<float>(G.hq * G.L), std::vector<float>(G.q.size(), 0.f),
             std::vector<float>(G.k.size(), 0.f), std::vector<float>(G.v.size(), 0.f)};
  std::vector<float> delta(G.hq * G.L);
  kernels::AttentionParams p;
  p.device = device;
  p.sq = p.sk = G.L;
  p.hq = G.hq;
  p.hkv = G.hkv;
  p.d = G.d;
  p.causal = causal;
  p.block_q = p.block_k = 8;
  p.q = kernels::Dense3(G.q.data(), G.hq, G.d);
  p.k = kernels::Dense3(G.k.data(), G.hkv, G.d);
  p.v = kernels::Dense3(G.v.data(), G.hkv, G.d);
  p.o = kernels::Dense3(res.o.data(), G.hq, G.d);
  p.lse = res.lse.data();
  if (!G.seg.empty()) p.q_tok.segment = p.k_tok.segment = G.seg.data();
  p.dout = kernels::Dense3(G.dout.data(), G.hq, G.d);
  p.delta = delta.data();
  p.dq = kernels::Dense3(res.dq.data(), G.hq, G.d);
  p.dk = kernels::Dense3(res.dk.data(), G.hkv, G.d);
  p.dv = kernels::Dense3(res.dv.data(), G.hkv, G.d);
  RW_CHECK(kernels::AttentionForward(p).ok());
  RW_CHECK(kernels::AttentionBackwardPrep(p).ok());
  RW_CHECK(kernels::AttentionBackward(p).ok());
  return res;
}

// Rows of a (L, H, D) tensor gathered into a rank's local order, and scattered back.
inline std::vector<float> Gather(const std::vector<float>& x, const std::vector<int64_t>& idx, int64_t width) {
  std::vector<float> out(idx.size() * width);
  for (size_t i = 0; i < idx.size(); ++i) std::memcpy(&out[i * width], &x[idx[i] * width], width * 4);
  return out;
}
inline void Scatter(const std::vector<float>& x, const std::vector<int64_t>& idx, int64_t width, std::vector<float>& out) {
  for (size_t i = 0; i < idx.size(); ++i) std::memcpy(&out[idx[i] * width], &x[i * width], width * 4);
}

// One rank's share of the global problem, run through ring attention forward and backward (blocks of 8,
// so a ragged shard spans several blocks).
struct RankRun {
  std::vector<int64_t> idx;
  std::vector<float> o, lse, dq, dk, dv;
  RingStats fwd, bwd;
};

// dtype bf16: q, k, v and dout go to the ring in bf16 (the inputs should be bf16 values already).
inline Status RunRank(Transport& t, const Global& G, const Layout& lay, bool causal, uint64_t job, RankRun* out,
                      kernels::DType dtype = kernels::DType::kF32) {
  const int r = t.rank();
  out->idx = lay.GlobalIndices(r);
  const auto& idx = out->idx;
  const int64_t S = lay.shard_len();
  auto q = Gather(G.q, idx, G.hq * G.d), k = Gather(G.k, idx, G.hkv * G.d), v = Gather(G.v, idx, G.hkv * G.d),
       g = Gather(G.dout, idx, G.hq * G.d);
  std::vector<int32_t> seg;
  for (int64_t i : idx)
    if (!G.seg.empty()) seg.push_back(G.seg[i]);
  RingAttentionConfig c;
  c.s = S;
  c.hq = G.hq;
  c.hkv = G.hkv;
  c.d = G.d;
  c.causal = causal;
  c.block_q = c.block_k = 8;
  c.tag.job = job;
  c.dtype = dtype;
  const bool narrow = dtype == kernels::DType::kBF16;
  const auto qb = narrow ? ToBf16(q) : std::vector<kernels::bf16>{}, kb = narrow ? ToBf16(k) : qb,
             vb = narrow ? ToBf16(v) : qb, gb = narrow ? ToBf16(g) : qb;
  RankQkv sh{q.data(), k.data(), v.data(), idx.data(), seg.empty() ? nullptr : seg.data()};
  if (narrow) sh = RankQkv{qb.data(), kb.data(), vb.data(), idx.data(), seg.empty() ? nullptr : seg.data()};
  out->o.resize(q.size());
  out->lse.resize(G.hq * S);
  out->dq.resize(q.size());
  out->dk.resize(k.size());
  out->dv.resize(v.size());
  RW_RETURN_IF_ERROR(RingAttentionForward(t, c, sh, out->o.data(), out->lse.data(), &out->fwd));
  return RingAttentionBackward(t, c, sh, out->o.data(), out->lse.data(), narrow ? static_cast<const void*>(gb.data())
                                                                                : g.data(),
                               out->dq.data(), out->dk.data(),
                               out->dv.data(), &out->bwd);
}

// ||got - want|| / ||want||, printing max abs diff and NMSE; infinities must match exactly.
inline double RelErr(const char* what, const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0, max_abs = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(want[i]) || !std::isfinite(got[i])) {
      EXPECT_EQ(got[i], want[i]) << what << " at " << i;
      continue;
    }
    num += double(got[i] - want[i]) * (got[i] - want[i]);
    den += double(want[i]) * want[i];
    max_abs = std::max(max_abs, double(std::fabs(got[i] - want[i])));
  }
  std::printf("    %-4s max_abs_diff=%.3e nmse=%.3e\n", what, max_abs, den > 0 ? num / den : num);
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace rw::runtime::test
