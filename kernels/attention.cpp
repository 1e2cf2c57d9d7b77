// Entry points of attention: validate once, then call the device's backend table (kernels/backend.h).
#include "kernels/attention.h"

#include <cmath>
#include <cstdint>

#include "kernels/backend.h"

namespace rw::kernels {

float AttentionParams::Scale() const { return scale > 0.f ? scale : 1.f / std::sqrt(float(d)); }

namespace {

// A (rows, heads, d) view must not overlap itself: either token-major or head-major packing.
Status CheckView(const char* name, const View3& v, int64_t rows, int64_t heads, int64_t d) {
  if (rows == 0) return Status::Ok();
  RW_REQUIRE(v.data != nullptr, name << ": null pointer for a (" << rows << ", " << heads << ", " << d
                                      << ") tensor");
  RW_REQUIRE(v.stride_s >= 0 && v.stride_h >= 0,
             name << ": negative stride (stride_s=" << v.stride_s << ", stride_h=" << v.stride_h << ")");
  const bool token_major = (heads == 1 || v.stride_h >= d) &&
                           (rows == 1 || v.stride_s >= (heads - 1) * v.stride_h + d);
  const bool head_major = (rows == 1 || v.stride_s >= d) &&
                          (heads == 1 || v.stride_h >= (rows - 1) * v.stride_s + d);
  RW_REQUIRE(token_major || head_major,
             name << ": strides (stride_s=" << v.stride_s << ", stride_h=" << v.stride_h
                  << ") overlap for shape (" << rows << ", " << heads << ", " << d << ")");
  return Status::Ok();
}

}  // namespace

Status ValidateAttention(const AttentionParams& p, bool backward) {
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(Dispatch(p.device, backward ? Op::kAttentionBackward : Op::kAttentionForward, p.dtype, &b));
  RW_REQUIRE(p.sq >= 0, "sq: must be >= 0, got " << p.sq);
  RW_REQUIRE(p.sk >= 0, "sk: must be >= 0, got " << p.sk);
  RW_REQUIRE(p.hq >= 1, "hq: must be >= 1, got " << p.hq);
  RW_REQUIRE(p.hkv >= 1, "hkv: must be >= 1, got " << p.hkv);
  RW_REQUIRE(p.hq % p.hkv == 0, "hkv: query heads (" << p.hq << ") must be a multiple of kv heads ("
                                                     << p.hkv << ")");
  RW_REQUIRE(p.d >= 1 && p.d <= 512, "d: head dim must be in [1, 512], got " << p.d);
  RW_REQUIRE(p.block_q >= 0 && p.block_q <= 4096, "block_q: must be in [0, 4096], got " << p.block_q);
  RW_REQUIRE(p.block_k >= 0 && p.block_k <= 4096, "block_k: must be in [0, 4096], got " << p.block_k);
  RW_REQUIRE(p.num_threads >= 0, "num_threads: must be >= 0, got " << p.num_threads);
  RW_REQUIRE(std::isfinite(p.scale) && p.scale >= 0.f, "scale: must be finite and >= 0, got " << p.scale);
  RW_RETURN_IF_ERROR(CheckView("q", p.q, p.sq, p.hq, p.d));
  RW_RETURN_IF_ERROR(CheckView("k", p.k, p.sk, p.hkv, p.d));
  RW_RETURN_IF_ERROR(CheckView("v", p.v, p.sk, p.hkv, p.d));
  RW_RETURN_IF_ERROR(CheckView("o", p.o, p.sq, p.hq, p.d));
  RW_REQUIRE(p.sq == 0 || p.lse != nullptr, "lse: null pointer");
  if (b->check_attention) RW_RETURN_IF_ERROR(b->check_attention(p, backward));
  if (backward) {
    RW_RETURN_IF_ERROR(CheckView("dout", p.dout, p.sq, p.hq, p.d));
    RW_RETURN_IF_ERROR(CheckView("dq", p.dq, p.sq, p.hq, p.d));
    RW_RETURN_IF_ERROR(CheckView("dk", p.dk, p.sk, p.hkv, p.d));
    RW_RETURN_IF_ERROR(CheckView("dv", p.dv, p.sk, p.hkv, p.d));
    RW_REQUIRE(p.sq == 0 || p.delta != nullptr, "delta: null pointer (run AttentionBackwardPrep first)");
  }
  return Status::Ok();
}

Status AttentionForward(const AttentionParams& p) {
  RW_RETURN_IF_ERROR(ValidateAttention(p, false));
  if (p.sq == 0) return Status::Ok();
  return FindBackend(p.device)->attention_forward(p);
}

Status AttentionBackwardPrep(const AttentionParams& p) {
  RW_RETURN_IF_ERROR(ValidateAttention(p, false));
  RW_RETURN_IF_ERROR(CheckView("dout", p.dout, p.sq, p.hq, p.d));
  RW_REQUIRE(p.sq == 0 || p.delta != nullptr, "delta: null pointer");
  if (p.sq == 0) return Status::Ok();
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(Dispatch(p.device, Op::kAttentionBackwardPrep, p.dtype, &b));
  return b->attention_backward_prep(p);
}

Status AttentionBackward(const AttentionParams& p) {
  RW_RETURN_IF_ERROR(ValidateAttention(p, true));
  if (p.sq == 0 || p.sk == 0) return Status::Ok();
  return FindBackend(p.device)->attention_backward(p);
}

Status AttentionMerge(Device device, DType dtype, int64_t sq, int64_t hq, int64_t d, View3 o_acc,
                      float* lse_acc, View3 o_part, const float* lse_part, void* stream) {
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(Dispatch(device, Op::kAttentionMerge, dtype, &b));
  RW_REQUIRE(sq >= 0 && hq >= 1 && d >= 1,
             "shape: need sq >= 0, hq >= 1, d >= 1, got (" << sq << ", " << hq << ", " << d << ")");
  RW_RETURN_IF_ERROR(CheckView("o_acc", o_acc, sq, hq, d));
  RW_RETURN_IF_ERROR(CheckView("o_part", o_part, sq, hq, d));
  RW_REQUIRE(sq == 0 || (lse_acc && lse_part), "lse_acc/lse_part: null pointer");
  if (sq == 0) return Status::Ok();
  return b->attention_merge(dtype, sq, hq, d, o_acc, lse_acc, o_part, lse_part, stream);
}

double AttentionForwardFlops(int64_t sq, int64_t sk, int64_t hq, int64_t d, bool causal) {
  const double pairs = (causal && sq == sk) ? double(sq) * double(sq + 1) / 2 : double(sq) * double(sk);
  return 4.0 * pairs * double(d) * double(hq);
}

}  // namespace rw::kernels
