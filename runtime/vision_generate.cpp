#include "runtime/vision_generate.h"

#include <cmath>

namespace rw::runtime {

Status CheckVisionVocab(const ModelConfig& c, const VisionVocab& v) {
  if (v.layout == VisionLayout::kLwm) {
    RW_REQUIRE(c.vocab_size == v.text_vocab && c.vision_vocab_size >= v.min_vision_vocab(),
               "vision: LWM's layout of " << v.codes << " codes needs a model of " << v.text_vocab
                                          << " text ids and a vision vocabulary of at least " << v.min_vision_vocab()
                                          << "; this one has " << c.vocab_size << " and " << c.vision_vocab_size);
    return Status::Ok();
  }
  RW_REQUIRE(c.vision_vocab_size == 0 && v.total() <= c.vocab_size,
             "vision: the model's vocabulary of " << c.vocab_size << " does not hold a text vocabulary of "
                                                  << v.text_vocab << ", " << v.codes << " codes and 4 markers ("
                                                  << v.total() << " ids): was it trained on this VQGAN's codes?");
  return Status::Ok();
}

VisionVocab ModelVisionVocab(const ModelConfig& c, const Tokenizer& tok, int64_t codes) {
  if (c.vision_vocab_size > 0) return VisionVocab::Lwm(tok, codes);
  return VisionVocab{tok.vocab_size(), codes};
}

Status GenerateVision(const ModelConfig& c, const ParamTable& t, const float* params, kernels::Exec ex,
                      const VisionGenerateOptions& o, std::vector<int32_t>* codes, std::vector<int32_t>* tokens) {
  RW_REQUIRE(o.vision.codes >= 1, "vision: no codes");
  RW_RETURN_IF_ERROR(CheckVisionVocab(c, o.vision));
  RW_REQUIRE(o.codes_per_frame >= 1 && o.frames >= 1 && o.frames <= 100000,
             "frames: " << o.frames << " frames of " << o.codes_per_frame << " codes");
  RW_REQUIRE(o.cfg_scale >= 0 && o.cfg_scale <= 100, "cfg_scale: must be in [0, 100], got " << o.cfg_scale);
  RW_REQUIRE(!o.prompt.empty(), "prompt: empty");
  const bool guided = o.cfg_scale != 1.0;
  RW_REQUIRE(!guided || !o.uncond.empty(), "cfg_scale: guidance needs an unconditional prompt");
  const int64_t need = int64_t(o.prompt.size()) + o.frames * (o.codes_per_frame + 1) +
                       int64_t(o.vision.Begin().size() + o.vision.End().size());
  RW_REQUIRE(need <= c.max_position_embeddings,
             "frames: the prompt and " << o.frames << " frames are " << need << " positions, past the model's "
                                       << c.max_position_embeddings);
  RW_RETURN_IF_ERROR(o.sampling.Validate());
  for (const auto* p : {&o.prompt, &o.uncond})
    for (size_t i = 0; i < p->size(); ++i)
      RW_REQUIRE((*p)[i] >= 0 && (*p)[i] < c.total_vocab(), "prompt: id " << (*p)[i] << " (item " << i
                                                                        << ") is outside the vocabulary");
  Decoder cond(c, t, params, ex), uncond(c, t, params, ex);
  std::vector<float> lc, lu, mix(size_t(c.total_vocab()));
  auto feed = [&](int32_t token) -> Status {
    RW_RETURN_IF_ERROR(cond.Step(token, &lc));
    if (guided) RW_RETURN_IF_ERROR(uncond.Step(token, &lu));
    if (tokens) tokens->push_back(token);
    return Status::Ok();
  };
  for (int32_t id : o.prompt) RW_RETURN_IF_ERROR(cond.Step(id, &lc));
  if (guided)
    for (int32_t id : o.uncond) RW_RETURN_IF_ERROR(uncond.Step(id, &lu));
  if (tokens) tokens->clear();
  for (int32_t id : o.vision.Begin()) RW_RETURN_IF_ERROR(feed(id));
  const int32_t lo = o.vision.Code(0), hi = o.vision.Code(o.vision.codes);
  uint64_t rng = o.sampling.seed;
  codes->clear();
  for (int64_t f = 0; f < o.frames; ++f) {
    for (int64_t k = 0; k < o.codes_per_frame; ++k) {
      // Codes only: every other id is out of the running.
      for (int32_t v = 0; v < int32_t(c.total_vocab()); ++v)
        mix[size_t(v)] = v < lo || v >= hi ? -INFINITY
                         : guided ? lu[size_t(v)] + float(o.cfg_scale) * (lc[size_t(v)] - lu[size_t(v)])
                                  : lc[size_t(v)];
      const int32_t id = Sample(mix, o.sampling, &rng);
      RW_REQUIRE(id >= lo && id < hi, "sampling chose id " << id << " outside the codes");
      codes->push_back(id - lo);
      RW_RETURN_IF_ERROR(feed(id));
    }
    RW_RETURN_IF_ERROR(feed(f + 1 == o.frames ? o.vision.eov() : o.vision.eof()));
  }
  if (tokens)
    for (int32_t id : o.vision.End()) tokens->push_back(id);
  return Status::Ok();
}

}  // namespace rw::runtime
