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
#include "runtime/model.h"
#include "runtime/tokenizer.h"

namespace rw::runtime {

struct PrepareOptions {
  std::vector<std::string> inputs;  // .txt (one document per file) or .jsonl (one document per line)
  std::string output;
  // bytes | PATH of a SentencePiece .model | none (pre-tokenized ids only). Empty: bytes, or none when
  // vocab_size is given (ids of another tokenizer, which bytes would misdescribe).
  std::string tokenizer;
  int64_t vision_codes = 0;         // > 0: VQGAN codebook size; vision ids follow the text vocabulary
  bool skip_bad = false;  // count and skip bad records instead of failing
  // > 0: the vocabulary the dataset declares (pre-tokenized "tokens" records of another tokenizer); every id
  // must be below it. 0: the tokenizer's (with the vision ids after it). Without a tokenizer the dataset's
  // tokenizer is none: text records are refused, and its checkpoints print ids.
  int64_t vocab_size = 0;
  // A VQGAN directory (runtime/vqgan.h): records may then name image and video files, which are read
  // (runtime/media.h), encoded to codes and laid out as "vision" records are. Its codebook is the vision
  // vocabulary (vision_codes, when given, must equal it).
  std::string vqgan;
  int vqgan_threads = 0;  // kernel threads of the VQGAN (0: the machine's)
  // appended | lwm: how vision ids sit among the model's (runtime/tokenizer.h, VisionLayout).
  std::string vision_layout = "appended";
};

struct PrepareReport {
  int64_t documents = 0, tokens = 0, skipped = 0;
};

// JSONL records: {"text": "..."} (tokenized, BOS/EOS added), {"tokens": [ids]} (verbatim), optional
// "modality": "text" | "vision" or a per-token list of those; LWM vision records {"vision": [[codes of
// frame 0], [codes of frame 1], ...], "text": "caption", "order": "vision_text" | "text_vision"}: the codes
// wrapped as <vision> f0 <eof> f1 ... <eov> </vision> beside the text, in the vision_layout (needs
// vision_codes). With a VQGAN: {"image": PATH, ...} and {"video": PATH, "max_frames": N and/or "fps": F,
// ...} (PATH relative to the JSONL file's directory; the text and order as for "vision"), their frames
// encoded to codes. A bad record, or a medium that cannot be read, is an error naming file:line (and the
// medium's path).
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
  int64_t vocab_size() const { return vocab_; }         // past the largest id
  int64_t text_vocab_size() const { return text_vocab_; }  // the tokenizer's ids
  VisionLayout vision_layout() const { return layout_; }
  int64_t vision_vocab_min() const { return vision_vocab_min_; }  // kLwm: the least vision_vocab_size
  // Document i's tokens (and modality bytes).
  const int32_t* doc_tokens(int64_t i) const { return tokens_ + index_[i]; }
  const uint8_t* doc_modality(int64_t i) const { return modality_ + index_[i]; }
  int64_t doc_len(int64_t i) const { return int64_t(index_[i + 1] - index_[i]); }

  // Every document once, in order: its windows at seq_len packed into sequences (eval: every target of
  // the dataset exactly once).
  std::vector<PackedSequence> PackAll(int64_t seq_len) const;

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
  int64_t n_docs_ = 0, n_tokens_ = 0, vocab_ = 0, text_vocab_ = 0, vision_vocab_min_ = 0;
  VisionLayout layout_ = VisionLayout::kAppended;
};

// Whether model `m` reads dataset `d`'s ids as they were meant: one vocabulary holding every id, or, for
// LWM's layout, the text vocabulary exactly and a vision vocabulary large enough. The error names `field`.
Status CheckModelReads(const Dataset& d, const ModelConfig& m, const std::string& field);

// The windows of a dataset at one sequence length L. A document of n tokens has n - 1 (input, target)
// pairs; they are cut into consecutive windows of L pairs, the last one shorter: window k of a document
// reads its tokens [k L, k L + inputs], L + 1 tokens where the document goes on. Every pair of the dataset
// is in exactly one window, and a book of any length is trained whole.
class WindowIndex {
 public:
  struct Window {
    int64_t doc = 0, start = 0, inputs = 0;  // document, its first token, positions (<= seq_len)
  };
  WindowIndex(const Dataset& d, int64_t seq_len);
  int64_t size() const { return first_.back(); }
  int64_t seq_len() const { return seq_len_; }
  const Dataset& dataset() const { return *d_; }
  Window operator[](int64_t w) const;  // w in [0, size())

 private:
  const Dataset* d_;
  int64_t seq_len_;
  std::vector<int64_t> first_;  // first_[i]: windows of the documents before document i
};

// Where the loader of a stage stands: windows are read in epochs, each a shuffle of all the windows drawn
// from (seed, stage, epoch), and `next` counts the windows read since the stage began (epoch next / size).
// Independent of the ring size; kept in checkpoints (TrainerState::data_cursor), so a run resumes on the
// very window it would have read next.
struct DataCursor {
  uint64_t seed = 0;
  int64_t stage = 0;
  int64_t next = 0;
  int64_t epoch(const WindowIndex& w) const { return next / w.size(); }
};

// The window at stream position p of (seed, stage): a permutation of [0, w.size()) per epoch.
int64_t ShuffledWindow(const WindowIndex& w, uint64_t seed, int64_t stage, int64_t p);

// The global batch at the cursor: `batch` sequences, each packing windows in stream order while the next
// one fits (the rest of a sequence is padding); advances the cursor past the windows it packed. With
// `keep` (a rank's global indices), only those rows of each sequence are read and kept. Sequences [first,
// last) only (last < 0: to the end) are returned: the others' windows are passed over reading only their
// lengths (a mesh's data group reads its share of the batch, and the cursor moves as for the whole).
std::vector<PackedSequence> NextBatch(const WindowIndex& w, int64_t batch, DataCursor* cursor,
                                      const std::vector<int64_t>* keep = nullptr, int64_t first = 0,
                                      int64_t last = -1);
// Advances the cursor as `steps` calls of NextBatch would, reading no token (the cursor of a checkpoint
// that did not record one is found by replaying its stage).
void SkipBatches(const WindowIndex& w, int64_t batch, int64_t steps, DataCursor* cursor);

}  // namespace rw::runtime
