// Intel AMX (Advanced Matrix Extensions) tile products for the bf16 CPU kernels.
//
// AMX multiplies bf16 tiles into fp32 tiles in the core's matrix unit: one TDPBF16PS is a 16 x 16 fp32
// tile += (16 x 32 bf16) * (32 x 16 bf16), several times the FLOPs per cycle of AVX-512. oneDNN uses it
// for the model's GEMMs; the attention kernels' block products are too small for a library call each
// (oneDNN's per-call cost and its choice of a non-AMX kernel for K = 64 made bf16 attention 0.10 of the
// bf16 GEMM ceiling), so they call these tile loops directly on operands packed once per call.
//
// Layouts:
//   A: row-major bf16, m x k, row stride lda (elements).
//   B: packed in pairs of rows ("VNNI"): element (kk, j) at b[(kk / 2) * ldb + 2 j + kk % 2], ldb >= 2 n.
//   C: row-major fp32, m x n, row stride ldc.
// m and n are multiples of 16 and k a multiple of 32: the callers pad their tiles with zeros (Up16, Up32).
//
// Everything here is compiled for AMX with function target attributes, so the build needs no AMX flag
// and runs on any x86-64; nothing may be called unless Available() (the CPU has AMX-BF16 and AVX512-BF16,
// and Linux granted this process the tile state).
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace rw::kernels::cpu::amx {

// True when the tile products can run here (checked and the tile state requested once per process), and
// not turned off by RW_AMX=0 in the environment or by SetAllowed(false).
bool Available();
// What the bf16 attention path is, or why AMX is not used: for logs and benchmark headers.
const char* Describe();
// Tests and benchmarks compare the AMX path with the other one on the same machine.
void SetAllowed(bool allowed);

inline int64_t Up16(int64_t x) { return (x + 15) / 16 * 16; }
inline int64_t Up32(int64_t x) { return (x + 31) / 32 * 32; }

// C = (accumulate ? C : 0) + A B, in the layouts above.
void Gemm(int64_t m, int64_t n, int64_t k, const bf16* a, int64_t lda, const bf16* b, int64_t ldb, float* c,
          int64_t ldc, bool accumulate);

// B operand from X (n x k, row-major, row stride ldx): B = X^T packed (out: (k_pad / 2) rows of 2 n_pad),
// zero beyond n and k. For S = Q K^T, B = K^T.
void PackTransposed(const bf16* x, int64_t n, int64_t k, int64_t ldx, int64_t n_pad, int64_t k_pad, bf16* out);
// B operand from X (k x n, row-major, row stride ldx): B = X packed (out: (k_pad / 2) rows of 2 n_pad), zero
// beyond k and n. For O += P V, B = V.
void PackRows(const bf16* x, int64_t k, int64_t n, int64_t ldx, int64_t k_pad, int64_t n_pad, bf16* out);

// dst[i] = bf16(src[i]) for i < n (round to nearest even), then zeros up to n_pad.
void RoundRow(const float* src, int64_t n, int64_t n_pad, bf16* dst);

// The attention kernels' row passes in AVX-512, each also writing its result rounded to bf16 (zeros from n
// up to n_pad) as the next product's operand. exp is 16 lanes at a time, within 2e-7 relative (amx.cpp).
// max over x[0, n) (-inf when n = 0).
float RowMax(const float* x, int64_t n);
// out = bf16(exp(c x - m)); returns the fp32 sum of the unrounded values.
float ExpRow(const float* x, int64_t n, float c, float m, bf16* out, int64_t n_pad);
// x[r] = exp(c x[r] - lse[r]) in place (fp32, for DsRow), 0 where lse[r] = -inf (a row that sees nothing).
void ExpRowColumns(float* x, int64_t n, float c, const float* lse, bf16* out, int64_t n_pad);
// out[c * ldo + r] = in[r * ldi + c] for r < rows, c < cols: rows a multiple of 32, cols of 16.
void TransposeBf16(const bf16* in, int64_t ldi, int64_t rows, int64_t cols, bf16* out, int64_t ldo);
// out = bf16(p[r] (dp[r] - delta[r])).
void DsRow(const float* dp, const float* p, const float* delta, int64_t n, bf16* out, int64_t n_pad);

}  // namespace rw::kernels::cpu::amx
