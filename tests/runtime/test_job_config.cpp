// Job files: every bad case gets a message naming the key (and the file); a good one parses with its
// overrides applied.
#include <gtest/gtest.h>

#include "runtime/job_config.h"

namespace rw::runtime {
namespace {

const char* kGood = R"(
name: t
model: {vocab_size: 259, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 4,
        num_key_value_heads: 2, max_position_embeddings: 512}
ring: {devices: 2, layout: zigzag}
stages:
  - {seq_len: 64, rope_theta: 10000, steps: 3, batch: 2}
  - {seq_len: 128, rope_theta: 1000000, steps: 2, batch: 1}
)";

TEST(JobConfig, AGoodFileParsesAndOverridesApply) {
  JobConfig job;
  auto st = ParseJobConfig(kGood, "good.yaml", {"optimizer.lr=0.01", "stages.1.steps=7", "ring.layout=striped"}, &job);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(job.model.hidden_size, 32);
  EXPECT_EQ(job.stages.size(), 2u);
  EXPECT_EQ(job.stages[1].steps, 7);
  EXPECT_DOUBLE_EQ(job.stages[1].rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(job.optimizer.lr, 0.01);
  EXPECT_EQ(job.ring.layout, "striped");
  EXPECT_EQ(job.total_steps(), 10);
}

TEST(JobConfig, EveryBadCaseNamesItsKey) {
  struct Case {
    std::string yaml;
    std::vector<std::string> overrides;
    std::string must_mention;
  };
  const std::string base = kGood;
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = base;
    s.replace(s.find(from), from.size(), to);
    return s;
  };
  const std::vector<Case> cases = {
      {with("hidden_size: 32", "hiden_size: 32"), {}, "model.hiden_size: unknown key"},
      {with("steps: 3", "steps: three"), {}, "stages[0].steps: expected an integer, got 'three'"},
      {with("seq_len: 64", "seq_len: 66"), {}, "stages[0].seq_len"},
      {with("seq_len: 128", "seq_len: 2048"), {}, "max_position_embeddings"},
      {with("num_key_value_heads: 2", "num_key_value_heads: 3"), {}, "model.num_key_value_heads"},
      {with("layout: zigzag", "layout: spiral"), {}, "ring.layout"},
      {with("devices: 2", "devices: 0"), {}, "ring.devices"},
      {with("rope_theta: 10000", "rope_theta: 0.5"), {}, "stages[0].rope_theta"},
      {with("name: t", "name: t\ncolour: blue"), {}, "colour: unknown key"},
      {with("name: t", "name: t\nring_size: 4"), {}, "ring_size: unknown key"},
      {"name: t\nstages: []\n", {}, "stages: a job needs at least one stage"},
      {"- just\n- a list\n", {}, "a job file is a mapping"},
      {"name: [unclosed\n", {}, "not valid YAML"},
      // Numbers as written (they were read as 128, -1 and NaN) and keys and values that used to abort.
      {with("hidden_size: 32", "hidden_size: 32.7"), {}, "model.hidden_size: expected an integer, got '32.7'"},
      {with("steps: 3", "steps: 3e2"), {}, "stages[0].steps: expected an integer, got '3e2'"},
      {with("batch: 2", "batch: 99999999999999999999"), {}, "stages[0].batch: expected an integer, got"},
      {base, {"optimizer.lr=.nan"}, "optimizer.lr: expected a finite number, got '.nan'"},
      {base, {"stages.0.rope_theta=.inf"}, "stages.0.rope_theta: expected a finite number"},
      {with("name: t", "name: t\n{a: 1}: 2"), {}, "a key must be a plain name"},
      {with("name: t", "name: t\n[x]: 1"), {}, "a key must be a plain name"},
      {with("ring: {devices: 2", "ring: {[d]: 1, devices: 2"), {}, "ring: a key must be a plain name"},
      {with("- {seq_len: 64", "- {[s]: 1, seq_len: 64"), {}, "stages[0]: a key must be a plain name"},
      {base, {"name=[oops"}, "--set name: cannot read the value '[oops'"},
      {with("name: t", "name: \"t\\xff\\x01\""), {}, "name: must be at most 200 bytes of UTF-8"},
      {with("name: t", "name: \"a\\tb\""), {}, "name: must be at most 200 bytes of UTF-8"},
      {base, {"optimizer.lr=-1"}, "optimizer.lr"},
      {base, {"ring.transport=pigeon"}, "ring.transport"},
      {base, {"ring.min_devices=3"}, "ring.min_devices"},
      {base, {"model.nope=1"}, "--set model.nope: unknown key"},
      {base, {"stages.5.steps=1"}, "--set stages.5.steps: the job has 2 stages"},
      {base, {"lr"}, "--set: 'lr' is not key=value"},
      {base, {"optimizer.schedule=linear"}, "optimizer.schedule"},
      {base, {"stages.1.devices=3"}, "stages[1].seq_len"},      // 128 rows do not split into 6 zigzag chunks
      {base, {"stages.0.devices=-1"}, "stages[0].devices"},
      {base, {"remat=sometimes"}, "remat"},
      {base, {"precision=fp16"}, "precision"},
      {base, {"loss.weighting=by_vibes"}, "loss.weighting"},
      {base, {"model.vocab_size=200"}, "model.vocab_size: 200 is smaller than the vocabulary of data.tokenizer bytes"},
      {base, {"data.tokenizer=/no/such.model"}, "data.tokenizer: '/no/such.model' is neither bytes nor"},
      {base, {"data.tokenizer=" + std::string(RW_CONFIGS) + "/needle-cpu.yaml"}, "is not a SentencePiece model"},
      {base, {"data.tokenizer=" + std::string(RW_CONFIGS) + "/needle-tokenizer.model", "model.vocab_size=100"},
       "model.vocab_size: 100 is smaller than the vocabulary of data.tokenizer"},
      {base, {"data.max_len=1000000000000"}, "data.max_len: must be at most 16777216"},  // one 4 TB document
      // The mesh: each axis named, and what does not multiply to the devices.
      {base, {"mesh.dp=3"}, "mesh: dp 3 x fsdp 1 does not divide ring.devices = 2"},
      {base, {"mesh.fsdp=0"}, "mesh.fsdp: must be in [1, 1024], got 0"},
      {base, {"mesh.sp=-1"}, "mesh.sp: must be in [0, 1024]"},
      {base, {"mesh.sp=4"}, "mesh.sp: dp 1 x fsdp 1 x sp 4 = 4, not ring.devices = 2"},
      {base, {"mesh.dp=2"}, "stages[1].batch: 1 sequences leave some of the mesh's 2 data groups"},
      {base, {"mesh.fsdp=2", "stages.1.batch=2", "stages.0.devices=3"}, "stages[0].devices: 3 devices do not divide into mesh.fsdp = 2"},
      {base, {"mesh.dp=2", "stages.1.batch=2", "stages.1.devices=6"}, "stages[1].seq_len"},  // sp 3: 128 in 6 chunks
      {base, {"mesh.nope=1"}, "--set mesh.nope: unknown key"},
      {base, {"mesh.fsdp=2", "stages.1.batch=2", "model.tie_word_embeddings=true"}, "mesh.fsdp: tied embeddings"},
      {base, {"ring.devices=4", "mesh.fsdp=2", "stages.0.batch=3", "stages.1.batch=2"},
       "stages[0].batch: 3 sequences do not split evenly over"},
  };
  for (const auto& c : cases) {
    JobConfig job;
    job.name = "untouched";
    const auto st = ParseJobConfig(c.yaml, "job.yaml", c.overrides, &job);
    ASSERT_FALSE(st.ok()) << "accepted: " << c.must_mention;
    EXPECT_NE(st.message().find(c.must_mention), std::string::npos) << "message: " << st.message();
    EXPECT_EQ(job.name, "untouched") << "a rejected file must not change the output";
    std::printf("  %-45s -> %s\n", c.must_mention.c_str(), st.message().c_str());
  }
}

TEST(JobConfig, AMissingFileIsNamed) {
  JobConfig job;
  const auto st = LoadJobConfig("/nonexistent/job.yaml", {}, &job);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("/nonexistent/job.yaml"), std::string::npos);
}

