// Checkpoints in Hugging Face layout: step-N/ holds model.safetensors (HF tensor names), config.json
// (LlamaConfig with the tokenizer's BOS/EOS), generation_config.json, optimizer.safetensors (AdamW moments),
// trainer_state.json (step, stage, data cursor, seed), tokenizer.model and tokenizer_config.json when the job's
// tokenizer is a SentencePiece model, and MANIFEST (size and CRC32C of each file). A checkpoint is written into a temporary directory,
// fsynced, renamed into place and the parent fsynced: it exists only once whole. Loading verifies the
// manifest and falls back to the previous checkpoint on any mismatch.
//
// Sharded checkpoints (weights sharded over a mesh's fsdp axis, runtime/fsdp.h): in place of
// model.safetensors and optimizer.safetensors, step-N/ holds shard-KKKKK-of-FFFFF.safetensors, one per shard,
// each written by the rank that holds that shard: its pieces of the flat weight vector (ParamTable order) and
// of both moments, as 1-D F32 tensors "weights@LO", "exp_avg@LO" and "exp_avg_sq@LO" (LO: the piece's first
// element in the flat vector). Rank 0 moves the shard files into the checkpoint's temporary directory,
// writes the rest and one MANIFEST (CRC32C of every file), and commits them with the one rename. Every reader
// (a resume onto any mesh, eval, generate, init_from, export) reads ranges of the flat vectors through
// CheckpointReader, whichever layout the directory has.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/model.h"
#include "runtime/safetensors.h"
#include "runtime/tokenizer.h"

namespace rw::runtime {

struct TrainerState {
  int64_t step = 0;         // optimizer steps done
  int64_t stage = 0;        // stage of the last step done
  // The loader's position after the last step done: files data, the windows read in the stage (DataCursor);
  // synthetic data, the step (the next global batch is GlobalBatch(seed, cursor + 1)).
  int64_t data_cursor = 0;
  uint64_t seed = 0;
  std::string job;
  std::string data_cursor_unit = "step";  // "windows" (files data) or "step"; older checkpoints: "step"
};

// The newest checkpoints a job keeps unless it says otherwise (checkpoint.keep; SaveOptions).
constexpr int64_t kDefaultCheckpointsKept = 3;

struct SaveOptions {
  int64_t keep = kDefaultCheckpointsKept;  // the newest checkpoints kept
  int64_t keep_every = 0;       // > 0: also every checkpoint whose step is a multiple of it
  // The job's tokenizer (null: bytes). Its BOS/EOS go into config.json and generation_config.json; a
  // SentencePiece model is written as tokenizer.model with a tokenizer_config.json, so that transformers'
  // AutoTokenizer and generate take the directory as it is.
  const Tokenizer* tokenizer = nullptr;
  // Asked after the checkpoint is written and synced under its temporary name, before the rename that
  // commits it (and before retention): an error leaves it uncommitted (removed) and SaveCheckpoint fails
  // with it. A ring's driver fences this way: a ring it has given up on (its worker hung, then woke) cannot
  // commit over, or prune, the checkpoints of the ring that replaced it.
  std::function<Status(int64_t step)> before_commit;
};

// Writes dir/step-<state.step> atomically, then applies retention and removes temporary leftovers. m and v
// may be null (weights only). *path and *bytes (either may be null) get its directory and the bytes written.
Status SaveCheckpoint(const std::string& dir, const ModelConfig& c, const ParamTable& t, const float* params,
                      const float* m, const float* v, const TrainerState& state, const SaveOptions& opt,
                      std::string* path, int64_t* bytes = nullptr);

// The step-N checkpoint directories of `dir`, newest first (not verified).
std::vector<std::pair<int64_t, std::string>> ListCheckpoints(const std::string& dir);

// Removes the temporary files and directories that interrupted checkpoint writes left in `dir`: all of them
// (max_step < 0: at the start of a run), or those of steps <= max_step (after a commit: a later step's shard
// may be being written). Returns how many it removed.
int CollectCheckpointLeftovers(const std::string& dir, int64_t max_step = -1);

// One contiguous piece of the flat vectors that a rank of sharded weights holds: elements [lo, lo + n) of
// the weights and of both AdamW moments.
struct ShardPiece {
  size_t lo = 0, n = 0;
  const float* params = nullptr;
  const float* m = nullptr;
  const float* v = nullptr;
};
// A shard file written and synced under a temporary name in the checkpoint directory, with its size and
// CRC32C (what the MANIFEST records), or why it could not be written.
struct ShardFile {
  std::string file;  // name within the checkpoint directory
  uint64_t bytes = 0;
  uint32_t crc = 0;
};
// Shard `shard` of `shards` of step `step`'s checkpoint: its pieces (of a flat vector of `total` elements)
// into a temporary file of `dir`, fsynced.
Status WriteCheckpointShard(const std::string& dir, int64_t step, int shard, int shards, size_t total,
                            const std::vector<ShardPiece>& pieces, ShardFile* out);
// Commits the shard files (files[k] is shard k) as dir/step-<state.step> with config, trainer state,
// tokenizer and MANIFEST, as SaveCheckpoint does (same options, fence, retention). On an error, the shard
// files are removed.
Status CommitShardedCheckpoint(const std::string& dir, const ModelConfig& c, const std::vector<ShardFile>& files,
                               const TrainerState& state, const SaveOptions& opt, std::string* path,
                               int64_t* bytes = nullptr);

// The weights and moments of a checkpoint directory as flat vectors in ParamTable order, whatever its
// layout: ours whole (model.safetensors, optimizer.safetensors), ours sharded (shard-K-of-F.safetensors), or
// a Hugging Face directory (model.safetensors, or an index and the files it names: weights only). Open
// reads headers only and checks that every tensor matches the table (a missing, mis-shaped or extra tensor
// is named) and that the pieces of a sharded one cover each vector exactly once; Read reads only the bytes
// of the range asked for. It does not verify the MANIFEST (VerifyCheckpoint, LoadWeights do).
class CheckpointReader {
 public:
  // with_moments false: the weights only (the optimizer's state is neither read nor checked).
  static Status Open(const std::string& dir, const ParamTable& t, CheckpointReader* out, bool with_moments = true);
  // [lo, hi) of a tensor set into dst (hi - lo entries): `set` "" the weights, "exp_avg." or "exp_avg_sq."
  // the moments.
  Status Read(const std::string& set, size_t lo, size_t hi, float* dst) const;
  bool has_moments() const { return sets_.count("exp_avg.") > 0; }
  bool sharded() const { return sharded_; }

