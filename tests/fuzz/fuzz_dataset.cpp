// The token-dataset reader on an untrusted directory: the input is meta.json, index.bin, tokens.bin and
// modality.bin separated by "\n--part--\n". A dataset that opens is read whole: every document, and every
// packed window at a short sequence length.
#include <cstddef>
#include <cstdint>

#include "runtime/dataset.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = rw::fuzz::Split(data, size, "\n--part--\n", 4);
  const auto dir = rw::fuzz::Scratch() / "dataset";
  std::filesystem::create_directories(dir);
  const char* names[] = {"meta.json", "index.bin", "tokens.bin", "modality.bin"};
  for (int i = 0; i < 4; ++i) rw::fuzz::WriteFile(dir / names[i], parts[i]);
  rw::runtime::Dataset d;
  if (rw::runtime::Dataset::Open(dir.string(), &d).ok()) {
    volatile int64_t sum = 0;
    for (int64_t i = 0; i < d.documents(); ++i)
      for (int64_t k = 0; k < d.doc_len(i); ++k) sum = sum + d.doc_tokens(i)[k] + d.doc_modality(i)[k];
    for (const auto& seq : d.PackAll(8)) sum = sum + int64_t(seq.tokens.size());
  }
  return 0;
}
