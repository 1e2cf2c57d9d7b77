#include "kernels/cpu/gemm.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#ifdef RW_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.hpp>
#endif

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
namespace {

// The library threads of a GEMM called from this thread (SetBlasThreads). oneDNN sizes its team from the
// caller's OpenMP thread count, an ICV of the calling thread: a GEMM sets it for the call, so a ring rank
// given one thread keeps to one, and a kernel's OpenMP worker (a team of one included) does not fork more.
thread_local int t_library_threads = 1;
struct LibraryThreads {
#ifdef _OPENMP
  const int saved = omp_get_max_threads();
  explicit LibraryThreads(int n) { omp_set_num_threads(n); }
  ~LibraryThreads() { omp_set_num_threads(saved); }
#else
  explicit LibraryThreads(int) {}
#endif
};

// C = beta C (m x n): the product of an empty inner dimension, without a library call.
void ScaleOnly(int64_t m, int64_t n, float beta, float* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.f ? 0.f : beta * c[i * ldc + j];
}

bool InParallel() {
#ifdef _OPENMP
  return omp_in_parallel() != 0;
#else
  return false;
#endif
}

}  // namespace

void Sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
#if defined(RW_HAVE_ONEDNN)
  // oneDNN picks its sgemm kernel from the CPU's feature flags at run time; OpenBLAS 0.3.21 picks by model
  // number and runs its generic SSE3 ("Prescott") kernel on CPUs newer than it knows (5-7x slower here).
  if (k == 0) return ScaleOnly(m, n, beta, c, ldc);
  const LibraryThreads scope(t_library_threads);
  const dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta,
                                      c, ldc);
  if (st != dnnl_success) {
    std::fprintf(stderr, "dnnl_sgemm failed (status %d) for m=%lld n=%lld k=%lld\n", int(st), (long long)m,
                 (long long)n, (long long)k);
    std::abort();
  }
#elif defined(RW_HAVE_OPENBLAS)
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
  t_library_threads = std::max(1, n);
#ifdef RW_HAVE_OPENBLAS
  static std::atomic<int> current{-1};
  if (current.exchange(n) != n) openblas_set_num_threads(n);
#else
  (void)n;
#endif
}

namespace {


// Widened copy of a bf16 matrix (rows x cols, leading dimension ld) for the sgemm path.
std::vector<float> Widen(const bf16* x, int64_t rows, int64_t cols, int64_t ld) {
  std::vector<float> out(size_t(rows) * size_t(cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[size_t(r * cols + c)] = ToFloat(x[r * ld + c]);
  return out;
}

// op(A) (m x k) and op(B) (k x n) widened to dense fp32, in their stored orientation, with their new
// leading dimensions: the operands of the widened path.
struct Widened {
  std::vector<float> a, b;
  int64_t lda, ldb;
  Widened(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const bf16* pa, int64_t lda_in, const bf16* pb,
          int64_t ldb_in)
      : a(ta ? Widen(pa, k, m, lda_in) : Widen(pa, m, k, lda_in)),
        b(tb ? Widen(pb, n, k, ldb_in) : Widen(pb, k, n, ldb_in)),
        lda(ta ? m : k),
        ldb(tb ? k : n) {}
};

#ifdef RW_HAVE_ONEDNN
std::string IsaName() {
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::sse41: return "sse41";
    default: return "other";
  }
}

// oneDNN matmul primitives, one per GEMM shape (shape, strides, alpha, beta, threads). Creating one
// JIT-compiles a kernel (milliseconds); a training step uses a few dozen shapes, so they are made once and
// kept: a shared map behind a mutex, and in front of it a per-thread map that needs no lock. Entries are
// shared_ptrs, so a bounded shared map can drop entries other threads are still running. Each call brings
// its own scratchpad (user mode), so one primitive runs on several threads at once. oneDNN fixes a
// primitive's thread count when it is made (and splits the work by it), so the count is part of the key.
// A shape oneDNN refuses, or can only run with its reference kernel, is marked and takes the widened path.
class OneDnn {
 public:
  static OneDnn& Get() {
    static OneDnn o;
    return o;
  }
  bool usable() const { return usable_; }
  const std::string& path() const { return path_; }

  // False when this shape takes the widened path.
  bool Run(int threads, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const bf16* a, int64_t lda,
           const bf16* b, int64_t ldb, float beta, float* c, int64_t ldc) {
    const Key key{threads, ta, tb, m, n, k, lda, ldb, ldc, alpha, beta};
    // The thread's front map also keeps the four memory objects of each shape, re-pointed at each call's
    // buffers, and the call goes through the C API with its arguments on the stack: after a shape's first
    // call a GEMM makes no heap allocation (the C++ execute builds an unordered_map of its arguments).
    thread_local std::map<Key, Front> front;
    auto it = front.find(key);
    if (it == front.end()) {
      if (front.size() >= kMaxEntries) front.clear();
      Front f;
      f.entry = Find(key);
      if (f.entry->ok) {
        const Entry& e = *f.entry;
        f.a = dnnl::memory(e.a, engine_, DNNL_MEMORY_NONE);
        f.b = dnnl::memory(e.b, engine_, DNNL_MEMORY_NONE);
        f.c = dnnl::memory(e.c, engine_, DNNL_MEMORY_NONE);
        f.s = dnnl::memory(e.pd.scratchpad_desc(), engine_, DNNL_MEMORY_NONE);
      }
      it = front.emplace(key, std::move(f)).first;
    }
    const Entry& e = *it->second.entry;
    if (!e.ok) return false;
    thread_local std::unique_ptr<dnnl::stream> stream;
    thread_local std::vector<char> scratch;
    if (!stream) stream = std::make_unique<dnnl::stream>(engine_);
    if (scratch.size() < e.scratch_bytes) scratch.resize(e.scratch_bytes);
    Front& f = it->second;
    f.a.set_data_handle(const_cast<bf16*>(a));
    f.b.set_data_handle(const_cast<bf16*>(b));
    f.c.set_data_handle(c);
    f.s.set_data_handle(scratch.data());
    const dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, f.a.get()}, {DNNL_ARG_WEIGHTS, f.b.get()},
                                     {DNNL_ARG_DST, f.c.get()}, {DNNL_ARG_SCRATCHPAD, f.s.get()}};
    const dnnl_status_t st = dnnl_primitive_execute(e.prim.get(), stream->get(), 4, args);
    if (st != dnnl_success) {
      std::fprintf(stderr, "oneDNN matmul failed (status %d) for m=%lld n=%lld k=%lld\n", int(st), (long long)m,
                   (long long)n, (long long)k);
      std::abort();
    }
    stream->wait();
    return true;
  }

