// `ringworld generate`: continues a prompt, the prompt prefilled over a ring of device actors in this process.
#include <cstdio>

#include "cli/commands.h"
#include "cli/local_ring.h"
#include "runtime/checkpoint.h"
#include "runtime/generate.h"
#include "runtime/media.h"
#include "runtime/tokenizer.h"
#include "runtime/vision_generate.h"
#include "runtime/vqgan.h"

namespace rw::cli {

int Generate(const std::string& checkpoint, const std::string& prompt, const std::vector<int32_t>& prompt_ids,
             int64_t max_tokens, double temperature, int64_t top_k, double top_p, uint64_t seed, int ring,
             const std::string& layout) {
  if (prompt.empty() && prompt_ids.empty()) {
    std::fprintf(stderr, "ringworld generate: --prompt or --prompt-ids is required\n");
    return 2;
  }
  runtime::ModelConfig c;
  auto st = runtime::ReadHfConfig(checkpoint + "/config.json", &c);
  if (!st.ok()) {
    std::fprintf(stderr, "ringworld generate: --checkpoint: %s\n", st.message().c_str());
    return 2;
  }
  // The checkpoint's tokenizer: tokenizer.model, none (a model trained on pre-tokenized ids: it takes
  // --prompt-ids and prints ids), or bytes.
  std::unique_ptr<runtime::Tokenizer> tok;
  if (st = runtime::CheckpointTokenizer(checkpoint, c, &tok); !st.ok()) {
    std::fprintf(stderr, "ringworld generate: --checkpoint: %s\n", st.message().c_str());
    return 2;
  }
  if (!prompt.empty() && tok->name() == runtime::kNoTokenizer) {
    std::fprintf(stderr, "ringworld generate: --prompt: %s has no tokenizer (trained on pre-tokenized ids); "
                         "give --prompt-ids\n", checkpoint.c_str());
    return 2;
  }
  std::vector<int32_t> ids = prompt_ids;
  if (ids.empty()) {
    ids = tok->Encode(prompt);  // BOS + the prompt; no EOS: the model continues it
    if (tok->bos() >= 0) ids.insert(ids.begin(), tok->bos());
  }
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= c.vocab_size) {
      std::fprintf(stderr, "ringworld generate: --prompt-ids: id %d (item %zu) is outside the model's vocabulary of %lld\n",
                   ids[i], i, (long long)c.vocab_size);
      return 2;
    }
  if (ring < 1) {
    std::fprintf(stderr, "ringworld generate: --ring: must be >= 1, got %d\n", ring);
    return 2;
  }
  const runtime::SamplingConfig s{temperature, top_k, top_p, seed};
  if (st = s.Validate(); !st.ok()) {
    std::fprintf(stderr, "ringworld generate: %s\n", st.message().c_str());
    return 2;
  }
  std::string error;
  actors::generate_task task{1, checkpoint, ids, max_tokens, temperature, top_p, top_k, seed,
                             tok->eos(), layout};
  const auto reports = OnLocalRing<actors::generate_report>(ring, /*job=*/4, actors::generate_atom::value, task, &error);
  if (!error.empty()) {
    std::fprintf(stderr, "ringworld generate: %s\n", error.c_str());
    return 1;
  }
  const std::vector<int32_t>& out = reports.front().tokens;  // the same on every rank
  const bool skip_bos = prompt_ids.empty() && tok->bos() >= 0;  // the BOS generate added itself
  std::vector<int32_t> text(ids.begin() + (skip_bos ? 1 : 0), ids.end());  // decoded whole: a
  text.insert(text.end(), out.begin(), out.end());  // SentencePiece piece's word-start mark becomes a space
  std::printf("%s\n", tok->Render(text).c_str());  // every id: pieces, or <id> (EOS, vision, past the text)
  return 0;
}

int GenerateVision(const std::string& checkpoint, const std::string& prompt, const std::string& vqgan_dir,
                   const std::string& image, const std::string& video, int64_t frames, double cfg_scale, double fps,
                   double temperature, int64_t top_k, double top_p, uint64_t seed) {
  using namespace rw::runtime;
  auto fail = [](int code, const std::string& what) {
    std::fprintf(stderr, "ringworld generate: %s\n", what.c_str());
    return code;
  };
  if (vqgan_dir.empty()) return fail(2, "--image and --video need --vqgan DIR (the VQGAN that decodes the codes)");
  if (image.empty() && video.empty()) return fail(2, "--vqgan: give --image OUT.png or --video OUT.mp4");
  if (prompt.empty()) return fail(2, "--prompt: the text to generate vision for is required");
  ModelConfig c;
  Status st = ReadHfConfig(checkpoint + "/config.json", &c);
  if (!st.ok()) return fail(2, "--checkpoint: " + st.message());
  std::unique_ptr<Tokenizer> tok;
  if (st = CheckpointTokenizer(checkpoint, c, &tok); !st.ok()) return fail(2, "--checkpoint: " + st.message());
  if (tok->name() == kNoTokenizer) return fail(2, "--prompt: " + checkpoint + " has no tokenizer (pre-tokenized ids)");
  std::unique_ptr<Vqgan> vq;
  const kernels::Exec ex{kernels::Device::kCpu, 0};
  if (st = Vqgan::Load(vqgan_dir, ex, &vq); !st.ok()) return fail(2, "--vqgan: " + st.message());
  const ParamTable table(c);
  std::vector<float> params(table.total());
  if (st = LoadWeights(checkpoint, table, params.data()); !st.ok()) return fail(1, st.message());
  VisionGenerateOptions o;
  o.prompt = tok->Encode(prompt);
  if (tok->bos() >= 0) o.prompt.insert(o.prompt.begin(), tok->bos()), o.uncond = {tok->bos()};
  if (o.uncond.empty()) o.uncond = {o.prompt.front()};
  o.vision = ModelVisionVocab(c, *tok, vq->config().num_embeddings);
  o.codes_per_frame = vq->config().codes_per_frame();
  o.frames = image.empty() ? frames : 1;
  o.cfg_scale = cfg_scale;
  o.sampling = SamplingConfig{temperature, top_k, top_p, seed};
  std::vector<int32_t> codes;
  if (st = GenerateVision(c, table, params.data(), ex, o, &codes); !st.ok()) return fail(1, st.message());
  std::vector<float> pixels;
  if (st = vq->Decode(o.frames, codes.data(), &pixels); !st.ok()) return fail(1, st.message());
  const std::string out = image.empty() ? video : image;
  if (st = WriteMediaFrames(out, vq->config().resolution, o.frames, pixels.data(), fps); !st.ok())
    return fail(1, st.message());
  std::printf("%lld frame%s of %lldx%lld (%lld codes each) -> %s\n", (long long)o.frames, o.frames == 1 ? "" : "s",
              (long long)vq->config().resolution, (long long)vq->config().resolution, (long long)o.codes_per_frame,
              out.c_str());
  return 0;
}

}  // namespace rw::cli
