// The per-rank training loop: the loss falls; the ring size does not change the numbers; a fixed ring
// size and seed give the same run bit for bit.
#include <gtest/gtest.h>

#include <algorithm>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include "ring_harness.h"
#include "runtime/checkpoint.h"
#include "runtime/dataset.h"
#include "runtime/fsdp.h"
#include "runtime/tokenizer.h"
#include "runtime/trainer.h"

namespace rw::runtime {
namespace {

using test::RunRanks;

JobConfig Tiny(int devices, int64_t steps) {
  JobConfig job;
  const char* yaml = R"(
name: t
model: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4,
        num_key_value_heads: 2, max_position_embeddings: 512}
optimizer: {lr: 0.003, warmup_steps: 2}
ring: {layout: zigzag}
stages: [{seq_len: 64, steps: 10, batch: 2}, {seq_len: 128, rope_theta: 100000, steps: 2, batch: 1}]
)";
  auto st = ParseJobConfig(yaml, "tiny", {"ring.devices=" + std::to_string(devices), "stages.0.steps=" + std::to_string(steps)}, &job);
  EXPECT_TRUE(st.ok()) << st.message();
  return job;
}

std::vector<StepMetrics> TrainSteps(const JobConfig& job) {
  std::vector<StepMetrics> steps;
  auto fabric = InprocFabric::Create(int(job.ring.devices));
  auto st = RunRanks(fabric, [&](int, Transport& t) {
    return TrainRank(t, job, [&](const StepMetrics& m) { steps.push_back(m); }, nullptr);
  });
  for (auto& s : st) EXPECT_TRUE(s.ok()) << s.message();
  return steps;
}

TEST(Trainer, LossFallsAcrossTwoStages) {
  const auto steps = TrainSteps(Tiny(2, 30));
  ASSERT_EQ(steps.size(), 32u);
  std::printf("  loss step 1 %.4f, step 30 %.4f, step 32 (stage 1, seq 128) %.4f\n", steps[0].loss, steps[29].loss,
              steps[31].loss);
  EXPECT_LT(steps[29].loss, steps[0].loss - 1.0);
  EXPECT_EQ(steps[31].seq_len, 128);
  EXPECT_EQ(steps[31].stage, 1);
  for (const auto& m : steps) {
    EXPECT_GT(m.grad_norm, 0);
    EXPECT_GT(m.peak_bytes, 0);
    EXPECT_GT(m.ring_overlap_ratio, 0);
  }
}

TEST(Trainer, RingSizeDoesNotChangeTheLossCurve) {
  const auto one = TrainSteps(Tiny(1, 4)), two = TrainSteps(Tiny(2, 4)), four = TrainSteps(Tiny(4, 4));
  for (size_t i = 0; i < one.size(); ++i) {
    std::printf("  step %zu loss R=1 %.7f R=2 %.7f R=4 %.7f\n", i + 1, one[i].loss, two[i].loss, four[i].loss);
    EXPECT_NEAR(two[i].loss, one[i].loss, 1e-5 * one[i].loss);
    EXPECT_NEAR(four[i].loss, one[i].loss, 1e-5 * one[i].loss);
    EXPECT_NEAR(two[i].grad_norm, one[i].grad_norm, 1e-4 * one[i].grad_norm);
  }
}

// The tiny job on a mesh, 5 steps of stage 0 and the 2 of stage 1 (4 sequences a step: every data group
// has one).
JobConfig TinyOnMesh(const Mesh& m, bool shard = false, const char* precision = "fp32", const char* remat = "none") {
  JobConfig job = Tiny(int(m.world()), 5);
  job.precision = precision;
  job.remat = remat;
  job.mesh.dp = m.dp;
  job.mesh.fsdp = m.fsdp;
  job.mesh.sp = m.sp;
  job.optimizer.shard = shard;
  for (auto& s : job.stages) s.batch = 4;
  const Status st = job.Validate();
  EXPECT_TRUE(st.ok()) << m.ToString() << ": " << st.message();
  return job;
}