 private:
  struct Piece {
    size_t lo = 0, n = 0;  // in the flat vector
    std::string file, name;
    uint64_t first = 0;  // the piece's first element within that tensor
    TensorInfo info;
  };
  std::string dir_;
  size_t total_ = 0;
  bool sharded_ = false;
  std::map<std::string, std::vector<Piece>> sets_;  // set -> pieces in order, covering [0, total_)
};

// Verifies a checkpoint directory's MANIFEST: every file's size and CRC32C, plain file names only, and
// model.safetensors, config.json and trainer_state.json (and optimizer.safetensors and tokenizer.model where
// the directory has them) listed.
Status VerifyCheckpoint(const std::string& ckpt_dir);

// The newest of `candidates` (step, directory; any order) that verifies: *step and *path; 0 and "" when there
// are no candidates (a fresh run). Some candidates and none verifying is an error, not a fresh run: starting
// at step 0 would overwrite the run's checkpoints. Nothing is removed. `skipped` gets one line per candidate
// that failed verification, and why.
Status NewestVerifiedCheckpoint(std::vector<std::pair<int64_t, std::string>> candidates, int64_t* step,
                                std::string* path, std::vector<std::string>* skipped);

// NewestVerifiedCheckpoint over the step-N directories of `dir` with N <= max_step (-1: any). `dir` empty:
// none.
Status FindResumeCheckpoint(const std::string& dir, int64_t max_step, int64_t* step, std::string* path,
                            std::vector<std::string>* skipped);

// Which part of AdamW's moments a rank loads: [lo, hi) of the flat vector (all of it by default), into m
// and v of hi - lo entries. A rank of a sharded optimizer reads only the bytes of its chunk.
struct MomentRange {
  size_t lo = 0, hi = SIZE_MAX;
};

// Loads one checkpoint directory that the caller has verified (VerifyCheckpoint): weights, moments (m and v
// may be null) and the trainer state. A driver verifies once per ring and hands the path to every rank.
Status LoadCheckpoint(const std::string& ckpt_dir, const ParamTable& t, float* params, float* m, float* v,
                      TrainerState* state, MomentRange range = {});

// Loads the newest checkpoint of `dir` that verifies, among those of step <= max_step (-1: any; the daemon
// passes the newest one it has recorded: a checkpoint exists only once recorded). *found is false when there
// is none; `skipped` gets one line per newer checkpoint that failed verification (and why). Checkpoints that
// all fail verification are an error (FindResumeCheckpoint).
Status LoadLatestCheckpoint(const std::string& dir, const ModelConfig& c, const ParamTable& t, float* params,
                            float* m, float* v, TrainerState* state, bool* found, std::vector<std::string>* skipped,
                            int64_t max_step = -1, MomentRange range = {});

// The trainer state of a checkpoint directory (trainer_state.json); errors name the file and field.
Status ReadTrainerState(const std::string& ckpt_dir, TrainerState* state);

// The tokenizer a checkpoint carries (tokenizer.model; none: bytes), checked against its model's vocabulary.
Status CheckpointTokenizer(const std::string& ckpt_dir, const ModelConfig& c, std::unique_ptr<Tokenizer>* out);

// Reads a Hugging Face LLaMA config.json (ours or transformers'); errors name the file and field.
Status ReadHfConfig(const std::string& path, ModelConfig* out);

// Loads the weights of one checkpoint directory (ours or a Hugging Face LLaMA in fp32/fp16/bf16: one
// model.safetensors, or shards listed by model.safetensors.index.json); errors name any missing or
// mis-shaped tensor. A directory with a MANIFEST (ours) is verified first: the weight files and config.json
// must be listed and match it.
Status LoadWeights(const std::string& ckpt_dir, const ParamTable& t, float* params);

}  // namespace rw::runtime
