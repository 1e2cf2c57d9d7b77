#include "runtime/vision_generate.h"

#include <cmath>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

#include "runtime/checkpoint.h"
#include "runtime/media.h"
#include "runtime/vqgan.h"
#include "runtime/ring_decode.h"

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
  return VisionVocab::Appended(tok.vocab_size(), codes);
}

Status GenerateVision(const ModelConfig& c, const VisionGenerateOptions& o, TokenStream& cond, TokenStream* uncond,
                      std::vector<int32_t>* codes, std::vector<int32_t>* tokens) {
  RW_REQUIRE(o.vision.codes >= 1, "vision: no codes");
  RW_RETURN_IF_ERROR(CheckVisionVocab(c, o.vision));
  RW_REQUIRE(o.codes_per_frame >= 1 && o.frames >= 1 && o.frames <= 100000,
             "frames: " << o.frames << " frames of " << o.codes_per_frame << " codes");
  RW_REQUIRE(o.cfg_scale >= 0 && o.cfg_scale <= 100, "cfg_scale: must be in [0, 100], got " << o.cfg_scale);
  RW_REQUIRE(!o.prompt.empty(), "prompt: empty");
  const bool guided = o.cfg_scale != 1.0;
  RW_REQUIRE(!guided || (!o.uncond.empty() && uncond), "cfg_scale: guidance needs an unconditional prompt");
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
  std::vector<float> lc, lu;
  auto feed = [&](int32_t token) -> Status {
    RW_RETURN_IF_ERROR(cond.Step(token, &lc));
    if (guided) RW_RETURN_IF_ERROR(uncond->Step(token, &lu));
    if (tokens) tokens->push_back(token);
    return Status::Ok();
  };
  RW_RETURN_IF_ERROR(cond.Prefill(o.prompt, &lc));
  if (guided) RW_RETURN_IF_ERROR(uncond->Prefill(o.uncond, &lu));
  if (tokens) tokens->clear();
  for (int32_t id : o.vision.Begin()) RW_RETURN_IF_ERROR(feed(id));
  // Codes only: the draw is among the logits of the codebook's ids, [lo, hi), every other id out of the running.
  const int32_t lo = o.vision.Code(0), hi = o.vision.Code(o.vision.codes);
  std::vector<float> mix(size_t(hi - lo));
  uint64_t rng = o.sampling.seed;
  codes->clear();
  for (int64_t f = 0; f < o.frames; ++f) {
    for (int64_t k = 0; k < o.codes_per_frame; ++k) {
      for (int32_t v = lo; v < hi; ++v) {
        const size_t i = size_t(v);
        mix[i - size_t(lo)] = guided ? lu[i] + float(o.cfg_scale) * (lc[i] - lu[i]) : lc[i];
      }
      const int32_t id = lo + Sample(mix, o.sampling, &rng);
      codes->push_back(id - lo);
      RW_RETURN_IF_ERROR(feed(id));
    }
    if (o.on_frame) RW_RETURN_IF_ERROR(o.on_frame(f, codes->data() + f * o.codes_per_frame));
    RW_RETURN_IF_ERROR(feed(f + 1 == o.frames ? o.vision.eov() : o.vision.eof()));
  }
  if (tokens)
    for (int32_t id : o.vision.End()) tokens->push_back(id);
  return Status::Ok();
}

namespace {

// The single-device decoder as a stream: the prompt fed one token at a time.
class DecoderStream : public TokenStream {
 public:
  DecoderStream(const ModelConfig& c, const ParamTable& t, const float* params, kernels::Exec ex)
      : dec_(c, t, params, ex) {}
  Status Prefill(const std::vector<int32_t>& prompt, std::vector<float>* logits) override {
    for (int32_t id : prompt) RW_RETURN_IF_ERROR(dec_.Step(id, logits));
    return Status::Ok();
  }
  Status Step(int32_t token, std::vector<float>* logits) override { return dec_.Step(token, logits); }

 private:
  Decoder dec_;
};

// The ring decoder as a stream: the prompt prefilled over the ring, its KV cache sharded.
class RingStream : public TokenStream {
 public:
  RingStream(Transport& t, const ModelConfig& c, const ParamTable& tb, const float* params, kernels::Exec ex,
             uint64_t tag, LayoutKind kind)
      : dec_(t, c, tb, params, ex, tag), kind_(kind) {}
  Status Prefill(const std::vector<int32_t>& prompt, std::vector<float>* logits) override {
    return dec_.Prefill(prompt, kind_, logits);
  }
  Status Step(int32_t token, std::vector<float>* logits) override { return dec_.Step(token, logits); }

 private:
  RingDecoder dec_;
  LayoutKind kind_;
};

}  // namespace

Status GenerateVision(const ModelConfig& c, const ParamTable& t, const float* params, kernels::Exec ex,
                      const VisionGenerateOptions& o, std::vector<int32_t>* codes, std::vector<int32_t>* tokens) {
  DecoderStream cond(c, t, params, ex), uncond(c, t, params, ex);
  return GenerateVision(c, o, cond, &uncond, codes, tokens);
}

