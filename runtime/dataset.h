// Token datasets on disk, made by `ringworld data prepare` and memory-mapped for training and eval.
//
// DIR/tokens.bin    int32 token ids of every document, back to back (little-endian)
// DIR/modality.bin  one byte per token: 0 text, 1 vision
// DIR/index.bin     uint64 offsets: document i is tokens [index[i], index[i+1])
// DIR/meta.json     format, counts, tokenizer, vocab size, sources
// DIR/tokenizer.model  the SentencePiece model the text was encoded with (none for bytes); training copies it
//                   into its checkpoints, where generate and needle find it
// Written into a temporary directory and renamed into place: a dataset exists only once whole.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/data.h"

namespace rw::runtime {

struct PrepareOptions {
  std::vector<std::string> inputs;  // .txt (one document per file) or .jsonl (one document per line)
  std::string output;
  std::string tokenizer = "bytes";  // bytes | PATH of a SentencePiece .model
  int64_t vision_codes = 0;         // > 0: VQGAN codebook size; vision ids follow the text vocabulary
  bool skip_bad = false;  // count and skip bad records instead of failing
};

struct PrepareReport {
  int64_t documents = 0, tokens = 0, skipped = 0;
};

// JSONL records: {"text": "..."} (tokenized, BOS/EOS added), {"tokens": [ids]} (verbatim), optional
// "modality": "text" | "vision" or a per-token list of those; LWM vision records {"vision": [[codes of
// frame 0], [codes of frame 1], ...], "text": "caption", "order": "vision_text" | "text_vision"}: the codes
// wrapped as <vision> f0 <eof> f1 ... <eov> </vision> (modality vision) beside the text (needs
// vision_codes). A bad record is an error naming file:line.
Status PrepareDataset(const PrepareOptions& opt, PrepareReport* report);

// A prepared dataset, memory-mapped.
class Dataset {
 public:
  static Status Open(const std::string& dir, Dataset* out);
  Dataset() = default;
  ~Dataset();
  Dataset(Dataset&& o) noexcept;
  Dataset& operator=(Dataset&& o) noexcept;
  int64_t documents() const { return n_docs_; }
  int64_t tokens() const { return n_tokens_; }
  int64_t vocab_size() const { return vocab_; }
  // Document i's tokens (and modality bytes).
  const int32_t* doc_tokens(int64_t i) const { return tokens_ + index_[i]; }
  const uint8_t* doc_modality(int64_t i) const { return modality_ + index_[i]; }
  int64_t doc_len(int64_t i) const { return int64_t(index_[i + 1] - index_[i]); }

  // Every document in order, packed into sequences of seq_len (for eval: each token exactly once).
  std::vector<PackedSequence> PackAll(int64_t seq_len) const;
  // The global batch of training step `step`: sequence b starts at a document drawn from (seed, step, b)
  // and packs the documents that follow it; independent of the ring size.
  std::vector<PackedSequence> Batch(uint64_t seed, int64_t step, int64_t seq_len, int64_t batch) const;

 private:
  void Reset();
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  void* mod_map_ = nullptr;
  size_t mod_bytes_ = 0;
  void* idx_map_ = nullptr;
  size_t idx_bytes_ = 0;
  const int32_t* tokens_ = nullptr;
  const uint8_t* modality_ = nullptr;
  const uint64_t* index_ = nullptr;
  int64_t n_docs_ = 0, n_tokens_ = 0, vocab_ = 0;
};

}  // namespace rw::runtime
