// Hugging Face interop against fixtures transformers 5 made (tests/fixtures/make_hf_interop_fixtures.py):
// - the loss convention: a window of L inputs predicts L targets; eval and a training step on a document of
//   2 L + 1 tokens equal transformers' float64 loss (and the step's gradient norm);
// - config.json as transformers 4.x and 5.x write it (rope_parameters), and every field we do not
//   implement refused by name; init_from takes the model from config.json and refuses a job that differs;
//   a tensor we would not read is refused, not dropped;
// - our checkpoints as transformers uses them: AutoTokenizer and generate on a checkpoint we wrote give our
//   prompt ids and our greedy continuation, and what we write now is what the fixture holds;
// - `ringworld export` of a sharded checkpoint loads in transformers' LlamaForCausalLM (fp32 over several
//   files with an index, and bf16) with the logits our model computes (tests/fixtures/make_hf_export_fixture.py).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "ring_harness.h"
#include "runtime/checkpoint.h"
#include "runtime/dataset.h"
#include "runtime/memory_plan.h"
#include "runtime/crc32c.h"
#include "runtime/generate.h"
#include "runtime/hf_export.h"
#include "runtime/ring_decode.h"
#include "runtime/safetensors.h"
#include "runtime/trainer.h"

namespace rw::runtime {
namespace {

namespace fs = std::filesystem;
using test::RunRanks;

const std::string kLoss = RW_FIXTURES "/hf5_llama_tiny";
const std::string kConfigs = RW_FIXTURES "/hf5_configs";
const std::string kGenerate = RW_FIXTURES "/hf_generate";
const std::string kExport = RW_FIXTURES "/hf_export";

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream f(path);
  return nlohmann::json::parse(f);
}

std::string Bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void FlipLastByte(const fs::path& file) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(-1, std::ios::end);
  const char c = char(f.get());
  f.seekp(-1, std::ios::end);
  f.put(char(c ^ 0x01));
}

struct Tmp {
  fs::path p;
  explicit Tmp(const std::string& name) : p(fs::temp_directory_path() / ("rw_hf_" + std::to_string(getpid()) + "_" + name)) {
    fs::remove_all(p);
    fs::create_directories(p);
  }
  ~Tmp() { fs::remove_all(p); }
};

// The fixture's document as a prepared dataset in the model's vocabulary (37 < the byte tokenizer's 259).
std::string DocumentDataset(const Tmp& t, const nlohmann::json& c, int64_t vocab) {
  std::ofstream(t.p / "doc.jsonl") << nlohmann::json{{"tokens", c["document"]}}.dump() << "\n";
  PrepareOptions opt{{(t.p / "doc.jsonl").string()}, (t.p / "ds").string()};
  opt.vocab_size = vocab;
  EXPECT_TRUE(PrepareDataset(opt, nullptr).ok());
  return (t.p / "ds").string();
}

