// The VQGAN (runtime/vqgan.h) against an independent PyTorch implementation of LWM's architecture on a small
// random-weight model (tests/fixtures/make_vqgan_fixture.py, float64): identical codes, the quantizer's input
// and the decoded pixels close; bad configs and weight files named.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "ring_harness.h"
#include "runtime/safetensors.h"
#include "runtime/vision_generate.h"
#include "runtime/vqgan.h"

namespace rw::runtime {
namespace {

namespace fs = std::filesystem;
const std::string kDir = RW_FIXTURES "/vqgan_tiny";

struct Diff {
  double max_abs = 0, nmse = 0;
};
Diff Compare(const std::vector<float>& got, const std::vector<float>& want) {
  Diff d;
  double num = 0, den = 0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const double e = double(got[i]) - double(want[i]);
    d.max_abs = std::max(d.max_abs, std::fabs(e));
    num += e * e;
    den += double(want[i]) * double(want[i]);
  }
  d.nmse = num / std::max(den, 1e-300);
  return d;
}

TEST(Vqgan, EncodesAndDecodesAsAnIndependentPyTorchImplementation) {
  std::unique_ptr<Vqgan> v;
  const Status st = Vqgan::Load(kDir, kernels::Exec{kernels::Device::kCpu, 2}, &v);
  ASSERT_TRUE(st.ok()) << st.message();
  std::map<std::string, LoadedTensor> want;
  ASSERT_TRUE(ReadSafetensors(kDir + "/expected.safetensors", &want).ok());
  const VqganConfig& c = v->config();
  const int64_t frames = want.at("pixels").shape[0];
  ASSERT_EQ(frames, 2);
  std::vector<int32_t> codes;
  std::vector<float> latents;
  ASSERT_TRUE(v->Encode(frames, want.at("pixels").data.data(), &codes, &latents).ok());
  ASSERT_EQ(int64_t(codes.size()), frames * c.codes_per_frame());
  int differ = 0;
  std::vector<int32_t> expected_codes;
  for (float f : want.at("codes").data) expected_codes.push_back(int32_t(f));
  for (size_t i = 0; i < codes.size(); ++i) differ += codes[i] != expected_codes[i];
  const Diff dl = Compare(latents, want.at("latents").data);
  std::vector<float> decoded;
  ASSERT_TRUE(v->Decode(frames, expected_codes.data(), &decoded).ok());
  const Diff dd = Compare(decoded, want.at("decoded").data);
  std::printf("  %lld frames of %lldx%lld: %d of %zu codes differ; quantizer input max abs diff %.2e NMSE %.2e; "
              "decoded pixels max abs diff %.2e NMSE %.2e\n", (long long)frames, (long long)c.resolution,
              (long long)c.resolution, differ, codes.size(), dl.max_abs, dl.nmse, dd.max_abs, dd.nmse);
  EXPECT_EQ(differ, 0);
  EXPECT_LT(dl.nmse, 1e-10);
  EXPECT_LT(dd.max_abs, 1e-4);
  EXPECT_LT(dd.nmse, 1e-10);
}

TEST(Vqgan, TheDefaultIsLwmsAndItsTensorsAreNamedAsFlaxNamesThem) {
  const VqganConfig c;
  ASSERT_TRUE(c.Validate().ok());
  EXPECT_EQ(c.grid(), 16);
  EXPECT_EQ(c.codes_per_frame(), 256);
  int64_t params = 0;
  std::map<std::string, std::vector<int64_t>> t;
  for (const auto& [name, shape] : VqganTensors(c)) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    params += n;
    t[name] = shape;
  }
  EXPECT_EQ(t.at("quantize.embeddings"), (std::vector<int64_t>{8192, 64}));
  EXPECT_EQ(t.at("encoder.Conv_0.kernel"), (std::vector<int64_t>{3, 3, 3, 128}));
  EXPECT_EQ(t.at("decoder.Conv_0.kernel"), (std::vector<int64_t>{3, 3, 64, 768}));           // 128 x 6
  EXPECT_EQ(t.at("decoder.UpsamplingBlock_0.ResnetBlock_2.Conv_1.kernel"), (std::vector<int64_t>{3, 3, 768, 768}));
  EXPECT_EQ(t.at("decoder.UpsamplingBlock_4.ResnetBlock_0.Conv_2.kernel"), (std::vector<int64_t>{1, 1, 256, 128}));
  EXPECT_EQ(t.count("decoder.UpsamplingBlock_4.Upsample_0.Conv_0.kernel"), 0u);  // the first level: no upsampling
  EXPECT_EQ(t.count("encoder.DownsamplingBlock_4.Downsample_0.Conv_0.kernel"), 0u);
  std::printf("  LWM's VQGAN: %zu tensors, %.1f M parameters\n", t.size(), double(params) / 1e6);
}

