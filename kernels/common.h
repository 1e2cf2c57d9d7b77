// Shared vocabulary of the kernel library: error values, element types, devices, strided views.
//
// Dimension letters used across kernels/ (fixed once, see STYLE.md):
//   S tokens per device (Sq query rows, Sk key rows), H heads (Hq query, Hkv key/value), D head dim,
//   E model width, F FFN width, V vocabulary, Bq/Bk block sizes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "kernels/status.h"

namespace rw::kernels {

// Which implementation runs an op. kRef is the spec (scalar, fp64 accumulation); kCpu is the fast CPU
// path; kCuda expects device pointers.
enum class Device : int { kRef = 0, kCpu = 1, kCuda = 2 };
const char* DeviceName(Device d);

// Element type of activations. Statistics (lse, delta), gradients of attention inputs and optimizer
// state are always fp32.
enum class DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };
const char* DTypeName(DType t);
inline int DTypeSize(DType t) { return t == DType::kF32 ? 4 : 2; }

// True when this build contains the CUDA backend and a CUDA device is present.
bool CudaAvailable();

// bfloat16 storage: the top 16 bits of an IEEE fp32. Arithmetic is never done in it; kernels widen to
// fp32, compute, and round back with round-to-nearest-even.
struct bf16 {
  uint16_t bits = 0;
};
// (memcpy, not std::bit_cast: the .cu files are C++17; compilers turn it into a register move.)
inline float ToFloat(bf16 b) {
  const uint32_t u = uint32_t(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline bf16 ToBf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40)};  // NaN stays a quiet NaN
  return bf16{uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

// A dense array of `dtype` elements: an activation or weight operand of the layer ops. Converts
// implicitly from float* and bf16*, so an fp32 caller passes its pointers as before.
struct View {
  void* data = nullptr;
  DType dtype = DType::kF32;
  View() = default;
  View(std::nullptr_t) {}
  View(float* p) : data(p) {}
  View(const float* p) : data(const_cast<float*>(p)) {}
  View(bf16* p) : data(p), dtype(DType::kBF16) {}
  View(const bf16* p) : data(const_cast<bf16*>(p)), dtype(DType::kBF16) {}
  View(void* p, DType t) : data(p), dtype(t) {}
  template <class T>
  T* as() const {
    return static_cast<T*>(data);
  }
  // The view `elems` elements further on.
  View at(int64_t elems) const {
    return View(static_cast<char*>(data) + elems * DTypeSize(dtype), dtype);
  }
  explicit operator bool() const { return data != nullptr; }
};

// A (S, H, D) tensor whose last dimension is contiguous: element (s, h, d) is at
// data[s * stride_s + h * stride_h + d]. Strides count elements, not bytes.
struct View3 {
  void* data = nullptr;
  int64_t stride_s = 0;
  int64_t stride_h = 0;
  template <class T>
  T* at(int64_t s, int64_t h) const {
    return static_cast<T*>(data) + s * stride_s + h * stride_h;
  }
};

// Packs (S, H, D) contiguous strides.
inline View3 Dense3(const void* p, int64_t h, int64_t d) {
  return View3{const_cast<void*>(p), h * d, d};
}

}  // namespace rw::kernels
