// The memory a job needs on each device, stage by stage, before it runs (`ringworld plan`).
//
// The figures are this code's own buffers, computed from the same shapes the model, the ring and the
// trainer allocate (runtime/model.cpp, runtime/ring_attention.cpp, runtime/trainer.cpp), not a textbook
// estimate:
//   state        fp32 master weights and gradients (4 + 4 bytes a parameter), AdamW's m and v (8), the
//                bf16 compute copy under mixed precision (2), the ring all-reduce's receive chunk;
//   activations  what each layer keeps for its backward (all of it, or under remat: each layer's input
//                and one layer's worth that is recomputed), in the precision each buffer has;
//   workspace    the step's buffers outside the layers (residual stream, gradients of the activations,
//                the loss head's) — ModelWorkspace's, the same for every layer;
//   ring         the travelling K/V blocks (double buffer), the partial (O, lse), the backward's delta and
//                its three dK/dV buffers (RingBuffers);
//   kernels      the device's kernels' scratch, as its backend table estimates it (Backend::scratch_bytes):
//                on the CPU per rank (FFN and loss-head blocks, bf16 operand copies, RoPE tables, the
//                attention's turn table, AMX's packed operands) and per kernel thread (attention tiles),
//                oneDNN's own scratch not in it; on CUDA the largest call's block scratch;
//   data         the rank's rows of the step's sequences;
//   snapshot     the copy of weights and moments for a background checkpoint write (host memory), when
//                the job writes checkpoints: rank 0's of the whole model (12 bytes a parameter), or under
//                fsdp each writer's of its shard (a sharded checkpoint: 12 bytes a parameter / fsdp).
// Nothing else of the process is counted (code, libraries, threads' stacks, the allocator's slack): on a
// CPU the process's resident peak is these figures plus a baseline of about 0.15-0.25 GiB
// (docs/BENCHMARKS.md compares the two).
//
// Meshes. A data group's sp ring splits its sequences. With mesh.fsdp 1 every rank holds the whole model
// and AdamW's moments whole or, under optimizer.shard, 1/devices of them (ZeRO-1 over the world ring); with
// fsdp > 1 the weights, gradients and moments are sharded over fsdp (ZeRO-3, runtime/fsdp.h: each rank
// 1/fsdp of them and one unit gathered whole at a time). When a stage does not fit, the plan also says
// which (fsdp, sp) mesh would. Not counted under fsdp: an init_from of a Hugging Face directory reads the
// whole model into host memory (4 bytes a parameter) before each rank keeps its shard.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/job_config.h"

namespace rw::runtime {

// Bytes of one rank's buffers, by what they hold.
struct RankMemory {
  int64_t weights = 0;      // fp32 master (+ bf16 compute copy); sharded: 1/fsdp + the gathered layers
  int64_t gradients = 0;    // fp32
  int64_t optimizer = 0;    // AdamW m and v, fp32
  int64_t activations_no_remat = 0, activations_remat = 0;  // kept for the backward, under either remat
  bool remat = false;                                         // the job's setting
  int64_t activations() const { return remat ? activations_remat : activations_no_remat; }
  int64_t workspace = 0;    // the step's buffers outside the layers
  int64_t ring = 0;         // RingBuffers
  int64_t kernels = 0;      // the device's kernel scratch (estimate)
  int64_t data = 0;         // the rank's rows of the step's sequences
  int64_t comm = 0;         // the all-reduce's receive chunk (rings of 2 or more)
  int64_t snapshot = 0;     // rank 0, when checkpoints are written: host memory
  bool snapshot_on_device = true;  // a CPU device's memory is the host's; a GPU's is not
  int64_t total() const {  // the device's bytes
    return weights + gradients + optimizer + activations() + workspace + ring + kernels + data + comm +
           (snapshot_on_device ? snapshot : 0);
  }
};

struct StagePlan {
  int64_t stage = 0;
  int64_t seq_len = 0;
  int64_t devices = 0;  // every rank of the stage's mesh
  Mesh mesh;            // the job's mesh of those devices (JobConfig::StageMesh)
  int64_t rows = 0;     // tokens a rank holds (seq_len / mesh.sp)
  RankMemory rank;      // the largest rank (rank 0: it keeps the checkpoint snapshot)
  bool fits = true;     // within the budget (when one was given)
  // When it does not fit: the smallest mesh (fewest devices) that does, 0 when none up to the search limit.
  int64_t fit_fsdp = 0, fit_sp = 0;
  RankMemory fit_rank;
};

struct MemoryPlanOptions {
  int64_t devices = 0;        // > 0: the devices the job gets; stages that ask for more run on the largest
                              // valid ring <= this (as a daemon with these devices would place them)
  int64_t device_memory = 0;  // > 0: bytes a device has; each stage is checked against it
  int64_t threads = 0;        // kernel threads per rank; 0: as the trainer picks (ring.threads_per_device, or
                              // this machine's cores / ring size)
  int64_t max_devices = 4096;  // the search for a mesh that fits stops here
  // The devices' kind: "cpu" (the device's memory is the host's: the checkpoint snapshot counts) or "cuda"
  // (the snapshot is in host memory, apart). The buffers are the same on both; the kernel scratch is the CPU
  // kernels' estimate.
  std::string device = "cpu";
};

struct MemoryPlan {
  double parameters = 0;
  std::string precision, remat;
  std::vector<StagePlan> stages;
};

// The per-device memory of every stage of `job` (which need not name files that exist here: only the model,
// precision, remat, ring and stages are read). Errors name the stage or setting.
Status PlanMemory(const JobConfig& job, const MemoryPlanOptions& opt, MemoryPlan* out);

// One rank's memory for `job` at `rows` tokens a rank, a ring of `ring` ranks (sp) and `fsdp` shards, with
// `threads` kernel threads; rank 0's (with the checkpoint snapshot when the job writes checkpoints).
RankMemory RankMemoryOf(const JobConfig& job, int64_t rows, int64_t ring, int64_t fsdp, int64_t threads,
                        int64_t batch, kernels::Device device = kernels::Device::kCpu);

// The same for a stage of `seq_len` tokens on `mesh`: its sp ring splits the sequence; with fsdp > 1 the
// model is sharded (the replica ring, dp x sp, sums the shards), else the world ring is the all-reduce's.
RankMemory RankMemoryOnMesh(const JobConfig& job, int64_t seq_len, const Mesh& mesh, int64_t threads, int64_t batch,
                            kernels::Device device = kernels::Device::kCpu);

// The parts that ModelWorkspace and RingBuffers allocate for one step at `rows` tokens (what the model test
// checks against ModelWorkspace::Bytes of a real step).
struct WorkspaceBytes {
  int64_t activations = 0, workspace = 0, ring = 0;
};
WorkspaceBytes ModelWorkspaceBytes(const ModelConfig& m, int64_t rows, bool bf16, bool remat);

// "80GiB", "512MiB", "1.5TB", "4096" (bytes) -> bytes; false when it is not a size.
bool ParseByteSize(const std::string& text, int64_t* bytes);
// 1536 -> "1.50 KiB".
std::string FormatBytes(double bytes);
// The plan as the command prints it.
std::string FormatMemoryPlan(const MemoryPlan& plan, const MemoryPlanOptions& opt);

}  // namespace rw::runtime