// A Python with numpy (ops/convert_lwm_vqgan.py's one dependency): Debian's, or the one on the PATH.
std::string PythonWithNumpy() {
  for (const char* py : {"/usr/bin/python3", "python3"})
    if (std::system((std::string(py) + " -c 'import numpy' > /dev/null 2>&1").c_str()) == 0) return py;
  return "";
}

// ops/convert_lwm_vqgan.py on the fixture's weights pickled as LWM pickles its Flax parameter tree: the
// converted directory loads and encodes as the fixture does, tensor for tensor; a pickle that asks to run
// something, a tree with an attention block and one with an unknown module are refused, naming why.
TEST(Vqgan, TheConverterTakesLwmsPickledParameterTree) {
  const std::string py = PythonWithNumpy();
  ASSERT_FALSE(py.empty()) << "no python3 with numpy (ops/setup.sh installs python3-numpy)";
  const fs::path dir = fs::temp_directory_path() / ("rw_vqconv_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string conv = std::string(RW_SOURCE_DIR) + "/ops/convert_lwm_vqgan.py";
  auto run = [&](const std::string& params, const std::string& out) {
    const std::string cmd = py + " " + conv + " --params " + params + " --config " + kDir + "/config.json --out " + out +
                            " > " + (dir / "log").string() + " 2>&1";
    const int rc = std::system(cmd.c_str());
    std::ifstream f(dir / "log");
    std::stringstream ss;
    ss << f.rdbuf();
    return std::make_pair(rc, ss.str());
  };
  const auto [rc, log] = run(kDir + "/flax_params.pkl", (dir / "out").string());
  ASSERT_EQ(rc, 0) << log;
  std::map<std::string, LoadedTensor> mine, theirs;
  ASSERT_TRUE(ReadSafetensors((dir / "out" / "model.safetensors").string(), &mine).ok());
  ASSERT_TRUE(ReadSafetensors(kDir + "/model.safetensors", &theirs).ok());
  ASSERT_EQ(mine.size(), theirs.size());
  for (const auto& [name, t] : theirs) {
    ASSERT_TRUE(mine.count(name)) << name;
    EXPECT_EQ(mine[name].shape, t.shape) << name;
    EXPECT_EQ(mine[name].data, t.data) << name;
  }
  std::unique_ptr<Vqgan> v;
  const Status st = Vqgan::Load((dir / "out").string(), kernels::Exec{}, &v);
  ASSERT_TRUE(st.ok()) << st.message();
  std::printf("  %s", log.c_str());
  // Refusals.
  const std::string evil = (dir / "evil.pkl").string(), attn = (dir / "attn.pkl").string(), odd = (dir / "odd.pkl").string();
  std::ofstream(evil, std::ios::binary) << "cos\nsystem\n(S'touch " << (dir / "pwned").string() << "'\ntR.";
  ASSERT_EQ(std::system((py + " -c \"import pickle, numpy as np; z = np.zeros((1, 1, 1, 1), 'f4'); "
                              "pickle.dump({'encoder': {'AttnBlock_0': {'Conv_0': {'kernel': z}}}}, open('" + attn + "', 'wb')); "
                              "pickle.dump({'encoder': {'Lstm_0': {'kernel': z}}}, open('" + odd + "', 'wb'))\"").c_str()),
            0);
  struct Case {
    std::string file;
    const char* says;
  };
  for (const Case& c : {Case{evil, "refusing to build os.system"}, Case{attn, "attention blocks are outside LWM's VQGAN architecture"},
                        Case{odd, "encoder.Lstm_0.kernel: not a parameter of LWM's VQGAN architecture"}}) {
    const auto [code, msg] = run(c.file, (dir / "bad").string());
    EXPECT_EQ(code != 0, true) << c.file;
    EXPECT_NE(msg.find(c.says), std::string::npos) << msg;
    std::printf("  refused: %s", msg.c_str());
  }
  EXPECT_FALSE(fs::exists(dir / "pwned"));
  fs::remove_all(dir);
}

// Vision generation's shape on a random tiny model: every frame exactly its codes, each code inside the
// codebook, the markers fed between frames; guidance runs the second sequence and changes what is sampled;
// a model whose vocabulary has no room for the codes is told so.
TEST(Vqgan, GeneratedVisionIsWholeFramesOfCodesBetweenTheMarkers) {
  ModelConfig c;
  c.vocab_size = 259 + 16 + 4, c.hidden_size = 32, c.intermediate_size = 64, c.num_hidden_layers = 2;
  c.num_attention_heads = 4, c.num_key_value_heads = 2, c.max_position_embeddings = 256;
  const ParamTable t(c);
  std::vector<float> p(t.total());
  InitParameters(c, t, 3, p.data());
  for (auto& x : p) x *= 20.f;  // sharper logits than HF's init: guidance visibly moves the samples
  VisionGenerateOptions o;
  o.prompt = {256, 104, 105};
  o.uncond = {256};
  o.vision = VisionVocab::Appended(259, 16);
  o.codes_per_frame = 9;
  o.frames = 3;
  o.sampling = SamplingConfig{1.0, 0, 1.0, 7};
  std::vector<int32_t> codes, tokens, guided;
  Status st = GenerateVision(c, t, p.data(), kernels::Exec{}, o, &codes, &tokens);
  ASSERT_TRUE(st.ok()) << st.message();
  ASSERT_EQ(codes.size(), 27u);
  for (int32_t code : codes) EXPECT_TRUE(code >= 0 && code < 16) << code;
  ASSERT_EQ(tokens.size(), size_t(1 + 3 * 10 + 1));
  EXPECT_EQ(tokens.front(), o.vision.Begin().at(0));
  EXPECT_EQ(tokens[10], o.vision.eof());
  EXPECT_EQ(tokens[20], o.vision.eof());
  EXPECT_EQ(tokens[30], o.vision.eov());
  EXPECT_EQ(tokens.back(), o.vision.End().at(0));
  for (int64_t k = 0; k < 9; ++k) EXPECT_EQ(tokens[size_t(11 + k)], o.vision.Code(codes[size_t(9 + k)]));
  o.cfg_scale = 4;
  ASSERT_TRUE(GenerateVision(c, t, p.data(), kernels::Exec{}, o, &guided).ok());
  EXPECT_NE(guided, codes) << "guidance changed nothing";
  o.vision.codes = 17;  // 259 + 17 + 4 > 279
  st = GenerateVision(c, t, p.data(), kernels::Exec{}, o, &codes);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("does not hold a text vocabulary of 259, 17 codes"), std::string::npos) << st.message();
}