TEST(HfInterop, EvalAndATrainingStepScoreEveryPositionOfAWindowAsTransformersInFloat64) {
  const auto c = ReadJson(kLoss + "/case.json");
  const int64_t L = c["seq_len"].get<int64_t>();
  const double ref = c["loss"].get<double>(), ref_norm = c["grad_norm"].get<double>();
  Tmp t("loss");
  const std::string ds = DocumentDataset(t, c, 37);
  for (int R : {1, 2}) {
    auto fabric = InprocFabric::Create(R);
    std::vector<EvalResult> res(static_cast<size_t>(R));
    auto st = RunRanks(fabric, [&](int r, Transport& tr) { return EvalRank(tr, kLoss, ds, L, "zigzag", 1, &res[size_t(r)]); });
    for (auto& s : st) ASSERT_TRUE(s.ok()) << s.message();
    const double diff = std::abs(res[0].loss - ref);
    std::printf("  eval R=%d: loss %.8f, float64 reference %.8f, |diff| %.2e (rel %.2e), %lld targets\n", R,
                res[0].loss, ref, diff, diff / ref, (long long)res[0].tokens);
    EXPECT_EQ(res[0].tokens, 2 * L) << "a window of L inputs predicts L targets";
    EXPECT_LT(diff, 1e-5 * ref);
  }
  // Training: the model section comes from config.json (the job sets none), the stage's RoPE base from
  // its rope_parameters; step 1's loss is the loss before the update, its gradient norm the reference's.
  const std::string yaml = "name: hf\ninit_from: " + kLoss + "\ndata: {source: files, path: " + ds +
                           "}\noptimizer: {lr: 1.0e-4, warmup_steps: 0, grad_clip: 0}\nstages: [{seq_len: " +
                           std::to_string(L) + ", steps: 1, batch: 2}]\n";
  JobConfig job;
  auto pst = ParseJobConfig(yaml, "hf.yaml", {}, &job);
  ASSERT_TRUE(pst.ok()) << pst.message();
  EXPECT_EQ(job.model.vocab_size, 37);
  EXPECT_EQ(job.model.hidden_size, 32);
  EXPECT_FLOAT_EQ(job.model.rms_norm_eps, 1e-5f);
  EXPECT_EQ(job.stages[0].theta(job.model), 5000.0) << "config.json's rope_parameters.rope_theta";
  for (int R : {1, 2}) {
    job.ring.devices = R;
    std::vector<StepMetrics> steps;
    auto fabric = InprocFabric::Create(R);
    auto st = RunRanks(fabric, [&](int, Transport& tr) {
      return TrainRank(tr, job, [&](const StepMetrics& m) { steps.push_back(m); }, nullptr);
    });
    for (auto& s : st) ASSERT_TRUE(s.ok()) << s.message();
    ASSERT_EQ(steps.size(), 1u);
    const double dl = std::abs(steps[0].loss - ref), dn = std::abs(steps[0].grad_norm - ref_norm);
    std::printf("  train R=%d step 1: loss %.8f (rel diff %.2e), grad norm %.8f vs %.8f (rel diff %.2e)\n", R,
                steps[0].loss, dl / ref, steps[0].grad_norm, ref_norm, dn / ref_norm);
    EXPECT_LT(dl, 1e-5 * ref);
    EXPECT_LT(dn, 1e-5 * ref_norm);
  }
}

TEST(HfInterop, ConfigsAsTransformers5WritesThemAreReadOrRefusedByField) {
  const auto expected = ReadJson(kConfigs + "/expected.json")["cases"];
  ASSERT_GE(expected.size(), 7u);
  for (const auto& [name, want] : expected.items()) {
    ModelConfig m;
    const Status st = ReadHfConfig(kConfigs + "/" + name + ".json", &m);
    if (want.contains("refused")) {
      const std::string field = want["refused"].get<std::string>();
      ASSERT_FALSE(st.ok()) << name << " must be refused";
      EXPECT_NE(st.message().find(field), std::string::npos) << name << ": " << st.message();
      EXPECT_NE(st.message().find(name + ".json"), std::string::npos) << "the error names the file: " << st.message();
      std::printf("  %-24s refused: %s\n", name.c_str(), st.message().substr(st.message().find(": ") + 2).c_str());
    } else {
      ASSERT_TRUE(st.ok()) << name << ": " << st.message();
      EXPECT_EQ(m.rope_theta, want["rope_theta"].get<double>()) << name << ": rope_parameters.rope_theta";
      EXPECT_FLOAT_EQ(m.rms_norm_eps, 1e-5f);
      std::printf("  %-24s read: rope_theta %.0f from rope_parameters\n", name.c_str(), m.rope_theta);
    }
  }
  // transformers 4.x: rope_theta at the top (the older fixture), and the two forms disagreeing.
  ModelConfig m4;
  ASSERT_TRUE(ReadHfConfig(RW_FIXTURES "/hf_llama_tiny/config.json", &m4).ok());
  EXPECT_EQ(m4.rope_theta, 5000.0);
  Tmp t("cfg");
  auto j = ReadJson(kConfigs + "/default.json");
  j["rope_theta"] = 10000.0;
  std::ofstream(t.p / "both.json") << j.dump();
  const Status both = ReadHfConfig((t.p / "both.json").string(), &m4);
  ASSERT_FALSE(both.ok());
  EXPECT_NE(both.message().find("rope_theta"), std::string::npos) << both.message();
}

