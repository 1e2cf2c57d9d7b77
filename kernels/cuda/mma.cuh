// Tensor-core building blocks for the CUDA kernels: mma.sync m16n8k16 (bf16/f16 in, fp32 accumulate) and
// fragment loads from padded row-major shared-memory tiles.
//
// Fragment layouts (PTX ISA, mma.m16n8k16; g = lane / 4, t = lane % 4):
//   A (16 x 16, row): a0 = (g, 2t..2t+1)  a1 = (g+8, 2t..)  a2 = (g, 2t+8..)  a3 = (g+8, 2t+8..)
//   B (16 x 8, col):  b0 = (k = 2t..2t+1, n = g)            b1 = (k = 2t+8.., n = g)
//   C (16 x 8, f32):  c0,c1 = (g, 2t..2t+1)                 c2,c3 = (g+8, 2t..2t+1)
// Each 32-bit register holds two consecutive-k elements, the lower index in the low half. C of two
// adjacent n-tiles has the layout of A for one k-step, so P = softmax(S) feeds P V straight from registers.
//
// Tiles are row-major with a row pitch of (width + 8) elements: with that padding both the 32-bit
// loads below and the 16-bit column gathers hit 32 distinct banks per warp.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace rw::kernels::cuda {

template <class T>
__device__ __forceinline__ void Mma16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

template <class T>
__device__ __forceinline__ uint16_t Bits(T x) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __bfloat16_as_ushort(x);
  else
    return __half_as_ushort(x);
}

template <class T>
__device__ __forceinline__ T FromFloat(float x) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __float2bfloat16_rn(x);
  else
    return __float2half_rn(x);
}

template <class T>
__device__ __forceinline__ float ToFloat(T x) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __bfloat162float(x);
  else
    return __half2float(x);
}

// Two floats -> one register of two 16-bit values (lo in the low half).
template <class T>
__device__ __forceinline__ uint32_t Pack(float lo, float hi) {
  return uint32_t(Bits(FromFloat<T>(lo))) | (uint32_t(Bits(FromFloat<T>(hi))) << 16);
}

template <class T>
__device__ __forceinline__ uint32_t Pack(T lo, T hi) {
  return uint32_t(Bits(lo)) | (uint32_t(Bits(hi)) << 16);
}

template <class T>
__device__ __forceinline__ uint32_t Load32(const T* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

// A fragment of rows [r0, r0+16), cols [c0, c0+16) of a row-major tile with pitch ld.
template <class T>
__device__ __forceinline__ void LoadA(uint32_t a[4], const T* s, int ld, int r0, int c0) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  a[0] = Load32(s + (r0 + g) * ld + c0 + 2 * t);
  a[1] = Load32(s + (r0 + g + 8) * ld + c0 + 2 * t);
  a[2] = Load32(s + (r0 + g) * ld + c0 + 2 * t + 8);
  a[3] = Load32(s + (r0 + g + 8) * ld + c0 + 2 * t + 8);
}

// B fragment (k in [k0, k0+16), n in [n0, n0+8)) where the tile stores B transposed: s[n][k]
// (e.g. K for S = Q K^T: B(k = d, n = key) = K[key][d]).
template <class T>
__device__ __forceinline__ void LoadBT(uint32_t b[2], const T* s, int ld, int n0, int k0) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  b[0] = Load32(s + (n0 + g) * ld + k0 + 2 * t);
  b[1] = Load32(s + (n0 + g) * ld + k0 + 2 * t + 8);
}

// B fragment where the tile stores B as is: s[k][n] (e.g. V for O = P V: B(k = key, n = d) = V[key][d]).
// Two 16-bit gathers per register.
template <class T>
__device__ __forceinline__ void LoadB(uint32_t b[2], const T* s, int ld, int k0, int n0) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const T* col = s + n0 + g;
  b[0] = Pack<T>(col[(k0 + 2 * t) * ld], col[(k0 + 2 * t + 1) * ld]);
  b[1] = Pack<T>(col[(k0 + 2 * t + 8) * ld], col[(k0 + 2 * t + 9) * ld]);
}

// The A fragment for k-step kk taken from C accumulators of n-tiles 2kk and 2kk+1 (16 x 16 block).
template <class T>
__device__ __forceinline__ void AccToA(uint32_t a[4], const float c0[4], const float c1[4]) {
  a[0] = Pack<T>(c0[0], c0[1]);
  a[1] = Pack<T>(c0[2], c0[3]);
  a[2] = Pack<T>(c1[0], c1[1]);
  a[3] = Pack<T>(c1[2], c1[3]);
}

}  // namespace rw::kernels::cuda