// The same in LWM's layout, on a model with a vision vocabulary: <vision> and </vision> are the tokenizer's
// text, the codes come from the vision head (ids 259 + c), end of frame is 259 + 16 and end of vision
// 259 + 17; a model whose vocabularies do not fit the layout is told so.
TEST(Vqgan, GeneratedVisionInLwmsLayoutUsesTheVisionVocabulary) {
  ModelConfig c;
  c.vocab_size = 259, c.vision_vocab_size = 24, c.hidden_size = 32, c.intermediate_size = 64;
  c.num_hidden_layers = 2, c.num_attention_heads = 4, c.num_key_value_heads = 2, c.max_position_embeddings = 256;
  const ParamTable t(c);
  std::vector<float> p(t.total());
  InitParameters(c, t, 3, p.data());
  for (auto& x : p) x *= 20.f;
  std::unique_ptr<Tokenizer> tok;
  ASSERT_TRUE(MakeTokenizer("bytes", &tok).ok());
  VisionGenerateOptions o;
  o.prompt = {256, 104, 105};
  o.uncond = {256};
  o.vision = ModelVisionVocab(c, *tok, 16);
  ASSERT_EQ(o.vision.layout, VisionLayout::kLwm);
  o.codes_per_frame = 9;
  o.frames = 2;
  o.cfg_scale = 3;
  o.sampling = SamplingConfig{1.0, 0, 1.0, 7};
  std::vector<int32_t> codes, tokens;
  Status st = GenerateVision(c, t, p.data(), kernels::Exec{}, o, &codes, &tokens);
  ASSERT_TRUE(st.ok()) << st.message();
  ASSERT_EQ(codes.size(), 18u);
  std::vector<int32_t> want;
  for (char ch : std::string("<vision>")) want.push_back(uint8_t(ch));
  for (int f = 0; f < 2; ++f) {
    for (int k = 0; k < 9; ++k) want.push_back(259 + codes[size_t(f * 9 + k)]);
    want.push_back(f == 0 ? 259 + 16 : 259 + 17);
  }
  for (char ch : std::string("</vision>")) want.push_back(uint8_t(ch));
  EXPECT_EQ(tokens, want);
  for (int32_t code : codes) EXPECT_TRUE(code >= 0 && code < 16) << code;
  c.vision_vocab_size = 17;  // no room for end of vision
  const ParamTable t2(c);
  std::vector<float> p2(t2.total(), 0.01f);
  st = GenerateVision(c, t2, p2.data(), kernels::Exec{}, o, &codes);
  EXPECT_NE(st.message().find("a vision vocabulary of at least 18; this one has 259 and 17"), std::string::npos)
      << st.message();
  o.vision = VisionVocab::Appended(259, 16);  // the appended layout on a two-vocabulary model: refused
  st = GenerateVision(c, t2, p2.data(), kernels::Exec{}, o, &codes);
  EXPECT_NE(st.message().find("does not hold a text vocabulary of 259"), std::string::npos) << st.message();
}