TEST(HfInterop, InitFromTakesTheModelFromConfigJsonAndRefusesAJobThatDiffers) {
  Tmp t("init");
  const std::string ds = DocumentDataset(t, ReadJson(kLoss + "/case.json"), 37);
  const std::string base = "name: i\ninit_from: " + kLoss + "\ndata: {source: files, path: " + ds +
                           "}\nstages: [{seq_len: 32, steps: 1}]\n";
  JobConfig job;
  const Status ok = ParseJobConfig(base, "i.yaml", {}, &job);
  ASSERT_TRUE(ok.ok()) << ok.message();
  EXPECT_EQ(job.model.num_key_value_heads, 2);
  EXPECT_EQ(job.model.max_position_embeddings, 128);
  // A job may repeat a value, and may lengthen the context; it may not change the model.
  EXPECT_TRUE(ParseJobConfig(base + "model: {hidden_size: 32, max_position_embeddings: 256}\n", "i.yaml", {}, &job).ok());
  EXPECT_EQ(job.model.max_position_embeddings, 256);
  for (const std::string& bad : {"model: {hidden_size: 64}", "model: {vocab_size: 30}", "model: {rms_norm_eps: 1.0e-6}",
                                 "model: {num_key_value_heads: 4}"}) {
    const Status st = ParseJobConfig(base + bad + "\n", "i.yaml", {}, &job);
    ASSERT_FALSE(st.ok()) << bad;
    const std::string key = bad.substr(8, bad.find(':', 8) - 8);
    EXPECT_NE(st.message().find("model." + key), std::string::npos) << st.message();
    EXPECT_NE(st.message().find("init_from"), std::string::npos) << st.message();
  }
  const Status set = ParseJobConfig(base, "i.yaml", {"model.hidden_size=16"}, &job);
  ASSERT_FALSE(set.ok());
  EXPECT_NE(set.message().find("model.hidden_size"), std::string::npos) << set.message();
  // A directory whose config.json we refuse is named.
  fs::create_directories(t.p / "gelu");
  fs::copy_file(kConfigs + "/gelu.json", t.p / "gelu" / "config.json");
  const Status gelu = ParseJobConfig("name: i\ninit_from: " + (t.p / "gelu").string() + "\ndata: {source: files, path: " +
                                         ds + "}\nstages: [{seq_len: 32, steps: 1}]\n", "i.yaml", {}, &job);
  ASSERT_FALSE(gelu.ok());
  EXPECT_NE(gelu.message().find("hidden_act"), std::string::npos) << gelu.message();
}

// LWM's vision stage: a vocabulary larger than init_from's extends it. Their rows of embed_tokens and
// lm_head load as they are, the new rows start from the initialization, and every other tensor loads.
TEST(HfInterop, ALargerVocabularyExtendsTheInitFromModel) {
  Tmp t("extend");
  const std::string ds = DocumentDataset(t, ReadJson(kLoss + "/case.json"), 37);
  JobConfig job;
  const Status st = ParseJobConfig("name: x\ninit_from: " + kLoss + "\nmodel: {vocab_size: 45}\ndata: {source: files, path: " +
                                       ds + "}\noptimizer: {lr: 1.0e-30}\nstages: [{seq_len: 24, steps: 1, batch: 1}]\n"
                                       "checkpoint: {dir: " + (t.p / "ck").string() + "}\n",
                                   "x.yaml", {}, &job);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(job.model.vocab_size, 45);
  EXPECT_EQ(job.model.hidden_size, 32) << "the rest comes from config.json";
  auto fabric = InprocFabric::Create(1);
  auto rs = RunRanks(fabric, [&](int, Transport& tr) { return TrainRank(tr, job, {}, nullptr); });
  ASSERT_TRUE(rs[0].ok()) << rs[0].message();
  // lr 1e-30: updates below half an ulp, so the checkpoint holds the loaded weights bit for bit.
  ModelConfig small, big;
  ASSERT_TRUE(ReadHfConfig(kLoss + "/config.json", &small).ok());
  ASSERT_TRUE(ReadHfConfig((t.p / "ck" / "step-1" / "config.json").string(), &big).ok());
  ASSERT_EQ(big.vocab_size, 45);
  const ParamTable ts(small), tb(big);
  std::vector<float> ps(ts.total()), pb(tb.total());
  ASSERT_TRUE(LoadWeights(kLoss, ts, ps.data()).ok());
  ASSERT_TRUE(LoadWeights((t.p / "ck" / "step-1").string(), tb, pb.data()).ok());
  int64_t same = 0, fresh_nonzero = 0;
  for (const auto& p : ts.tensors()) {
    const ParamInfo* q = tb.Find(p.name);
    ASSERT_NE(q, nullptr) << p.name;
    for (size_t i = 0; i < p.numel; ++i) same += ps[p.offset + i] == pb[q->offset + i];
    for (size_t i = p.numel; i < q->numel; ++i) fresh_nonzero += pb[q->offset + i] != 0.f;
  }
  EXPECT_EQ(same, int64_t(ts.total())) << "every loaded value kept";
  EXPECT_EQ(fresh_nonzero, 2 * 8 * 32) << "the 8 new rows of embed_tokens and lm_head initialized";
  std::printf("  vocabulary 37 -> 45: %lld loaded values kept, %lld new values initialized\n", (long long)same,
              (long long)fresh_nonzero);
}

