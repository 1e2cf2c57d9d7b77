// Entry points of the per-token layers and AdamW: validate, then hand to the device's implementation.
#include "kernels/layers.h"

#include <algorithm>
#include <cmath>

#include "kernels/backends.h"
#include "kernels/ref/layers_ref.h"

namespace rw::kernels {

#ifdef RW_HAVE_CUDA
#define RW_CUDA_CALL(call) return cuda::call
#else
#define RW_CUDA_CALL(call) return Status::Error("device: this build has no CUDA backend")
#endif

namespace {

Status CheckExec(const Exec& ex) {
  RW_REQUIRE(ex.num_threads >= 0, "num_threads: must be >= 0, got " << ex.num_threads);
  switch (ex.device) {
    case Device::kRef:
    case Device::kCpu:
      return Status::Ok();
    case Device::kCuda:
#ifdef RW_HAVE_CUDA
      RW_REQUIRE(cuda::DevicePresent(), "device: cuda requested but no CUDA device is present");
      return Status::Ok();
#else
      return Status::Error("device: this build has no CUDA backend (configure with CUDA to get it)");
#endif
  }
  return Status::Error("device: unknown device " + std::to_string(int(ex.device)));
}

#define RW_NONNULL(ptr) RW_REQUIRE((ptr) != nullptr, #ptr ": null pointer")

// Token-block size: the caller's, or one that keeps a block's (rows x width) scratch near 4M floats.
int64_t PickBlock(int64_t block, int64_t width) {
  return block > 0 ? block : std::clamp<int64_t>((int64_t(1) << 22) / std::max<int64_t>(width, 1), 16, 1024);
}

Status CheckTargets(const Exec& ex, int64_t n, int64_t vocab, const int32_t* target) {
  if (ex.device == Device::kCuda) return Status::Ok();  // device memory: the kernel ignores bad ids
  for (int64_t i = 0; i < n; ++i)
    RW_REQUIRE(target[i] < vocab, "target[" << i << "]: token id " << target[i]
                                            << " is outside the vocabulary of " << vocab);
  return Status::Ok();
}

}  // namespace

namespace {
Status CheckLinear(const Exec& ex, int64_t n, int64_t in, int64_t out, const float* x, const float* w) {
  RW_RETURN_IF_ERROR(CheckExec(ex));
  RW_REQUIRE(n >= 0, "n: must be >= 0, got " << n);
  RW_REQUIRE(in >= 1, "in: must be >= 1, got " << in);
  RW_REQUIRE(out >= 1, "out: must be >= 1, got " << out);
  if (n > 0) RW_NONNULL(x);
  RW_NONNULL(w);
  return Status::Ok();
}
}  // namespace

Status LinearForward(const Exec& ex, int64_t n, int64_t in, int64_t out, const float* x, const float* w, float* y) {
  RW_RETURN_IF_ERROR(CheckLinear(ex, n, in, out, x, w));
  if (n == 0) return Status::Ok();
  RW_NONNULL(y);
  switch (ex.device) {
    case Device::kRef: ref::LinearForward<float>(n, in, out, x, w, y); return Status::Ok();
    case Device::kCpu: cpu::LinearForward(ex, n, in, out, x, w, y); return Status::Ok();
    case Device::kCuda: RW_CUDA_CALL(LinearForward(ex, n, in, out, x, w, y));
  }
  return Status::Error("device: unsupported");
}

Status LinearBackward(const Exec& ex, int64_t n, int64_t in, int64_t out, const float* x, const float* w,
                      const float* dy, float* dx, float* dw) {
  RW_RETURN_IF_ERROR(CheckLinear(ex, n, in, out, x, w));
  if (n == 0) return Status::Ok();
  RW_NONNULL(dy);
  RW_NONNULL(dw);
  switch (ex.device) {
    case Device::kRef: ref::LinearBackward<float>(n, in, out, x, w, dy, dx, dw); return Status::Ok();
    case Device::kCpu: cpu::LinearBackward(ex, n, in, out, x, w, dy, dx, dw); return Status::Ok();
    case Device::kCuda: RW_CUDA_CALL(LinearBackward(ex, n, in, out, x, w, dy, dx, dw));
  }
  return Status::Error("device: unsupported");
}

Status RmsNormForward(const Exec& ex, int64_t n, int64_t e, const float* x, const float* w, float eps,
                      float* y, float* rstd) {
  RW_RETURN_IF_ERROR(CheckExec(ex));
  RW_REQUIRE(n >= 0, "n: must be >= 0, got " << n);
  RW_REQUIRE(e >= 1, "e: must be >= 1, got " << e);
  RW_REQUIRE(std::isfinite(eps) && eps > 0.f, "eps: must be finite and > 0, got " << eps);
  if (n == 0) return Status::Ok();
  RW_NONNULL(x);
  RW_NONNULL(w);
  RW_NONNULL(y);
  RW_NONNULL(rstd);
  switch (ex.device) {
    case Device::kRef: ref::RmsNormForward<float>(n, e, x, w, eps, y, rstd); return Status::Ok();
    case Device::kCpu: cpu::RmsNormForward(ex, n, e, x, w, eps, y, rstd); return Status::Ok();
    case Device::kCuda: RW_CUDA_CALL(RmsNormForward(ex, n, e, x, w, eps, y, rstd));
  }
  return Status::Error("device: unsupported");
}

Status RmsNormBackward(const Exec& ex, int64_t n, int64_t e, const float* x, const float* w,
                       const float* rstd, const float* dy, float* dx, float* dw) {
  RW_RETURN_IF_ERROR(CheckExec(ex));
  RW_REQUIRE(n >= 0, "n: must be >= 0, got " << n);
  RW_REQUIRE(e >= 1, "e: must be >= 1, got " << e);
  if (n == 0) return Status::Ok();
  RW_NONNULL(x);
  RW_NONNULL(w);
  RW_NONNULL(rstd);
  RW_NONNULL(dy);
  RW_NONNULL(dx);
  RW_NONNULL(dw);
  switch (ex.device) {
    case Device::kRef: ref::RmsNormBackward<float>(n, e, x, w, rstd, dy, dx, dw); return Status::Ok();
    case Device::kCpu: cpu::RmsNormBackward(ex, n, e, x, w, rstd, dy, dx, dw); return Status::Ok();
    case Device::kCuda: RW_CUDA_CALL(RmsNormBackward(ex, n, e, x, w, rstd, dy, dx, dw));
  }
  return Status::Error("device: unsupported");
}

Status Rope(const Exec& ex, int64_t s, int64_t h, int64_t d, View3 x, View3 y, const int64_t* pos,
            double theta, bool inverse) {
  RW_RETURN_IF_ERROR(CheckExec(ex));
  RW_REQUIRE(s >= 0, "s: must be >= 0, got " << s);
  RW_REQUIRE(h >= 1, "h: must be >= 1, got " << h);
  RW_REQUIRE(d >= 2 && d % 2 == 0, "d: head dim must be even and >= 2, got " << d);
  RW_REQUIRE(std::isfinite(theta) && theta > 1.0, "rope_theta: must be finite and > 1, got " << theta);
  if (s == 0) return Status::Ok();
  RW_REQUIRE(x.data != nullptr, "x: null pointer");
  RW_REQUIRE(y.data != nullptr, "y: null pointer");
  RW_NONNULL(pos);
  RW_REQUIRE(x.stride_s >= 0 && x.stride_h >= 0 && y.stride_s >= 0 && y.stride_h >= 0,
             "x/y: negative stride");
  switch (ex.device) {
    case Device::kRef: ref::Rope<float>(s, h, d, x, y, pos, theta, inverse); return Status::Ok();
    case Device::kCpu: cpu::Rope(ex, s, h, d, x, y, pos, theta, inverse); return Status::Ok();
    case Device::kCuda: RW_CUDA_CALL(Rope(ex, s, h, d, x, y, pos, theta, inverse));
  }
  return Status::Error("device: unsupported");
}

namespace {
Status CheckFfn(const Exec& ex, int64_t n, int64_t e, int64_t f, const float* x, const FfnWeights& w,
                int64_t block) {
  RW_RETURN_IF_ERROR(CheckExec(ex));
  RW_REQUIRE(n >= 0, "n: must be >= 0, got " << n);
  RW_REQUIRE(e >= 1, "e: model width must be >= 1, got " << e);
  RW_REQUIRE(f >= 1, "f: ffn width must be >= 1, got " << f);
  RW_REQUIRE(block >= 0, "block: must be >= 0, got " << block);
  if (n == 0) return Status::Ok();
  RW_NONNULL(x);
  RW_NONNULL(w.w_gate);
  RW_NONNULL(w.w_up);
  RW_NONNULL(w.w_down);
  return Status::Ok();
}
}  // namespace

Status FfnForward(const Exec& ex, int64_t n, int64_t e, int64_t f, const float* x, FfnWeights w, float* y,
                  int64_t block) {
  RW_RETURN_IF_ERROR(CheckFfn(ex, n, e, f, x, w, block));
  if (n == 0) return Status::Ok();
  RW_NONNULL(y);
  block = PickBlock(block, f);
  switch (ex.device) {
    case Device::kRef: ref::FfnForward<float>(n, e, f, x, w.w_gate, w.w_up, w.w_down, y); return Status::Ok();
    case Device::kCpu: cpu::FfnForward(ex, n, e, f, x, w, y, block); return Status::Ok();
    case Device::kCuda: RW_CUDA_CALL(FfnForward(ex, n, e, f, x, w, y, block));
  }
  return Status::Error("device: unsupported");
}

Status FfnBackward(const Exec& ex, int64_t n, int64_t e, int64_t f, const float* x, FfnWeights w,
                   const float* dy, float* dx, FfnGrads dw, int64_t block) {
  RW_RETURN_IF_ERROR(CheckFfn(ex, n, e, f, x, w, block));
  if (n == 0) return Status::Ok();
  RW_NONNULL(dy);
  RW_NONNULL(dx);
  RW_NONNULL(dw.w_gate);
  RW_NONNULL(dw.w_up);
  RW_NONNULL(dw.w_down);
  block = PickBlock(block, f);
  switch (ex.device) {
    case Device::kRef:
      ref::FfnBackward<float>(n, e, f, x, w.w_gate, w.w_up, w.w_down, dy, dx, dw.w_gate, dw.w_up, dw.w_down);
      return Status::Ok();
    case Device::kCpu: cpu::FfnBackward(ex, n, e, f, x, w, dy, dx, dw, block); return Status::Ok();
    case Device::kCuda: RW_CUDA_CALL(FfnBackward(ex, n, e, f, x, w, dy, dx, dw, block));
  }
  return Status::Error("device: unsupported");
}

namespace {
Status CheckCe(const Exec& ex, int64_t n, int64_t e, int64_t vocab, const float* h, const float* w,
               const int32_t* target, int64_t block) {
  RW_RETURN_IF_ERROR(CheckExec(ex));
  RW_REQUIRE(n >= 0, "n: must be >= 0, got " << n);
  RW_REQUIRE(e >= 1, "e: model width must be >= 1, got " << e);
  RW_REQUIRE(vocab >= 1, "vocab: must be >= 1, got " << vocab);
  RW_REQUIRE(block >= 0, "block: must be >= 0, got " << block);
  if (n == 0) return Status::Ok();
  RW_NONNULL(h);
  RW_NONNULL(w);
  RW_NONNULL(target);
  return CheckTargets(ex, n, vocab, target);
}
}  // namespace

Status CrossEntropyForward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, const float* h,
                           const float* w, const int32_t* target, const float* weight, float* loss,
                           double* weighted_sum, int64_t block) {
  RW_RETURN_IF_ERROR(CheckCe(ex, n, e, vocab, h, w, target, block));
  if (weighted_sum) *weighted_sum = 0;
  if (n == 0) return Status::Ok();
  RW_NONNULL(loss);
  block = PickBlock(block, vocab);
  double total = 0;
  switch (ex.device) {
    case Device::kRef: total = ref::CrossEntropyForward<float>(n, e, vocab, h, w, target, weight, loss); break;
    case Device::kCpu: total = cpu::CrossEntropyForward(ex, n, e, vocab, h, w, target, weight, loss, block); break;
    case Device::kCuda: RW_CUDA_CALL(CrossEntropyForward(ex, n, e, vocab, h, w, target, weight, loss, weighted_sum, block));
  }
  if (weighted_sum) *weighted_sum = total;
  return Status::Ok();
}

