// `ringworld data prepare`: text and JSONL files (with images and videos through a VQGAN) into a token dataset.
#include <cstdio>

#include "cli/commands.h"
#include "runtime/dataset.h"

namespace rw::cli {

int DataPrepare(const std::vector<std::string>& inputs, const std::string& output, const std::string& tokenizer,
                int64_t vision_codes, bool skip_bad, int64_t vocab_size, const std::string& vqgan,
                const std::string& vision_layout) {
  runtime::PrepareOptions opt;
  opt.inputs = inputs;
  opt.output = output;
  opt.tokenizer = tokenizer;
  opt.vision_codes = vision_codes;
  opt.skip_bad = skip_bad;
  opt.vocab_size = vocab_size;
  opt.vqgan = vqgan;
  opt.vision_layout = vision_layout;
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

}  // namespace rw::cli