TEST(HfInterop, ATensorWeWouldNotReadIsRefusedNotDropped) {
  ModelConfig c;
  ASSERT_TRUE(ReadHfConfig(kLoss + "/config.json", &c).ok());
  const ParamTable table(c);
  std::vector<float> p(table.total());
  ASSERT_TRUE(LoadWeights(kLoss, table, p.data()).ok());
  Tmp t("extra");
  fs::copy_file(kLoss + "/config.json", t.p / "config.json");
  std::vector<TensorRef> refs;
  for (const auto& info : table.tensors()) refs.push_back({info.name, info.shape, p.data() + info.offset});
  const std::vector<float> bias(32, 0.5f);
  refs.push_back({"model.layers.0.self_attn.q_proj.bias", {32}, bias.data()});
  ASSERT_TRUE(WriteSafetensors((t.p / "model.safetensors").string(), refs, {{"format", "pt"}}).ok());
  const Status st = LoadWeights(t.p.string(), table, p.data());
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("model.layers.0.self_attn.q_proj.bias"), std::string::npos) << st.message();
  std::printf("  %s\n", st.message().c_str());
  // The rotary tables older transformers saved are derived, not weights: they load.
  refs.pop_back();
  const std::vector<float> inv_freq(4, 1.f);
  refs.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", {4}, inv_freq.data()});
  ASSERT_TRUE(WriteSafetensors((t.p / "model.safetensors").string(), refs, {{"format", "pt"}}).ok());
  EXPECT_TRUE(LoadWeights(t.p.string(), table, p.data()).ok());
}

TEST(HfInterop, TransformersGeneratesOurGreedyOutputFromACheckpointWeWrote) {
  const auto e = ReadJson(kGenerate + "/expected.json");
  ModelConfig c;
  ASSERT_TRUE(ReadHfConfig(kGenerate + "/config.json", &c).ok());
  std::unique_ptr<Tokenizer> tok;
  ASSERT_TRUE(CheckpointTokenizer(kGenerate, c, &tok).ok());
  // AutoTokenizer (tokenizer_config.json beside tokenizer.model) encodes the prompt as we do.
  std::vector<int32_t> prompt = tok->Encode(e["prompt"].get<std::string>());
  prompt.insert(prompt.begin(), tok->bos());
  EXPECT_EQ(prompt, e["prompt_ids"].get<std::vector<int32_t>>());
  const auto want = e["greedy_ids"].get<std::vector<int32_t>>();
  for (int R : {1, 2}) {
    auto fabric = InprocFabric::Create(R);
    std::vector<std::vector<int32_t>> out(static_cast<size_t>(R));
    auto st = RunRanks(fabric, [&](int r, Transport& tr) {
      return GenerateRank(tr, kGenerate, prompt, SamplingConfig{}, int64_t(want.size()), tok->eos(), "zigzag",
                          kernels::Exec{kernels::Device::kCpu, 1}, &out[size_t(r)]);
    });
    for (auto& s : st) ASSERT_TRUE(s.ok()) << s.message();
    EXPECT_EQ(out[0], want) << "ring of " << R;
    std::printf("  R=%d: ours '%s', transformers' '%s' (min top-2 logit margin %.3f)\n", R, tok->Render(out[0]).c_str(),
                e["greedy_text"].get<std::string>().c_str(), e["min_top2_margin"].get<double>());
  }
  // What SaveCheckpoint writes today is what transformers was given: config.json (with BOS/EOS),
  // generation_config.json and tokenizer_config.json, byte for byte.
  const ParamTable table(c);
  std::vector<float> p(table.total());
  ASSERT_TRUE(LoadWeights(kGenerate, table, p.data()).ok());
  Tmp t("gen");
  std::string path;
  ASSERT_TRUE(SaveCheckpoint(t.p.string(), c, table, p.data(), nullptr, nullptr, TrainerState{60, 0, 60, 3, "g"},
                             SaveOptions{1, 0, tok.get()}, &path).ok());
  for (const char* f : {"config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.model", "model.safetensors"})
    EXPECT_EQ(Bytes(fs::path(path) / f), Bytes(fs::path(kGenerate) / f))
        << f << " differs from the fixture: run tests/fixtures/make_hf_interop_fixtures.py";
}