// Vision generation over a ring (the prompt prefilled over the ring, the KV caches of the conditional and
// unconditional sequences sharded over its devices) gives every rank the codes the single-device decoder
// gives: both layouts, with guidance, greedy and sampled, rings of 2 and 3, a one-vocabulary model and a
// model with LWM's vision vocabulary; each frame's codes reach on_frame as soon as they are sampled.
TEST(Vqgan, VisionGenerationOverARingGivesTheSingleDeviceCodes) {
  std::unique_ptr<Tokenizer> tok;
  ASSERT_TRUE(MakeTokenizer("bytes", &tok).ok());
  for (const int64_t vision : {int64_t(0), int64_t(20)}) {
    ModelConfig c;
    c.vocab_size = vision ? 259 : 259 + 16 + 4, c.vision_vocab_size = vision, c.hidden_size = 32;
    c.intermediate_size = 64, c.num_hidden_layers = 2, c.num_attention_heads = 4, c.num_key_value_heads = 2;
    c.max_position_embeddings = 256;
    const ParamTable t(c);
    std::vector<float> p(t.total());
    InitParameters(c, t, 5, p.data());
    for (auto& x : p) x *= 20.f;
    VisionGenerateOptions o;
    o.prompt = {256, 104, 105, 32, 97};
    o.uncond = {256};
    o.vision = ModelVisionVocab(c, *tok, 16);
    o.codes_per_frame = 7;
    o.frames = 2;
    o.cfg_scale = 2.5;
    for (const double temperature : {0.0, 1.0}) {
      o.sampling = SamplingConfig{temperature, 8, 1.0, 3};
      std::vector<int32_t> want, want_tokens;
      ASSERT_TRUE(GenerateVision(c, t, p.data(), kernels::Exec{}, o, &want, &want_tokens).ok());
      for (const int R : {2, 3})
        for (const char* layout : {"zigzag", "contiguous"}) {
          std::vector<std::vector<int32_t>> got(static_cast<size_t>(R)), tokens(static_cast<size_t>(R));
          std::vector<std::vector<int32_t>> streamed(static_cast<size_t>(R));  // what on_frame saw, in order
          auto fabric = InprocFabric::Create(R);
          auto st = test::RunRanks(fabric, [&](int r, Transport& tr) {
            VisionGenerateOptions mine = o;
            mine.on_frame = [&, r](int64_t f, const int32_t* frame) {
              EXPECT_EQ(int64_t(streamed[size_t(r)].size()), f * o.codes_per_frame);
              streamed[size_t(r)].insert(streamed[size_t(r)].end(), frame, frame + o.codes_per_frame);
              return Status::Ok();
            };
            return GenerateVisionOnRing(tr, c, t, p.data(), kernels::Exec{}, mine, layout, &got[size_t(r)],
                                        &tokens[size_t(r)]);
          });
          for (int r = 0; r < R; ++r) {
            ASSERT_TRUE(st[size_t(r)].ok()) << st[size_t(r)].message();
            EXPECT_EQ(got[size_t(r)], want) << "vision " << vision << " T " << temperature << " R " << R << " "
                                            << layout << " rank " << r;
            EXPECT_EQ(tokens[size_t(r)], want_tokens);
            EXPECT_EQ(streamed[size_t(r)], want) << "each frame's codes handed on as it was sampled";
          }
        }
      std::printf("  vision vocabulary %lld, temperature %.0f: %zu codes, the same on rings of 2 and 3\n",
                  (long long)vision, temperature, want.size());
    }
  }
}

