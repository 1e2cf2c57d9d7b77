// `ringworld eval`, `generate`, `needle` (each on a ring of device actors in this process) and `data prepare`.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "actors/device_actor.h"
#include "cli/heatmap.h"
#include "cli/train.h"
#include "runtime/checkpoint.h"
#include "runtime/dataset.h"
#include "runtime/generate.h"
#include "runtime/needle.h"
#include "runtime/tokenizer.h"

namespace rw::cli {
namespace {

// Runs `task` on a ring of `ring` device actors in this process (in-process transport) and returns every
// rank's report; when a rank fails the others are aborted and *error says which failure came first.
template <class Report, class Atom, class Task>
std::vector<Report> OnLocalRing(int ring, uint64_t job, Atom atom, const Task& task, std::string* error) {
  actors::SystemConfig cfg;
  caf::actor_system sys{cfg};
  std::vector<actors::device_actor> devices;
  for (int r = 0; r < ring; ++r) devices.push_back(actors::SpawnDevice(sys, r));
  std::vector<Report> reports;
  caf::scoped_actor self{sys};
  const kernels::Status st = actors::FormRing(sys, devices, job, /*epoch=*/1, "inproc");
  if (!st.ok()) {
    *error = st.message();
  } else {
    for (auto& d : devices) self->send(d, atom, task);
    for (int r = 0; r < ring; ++r)
      self->receive([&](const Report& rep) {
        if (!rep.ok && error->empty()) {
          *error = rep.error;
          for (auto& d : devices) self->send(d, actors::abort_atom::value, std::string("a rank failed"));
        }
        reports.push_back(rep);
      });
  }
  for (auto& d : devices) self->send_exit(d, caf::exit_reason::user_shutdown);
  return reports;
}

}  // namespace

int Eval(const std::string& checkpoint, const std::string& data, int ring, const std::string& layout, int64_t seq_len) {
  if (ring < 1) {
    std::fprintf(stderr, "ringworld eval: --ring: must be >= 1, got %d\n", ring);
    return 2;
  }
  if (!std::ifstream(checkpoint + "/config.json").good()) {
    std::fprintf(stderr, "ringworld eval: --checkpoint: %s has no config.json\n", checkpoint.c_str());
    return 2;
  }
  if (!std::ifstream(data + "/meta.json").good()) {
    std::fprintf(stderr, "ringworld eval: --data: %s is not a prepared dataset (run ringworld data prepare)\n",
                 data.c_str());
    return 2;
  }
  std::string error;
  const auto reports = OnLocalRing<actors::eval_report>(ring, /*job=*/2, actors::eval_atom::value,
                                                        actors::eval_task{1, checkpoint, data, seq_len, layout}, &error);
  if (!error.empty()) {
    std::fprintf(stderr, "ringworld eval: %s\n", error.c_str());
    return 1;
  }
  const actors::eval_report& result = reports.front();  // every rank has the same result
  std::printf("{\"loss\": %.6f, \"perplexity\": %.4f, \"tokens\": %lld}\n", result.loss, result.perplexity,
              (long long)result.tokens);
  return 0;
}

int DataPrepare(const std::vector<std::string>& inputs, const std::string& output, const std::string& tokenizer,
                int64_t vision_codes, bool skip_bad, int64_t vocab_size) {
  runtime::PrepareOptions opt{inputs, output, tokenizer, vision_codes, skip_bad, vocab_size};
  runtime::PrepareReport rep;
  auto st = runtime::PrepareDataset(opt, &rep);
  if (!st.ok()) {
    std::fprintf(stderr, "ringworld data prepare: %s\n", st.message().c_str());
    return 2;
  }
  std::printf("{\"documents\": %lld, \"tokens\": %lld, \"skipped\": %lld, \"output\": \"%s\"}\n",
              (long long)rep.documents, (long long)rep.tokens, (long long)rep.skipped, output.c_str());
  return 0;
}

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

}  // namespace rw::cli

namespace rw::cli {

int Needle(const std::string& checkpoint, const std::vector<int64_t>& lengths, const std::vector<double>& depths,
           int64_t trials, int ring, const std::string& layout, const std::string& output, uint64_t seed) {
  runtime::NeedleConfig cfg;
  cfg.lengths = lengths;
  cfg.depths = depths;
  cfg.trials = trials;
  cfg.layout = layout;
  cfg.seed = seed;
  kernels::Status st = cfg.Validate();
  if (!st.ok() || ring < 1) {
    std::fprintf(stderr, "ringworld needle: %s\n", ring < 1 ? "--ring: must be >= 1" : st.message().c_str());
    return 2;
  }
  if (!std::ifstream(checkpoint + "/config.json").good()) {
    std::fprintf(stderr, "ringworld needle: --checkpoint: %s has no config.json\n", checkpoint.c_str());
    return 2;
  }
  std::error_code ec;
  std::filesystem::create_directories(output, ec);
  if (ec) {
    std::fprintf(stderr, "ringworld needle: --output: cannot create %s: %s\n", output.c_str(), ec.message().c_str());
    return 2;
  }
  std::string error, json;
  const auto reports = OnLocalRing<actors::needle_report>(
      ring, /*job=*/3, actors::needle_atom::value,
      actors::needle_task{1, checkpoint, lengths, depths, trials, seed, layout}, &error);
  if (!error.empty()) {
    std::fprintf(stderr, "ringworld needle: %s\n", error.c_str());
    return 1;
  }
  for (const auto& rep : reports)
    if (rep.rank == 0) json = rep.json;
  const auto j = nlohmann::json::parse(json);
  const std::string json_path = output + "/needle.json", png_path = output + "/needle.png";
  std::ofstream(json_path) << json;
  st = WriteHeatmapPng(png_path, lengths, depths, j["accuracy"].get<std::vector<std::vector<double>>>());
  if (!st.ok()) {
    std::fprintf(stderr, "ringworld needle: %s\n", st.message().c_str());
    return 1;
  }
  std::printf("needle retrieval, %lld trials per cell, ring of %d (%s): accuracy by context length x depth\n",
              (long long)trials, ring, layout.c_str());
  std::printf("%10s", "depth");
  for (int64_t l : lengths) std::printf(" %7lld", (long long)l);
  std::printf("\n");
  for (size_t di = 0; di < depths.size(); ++di) {
    std::printf("%9.0f%%", depths[di] * 100);
    for (size_t li = 0; li < lengths.size(); ++li) std::printf(" %7.2f", j["accuracy"][li][di].get<double>());
    std::printf("\n");
  }
  std::printf("mean accuracy %.3f; %s, %s\n", j["mean_accuracy"].get<double>(), json_path.c_str(), png_path.c_str());
  return 0;
}

}  // namespace rw::cli
