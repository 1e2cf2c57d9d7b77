// Training data: byte-level tokens, synthetic corpora, and the loader that packs documents into the
// sequences of a stage.
//
// The global batch of step k is a function of (seed, k, seq_len, batch) only, never of the ring size, so
// a run that changes its ring continues on the same data. A sequence is documents packed end to end:
// segment ids mark the documents (attention stays inside one), positions restart at each document, and a
// token's target is the next token of the same document (none at a document's end: no target crosses a
// boundary). Tokens left over at the end of a sequence are padding (segment -1, no target).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/layout.h"
#include "runtime/model.h"

namespace rw::runtime {

// Byte-level tokenizer: ids 0..255 are bytes; then the specials.
struct ByteTokenizer {
  static constexpr int32_t kBos = 256, kEos = 257, kPad = 258, kVocab = 259;
  static std::vector<int32_t> Encode(const std::string& text);  // BOS + bytes + EOS
  static std::string Decode(const std::vector<int32_t>& ids);    // bytes only
};

struct DataConfig {
  std::string source = "synthetic";  // synthetic | files (a directory made by `ringworld data prepare`)
  std::string path;                  // files: the dataset directory
  std::string task = "copy";         // copy | needle (see NeedleDocument)
  int64_t min_len = 4, max_len = 24;  // copy: of the copied string; needle: of the haystack, in tokens
  double answer_weight = 1;           // needle: loss weight of the answer's digits (the rest weigh 1)
  Status Validate() const;
};

// LWM's needle retrieval, byte tokens: filler text with "The special magic {city} number is: {7 digits}."
// hidden at `depth` (0 = start, 1 = end), then the question "What is the special magic {city} number?"
// and the answer. `length` is the document's length in tokens (the answer included).
struct NeedleDocument {
  std::string prompt;  // everything up to and including "The special magic {city} number is: "
  std::string answer;  // the 7 digits
};
NeedleDocument MakeNeedle(uint64_t seed, int64_t length, double depth);

// One packed sequence of the global batch.
struct PackedSequence {
  std::vector<int32_t> tokens, targets, segments;
  std::vector<int64_t> positions;
  std::vector<float> weights;    // 1 where a target exists (before loss weighting), else 0
  std::vector<uint8_t> modality;  // of each position's target: 0 text, 1 vision
};

// How the loss averages over tokens (LWM: the text and vision means, weighted 0.5 each).
struct LossConfig {
  std::string weighting = "per_token";  // per_token | per_modality
  double text_weight = 0.5, vision_weight = 0.5;
  Status Validate() const;
};

// Turns a global batch's 0/1 weights into the loss weights, and returns the factor that makes
// scale * sum_i w_i ce_i the loss: per_token, the mean over predicted tokens; per_modality,
// text_weight * (text mean) + vision_weight * (vision mean), renormalized over the modalities present.
// Every rank computes it from the whole global batch, so the normalization is global across the ring.
Status ApplyLossWeighting(const LossConfig& c, std::vector<PackedSequence>& batch, double* scale);

// The global batch of `step`: `batch` sequences of `seq_len` tokens.
std::vector<PackedSequence> GlobalBatch(const DataConfig& d, uint64_t seed, int64_t step, int64_t seq_len,
                                        int64_t batch);

// This rank's rows of one sequence under the layout.
ShardBatch ShardOf(const PackedSequence& seq, const Layout& layout, int rank);

}  // namespace rw::runtime
