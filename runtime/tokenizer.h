// Tokenizers: the built-in byte tokenizer, or a SentencePiece model (the LLaMA tokenizers ship as .model
// files). One interface serves `ringworld data prepare`, the synthetic generators (data.tokenizer), and
// generate/needle, which read the tokenizer a checkpoint carries (tokenizer.model, as in Hugging Face
// LLaMA directories; none: bytes). Vision tokens (VQGAN codes) go after the text vocabulary, as
// <vision> frame <eof> frame ... frame <eov> </vision>, in one of two layouts (VisionLayout).
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

// How vision tokens sit among the model's ids (docs/ARCHITECTURE.md, "Token layout", has the table). Both
// put code c at text_vocab + c and write a frame as its codes and one marker:
//   kAppended  one vocabulary: the codes, then four marker ids <vision>, </vision>, <eof>, <eov>; every id of
//              a vision record is marked vision (modality 1). A model of vocab_size >= total() reads it.
//   kLwm       LWM's: a second vocabulary of codes, <eof> = codes (8192), <eov> = codes + 1 (8193), placed at
//              text_vocab + v in the model's id space (ModelConfig::vision_vocab_size >= codes + 2); <vision>
//              and </vision> are text, the tokenizer's encoding of those strings (as LWM's data.py writes
//              them), marked text. The codes and markers are marked vision.
enum class VisionLayout { kAppended, kLwm };
Status ParseVisionLayout(const std::string& name, VisionLayout* out);  // "appended" | "lwm"
const char* VisionLayoutName(VisionLayout l);

struct VisionVocab {
  int64_t text_vocab = 0;
  int64_t codes = 8192;  // VQGAN codebook size (LWM: 8192)
  VisionLayout layout = VisionLayout::kAppended;
  std::vector<int32_t> lwm_begin, lwm_end;  // kLwm: the text ids of "<vision>" and "</vision>"
  // kAppended's layout after `text_vocab` ids; kLwm's over a tokenizer (it encodes the two tags).
  static VisionVocab Appended(int64_t text_vocab, int64_t codes);
  static VisionVocab Lwm(const Tokenizer& tok, int64_t codes);
  int32_t Code(int64_t c) const { return int32_t(text_vocab + c); }
  int32_t eof() const { return int32_t(text_vocab + codes + (layout == VisionLayout::kLwm ? 0 : 2)); }
  int32_t eov() const { return int32_t(text_vocab + codes + (layout == VisionLayout::kLwm ? 1 : 3)); }
  std::vector<int32_t> Begin() const;  // <vision>
  std::vector<int32_t> End() const;    // </vision>
  // Past the last id the layout uses (a model's total_vocab must reach it).
  int64_t total() const { return text_vocab + codes + (layout == VisionLayout::kLwm ? 2 : 4); }
  // The vision vocabulary a kLwm model needs at least (LWM pads 8194 to 8448).
  int64_t min_vision_vocab() const { return codes + 2; }
  // <vision> f0 <eof> f1 <eof> ... f_last <eov> </vision> into `out`, each id's modality into `modality`
  // (0 text, 1 vision); the error names the frame and code.
  Status Encode(const std::vector<std::vector<int64_t>>& frames, std::vector<int32_t>* out,
                std::vector<uint8_t>* modality) const;
};

}  // namespace rw::runtime
