#include "kernels/cpu/amx.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#if defined(__x86_64__)
// GCC 12 warns of an uninitialized __Y inside its own AVX-512 headers for the masked and reduce
// intrinsics (a false positive of the headers' undefined-vector idiom); the state must be set before them.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define RW_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))
#endif

namespace rw::kernels::cpu::amx {
namespace {

std::atomic<bool> g_allowed{true};

struct Probe {
  bool ok = false;
  std::string what;
};

#if defined(__x86_64__)
// Linux keeps the AMX tile data state off until a process asks for it (arch_prctl, Linux 5.16+).
constexpr int kArchReqXcompPerm = 0x1023;
constexpr int kXfeatureXtileData = 18;

Probe Check() {
  Probe p;
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return {false, "no CPUID leaf 7"};
  const bool tile = d & (1u << 24), bf16 = d & (1u << 22);
  unsigned a1 = 0, b1, c1, d1;
  __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
  const bool avx512bf16 = a1 & (1u << 5);
  if (!tile || !bf16) return {false, "the CPU has no AMX-BF16"};
  if (!avx512bf16) return {false, "the CPU has AMX but no AVX512-BF16"};
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtileData) != 0)
    return {false, std::string("Linux refused the AMX tile state (arch_prctl: ") + std::strerror(errno) + ")"};
  return {true, "AMX-BF16 tiles (TDPBF16PS)"};
}
#else
Probe Check() { return {false, "not an x86-64 CPU"}; }
#endif

const Probe& Get() {
  static const Probe p = [] {
    Probe r = Check();
    const char* env = std::getenv("RW_AMX");
    if (r.ok && env && std::string(env) == "0") r = {false, "AMX turned off by RW_AMX=0"};
    return r;
  }();
  return p;
}

#if defined(__x86_64__)
// Palette 1: eight tiles of 16 rows x 64 bytes. Tiles 0-3 hold C, 4-5 A, 6-7 B.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

RW_AMX_TARGET void Configure() {
  // Other AMX users on this thread (oneDNN's GEMMs) load their own configurations, so each call loads ours.
  static const TileConfig cfg = [] {
    TileConfig t;
    for (int i = 0; i < 8; ++i) {
      t.colsb[i] = 64;
      t.rows[i] = 16;
    }
    return t;
  }();
  _tile_loadconfig(&cfg);
}

// One 16 MT x 16 NT block of C over the whole k.
template <int MT, int NT>
RW_AMX_TARGET inline void Block(int64_t k, const bf16* a, int64_t lda, const bf16* b, int64_t ldb, float* c,
                                int64_t ldc, bool accumulate) {
  const int64_t sa = lda * 2, sb = ldb * 2, sc = ldc * 4;
  if (accumulate) {
    _tile_loadd(0, c, sc);
    if constexpr (NT > 1) _tile_loadd(1, c + 16, sc);
    if constexpr (MT > 1) _tile_loadd(2, c + 16 * ldc, sc);
    if constexpr (MT > 1 && NT > 1) _tile_loadd(3, c + 16 * ldc + 16, sc);
  } else {
    _tile_zero(0);
    if constexpr (NT > 1) _tile_zero(1);
    if constexpr (MT > 1) _tile_zero(2);
    if constexpr (MT > 1 && NT > 1) _tile_zero(3);
  }
  for (int64_t kk = 0; kk < k; kk += 32) {
    _tile_loadd(4, a + kk, sa);
    _tile_loadd(6, b + (kk / 2) * ldb, sb);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (NT > 1) {
      _tile_loadd(7, b + (kk / 2) * ldb + 32, sb);
      _tile_dpbf16ps(1, 4, 7);
    }
    if constexpr (MT > 1) {
      _tile_loadd(5, a + 16 * lda + kk, sa);
      _tile_dpbf16ps(2, 5, 6);
      if constexpr (NT > 1) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, c, sc);
  if constexpr (NT > 1) _tile_stored(1, c + 16, sc);
  if constexpr (MT > 1) _tile_stored(2, c + 16 * ldc, sc);
  if constexpr (MT > 1 && NT > 1) _tile_stored(3, c + 16 * ldc + 16, sc);
}

RW_AMX_TARGET void GemmImpl(int64_t m, int64_t n, int64_t k, const bf16* a, int64_t lda, const bf16* b,
                            int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  Configure();
  for (int64_t i = 0; i < m; i += 32) {
    const bool two_m = i + 32 <= m;
    const bf16* ai = a + i * lda;
    for (int64_t j = 0; j < n; j += 32) {
      const bool two_n = j + 32 <= n;
      const bf16* bj = b + 2 * j;
      float* cij = c + i * ldc + j;
      if (two_m && two_n)
        Block<2, 2>(k, ai, lda, bj, ldb, cij, ldc, accumulate);
      else if (two_m)
        Block<2, 1>(k, ai, lda, bj, ldb, cij, ldc, accumulate);
      else if (two_n)
        Block<1, 2>(k, ai, lda, bj, ldb, cij, ldc, accumulate);
      else
        Block<1, 1>(k, ai, lda, bj, ldb, cij, ldc, accumulate);
    }
  }
}

RW_AMX_TARGET void RoundRowImpl(const float* src, int64_t n, int64_t n_pad, bf16* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), reinterpret_cast<const __m256i&>(h));
  }
  for (; i < n; ++i) dst[i] = ToBf16(src[i]);
  for (; i < n_pad; ++i) dst[i] = bf16{};
}

