// Entry points of attention: validate, then hand to the implementation for the device.
#include "kernels/attention.h"

#include <cmath>
#include <cstdint>
#include <utility>

#include "kernels/backends.h"
#include "kernels/ref/attention_ref.h"

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

Status CheckDeviceDType(Device device, DType dtype) {
  switch (device) {
    case Device::kRef:
    case Device::kCpu:
      RW_REQUIRE(dtype == DType::kF32, "dtype: the " << DeviceName(device) << " backend takes f32, got "
                                                     << DTypeName(dtype));
      return Status::Ok();
    case Device::kCuda:
#ifdef RW_HAVE_CUDA
      RW_REQUIRE(dtype == DType::kBF16 || dtype == DType::kF16,
                 "dtype: the cuda attention takes bf16 or f16, got " << DTypeName(dtype));
      RW_REQUIRE(cuda::DevicePresent(), "device: cuda requested but no CUDA device is present");
      return Status::Ok();
#else
      return Status::Error("device: this build has no CUDA backend (configure with CUDA to get it)");
#endif
  }
  return Status::Error("device: unknown device " + std::to_string(int(device)));
}

}  // namespace

Status ValidateAttention(const AttentionParams& p, bool backward) {
  RW_RETURN_IF_ERROR(CheckDeviceDType(p.device, p.dtype));
  RW_REQUIRE(p.sq >= 0, "sq: must be >= 0, got " << p.sq);
  RW_REQUIRE(p.sk >= 0, "sk: must be >= 0, got " << p.sk);
  RW_REQUIRE(p.hq >= 1, "hq: must be >= 1, got " << p.hq);
  RW_REQUIRE(p.hkv >= 1, "hkv: must be >= 1, got " << p.hkv);
  RW_REQUIRE(p.hq % p.hkv == 0, "hkv: query heads (" << p.hq << ") must be a multiple of kv heads ("
                                                     << p.hkv << ")");
  RW_REQUIRE(p.d >= 1 && p.d <= 512, "d: head dim must be in [1, 512], got " << p.d);
  if (p.device == Device::kCuda) {
    RW_REQUIRE(p.d == 64 || p.d == 128, "d: the cuda attention supports head dim 64 or 128, got " << p.d);
    // Tiles move 16 bytes at a time: every activation view needs 16-byte aligned rows.
    for (auto [name, v] : {std::pair{"q", p.q}, {"k", p.k}, {"v", p.v}, {"o", p.o}}) {
      RW_REQUIRE(reinterpret_cast<uintptr_t>(v.data) % 16 == 0 && v.stride_s % 8 == 0 && v.stride_h % 8 == 0,
                 name << ": the cuda attention needs a 16-byte aligned pointer and strides that are multiples of 8");
    }
    if (backward)
      RW_REQUIRE(reinterpret_cast<uintptr_t>(p.dout.data) % 16 == 0 && p.dout.stride_s % 8 == 0 &&
                     p.dout.stride_h % 8 == 0,
                 "dout: the cuda attention needs a 16-byte aligned pointer and strides that are multiples of 8");
  }
  RW_REQUIRE(p.block_q >= 0 && p.block_q <= 4096, "block_q: must be in [0, 4096], got " << p.block_q);
  RW_REQUIRE(p.block_k >= 0 && p.block_k <= 4096, "block_k: must be in [0, 4096], got " << p.block_k);
  RW_REQUIRE(p.num_threads >= 0, "num_threads: must be >= 0, got " << p.num_threads);
  RW_REQUIRE(std::isfinite(p.scale) && p.scale >= 0.f, "scale: must be finite and >= 0, got " << p.scale);
  RW_RETURN_IF_ERROR(CheckView("q", p.q, p.sq, p.hq, p.d));
  RW_RETURN_IF_ERROR(CheckView("k", p.k, p.sk, p.hkv, p.d));
  RW_RETURN_IF_ERROR(CheckView("v", p.v, p.sk, p.hkv, p.d));
  RW_RETURN_IF_ERROR(CheckView("o", p.o, p.sq, p.hq, p.d));
  RW_REQUIRE(p.sq == 0 || p.lse != nullptr, "lse: null pointer");
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
  switch (p.device) {
    case Device::kRef:
      ref::AttentionForward<float>(p, p.lse);
      return Status::Ok();
    case Device::kCpu:
      return cpu::AttentionForward(p);
    case Device::kCuda:
#ifdef RW_HAVE_CUDA
      return cuda::AttentionForward(p);
#endif
      break;
  }
  return Status::Error("device: unsupported");
}

