// Checkpoints in Hugging Face layout: step-N/ holds model.safetensors (HF tensor names), config.json
// (LlamaConfig with the tokenizer's BOS/EOS), generation_config.json, optimizer.safetensors (AdamW moments),
// trainer_state.json (step, stage, data cursor, seed), tokenizer.model and tokenizer_config.json when the job's
// tokenizer is a SentencePiece model, and MANIFEST (size and CRC32C of each file). A checkpoint is written into a temporary directory,
// fsynced, renamed into place and the parent fsynced: it exists only once whole. Loading verifies the
// manifest and falls back to the previous checkpoint on any mismatch.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/model.h"
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

// Removes the temporary directories that interrupted checkpoint writes left in `dir` (at the start of a run).
// Returns how many it removed.
int CollectCheckpointLeftovers(const std::string& dir);

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

// [lo, hi) of the flat vector from one of our checkpoint's tensor sets into dst (hi - lo entries), reading
// only those bytes: `set` "" the weights (model.safetensors), "exp_avg." or "exp_avg_sq." the moments. The
// caller has verified the directory. What a rank of sharded weights loads, chunk by chunk.
Status LoadCheckpointRange(const std::string& ckpt_dir, const ParamTable& t, const std::string& set, size_t lo,
                           size_t hi, float* dst);
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