std::vector<StepMetrics> TrainOnMesh(const Mesh& m, bool shard = false, const char* precision = "fp32",
                                     const char* remat = "none", std::vector<TrainResult>* results = nullptr) {
  const JobConfig job = TinyOnMesh(m, shard, precision, remat);
  std::vector<StepMetrics> steps;
  std::vector<TrainResult> res(size_t(m.world()));
  auto st = test::RunMesh(m, [&](int r, const RankRings& rings) {
    return TrainRank(rings, job, [&](const StepMetrics& s) { steps.push_back(s); }, &res[size_t(r)]);
  });
  for (auto& s : st) EXPECT_TRUE(s.ok()) << m.ToString() << ": " << s.message();
  if (results) *results = res;
  return steps;
}

// Issue 13, point 5: every mesh of 4 devices follows the one-rank run, loss and gradient norm to 1e-5
// relative at every step: fsdp > 1 shards the weights, gradients and moments (ZeRO-3, each rank holds
// 1/fsdp of the moments), dp and sp do not; also under bf16 and remat, and a replicated mesh with the
// optimizer sharded over the world.
TEST(Trainer, EveryMeshFollowsTheOneRankLossCurve) {
  struct Case {
    Mesh mesh;
    bool shard;
    const char* precision;
    const char* remat;
  };
  std::map<std::string, std::vector<StepMetrics>> one;
  for (const char* p : {"fp32", "bf16"}) one[p] = TrainOnMesh(Mesh{1, 1, 1}, false, p);
  ASSERT_EQ(one["fp32"].size(), 7u);
  const size_t P = ParamTable(TinyOnMesh(Mesh{1, 1, 1}).model).total(), units = ParamTable(TinyOnMesh(Mesh{1, 1, 1}).model).Units().size();
  for (const Case& c : {Case{{1, 1, 4}, false, "fp32", "none"}, Case{{1, 2, 2}, false, "fp32", "none"},
                        Case{{2, 2, 1}, false, "fp32", "none"}, Case{{1, 4, 1}, false, "fp32", "none"},
                        Case{{2, 1, 2}, true, "fp32", "none"}, Case{{2, 1, 2}, false, "bf16", "layer"},
                        Case{{1, 2, 2}, false, "bf16", "layer"},
                        Case{{1, 4, 1}, false, "fp32", "layer"}}) {
    std::vector<TrainResult> res;
    const auto got = TrainOnMesh(c.mesh, c.shard, c.precision, c.remat, &res);
    const auto& ref = one[c.precision];
    const std::string what = c.mesh.ToString() + " " + c.precision + " remat " + c.remat;
    ASSERT_EQ(got.size(), ref.size()) << what;
    // bf16: a gradient summed in another order moves the master weights by an fp32 last bit, enough to flip
    // some bf16 roundings of the compute copy; the replicated dp 2 x sp 2 mesh differs from one rank as much
    // as the sharded one (4e-4 in the gradient norm, 2e-5 in the loss), so bf16 gets 1e-3 and 1e-4.
    const bool bf16 = std::string(c.precision) == "bf16";
    const double tol = bf16 ? 1e-4 : 1e-5, norm_tol = bf16 ? 1e-3 : 1e-5;
    double worst_loss = 0, worst_norm = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      worst_loss = std::max(worst_loss, std::abs(got[i].loss - ref[i].loss) / ref[i].loss);
      worst_norm = std::max(worst_norm, std::abs(got[i].grad_norm - ref[i].grad_norm) / ref[i].grad_norm);
      EXPECT_NEAR(got[i].loss, ref[i].loss, tol * ref[i].loss) << what << " step " << i + 1;
      EXPECT_NEAR(got[i].grad_norm, ref[i].grad_norm, norm_tol * ref[i].grad_norm) << what << " step " << i + 1;
      EXPECT_EQ(got[i].tokens, ref[i].tokens);
    }
    // Each rank's moments: its 1/fsdp share (every unit cut into fsdp chunks), or 1/4 sharded over the world.
    const double shards = c.mesh.fsdp > 1 ? double(c.mesh.fsdp) : c.shard ? 4.0 : 1.0;
    for (const auto& r : res)
      EXPECT_NEAR(double(r.optimizer_bytes), 8.0 * double(P) / shards, 8.0 * double(units) + 8) << what;
    std::printf("  mesh %-24s %s remat %-5s%s: max relative difference loss %.2e, grad norm %.2e; moments %.0f%% of "
                "the whole on each rank\n",
                c.mesh.ToString().c_str(), c.precision, c.remat, c.shard ? " (optimizer sharded)" : "", worst_loss,
                worst_norm, 100.0 * double(res[0].optimizer_bytes) / (8.0 * double(P)));
  }
}

