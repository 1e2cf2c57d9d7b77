// Entry points of the per-token layers, embedding, casts and AdamW: validate once, then call the device's
// backend table (kernels/backend.h).
#include "kernels/layers.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <utility>

#include "kernels/backend.h"

namespace rw::kernels {

int64_t TokenBlock(int64_t width) {
  return std::clamp<int64_t>((int64_t(1) << 22) / std::max<int64_t>(width, 1), 16, 1024);
}


namespace {

// The device's table for `op` in `dtype`, after the checks every op shares.
Status Table(const Exec& ex, Op op, DType dtype, const Backend** b) {
  RW_REQUIRE(ex.num_threads >= 0, "num_threads: must be >= 0, got " << ex.num_threads);
  return Dispatch(ex.device, op, dtype, b);
}

// Operands of an op that computes in `compute`: fp32 compute takes fp32 only; bf16 compute takes bf16 or
// fp32 (rounded on the way in).
Status CheckOperand(const char* name, View v, DType compute) {
  RW_REQUIRE(v.dtype == compute || v.dtype == DType::kF32,
             name << ": " << DTypeName(v.dtype) << " operand of an op computing in " << DTypeName(compute));
  return Status::Ok();
}

#define RW_NONNULL(ptr) RW_REQUIRE(static_cast<bool>(ptr), #ptr ": null pointer")

// Token-block size: the caller's, or one that keeps a block's (rows x width) scratch near 4M floats.
int64_t PickBlock(int64_t block, int64_t width) { return block > 0 ? block : TokenBlock(width); }

// Operands that share the op's dtype (the first's): the error names the one that differs.
Status SameDType(std::initializer_list<std::pair<const char*, View>> views) {
  const auto& first = *views.begin();
  for (const auto& [name, v] : views)
    RW_REQUIRE(v.dtype == first.second.dtype, name << ": dtype " << DTypeName(v.dtype) << " differs from "
                                                   << first.first << "'s " << DTypeName(first.second.dtype));
  return Status::Ok();
}

// Host-side ids are checked here; device memory cannot be read from the host, so those kernels skip bad
// ids themselves.
Status CheckIds(const Exec& ex, const char* name, int64_t n, int64_t vocab, const int32_t* ids, bool negative_ok) {
  if (ex.device == Device::kCuda) return Status::Ok();
  for (int64_t i = 0; i < n; ++i)
    RW_REQUIRE(ids[i] < vocab && (negative_ok || ids[i] >= 0),
               name << "[" << i << "]: token id " << ids[i] << " is outside the vocabulary of " << vocab);
  return Status::Ok();
}

}  // namespace

namespace {
Status CheckLinear(int64_t n, int64_t in, int64_t out, View x, View w) {
  RW_REQUIRE(n >= 0, "n: must be >= 0, got " << n);
  RW_REQUIRE(in >= 1, "in: must be >= 1, got " << in);
  RW_REQUIRE(out >= 1, "out: must be >= 1, got " << out);
  if (n > 0) RW_NONNULL(x.data);
  RW_NONNULL(w.data);
  return CheckOperand("x", x, w.dtype);
}
}  // namespace

Status LinearForward(const Exec& ex, int64_t n, int64_t in, int64_t out, View x, View w, View y) {
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(Table(ex, Op::kLinearForward, w.dtype, &b));
  RW_RETURN_IF_ERROR(CheckLinear(n, in, out, x, w));
  if (n == 0) return Status::Ok();
  RW_NONNULL(y.data);
  RW_RETURN_IF_ERROR(CheckOperand("y", y, w.dtype));
  return b->linear_forward(ex, n, in, out, x, w, y);
}

Status LinearBackward(const Exec& ex, int64_t n, int64_t in, int64_t out, View x, View w, View dy, View dx,
                      float* dw) {
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(Table(ex, Op::kLinearBackward, w.dtype, &b));
  RW_RETURN_IF_ERROR(CheckLinear(n, in, out, x, w));
  if (n == 0) return Status::Ok();
  RW_NONNULL(dy.data);
  RW_NONNULL(dw);
  RW_RETURN_IF_ERROR(CheckOperand("dy", dy, w.dtype));
  if (dx) RW_RETURN_IF_ERROR(CheckOperand("dx", dx, w.dtype));
  return b->linear_backward(ex, n, in, out, x, w, dy, dx, dw);
}

Status RmsNormForward(const Exec& ex, int64_t n, int64_t e, const float* x, const float* w, float eps, View y,
                      float* rstd) {
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(Table(ex, Op::kRmsNormForward, y.dtype, &b));
  RW_REQUIRE(n >= 0, "n: must be >= 0, got " << n);
  RW_REQUIRE(e >= 1, "e: must be >= 1, got " << e);
  RW_REQUIRE(std::isfinite(eps) && eps > 0.f, "eps: must be finite and > 0, got " << eps);
  if (n == 0) return Status::Ok();
  RW_NONNULL(x);
  RW_NONNULL(w);
  RW_NONNULL(y.data);
  RW_NONNULL(rstd);
  return b->rmsnorm_forward(ex, n, e, x, w, eps, y, rstd);
}

Status RmsNormBackward(const Exec& ex, int64_t n, int64_t e, View x, const float* w, const float* rstd, View dy,
                       View dx, float* dw) {
  RW_RETURN_IF_ERROR(SameDType({{"x", x}, {"dy", dy}, {"dx", dx}}));
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(Table(ex, Op::kRmsNormBackward, x.dtype, &b));
  RW_REQUIRE(n >= 0, "n: must be >= 0, got " << n);
  RW_REQUIRE(e >= 1, "e: must be >= 1, got " << e);
  if (n == 0) return Status::Ok();
  RW_NONNULL(x);
  RW_NONNULL(w);
  RW_NONNULL(rstd);
  RW_NONNULL(dy);
  RW_NONNULL(dx);
  RW_NONNULL(dw);
  return b->rmsnorm_backward(ex, n, e, x, w, rstd, dy, dx, dw);
}

Status Rope(const Exec& ex, int64_t s, int64_t h, int64_t d, View3 x, View3 y, const int64_t* pos,
            double theta, bool inverse) {
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(Table(ex, Op::kRope, DType::kF32, &b));
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
  return b->rope(ex, s, h, d, x, y, pos, theta, inverse);
}

namespace {
Status CheckFfn(int64_t n, int64_t e, int64_t f, View x, const FfnWeights& w, int64_t block) {
  RW_REQUIRE(n >= 0, "n: must be >= 0, got " << n);
  RW_REQUIRE(e >= 1, "e: model width must be >= 1, got " << e);
  RW_REQUIRE(f >= 1, "f: ffn width must be >= 1, got " << f);
  RW_REQUIRE(block >= 0, "block: must be >= 0, got " << block);
  RW_REQUIRE(w.w_up.dtype == w.w_gate.dtype && w.w_down.dtype == w.w_gate.dtype,
             "w: gate, up and down weights must share one dtype");
  if (n == 0) return Status::Ok();
  RW_NONNULL(x.data);
  RW_NONNULL(w.w_gate.data);
  RW_NONNULL(w.w_up.data);
  RW_NONNULL(w.w_down.data);
  return CheckOperand("x", x, w.w_gate.dtype);
}
}  // namespace

Status FfnForward(const Exec& ex, int64_t n, int64_t e, int64_t f, View x, FfnWeights w, View y, int64_t block) {
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(Table(ex, Op::kFfnForward, w.w_gate.dtype, &b));
  RW_RETURN_IF_ERROR(CheckFfn(n, e, f, x, w, block));
  if (n == 0) return Status::Ok();
  RW_NONNULL(y.data);
  RW_RETURN_IF_ERROR(CheckOperand("y", y, w.w_gate.dtype));
  return b->ffn_forward(ex, n, e, f, x, w, y, PickBlock(block, f));
}

Status FfnBackward(const Exec& ex, int64_t n, int64_t e, int64_t f, View x, FfnWeights w, View dy, float* dx,
                   FfnGrads dw, int64_t block) {
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(Table(ex, Op::kFfnBackward, w.w_gate.dtype, &b));
  RW_RETURN_IF_ERROR(CheckFfn(n, e, f, x, w, block));
  if (n == 0) return Status::Ok();
  RW_NONNULL(dy.data);
  RW_NONNULL(dx);
  RW_NONNULL(dw.w_gate);
  RW_NONNULL(dw.w_up);
  RW_NONNULL(dw.w_down);
  RW_RETURN_IF_ERROR(CheckOperand("dy", dy, w.w_gate.dtype));
  return b->ffn_backward(ex, n, e, f, x, w, dy, dx, dw, PickBlock(block, f));
}

namespace {
Status CheckCe(const Exec& ex, int64_t n, int64_t e, int64_t vocab, View h, View w, const int32_t* target,
               int64_t block) {
  RW_REQUIRE(n >= 0, "n: must be >= 0, got " << n);
  RW_REQUIRE(e >= 1, "e: model width must be >= 1, got " << e);
  RW_REQUIRE(vocab >= 1, "vocab: must be >= 1, got " << vocab);
  RW_REQUIRE(block >= 0, "block: must be >= 0, got " << block);
  if (n == 0) return Status::Ok();
  RW_NONNULL(h.data);
  RW_NONNULL(w.data);
  RW_NONNULL(target);
  RW_RETURN_IF_ERROR(CheckOperand("h", h, w.dtype));
  return CheckIds(ex, "target", n, vocab, target, /*negative_ok=*/true);
}
}  // namespace

Status CrossEntropyForward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, View h, View w,
                           const int32_t* target, const float* weight, float* loss, double* weighted_sum,
                           int64_t block) {
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(Table(ex, Op::kCrossEntropyForward, w.dtype, &b));
  RW_RETURN_IF_ERROR(CheckCe(ex, n, e, vocab, h, w, target, block));
  if (weighted_sum) *weighted_sum = 0;
  if (n == 0) return Status::Ok();
  RW_NONNULL(loss);
  return b->cross_entropy_forward(ex, n, e, vocab, h, w, target, weight, loss, weighted_sum, PickBlock(block, vocab));
}

