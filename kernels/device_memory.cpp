#include "kernels/device_memory.h"

#include <bit>
#include <cmath>
#include <cstring>

#ifdef RW_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace rw::kernels {

#ifdef RW_HAVE_CUDA
namespace {
Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::Ok();
  return Status::Error(std::string(what) + ": " + cudaGetErrorString(e));
}
}  // namespace
#define RW_CUDA_MEM(expr, what) return CudaStatus((expr), what)
#else
#define RW_CUDA_MEM(expr, what) return Status::Error("device: this build has no CUDA backend")
#endif

Status DeviceAlloc(Device dev, size_t bytes, void** ptr) {
  *ptr = nullptr;
  if (dev != Device::kCuda) {
    *ptr = bytes ? std::malloc(bytes) : nullptr;
    RW_REQUIRE(bytes == 0 || *ptr, "DeviceAlloc: out of host memory for " << bytes << " bytes");
    return Status::Ok();
  }
  RW_CUDA_MEM(cudaMalloc(ptr, bytes), "cudaMalloc");
}

void DeviceFree(Device dev, void* ptr) {
  if (!ptr) return;
  if (dev != Device::kCuda) {
    std::free(ptr);
    return;
  }
#ifdef RW_HAVE_CUDA
  cudaFree(ptr);
#endif
}

Status CopyToDevice(Device dev, void* dst, const void* src, size_t bytes) {
  if (dev != Device::kCuda) {
    if (bytes) std::memcpy(dst, src, bytes);
    return Status::Ok();
  }
  RW_CUDA_MEM(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to device");
}

Status CopyToHost(Device dev, void* dst, const void* src, size_t bytes) {
  if (dev != Device::kCuda) {
    if (bytes) std::memcpy(dst, src, bytes);
    return Status::Ok();
  }
  RW_CUDA_MEM(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy to host");
}

Status CopyOnDevice(Device dev, void* dst, const void* src, size_t bytes) {
  if (dev != Device::kCuda) {
    if (bytes) std::memcpy(dst, src, bytes);
    return Status::Ok();
  }
  RW_CUDA_MEM(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy on device");
}

Status DeviceMemset(Device dev, void* dst, int value, size_t bytes) {
  if (dev != Device::kCuda) {
    if (bytes) std::memset(dst, value, bytes);
    return Status::Ok();
  }
  RW_CUDA_MEM(cudaMemset(dst, value, bytes), "cudaMemset");
}

Status DeviceSynchronize(Device dev) {
  if (dev != Device::kCuda) return Status::Ok();
  RW_CUDA_MEM(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

DeviceBuffer::DeviceBuffer(Device dev, size_t bytes) : dev_(dev), bytes_(bytes) {
  const Status st = DeviceAlloc(dev, bytes, &ptr_);
  RW_CHECK(st.ok()) << st.message();
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    Reset();
    dev_ = o.dev_;
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::Reset() {
  DeviceFree(dev_, ptr_);
  ptr_ = nullptr;
  bytes_ = 0;
}

uint16_t FloatToBits(DType t, float x) {
  const uint32_t u = std::bit_cast<uint32_t>(x);
  if (t == DType::kBF16) {
    if (std::isnan(x)) return 0x7fc0;
    const uint32_t rounding = 0x7fff + ((u >> 16) & 1);  // round to nearest even
    return uint16_t((u + rounding) >> 16);
  }
  // IEEE half: sign, 5-bit exponent (bias 15), 10-bit mantissa.
  const uint32_t sign = (u >> 16) & 0x8000;
  const float ax = std::fabs(x);
  if (std::isnan(x)) return uint16_t(sign | 0x7e00);
  if (ax >= 65520.f) return uint16_t(sign | 0x7c00);  // overflows to inf
  if (ax < 6.103515625e-05f) {                          // subnormal half: multiples of 2^-24
    const float q = std::nearbyint(ax * 16777216.f);
    return uint16_t(sign | uint32_t(q));
  }
  const uint32_t au = u & 0x7fffffff;
  const uint32_t mant = au & 0x7fffff;
  const int32_t exp = int32_t(au >> 23) - 127 + 15;
  uint32_t h = (uint32_t(exp) << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;  // round to nearest even (may carry into exp)
  return uint16_t(sign | h);
}

float BitsToFloat(DType t, uint16_t b) {
  if (t == DType::kBF16) return std::bit_cast<float>(uint32_t(b) << 16);
  const uint32_t sign = uint32_t(b & 0x8000) << 16;
  const uint32_t exp = (b >> 10) & 0x1f, mant = b & 0x3ff;
  if (exp == 0) {
    const float v = float(mant) * 5.9604644775390625e-08f;  // 2^-24
    return sign ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000 | (mant << 13));
  return std::bit_cast<float>(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

std::vector<uint16_t> ToHalf(DType t, const std::vector<float>& x) {
  std::vector<uint16_t> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = FloatToBits(t, x[i]);
  return out;
}

std::vector<float> FromHalf(DType t, const std::vector<uint16_t>& x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = BitsToFloat(t, x[i]);
  return out;
}

}  // namespace rw::kernels
