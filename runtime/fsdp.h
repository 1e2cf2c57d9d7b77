// ZeRO-3 over the mesh's fsdp axis: each rank of an fsdp ring stores 1/fsdp of every unit of the model
// (ParamTable::Units: the embedding, each layer, the head) — its fp32 master weights, their gradients and
// AdamW's moments — and nothing of the whole model. The model asks for each unit just before it uses it
// (UnitSource): the unit's chunks are all-gathered around the fsdp ring into a unit buffer (fp32; cast to
// bf16 there under mixed precision) and the buffer is reused by the next unit. After a unit's backward its
// gradient is reduce-scattered around the fsdp ring and the rank's chunk added to its shard's gradient.
// After the step's sequences the shard gradients are summed over the replica ring (the ranks of every data
// group holding the same shard), the global norm is the fsdp ring's per-shard sums of squares added in
// shard order, and each rank updates its shard. Every reduction runs in a fixed order: the same mesh and
// seed repeat bit for bit.
//
// Initialization and a resume make or read only the rank's chunks (the whole model is never held; an
// init_from of a Hugging Face directory is read whole, once, before the shard takes its chunks).
// Not yet: the next unit's gather in flight while the current one computes (each gather and
// reduce-scatter blocks the rank's compute), and a gather in bf16 (half the traffic).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "runtime/model.h"
#include "runtime/optimizer.h"
#include "runtime/transport.h"

namespace rw::runtime {

class ShardedWeights final : public UnitSource {
 public:
  // `fsdp`: this rank's fsdp ring (its position is its shard); `replica`: the ranks with the same shard
  // (null or of size 1: none). `job`: the tags' job id.
  ShardedWeights(const ParamTable& table, const OptimizerConfig& opt, Transport& fsdp, Transport* replica,
                 kernels::DType precision, kernels::Exec ex, uint64_t job);

  // This rank's chunks of a whole parameter vector (a Hugging Face init_from).
  void TakeShard(const float* params);
  // Initialization (InitParameters' values) of this rank's chunks only: the whole vector is never held.
  void InitShard(const ModelConfig& c, uint64_t seed);
  // This rank's chunks of a verified checkpoint of ours (weights and moments), reading only their bytes.
  Status LoadShard(const std::string& ckpt_dir);

  // Before a step's sequences: the shard gradients zeroed, the collective tags restarted.
  void BeginStep(uint32_t step);
  Status Acquire(int unit, bool with_grads, Unit* out) override;
  Status GradReady(int unit) override;
  // After the step's sequences: the shard gradients summed over the replica ring, the global norm (before
  // clipping) and the AdamW update of the shard.
  Status FinishStep(int64_t step, int64_t total_steps, double* grad_norm, double* lr);

  // The whole weights and moments into position 0 of the fsdp ring (null elsewhere); every rank of the
  // ring takes part. What a checkpoint writes.
  Status GatherToFirst(float* params, float* m, float* v);

  size_t shard_size() const { return shard_p_.size(); }      // parameters this rank stores
  int64_t optimizer_bytes() const { return int64_t(8 * shard_p_.size()); }
  // Bytes this rank holds for the model: the shard's weights, gradients and moments, the unit buffers.
  int64_t bytes() const;

 private:
  struct UnitShard {
    size_t begin = 0, n = 0;   // the unit in the flat vector
    size_t lo = 0, hi = 0;     // this rank's chunk of it (offsets within the unit)
    size_t at = 0;             // where the chunk starts in the shard's storage
    std::unique_ptr<AdamW> opt;  // the chunk's moments
  };
  MsgTag NextTag();

  const ParamTable& table_;
  Transport& fsdp_;
  Transport* replica_;
  kernels::DType precision_;
  kernels::Exec ex_;
  uint64_t job_;
  uint32_t step_ = 0, ops_ = 0;
  std::vector<UnitShard> units_;
  std::vector<float> shard_p_, shard_g_;
  std::vector<float> unit_p_, unit_g_;  // the unit in use, whole
  std::vector<kernels::bf16> unit_c_;
  int grads_of_ = -1;  // the unit whose gradient buffer is out (GradReady not yet called)
};

}  // namespace rw::runtime
