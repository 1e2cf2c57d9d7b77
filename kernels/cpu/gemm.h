// Row-major GEMMs for the CPU backend.
//   C (M x N, fp32) = alpha * op(A) (M x K) * op(B) (K x N) + beta * C
// fp32 operands: OpenBLAS sgemm when the build found it, a plain blocked loop otherwise (so kernels/ still
// builds and tests on a bare machine with only a compiler). bf16 operands: oneDNN's matmul, which picks its
// kernel by what the CPU has at run time (AMX tiles, AVX512-BF16 dot products, or AVX-512 emulation); on a
// CPU oneDNN has no bf16 kernel for, or in a build without oneDNN, the operands are widened to fp32 and go
// through sgemm (the same products, exact: every bf16 is an fp32). Accumulation is fp32 either way.
#pragma once

#include <string>

#include <cstdint>

#include "kernels/common.h"

namespace rw::kernels::cpu {

void Sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// A and B in bf16, C in fp32.
void GemmBf16(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const bf16* a,
              int64_t lda, const bf16* b, int64_t ldb, float beta, float* c, int64_t ldc);

// The fallback of GemmBf16 (a CPU oneDNN has no bf16 kernel for, or a build without oneDNN): the operands
// widened to fp32 and multiplied by Sgemm. Public so that tests run it on every machine.
void GemmBf16Widened(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const bf16* a,
                     int64_t lda, const bf16* b, int64_t ldb, float beta, float* c, int64_t ldc);

// Either of the above by the operands' dtype (both f32 or both bf16).
void Gemm(DType dtype, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const void* a,
          int64_t lda, const void* b, int64_t ldb, float beta, float* c, int64_t ldc);

// Sets the GEMM library's own thread count: OpenBLAS's (process-wide; a no-op when it already has that value,
// changing it costs milliseconds) and oneDNN's for GEMMs called from this thread (default 1). The kernels
// keep the library at 1 thread and parallelize themselves; benchmarks raise it to measure the ceilings.
void SetBlasThreads(int n);

// A GEMM with the rows of C split across `threads` OpenMP threads, each calling the single-threaded
// library: the one threading model of the CPU kernels (no library thread pool competing with ours).
void ParallelGemm(int threads, DType dtype, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                  float alpha, const void* a, int64_t lda, const void* b, int64_t ldb, float beta, float* c,
                  int64_t ldc);
inline void ParallelSgemm(int threads, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                          const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                          int64_t ldc) {
  ParallelGemm(threads, DType::kF32, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// Name of the BLAS in use, e.g. "OpenBLAS 0.3.21 ... SkylakeX" or "builtin".
const char* BlasName();

// Which path bf16 GEMMs take on this CPU, e.g. "oneDNN 2.6.3 brg:avx512_core_bf16" or
// "fp32 sgemm on widened bf16 (no oneDNN bf16 kernel for this CPU)". Decided once per process.
const char* Bf16GemmPath();
// Which path bf16 attention's block products take on this CPU (AMX tiles, or the bf16 GEMM above), and why.
std::string Bf16AttentionPath();

// True when bf16 GEMMs run in a library (oneDNN) rather than the widened fallback.
bool Bf16GemmHasLibrary();

// Threads the kernels use when num_threads is 0.
int DefaultThreads();

}  // namespace rw::kernels::cpu