TEST(Vqgan, BadConfigsAndWeightFilesAreNamed) {
  const fs::path dir = fs::temp_directory_path() / ("rw_vqgan_" + std::to_string(getpid()));
  fs::remove_all(dir);
  auto fresh = [&] {
    fs::remove_all(dir);
    fs::create_directories(dir);
    fs::copy_file(kDir + "/config.json", dir / "config.json");
    fs::copy_file(kDir + "/model.safetensors", dir / "model.safetensors");
  };
  auto load = [&]() {
    std::unique_ptr<Vqgan> v;
    const Status st = Vqgan::Load(dir.string(), kernels::Exec{}, &v);
    return st.ok() ? std::string("ok") : st.message();
  };
  auto edit = [&](const std::string& key, const nlohmann::json& value) {
    std::ifstream f(dir / "config.json");
    nlohmann::json j = nlohmann::json::parse(f);
    f.close();
    j[key] = value;
    std::ofstream(dir / "config.json") << j.dump();
  };
  struct Case {
    const char* key;
    nlohmann::json value;
    const char* says;
  };
  for (const Case& k : {Case{"attn_resolutions", {16}, "attn_resolutions: attention blocks are outside LWM's VQGAN architecture"},
                        Case{"no_attn_mid_block", false, "no_attn_mid_block"},
                        Case{"resample_with_conv", false, "resample_with_conv"},
                        Case{"hidden_channels", 7, "norm_groups: 4 does not divide hidden_channels 7"},
                        Case{"resolution", 30, "resolution: 30 does not halve 2 times"},
                        Case{"channel_mult", "wide", "channel_mult: expected a list"},
                        Case{"num_embeddings", 65, "quantize.embeddings has the wrong shape"},
                        Case{"flash", true, "flash: not a VQGAN setting"}}) {
    fresh();
    edit(k.key, k.value);
    const std::string m = load();
    EXPECT_NE(m.find(k.says), std::string::npos) << k.key << ": " << m;
  }
  // Sizes no host holds (LWM's widths at 8192 x 8192 frames; a codebook of 2^20 x 4096), refused by name.
  VqganConfig huge;
  huge.resolution = 8192;
  EXPECT_NE(huge.Validate().message().find("resolution: the activations of 8192x8192"), std::string::npos)
      << huge.Validate().message();
  huge = VqganConfig{};
  huge.num_embeddings = 1 << 20, huge.quantized_embed_dim = 4096;
  EXPECT_NE(huge.Validate().message().find("num_embeddings: a codebook of"), std::string::npos) << huge.Validate().message();
  // A tensor too many, and one missing.
  fresh();
  std::map<std::string, LoadedTensor> t;
  ASSERT_TRUE(ReadSafetensors((dir / "model.safetensors").string(), &t).ok());
  std::vector<TensorRef> refs;
  for (const auto& [name, x] : t) refs.push_back({name, x.shape, x.data.data()});
  refs.push_back({"encoder.AttnBlock_0.Conv_0.kernel", {1}, t.begin()->second.data.data()});
  ASSERT_TRUE(WriteSafetensors((dir / "model.safetensors").string(), refs).ok());
  EXPECT_NE(load().find("encoder.AttnBlock_0.Conv_0.kernel is not part of this VQGAN"), std::string::npos) << load();
  refs.pop_back();
  refs.erase(refs.begin());
  ASSERT_TRUE(WriteSafetensors((dir / "model.safetensors").string(), refs).ok());
  EXPECT_NE(load().find(" is missing"), std::string::npos) << load();
  // Codes outside the codebook.
  fresh();
  std::unique_ptr<Vqgan> v;
  ASSERT_TRUE(Vqgan::Load(dir.string(), kernels::Exec{}, &v).ok());
  std::vector<int32_t> codes(size_t(v->config().codes_per_frame()), 3);
  codes[9] = 64;
  std::vector<float> px;
  const Status st = v->Decode(1, codes.data(), &px);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("code 9 is 64, outside the codebook of 64"), std::string::npos) << st.message();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace rw::runtime
