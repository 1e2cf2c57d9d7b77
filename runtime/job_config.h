// A training job as a user writes it (YAML, see configs/), and the one table of its settings: every key
// has a default, a one-line description and a range check whose error names the key. Unknown keys and
// wrong types are rejected; `--set key=value` overrides any key (stages as stages.N.key).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "runtime/checkpoint.h"
#include "runtime/data.h"
#include "runtime/mesh.h"
#include "runtime/model.h"
#include "runtime/optimizer.h"

namespace rw::runtime {

struct StageConfig {
  int64_t seq_len = 256;      // tokens per sequence in this stage
  double rope_theta = 0;  // RoPE base for this stage (LWM raises it with the context); 0: model.rope_theta
  double theta(const ModelConfig& m) const { return rope_theta > 0 ? rope_theta : m.rope_theta; }
  int64_t steps = 100;        // optimizer steps in this stage
  int64_t batch = 1;          // sequences per step (the global batch)
  int64_t devices = 0;        // ring size of this stage; 0: ring.devices. A change re-forms the ring.
};

struct RingConfig {
  int64_t devices = 1;                // ranks in the ring
  int64_t min_devices = 1;            // smallest ring the job may shrink to
  std::string layout = "zigzag";      // contiguous | zigzag | striped
  std::string transport = "inproc";   // inproc (threads) | ucx (processes)
  int64_t threads_per_device = 0;     // kernel threads per rank; 0: cores / devices, at least 1
};

// The job's device mesh (runtime/mesh.h): dp x fsdp x sp = the devices of each stage. sp 0: the devices
// left over (a stage's own `devices` changes sp, never dp or fsdp).
struct MeshConfig {
  int64_t dp = 1;
  int64_t fsdp = 1;
  int64_t sp = 0;
};

struct CheckpointConfig {
  std::string dir;           // empty: no checkpoints
  int64_t every_steps = 0;   // 0: only at the end and at stage changes
  int64_t keep = kDefaultCheckpointsKept;  // most recent checkpoints kept
  int64_t keep_every = 0;    // > 0: also keep every checkpoint whose step is a multiple of this
  bool async = true;         // snapshot at the step boundary, write in the background
};

struct JobConfig {
  std::string name = "job";
  uint64_t seed = 1;
  std::string output_dir = "runs/job";  // metrics.jsonl and logs
  ModelConfig model;
  DataConfig data;
  LossConfig loss;
  std::string init_from;  // a Hugging Face LLaMA directory (or one of our checkpoints) to start from
  std::string remat = "none";  // none | layer: recompute each layer's forward in its backward
  // fp32 | bf16. bf16: fp32 master weights and AdamW moments, a bf16 compute copy refreshed after every
  // optimizer step, bf16 activations into every GEMM and attention block (accumulating in fp32), fp32
  // residual stream, statistics, loss and gradients; ring K/V travel in bf16, dK/dV and (O, lse) in fp32.
  std::string precision = "fp32";
  OptimizerConfig optimizer;
  RingConfig ring;
  MeshConfig mesh;
  std::vector<StageConfig> stages;
  CheckpointConfig checkpoint;
  // Not a setting: the devices a ring's plan gives each stage (ApplyRingSizes; 0 or empty: as configured).
  std::vector<int64_t> planned_devices;
  int64_t total_steps() const;
  // The devices stage i runs on: the ring's plan, else as configured.
  int64_t stage_devices(size_t i) const {
    return i < planned_devices.size() && planned_devices[i] > 0 ? planned_devices[i] : configured_devices(i);
  }
  int64_t configured_devices(size_t i) const { return stages[i].devices > 0 ? stages[i].devices : ring.devices; }
  int64_t stage_end_step(size_t i) const;  // global step number of stage i's last step
  // Whether stage i can run on a ring of `devices` (ring.min_devices, the layout's split of seq_len): what
  // Validate checks of each stage's ring, and what a planner asks of a smaller one.
  // `devices` counts every rank of the mesh; its sp ring is what the layout splits seq_len over.
  Status CheckStageRing(size_t i, int64_t devices) const;
  // The mesh stage i runs on with `devices` ranks: mesh.dp and mesh.fsdp as configured and sp the rest when
  // that divides and the layout splits seq_len over sp. On fewer devices, dp shrinks first (fewer replicas:
  // the global batch and so the loss curve stay the same) while the sp ring stays as long as the stage's
  // own; only when no dp allows that does sp shrink (a shard of the sequence per device grows: memory).
  // fsdp never shrinks (it is what makes the weights fit). An error says why no mesh fits.
  Status StageMesh(size_t i, int64_t devices, Mesh* out) const;
  Status Validate() const;
};

// Parses YAML text; `origin` names the file in errors. Overrides are "key=value" strings.
Status ParseJobConfig(const std::string& yaml, const std::string& origin, const std::vector<std::string>& overrides,
                      JobConfig* out);
// The settings as written (types, known keys, overrides applied), touching no file and checking no range:
// what a server reads from an untrusted request before it confines the job's paths.
Status ParseJobFields(const std::string& yaml, const std::string& origin, const std::vector<std::string>& overrides,
                      JobConfig* out);
Status LoadJobConfig(const std::string& path, const std::vector<std::string>& overrides, JobConfig* out);
// A ring's plan applied to its job: stage i runs on a ring of stage_devices[i] (0: as the job says), each
// checked as Validate checks the job's own (CheckStageRing). Empty: nothing changes.
Status ApplyRingSizes(const std::vector<int64_t>& stage_devices, JobConfig* job);

// Starting from a Hugging Face directory, the model is its config.json: each model setting is taken from
// `theirs`, and one that `is_set` says the job set itself must equal it (max_position_embeddings and
// rope_theta excepted: a longer context and a new RoPE base are what context extension sets; and a larger
// vocab_size, which extends theirs). Errors name the directory and the key.
Status AdoptModel(const ModelConfig& theirs, const std::string& dir, const std::function<bool(const std::string&)>& is_set,
                  ModelConfig* model);

// The settings table as text (key, default, description): `ringworld train --help-config`.
std::string DescribeSettings();

}  // namespace rw::runtime
