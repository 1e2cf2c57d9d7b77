#include "runtime/needle.h"

#include <nlohmann/json.hpp>

#include "runtime/checkpoint.h"
#include "runtime/data.h"
#include "runtime/generate.h"
#include "runtime/ring_decode.h"
#include "runtime/rng.h"

namespace rw::runtime {

Status NeedleConfig::Validate() const {
  RW_REQUIRE(!lengths.empty(), "--lengths: at least one context length");
  for (int64_t l : lengths) RW_REQUIRE(l >= 16 && l <= (int64_t(1) << 24), "--lengths: " << l << " is not in [16, 2^24]");
  RW_REQUIRE(!depths.empty(), "--depths: at least one depth");
  for (double d : depths) RW_REQUIRE(d >= 0 && d <= 1, "--depths: " << d << " is not in [0, 1]");
  RW_REQUIRE(trials >= 1 && trials <= 10000, "--trials: must be in [1, 10000], got " << trials);
  LayoutKind kind;
  Status st = ParseLayout(layout, &kind);
  RW_REQUIRE(st.ok(), "--layout: " << st.message());
  return Status::Ok();
}

std::string NeedleResult::ToJson() const {
  nlohmann::ordered_json j;
  j["lengths"] = lengths;
  j["depths"] = depths;
  j["accuracy"] = accuracy;
  double total = 0;
  size_t cells = 0;
  for (const auto& row : accuracy)
    for (double a : row) total += a, ++cells;
  j["mean_accuracy"] = cells ? total / double(cells) : 0.0;
  nlohmann::ordered_json s = nlohmann::ordered_json::array();
  for (const auto& x : samples)
    s.push_back({{"length", x.length}, {"depth", x.depth}, {"expected", x.expected}, {"got", x.got}});
  j["samples"] = s;
  return j.dump(2) + "\n";
}

Status NeedleRank(Transport& t, const std::string& checkpoint_dir, const NeedleConfig& cfg, NeedleResult* out) {
  RW_RETURN_IF_ERROR(cfg.Validate());
  ModelConfig model;
  RW_RETURN_IF_ERROR(ReadHfConfig(checkpoint_dir + "/config.json", &model));
  const ParamTable table(model);
  std::vector<float> params(table.total());
  RW_RETURN_IF_ERROR(LoadWeights(checkpoint_dir, table, params.data()));
  std::unique_ptr<Tokenizer> tok;  // the checkpoint's tokenizer.model, or bytes
  RW_RETURN_IF_ERROR(CheckpointTokenizer(checkpoint_dir, model, &tok));
  RW_REQUIRE(tok->name() != kNoTokenizer, checkpoint_dir << ": no tokenizer (trained on pre-tokenized ids): needle "
                                                         "documents are text");
  LayoutKind kind;
  RW_RETURN_IF_ERROR(ParseLayout(cfg.layout, &kind));
  *out = NeedleResult{};
  out->lengths = cfg.lengths;
  out->depths = cfg.depths;
  uint64_t doc = 0;
  for (int64_t length : cfg.lengths) {
    std::vector<double> row;
    for (double depth : cfg.depths) {
      int64_t correct = 0;
      for (int64_t trial = 0; trial < cfg.trials; ++trial) {
        const NeedleDocument d = MakeNeedle(*tok, Mix(cfg.seed * 0x9E3779B97F4A7C15ull + ++doc), length, depth);
        RingDecoder dec(t, model, table, params.data(), kernels::Exec{cfg.device, cfg.num_threads}, /*job_tag=*/doc);
        std::vector<float> logits;
        RW_RETURN_IF_ERROR(dec.Prefill(d.prompt, kind, &logits));
        std::vector<int32_t> answer;
        for (size_t i = 0; i < d.answer.size(); ++i) {
          // The answer is text: with a vision vocabulary, the argmax of lm_head's logits (the text ids) only.
          const auto text_end = logits.begin() + std::ptrdiff_t(model.vocab_size);
          const int32_t next = int32_t(std::max_element(logits.begin(), text_end) - logits.begin());
          answer.push_back(next);
          if (i + 1 < d.answer.size()) RW_RETURN_IF_ERROR(dec.Step(next, &logits));
        }
        correct += answer == d.answer;
        out->samples.push_back({length, depth, d.digits, tok->Decode(answer)});
      }
      row.push_back(double(correct) / double(cfg.trials));
    }
    out->accuracy.push_back(row);
  }
  return Status::Ok();
}

}  // namespace rw::runtime
