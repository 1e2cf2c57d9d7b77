// Memory of a device and host<->device copies, written once for every device: for kRef and kCpu these
// are host allocations and memcpy, for kCuda cudaMalloc and cudaMemcpy. Also fp32 <-> bf16/f16 on the
// host, for feeding and checking the CUDA kernels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/common.h"

namespace rw::kernels {

Status DeviceAlloc(Device dev, size_t bytes, void** ptr);
void DeviceFree(Device dev, void* ptr);
Status CopyToDevice(Device dev, void* dst, const void* src, size_t bytes);
Status CopyToHost(Device dev, void* dst, const void* src, size_t bytes);
Status CopyOnDevice(Device dev, void* dst, const void* src, size_t bytes);
Status DeviceMemset(Device dev, void* dst, int value, size_t bytes);
Status DeviceSynchronize(Device dev);

// Owns one device allocation.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Device dev, size_t bytes);  // aborts on failure: for tests and benchmarks
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return ptr_; }
  template <class T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }
  void Reset();

 private:
  Device dev_ = Device::kCpu;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Round-to-nearest-even conversions (host side).
uint16_t FloatToBits(DType t, float x);  // t is kF16 or kBF16
float BitsToFloat(DType t, uint16_t b);
std::vector<uint16_t> ToHalf(DType t, const std::vector<float>& x);
std::vector<float> FromHalf(DType t, const std::vector<uint16_t>& x);

}  // namespace rw::kernels
