// ZeRO-3 over the mesh's fsdp axis: each rank of an fsdp ring stores 1/fsdp of every unit of the model
// (ParamTable::Units: the embedding, each layer, the head) — its fp32 master weights, their gradients and
// AdamW's moments — and nothing of the whole model. The model asks for each unit just before it uses it
// (UnitSource): the unit's chunks are all-gathered around the fsdp ring into one of two unit buffers, in the
// compute precision. Under bf16 mixed precision each rank casts its chunk and the bf16 chunks travel (half
// the bytes of fp32); the few weights the model reads in fp32 (the norms' vectors) travel beside them as an
// exact sum (each element is the owner's value plus zeros); the embedding, a lookup, travels in fp32. After a unit's backward its gradient is reduce-scattered
// around the fsdp ring and the rank's chunk added to its shard's gradient.
//
// Overlap: the fsdp ring's collectives run on a thread of their own, in the order the rank posts them
// (every rank posts the same sequence, so the ring's messages pair up). When the model takes a unit, the
// gather of the one it will want next (the following layer in the forward, the preceding one in the
// backward) is posted into the other buffer, and runs while the current unit computes; a unit's
// reduce-scatter runs while the next unit's backward computes (two gradient buffers). A unit still in a
// buffer from earlier in the step (the last layer, between its forward and its backward) is not gathered
// again. overlap() says how much of the collectives' time the compute waited for.
// After the step's sequences the shard gradients are summed over the replica ring (the ranks of every data
// group holding the same shard), the global norm is the fsdp ring's per-shard sums of squares added in
// shard order, and each rank updates its shard. Every reduction runs in a fixed order: the same mesh and
// seed repeat bit for bit.
//
// Initialization and a resume make or read only the rank's chunks (the whole model is never held; an
// init_from of a Hugging Face directory is read whole, once, before the shard takes its chunks).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "runtime/checkpoint.h"
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
  // A rank leaving with collectives still posted (an error mid-step) aborts its fsdp ring first, so that
  // neither its collective thread nor its peers wait on it.
  ~ShardedWeights() override;

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

  // A copy of this rank's chunks of the weights and moments (into *storage), as the pieces of a sharded
  // checkpoint (runtime/checkpoint.h): what the rank's shard file holds. Between steps.
  Status Snapshot(std::vector<float>* storage, std::vector<ShardPiece>* pieces);
  // A small all-gather around the fsdp ring, in sequence with its collectives (every rank of the ring calls
  // it at the same point): how a sharded checkpoint's writers tell position 0 what they wrote.
  Status AllGather(const void* mine, size_t bytes, void* all);
  int shard() const { return fsdp_.rank(); }
  int shards() const { return fsdp_.size(); }

  int64_t optimizer_bytes() const { return int64_t(8 * shard_p_.size()); }
  // Seconds the fsdp ring's collectives took on their thread, and seconds the compute waited for them.
  struct Overlap {
    double comm_seconds = 0, wait_seconds = 0;
  };
  Overlap overlap() const;

 private:
  struct UnitShard {
    size_t begin = 0, n = 0;   // the unit in the flat vector
    size_t lo = 0, hi = 0;     // this rank's chunk of it (offsets within the unit)
    size_t at = 0;             // where the chunk starts in the shard's storage
    // Under bf16: whether the unit travels in bf16 (it holds matrices the GEMMs read), and the ranges of it
    // (offsets within the unit) that the model reads in fp32, with their total length.
    bool bf16_gather = false;
    std::vector<std::pair<size_t, size_t>> fp32_ranges;
    size_t fp32_n = 0;
    std::unique_ptr<AdamW> opt;  // the chunk's moments
  };
  struct Gathered {  // a unit gathered (or being gathered) whole
    int unit = -1;
    std::vector<float> p;         // fp32 (under bf16 gathers: its fp32 ranges only)
    std::vector<kernels::bf16> c;
    std::vector<float> exact;     // the fp32 ranges, summed exactly around the ring
    std::future<Status> ready;  // valid until waited for
  };
  struct Gradient {  // a unit's whole gradient, then its reduce-scatter
    int unit = -1;
    std::vector<float> g;
    std::future<Status> done;
  };
  MsgTag NextTag();
  std::future<Status> Post(std::function<Status()> job);  // to the collectives' thread, in order
  void PostGather(int slot, int unit);
  Status Await(std::future<Status>& f);  // waits (timed as the compute's wait); the first error sticks
  Status Drain();                        // every posted collective done
  void Loop();

  const ParamTable& table_;
  Transport& fsdp_;
  Transport* replica_;
  kernels::DType precision_;
  kernels::Exec ex_;
  uint64_t job_;
  uint32_t step_ = 0, ops_ = 0;
  std::vector<UnitShard> units_;
  std::vector<float> shard_p_, shard_g_;
  Gathered gathered_[2];
  Gradient gradient_[2];
  int in_use_ = -1;      // the buffer of the unit the model holds
  int grad_in_use_ = -1; // the gradient buffer handed out last
  int grads_of_ = -1;    // the unit whose gradient buffer is out (GradReady not yet called)
  Status error_;         // the first failed collective: every later call returns it
  // The collectives' thread.
  std::thread thread_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<Status()>> jobs_;
  bool stopping_ = false;
  int64_t pending_ = 0;  // posted and not yet finished (mu_)
  double comm_seconds_ = 0;  // (mu_)
  double wait_seconds_ = 0;  // the compute's thread only
};

}  // namespace rw::runtime