Status CrossEntropyBackward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, const float* h,
                            const float* w, const int32_t* target, const float* weight, float grad_scale,
                            float* dh, float* dw, int64_t block) {
  RW_RETURN_IF_ERROR(CheckCe(ex, n, e, vocab, h, w, target, block));
  RW_REQUIRE(std::isfinite(grad_scale), "grad_scale: must be finite, got " << grad_scale);
  if (n == 0) return Status::Ok();
  RW_NONNULL(dh);
  RW_NONNULL(dw);
  block = PickBlock(block, vocab);
  switch (ex.device) {
    case Device::kRef:
      ref::CrossEntropyBackward<float>(n, e, vocab, h, w, target, weight, grad_scale, dh, dw);
      return Status::Ok();
    case Device::kCpu:
      cpu::CrossEntropyBackward(ex, n, e, vocab, h, w, target, weight, grad_scale, dh, dw, block);
      return Status::Ok();
    case Device::kCuda:
      RW_CUDA_CALL(CrossEntropyBackward(ex, n, e, vocab, h, w, target, weight, grad_scale, dh, dw, block));
  }
  return Status::Error("device: unsupported");
}

Status AdamWStep(const Exec& ex, int64_t n, float* p, const float* g, float* m, float* v,
                 const AdamWHyper& hp, int64_t step) {
  RW_RETURN_IF_ERROR(CheckExec(ex));
  RW_REQUIRE(n >= 0, "n: must be >= 0, got " << n);
  RW_REQUIRE(step >= 1, "step: AdamW steps count from 1, got " << step);
  RW_REQUIRE(std::isfinite(hp.lr) && hp.lr >= 0.f, "lr: must be finite and >= 0, got " << hp.lr);
  RW_REQUIRE(hp.beta1 >= 0.f && hp.beta1 < 1.f, "beta1: must be in [0, 1), got " << hp.beta1);
  RW_REQUIRE(hp.beta2 >= 0.f && hp.beta2 < 1.f, "beta2: must be in [0, 1), got " << hp.beta2);
  RW_REQUIRE(std::isfinite(hp.eps) && hp.eps > 0.f, "eps: must be finite and > 0, got " << hp.eps);
  RW_REQUIRE(std::isfinite(hp.weight_decay) && hp.weight_decay >= 0.f,
             "weight_decay: must be finite and >= 0, got " << hp.weight_decay);
  if (n == 0) return Status::Ok();
  RW_NONNULL(p);
  RW_NONNULL(g);
  RW_NONNULL(m);
  RW_NONNULL(v);
  switch (ex.device) {
    case Device::kRef: ref::AdamWStep<float>(n, p, g, m, v, hp, step); return Status::Ok();
    case Device::kCpu: cpu::AdamWStep(ex, n, p, g, m, v, hp, step); return Status::Ok();
    case Device::kCuda: RW_CUDA_CALL(AdamWStep(ex, n, p, g, m, v, hp, step));
  }
  return Status::Error("device: unsupported");
}

Status AddInto(const Exec& ex, int64_t n, const float* src, float* dst) {
  RW_RETURN_IF_ERROR(CheckExec(ex));
  RW_REQUIRE(n >= 0, "n: must be >= 0, got " << n);
  if (n == 0) return Status::Ok();
  RW_NONNULL(src);
  RW_NONNULL(dst);
  switch (ex.device) {
    case Device::kRef:
      for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
      return Status::Ok();
    case Device::kCpu: cpu::AddInto(ex, n, src, dst); return Status::Ok();
    case Device::kCuda: RW_CUDA_CALL(AddInto(ex, n, src, dst));
  }
  return Status::Error("device: unsupported");
}

}  // namespace rw::kernels
