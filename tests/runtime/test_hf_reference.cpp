// Our LLaMA against an independent implementation: transformers' LlamaForCausalLM in PyTorch, float64,
// on a tiny random model (fixture made by tests/fixtures/make_hf_llama_fixture.py). Same weights (loaded
// from its safetensors and config.json), same tokens: the loss and every parameter's gradient agree, on
// one device and on rings of 2 and 4.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "ring_harness.h"
#include "runtime/checkpoint.h"
#include "runtime/layout.h"
#include "runtime/safetensors.h"

namespace rw::runtime {
namespace {

using test::RunRanks;

const std::string kDir = RW_FIXTURES "/hf_llama_tiny";

TEST(HfReference, LossAndGradientsMatchTransformersLlamaInFloat64) {
  ModelConfig c;
  auto st = ReadHfConfig(kDir + "/config.json", &c);
  ASSERT_TRUE(st.ok()) << st.message();
  const ParamTable table(c);
  std::vector<float> params(table.total());
  st = LoadWeights(kDir, table, params.data());
  ASSERT_TRUE(st.ok()) << st.message();
  std::ifstream f(kDir + "/case.json");
  const auto kase = nlohmann::json::parse(f);
  const auto tokens = kase["tokens"].get<std::vector<int32_t>>();
  const double want_loss = kase["loss"].get<double>();
  std::map<std::string, LoadedTensor> want_grads;
  ASSERT_TRUE(ReadSafetensors(kDir + "/grads.safetensors", &want_grads).ok());
  const int64_t L = int64_t(tokens.size());

  for (int R : {1, 2, 4}) {
    for (LayoutKind kind : {LayoutKind::kContiguous, LayoutKind::kZigzag}) {
      if (R == 1 && kind == LayoutKind::kZigzag) continue;
      Layout lay;
      ASSERT_TRUE(Layout::Make(kind, L, R, &lay).ok());
      std::vector<std::vector<float>> grads(R, std::vector<float>(table.total(), 0.f));
      std::vector<double> loss(R, 0.0);
      auto fabric = InprocFabric::Create(R);
      auto res = RunRanks(fabric, [&](int r, Transport& t) -> Status {
        RankBatch b;
        for (int64_t g : lay.GlobalIndices(r)) {
          b.index.push_back(g);
          b.tokens.push_back(tokens[g]);
          b.targets.push_back(g + 1 < L ? tokens[g + 1] : -1);
          b.weights.push_back(g + 1 < L ? 1.f : 0.f);
          b.positions.push_back(g);
          b.segments.push_back(0);
        }
        RW_RETURN_IF_ERROR(ForwardBackward(t, c, table, ModelExec{}, params.data(), b, float(1.0 / (L - 1)),
                                           grads[r].data(), &loss[r]));
        return t.AllReduceSum(grads[r].data(), grads[r].size(), MsgTag{1, 0, 0, 999, 0});
      });
      for (auto& s : res) ASSERT_TRUE(s.ok()) << s.message();
      double total = 0;
      for (double x : loss) total += x;
      const double got_loss = total / double(L - 1);
      double num = 0, den = 0, worst = 0;
      std::string worst_name;
      for (const auto& p : table.tensors()) {
        const auto& w = want_grads.at(p.name);
        ASSERT_EQ(w.data.size(), p.numel) << p.name;
        double tn = 0, td = 0;
        for (size_t i = 0; i < p.numel; ++i) {
          const double d = double(grads[0][p.offset + i]) - w.data[i];
          tn += d * d;
          td += double(w.data[i]) * w.data[i];
        }
        num += tn;
        den += td;
        const double rel = std::sqrt(tn / td);
        if (rel > worst) worst = rel, worst_name = p.name;
      }
      std::printf("  R=%d %-10s loss ours %.9f torch %.9f (rel %.1e); grad rel err %.2e, worst tensor %s %.2e\n", R,
                  LayoutName(kind), got_loss, want_loss, std::fabs(got_loss - want_loss) / want_loss,
                  std::sqrt(num / den), worst_name.c_str(), worst);
      EXPECT_NEAR(got_loss, want_loss, 1e-5 * want_loss);
      EXPECT_LE(std::sqrt(num / den), 1e-4);
      EXPECT_LE(worst, 1e-3) << worst_name;
    }
  }
}

}  // namespace
}  // namespace rw::runtime
