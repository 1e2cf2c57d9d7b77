// AdamW over the flat parameter vector, with the learning-rate schedule and global-norm clipping.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/layers.h"
#include "runtime/model.h"

namespace rw::runtime {

struct OptimizerConfig {
  double lr = 1e-3;              // peak learning rate
  double min_lr_ratio = 0.1;     // cosine floor, as a fraction of lr
  int64_t warmup_steps = 0;      // linear warmup from 0
  std::string schedule = "cosine";  // cosine | constant (after warmup)
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;     // on matrices only (norm weights are not decayed)
  double grad_clip = 1.0;        // max global L2 norm; 0 disables
  // ZeRO-1 over the ring: each rank keeps m and v of its chunk of the parameters only (1/R of 8 bytes a
  // parameter); the same updates as the replicated optimizer, up to the order the norm's fp64 partial sums
  // are added in (deterministic for a given ring size).
  bool shard = false;
  Status Validate() const;       // names the field: "optimizer.lr: ..."
};

// Learning rate at (1-based) step of total_steps.
double LearningRate(const OptimizerConfig& c, int64_t step, int64_t total_steps);

// The update of [lo, hi) of the flat parameter vector (all of it by default). A ring that shards the
// optimizer (optimizer.shard: ZeRO-1) gives each rank its chunk: its moments are then that chunk's only.
class AdamW {
 public:
  AdamW(const OptimizerConfig& c, const ParamTable& table, int num_threads,
        kernels::Device device = kernels::Device::kCpu,  // the rank's device runs the update
        size_t lo = 0, size_t hi = SIZE_MAX);
  // Clips grads in place to the global norm and applies one step. Returns the norm before clipping.
  // For the whole vector only; a shard uses SquaredNorm (summed over the ring) and Apply.
  Status Step(float* params, float* grads, int64_t step, int64_t total_steps, double* grad_norm, double* lr);
  // sum of grads[i]^2 over [lo, hi), in fp64, in index order.
  double SquaredNorm(const float* grads) const;
  // Clips [lo, hi) of grads to the global `norm` (finite) and updates [lo, hi) of params.
  Status Apply(float* params, float* grads, double norm, int64_t step, int64_t total_steps, double* lr);
  // The same on storage of [lo, hi) only (a shard's): p_lo[i - lo] and g_lo[i - lo] are parameter i's.
  double SquaredNormAt(const float* g_lo) const;
  Status ApplyAt(float* p_lo, float* g_lo, double norm, int64_t step, int64_t total_steps, double* lr);
  size_t lo() const { return lo_; }
  size_t hi() const { return hi_; }
  std::vector<float>& m() { return m_; }  // hi - lo entries: m[i - lo] belongs to parameter i
  std::vector<float>& v() { return v_; }

 private:
  OptimizerConfig c_;
  const ParamTable& table_;
  kernels::Exec ex_;
  size_t lo_, hi_;
  std::vector<float> m_, v_;
};

}  // namespace rw::runtime
