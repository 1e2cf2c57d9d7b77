// AdamW over the flat parameter vector, with the learning-rate schedule and global-norm clipping.
#pragma once

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
  Status Validate() const;       // names the field: "optimizer.lr: ..."
};

// Learning rate at (1-based) step of total_steps.
double LearningRate(const OptimizerConfig& c, int64_t step, int64_t total_steps);

class AdamW {
 public:
  AdamW(const OptimizerConfig& c, const ParamTable& table, int num_threads,
        kernels::Device device = kernels::Device::kCpu);  // the rank's device runs the update
  // Clips grads in place to the global norm and applies one step. Returns the norm before clipping.
  Status Step(float* params, float* grads, int64_t step, int64_t total_steps, double* grad_norm, double* lr);
  std::vector<float>& m() { return m_; }
  std::vector<float>& v() { return v_; }

 private:
  OptimizerConfig c_;
  const ParamTable& table_;
  kernels::Exec ex_;
  std::vector<float> m_, v_;
};

}  // namespace rw::runtime