// exp on 16 lanes for the bf16 path: exp(x) = 2^n 2^f, n = round(x log2 e), f in [-1/2, 1/2], 2^f by its
// Taylor polynomial of degree 6 (relative error < 2e-7, against bf16's 2^-9 rounding of every P it feeds),
// 2^n applied by VSCALEFPS. Exactly 0 below -87.3 (masked scores, -inf included), as FastExp (vec.h).
RW_AMX_TARGET inline __m512 Exp16(__m512 x) {
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_GE_OQ);
  const __m512 t = _mm512_mul_ps(_mm512_min_ps(x, _mm512_set1_ps(88.7f)), _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.5403530393381610e-4f);            // ln2^6 / 6!
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-3f));  // ln2^5 / 5!
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));  // ln2^4 / 4!
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));  // ln2^3 / 3!
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f));  // ln2^2 / 2!
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f));  // ln2
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  return _mm512_maskz_scalef_ps(live, p, n);
}

RW_AMX_TARGET inline void Store16(bf16* dst, __m512 v, __mmask16 k) {
  const __m256bh h = _mm512_cvtneps_pbh(v);
  _mm256_mask_storeu_epi16(dst, k, reinterpret_cast<const __m256i&>(h));
}

RW_AMX_TARGET inline __mmask16 Tail(int64_t left) { return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1); }

RW_AMX_TARGET void PadRow(bf16* dst, int64_t n, int64_t n_pad) {
  if (n_pad > n) std::memset(static_cast<void*>(dst + n), 0, size_t(n_pad - n) * sizeof(bf16));
}

// A 32 x 16 block of 16-bit elements to 16 x 32: interleaving input rows 2p and 2p + 1 makes 32-bit
// elements (in[2p][c], in[2p+1][c]); a 16 x 16 transpose of those puts (out[c][2p], out[c][2p+1]) in place.
RW_AMX_TARGET void Transpose32x16(const bf16* in, int64_t ldi, bf16* out, int64_t ldo) {
  alignas(64) static const uint16_t kInterleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                       8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i idx = _mm512_load_si512(kInterleave);
  __m512i r[16], t[16];
  for (int p = 0; p < 16; ++p) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + (2 * p) * ldi));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + (2 * p + 1) * ldi));
    r[p] = _mm512_permutexvar_epi16(idx, _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1));
  }
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0xdd);
  }
  for (int c = 0; c < 16; ++c) _mm512_storeu_si512(out + c * ldo, r[c]);
}

RW_AMX_TARGET void TransposeBf16Impl(const bf16* in, int64_t ldi, int64_t rows, int64_t cols, bf16* out,
                                     int64_t ldo) {
  for (int64_t r0 = 0; r0 < rows; r0 += 32)
    for (int64_t c0 = 0; c0 < cols; c0 += 16) Transpose32x16(in + r0 * ldi + c0, ldi, out + c0 * ldo + r0, ldo);
}

RW_AMX_TARGET float RowMaxImpl(const float* x, int64_t n) {
  __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = Tail(n - i);
    m = _mm512_mask_max_ps(m, k, m, _mm512_maskz_loadu_ps(k, x + i));
  }
  return _mm512_reduce_max_ps(m);
}

RW_AMX_TARGET float ExpRowImpl(const float* x, int64_t n, float c, float mx, bf16* out, int64_t n_pad) {
  const __m512 vc = _mm512_set1_ps(c), vm = _mm512_set1_ps(mx);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = Tail(n - i);
    const __m512 e = _mm512_maskz_mov_ps(k, Exp16(_mm512_fmsub_ps(vc, _mm512_maskz_loadu_ps(k, x + i), vm)));
    Store16(out + i, e, k);
    sum = _mm512_add_ps(sum, e);
  }
  PadRow(out, n, n_pad);
  return _mm512_reduce_add_ps(sum);
}

RW_AMX_TARGET void ExpRowColumnsImpl(float* x, int64_t n, float c, const float* lse, bf16* out, int64_t n_pad) {
  const __m512 vc = _mm512_set1_ps(c), ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = Tail(n - i);
    const __m512 l = _mm512_maskz_loadu_ps(k, lse + i);
    const __mmask16 live = _mm512_mask_cmp_ps_mask(k, l, ninf, _CMP_NEQ_OQ);
    const __m512 e = _mm512_maskz_mov_ps(live, Exp16(_mm512_fmsub_ps(vc, _mm512_maskz_loadu_ps(k, x + i), l)));
    _mm512_mask_storeu_ps(x + i, k, e);
    Store16(out + i, e, k);
  }
  PadRow(out, n, n_pad);
}

