// Training data: synthetic corpora (in any tokenizer) and the packing of documents into the sequences of
// a stage.
//
// The global batch of step k is a function of (data config, seed, k, seq_len, batch) only, never of the
// ring size, so a run that changes its ring continues on the same data. A sequence is windows of documents
// packed end to end: segment ids mark the windows (attention stays inside one), positions restart at each
// window, and every position of a window has a target, the next token of its document, as in a Hugging
// Face training loop that is given L + 1 tokens for L positions (no target crosses a document boundary: a
// document of n tokens gives n - 1 positions, its last token is only a target). Positions left over at the
// end of a sequence are padding (id 0, segment -1, no target).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/layout.h"
#include "runtime/model.h"
#include "runtime/tokenizer.h"

namespace rw::runtime {

struct DataConfig {
  std::string source = "synthetic";  // synthetic | files (a directory made by `ringworld data prepare`)
  std::string path;                  // files: the dataset directory
  std::string task = "copy";         // copy | needle (see NeedleDocument)
  std::string tokenizer = "bytes";   // synthetic: bytes | PATH of a SentencePiece .model
  int64_t min_len = 4, max_len = 24;  // copy: of the copied string; needle: of the document, in tokens
  double answer_weight = 1;           // needle: loss weight of the answer's tokens (the rest weigh 1)
  // Errors name the key; loads the tokenizer (synthetic) and gives its vocabulary (*vocab, may be null; 0
  // for files: the dataset's is checked when it is opened).
  Status Validate(int64_t* vocab = nullptr) const;
};

// LWM's needle retrieval: filler text with "The special magic {city} number is: {7 digits}." hidden at
// `depth` (0 = start, 1 = end) of the haystack, then the question "What is the special magic {city}
// number? The special magic {city} number is:" and the answer. `length` is the document's length in tokens
// (BOS and the answer included; at least the needle, question and answer). The haystack is filler
// sentences encoded one by one and cut to length; the needle goes in at a token boundary.
struct NeedleDocument {
  std::vector<int32_t> prompt;  // BOS, the haystack with the needle, the question
  std::vector<int32_t> answer;  // the answer's tokens (the digits, as the tokenizer writes them after ":")
  std::string digits;           // the 7 digits
};
NeedleDocument MakeNeedle(const Tokenizer& tok, uint64_t seed, int64_t length, double depth);

// One packed sequence of the global batch, or the rows of it that one rank keeps. Packing is the same
// either way (windows appended in order, each advancing the sequence's length); a sequence made with
// `keep` (a rank's global indices, ascending: Layout::GlobalIndices) stores only those rows, so a rank
// reads and holds 1/R of the tokens while its data stays what the whole sequence's would be.
struct PackedSequence {
  PackedSequence() = default;
  explicit PackedSequence(const std::vector<int64_t>* keep) : keep_(keep) {}

  std::vector<int32_t> tokens, targets, segments;
  std::vector<int64_t> positions;
  std::vector<float> weights;    // 1 where a target exists (before loss weighting), else 0
  std::vector<uint8_t> modality;  // of each position's target: 0 text, 1 vision
  std::vector<int64_t> index;     // each row's position in the whole sequence (ascending)
  int64_t length() const { return length_; }  // positions packed so far, kept or not

  // Appends a window of `inputs` positions as segment `doc`: ids[0, inputs) are the inputs (positions from
  // 0) and ids[1, inputs] their targets, so ids holds inputs + 1 tokens; `modality`, of each id, may be
  // null (text). A position's modality is its target's. Only kept rows are read.
  void AppendWindow(const int32_t* ids, const uint8_t* modality, int64_t inputs, int32_t doc);
  // Sets the weight of the positions [from, to) of the sequence that are kept.
  void SetWeights(int64_t from, int64_t to, float w);
  // Pads to seq_len positions: id 0, segment -1 (no document), no target.
  void PadTo(int64_t seq_len);
  // Its rows as the model takes them (a whole sequence: every row).
  RankBatch Rows() &&;

 private:
  void Row(int32_t token, int32_t target, int32_t segment, int64_t position, float weight, uint8_t mod);
  // Moves length() to the next row to store below `end` and says whether there is one (else length()
  // becomes end: the positions up to it are other ranks').
  bool NextRow(int64_t end);
  const std::vector<int64_t>* keep_ = nullptr;  // null: every row
  size_t next_keep_ = 0;                        // the first kept index not yet reached
  int64_t length_ = 0;
};

// How the loss averages over tokens (LWM: the text and vision means, weighted 0.5 each).
struct LossConfig {
  std::string weighting = "per_token";  // per_token | per_modality
  double text_weight = 0.5, vision_weight = 0.5;
  Status Validate() const;
};

// The sums of the weights of a batch's predicted tokens, per modality (text, vision), in double. Each
// weight is a float (24 significant bits), so a sum is exact while it stays below 2^30 times the smallest
// weight in it: always for weights of 1 and data.answer_weight >= 1 (a billion tokens a batch), and for an
// answer weight of 2^-k up to 2^(30-k) tokens. Exact sums make the ranks' shard sums, added in any order,
// the whole batch's to the bit, so the loss weights do not depend on the ring size.
void WeightSums(const std::vector<PackedSequence>& batch, double sums[2]);
// Turns a batch's weights into the loss weights, given the whole global batch's WeightSums, and returns the
// factor that makes scale * sum_i w_i ce_i the loss: per_token, the mean over predicted tokens;
// per_modality, text_weight * (text mean) + vision_weight * (vision mean), renormalized over the
// modalities present. `batch` may be a rank's rows: the normalization is the global batch's.
Status ApplyLossWeighting(const LossConfig& c, const double global_sums[2], std::vector<PackedSequence>& batch,
                          double* scale);
// The same for a whole global batch (its own sums).
Status ApplyLossWeighting(const LossConfig& c, std::vector<PackedSequence>& batch, double* scale);

// The synthetic global batch of `step`: `batch` sequences of `seq_len` tokens (tok: d.tokenizer's); with
// `keep`, only those rows of each (a rank's shard). Sequences [first, last) only (last -1: to the end): a
// mesh's data group makes its own share, each sequence the same as in the whole batch.
std::vector<PackedSequence> GlobalBatch(const DataConfig& d, const Tokenizer& tok, uint64_t seed, int64_t step,
                                        int64_t seq_len, int64_t batch, const std::vector<int64_t>* keep = nullptr,
                                        int64_t first = 0, int64_t last = -1);

// This rank's rows of one sequence under the layout.
RankBatch ShardOf(const PackedSequence& seq, const Layout& layout, int rank);

}  // namespace rw::runtime