// Issue 13, point 2: under bf16 a sharded unit is gathered in the compute precision: each rank's chunk cast
// and the bf16 chunks gathered give the bits of the whole unit cast (the matrices), and the vectors the
// model reads in fp32 (the norms) arrive exact beside them; the embedding (a lookup) comes in fp32. fsdp 3
// cuts every unit at ragged places. The fsdp ring's traffic is printed against the fp32 gathers'.
TEST(Trainer, ShardedUnitsGatherInTheComputePrecision) {
  const JobConfig job = TinyOnMesh(Mesh{1, 1, 1});
  const ParamTable table(job.model);
  std::vector<float> whole(table.total());
  InitParameters(job.model, table, 11, whole.data());
  uint64_t bytes[2] = {0, 0};
  for (const kernels::DType precision : {kernels::DType::kF32, kernels::DType::kBF16}) {
    const bool bf16 = precision == kernels::DType::kBF16;
    std::vector<uint64_t> sent(3);
    auto st = test::RunMesh(Mesh{1, 3, 1}, [&](int r, const RankRings& rings) -> Status {
      ShardedWeights sw(table, job.optimizer, *rings.fsdp, rings.replica.get(), precision, kernels::Exec{}, 1);
      sw.InitShard(job.model, 11);
      sw.BeginStep(1);
      const auto units = table.Units();
      for (int u = 0; u < int(units.size()); ++u) {
        UnitSource::Unit x;
        RW_RETURN_IF_ERROR(sw.Acquire(u, false, &x));
        const bool lookup = u == 0;
        for (const auto& p : table.tensors()) {
          if (p.offset < units[size_t(u)].begin || p.offset >= units[size_t(u)].end) continue;
          for (size_t i = p.offset; i < p.offset + p.numel; ++i) {
            const float* got = x.params + (i - x.begin);
            if (!bf16 || lookup || p.shape.size() == 1)
              RW_REQUIRE(*got == whole[i], "rank " << r << ": " << p.name << " element " << i - p.offset << " fp32 "
                                                   << *got << " != " << whole[i]);
            if (bf16 && !lookup)
              RW_REQUIRE(x.compute[i - x.begin].bits == kernels::ToBf16(whole[i]).bits,
                         "rank " << r << ": " << p.name << " element " << i - p.offset << ": bf16 differs");
          }
        }
      }
      std::vector<float> storage;
      std::vector<ShardPiece> pieces;
      RW_RETURN_IF_ERROR(sw.Snapshot(&storage, &pieces));  // every collective done
      sent[size_t(r)] = rings.fsdp->stats().bytes_sent;
      return Status::Ok();
    });
    for (auto& x : st) ASSERT_TRUE(x.ok()) << x.message();
    bytes[bf16] = sent[0] + sent[1] + sent[2];
  }
  const double ratio = double(bytes[1]) / double(bytes[0]);
  std::printf("  fsdp 3, the model's units gathered once: %llu bytes in fp32, %llu in bf16 (%.2f; the embedding "
              "%.0f%% of the model stays fp32)\n", (unsigned long long)bytes[0], (unsigned long long)bytes[1], ratio,
              100.0 * double(table.Units()[0].size()) / double(table.total()));
  EXPECT_LT(ratio, 0.8);
}

// A fixed mesh and seed repeat bit for bit (the reductions' order is fixed by the mesh), sharded or not.
TEST(Trainer, AMeshRepeatsItsRunBitForBit) {
  for (const Mesh& m : {Mesh{2, 1, 2}, Mesh{1, 2, 2}}) {
    const auto a = TrainOnMesh(m), b = TrainOnMesh(m);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].loss, b[i].loss) << m.ToString() << " step " << i + 1;
      EXPECT_EQ(a[i].grad_norm, b[i].grad_norm) << m.ToString() << " step " << i + 1;
    }
  }
}