Status AttentionBackwardPrep(const AttentionParams& p) {
  RW_RETURN_IF_ERROR(ValidateAttention(p, false));
  RW_RETURN_IF_ERROR(CheckView("dout", p.dout, p.sq, p.hq, p.d));
  RW_REQUIRE(p.sq == 0 || p.delta != nullptr, "delta: null pointer");
  if (p.sq == 0) return Status::Ok();
  switch (p.device) {
    case Device::kRef:
      ref::AttentionBackwardPrep<float>(p, p.delta);
      return Status::Ok();
    case Device::kCpu:
      return cpu::AttentionBackwardPrep(p);
    case Device::kCuda:
#ifdef RW_HAVE_CUDA
      return cuda::AttentionBackwardPrep(p);
#endif
      break;
  }
  return Status::Error("device: unsupported");
}

Status AttentionBackward(const AttentionParams& p) {
  RW_RETURN_IF_ERROR(ValidateAttention(p, true));
  if (p.sq == 0 || p.sk == 0) return Status::Ok();
  switch (p.device) {
    case Device::kRef:
      ref::AttentionBackward<float, float>(p, p.lse, p.delta);
      return Status::Ok();
    case Device::kCpu:
      return cpu::AttentionBackward(p);
    case Device::kCuda:
#ifdef RW_HAVE_CUDA
      return cuda::AttentionBackward(p);
#endif
      break;
  }
  return Status::Error("device: unsupported");
}

Status AttentionMerge(Device device, DType dtype, int64_t sq, int64_t hq, int64_t d, View3 o_acc,
                      float* lse_acc, View3 o_part, const float* lse_part, void* stream) {
  RW_RETURN_IF_ERROR(CheckDeviceDType(device, dtype));
  RW_REQUIRE(sq >= 0 && hq >= 1 && d >= 1,
             "shape: need sq >= 0, hq >= 1, d >= 1, got (" << sq << ", " << hq << ", " << d << ")");
  RW_RETURN_IF_ERROR(CheckView("o_acc", o_acc, sq, hq, d));
  RW_RETURN_IF_ERROR(CheckView("o_part", o_part, sq, hq, d));
  RW_REQUIRE(sq == 0 || (lse_acc && lse_part), "lse_acc/lse_part: null pointer");
  if (sq == 0) return Status::Ok();
  switch (device) {
    case Device::kRef:
      ref::AttentionMerge<float>(sq, hq, d, o_acc, lse_acc, o_part, lse_part);
      return Status::Ok();
    case Device::kCpu:
      return cpu::AttentionMerge(sq, hq, d, o_acc, lse_acc, o_part, lse_part);
    case Device::kCuda:
#ifdef RW_HAVE_CUDA
      return cuda::AttentionMerge(dtype, sq, hq, d, o_acc, lse_acc, o_part, lse_part, stream);
#endif
      break;
  }
  (void)stream;
  return Status::Error("device: unsupported");
}

double AttentionForwardFlops(int64_t sq, int64_t sk, int64_t hq, int64_t d, bool causal) {
  const double pairs = (causal && sq == sk) ? double(sq) * double(sq + 1) / 2 : double(sq) * double(sk);
  return 4.0 * pairs * double(d) * double(hq);
}

}  // namespace rw::kernels
