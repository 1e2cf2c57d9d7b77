// The LLaMA model over the ring: gradients against finite differences; one step equal for every ring size
// and layout; bitwise reproducible for a fixed ring; documents never see each other.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <tuple>

#include "ring_harness.h"
#include "runtime/layout.h"
#include "kernels/ref/attention_ref.h"
#include "kernels/ref/layers_ref.h"
#include "runtime/memory_plan.h"
#include "runtime/model.h"

namespace rw::runtime {
namespace {

using test::RunRanks;

ModelConfig Tiny() {
  ModelConfig c = test::SmallModel(13, 16, 24, 2, 4, 2);
  c.rope_theta = 500.0;
  return c;
}

struct GlobalSeq {
  std::vector<int32_t> tokens, doc;  // length L
};

// Random tokens in documents of 3..9 tokens; the last two tokens are padding.
GlobalSeq MakeSeq(int64_t L, int64_t vocab, uint64_t seed) {
  GlobalSeq g;
  std::mt19937 gen{uint32_t(seed)};
  int32_t doc = 0;
  while (int64_t(g.tokens.size()) < L) {
    const int len = 3 + int(gen() % 7);
    for (int j = 0; j < len && int64_t(g.tokens.size()) < L; ++j) {
      g.tokens.push_back(int32_t(gen() % vocab));
      g.doc.push_back(doc);
    }
    ++doc;
  }
  g.doc[L - 1] = g.doc[L - 2] = -1;
  return g;
}

RankBatch ShardOf(const GlobalSeq& g, const Layout& lay, int rank) {
  RankBatch b;
  const int64_t L = int64_t(g.tokens.size());
  for (int64_t i : lay.GlobalIndices(rank)) {
    b.index.push_back(i);
    b.tokens.push_back(g.tokens[i]);
    b.segments.push_back(g.doc[i]);
    const bool has_next = i + 1 < L && g.doc[i] >= 0 && g.doc[i + 1] == g.doc[i];
    b.targets.push_back(has_next ? g.tokens[i + 1] : -1);
    b.weights.push_back(has_next ? 1.f : 0.f);
    int64_t start = i;
    while (start > 0 && g.doc[start - 1] == g.doc[i]) --start;
    b.positions.push_back(i - start);
  }
  return b;
}

float WeightSum(const GlobalSeq& g) {
  float n = 0;
  for (size_t i = 0; i + 1 < g.tokens.size(); ++i) n += (g.doc[i] >= 0 && g.doc[i + 1] == g.doc[i]) ? 1.f : 0.f;
  return n;
}

struct StepOut {
  double loss = 0;
  std::vector<float> grads;
};

// One step's loss and ring-summed gradients, as rank 0 sees them.
// device: the rank's backend; workspaces (one per rank, may be null): kept across calls by the caller.
StepOut Step(const ModelConfig& c, const std::vector<float>& params, const GlobalSeq& g, LayoutKind kind, int R,
             bool remat = false, kernels::Device device = kernels::Device::kCpu,
             std::vector<std::unique_ptr<ModelWorkspace>>* workspaces = nullptr) {
  const ParamTable tb(c);
  Layout lay;
  EXPECT_TRUE(Layout::Make(kind, int64_t(g.tokens.size()), R, &lay).ok());
  const float scale = 1.f / WeightSum(g);
  std::vector<StepOut> out(R);
  auto fabric = InprocFabric::Create(R);
  auto st = RunRanks(fabric, [&](int r, Transport& t) -> Status {
    out[r].grads.assign(tb.total(), 0.f);
    ModelExec mx;
    mx.tag.job = 1;
    mx.remat_layers = remat;
    mx.device = device;
    mx.workspace = workspaces ? (*workspaces)[size_t(r)].get() : nullptr;
    double loss = 0;
    RW_RETURN_IF_ERROR(ForwardBackward(t, c, tb, mx, params.data(), ShardOf(g, lay, r), scale, out[r].grads.data(), &loss));
    float l = float(loss);  // the loss sum travels as a float through the same all-reduce
    RW_RETURN_IF_ERROR(t.AllReduceSum(&l, 1, MsgTag{1, 0, 0, 1000, 0}));
    RW_RETURN_IF_ERROR(t.AllReduceSum(out[r].grads.data(), out[r].grads.size(), MsgTag{1, 0, 0, 1001, 0}));
    out[r].loss = double(l) * scale;
    return Status::Ok();
  });
  for (int r = 0; r < R; ++r) EXPECT_TRUE(st[r].ok()) << st[r].message();
  return out[0];
}

std::vector<float> InitParams(const ModelConfig& c, uint64_t seed) {
  const ParamTable tb(c);
  std::vector<float> p(tb.total());
  InitParameters(c, tb, seed, p.data());
  // Larger than HF's 0.02 so the tiny model's gradients are far from zero everywhere.
  std::mt19937_64 gen(seed + 1);
  std::normal_distribution<float> n(0.f, 0.3f);
  for (const auto& t : tb.tensors())
    if (t.shape.size() == 2)
      for (size_t i = 0; i < t.numel; ++i) p[t.offset + i] = n(gen);
  return p;
}

// The whole model's loss in fp64 on one device, written out from the scalar reference kernels (the spec):
// embeddings, per layer RMSNorm, q/k/v, RoPE, attention (causal within documents), o_proj, residual,
// RMSNorm, SwiGLU, residual; final norm, lm_head, weighted mean cross-entropy.
double Fp64Loss(const ModelConfig& c, const std::vector<double>& P, const GlobalSeq& g) {
  namespace ref = kernels::ref;
  const ParamTable tb(c);
  const int64_t S = int64_t(g.tokens.size()), E = c.hidden_size, F = c.intermediate_size, H = c.num_attention_heads,
                HKV = c.num_key_value_heads, D = c.head_dim(), V = c.vocab_size;
  Layout lay;
  EXPECT_TRUE(Layout::Make(LayoutKind::kContiguous, S, 1, &lay).ok());
  const RankBatch b = ShardOf(g, lay, 0);
  std::vector<double> x(S * E), h(S * E), rstd(S), q(S * H * D), k(S * HKV * D), v(S * HKV * D), attn(S * H * D),
      lse(H * S), o(S * E), w(S), loss(S);
  // An id reads its own vocabulary's table: text ids the embedding, vision ids (>= V) the vision embedding.
  for (int64_t i = 0; i < S; ++i) {
    const int32_t id = b.tokens[i];
    const size_t row = id < V ? tb.embed + size_t(id) * E : tb.vision_embed + size_t(id - V) * E;
    std::copy_n(P.begin() + row, E, x.begin() + i * E);
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const auto& L = tb.layers[l];
    ref::RmsNormForward<double>(S, E, x.data(), P.data() + L.in_norm, c.rms_norm_eps, h.data(), rstd.data());
    ref::LinearForward<double>(S, E, H * D, h.data(), P.data() + L.q, q.data());
    ref::LinearForward<double>(S, E, HKV * D, h.data(), P.data() + L.k, k.data());
    ref::LinearForward<double>(S, E, HKV * D, h.data(), P.data() + L.v, v.data());
    ref::Rope<double>(S, H, D, kernels::Dense3(q.data(), H, D), kernels::Dense3(q.data(), H, D), b.positions.data(),
                      c.rope_theta, false);
    ref::Rope<double>(S, HKV, D, kernels::Dense3(k.data(), HKV, D), kernels::Dense3(k.data(), HKV, D),
                      b.positions.data(), c.rope_theta, false);
    kernels::AttentionParams a;
    a.sq = a.sk = S;
    a.hq = H;
    a.hkv = HKV;
    a.d = D;
    a.causal = true;
    a.q_tok.segment = a.k_tok.segment = b.segments.data();
    a.q = kernels::Dense3(q.data(), H, D);
    a.k = kernels::Dense3(k.data(), HKV, D);
    a.v = kernels::Dense3(v.data(), HKV, D);
    a.o = kernels::Dense3(attn.data(), H, D);
    ref::AttentionForward<double>(a, lse.data());
    ref::LinearForward<double>(S, H * D, E, attn.data(), P.data() + L.o, o.data());
    for (int64_t i = 0; i < S * E; ++i) x[i] += o[i];
    ref::RmsNormForward<double>(S, E, x.data(), P.data() + L.post_norm, c.rms_norm_eps, h.data(), rstd.data());
    ref::FfnForward<double>(S, E, F, h.data(), P.data() + L.gate, P.data() + L.up, P.data() + L.down, o.data());
    for (int64_t i = 0; i < S * E; ++i) x[i] += o[i];
  }
  ref::RmsNormForward<double>(S, E, x.data(), P.data() + tb.final_norm, c.rms_norm_eps, h.data(), rstd.data());
  double wsum = 0;
  for (int64_t i = 0; i < S; ++i) wsum += w[i] = b.weights[i];
  if (c.vision_vocab_size == 0)
    return ref::CrossEntropyForward<double>(S, E, V, h.data(), P.data() + tb.lm_head, b.targets.data(), w.data(),
                                            loss.data()) / wsum;
  // Two vocabularies (LWM): each row's softmax over its target's vocabulary only, by its own head.
  double sum = 0;
  for (int64_t i = 0; i < S; ++i) {
    if (b.targets[i] < 0) continue;
    const bool vision = b.targets[i] >= V;
    const int32_t t = vision ? int32_t(b.targets[i] - V) : b.targets[i];
    sum += ref::CrossEntropyForward<double>(1, E, vision ? c.vision_vocab_size : V, h.data() + i * E,
                                            P.data() + (vision ? tb.vision_head : tb.lm_head), &t, &w[i], loss.data());
  }
  return sum / wsum;
}

// The ring's step against the fp64 whole model: the loss, and central finite differences (step 1e-5,
// truncation ~1e-10) of `per_tensor` random entries of every tensor against the ring's gradients.
void ExpectMatchesFp64(const ModelConfig& c, const std::vector<float>& params, const GlobalSeq& g, const StepOut& ours,
                       int per_tensor, uint32_t seed) {
  std::vector<double> P(params.begin(), params.end());
  const double loss64 = Fp64Loss(c, P, g);
  std::printf("  loss: ring fp32 %.9f, fp64 reference %.9f, rel diff %.2e\n", ours.loss, loss64,
              std::fabs(ours.loss - loss64) / loss64);
  EXPECT_NEAR(ours.loss, loss64, 1e-5 * loss64);
  const ParamTable tb(c);
  std::mt19937 gen(seed);
  double worst = 0, err2 = 0, ref2 = 0;
  int checked = 0;
  for (const auto& t : tb.tensors())
    for (int s = 0; s < per_tensor; ++s) {
      const size_t i = t.offset + gen() % t.numel;
      const double keep = P[i], step = 1e-5;
      P[i] = keep + step;
      const double lp = Fp64Loss(c, P, g);
      P[i] = keep - step;
      const double lm = Fp64Loss(c, P, g);
      P[i] = keep;
      const double fd = (lp - lm) / (2 * step), an = ours.grads[i];
      worst = std::max(worst, std::fabs(fd - an));
      err2 += (fd - an) * (fd - an);
      ref2 += fd * fd;
      ++checked;
      EXPECT_LE(std::fabs(fd - an), 1e-5 + 1e-4 * std::fabs(fd)) << t.name << "[" << i - t.offset << "] fd=" << fd
                                                                 << " ours=" << an;
    }
  std::printf("  %d entries: max abs diff %.2e, NMSE %.2e\n", checked, worst, err2 / ref2);
  EXPECT_LT(err2 / ref2, 1e-9);
}

// The ring's fp32 backward (R = 2, zigzag, packed documents) against central finite differences of the fp64
// whole-model loss: a sample of every tensor's entries, step 1e-5 (truncation ~1e-10).
TEST(Model, GradientsMatchFiniteDifferencesOfTheFp64WholeModel) {
  const ModelConfig c = Tiny();
  const GlobalSeq g = MakeSeq(24, c.vocab_size, 3);
  std::vector<float> params = InitParams(c, 7);
  const StepOut ours = Step(c, params, g, LayoutKind::kZigzag, 2);
  ExpectMatchesFp64(c, params, g, ours, 6, 11);
}

// LWM's two vocabularies (ModelConfig::vision_vocab_size): text ids and vision ids mixed in the documents,
// each read from its own table, each target scored by its own head over its own vocabulary. The ring's fp32
// step (R = 2, zigzag) against the fp64 whole model written that way, loss and finite differences of a
// sample of every tensor's entries (the vision table and head included); R = 1 and 4 give the same step.
TEST(Model, AVisionVocabularyIsASecondTableAndASoftmaxOfItsOwn) {
  ModelConfig c = Tiny();
  c.vision_vocab_size = 11;
  const GlobalSeq g = MakeSeq(24, c.total_vocab(), 5);
  int vision_targets = 0;
  for (size_t i = 0; i + 1 < g.tokens.size(); ++i) vision_targets += g.tokens[i + 1] >= c.vocab_size;
  ASSERT_GE(vision_targets, 5);
  const std::vector<float> params = InitParams(c, 17);
  const ParamTable tb(c);
  ASSERT_NE(tb.Find("model.vision_embed_tokens.weight"), nullptr);
  ASSERT_NE(tb.Find("vision_head.weight"), nullptr);
  EXPECT_EQ(tb.vision_embed, tb.embed + size_t(c.vocab_size * c.hidden_size));
  EXPECT_EQ(tb.vision_head, tb.lm_head + size_t(c.vocab_size * c.hidden_size));
  const StepOut ours = Step(c, params, g, LayoutKind::kZigzag, 2);
  ExpectMatchesFp64(c, params, g, ours, 5, 13);
  for (int R : {1, 4}) {
    const StepOut other = Step(c, params, g, LayoutKind::kContiguous, R);
    double num = 0, den = 0;
    for (size_t i = 0; i < other.grads.size(); ++i) {
      num += double(other.grads[i] - ours.grads[i]) * (other.grads[i] - ours.grads[i]);
      den += double(ours.grads[i]) * ours.grads[i];
    }
    std::printf("  R=%d: rel loss err %.2e, rel grad err %.2e\n", R, std::fabs(other.loss - ours.loss) / ours.loss,
                std::sqrt(num / den));
    EXPECT_LE(std::fabs(other.loss - ours.loss), 1e-5 * ours.loss);
    EXPECT_LE(std::sqrt(num / den), 1e-5);
  }
}

TEST(Model, OneStepGivesTheSameLossAndGradientsForEveryRingSizeAndLayout) {
  const ModelConfig c = Tiny();
  const GlobalSeq g = MakeSeq(48, c.vocab_size, 11);
  const std::vector<float> params = InitParams(c, 8);
  const StepOut one = Step(c, params, g, LayoutKind::kContiguous, 1);
  for (int R : {2, 4})
    for (LayoutKind kind : {LayoutKind::kContiguous, LayoutKind::kZigzag, LayoutKind::kStriped}) {
      const StepOut ring = Step(c, params, g, kind, R);
      double num = 0, den = 0;
      for (size_t i = 0; i < one.grads.size(); ++i) {
        num += double(ring.grads[i] - one.grads[i]) * (ring.grads[i] - one.grads[i]);
        den += double(one.grads[i]) * one.grads[i];
      }
      const double rel_grad = std::sqrt(num / den), rel_loss = std::fabs(ring.loss - one.loss) / one.loss;
      std::printf("  R=%d %-10s loss %.7f (R=1 %.7f) rel loss err %.2e, rel grad err %.2e\n", R, LayoutName(kind),
                  ring.loss, one.loss, rel_loss, rel_grad);
      EXPECT_LE(rel_loss, 1e-5);
      EXPECT_LE(rel_grad, 1e-5);
    }
}

TEST(Model, SameRingSizeAndInputsGiveBitwiseIdenticalGradients) {
  const ModelConfig c = Tiny();
  const GlobalSeq g = MakeSeq(48, c.vocab_size, 12);
  const std::vector<float> params = InitParams(c, 9);
  const StepOut a = Step(c, params, g, LayoutKind::kZigzag, 4), b = Step(c, params, g, LayoutKind::kZigzag, 4);
  EXPECT_EQ(0, std::memcmp(a.grads.data(), b.grads.data(), a.grads.size() * 4));
  EXPECT_EQ(a.loss, b.loss);
}

TEST(Model, LayerRematerializationGivesBitwiseTheSameGradients) {
  const ModelConfig c = Tiny();
  const GlobalSeq g = MakeSeq(48, c.vocab_size, 14);
  const std::vector<float> params = InitParams(c, 11);
  const StepOut keep = Step(c, params, g, LayoutKind::kZigzag, 2, false);
  const StepOut remat = Step(c, params, g, LayoutKind::kZigzag, 2, true);
  EXPECT_EQ(keep.loss, remat.loss);
  EXPECT_EQ(0, std::memcmp(keep.grads.data(), remat.grads.data(), keep.grads.size() * 4));
}

// Nothing in the model names a device: on the ref backend's table (scalar reference kernels) one step
// gives the cpu table's loss and gradients, on one device and on a ring of 2.
TEST(Model, TheRefBackendRunsTheModelAsTheCpuBackendDoes) {
  const ModelConfig c = Tiny();
  const GlobalSeq g = MakeSeq(40, c.vocab_size, 21);
  const std::vector<float> params = InitParams(c, 5);
  for (int R : {1, 2}) {
    const StepOut cpu = Step(c, params, g, LayoutKind::kZigzag, R, false, kernels::Device::kCpu);
    const StepOut ref = Step(c, params, g, LayoutKind::kZigzag, R, false, kernels::Device::kRef);
    double num = 0, den = 0, max_abs = 0;
    for (size_t i = 0; i < cpu.grads.size(); ++i) {
      const double e = double(ref.grads[i]) - cpu.grads[i];
      num += e * e;
      den += double(cpu.grads[i]) * cpu.grads[i];
      max_abs = std::max(max_abs, std::fabs(e));
    }
    std::printf("  R=%d: loss ref %.7f cpu %.7f; grads max abs diff %.2e, NMSE %.2e\n", R, ref.loss, cpu.loss, max_abs,
                num / den);
    EXPECT_NEAR(ref.loss, cpu.loss, 1e-5 * cpu.loss);
    EXPECT_LE(num / den, 1e-10);
  }
}

// A workspace kept across steps (what the trainer does) gives each step the bits of a fresh one, through
// a longer, a shorter and a longer sequence again (buffers grow and are reused; nothing stale leaks), with
// and without rematerialization.
TEST(Model, AWorkspaceKeptAcrossStepsGivesBitwiseTheSameGradients) {
  const ModelConfig c = Tiny();
  const std::vector<float> params = InitParams(c, 6);
  for (bool remat : {false, true}) {
    std::vector<std::unique_ptr<ModelWorkspace>> ws;
    for (int r = 0; r < 2; ++r) ws.push_back(std::make_unique<ModelWorkspace>());
    int64_t step = 0;
    for (int64_t L : {48, 24, 48, 40}) {
      const GlobalSeq g = MakeSeq(L, c.vocab_size, 30 + uint64_t(L));
      const StepOut kept = Step(c, params, g, LayoutKind::kZigzag, 2, remat, kernels::Device::kCpu, &ws);
      const StepOut fresh = Step(c, params, g, LayoutKind::kZigzag, 2, remat);
      EXPECT_EQ(kept.loss, fresh.loss) << "L " << L;
      EXPECT_EQ(0, std::memcmp(kept.grads.data(), fresh.grads.data(), kept.grads.size() * 4))
          << "step " << step << ", L " << L << (remat ? ", remat" : "");
      ++step;
    }
  }
}

// runtime/memory_plan.h predicts, from the shapes alone, every byte the model's workspace holds after a
// step: the kept activations, the step's buffers and the ring's. Checked on fresh workspaces at ragged
// shapes (odd head counts, rows not a power of two), both precisions, with and without remat, rings of 1-3.
TEST(Model, TheMemoryPlanPredictsEveryByteOfTheWorkspace) {
  const ModelConfig c = test::SmallModel(37, 24, 40, 3, 6, 2);  // head_dim 4, GQA 3:1
  const ParamTable tb(c);
  const std::vector<float> params = InitParams(c, 8);
  std::vector<kernels::bf16> compute(tb.total());
  ASSERT_TRUE(kernels::Cast(kernels::Exec{kernels::Device::kCpu, 1}, int64_t(tb.total()), params.data(),
                            compute.data()).ok());
  int checked = 0;
  for (bool bf16 : {false, true})
    for (bool remat : {false, true})
      for (auto [kind, R, L] : {std::tuple{LayoutKind::kContiguous, 1, 37}, std::tuple{LayoutKind::kZigzag, 2, 52},
                                std::tuple{LayoutKind::kContiguous, 3, 63}}) {
        const GlobalSeq g = MakeSeq(L, c.vocab_size, 40 + uint64_t(L));
        Layout lay;
        ASSERT_TRUE(Layout::Make(kind, L, R, &lay).ok());
        std::vector<std::unique_ptr<ModelWorkspace>> ws;
        for (int r = 0; r < R; ++r) ws.push_back(std::make_unique<ModelWorkspace>());
        auto fabric = InprocFabric::Create(R);
        auto st = RunRanks(fabric, [&](int r, Transport& t) -> Status {
          std::vector<float> grads(tb.total(), 0.f);
          ModelExec mx;
          mx.tag.job = 1;
          mx.remat_layers = remat;
          mx.workspace = ws[size_t(r)].get();
          mx.precision = bf16 ? kernels::DType::kBF16 : kernels::DType::kF32;
          mx.compute_params = bf16 ? compute.data() : nullptr;
          double loss = 0;
          return ForwardBackward(t, c, tb, mx, params.data(), ShardOf(g, lay, r), 0.01f, grads.data(), &loss);
        });
        for (int r = 0; r < R; ++r) ASSERT_TRUE(st[r].ok()) << st[r].message();
        const WorkspaceBytes want = ModelWorkspaceBytes(c, L / R, bf16, remat);
        for (int r = 0; r < R; ++r) {
          const ModelWorkspace::Held got = ws[size_t(r)]->Bytes();
          const std::string at = std::string(bf16 ? "bf16" : "fp32") + (remat ? " remat" : "") + " R=" +
                                 std::to_string(R) + " rank " + std::to_string(r);
          EXPECT_EQ(int64_t(got.activations), want.activations) << at;
          EXPECT_EQ(int64_t(got.workspace), want.workspace) << at;
          EXPECT_EQ(int64_t(got.ring), want.ring) << at;
          ++checked;
        }
      }
  std::printf("  workspace bytes as planned on %d ranks (2 precisions x remat on/off x rings of 1, 2, 3)\n", checked);
}

TEST(Model, ATokenNeverAttendsAcrossDocuments) {
  // Only document 0's predictions carry weight; changing every token of the other documents must leave
  // the loss bit for bit the same.
  const ModelConfig c = Tiny();
  GlobalSeq g = MakeSeq(32, c.vocab_size, 13);
  const std::vector<float> params = InitParams(c, 10);
  const ParamTable tb(c);
  auto loss_of_doc0 = [&](const GlobalSeq& s) {
    Layout lay;
    EXPECT_TRUE(Layout::Make(LayoutKind::kZigzag, 32, 2, &lay).ok());
    std::vector<double> loss(2, 0.0);
    auto fabric = InprocFabric::Create(2);
    auto st = RunRanks(fabric, [&](int r, Transport& t) -> Status {
      RankBatch b = ShardOf(s, lay, r);
      for (size_t i = 0; i < b.weights.size(); ++i)
        if (b.segments[i] != 0) b.weights[i] = 0.f;
      ModelExec mx;
      return Forward(t, c, tb, mx, params.data(), b, &loss[r]);
    });
    for (auto& x : st) EXPECT_TRUE(x.ok()) << x.message();
    return loss[0] + loss[1];
  };
  const double before = loss_of_doc0(g);
  for (size_t i = 0; i < g.tokens.size(); ++i)
    if (g.doc[i] != 0) g.tokens[i] = int32_t((g.tokens[i] + 5) % c.vocab_size);
  const double after = loss_of_doc0(g);
  std::printf("  doc-0 loss before %.9f after changing the other documents %.9f\n", before, after);
  EXPECT_EQ(before, after);
  EXPECT_GT(before, 0.0);
}

TEST(Model, BadConfigsAndBatchesNameTheField) {
  ModelConfig c = Tiny();
  c.num_key_value_heads = 3;
  auto st = c.Validate();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.message().rfind("model.num_key_value_heads", 0), 0u) << st.message();
  c = Tiny();
  const ParamTable tb(c);
  std::vector<float> p(tb.total(), 0.01f), gr(tb.total());
  RankBatch b;
  b.tokens = {1, 99};
  b.targets = {2, -1};
  b.weights = {1, 0};
  b.positions = {0, 1};
  b.segments = {0, 0};
  b.index = {0, 1};
  auto fabric = InprocFabric::Create(1);
  double loss = 0;
  st = ForwardBackward(*fabric->Endpoint(0), c, tb, ModelExec{}, p.data(), b, 1.f, gr.data(), &loss);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("batch.tokens[1]"), std::string::npos) << st.message();
}

}  // namespace
// A shard's initialization (InitParameterRanges) makes exactly the whole vector's values of its ranges:
// ragged ranges cutting tensors anywhere, an empty one, and the whole.
TEST(Model, InitializingRangesGivesTheWholeVectorsValuesOfThem) {
  const ModelConfig c = test::SmallModel(61, 24, 40, 2, 4, 2);
  const ParamTable t(c);
  std::vector<float> whole(t.total());
  InitParameters(c, t, 7, whole.data());
  const size_t n = t.total();
  for (const std::vector<ParamTable::Range>& ranges :
       {std::vector<ParamTable::Range>{{0, n}}, std::vector<ParamTable::Range>{{3, 3}, {5, 97}, {98, 1001}, {n - 13, n}},
        std::vector<ParamTable::Range>{{n / 3, n / 3 + 1}, {n / 2, n / 2 + 577}}}) {
    size_t total = 0;
    for (const auto& r : ranges) total += r.size();
    std::vector<float> got(total, -99.f);
    InitParameterRanges(c, t, 7, ranges, got.data());
    size_t at = 0, diffs = 0;
    for (const auto& r : ranges)
      for (size_t i = r.begin; i < r.end; ++i) diffs += got[at++] != whole[i];
    EXPECT_EQ(diffs, 0u) << ranges.size() << " ranges";
  }
}

}  // namespace rw::runtime
