#include "runtime/optimizer.h"

#include <algorithm>
#include <cmath>

namespace rw::runtime {

Status OptimizerConfig::Validate() const {
  RW_REQUIRE(std::isfinite(lr) && lr > 0, "optimizer.lr: must be > 0, got " << lr);
  RW_REQUIRE(min_lr_ratio >= 0 && min_lr_ratio <= 1, "optimizer.min_lr_ratio: must be in [0, 1], got " << min_lr_ratio);
  RW_REQUIRE(warmup_steps >= 0, "optimizer.warmup_steps: must be >= 0, got " << warmup_steps);
  RW_REQUIRE(schedule == "cosine" || schedule == "constant",
             "optimizer.schedule: '" << schedule << "' is not cosine or constant");
  RW_REQUIRE(beta1 >= 0 && beta1 < 1, "optimizer.beta1: must be in [0, 1), got " << beta1);
  RW_REQUIRE(beta2 >= 0 && beta2 < 1, "optimizer.beta2: must be in [0, 1), got " << beta2);
  RW_REQUIRE(eps > 0, "optimizer.eps: must be > 0, got " << eps);
  RW_REQUIRE(weight_decay >= 0, "optimizer.weight_decay: must be >= 0, got " << weight_decay);
  RW_REQUIRE(grad_clip >= 0, "optimizer.grad_clip: must be >= 0, got " << grad_clip);
  return Status::Ok();
}

double LearningRate(const OptimizerConfig& c, int64_t step, int64_t total) {
  if (c.warmup_steps > 0 && step <= c.warmup_steps) return c.lr * double(step) / double(c.warmup_steps);
  if (c.schedule == "constant" || total <= c.warmup_steps) return c.lr;
  // cosine from lr down to min_lr_ratio * lr over the steps after warmup
  const double t = double(step - c.warmup_steps) / double(total - c.warmup_steps);
  const double floor = c.min_lr_ratio * c.lr;
  return floor + 0.5 * (c.lr - floor) * (1.0 + std::cos(M_PI * std::min(1.0, t)));
}

AdamW::AdamW(const OptimizerConfig& c, const ParamTable& table, int num_threads, kernels::Device device, size_t lo,
             size_t hi)
    : c_(c),
      table_(table),
      ex_{device, num_threads},
      lo_(std::min(lo, table.total())),
      hi_(std::max(lo_, std::min(hi, table.total()))),
      m_(hi_ - lo_, 0.f),
      v_(hi_ - lo_, 0.f) {}

double AdamW::SquaredNorm(const float* grads) const { return SquaredNormAt(grads + lo_); }

double AdamW::SquaredNormAt(const float* g) const {
  double ss = 0;  // fp64, in a fixed order: every rank computes the same norm from the same gradients
  for (size_t i = 0; i < hi_ - lo_; ++i) ss += double(g[i]) * double(g[i]);
  return ss;
}

Status AdamW::Step(float* params, float* grads, int64_t step, int64_t total, double* grad_norm, double* lr_out) {
  RW_REQUIRE(lo_ == 0 && hi_ == table_.total(), "optimizer: Step updates the whole vector; a shard uses Apply");
  const double norm = std::sqrt(SquaredNorm(grads));
  RW_RETURN_IF_ERROR(Apply(params, grads, norm, step, total, lr_out));
  *grad_norm = norm;
  return Status::Ok();
}

Status AdamW::Apply(float* params, float* grads, double norm, int64_t step, int64_t total, double* lr_out) {
  return ApplyAt(params + lo_, grads + lo_, norm, step, total, lr_out);
}

Status AdamW::ApplyAt(float* params, float* grads, double norm, int64_t step, int64_t total, double* lr_out) {
  RW_REQUIRE(std::isfinite(norm), "optimizer: gradient norm is not finite at step " << step);
  if (c_.grad_clip > 0 && norm > c_.grad_clip) {
    const float s = float(c_.grad_clip / norm);
    for (size_t i = 0; i < hi_ - lo_; ++i) grads[i] *= s;
  }
  const double lr = LearningRate(c_, step, total);
  for (const auto& t : table_.tensors()) {  // each tensor's part inside [lo, hi), with its own decay
    const size_t b = std::max(lo_, t.offset), e = std::min(hi_, t.offset + t.numel);
    if (b >= e) continue;
    kernels::AdamWHyper hp{float(lr), float(c_.beta1), float(c_.beta2), float(c_.eps),
                           t.shape.size() >= 2 ? float(c_.weight_decay) : 0.f};
    RW_RETURN_IF_ERROR(kernels::AdamWStep(ex_, int64_t(e - b), params + (b - lo_), grads + (b - lo_),
                                          m_.data() + (b - lo_), v_.data() + (b - lo_), hp, step));
  }
  *lr_out = lr;
  return Status::Ok();
}

}  // namespace rw::runtime