JobConfig InPrecision(JobConfig job, const char* precision) {
  job.precision = precision;
  return job;
}

// Mixed precision follows the fp32 run: the tiny model trained 300 steps in bf16 stays within 2% of the
// fp32 loss curve (each compared as a 10-step moving mean, so one step's noise does not decide).
TEST(Trainer, Bf16StaysWithinTwoPercentOfTheFp32LossCurveOver300Steps) {
  const auto f32 = TrainSteps(InPrecision(Tiny(1, 300), "fp32")), b16 = TrainSteps(InPrecision(Tiny(1, 300), "bf16"));
  ASSERT_EQ(f32.size(), b16.size());
  double worst = 0;
  size_t worst_step = 0;
  for (size_t i = 9; i < 300; ++i) {
    double a = 0, b = 0;
    for (size_t j = i - 9; j <= i; ++j) {
      a += f32[j].loss;
      b += b16[j].loss;
    }
    const double rel = std::fabs(b - a) / a;
    if (rel > worst) worst = rel, worst_step = i + 1;
    if ((i + 1) % 50 == 0)
      std::printf("  step %3zu loss (10-step mean) fp32 %.4f bf16 %.4f  rel diff %.2e\n", i + 1, a / 10, b / 10, rel);
  }
  std::printf("  worst relative difference %.3e at step %zu; last step fp32 %.4f bf16 %.4f\n", worst, worst_step,
              f32[299].loss, b16[299].loss);
  EXPECT_LT(worst, 0.02);
  EXPECT_LT(b16[299].loss, b16[0].loss - 1.0) << "bf16 training must learn";
}

// A bf16 ring of 4 equals a ring of 1. Not bitwise: the ring changes which rows share a block and the order
// of the fp32 sums (one device: one pass over the keys; four: four partial results merged), and a value
// rounded to bf16 after a sum that moved by one fp32 ulp can land one bf16 ulp (2^-8) away. Those flips
// are rare and average out in the loss: observed at most 5e-5 relative per step here; the bound, 1e-3, is
// 20x that and still below the bf16-vs-fp32 gap a training run accumulates (1.9e-3 after 300 steps above).
TEST(Trainer, Bf16RingOfFourEqualsRingOfOne) {
  const auto one = TrainSteps(InPrecision(Tiny(1, 6), "bf16")), four = TrainSteps(InPrecision(Tiny(4, 6), "bf16"));
  ASSERT_EQ(one.size(), four.size());
  for (size_t i = 0; i < one.size(); ++i) {
    std::printf("  step %zu bf16 loss R=1 %.7f R=4 %.7f  rel %.2e\n", i + 1, one[i].loss, four[i].loss,
                std::fabs(four[i].loss - one[i].loss) / one[i].loss);
    EXPECT_NEAR(four[i].loss, one[i].loss, 1e-3 * one[i].loss) << "step " << i + 1;
  }
}

TEST(Trainer, Bf16RunsRepeatBitForBitOnTheSameRing) {
  const auto a = TrainSteps(InPrecision(Tiny(2, 4), "bf16")), b = TrainSteps(InPrecision(Tiny(2, 4), "bf16"));
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].loss, b[i].loss) << "step " << i + 1;
}

TEST(Trainer, SameRingSizeAndSeedRepeatBitForBit) {
  const auto a = TrainSteps(Tiny(2, 5)), b = TrainSteps(Tiny(2, 5));
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].loss, b[i].loss) << "step " << i + 1;
    EXPECT_EQ(a[i].grad_norm, b[i].grad_norm) << "step " << i + 1;
  }
}

