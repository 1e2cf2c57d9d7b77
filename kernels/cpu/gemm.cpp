#include "kernels/cpu/gemm.h"

#include <algorithm>
#include <atomic>
#include <thread>

#ifdef RW_HAVE_OPENBLAS
#include <cblas.h>
extern "C" {
void openblas_set_num_threads(int);
char* openblas_get_config(void);
}
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace rw::kernels::cpu {

void Sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
#ifdef RW_HAVE_OPENBLAS
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              int(m), int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
#else
  // i-k-j order so the inner loop streams rows of B and C.
  for (int64_t i = 0; i < m; ++i) {
    float* ci = c + i * ldc;
    if (beta == 0.f)
      std::fill(ci, ci + n, 0.f);
    else if (beta != 1.f)
      for (int64_t j = 0; j < n; ++j) ci[j] *= beta;
    for (int64_t p = 0; p < k; ++p) {
      const float aip = alpha * (trans_a ? a[p * lda + i] : a[i * lda + p]);
      if (!trans_b) {
        const float* bp = b + p * ldb;
        for (int64_t j = 0; j < n; ++j) ci[j] += aip * bp[j];
      } else {
        for (int64_t j = 0; j < n; ++j) ci[j] += aip * b[j * ldb + p];
      }
    }
  }
#endif
}

void SetBlasThreads(int n) {
#ifdef RW_HAVE_OPENBLAS
  static std::atomic<int> current{-1};
  if (current.exchange(n) != n) openblas_set_num_threads(n);
#else
  (void)n;
#endif
}

void ParallelSgemm(int threads, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                   const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  SetBlasThreads(1);
  // Row blocks of at least 32 rows, at most one per thread.
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, m / 32));
  if (parts == 1) {
    Sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
#pragma omp parallel for num_threads(int(parts)) schedule(static)
  for (int64_t p = 0; p < parts; ++p) {
    const int64_t m0 = m * p / parts, m1 = m * (p + 1) / parts;
    const float* ap = trans_a ? a + m0 : a + m0 * lda;  // rows of op(A)
    Sgemm(trans_a, trans_b, m1 - m0, n, k, alpha, ap, lda, b, ldb, beta, c + m0 * ldc, ldc);
  }
}

const char* BlasName() {
#ifdef RW_HAVE_OPENBLAS
  return openblas_get_config();
#else
  return "builtin (no BLAS found)";
#endif
}

int DefaultThreads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return std::max(1u, std::thread::hardware_concurrency());
#endif
}

}  // namespace rw::kernels::cpu