 private:
  static constexpr size_t kMaxEntries = 4096;  // a job has a few dozen shapes; a bound all the same
  using Key = std::tuple<int, bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float, float>;
  struct Entry {
    bool ok = false;  // false: oneDNN refused the shape or offers only its reference kernel
    dnnl::memory::desc a, b, c;
    dnnl::matmul::primitive_desc pd;
    dnnl::matmul prim;
    size_t scratch_bytes = 0;
  };
  struct Front {
    std::shared_ptr<const Entry> entry;
    dnnl::memory a, b, c, s;  // the entry's operands, pointed at each call's buffers
  };

  OneDnn() : engine_(dnnl::engine::kind::cpu, 0) {
    // Probe once: a CPU oneDNN has no bf16 matmul for (no AVX-512) takes the widened path.
    try {
      Entry e = Make(Key{1, false, true, 64, 64, 64, 64, 64, 64, 1.f, 0.f});
      const dnnl_version_t* v = dnnl_version();
      path_ = "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
              std::to_string(v->patch) + " " + e.pd.impl_info_str();
      usable_ = e.ok;
      if (!usable_) path_ = "fp32 sgemm on widened bf16 (oneDNN offers only " + path_ + " on this CPU)";
    } catch (const dnnl::error& err) {
      path_ = std::string("fp32 sgemm on widened bf16 (oneDNN has no bf16 matmul for this CPU: ") + err.what() + ")";
    }
  }

  // Throws dnnl::error when oneDNN refuses the shape. Made with the key's thread count as the calling
  // thread's OpenMP count (the caller has set it: LibraryThreads).
  Entry Make(const Key& key) const {
    const auto [threads, ta, tb, m, n, k, lda, ldb, ldc, alpha, beta] = key;
    (void)threads;
    using dt = dnnl::memory::data_type;
    Entry e;
    e.a = dnnl::memory::desc({m, k}, dt::bf16, ta ? dnnl::memory::dims{1, lda} : dnnl::memory::dims{lda, 1});
    e.b = dnnl::memory::desc({k, n}, dt::bf16, tb ? dnnl::memory::dims{1, ldb} : dnnl::memory::dims{ldb, 1});
    e.c = dnnl::memory::desc({m, n}, dt::f32, dnnl::memory::dims{ldc, 1});
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (alpha != 1.f) attr.set_output_scales(0, {alpha});
    if (beta != 0.f) {
      dnnl::post_ops po;
      po.append_sum(beta);
      attr.set_post_ops(po);
    }
    e.pd = dnnl::matmul::primitive_desc(dnnl::matmul::desc(e.a, e.b, e.c), attr, engine_);
    e.ok = std::string(e.pd.impl_info_str()).rfind("ref", 0) != 0;
    if (e.ok) {
      e.prim = dnnl::matmul(e.pd);
      e.scratch_bytes = e.pd.scratchpad_desc().get_size();
    }
    return e;
  }

