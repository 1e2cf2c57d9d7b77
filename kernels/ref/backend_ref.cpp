// The reference backend's table: the scalar kernels of kernels/ref (fp64 accumulation), fp32 operands only
// (plus casts, so tests can feed it the bf16-rounded inputs of a bf16 kernel).
#include <algorithm>

#include "kernels/backend.h"
#include "kernels/ref/attention_ref.h"
#include "kernels/ref/layers_ref.h"
#include "kernels/ref/vision_ref.h"

namespace rw::kernels {
namespace {

bool Supports(Op op, DType dtype) { return dtype == DType::kF32 || (op == Op::kCast && dtype == DType::kBF16); }

const float* F(View v) { return v.as<const float>(); }
float* W(View v) { return v.as<float>(); }

Backend Make() {
  Backend b;
  b.name = "ref";
  b.device = Device::kRef;
  SetHostMemory(&b);
  b.supports = Supports;
  b.describe = [](DType) { return std::string("GEMMs and attention by the scalar references (fp64 accumulation)"); };
  b.check_attention = AttentionWritesF32;
  b.attention_forward = [](const AttentionParams& p) {
    ref::AttentionForward<float>(p, p.lse);
    return Status::Ok();
  };
  b.attention_backward_prep = [](const AttentionParams& p) {
    ref::AttentionBackwardPrep<float>(p, p.delta);
    return Status::Ok();
  };
  b.attention_backward = [](const AttentionParams& p) {
    ref::AttentionBackward<float, float>(p, p.lse, p.delta);
    return Status::Ok();
  };
  b.attention_merge = [](DType, int64_t sq, int64_t hq, int64_t d, View3 o_acc, float* lse_acc, View3 o_part,
                         const float* lse_part, void*) {
    ref::AttentionMerge<float>(sq, hq, d, o_acc, lse_acc, o_part, lse_part);
    return Status::Ok();
  };
  b.linear_forward = [](const Exec&, int64_t n, int64_t in, int64_t out, View x, View w, View y) {
    ref::LinearForward<float>(n, in, out, F(x), F(w), W(y));
    return Status::Ok();
  };
  b.linear_backward = [](const Exec&, int64_t n, int64_t in, int64_t out, View x, View w, View dy, View dx,
                         float* dw) {
    ref::LinearBackward<float>(n, in, out, F(x), F(w), F(dy), W(dx), dw);
    return Status::Ok();
  };
  b.rmsnorm_forward = [](const Exec&, int64_t n, int64_t e, const float* x, const float* w, float eps, View y,
                         float* rstd) {
    ref::RmsNormForward<float>(n, e, x, w, eps, W(y), rstd);
    return Status::Ok();
  };
  b.rmsnorm_backward = [](const Exec&, int64_t n, int64_t e, View x, const float* w, const float* rstd, View dy,
                          View dx, float* dw) {
    ref::RmsNormBackward<float>(n, e, F(x), w, rstd, F(dy), W(dx), dw);
    return Status::Ok();
  };
  b.rope = [](const Exec&, int64_t s, int64_t h, int64_t d, View3 x, View3 y, const int64_t* pos, double theta,
              bool inverse) {
    ref::Rope<float>(s, h, d, x, y, pos, theta, inverse);
    return Status::Ok();
  };
  b.ffn_forward = [](const Exec&, int64_t n, int64_t e, int64_t f, View x, FfnWeights w, View y, int64_t) {
    ref::FfnForward<float>(n, e, f, F(x), F(w.w_gate), F(w.w_up), F(w.w_down), W(y));
    return Status::Ok();
  };
  b.ffn_backward = [](const Exec&, int64_t n, int64_t e, int64_t f, View x, FfnWeights w, View dy, float* dx,
                      FfnGrads dw, int64_t) {
    ref::FfnBackward<float>(n, e, f, F(x), F(w.w_gate), F(w.w_up), F(w.w_down), F(dy), dx, dw.w_gate, dw.w_up,
                            dw.w_down);
    return Status::Ok();
  };
  b.cross_entropy_forward = [](const Exec&, int64_t n, int64_t e, int64_t vocab, View h, View w,
                               const int32_t* target, const float* weight, float* loss, double* weighted_sum,
                               int64_t) {
    const double total = ref::CrossEntropyForward<float>(n, e, vocab, F(h), F(w), target, weight, loss);
    if (weighted_sum) *weighted_sum = total;
    return Status::Ok();
  };
  b.cross_entropy_backward = [](const Exec&, int64_t n, int64_t e, int64_t vocab, View h, View w,
                                const int32_t* target, const float* weight, float grad_scale, float* dh, float* dw,
                                int64_t) {
    ref::CrossEntropyBackward<float>(n, e, vocab, F(h), F(w), target, weight, grad_scale, dh, dw);
    return Status::Ok();
  };
  b.adamw_step = [](const Exec&, int64_t n, View p, View g, View m, View v, const AdamWHyper& hp, int64_t step) {
    ref::AdamWStep<float>(n, W(p), F(g), W(m), W(v), hp, step);
    return Status::Ok();
  };
  b.add_into = [](const Exec&, int64_t n, View src, View dst) {
    for (int64_t i = 0; i < n; ++i) W(dst)[i] += F(src)[i];
    return Status::Ok();
  };
  b.cast = [](const Exec&, int64_t n, View src, View dst) {
    if (src.dtype == DType::kF32 && dst.dtype == DType::kF32)
      std::copy_n(F(src), n, W(dst));
    else if (src.dtype == DType::kF32)
      for (int64_t i = 0; i < n; ++i) dst.as<bf16>()[i] = ToBf16(F(src)[i]);
    else
      for (int64_t i = 0; i < n; ++i) W(dst)[i] = ToFloat(src.as<const bf16>()[i]);
    return Status::Ok();
  };
  b.embedding_forward = [](const Exec&, int64_t n, int64_t e, const int32_t* ids, View table, View x) {
    for (int64_t i = 0; i < n; ++i) std::copy_n(F(table) + int64_t(ids[i]) * e, e, W(x) + i * e);
    return Status::Ok();
  };
  b.embedding_backward = [](const Exec&, int64_t n, int64_t e, const int32_t* ids, View dx, View dt) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < e; ++j) W(dt)[int64_t(ids[i]) * e + j] += F(dx)[i * e + j];
    return Status::Ok();
  };
  b.conv2d_forward = [](const Exec&, const Conv2dShape& s, const float* x, const float* w, const float* bias,
                        float* y) {
    ref::Conv2dForward<float>(s, x, w, bias, y);
    return Status::Ok();
  };
  b.group_norm_forward = [](const Exec&, int64_t n, int64_t pixels, int64_t c, int64_t groups, float eps,
                            const float* x, const float* scale, const float* bias, bool silu, float* y) {
    ref::GroupNormForward<float>(n, pixels, c, groups, eps, x, scale, bias, silu, y);
    return Status::Ok();
  };
  b.upsample_nearest2x = [](const Exec&, int64_t n, int64_t h, int64_t w, int64_t c, const float* x, float* y) {
    ref::UpsampleNearest2x<float>(n, h, w, c, x, y);
    return Status::Ok();
  };
  b.nearest_code = [](const Exec&, int64_t n, int64_t d, int64_t k, const float* z, const float* codebook,
                      int32_t* index) {
    ref::NearestCode<float>(n, d, k, z, codebook, index);
    return Status::Ok();
  };
  return b;
}

}  // namespace

const Backend& RefBackend() {
  static const Backend b = Make();
  return b;
}

}  // namespace rw::kernels
