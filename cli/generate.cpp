// `ringworld generate`: continues a prompt, the prompt prefilled over a ring of device actors in this process.
#include <cstdio>

#include "cli/commands.h"
#include "cli/local_ring.h"
#include "runtime/checkpoint.h"
#include "runtime/generate.h"
#include "runtime/tokenizer.h"

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

}  // namespace rw::cli
