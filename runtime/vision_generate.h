// Vision generation (issue 15, point 4): a model trained on vision records (runtime/dataset.h: text, then
// <vision> frame <eof> ... frame <eov> </vision>) continues a text prompt with frames of VQGAN codes. Every
// position inside a frame is sampled among the codes only; after a frame's codes <eof> (or <eov> after the
// last frame) is fed, not sampled, so every frame has exactly its grid of codes. Classifier-free guidance as
// LWM's vision generation does it: a second, unconditional sequence (the prompt without its text) runs
// beside the conditional one, both fed the same sampled tokens, and the codes are sampled from
// uncond + cfg_scale * (cond - uncond) (cfg_scale 1: the conditional logits alone, one sequence).
// One loop over two token streams: the single-device Decoder (the reference), or the ring decoder
// (runtime/ring_decode.h: the prompt prefilled over the ring, the KV cache sharded over its devices; every
// rank samples the same codes from the same logits bits), which `ringworld generate --vqgan` runs, rank 0
// decoding and writing each frame as soon as its codes are sampled (VisionOutput).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runtime/generate.h"
#include "runtime/model.h"
#include "runtime/tokenizer.h"
#include "runtime/transport.h"

namespace rw::runtime {

struct VisionGenerateOptions {
  std::vector<int32_t> prompt;  // the conditional prompt (BOS + text); <vision> (its ids) is appended here
  std::vector<int32_t> uncond;  // the unconditional prompt (BOS), when cfg_scale != 1
  VisionVocab vision;           // where the codes and markers sit in the model's vocabulary
  int64_t codes_per_frame = 256;
  int64_t frames = 1;
  double cfg_scale = 1.0;
  SamplingConfig sampling;
  // Called with each frame's codes as soon as they are sampled (before the next frame's); an error ends the
  // generation.
  std::function<Status(int64_t frame, const int32_t* codes)> on_frame;
};

// Where a ring's generated frames go: rank 0 decodes each with the VQGAN in `vqgan` as soon as its codes are
// sampled (a thread beside the ring) and appends it to `path` (a PNG of one frame, or a video at fps).
struct VisionOutput {
  std::string vqgan, path;
  double fps = 8;
};

// A sequence the generation runs: Prefill feeds a prompt, Step one token; each leaves the logits after it
// (ModelConfig::total_vocab of them).
class TokenStream {
 public:
  virtual ~TokenStream() = default;
  virtual Status Prefill(const std::vector<int32_t>& prompt, std::vector<float>* logits) = 0;
  virtual Status Step(int32_t token, std::vector<float>* logits) = 0;
};

// The layout a model was trained in: LWM's when it has a vision vocabulary (its ids are two vocabularies),
// else the appended one over the tokenizer's ids.
VisionVocab ModelVisionVocab(const ModelConfig& c, const Tokenizer& tok, int64_t codes);
// Whether model `c` holds every id of layout `v` as that layout means it.
Status CheckVisionVocab(const ModelConfig& c, const VisionVocab& v);

// `codes`: frames x codes_per_frame codebook indices (0 .. vision.codes - 1); `tokens` (optional): the
// conditional sequence after the prompt (<vision>, codes, <eof>/<eov>, </vision>).
// `uncond` may be null when cfg_scale is 1.
Status GenerateVision(const ModelConfig& c, const VisionGenerateOptions& o, TokenStream& cond, TokenStream* uncond,
                      std::vector<int32_t>* codes, std::vector<int32_t>* tokens = nullptr);
// On one device, with Decoders.
Status GenerateVision(const ModelConfig& c, const ParamTable& t, const float* params, kernels::Exec ex,
                      const VisionGenerateOptions& o, std::vector<int32_t>* codes,
                      std::vector<int32_t>* tokens = nullptr);
// On this rank's ring (every rank calls it with the same options), prompts laid out with `layout`.
Status GenerateVisionOnRing(Transport& t, const ModelConfig& c, const ParamTable& tb, const float* params,
                            kernels::Exec ex, const VisionGenerateOptions& o, const std::string& layout,
                            std::vector<int32_t>* codes, std::vector<int32_t>* tokens = nullptr);
// What a device of `ringworld generate --vqgan` runs: loads the checkpoint (its config, tokenizer and
// weights), lays vision out as the model was trained (ModelVisionVocab over a codebook of vision_codes; `o`'s
// own vision is replaced) and generates on the ring; with `out`, rank 0 writes the frames as they come.
Status GenerateVisionRank(Transport& t, const std::string& checkpoint_dir, VisionGenerateOptions o,
                          int64_t vision_codes, const std::string& layout, kernels::Exec ex, const VisionOutput* out,
                          std::vector<int32_t>* codes);

}  // namespace rw::runtime
