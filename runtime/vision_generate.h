// Vision generation (issue 15, point 4): a model trained on vision records (runtime/dataset.h: text, then
// <vision> frame <eof> ... frame <eov> </vision>) continues a text prompt with frames of VQGAN codes. Every
// position inside a frame is sampled among the codes only; after a frame's codes <eof> (or <eov> after the
// last frame) is fed, not sampled, so every frame has exactly its grid of codes. Classifier-free guidance as
// LWM's vision generation does it: a second, unconditional sequence (the prompt without its text) runs
// beside the conditional one, both fed the same sampled tokens, and the codes are sampled from
// uncond + cfg_scale * (cond - uncond) (cfg_scale 1: the conditional logits alone, one sequence).
// Single device (the KV cache of runtime/generate.h's Decoder): a few frames of a small model, for
// inspection and smoke tests; long videos go through the ring decoder in a later part.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/generate.h"
#include "runtime/model.h"
#include "runtime/tokenizer.h"

namespace rw::runtime {

struct VisionGenerateOptions {
  std::vector<int32_t> prompt;  // the conditional prompt (BOS + text); <vision> (its ids) is appended here
  std::vector<int32_t> uncond;  // the unconditional prompt (BOS), when cfg_scale != 1
  VisionVocab vision;           // where the codes and markers sit in the model's vocabulary
  int64_t codes_per_frame = 256;
  int64_t frames = 1;
  double cfg_scale = 1.0;
  SamplingConfig sampling;
};

// The layout a model was trained in: LWM's when it has a vision vocabulary (its ids are two vocabularies),
// else the appended one over the tokenizer's ids.
VisionVocab ModelVisionVocab(const ModelConfig& c, const Tokenizer& tok, int64_t codes);
// Whether model `c` holds every id of layout `v` as that layout means it.
Status CheckVisionVocab(const ModelConfig& c, const VisionVocab& v);

// `codes`: frames x codes_per_frame codebook indices (0 .. vision.codes - 1); `tokens` (optional): the
// conditional sequence after the prompt (<vision>, codes, <eof>/<eov>, </vision>).
Status GenerateVision(const ModelConfig& c, const ParamTable& t, const float* params, kernels::Exec ex,
                      const VisionGenerateOptions& o, std::vector<int32_t>* codes,
                      std::vector<int32_t>* tokens = nullptr);

}  // namespace rw::runtime
