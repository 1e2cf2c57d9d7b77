// Row-major sgemm for the CPU backend: OpenBLAS when the build found it, a plain blocked loop otherwise
// (so kernels/ still builds and tests on a bare machine with only a compiler).
//   C (M x N) = alpha * op(A) (M x K) * op(B) (K x N) + beta * C
#pragma once

#include <cstdint>

namespace rw::kernels::cpu {

void Sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// Sets the BLAS library's own thread count (OpenBLAS); a no-op when it already has that value (changing
// it costs milliseconds). The kernels keep BLAS at 1 thread and parallelize themselves; benchmarks raise
// it to measure the sgemm ceiling.
void SetBlasThreads(int n);

// Sgemm with the rows of C split across `threads` OpenMP threads, each calling single-threaded BLAS:
// the one threading model of the CPU kernels (no BLAS thread pool competing with ours).
void ParallelSgemm(int threads, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                   const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// Name of the BLAS in use, e.g. "OpenBLAS 0.3.21" or "builtin".
const char* BlasName();

// Threads the kernels use when num_threads is 0.
int DefaultThreads();

}  // namespace rw::kernels::cpu