// The mesh of each stage on the devices it gets: as configured on the stage's own devices; on fewer, dp
// gives way first while the sp ring keeps its length, then sp; fsdp never.
TEST(JobConfig, TheMeshOfAStageAndWhatShrinksFirst) {
  JobConfig job;
  auto st = ParseJobConfig(kGood, "good.yaml",
                           {"ring.devices=8", "mesh.dp=2", "mesh.fsdp=2", "stages.0.batch=4", "stages.1.batch=4",
                            "stages.1.devices=16"},
                           &job);
  ASSERT_TRUE(st.ok()) << st.message();
  struct Case {
    size_t stage;
    int64_t devices;
    Mesh want;  // dp 0: no mesh
  };
  // Stage 0: 64 tokens, zigzag: an sp ring of s needs 64 % 2s == 0. Stage 1: 128 tokens, its own 16 devices.
  for (const Case& c : {Case{0, 8, {2, 2, 2}}, Case{0, 4, {1, 2, 2}}, Case{0, 2, {1, 2, 1}}, Case{0, 6, {0, 0, 0}},
                        Case{0, 3, {0, 0, 0}}, Case{1, 16, {2, 2, 4}}, Case{1, 8, {1, 2, 4}}, Case{1, 12, {0, 0, 0}},
                        Case{1, 4, {1, 2, 2}}}) {
    Mesh m;
    st = job.StageMesh(c.stage, c.devices, &m);
    std::printf("  stage %zu on %2lld devices: %s\n", c.stage, (long long)c.devices,
                st.ok() ? m.ToString().c_str() : st.message().c_str());
    if (c.want.dp == 0) {
      EXPECT_FALSE(st.ok()) << "stage " << c.stage << " on " << c.devices << ": " << m.ToString();
      continue;
    }
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_EQ(m, c.want) << "stage " << c.stage << " on " << c.devices << ": " << m.ToString();
    EXPECT_EQ(m.world(), c.devices);
  }
  // A rank's copy of the job with the ring's plan applied makes the same mesh of it as the driver did (it
  // once took the planned devices for the stage's own and made dp 2 x sp 1 of a planned ring of 2).
  JobConfig ranked = job;
  ASSERT_TRUE(ApplyRingSizes({4, 0}, &ranked).ok());
  Mesh planned;
  ASSERT_TRUE(ranked.StageMesh(0, ranked.stage_devices(0), &planned).ok());
  EXPECT_EQ(planned, (Mesh{1, 2, 2}));
  EXPECT_TRUE(ranked.Validate().ok()) << ranked.Validate().message();
  // The data groups' sequences: contiguous, ragged batches give the first groups one more.
  const Mesh m{2, 2, 1};
  int64_t lo, hi, next = 0;
  for (int64_t g = 0; g < 4; ++g) {
    m.GroupSequences(7, g, &lo, &hi);
    EXPECT_EQ(lo, next);
    EXPECT_EQ(hi - lo, g < 3 ? 2 : 1);
    next = hi;
  }
  EXPECT_EQ(next, 7);
}

}  // namespace
}  // namespace rw::runtime