RW_AMX_TARGET void DsRowImpl(const float* dp, const float* p, const float* delta, int64_t n, bf16* out, int64_t n_pad) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = Tail(n - i);
    const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p + i),
                                   _mm512_sub_ps(_mm512_maskz_loadu_ps(k, dp + i), _mm512_maskz_loadu_ps(k, delta + i)));
    Store16(out + i, v, k);
  }
  PadRow(out, n, n_pad);
}
#endif

}  // namespace

bool Available() { return Get().ok && g_allowed.load(std::memory_order_relaxed); }

const char* Describe() {
  if (Get().ok && !g_allowed.load()) return "AMX turned off by the caller";
  return Get().what.c_str();
}

void SetAllowed(bool allowed) { g_allowed.store(allowed); }

void Gemm(int64_t m, int64_t n, int64_t k, const bf16* a, int64_t lda, const bf16* b, int64_t ldb, float* c,
          int64_t ldc, bool accumulate) {
#if defined(__x86_64__)
  GemmImpl(m, n, k, a, lda, b, ldb, c, ldc, accumulate);
#else
  (void)m, (void)n, (void)k, (void)a, (void)lda, (void)b, (void)ldb, (void)c, (void)ldc, (void)accumulate;
  std::abort();
#endif
}

void PackTransposed(const bf16* x, int64_t n, int64_t k, int64_t ldx, int64_t n_pad, int64_t k_pad, bf16* out) {
  const int64_t ldo = 2 * n_pad;
  for (int64_t pr = 0; pr < k_pad / 2; ++pr) {
    bf16* o = out + pr * ldo;
    const int64_t k0 = 2 * pr;
    for (int64_t j = 0; j < n; ++j) {
      o[2 * j] = k0 < k ? x[j * ldx + k0] : bf16{};
      o[2 * j + 1] = k0 + 1 < k ? x[j * ldx + k0 + 1] : bf16{};
    }
    std::memset(static_cast<void*>(o + 2 * n), 0, size_t(2 * (n_pad - n)) * sizeof(bf16));
  }
}

void PackRows(const bf16* x, int64_t k, int64_t n, int64_t ldx, int64_t k_pad, int64_t n_pad, bf16* out) {
  const int64_t ldo = 2 * n_pad;
  for (int64_t pr = 0; pr < k_pad / 2; ++pr) {
    bf16* o = out + pr * ldo;
    const int64_t r0 = 2 * pr;
    const bf16* x0 = r0 < k ? x + r0 * ldx : nullptr;
    const bf16* x1 = r0 + 1 < k ? x + (r0 + 1) * ldx : nullptr;
    for (int64_t j = 0; j < n; ++j) {
      o[2 * j] = x0 ? x0[j] : bf16{};
      o[2 * j + 1] = x1 ? x1[j] : bf16{};
    }
    std::memset(static_cast<void*>(o + 2 * n), 0, size_t(2 * (n_pad - n)) * sizeof(bf16));
  }
}

#if defined(__x86_64__)
float RowMax(const float* x, int64_t n) { return RowMaxImpl(x, n); }
float ExpRow(const float* x, int64_t n, float c, float m, bf16* out, int64_t n_pad) {
  return ExpRowImpl(x, n, c, m, out, n_pad);
}
void ExpRowColumns(float* x, int64_t n, float c, const float* lse, bf16* out, int64_t n_pad) {
  ExpRowColumnsImpl(x, n, c, lse, out, n_pad);
}
void DsRow(const float* dp, const float* p, const float* delta, int64_t n, bf16* out, int64_t n_pad) {
  DsRowImpl(dp, p, delta, n, out, n_pad);
}
void TransposeBf16(const bf16* in, int64_t ldi, int64_t rows, int64_t cols, bf16* out, int64_t ldo) {
  TransposeBf16Impl(in, ldi, rows, cols, out, ldo);
}
#else
void TransposeBf16(const bf16*, int64_t, int64_t, int64_t, bf16*, int64_t) { std::abort(); }
float RowMax(const float*, int64_t) { std::abort(); }
float ExpRow(const float*, int64_t, float, float, bf16*, int64_t) { std::abort(); }
void ExpRowColumns(float*, int64_t, float, const float*, bf16*, int64_t) { std::abort(); }
void DsRow(const float*, const float*, const float*, int64_t, bf16*, int64_t) { std::abort(); }
#endif

void RoundRow(const float* src, int64_t n, int64_t n_pad, bf16* dst) {
#if defined(__x86_64__)
  if (Get().ok) return RoundRowImpl(src, n, n_pad, dst);
#endif
  int64_t i = 0;
  for (; i < n; ++i) dst[i] = ToBf16(src[i]);
  for (; i < n_pad; ++i) dst[i] = bf16{};
}

}  // namespace rw::kernels::cpu::amx