  std::shared_ptr<const Entry> Find(const Key& key) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = cache_.find(key);
      if (it != cache_.end()) return it->second;
    }
    // Made outside the lock (JIT takes milliseconds); two threads may both make one, the first kept.
    auto entry = std::make_shared<Entry>();
    try {
      *entry = Make(key);
    } catch (const dnnl::error&) {
      entry->ok = false;
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (cache_.size() >= kMaxEntries) cache_.clear();
    return cache_.emplace(key, std::move(entry)).first->second;
  }

  dnnl::engine engine_;
  bool usable_ = false;
  std::string path_;
  std::mutex mu_;
  std::map<Key, std::shared_ptr<const Entry>> cache_;
};
#endif

}  // namespace

void GemmBf16Widened(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const bf16* a, int64_t lda,
                     const bf16* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const Widened w(ta, tb, m, n, k, a, lda, b, ldb);
  Sgemm(ta, tb, m, n, k, alpha, w.a.data(), w.lda, w.b.data(), w.ldb, beta, c, ldc);
}

void GemmBf16(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const bf16* a, int64_t lda,
              const bf16* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) return ScaleOnly(m, n, beta, c, ldc);
#ifdef RW_HAVE_ONEDNN
  if (OneDnn::Get().usable()) {
    // Inside an active OpenMP region oneDNN runs on the calling thread alone, whatever it was made for.
    const int threads = InParallel() ? 1 : t_library_threads;
    const LibraryThreads scope(threads);
    if (OneDnn::Get().Run(threads, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)) return;
  }
#endif
  GemmBf16Widened(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void Gemm(DType dtype, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const void* a, int64_t lda,
          const void* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (dtype == DType::kBF16)
    GemmBf16(ta, tb, m, n, k, alpha, static_cast<const bf16*>(a), lda, static_cast<const bf16*>(b), ldb, beta, c,
             ldc);
  else
    Sgemm(ta, tb, m, n, k, alpha, static_cast<const float*>(a), lda, static_cast<const float*>(b), ldb, beta, c,
          ldc);
}

void ParallelGemm(int threads, DType dtype, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                  float alpha, const void* a, int64_t lda, const void* b, int64_t ldb, float beta, float* c,
                  int64_t ldc) {
  if (dtype == DType::kBF16 && !Bf16GemmHasLibrary() && m > 0 && n > 0 && k > 0) {
    // Widen A and B once for all the row parts (not once per part: B is often the whole lm_head).
    const Widened w(trans_a, trans_b, m, n, k, static_cast<const bf16*>(a), lda, static_cast<const bf16*>(b), ldb);
    ParallelGemm(threads, DType::kF32, trans_a, trans_b, m, n, k, alpha, w.a.data(), w.lda, w.b.data(), w.ldb, beta,
                 c, ldc);
    return;
  }
  SetBlasThreads(1);
  const int64_t es = DTypeSize(dtype);
  // Row blocks of at least 32 rows, at most one per thread.
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, m / 32));
  if (parts == 1) {
    Gemm(dtype, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
#pragma omp parallel for num_threads(int(parts)) schedule(static)
  for (int64_t p = 0; p < parts; ++p) {
    const int64_t m0 = m * p / parts, m1 = m * (p + 1) / parts;
    const char* ap = static_cast<const char*>(a) + (trans_a ? m0 : m0 * lda) * es;  // rows of op(A)
    Gemm(dtype, trans_a, trans_b, m1 - m0, n, k, alpha, ap, lda, b, ldb, beta, c + m0 * ldc, ldc);
  }
}

bool Bf16GemmHasLibrary() {
#ifdef RW_HAVE_ONEDNN
  return OneDnn::Get().usable();
#else
  return false;
#endif
}

const char* Bf16GemmPath() {
#ifdef RW_HAVE_ONEDNN
  return OneDnn::Get().path().c_str();
#else
  return "fp32 sgemm on widened bf16 (built without oneDNN)";
#endif
}

const char* BlasName() {
#if defined(RW_HAVE_ONEDNN)
  static const std::string name = [] {
    const dnnl_version_t* v = dnnl_version();
    return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch) +
           " sgemm (" + IsaName() + ")";
  }();
  return name.c_str();
#elif defined(RW_HAVE_OPENBLAS)
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