// optimizer.shard (ZeRO-1 over the ring): each rank keeps the moments of its chunk only, the gradients are
// reduce-scattered and the weights all-gathered. Its updates are the replicated optimizer's: the gradient
// sums are the same bits (the all-reduce is this reduce-scatter and all-gather), AdamW is elementwise, and
// only the global norm's fp64 partial sums are added in another order, which can move the clip factor by
// an ulp. Two sharded runs repeat bit for bit.
TEST(Trainer, AShardedOptimizerMatchesTheReplicatedOneAndRepeatsBitForBit) {
  for (int R : {2, 4}) {
    JobConfig job = Tiny(R, 6);
    job.optimizer.grad_clip = 0.5;  // clipped at every step: the norm's path matters
    const auto replicated = TrainSteps(job);
    job.optimizer.shard = true;
    const auto a = TrainSteps(job), b = TrainSteps(job);
    ASSERT_EQ(a.size(), replicated.size());
    double worst = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      worst = std::max(worst, std::fabs(a[i].loss - replicated[i].loss) / replicated[i].loss);
      EXPECT_NEAR(a[i].loss, replicated[i].loss, 1e-6 * replicated[i].loss) << "R=" << R << " step " << i + 1;
      EXPECT_NEAR(a[i].grad_norm, replicated[i].grad_norm, 1e-9 * replicated[i].grad_norm) << "R=" << R;
      EXPECT_GT(a[i].grad_norm, job.optimizer.grad_clip) << "the test wants clipping at every step";
      EXPECT_EQ(a[i].loss, b[i].loss) << "R=" << R << " step " << i + 1;
      EXPECT_EQ(a[i].grad_norm, b[i].grad_norm) << "R=" << R << " step " << i + 1;
    }
    std::printf("  R=%d: sharded vs replicated optimizer over %zu steps, worst loss rel diff %.2e\n", R, a.size(),
                worst);
  }
}

}  // namespace
}  // namespace rw::runtime

#include <filesystem>

#include "runtime/checkpoint.h"

