// `ringworld plan`'s arithmetic (runtime/memory_plan.h): sizes parsed by name, stages checked as the job
// validator checks them, the state of a replicated rank, and the mesh search: the mesh it names fits, and
// no mesh of fewer devices does. (The workspace's bytes are checked against a real step in test_model.cpp.)
#include <gtest/gtest.h>

#include "runtime/memory_plan.h"

namespace rw::runtime {
namespace {

JobConfig SevenB() {
  JobConfig job;
  job.model.vocab_size = 32000;
  job.model.hidden_size = 4096;
  job.model.intermediate_size = 11008;
  job.model.num_hidden_layers = 32;
  job.model.num_attention_heads = 32;
  job.model.num_key_value_heads = 32;
  job.model.max_position_embeddings = 1 << 20;
  job.precision = "bf16";
  job.remat = "layer";
  job.ring.devices = 4;
  job.ring.min_devices = 4;
  job.stages = {StageConfig{32768, 1e6, 10, 8, 4}, StageConfig{1 << 20, 5e7, 10, 1, 128}};
  return job;
}

TEST(MemoryPlan, SizesAreParsedWithTheirUnitsAndNonsenseIsRefused) {
  int64_t b = 0;
  ASSERT_TRUE(ParseByteSize("80GiB", &b));
  EXPECT_EQ(b, int64_t(80) << 30);
  ASSERT_TRUE(ParseByteSize("80 GB", &b));
  EXPECT_EQ(b, int64_t(80e9));
  ASSERT_TRUE(ParseByteSize("1.5MiB", &b));
  EXPECT_EQ(b, int64_t(3) << 19);
  ASSERT_TRUE(ParseByteSize("4096", &b));
  EXPECT_EQ(b, 4096);
  for (const char* bad : {"", "GiB", "80 GiBs", "-1GiB", "0", "nan", "1e30TiB", "80 parsecs"})
    EXPECT_FALSE(ParseByteSize(bad, &b)) << bad;
  EXPECT_EQ(FormatBytes(1536), "1.50 KiB");
}

TEST(MemoryPlan, AReplicatedRankHoldsSixteenOrEighteenBytesAParameterOfState) {
  JobConfig job = SevenB();
  MemoryPlan plan;
  ASSERT_TRUE(PlanMemory(job, {}, &plan).ok());
  const ParamTable tb(job.model);
  const int64_t P = int64_t(tb.total());
  EXPECT_EQ(plan.parameters, double(P));
  EXPECT_NEAR(plan.parameters, 6.74e9, 0.01e9);  // LLaMA-2-7B
  const RankMemory& r = plan.stages[0].rank;
  EXPECT_EQ(r.weights + r.gradients + r.optimizer, 18 * P);  // bf16: 4 + 2 + 4 + 8
  EXPECT_EQ(r.snapshot, 0);                                   // no checkpoint.dir
  job.precision = "fp32";
  job.checkpoint.dir = "ck";
  ASSERT_TRUE(PlanMemory(job, {}, &plan).ok());
  EXPECT_EQ(plan.stages[0].rank.weights + plan.stages[0].rank.gradients + plan.stages[0].rank.optimizer, 16 * P);
  EXPECT_EQ(plan.stages[0].rank.snapshot, 12 * P);
  const int64_t on_cpu = plan.stages[0].rank.total();
  MemoryPlanOptions gpu;
  gpu.device = "cuda";  // the snapshot is host memory there, not the device's
  const int64_t cpu_kernels = plan.stages[0].rank.kernels;
  ASSERT_TRUE(PlanMemory(job, gpu, &plan).ok());
  // The kernels' scratch is the device's backend's estimate: the CUDA kernels hold only the largest call's
  // blocks (freed after each call), the CPU's keep theirs.
  const int64_t cuda_kernels = plan.stages[0].rank.kernels;
  EXPECT_GT(cuda_kernels, 0);
  EXPECT_LT(cuda_kernels, cpu_kernels);
  EXPECT_EQ(plan.stages[0].rank.total(), on_cpu - 12 * P - cpu_kernels + cuda_kernels);
  EXPECT_EQ(plan.stages[1].rows, (1 << 20) / 128);
  // optimizer.shard: each ring member's moments are its chunk's (8 bytes a parameter over the ring of 128).
  job.optimizer.shard = true;
  ASSERT_TRUE(PlanMemory(job, {}, &plan).ok());
  EXPECT_EQ(plan.stages[1].rank.optimizer, 8 * (P / 128 + 1));
  // Remat keeps each layer's input and one layer: far less than every layer's activations.
  EXPECT_LT(plan.stages[1].rank.activations_remat * 4, plan.stages[1].rank.activations_no_remat);
}

// A mesh: each data group's sp ring splits the sequence (rows = seq_len / sp), the sharded optimizer's chunk
// is 1/devices (ZeRO-1 over the world ring), and the plan names each stage's mesh.
TEST(MemoryPlan, AMeshSplitsTheSequenceOverItsSpRingAndTheMomentsOverEveryDevice) {
  JobConfig job = SevenB();
  job.mesh.dp = 2;
  job.optimizer.shard = true;
  job.stages[0].batch = 8;
  job.stages[1].batch = 2;
  MemoryPlan plan;
  ASSERT_TRUE(PlanMemory(job, {}, &plan).ok());
  const int64_t P = int64_t(ParamTable(job.model).total());
  EXPECT_EQ(plan.stages[0].mesh, (Mesh{2, 1, 2}));
  EXPECT_EQ(plan.stages[0].rows, 32768 / 2);
  EXPECT_EQ(plan.stages[0].rank.optimizer, 8 * (P / 4 + 1));
  EXPECT_EQ(plan.stages[1].mesh, (Mesh{2, 1, 64}));
  EXPECT_EQ(plan.stages[1].rows, (1 << 20) / 64);
  const std::string text = FormatMemoryPlan(plan, {});
  EXPECT_NE(text.find("0: dp 2 x fsdp 1 x sp 2; 1: dp 2 x fsdp 1 x sp 64"), std::string::npos) << text;
  // On fewer devices the replicas go first: stage 1 on 64 devices is one ring of 64.
  MemoryPlanOptions few;
  few.devices = 64;
  ASSERT_TRUE(PlanMemory(job, few, &plan).ok());
  EXPECT_EQ(plan.stages[1].mesh, (Mesh{1, 1, 64}));
}

TEST(MemoryPlan, BadStagesAndOptionsAreNamed) {
  JobConfig job = SevenB();
  MemoryPlan plan;
  MemoryPlanOptions opt;
  job.stages[1].devices = 3;  // 2^20 does not split into 6 zigzag chunks
  Status st = PlanMemory(job, opt, &plan);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("stages[1]"), std::string::npos) << st.message();
  job = SevenB();
  opt.device_memory = -5;
  st = PlanMemory(job, opt, &plan);
  EXPECT_NE(st.message().find("--device-memory"), std::string::npos) << st.message();
  opt = {};
  opt.device = "tpu";
  st = PlanMemory(job, opt, &plan);
  EXPECT_NE(st.message().find("--device"), std::string::npos) << st.message();
  opt = {};
  job.precision = "fp8";
  st = PlanMemory(job, opt, &plan);
  EXPECT_NE(st.message().find("precision"), std::string::npos) << st.message();
  job = SevenB();
  job.model.num_key_value_heads = 5;
  st = PlanMemory(job, opt, &plan);
  EXPECT_NE(st.message().find("num_key_value_heads"), std::string::npos) << st.message();
}

TEST(MemoryPlan, FewerDevicesShrinkTheRingToTheLargestThatSplitsTheSequence) {
  const JobConfig job = SevenB();
  MemoryPlan plan;
  MemoryPlanOptions opt;
  opt.devices = 100;  // the 1M stage asks for 128: zigzag needs 2R to divide 2^20, so 64
  ASSERT_TRUE(PlanMemory(job, opt, &plan).ok());
  EXPECT_EQ(plan.stages[0].devices, 4);
  EXPECT_EQ(plan.stages[1].devices, 64);
  EXPECT_EQ(plan.stages[1].rows, (1 << 20) / 64);
}

TEST(MemoryPlan, TheMeshItNamesFitsAndNoMeshOfFewerDevicesDoes) {
  const JobConfig job = SevenB();
  MemoryPlanOptions opt;
  opt.device_memory = int64_t(80) << 30;
  opt.threads = 8;
  MemoryPlan plan;
  ASSERT_TRUE(PlanMemory(job, opt, &plan).ok());
  for (const StagePlan& s : plan.stages) {
    EXPECT_FALSE(s.fits) << "a replicated 7B rank holds 18 bytes a parameter (121 GB): stage " << s.stage;
    ASSERT_GT(s.fit_sp, 0) << "stage " << s.stage;
    EXPECT_GT(s.fit_fsdp, 1) << "only sharding the weights can fit it";
    EXPECT_LE(s.fit_rank.total(), opt.device_memory);
    const int64_t n = s.fit_fsdp * s.fit_sp;
    for (int64_t m = 1; m < n; ++m)
      for (int64_t sp = 1; sp <= m; ++sp) {
        if (m % sp != 0 || (s.seq_len % (2 * sp)) != 0) continue;  // zigzag: 2 sp chunks
        const RankMemory rm = RankMemoryOf(job, s.seq_len / sp, sp, m / sp, opt.threads, job.stages[size_t(s.stage)].batch);
        EXPECT_GT(rm.total(), opt.device_memory) << "stage " << s.stage << ": fsdp " << m / sp << " sp " << sp
                                                 << " fits with fewer devices than " << n;
      }
    std::printf("  stage %lld (%lld tokens): smallest mesh on 80 GiB: fsdp %lld x sp %lld, %.1f GiB a device\n",
                (long long)s.stage, (long long)s.seq_len, (long long)s.fit_fsdp, (long long)s.fit_sp,
                double(s.fit_rank.total()) / double(1 << 30));
  }
  const std::string text = FormatMemoryPlan(plan, opt);
  EXPECT_NE(text.find("does not fit"), std::string::npos) << text;
  EXPECT_NE(text.find("fsdp"), std::string::npos) << text;
}

}  // namespace
}  // namespace rw::runtime