Status GenerateVisionOnRing(Transport& t, const ModelConfig& c, const ParamTable& tb, const float* params,
                            kernels::Exec ex, const VisionGenerateOptions& o, const std::string& layout,
                            std::vector<int32_t>* codes, std::vector<int32_t>* tokens) {
  LayoutKind kind;
  {
    const Status st = ParseLayout(layout, &kind);
    RW_REQUIRE(st.ok(), "--layout: " << st.message());
  }
  // Two sequences on one ring: their messages are told apart by the decoders' tags.
  RingStream cond(t, c, tb, params, ex, /*tag=*/0, kind), uncond(t, c, tb, params, ex, /*tag=*/1, kind);
  return GenerateVision(c, o, cond, &uncond, codes, tokens);
}

namespace {

// Rank 0's frames out: a thread decodes each finished frame with the VQGAN and appends it to the file while
// the ring samples the next; it holds one frame's pixels. Push returns the thread's first error.
class FrameWriter {
 public:
  static Status Start(const VisionOutput& out, int64_t codes_per_frame, int64_t vision_codes, kernels::Exec ex,
                      std::unique_ptr<FrameWriter>* w) {
    std::unique_ptr<FrameWriter> fw(new FrameWriter());
    {
      const Status st = Vqgan::Load(out.vqgan, ex, &fw->vq_);
      RW_REQUIRE(st.ok(), "--vqgan: " << st.message());
    }
    const VqganConfig& vc = fw->vq_->config();
    RW_REQUIRE(vc.num_embeddings == vision_codes && vc.codes_per_frame() == codes_per_frame,
               "--vqgan: " << out.vqgan << " has " << vc.num_embeddings << " codes, " << vc.codes_per_frame()
                           << " a frame; the generation asked for " << vision_codes << " and " << codes_per_frame);
    RW_RETURN_IF_ERROR(MediaWriter::Open(out.path, vc.resolution, out.fps, &fw->media_));
    fw->per_ = codes_per_frame;
    fw->thread_ = std::thread([p = fw.get()] { p->Run(); });
    *w = std::move(fw);
    return Status::Ok();
  }
  ~FrameWriter() {
    Stop();
  }
  Status Push(const int32_t* codes) {
    std::lock_guard<std::mutex> g(mu_);
    if (!error_.ok()) return error_;
    queue_.emplace_back(codes, codes + per_);
    cv_.notify_one();
    return Status::Ok();
  }
  Status Finish() {
    Stop();
    RW_RETURN_IF_ERROR(error_);
    return media_->Close();
  }
  int64_t frames() const { return media_->frames(); }

 private:
  FrameWriter() = default;
  void Stop() {
    {
      std::lock_guard<std::mutex> g(mu_);
      done_ = true;
      cv_.notify_one();
    }
    if (thread_.joinable()) thread_.join();
  }
  void Run() {
    std::vector<float> pixels;
    for (;;) {
      std::vector<int32_t> codes;
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return done_ || !queue_.empty(); });
        if (queue_.empty()) return;
        codes = std::move(queue_.front());
        queue_.pop_front();
      }
      Status st = vq_->Decode(1, codes.data(), &pixels);
      if (st.ok()) st = media_->Add(pixels.data());
      if (!st.ok()) {
        std::lock_guard<std::mutex> g(mu_);
        if (error_.ok()) error_ = st;
        queue_.clear();
        return;
      }
    }
  }
  std::unique_ptr<Vqgan> vq_;
  std::unique_ptr<MediaWriter> media_;
  int64_t per_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::vector<int32_t>> queue_;
  bool done_ = false;
  Status error_;
};

}  // namespace

Status GenerateVisionRank(Transport& t, const std::string& checkpoint_dir, VisionGenerateOptions o,
                          int64_t vision_codes, const std::string& layout, kernels::Exec ex, const VisionOutput* out,
                          std::vector<int32_t>* codes) {
  ModelConfig c;
  RW_RETURN_IF_ERROR(ReadHfConfig(checkpoint_dir + "/config.json", &c));
  std::unique_ptr<Tokenizer> tok;
  RW_RETURN_IF_ERROR(CheckpointTokenizer(checkpoint_dir, c, &tok));
  o.vision = ModelVisionVocab(c, *tok, vision_codes);  // GenerateVision checks it fits the model
  const ParamTable table(c);
  std::vector<float> params(table.total());
  RW_RETURN_IF_ERROR(LoadWeights(checkpoint_dir, table, params.data()));
  std::unique_ptr<FrameWriter> writer;
  if (out && t.rank() == 0) {
    RW_RETURN_IF_ERROR(FrameWriter::Start(*out, o.codes_per_frame, vision_codes, ex, &writer));
    o.on_frame = [&](int64_t, const int32_t* frame) { return writer->Push(frame); };
  }
  RW_RETURN_IF_ERROR(GenerateVisionOnRing(t, c, table, params.data(), ex, o, layout, codes, nullptr));
  return writer ? writer->Finish() : Status::Ok();
}

}  // namespace rw::runtime
