// The tokenizer input path: untrusted text encoded, and untrusted ids decoded and rendered, by the byte
// tokenizer and by a SentencePiece model (the repository's fixture); and untrusted bytes loaded as a
// SentencePiece model (a checkpoint's tokenizer.model), which, when it loads, encodes and decodes too.
// The first byte picks which.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "runtime/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

void RoundTrip(const rw::runtime::Tokenizer& tok, const std::string& text, const uint8_t* data, size_t size) {
  const auto ids = tok.Encode(text);
  for (int32_t id : ids)
    if (id < 0 || id >= tok.vocab_size()) __builtin_trap();  // Encode gives text ids only
  (void)tok.Decode(ids);
  (void)tok.EncodeDocument(text);
  std::vector<int32_t> raw(size / 4);
  if (!raw.empty()) std::memcpy(raw.data(), data, raw.size() * 4);
  (void)tok.Render(raw);  // any id at all: out-of-vocabulary ones are shown as <id>
  for (int32_t id : raw)
    if (id >= 0 && id < tok.vocab_size()) (void)tok.Piece(id);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static std::unique_ptr<rw::runtime::Tokenizer> bytes, spm;
  if (!bytes) {
    if (!rw::runtime::MakeTokenizer("bytes", &bytes).ok() ||
        !rw::runtime::MakeTokenizer(std::string(RW_FIXTURES) + "/spm_tiny/tiny.model", &spm).ok())
      __builtin_trap();
  }
  if (size == 0) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 3) {
    case 0:
      RoundTrip(*bytes, text, data + 1, size - 1);
      break;
    case 1:
      RoundTrip(*spm, text, data + 1, size - 1);
      break;
    case 2: {
      const auto path = rw::fuzz::Scratch() / "tokenizer.model";
      rw::fuzz::WriteFile(path, text);
      std::unique_ptr<rw::runtime::Tokenizer> loaded;
      if (rw::runtime::MakeTokenizer(path.string(), &loaded, "fuzz").ok())
        RoundTrip(*loaded, "ring attention 1M", data + 1, size - 1);
      break;
    }
  }
  return 0;
}