Status CrossEntropyBackward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, View h, View w,
                            const int32_t* target, const float* weight, float grad_scale, float* dh, float* dw,
                            int64_t block) {
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(Table(ex, Op::kCrossEntropyBackward, w.dtype, &b));
  RW_RETURN_IF_ERROR(CheckCe(ex, n, e, vocab, h, w, target, block));
  RW_REQUIRE(std::isfinite(grad_scale), "grad_scale: must be finite, got " << grad_scale);
  if (n == 0) return Status::Ok();
  RW_NONNULL(dh);
  RW_NONNULL(dw);
  return b->cross_entropy_backward(ex, n, e, vocab, h, w, target, weight, grad_scale, dh, dw,
                                   PickBlock(block, vocab));
}

Status AdamWStep(const Exec& ex, int64_t n, View p, View g, View m, View v, const AdamWHyper& hp, int64_t step) {
  RW_RETURN_IF_ERROR(SameDType({{"param", p}, {"grad", g}, {"m", m}, {"v", v}}));
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(Table(ex, Op::kAdamW, p.dtype, &b));
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
  return b->adamw_step(ex, n, p, g, m, v, hp, step);
}

Status AddInto(const Exec& ex, int64_t n, View src, View dst) {
  RW_RETURN_IF_ERROR(SameDType({{"src", src}, {"dst", dst}}));
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(Table(ex, Op::kAddInto, src.dtype, &b));
  RW_REQUIRE(n >= 0, "n: must be >= 0, got " << n);
  if (n == 0) return Status::Ok();
  RW_NONNULL(src);
  RW_NONNULL(dst);
  return b->add_into(ex, n, src, dst);
}

