// Ring attention over the in-process transport equals the single-device kernels, for every ring size,
// layout, mask and packing; and is bitwise reproducible for a fixed ring size.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "kernels/attention.h"
#include "ring_fixture.h"
#include "ring_harness.h"
#include "runtime/layout.h"
#include "runtime/ring_attention.h"

namespace rw::runtime {
namespace {

using test::RunRanks;
using namespace test;

Result Ring(const Global& G, bool causal, LayoutKind kind, int R, std::vector<RingStats>* stats = nullptr) {
  Layout lay;
  EXPECT_TRUE(Layout::Make(kind, G.L, R, &lay).ok());
  Result res{std::vector<float>(G.q.size()), std::vector<float>(G.hq * G.L), std::vector<float>(G.q.size()),
             std::vector<float>(G.k.size()), std::vector<float>(G.v.size())};
  std::mutex mu;
  if (stats) stats->assign(R, {});
  auto fabric = InprocFabric::Create(R);
  auto st = RunRanks(fabric, [&](int r, Transport& t) -> Status {
    RankRun run;
    RW_RETURN_IF_ERROR(RunRank(t, G, lay, causal, 1, &run));
    const auto& idx = run.idx;
    const int64_t S = lay.shard_len();
    auto &o = run.o, &lse = run.lse, &dq = run.dq, &dk = run.dk, &dv = run.dv;
    RingStats& fs = run.fwd;
    std::lock_guard<std::mutex> lock(mu);
    Scatter(o, idx, G.hq * G.d, res.o);
    Scatter(dq, idx, G.hq * G.d, res.dq);
    Scatter(dk, idx, G.hkv * G.d, res.dk);
    Scatter(dv, idx, G.hkv * G.d, res.dv);
    for (int64_t h = 0; h < G.hq; ++h)
      for (int64_t i = 0; i < S; ++i) res.lse[h * G.L + idx[i]] = lse[h * S + i];
    if (stats) (*stats)[r] = fs;
    return Status::Ok();
  });
  for (int r = 0; r < R; ++r) EXPECT_TRUE(st[r].ok()) << "rank " << r << ": " << st[r].message();
  return res;
}

struct RingCase {
  int R;
  LayoutKind kind;
  bool causal, packed;
};

class RingAttentionCase : public ::testing::TestWithParam<RingCase> {};

TEST_P(RingAttentionCase, ForwardAndBackwardEqualTheSingleDeviceKernels) {
  const RingCase rc = GetParam();
  const int64_t L = 2 * rc.R * 13;  // 26 rows per rank: ragged against block size 8
  const Global G = MakeGlobal(L, rc.packed, 100 + rc.R);
  const Result want = SingleDevice(G, rc.causal);
  const Result got = Ring(G, rc.causal, rc.kind, rc.R);
  std::printf("  R=%d %s causal=%d packed=%d\n", rc.R, LayoutName(rc.kind), rc.causal, rc.packed);
  EXPECT_LE(RelErr("o", got.o, want.o), 1e-5);
  EXPECT_LE(RelErr("lse", got.lse, want.lse), 1e-5);
  EXPECT_LE(RelErr("dq", got.dq, want.dq), 1e-5);
  EXPECT_LE(RelErr("dk", got.dk, want.dk), 1e-5);
  EXPECT_LE(RelErr("dv", got.dv, want.dv), 1e-5);
}

std::vector<RingCase> AllCases() {
  std::vector<RingCase> out;
  for (int R : {1, 2, 3, 4, 8})
    for (LayoutKind k : {LayoutKind::kContiguous, LayoutKind::kZigzag, LayoutKind::kStriped})
      for (bool causal : {true, false})
        for (bool packed : {false, true}) out.push_back({R, k, causal, packed});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Rings, RingAttentionCase, ::testing::ValuesIn(AllCases()), [](const auto& info) {
  const RingCase& c = info.param;
  return "R" + std::to_string(c.R) + "_" + LayoutName(c.kind) + (c.causal ? "_causal" : "_full") +
         (c.packed ? "_packed" : "");
});

TEST(RingAttention, SameRingSizeGivesBitwiseIdenticalGradients) {
  const Global G = MakeGlobal(64, true, 5);
  const Result a = Ring(G, true, LayoutKind::kZigzag, 4), b = Ring(G, true, LayoutKind::kZigzag, 4);
  EXPECT_EQ(0, std::memcmp(a.o.data(), b.o.data(), a.o.size() * 4));
  EXPECT_EQ(0, std::memcmp(a.dq.data(), b.dq.data(), a.dq.size() * 4));
  EXPECT_EQ(0, std::memcmp(a.dk.data(), b.dk.data(), a.dk.size() * 4));
  EXPECT_EQ(0, std::memcmp(a.dv.data(), b.dv.data(), a.dv.size() * 4));
}

TEST(RingAttention, CausalContiguousRingSkipsTheBlocksTheMaskEmpties) {
  // Rank r sees blocks of ranks <= r only: R(R+1)/2 computed, R(R-1)/2 skipped.
  const Global G = MakeGlobal(64, false, 6);
  std::vector<RingStats> stats;
  Ring(G, true, LayoutKind::kContiguous, 4, &stats);
  int computed = 0, skipped = 0;
  for (const auto& s : stats) {
    computed += s.blocks_computed;
    skipped += s.blocks_skipped;
  }
  EXPECT_EQ(computed, 10);
  EXPECT_EQ(skipped, 6);
}

}  // namespace
}  // namespace rw::runtime
