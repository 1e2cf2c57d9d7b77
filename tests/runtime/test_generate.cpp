// Decoding with the key/value cache agrees with the ring model: teacher-forced log-probabilities of a
// sequence, summed, equal the cross-entropy the ring forward computes for it; sampling respects top-k.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "ring_harness.h"
#include "runtime/generate.h"
#include "runtime/needle.h"
#include "runtime/ring_decode.h"
#include "runtime/layout.h"

namespace rw::runtime {
namespace {

// Ring inference (prefill over the ring, KV cache sharded across ranks, partial attention merged around the
// ring) against the single-device cached decoder: a ragged prompt (not a multiple of the layout's unit) on
// rings of 1..4 in every layout, then 6 decode steps; logits agree to fp32 rounding on every rank. The
// reference decoder runs on the ref backend (the scalar oracle), the rings on cpu and on ref: the decoders
// run on whatever device they are given.
TEST(Generate, RingDecodingMatchesTheSingleDeviceDecoder) {
  ModelConfig c = test::SmallModel(37, 32, 40, 2, 4, 2);
  c.rope_theta = 5000;
  const ParamTable tb(c);
  const std::vector<float> p = test::ScaledInit(c, 31, 4.f);
  std::vector<int32_t> prompt;
  for (int i = 0; i < 29; ++i) prompt.push_back(int32_t((i * 11 + 5) % c.vocab_size));
  const std::vector<int32_t> feed = {3, 17, 29, 1, 8, 36};
  // The reference: one device, one token at a time.
  Decoder ref(c, tb, p.data(), kernels::Exec{kernels::Device::kRef, 1});
  std::vector<std::vector<float>> want;
  std::vector<float> logits;
  for (int32_t tok : prompt) ASSERT_TRUE(ref.Step(tok, &logits).ok());
  want.push_back(logits);
  for (int32_t tok : feed) {
    ASSERT_TRUE(ref.Step(tok, &logits).ok());
    want.push_back(logits);
  }
  for (kernels::Device dev : {kernels::Device::kCpu, kernels::Device::kRef})
  for (int R : {1, 2, 3, 4})
    for (LayoutKind kind : {LayoutKind::kContiguous, LayoutKind::kZigzag, LayoutKind::kStriped}) {
      std::vector<std::vector<std::vector<float>>> got(R);
      std::vector<int64_t> rows(R);
      auto fabric = InprocFabric::Create(R);
      auto st = test::RunRanks(fabric, [&](int r, Transport& t) -> Status {
        RingDecoder dec(t, c, tb, p.data(), kernels::Exec{dev, 1}, 7);
        std::vector<float> lg;
        RW_RETURN_IF_ERROR(dec.Prefill(prompt, kind, &lg));
        rows[r] = dec.cache_rows();
        got[r].push_back(lg);
        for (int32_t tok : feed) {
          RW_RETURN_IF_ERROR(dec.Step(tok, &lg));
          got[r].push_back(lg);
        }
        return Status::Ok();
      });
      for (auto& s : st) ASSERT_TRUE(s.ok()) << s.message();
      double worst = 0, err = 0, norm = 0;
      for (int r = 0; r < R; ++r)
        for (size_t i = 0; i < want.size(); ++i)
          for (size_t j = 0; j < want[i].size(); ++j) {
            const double d = double(got[r][i][j]) - double(want[i][j]);
            worst = std::max(worst, std::fabs(d));
            err += d * d;
            norm += double(want[i][j]) * double(want[i][j]);
          }
      for (int r = 1; r < R; ++r) EXPECT_EQ(got[r], got[0]) << "ranks disagree, R=" << R;
      std::printf("  %s R=%d %-10s cache rows per rank %lld..%lld: max abs diff %.2e, NMSE %.2e\n", kernels::DeviceName(dev), R,
                  LayoutName(kind), (long long)*std::min_element(rows.begin(), rows.end()),
                  (long long)*std::max_element(rows.begin(), rows.end()), worst, err / norm);
      EXPECT_LT(err / norm, 1e-10) << "R=" << R;
      EXPECT_LT(worst, 1e-4) << "R=" << R;
    }
}

// Bad needle options are named (the evaluation itself runs in tests/cli/train_smoke.sh).
TEST(Generate, NeedleOptionsAreCheckedAndNamed) {
  NeedleConfig bad;
  bad.lengths = {128};
  bad.depths = {1.5};
  EXPECT_NE(bad.Validate().message().find("--depths: 1.5"), std::string::npos);
  bad.depths = {0.5};
  bad.lengths = {};
  EXPECT_NE(bad.Validate().message().find("--lengths"), std::string::npos);
}

// The cached decoder's logits against the ring forward's loss on the same sequence; also for a model with
// a vision vocabulary, where each id's log-probability is taken within its own vocabulary's logits (the
// decoder gives every id's, text then vision).
TEST(Generate, CachedDecodingMatchesTheRingForwardLoss) {
  for (const int64_t vision : {0, 9}) {
    ModelConfig c = test::SmallModel(41, 32, 48, ModelConfig{}.num_hidden_layers, 4, 2);
    c.vision_vocab_size = vision;
    const ParamTable tb(c);
    const std::vector<float> p = test::ScaledInit(c, 12, 5.f);
    std::vector<int32_t> seq;
    for (int i = 0; i < 24; ++i) seq.push_back(int32_t((i * 17 + 3) % c.total_vocab()));
    // Decoder: sum of -log p(next) over the sequence.
    Decoder dec(c, tb, p.data(), kernels::Exec{kernels::Device::kCpu, 1});
    std::vector<float> logits;
    double nll = 0;
    for (size_t i = 0; i + 1 < seq.size(); ++i) {
      ASSERT_TRUE(dec.Step(seq[i], &logits).ok());
      ASSERT_EQ(int64_t(logits.size()), c.total_vocab());
      const bool v = seq[i + 1] >= c.vocab_size;
      const auto lo = logits.begin() + (v ? c.vocab_size : 0), hi = v ? logits.end() : logits.begin() + c.vocab_size;
      double m = *std::max_element(lo, hi), z = 0;
      for (auto it = lo; it != hi; ++it) z += std::exp(double(*it) - m);
      nll += (m + std::log(z)) - logits[seq[i + 1]];
    }
    // Ring forward on 2 devices: the same sum.
    Layout lay;
    ASSERT_TRUE(Layout::Make(LayoutKind::kZigzag, 24, 2, &lay).ok());
    std::vector<double> part(2, 0.0);
    auto fabric = InprocFabric::Create(2);
    auto st = test::RunRanks(fabric, [&](int r, Transport& t) {
      RankBatch b;
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
    std::printf("  vision vocabulary %lld: decoder NLL %.7f, ring forward loss sum %.7f, rel diff %.2e\n",
                (long long)vision, nll, ring, std::fabs(nll - ring) / ring);
    EXPECT_NEAR(nll, ring, 1e-5 * ring);
  }
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
