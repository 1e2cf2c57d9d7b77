// `ringworld generate`: continues a prompt (text, or frames of VQGAN codes), the prompt prefilled over a ring of
// device actors in this process.
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "actors/local_ring.h"
#include "runtime/checkpoint.h"
#include "runtime/generate.h"
#include "runtime/media.h"
#include "runtime/tokenizer.h"
#include "runtime/vision_generate.h"
#include "runtime/vqgan.h"

namespace rw::cli {
namespace {

// What every rank of a generation gets: the checkpoint, the prompt, the sampling settings, the layout.
actors::generate_task SamplingTask(const std::string& checkpoint, const std::vector<int32_t>& prompt,
                                   const runtime::SamplingConfig& s, const std::string& layout) {
  actors::generate_task task;
  task.epoch = 1;
  task.checkpoint = checkpoint;
  task.prompt = prompt;
  task.temperature = s.temperature;
  task.top_p = s.top_p;
  task.top_k = s.top_k;
  task.seed = s.seed;
  task.layout = layout;
  return task;
}

}  // namespace

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
  actors::generate_task task = SamplingTask(checkpoint, ids, s, layout);
  task.max_tokens = max_tokens;
  task.eos = tok->eos();
  const auto reports = actors::OnLocalRing<actors::generate_report>(ring, /*job=*/4, actors::generate_atom::value, task, &error);
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
                   double temperature, int64_t top_k, double top_p, uint64_t seed, int ring,
                   const std::string& layout) {
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
  VqganConfig vc;
  if (st = ReadVqganConfig(vqgan_dir + "/config.json", &vc); !st.ok()) return fail(2, "--vqgan: " + st.message());
  if (ring < 1) return fail(2, "--ring: must be >= 1, got " + std::to_string(ring));
  const std::string out = image.empty() ? video : image;
  if (!image.empty() && !video.empty()) return fail(2, "--image and --video: give one");
  if (!image.empty() && std::filesystem::path(image).extension() != ".png")
    return fail(2, "--image: " + image + " must name a .png file");
  std::vector<int32_t> ids = tok->Encode(prompt), uncond;
  if (tok->bos() >= 0) ids.insert(ids.begin(), tok->bos()), uncond = {tok->bos()};
  if (uncond.empty()) uncond = {ids.front()};
  const int64_t n_frames = image.empty() ? frames : 1;
  // Checked here, before any device starts: the layout fits the model, the options are in range.
  if (st = CheckVisionVocab(c, ModelVisionVocab(c, *tok, vc.num_embeddings)); !st.ok())
    return fail(2, "--vqgan: " + st.message());
  const SamplingConfig sampling{temperature, top_k, top_p, seed};
  if (st = sampling.Validate(); !st.ok()) return fail(2, st.message());
  if (cfg_scale < 0 || cfg_scale > 100) return fail(2, "--cfg-scale: must be in [0, 100], got " + std::to_string(cfg_scale));
  if (!(fps > 0 && fps <= 1000)) return fail(2, "--fps: must be in (0, 1000], got " + std::to_string(fps));
  actors::generate_task task = SamplingTask(checkpoint, ids, sampling, layout);
  task.vision_codes = vc.num_embeddings;
  task.uncond = uncond;
  task.codes_per_frame = vc.codes_per_frame();
  task.frames = n_frames;
  task.cfg_scale = cfg_scale;
  task.vqgan = vqgan_dir;
  task.output = out;
  task.fps = fps;
  std::string error;
  const auto reports = actors::OnLocalRing<actors::generate_report>(ring, /*job=*/5, actors::generate_atom::value, task, &error);
  if (!error.empty()) return fail(1, error);
  const std::vector<int32_t>& codes = reports.front().tokens;  // the same on every rank
  if (int64_t(codes.size()) != n_frames * task.codes_per_frame)
    return fail(1, "the ring returned " + std::to_string(codes.size()) + " codes for " + std::to_string(n_frames) +
                       " frames of " + std::to_string(task.codes_per_frame));
  std::printf("%lld frame%s of %lldx%lld (%lld codes each, a ring of %d, each decoded as it came) -> %s\n",
              (long long)n_frames, n_frames == 1 ? "" : "s", (long long)vc.resolution, (long long)vc.resolution,
              (long long)task.codes_per_frame, ring, out.c_str());
  return 0;
}

}  // namespace rw::cli