namespace rw::runtime {
namespace {

// A job whose synthetic data is in a SentencePiece tokenizer writes it into every checkpoint (tokenizer.model,
// under the MANIFEST's CRC, as Hugging Face LLaMA directories carry theirs); generate and needle load it from
// there. A byte-tokenizer job writes none, and the directory's tokenizer is bytes.
// Issue 15, point 3: a model with LWM's second vocabulary trains on a dataset in LWM's layout (random
// frames of 16 codes and captions): the loss falls; a mesh that shards the weights (fsdp 2) and splits the
// sequence (sp 2) follows the one-rank curve, in fp32 and bf16; the checkpoint says vision_vocab_size and
// holds model.vision_embed_tokens and vision_head, and evaluates on the dataset; a model without the vision
// vocabulary is refused the dataset by name.
TEST(Trainer, AVisionVocabularyTrainsOnLwmsLayoutOnEveryMesh) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("rw_lwm_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  {
    std::ofstream f(dir / "v.jsonl");
    uint64_t x = 5;
    for (int r = 0; r < 24; ++r) {
      f << "{\"vision\": [";
      for (int fr = 0; fr < 2; ++fr) {
        f << (fr ? ", [" : "[");
        for (int k = 0; k < 6; ++k) f << (k ? ", " : "") << ((x = x * 6364136223846793005ULL + 1) >> 60);
        f << "]";
      }
      f << "], \"text\": \"frame " << r % 3 << "\", \"order\": \"" << (r % 2 ? "text_vision" : "vision_text")
        << "\"}\n";
    }
  }
  PrepareOptions opt{{(dir / "v.jsonl").string()}, (dir / "ds").string(), "bytes", 16, false};
  opt.vision_layout = "lwm";
  ASSERT_TRUE(PrepareDataset(opt, nullptr).ok());
  auto job_on = [&](const Mesh& m, const char* precision, const std::string& ckpt) {
    JobConfig job = Tiny(int(m.world()), 6);
    EXPECT_TRUE(ParseJobConfig(R"(
name: lwm
model: {vision_vocab_size: 24, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4,
        num_key_value_heads: 2, max_position_embeddings: 512}
data: {source: files}
loss: {weighting: per_modality, text_weight: 0.5, vision_weight: 0.5}
optimizer: {lr: 0.01, warmup_steps: 1}
ring: {layout: zigzag}
stages: [{seq_len: 64, steps: 6, batch: 4}]
)", "lwm", {"data.path=" + (dir / "ds").string(), "ring.devices=" + std::to_string(m.world())}, &job).ok());
    job.precision = precision;
    job.mesh.dp = m.dp;
    job.mesh.fsdp = m.fsdp;
    job.mesh.sp = m.sp;
    if (!ckpt.empty()) job.checkpoint.dir = ckpt, job.checkpoint.every_steps = 6;
    return job;
  };
  auto train = [&](const JobConfig& job, const Mesh& m) {
    std::vector<StepMetrics> steps;
    auto st = test::RunMesh(m, [&](int, const RankRings& rings) {
      return TrainRank(rings, job, [&](const StepMetrics& s) { steps.push_back(s); }, nullptr);
    });
    for (auto& s : st) EXPECT_TRUE(s.ok()) << m.ToString() << ": " << s.message();
    return steps;
  };
  for (const char* precision : {"fp32", "bf16"}) {
    const auto one = train(job_on(Mesh{1, 1, 1}, precision, (dir / precision).string()), Mesh{1, 1, 1});
    ASSERT_EQ(one.size(), 6u);
    EXPECT_LT(one.back().loss, one.front().loss - 0.3) << precision;
    const auto mesh = train(job_on(Mesh{1, 2, 2}, precision, ""), Mesh{1, 2, 2});
    ASSERT_EQ(mesh.size(), 6u);
    const bool bf16 = std::string(precision) == "bf16";
    double worst = 0;
    for (size_t i = 0; i < one.size(); ++i) {
      worst = std::max(worst, std::abs(mesh[i].loss - one[i].loss) / one[i].loss);
      EXPECT_NEAR(mesh[i].loss, one[i].loss, (bf16 ? 1e-3 : 1e-5) * one[i].loss) << precision << " step " << i + 1;
    }
    std::printf("  %s: loss %.4f -> %.4f on one rank; fsdp 2 x sp 2 within %.2e of it\n", precision,
                one.front().loss, one.back().loss, worst);
  }
  const fs::path ck = dir / "fp32" / "step-6";
  ASSERT_TRUE(VerifyCheckpoint(ck.string()).ok());
  ModelConfig saved;
  ASSERT_TRUE(ReadHfConfig((ck / "config.json").string(), &saved).ok());
  EXPECT_EQ(saved.vocab_size, 259);
  EXPECT_EQ(saved.vision_vocab_size, 24);
  const ParamTable table(saved);
  std::vector<float> params(table.total());
  ASSERT_TRUE(LoadWeights(ck.string(), table, params.data()).ok());
  auto fabric = InprocFabric::Create(2);
  std::vector<EvalResult> ev(2);
  auto st = RunRanks(fabric, [&](int r, Transport& t) {
    return EvalRank(t, ck.string(), (dir / "ds").string(), 64, "zigzag", 1, &ev[size_t(r)]);
  });
  for (auto& s : st) ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(std::isfinite(ev[0].loss) && ev[0].loss > 0);
  EXPECT_GT(ev[0].tokens, 0);
  std::printf("  eval of step 6 over a ring of 2: loss %.4f over %lld positions\n", ev[0].loss,
              (long long)ev[0].tokens);
  JobConfig text_only = job_on(Mesh{1, 1, 1}, "fp32", "");
  text_only.model.vision_vocab_size = 0;
  text_only.model.vocab_size = 259 + 18;
  auto refused = test::RunMesh(Mesh{1, 1, 1}, [&](int, const RankRings& rings) {
    return TrainRank(rings, text_only, nullptr, nullptr);
  });
  EXPECT_NE(refused[0].message().find("data.path: the dataset lays vision out as LWM does"), std::string::npos)
      << refused[0].message();
  fs::remove_all(dir);
}

TEST(Trainer, CheckpointsCarryTheirSentencePieceTokenizer) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("rw_tok_" + std::to_string(getpid()));
  fs::remove_all(dir);
  const std::string model = std::string(RW_CONFIGS) + "/needle-tokenizer.model";
  JobConfig job;
  ASSERT_TRUE(ParseJobConfig(R"(
name: t
model: {vocab_size: 256, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 4,
        num_key_value_heads: 2, max_position_embeddings: 512}
data: {task: needle, min_len: 40, max_len: 64, answer_weight: 5}
ring: {devices: 2, layout: zigzag}
stages: [{seq_len: 64, steps: 3, batch: 2}]
checkpoint: {every_steps: 3}
)", "t", {"data.tokenizer=" + model, "checkpoint.dir=" + (dir / "sp").string()}, &job).ok());
  const auto steps = TrainSteps(job);
  ASSERT_EQ(steps.size(), 3u);
  const fs::path ck = dir / "sp" / "step-3";
  ASSERT_TRUE(fs::exists(ck / kTokenizerFile));
  ASSERT_TRUE(VerifyCheckpoint(ck.string()).ok());
  std::unique_ptr<Tokenizer> theirs, ours;
  ASSERT_TRUE(MakeTokenizer(model, &theirs).ok());
  ASSERT_TRUE(DirectoryTokenizer(ck.string(), &ours).ok());
  const std::string text = "The special magic Oslo number is: 1234567. What is the special magic Oslo number?";
  EXPECT_EQ(ours->Encode(text), theirs->Encode(text));
  EXPECT_EQ(ours->vocab_size(), 256);
  std::printf("  %s: %zu tokens of %zu bytes\n", (ck / kTokenizerFile).c_str(), ours->Encode(text).size(), text.size());
  {  // a corrupt tokenizer.model fails the checkpoint's verification, naming the file
    std::fstream f(ck / kTokenizerFile, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x7f');
  }
  const Status bad = VerifyCheckpoint(ck.string());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.message().find("tokenizer.model"), std::string::npos) << bad.message();
  // Bytes: no tokenizer.model.
  JobConfig bytes = Tiny(2, 2);
  bytes.checkpoint.dir = (dir / "b").string();
  bytes.checkpoint.every_steps = 4;
  ASSERT_EQ(TrainSteps(bytes).size(), 4u);
  EXPECT_FALSE(fs::exists(dir / "b" / "step-4" / kTokenizerFile));
  std::unique_ptr<Tokenizer> b;
  ASSERT_TRUE(DirectoryTokenizer((dir / "b" / "step-4").string(), &b).ok());
  EXPECT_EQ(b->name(), "bytes");
  fs::remove_all(dir);
}

TEST(Trainer, InitFromLoadsWeightsAndRefusesAModelOfAnotherShape) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("rw_init_" + std::to_string(getpid()));
  fs::remove_all(dir);
  JobConfig job = Tiny(2, 2);
  const ParamTable tb(job.model);
  std::vector<float> p(tb.total());
  InitParameters(job.model, tb, 77, p.data());
  std::string path;
  ASSERT_TRUE(SaveCheckpoint(dir.string(), job.model, tb, p.data(), nullptr, nullptr, TrainerState{1, 0, 1, 1, "i"},
                             SaveOptions{1}, &path).ok());
  job.init_from = path;
  const auto from_init = TrainSteps(job);
  const auto fresh = TrainSteps(Tiny(2, 2));
  ASSERT_FALSE(from_init.empty());
  EXPECT_NE(from_init[0].loss, fresh[0].loss) << "init_from must change the starting weights";
  {  // with the weights sharded (fsdp 2): the same start, read whole once and kept as shards
    JobConfig sharded = job;
    sharded.ring.devices = 2;
    sharded.mesh.fsdp = 2;
    for (auto& st : sharded.stages) st.batch = 2;
    JobConfig replicated = job;
    for (auto& st : replicated.stages) st.batch = 2;
    const auto a = TrainSteps(replicated);
    std::vector<StepMetrics> b;
    auto st = test::RunMesh(Mesh{1, 2, 1}, [&](int, const RankRings& rings) {
      return TrainRank(rings, sharded, [&](const StepMetrics& m) { b.push_back(m); }, nullptr);
    });
    for (auto& x : st) EXPECT_TRUE(x.ok()) << x.message();
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(b[i].loss, a[i].loss, 1e-5 * a[i].loss) << "fsdp 2, step " << i + 1;
  }
  JobConfig other = Tiny(2, 2);
  other.init_from = path;
  other.model.hidden_size = 64;
  other.model.intermediate_size = 64;
  auto fabric = InprocFabric::Create(2);
  auto st = RunRanks(fabric, [&](int, Transport& t) { return TrainRank(t, other, {}, nullptr); });
  ASSERT_FALSE(st[0].ok());
  EXPECT_NE(st[0].message().find("init_from"), std::string::npos) << st[0].message();
  EXPECT_NE(st[0].message().find("hidden_size"), std::string::npos) << st[0].message();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace rw::runtime
