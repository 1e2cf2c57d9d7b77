#include "kernels/device_memory.h"

#include <bit>
#include <cmath>
#include <cstring>

#include "kernels/backend.h"

namespace rw::kernels {

namespace {

// The device's table, which holds its memory entries; an error names a device this build has no table for.
Status MemoryOf(Device dev, const Backend** out) {
  *out = FindBackend(dev);
  RW_REQUIRE(*out && (*out)->alloc, "device: this build has no " << DeviceName(dev) << " backend");
  return Status::Ok();
}

}  // namespace

Status DeviceAlloc(Device dev, size_t bytes, void** ptr) {
  *ptr = nullptr;
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(MemoryOf(dev, &b));
  return b->alloc(bytes, ptr);
}

void DeviceFree(Device dev, void* ptr) {
  const Backend* b = FindBackend(dev);
  if (ptr && b && b->free) b->free(ptr);
}

Status CopyToDevice(Device dev, void* dst, const void* src, size_t bytes) {
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(MemoryOf(dev, &b));
  return b->copy(Backend::CopyKind::kToDevice, dst, src, bytes);
}

Status CopyToHost(Device dev, void* dst, const void* src, size_t bytes) {
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(MemoryOf(dev, &b));
  return b->copy(Backend::CopyKind::kToHost, dst, src, bytes);
}

Status CopyOnDevice(Device dev, void* dst, const void* src, size_t bytes) {
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(MemoryOf(dev, &b));
  return b->copy(Backend::CopyKind::kOnDevice, dst, src, bytes);
}

Status DeviceMemset(Device dev, void* dst, int value, size_t bytes) {
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(MemoryOf(dev, &b));
  return b->memset(dst, value, bytes);
}

Status DeviceSynchronize(Device dev) {
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(MemoryOf(dev, &b));
  return b->synchronize();
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
