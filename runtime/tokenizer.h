// Tokenizers: the built-in byte tokenizer, or a SentencePiece model (the LLaMA tokenizers ship as .model
// files). One interface serves `ringworld data prepare`, the synthetic generators (data.tokenizer), and
// generate/needle, which read the tokenizer a checkpoint carries (tokenizer.model, as in Hugging Face
// LLaMA directories; none: bytes). Vision tokens (VQGAN codes) go after the text vocabulary, with
// LWM's four markers after them: <vision> frame <eof> frame ... frame <eov> </vision>.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/common.h"

namespace rw::runtime {

using kernels::Status;

// The byte tokenizer's ids: 0..255 are bytes, then BOS and EOS. 258 is reserved (it was padding; padded
// rows now carry id 0 whatever the tokenizer), so byte models keep a vocabulary of 259.
struct ByteTokenizer {
  static constexpr int32_t kBos = 256, kEos = 257, kVocab = 259;
};

// The file a checkpoint (or a prepared dataset) keeps its SentencePiece model in.
inline constexpr char kTokenizerFile[] = "tokenizer.model";

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int32_t> Encode(const std::string& text) const = 0;  // pieces only, no BOS/EOS
  virtual std::string Decode(const std::vector<int32_t>& ids) const = 0;
  virtual int32_t bos() const = 0;  // -1: the model has none
  virtual int32_t eos() const = 0;
  virtual int32_t unk() const = 0;
  virtual std::string Piece(int32_t id) const = 0;  // the vocabulary entry of a text id ("<s>", "▁the")
  virtual int64_t vocab_size() const = 0;  // text ids are [0, vocab_size)
  virtual std::string name() const = 0;    // "bytes" or the model's path, for meta.json
  // The SentencePiece model's serialized bytes (what tokenizer.model holds); empty for bytes.
  virtual std::string Serialized() const = 0;
  // BOS + Encode(text) + EOS (each where the tokenizer has one): a document.
  std::vector<int32_t> EncodeDocument(const std::string& text) const;
  // Every id shown: runs of text ids decoded, the others (BOS, EOS, vision and any id past the text
  // vocabulary) as <id>. What generate prints.
  std::string Render(const std::vector<int32_t>& ids) const;
};

// "bytes" or the path of a SentencePiece .model; errors name `field` (the option or job key).
Status MakeTokenizer(const std::string& spec, std::unique_ptr<Tokenizer>* out,
                     const std::string& field = "--tokenizer");

// The name of pre-tokenized ids that no tokenizer describes (data prepare --vocab-size without --tokenizer).
inline constexpr char kNoTokenizer[] = "none";
// Ids of a vocabulary of `vocab` with no text: nothing to encode, no BOS/EOS, every id rendered as <id>.
std::unique_ptr<Tokenizer> IdsTokenizer(int64_t vocab);

// The tokenizer of a checkpoint or dataset directory: its tokenizer.model; none when its meta.json says
// "tokenizer": "none" or its config.json "ringworld_tokenizer": "none" (pre-tokenized ids); else bytes.
Status DirectoryTokenizer(const std::string& dir, std::unique_ptr<Tokenizer>* out);

// The ids of vision tokens, laid out after a text vocabulary of `text_vocab` ids.
struct VisionVocab {
  int64_t text_vocab = 0;
  int64_t codes = 8192;  // VQGAN codebook size (LWM: 8192)
  int32_t Code(int64_t c) const { return int32_t(text_vocab + c); }
  int32_t begin() const { return int32_t(text_vocab + codes); }      // <vision>
  int32_t end() const { return int32_t(text_vocab + codes + 1); }    // </vision>
  int32_t eof() const { return int32_t(text_vocab + codes + 2); }    // end of a frame
  int32_t eov() const { return int32_t(text_vocab + codes + 3); }    // end of the last frame
  int64_t total() const { return text_vocab + codes + 4; }
  // <vision> f0 <eof> f1 <eof> ... f_last <eov> </vision>; the error names the frame and code.
  Status Encode(const std::vector<std::vector<int64_t>>& frames, std::vector<int32_t>* out) const;
};

}  // namespace rw::runtime