Status Cast(const Exec& ex, int64_t n, View src, View dst) {
  const DType narrow = src.dtype != DType::kF32 ? src.dtype : dst.dtype;
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(Table(ex, Op::kCast, narrow, &b));
  RW_REQUIRE(n >= 0, "n: must be >= 0, got " << n);
  RW_REQUIRE(src.dtype == DType::kF32 || dst.dtype == DType::kF32,
             "dst: casts go between f32 and one narrow type, got " << DTypeName(src.dtype) << " -> "
                                                                   << DTypeName(dst.dtype));
  if (n == 0) return Status::Ok();
  RW_NONNULL(src.data);
  RW_NONNULL(dst.data);
  return b->cast(ex, n, src, dst);
}

namespace {
// The shared checks of both directions: shape, the table's and the rows' pointers, ids in the vocabulary.
Status CheckEmbedding(const Exec& ex, Op op, int64_t n, int64_t e, int64_t vocab, const int32_t* ids,
                      View table, View rows, const char* rows_name, const Backend** b) {
  RW_RETURN_IF_ERROR(SameDType({{"table", table}, {rows_name, rows}}));
  RW_RETURN_IF_ERROR(Table(ex, op, table.dtype, b));
  RW_REQUIRE(n >= 0 && e >= 1 && vocab >= 1,
             "shape: need n >= 0, e >= 1, vocab >= 1, got (" << n << ", " << e << ", " << vocab << ")");
  if (n == 0) return Status::Ok();
  RW_NONNULL(ids);
  RW_NONNULL(table);
  RW_NONNULL(rows);
  return CheckIds(ex, "ids", n, vocab, ids, /*negative_ok=*/false);
}
}  // namespace

Status EmbeddingForward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, const int32_t* ids, View table,
                        View x) {
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(CheckEmbedding(ex, Op::kEmbeddingForward, n, e, vocab, ids, table, x, "x", &b));
  return n == 0 ? Status::Ok() : b->embedding_forward(ex, n, e, ids, table, x);
}

Status EmbeddingBackward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, const int32_t* ids, View dx,
                         View dtable) {
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(CheckEmbedding(ex, Op::kEmbeddingBackward, n, e, vocab, ids, dtable, dx, "dx", &b));
  return n == 0 ? Status::Ok() : b->embedding_backward(ex, n, e, ids, dx, dtable);
}

}  // namespace rw::kernels