// Issue 13, point 3: a checkpoint that a mesh with sharded weights wrote (fsdp 2: a file per shard), exported,
// is what transformers loaded when the fixture was made, byte for byte (the CRC32C of every file), and our
// model's logits on the export at every position equal transformers' (float64 on the weights as loaded):
// in float32 over four files with an index, and in bfloat16 in one file.
TEST(HfInterop, AnExportOfAShardedCheckpointLoadsInTransformersWithOurLogits) {
  const nlohmann::json c = ReadJson(kExport + "/case.json");
  const std::string ckpt = kExport + "/" + c["checkpoint"].get<std::string>();
  const std::vector<int32_t> tokens = c["tokens"].get<std::vector<int32_t>>();
  ASSERT_TRUE(fs::exists(fs::path(ckpt) / "shard-00001-of-00002.safetensors"));
  Tmp t("export");
  for (const auto& cs : c["cases"]) {
    const std::string name = cs["name"];
    ExportOptions opt;
    ASSERT_TRUE(ParseExportDType(cs["dtype"], &opt.dtype));
    ASSERT_TRUE(ParseByteSize(cs["max_shard_size"], &opt.max_shard_bytes));
    const fs::path out = t.p / name;
    ExportResult res;
    const Status st = ExportHuggingFace(ckpt, out.string(), opt, &res);
    ASSERT_TRUE(st.ok()) << st.message();
    std::vector<std::string> have;
    for (const auto& e : fs::directory_iterator(out)) have.push_back(e.path().filename().string());
    std::sort(have.begin(), have.end());
    std::vector<std::string> want;
    for (const auto& [file, crc] : cs["files"].items()) {
      want.push_back(file);
      const std::string bytes = Bytes(out / file);
      EXPECT_EQ(Crc32c(bytes.data(), bytes.size()), crc.get<uint32_t>()) << name << ": " << file << " differs from "
                                                                         << "what transformers loaded";
    }
    EXPECT_EQ(have, want) << name;
    // Our model on the export, token by token (the decoder's logits at each position are the forward's).
    ModelConfig m;
    ASSERT_TRUE(ReadHfConfig((out / "config.json").string(), &m).ok());
    const ParamTable table(m);
    std::vector<float> params(table.total());
    ASSERT_TRUE(LoadWeights(out.string(), table, params.data()).ok());
    std::map<std::string, LoadedTensor> theirs;
    ASSERT_TRUE(ReadSafetensors(kExport + "/logits_" + name + ".safetensors", &theirs).ok());
    const LoadedTensor& ref = theirs.at("logits");
    ASSERT_EQ(ref.shape, (std::vector<int64_t>{int64_t(tokens.size()), m.vocab_size}));
    Decoder dec(m, table, params.data(), kernels::Exec{});
    double worst = 0, err = 0, norm = 0;
    std::vector<float> logits;
    for (size_t i = 0; i < tokens.size(); ++i) {
      ASSERT_TRUE(dec.Step(tokens[i], &logits).ok());
      for (int64_t v = 0; v < m.vocab_size; ++v) {
        const double want_v = ref.data[i * size_t(m.vocab_size) + size_t(v)], d = double(logits[size_t(v)]) - want_v;
        worst = std::max(worst, std::fabs(d));
        err += d * d;
        norm += want_v * want_v;
      }
    }
    std::printf("  export %-8s (%zu weight file%s, %lld parameters): logits vs transformers %s: max abs diff %.2e, "
                "NMSE %.2e\n", name.c_str(), res.files.size(), res.files.size() == 1 ? "" : "s",
                (long long)res.parameters, c["transformers"].get<std::string>().c_str(), worst, err / norm);
    EXPECT_LT(worst, 1e-4) << name;
  }
  // A checkpoint.dir exports its newest checkpoint; an --to that holds anything is refused and left alone; a
  // directory that is no checkpoint is named.
  const fs::path dir = t.p / "ckdir";
  fs::create_directories(dir);
  fs::copy(ckpt, dir / "step-6", fs::copy_options::recursive);
  ExportResult res;
  ASSERT_TRUE(ExportHuggingFace(dir.string(), (t.p / "from_dir").string(), {}, &res).ok());
  EXPECT_EQ(res.source, (dir / "step-6").string());
  EXPECT_EQ(Bytes(t.p / "from_dir" / "model.safetensors").size(), size_t(res.bytes));
  fs::create_directories(t.p / "taken");
  std::ofstream(t.p / "taken" / "keep.txt") << "mine";
  Status st = ExportHuggingFace(ckpt, (t.p / "taken").string(), {}, &res);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("exists and is not an empty directory"), std::string::npos) << st.message();
  EXPECT_EQ(Bytes(t.p / "taken" / "keep.txt"), "mine");
  st = ExportHuggingFace((t.p / "taken").string(), (t.p / "x").string(), {}, &res);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("neither a checkpoint of ours"), std::string::npos) << st.message();
  EXPECT_FALSE(fs::exists(t.p / "x"));
  // A shard flipped: the MANIFEST catches it before anything is written.
  FlipLastByte(dir / "step-6" / "shard-00001-of-00002.safetensors");
  st = ExportHuggingFace((dir / "step-6").string(), (t.p / "y").string(), {}, &res);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("shard-00001-of-00002.safetensors: CRC32C mismatch"), std::string::npos) << st.message();
  EXPECT_FALSE(fs::exists(t.p / "y"));
  std::printf("  refused: %s\n", st.message().c_str());
}

