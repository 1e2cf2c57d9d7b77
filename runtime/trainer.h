// The training loop of one rank: stages in order (each with its seq_len and rope_theta), global batches
// from the loader, forward + backward over the ring, gradients and loss summed over the ring in a fixed
// order, then the same AdamW step on every rank (parameters stay replicated and bitwise equal).
// The embedded run and the daemon's workers run this same loop; rank 0 reports each step.
#pragma once

#include <functional>
#include <string>

#include "runtime/job_config.h"
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
  std::string ToJson() const;     // one line of metrics.jsonl
};

struct TrainResult {
  double first_loss = 0, last_loss = 0;
  int64_t steps = 0;
};

// Runs the whole job on this rank. `on_step` (may be empty) is called on rank 0 after every step.
Status TrainRank(Transport& t, const JobConfig& job, const std::function<void(const StepMetrics&)>& on_step,
                 TrainResult* result);

}  // namespace rw::runtime
