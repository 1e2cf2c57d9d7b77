// The training loop of one rank: stages in order (each with its seq_len and rope_theta), global batches
// from the loader, forward + backward over the ring, gradients and loss summed over the ring in a fixed
// order, then the same AdamW step on every rank (parameters stay replicated and bitwise equal).
// The embedded run and the daemon's workers run this same loop; rank 0 reports each step.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <vector>

#include "runtime/job_config.h"
#include "runtime/mesh.h"
#include "runtime/transport.h"

namespace rw::runtime {

struct StepMetrics {
  int64_t step = 0, total_steps = 0;
  int64_t stage = 0, seq_len = 0;
  double loss = 0, grad_norm = 0, lr = 0;
  int64_t tokens = 0;  // tokens of the global batch
  double tokens_per_s = 0, step_seconds = 0;
  double ring_overlap_ratio = 1;  // this rank's attention compute / ring wall time in the step
  int64_t peak_bytes = 0;         // peak resident memory of the process
  int64_t ring_bytes = 0;         // bytes rank 0 sent over its rings (world and sp) in the step
  std::string ToJson() const;     // one line of metrics.jsonl
  std::string ToLogLine() const;  // the step's line in `train`'s output and the daemon's job log
};

// A checkpoint rank 0 has committed (renamed into place and fsynced), or failed to write.
struct CheckpointInfo {
  bool ok = true;
  std::string error;
  int64_t step = 0, stage = 0;
  std::string path;
  int64_t bytes = 0;
  double seconds = 0;  // the write, from the snapshot to the parent directory's fsync
};

// How a run may end early (preemption): on a request or at a given step, every rank stops after the same
// step (they agree through the ring), rank 0 commits a checkpoint, and TrainRank returns with stopped set.
struct TrainControl {
  int64_t stop_at_step = 0;                   // 0: run to the end
  // Any of these set stops the run: the process's (a SIGTERM handler) and the job's (the daemon's request).
  std::vector<const std::atomic<bool>*> stop_flags;
  int64_t resume_max_step = -1;               // resume only from a checkpoint of step <= this (-1: newest)
  // The checkpoint the driver chose and verified for this ring: loaded as it is, with no CRC pass on every
  // rank. Empty: the newest of checkpoint.dir that verifies (of step <= resume_max_step).
  std::string resume_checkpoint;
  // Called on rank 0 (from the writer thread when checkpoints are asynchronous) once a checkpoint is
  // committed or has failed. A failed periodic checkpoint does not stop training; a failed final one does.
  std::function<void(const CheckpointInfo&)> on_checkpoint;
  // Rank 0 asks it before each commit (SaveOptions::before_commit). A refusal ends the run on every rank:
  // the ring is aborted and TrainRank returns the refusal (a fenced ring must not compute on).
  std::function<Status(int64_t step)> commit_gate;
  kernels::Device device = kernels::Device::kCpu;  // the rank's device: the model and optimizer run on its backend
};

struct TrainResult {
  bool stopped = false;  // ended early by TrainControl, checkpoint committed
  double first_loss = 0, last_loss = 0;  // of the steps this call ran
  int64_t steps = 0;                     // last step done
  int64_t resumed_from = 0;              // step of the checkpoint the run started from (0: fresh)
  std::vector<std::string> skipped_checkpoints;  // newer checkpoints that failed verification, and why
  std::string last_checkpoint;
  int64_t optimizer_bytes = 0;  // AdamW moments this rank holds (8 a parameter; its chunk's under optimizer.shard)
  // mesh.fsdp > 1: seconds this rank's weight-shard collectives took (on their own thread) and seconds its
  // compute waited for them; 1 - wait / comm is the share hidden behind compute.
  double shard_comm_seconds = 0, shard_wait_seconds = 0;
};

// The kernel threads a rank of a ring of `ring` gets: ring.threads_per_device, or this machine's cores / ring
// (at least 1). The trainer and `ringworld plan` both ask here.
int RankThreads(const JobConfig& job, int64_t ring);

// Runs the whole job on this rank, resuming from the newest valid checkpoint of checkpoint.dir if there
// is one; rank 0 writes checkpoints every checkpoint.every_steps, at each stage's end and at the end. `on_step` (may be empty) is called on rank 0 after every step.
// `rings`: the world ring and this rank's sp ring of the stage's mesh (JobConfig::StageMesh of the world's
// size): each data group runs its share of the batch's sequences on its sp ring, and the gradients, the loss
// and the optimizer go over the world ring. The Transport form is the mesh of one ring (sp = world).
Status TrainRank(const RankRings& rings, const JobConfig& job, const std::function<void(const StepMetrics&)>& on_step,
                 TrainResult* result, const TrainControl& control = {});
Status TrainRank(Transport& t, const JobConfig& job, const std::function<void(const StepMetrics&)>& on_step,
                 TrainResult* result, const TrainControl& control = {});

// What the job's precision runs on in this process, for the log: e.g. "precision bf16: GEMMs by oneDNN 2.6.3
// brg:avx512_core_bf16" or "precision fp32: GEMMs by OpenBLAS 0.3.21 ...". Decided by the CPU at run time.
std::string ComputePath(const JobConfig& job, kernels::Device device = kernels::Device::kCpu);

struct EvalResult {
  double loss = 0, perplexity = 0;  // mean cross-entropy over every predicted position
  int64_t tokens = 0;               // predicted positions
};

// Evaluates a checkpoint (ours or a Hugging Face LLaMA directory) on a prepared dataset over the ring:
// every document once, packed into sequences of seq_len.
Status EvalRank(Transport& t, const std::string& checkpoint_dir, const std::string& data_dir, int64_t seq_len,
                const std::string& layout, int num_threads, EvalResult* out);

}  // namespace rw::runtime
