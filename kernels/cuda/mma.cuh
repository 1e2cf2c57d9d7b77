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
// Tiles are row-major with a row pitch of (width + 8) elements: with that padding the eight 16-byte rows
// of each 8x8 matrix an ldmatrix phase reads fall in distinct banks.
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

// Fragments come from shared memory through ldmatrix: each lane names the start of one 16-byte row of
// one 8x8 matrix, and the warp receives the matrices in the mma's register layout (.trans transposes
// each 8x8 matrix on the way). Rows must be 16-byte aligned: the (width + 8) pitch keeps them so.
__device__ __forceinline__ unsigned SmemAddr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// A fragment of rows [r0, r0+16), cols [c0, c0+16) of a row-major tile with pitch ld.
template <class T>
__device__ __forceinline__ void LoadA(uint32_t a[4], const T* s, int ld, int r0, int c0) {
  const int lane = threadIdx.x & 31;
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
               : "r"(SmemAddr(s + (r0 + (lane & 15)) * ld + c0 + (lane >> 4) * 8)));
}

// B fragment (k in [k0, k0+16), n in [n0, n0+8)) where the tile stores B transposed: s[n][k]
// (e.g. K for S = Q K^T: B(k = d, n = key) = K[key][d]).
template <class T>
__device__ __forceinline__ void LoadBT(uint32_t b[2], const T* s, int ld, int n0, int k0) {
  const int lane = threadIdx.x & 31;
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(b[0]), "=r"(b[1])
               : "r"(SmemAddr(s + (n0 + (lane & 7)) * ld + k0 + ((lane >> 3) & 1) * 8)));
}

// Two B fragments of LoadBT at once: n-tiles [n0, n0+8) into b[0..1] and [n0+8, n0+16) into b[2..3].
template <class T>
__device__ __forceinline__ void LoadBT2(uint32_t b[4], const T* s, int ld, int n0, int k0) {
  const int lane = threadIdx.x & 31;
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3])
               : "r"(SmemAddr(s + (n0 + (lane & 7) + (lane >> 4) * 8) * ld + k0 + ((lane >> 3) & 1) * 8)));
}

// B fragment where the tile stores B as is: s[k][n] (e.g. V for O = P V: B(k = key, n = d) = V[key][d]),
// by ldmatrix's transposing form.
template <class T>
__device__ __forceinline__ void LoadB(uint32_t b[2], const T* s, int ld, int k0, int n0) {
  const int lane = threadIdx.x & 31;
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(b[0]), "=r"(b[1])
               : "r"(SmemAddr(s + (k0 + (lane & 15)) * ld + n0)));
}

// Two B fragments of LoadB at once: n-tiles [n0, n0+8) into b[0..1] and [n0+8, n0+16) into b[2..3].
template <class T>
__device__ __forceinline__ void LoadB2(uint32_t b[4], const T* s, int ld, int k0, int n0) {
  const int lane = threadIdx.x & 31;
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3])
               : "r"(SmemAddr(s + (k0 + (lane & 15)) * ld + n0 + (lane >> 4) * 8)));
}

// 16 bytes from global to shared memory without passing through registers (cp.async, sm_80+); when
// `valid` is false the 16 bytes are zero-filled and nothing is read.
__device__ __forceinline__ void CpAsync16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SmemAddr(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
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