// A Python with numpy and msgpack (ops/convert_lwm_checkpoint.py's dependencies): Debian's, or the PATH's.
std::string PythonWithMsgpack() {
  for (const char* py : {"/usr/bin/python3", "python3"})
    if (std::system((std::string(py) + " -c 'import numpy, msgpack' > /dev/null 2>&1").c_str()) == 0) return py;
  return "";
}

// ops/convert_lwm_checkpoint.py on a tiny random LWM vision-language LLaMA written as LWM's streaming
// checkpointer writes it (tests/fixtures/lwm_llama_tiny/make_lwm_fixture.py: one file of params with a
// bfloat16 and a chunked array, one train state with scanned layers and optimizer entries): our decoder on
// the converted model gives, at every position, the text logits and vision logits of LWM's forward written
// in numpy from LWM's conventions (interleaved RoPE, (in, out) kernels, vte under the vision mask); the ring
// forward's loss over 2 ranks equals LWM's two losses summed from those logits; a parameter LWM's LLaMA does
// not have is refused by name and nothing is written.
TEST(HfInterop, LwmsStreamingCheckpointConvertsToOurModelWithLwmsLogits) {
  const std::string py = PythonWithMsgpack();
  ASSERT_FALSE(py.empty()) << "no python3 with numpy and msgpack (ops/setup.sh installs python3-numpy, python3-msgpack)";
  const std::string fix = RW_FIXTURES "/lwm_llama_tiny";
  nlohmann::json want;
  std::ifstream(fix + "/expected.json") >> want;
  const std::vector<int32_t> tokens = want["tokens"].get<std::vector<int32_t>>();
  const std::vector<int> mask = want["vision_mask"].get<std::vector<int>>();
  const auto text = want["text_logits"].get<std::vector<std::vector<double>>>();
  const auto vision = want["vision_logits"].get<std::vector<std::vector<double>>>();
  const fs::path dir = fs::temp_directory_path() / ("rw_lwmconv_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  auto convert = [&](const std::string& file, const fs::path& out) {
    const std::string cmd = py + " " RW_SOURCE_DIR "/ops/convert_lwm_checkpoint.py --checkpoint " + fix + "/" + file +
                            " --out " + out.string() + " --rope-theta 10000 --max-position-embeddings 64 " +
                            "--num-attention-heads 4 > " + (dir / "log").string() + " 2>&1";
    const int rc = std::system(cmd.c_str());
    std::stringstream ss;
    ss << std::ifstream(dir / "log").rdbuf();
    return std::make_pair(rc, ss.str());
  };
  const int64_t V = want["config"]["vocab_size"].get<int64_t>();
  // Our ids: a vision-masked LWM id v is V + v.
  std::vector<int32_t> ids;
  for (size_t i = 0; i < tokens.size(); ++i) ids.push_back(mask[i] ? int32_t(V + tokens[i]) : tokens[i]);
  for (const char* file : {"streaming_params", "streaming_train_state"}) {
    const fs::path out = dir / file;
    const auto [rc, log] = convert(file, out);
    ASSERT_EQ(rc, 0) << log;
    std::printf("  %s", log.c_str());
    ModelConfig c;
    ASSERT_TRUE(ReadHfConfig((out / "config.json").string(), &c).ok());
    EXPECT_EQ(c.vocab_size, V);
    EXPECT_EQ(c.vision_vocab_size, want["config"]["vision_vocab_size"].get<int64_t>());
    const ParamTable tb(c);
    std::vector<float> p(tb.total());
    Status st = LoadWeights(out.string(), tb, p.data());
    ASSERT_TRUE(st.ok()) << st.message();
    Decoder dec(c, tb, p.data(), kernels::Exec{kernels::Device::kCpu, 1});
    std::vector<float> logits;
    double worst = 0, err2 = 0, ref2 = 0;
    for (size_t i = 0; i < ids.size(); ++i) {
      ASSERT_TRUE(dec.Step(ids[i], &logits).ok());
      ASSERT_EQ(int64_t(logits.size()), c.total_vocab());
      for (int64_t v = 0; v < c.total_vocab(); ++v) {
        const double ref = v < V ? text[i][size_t(v)] : vision[i][size_t(v - V)];
        worst = std::max(worst, std::fabs(double(logits[size_t(v)]) - ref));
        err2 += (logits[size_t(v)] - ref) * (logits[size_t(v)] - ref);
        ref2 += ref * ref;
      }
    }
    std::printf("  %s: %zu positions x %lld logits against LWM's forward: max abs diff %.2e, NMSE %.2e\n", file,
                ids.size(), (long long)c.total_vocab(), worst, err2 / ref2);
    EXPECT_LT(worst, 1e-4);
    EXPECT_LT(err2 / ref2, 1e-10);
    // The loss: each target scored within its own vocabulary (LWM's text and vision losses), summed.
    double lwm = 0;
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
      const auto& row = mask[i + 1] ? vision[i] : text[i];
      double m = -1e300, z = 0;
      for (double l : row) m = std::max(m, l);
      for (double l : row) z += std::exp(l - m);
      lwm += m + std::log(z) - row[size_t(tokens[i + 1])];
    }
    Layout lay;
    ASSERT_TRUE(Layout::Make(LayoutKind::kContiguous, int64_t(ids.size()) + 1, 2, &lay).ok());
    std::vector<double> part(2, 0.0);
    auto fabric = InprocFabric::Create(2);
    auto rs = RunRanks(fabric, [&](int r, Transport& t) {
      RankBatch b;
      for (int64_t g : lay.GlobalIndices(r)) {
        const bool real = g < int64_t(ids.size());
        b.index.push_back(g);
        b.tokens.push_back(real ? ids[size_t(g)] : 0);
        b.targets.push_back(g + 1 < int64_t(ids.size()) ? ids[size_t(g + 1)] : -1);
        b.weights.push_back(g + 1 < int64_t(ids.size()) ? 1.f : 0.f);
        b.positions.push_back(g);
        b.segments.push_back(real ? 0 : -1);
      }
      return Forward(t, c, tb, ModelExec{}, p.data(), b, &part[size_t(r)]);
    });
    for (auto& s : rs) ASSERT_TRUE(s.ok()) << s.message();
    std::printf("  ring of 2: loss sum %.7f, LWM's two losses from its logits %.7f\n", part[0] + part[1], lwm);
    EXPECT_NEAR(part[0] + part[1], lwm, 1e-5 * lwm);
  }
  const auto [rc, log] = convert("bad_unknown_key", dir / "bad");
  EXPECT_NE(rc, 0);
  EXPECT_NE(log.find("transformer.h.0.attention.bias: not a parameter of LWM's LLaMA"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(dir / "bad" / "model.safetensors"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace rw::runtime
