// Decoding with the key/value cache agrees with the ring model: teacher-forced log-probabilities of a
// sequence, summed, equal the cross-entropy the ring forward computes for it; sampling respects top-k.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "ring_harness.h"
#include "runtime/generate.h"
#include "runtime/layout.h"

namespace rw::runtime {
namespace {

TEST(Generate, CachedDecodingMatchesTheRingForwardLoss) {
  ModelConfig c;
  c.vocab_size = 41;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  const ParamTable tb(c);
  std::vector<float> p(tb.total());
  InitParameters(c, tb, 12, p.data());
  for (auto& x : p) x *= 5.f;  // sharper distributions than the 0.02 init
  std::vector<int32_t> seq;
  for (int i = 0; i < 24; ++i) seq.push_back(int32_t((i * 17 + 3) % c.vocab_size));
  // Decoder: sum of -log p(next) over the sequence.
  Decoder dec(c, tb, p.data());
  std::vector<float> logits;
  double nll = 0;
  for (size_t i = 0; i + 1 < seq.size(); ++i) {
    ASSERT_TRUE(dec.Step(seq[i], &logits).ok());
    double m = *std::max_element(logits.begin(), logits.end()), z = 0;
    for (float l : logits) z += std::exp(double(l) - m);
    nll += (m + std::log(z)) - logits[seq[i + 1]];
  }
  // Ring forward on 2 devices: the same sum.
  Layout lay;
  ASSERT_TRUE(Layout::Make(LayoutKind::kZigzag, 24, 2, &lay).ok());
  std::vector<double> part(2, 0.0);
  auto fabric = InprocFabric::Create(2);
  auto st = test::RunRanks(fabric, [&](int r, Transport& t) {
    ShardBatch b;
    for (int64_t g : lay.GlobalIndices(r)) {
      b.index.push_back(g);
      b.tokens.push_back(seq[g]);
      b.targets.push_back(g + 1 < 24 ? seq[g + 1] : -1);
      b.weights.push_back(g + 1 < 24 ? 1.f : 0.f);
      b.positions.push_back(g);
      b.segments.push_back(0);
    }
    return Forward(t, c, tb, ModelExec{}, p.data(), b, &part[r]);
  });
  for (auto& s : st) ASSERT_TRUE(s.ok()) << s.message();
  const double ring = part[0] + part[1];
  std::printf("  decoder NLL %.7f, ring forward loss sum %.7f, rel diff %.2e\n", nll, ring, std::fabs(nll - ring) / ring);
  EXPECT_NEAR(nll, ring, 1e-5 * ring);
}

TEST(Generate, SamplingRespectsTopKAndGreedyIsArgmax) {
  std::vector<float> logits = {0.1f, 2.0f, -1.f, 1.9f, 0.5f};
  SamplingConfig greedy;
  uint64_t rng = 3;
  EXPECT_EQ(Sample(logits, greedy, &rng), 1);
  SamplingConfig s;
  s.temperature = 1.0;
  s.top_k = 2;
  std::set<int32_t> seen;
  for (int i = 0; i < 200; ++i) seen.insert(Sample(logits, s, &rng));
  EXPECT_EQ(seen, (std::set<int32_t>{1, 3}));
  s.top_k = 0;
  s.top_p = 1e-6;  // only the most likely token is left
  for (int i = 0; i < 20; ++i) EXPECT_EQ(Sample(logits, s, &rng), 1);
  SamplingConfig bad;
  bad.top_p = 0;
  EXPECT_FALSE(bad.Validate().ok());
}

}  // namespace
}  // namespace rw::runtime
