// CUDA attention, FlashAttention-2 style on mma.sync tensor cores (bf16/f16 in, fp32 accumulate).
//
// Forward: one block of 4 warps per (64-row query tile, query head); each warp owns 16 query rows and
// keeps its O (16 x D) and online-softmax statistics in registers while it walks the key tiles:
//   S = Q K^T (mma, B from K in smem);  scores in the log2 domain (scale * log2 e) so exp is exp2
//   m_new = max(m, rowmax S);  P = 2^(S - m_new);  l = l 2^(m - m_new) + rowsum P;  O = O 2^(m - m_new) + P V
// P goes from the S accumulators straight into the A operand of P V (same register layout).
// Backward: one block per (64-key tile, kv head), looping over the query heads of its group and the query
// tiles; each warp owns 16 keys and keeps dK, dV in registers (no atomics for them); dQ is added with
// fp32 atomics, which the API's accumulate-into-dq contract allows:
//   S^T = K Q^T;  P^T = exp(c S^T - lse);  dV += P^T dO;  dP^T = V dO^T;  dS^T = P^T (dP^T - delta)
//   dK += c dS^T Q;  dQ += c dS K  (dS staged through shared memory)
// Tiles whose causal/segment mask is empty are skipped; tiles it leaves whole skip the element mask.
//
// Napkin math (H100 SXM, bf16 dense ~990 TFLOP/s peak): forward at S = 8K, D = 128 is 4 S^2 D = 34 GFLOP
// per head, i.e. ~35 us per head at peak. Fragments come through ldmatrix; the forward double-buffers its
// K/V tiles with cp.async; there is no wgmma/TMA path yet. ops/gpu-check.sh measures it against PyTorch's
// flash SDPA in the same run (docs/BENCHMARKS.md).
#include <cuda_runtime.h>

#include <climits>
#include <cmath>

#include "kernels/cuda/cuda.h"
#include "kernels/cuda/mma.cuh"

namespace rw::kernels::cuda {
namespace {

constexpr int kBq = 64, kBk = 64, kThreads = 128;
static_assert(kBq == 64 && kBk == 64, "LoadTokens and TileBounds assume 64-row tiles");
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

struct Bounds {
  long long imin, imax;
  int smin, smax;
};

__device__ __forceinline__ int64_t TokIndex(const TokenInfo& t, int64_t s) {
  return t.index ? t.index[s] : t.offset + s;
}
__device__ __forceinline__ int32_t TokSeg(const TokenInfo& t, int64_t s) { return t.segment ? t.segment[s] : 0; }

// The first 64 threads copy the global index and segment of a tile's rows into smem; rows past n get
// `pad_idx` and `pad_seg` (a segment no real row has, so the element mask rejects them).
__device__ __forceinline__ void LoadTokens(const TokenInfo& t, int64_t r0, int n, long long pad_idx, int pad_seg,
                                           long long* idx, int* seg) {
  if (threadIdx.x < 64) {
    const int r = threadIdx.x;
    idx[r] = r < n ? TokIndex(t, r0 + r) : pad_idx;
    seg[r] = r < n ? TokSeg(t, r0 + r) : pad_seg;
  }
}

// Warp 0 reduces the bounds of the n valid rows of a tile (idx/seg in smem).
__device__ void TileBounds(const long long* idx, const int* seg, int n, Bounds* out) {
  const int lane = threadIdx.x & 31;
  long long imin = LLONG_MAX, imax = LLONG_MIN;
  int smin = INT_MAX, smax = INT_MIN;
  for (int r = lane; r < n; r += 32) {
    imin = min(imin, idx[r]);
    imax = max(imax, idx[r]);
    smin = min(smin, seg[r]);
    smax = max(smax, seg[r]);
  }
  for (int o = 16; o > 0; o >>= 1) {
    imin = min(imin, __shfl_xor_sync(0xffffffff, imin, o));
    imax = max(imax, __shfl_xor_sync(0xffffffff, imax, o));
    smin = min(smin, __shfl_xor_sync(0xffffffff, smin, o));
    smax = max(smax, __shfl_xor_sync(0xffffffff, smax, o));
  }
  if (lane == 0) *out = Bounds{imin, imax, smin, smax};
}

// Rows of a tile of `tile` rows starting at `start` that exist in a tensor of `total` rows.
__device__ __forceinline__ int TileRows(int64_t total, int64_t start, int tile) {
  return total - start < tile ? int(total - start) : tile;
}

enum Kind : int { kEmpty = 0, kWhole = 1, kMasked = 2 };

__device__ int Classify(bool causal, const Bounds& q, const Bounds& k, bool full_tiles) {
  if (causal && q.imax < k.imin) return kEmpty;
  if (q.smax < 0 || k.smax < 0) return kEmpty;
  if (q.smax < k.smin || k.smax < q.smin) return kEmpty;
  const bool one = q.smin == q.smax && k.smin == k.smax && q.smin == k.smin && q.smin >= 0;
  if (one && full_tiles && (!causal || q.imin >= k.imax)) return kWhole;
  return kMasked;
}

// Copies rows [r0, r0 + n) of head h of a (S, H, D) tensor into a (64 x pitch) smem tile, 16 bytes at a
// time; rows past n are zero.
template <class T, int D>
__device__ void LoadTile(T* dst, const View3& src, int64_t r0, int n, int64_t h) {
  constexpr int kPitch = D + 8, kChunks = D / 8;
  for (int c = threadIdx.x; c < 64 * kChunks; c += kThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < n) v = *reinterpret_cast<const uint4*>(static_cast<const T*>(src.data) + (r0 + r) * src.stride_s +
                                                   h * src.stride_h + col);
    *reinterpret_cast<uint4*>(dst + r * kPitch + col) = v;
  }
}

// As LoadTile, by cp.async: the copies land while the warps compute on the other stage.
template <class T, int D>
__device__ void LoadTileAsync(T* dst, const View3& src, int64_t r0, int n, int64_t h) {
  constexpr int kPitch = D + 8, kChunks = D / 8;
  const T* base = static_cast<const T*>(src.data);
  for (int c = threadIdx.x; c < 64 * kChunks; c += kThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const bool ok = r < n;
    CpAsync16(dst + r * kPitch + col, ok ? base + (r0 + r) * src.stride_s + h * src.stride_h + col : base, ok);
  }
}

// The two-stage cp.async pipeline both kernels walk: over work items [0, count), item i+1's kind is found
// (prepare(i, stage) -> kind; every thread calls it) and its tiles issued (issue(i, stage)) into stage
// (i+1) & 1 while item i is computed (compute(i, stage, kind)) from stage i & 1. Empty items are found but
// neither copied nor computed.
template <class Prepare, class Issue, class Compute>
__device__ __forceinline__ void RunPipeline(int count, Prepare&& prepare, Issue&& issue, Compute&& compute) {
  int kind = kEmpty;
  if (count > 0) {
    kind = prepare(0, 0);
    if (kind != kEmpty) issue(0, 0);
  }
  CpAsyncCommit();
  for (int i = 0; i < count; ++i) {
    const int cur = i & 1;
    int next_kind = kEmpty;
    if (i + 1 < count) {
      next_kind = prepare(i + 1, cur ^ 1);
      if (next_kind != kEmpty) issue(i + 1, cur ^ 1);
    }
    CpAsyncCommit();
    CpAsyncWait<1>();  // this thread's copies of item i have landed
    __syncthreads();   // and everyone's
    if (kind != kEmpty) compute(i, cur, kind);
    __syncthreads();  // stage cur is free for item i + 2
    kind = next_kind;
  }
}

// kAffine: neither side has index or segment arrays (row s sits at offset + s, one document), the common
// case: a tile's kind and its element mask are arithmetic, and a causal query tile walks only the key
// tiles at or before its last row. Otherwise the tokens of each key tile go through shared memory.
// K and V tiles are double-buffered: tile kt+1 is copied (cp.async) while tile kt is computed.
template <class T, int D, bool kAffine>
__global__ void __launch_bounds__(kThreads) ForwardKernel(AttentionParams p, float scale_log2) {
  constexpr int kPitch = D + 8, kDT = D / 16, kNT = D / 8, kTile = 64 * kPitch;
  extern __shared__ __align__(16) unsigned char smem[];
  T* qs = reinterpret_cast<T*>(smem);
  T* kvs = qs + kTile;  // stage b: K at kvs + 2 b kTile, V after it
  __shared__ long long qidx[kBq], kidx[2][kBk];
  __shared__ int qseg[kBq], kseg[2][kBk];
  __shared__ Bounds qb, kb;
  __shared__ int kind_s[2];

  const int h = blockIdx.y, hk = h / (p.hq / p.hkv);
  // Causal: the last query tiles see the most keys; start them first so that the short ones fill in.
  const int qt = p.causal ? int(gridDim.x - 1 - blockIdx.x) : int(blockIdx.x);
  const int64_t q0 = int64_t(qt) * kBq;
  const int nq = TileRows(p.sq, q0, kBq);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int r0 = warp * 16 + g, r1 = r0 + 8;

  LoadTile<T, D>(qs, p.q, q0, nq, h);
  if constexpr (!kAffine) LoadTokens(p.q_tok, q0, nq, LLONG_MAX, -1, qidx, qseg);
  __syncthreads();
  if constexpr (!kAffine)
    if (warp == 0) TileBounds(qidx, qseg, nq, &qb);

  // Q fragments stay in registers for the whole key loop.
  uint32_t qf[kDT][4];
#pragma unroll
  for (int kk = 0; kk < kDT; ++kk) LoadA(qf[kk], qs, kPitch, warp * 16, kk * 16);

  float o[kNT][4];
#pragma unroll
  for (int n = 0; n < kNT; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

  const int nkt = int((p.sk + kBk - 1) / kBk);
  int kt_end = nkt;
  // Affine: global q index - global k index of the tiles' first rows, per key tile.
  const int64_t qk_base = p.q_tok.offset + q0 - p.k_tok.offset;
  if (kAffine && p.causal) {
    const int64_t last = qk_base + nq - 1;  // the last key row any query row of this tile sees
    kt_end = last < 0 ? 0 : int(min(int64_t(nkt), last / kBk + 1));
  }

  // The kind of key tile kt (tokens into buffer b when not affine). Every thread calls it.
  auto prepare = [&](int kt, int b) -> int {
    const int64_t k0 = int64_t(kt) * kBk;
    const int nk = TileRows(p.sk, k0, kBk);
    if constexpr (kAffine) {
      const int64_t diff = qk_base - k0;  // q row r sees key row c when c <= diff + r (causal)
      if (p.causal && diff + nq - 1 < 0) return kEmpty;
      return nk == kBk && (!p.causal || diff >= kBk - 1) ? kWhole : kMasked;
    } else {
      LoadTokens(p.k_tok, k0, nk, LLONG_MAX, -2, kidx[b], kseg[b]);
      __syncthreads();
      if (warp == 0) {
        TileBounds(kidx[b], kseg[b], nk, &kb);
        if (lane == 0) kind_s[b] = Classify(p.causal, qb, kb, nk == kBk);
      }
      __syncthreads();
      return kind_s[b];
    }
  };
  auto issue = [&](int kt, int b) {
    const int64_t k0 = int64_t(kt) * kBk;
    const int nk = TileRows(p.sk, k0, kBk);
    LoadTileAsync<T, D>(kvs + 2 * b * kTile, p.k, k0, nk, hk);
    LoadTileAsync<T, D>(kvs + (2 * b + 1) * kTile, p.v, k0, nk, hk);
  };

  RunPipeline(kt_end, prepare, issue, [&](int kt, int cur, int kind) {
    const T* ks = kvs + 2 * cur * kTile;
    const T* vs = ks + kTile;
    const int64_t k0 = int64_t(kt) * kBk;
    const int nk = TileRows(p.sk, k0, kBk);

    float s[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kDT; ++kk)
#pragma unroll
      for (int n = 0; n < 8; n += 2) {
        uint32_t b[4];
        LoadBT2(b, ks, kPitch, n * 8, kk * 16);
        Mma16816<T>(s[n], qf[kk], b);
        Mma16816<T>(s[n + 1], qf[kk], b + 2);
      }

    float mx0 = -INFINITY, mx1 = -INFINITY;
    const int64_t diff = qk_base - k0;
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = n * 8 + 2 * t + e;
        float v0 = s[n][e] * scale_log2, v1 = s[n][2 + e] * scale_log2;
        if (kind == kMasked) {
          bool ok0, ok1;
          if constexpr (kAffine) {
            ok0 = c < nk && (!p.causal || c <= diff + r0);
            ok1 = c < nk && (!p.causal || c <= diff + r1);
          } else {
            const long long* ki = kidx[cur];
            const int* ksg = kseg[cur];
            ok0 = qseg[r0] >= 0 && qseg[r0] == ksg[c] && (!p.causal || ki[c] <= qidx[r0]);
            ok1 = qseg[r1] >= 0 && qseg[r1] == ksg[c] && (!p.causal || ki[c] <= qidx[r1]);
          }
          v0 = ok0 ? v0 : -INFINITY;
          v1 = ok1 ? v1 : -INFINITY;
        }
        s[n][e] = v0;
        s[n][2 + e] = v1;
        mx0 = fmaxf(mx0, v0);
        mx1 = fmaxf(mx1, v1);
      }
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffff, mx0, off));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffff, mx1, off));
    }
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
    // A row with nothing visible yet subtracts 0 so that 2^(-inf - 0) = 0 instead of NaN.
    const float mu0 = mn0 == -INFINITY ? 0.f : mn0, mu1 = mn1 == -INFINITY ? 0.f : mn1;
    const float a0 = exp2f(m0 - mu0), a1 = exp2f(m1 - mu1);
    float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        s[n][e] = exp2f(s[n][e] - mu0);
        s[n][2 + e] = exp2f(s[n][2 + e] - mu1);
        sum0 += s[n][e];
        sum1 += s[n][2 + e];
      }
    l0 = l0 * a0 + sum0;
    l1 = l1 * a1 + sum1;
    m0 = mn0;
    m1 = mn1;
#pragma unroll
    for (int n = 0; n < kNT; ++n) {
      o[n][0] *= a0;
      o[n][1] *= a0;
      o[n][2] *= a1;
      o[n][3] *= a1;
    }
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t a[4];
      AccToA<T>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int n = 0; n < kNT; n += 2) {
        uint32_t b[4];
        LoadB2(b, vs, kPitch, kk * 16, n * 8);
        Mma16816<T>(o[n], a, b);
        Mma16816<T>(o[n + 1], a, b + 2);
      }
    }
  });

  // l was summed per thread over its columns: add the 4 threads of the row group.
#pragma unroll
  for (int off = 1; off <= 2; off <<= 1) {
    l0 += __shfl_xor_sync(0xffffffff, l0, off);
    l1 += __shfl_xor_sync(0xffffffff, l1, off);
  }
  const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
  T* obase = static_cast<T*>(p.o.data);
#pragma unroll
  for (int n = 0; n < kNT; ++n) {
    const int c = n * 8 + 2 * t;
    if (r0 < nq)
      *reinterpret_cast<uint32_t*>(obase + (q0 + r0) * p.o.stride_s + h * p.o.stride_h + c) =
          Pack<T>(o[n][0] * inv0, o[n][1] * inv0);
    if (r1 < nq)
      *reinterpret_cast<uint32_t*>(obase + (q0 + r1) * p.o.stride_s + h * p.o.stride_h + c) =
          Pack<T>(o[n][2] * inv1, o[n][3] * inv1);
  }
  if (t == 0) {
    if (r0 < nq) p.lse[h * p.sq + q0 + r0] = l0 > 0.f ? (m0 + log2f(l0)) * kLn2 : -INFINITY;
    if (r1 < nq) p.lse[h * p.sq + q0 + r1] = l1 > 0.f ? (m1 + log2f(l1)) * kLn2 : -INFINITY;
  }
}

// kAffine as in the forward: tile kinds and masks by arithmetic, and a causal key tile starts at the first
// query tile that sees it. Q and dO tiles (with their lse, delta and tokens) are double-buffered: the
// next (head, query tile) pair is copied by cp.async while this one is computed.
template <class T, int D, bool kAffine>
__global__ void __launch_bounds__(kThreads) BackwardKernel(AttentionParams p, float scale) {
  constexpr int kPitch = D + 8, kDT = D / 16, kNT = D / 8, kDsPitch = kBk + 8, kTile = 64 * kPitch;
  extern __shared__ __align__(16) unsigned char smem[];
  T* ks = reinterpret_cast<T*>(smem);
  T* vs = ks + kTile;
  T* qdo = vs + kTile;  // stage b: Q at qdo + 2 b kTile, dO after it
  T* dss = qdo + 4 * kTile;  // dS as [query][key]
  __shared__ long long qidx[2][kBq], kidx[kBk];
  __shared__ int qseg[2][kBq], kseg[kBk];
  __shared__ float lse2[2][kBq], delta[2][kBq];
  __shared__ Bounds qb, kb;
  __shared__ int kind_s[2];

  const int hk = blockIdx.y, group = int(p.hq / p.hkv);
  const int64_t k0 = int64_t(blockIdx.x) * kBk;
  const int nk = TileRows(p.sk, k0, kBk);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int kr0 = warp * 16 + g, kr1 = kr0 + 8;
  const float scale_log2 = scale * kLog2e;

  LoadTile<T, D>(ks, p.k, k0, nk, hk);
  LoadTile<T, D>(vs, p.v, k0, nk, hk);
  if constexpr (!kAffine) LoadTokens(p.k_tok, k0, nk, LLONG_MAX, -2, kidx, kseg);
  __syncthreads();
  if constexpr (!kAffine)
    if (warp == 0) TileBounds(kidx, kseg, nk, &kb);

  float dk[kNT][4], dv[kNT][4];
#pragma unroll
  for (int n = 0; n < kNT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.f;

  const int nqt = int((p.sq + kBq - 1) / kBq);
  // Affine: global k index - global q index of the tiles' first rows; local query row `kq_base` is the
  // first that sees this tile's first key.
  const int64_t kq_base = p.k_tok.offset + k0 - p.q_tok.offset;
  int qt_begin = 0;
  if (kAffine && p.causal && kq_base > 0) qt_begin = int(min(int64_t(nqt), kq_base / kBq));
  const int per_head = nqt - qt_begin, count = group * per_head;

  // The kind of work item i (head gi, query tile qt); tokens into buffer b when not affine.
  auto prepare = [&](int i, int b) -> int {
    const int64_t q0 = int64_t(qt_begin + i % per_head) * kBq;
    const int nq = TileRows(p.sq, q0, kBq);
    if constexpr (kAffine) {
      const int64_t diff = q0 - kq_base;  // query row q sees key row c when c <= diff + q (causal)
      if (p.causal && diff + nq - 1 < 0) return kEmpty;
      return nq == kBq && nk == kBk && (!p.causal || diff >= kBk - 1) ? kWhole : kMasked;
    } else {
      LoadTokens(p.q_tok, q0, nq, LLONG_MIN, -1, qidx[b], qseg[b]);
      __syncthreads();
      if (warp == 0) {
        TileBounds(qidx[b], qseg[b], nq, &qb);
        if (lane == 0) kind_s[b] = Classify(p.causal, qb, kb, nq == kBq && nk == kBk);
      }
      __syncthreads();
      return kind_s[b];
    }
  };
  auto issue = [&](int i, int b) {
    const int h = hk * group + i / per_head;
    const int64_t q0 = int64_t(qt_begin + i % per_head) * kBq;
    const int nq = TileRows(p.sq, q0, kBq);
    LoadTileAsync<T, D>(qdo + 2 * b * kTile, p.q, q0, nq, h);
    LoadTileAsync<T, D>(qdo + (2 * b + 1) * kTile, p.dout, q0, nq, h);
    if (threadIdx.x < kBq) {
      const int r = threadIdx.x;
      const bool valid = r < nq;
      lse2[b][r] = valid ? p.lse[h * p.sq + q0 + r] * kLog2e : -INFINITY;
      delta[b][r] = valid ? p.delta[h * p.sq + q0 + r] : 0.f;
    }
  };

  RunPipeline(count, prepare, issue, [&](int i, int cur, int kind) {
    const int h = hk * group + i / per_head;
    const int64_t q0 = int64_t(qt_begin + i % per_head) * kBq;
    const int nq = TileRows(p.sq, q0, kBq);
    const T* qs = qdo + 2 * cur * kTile;
    const T* dos = qs + kTile;
    const float* l2 = lse2[cur];
    const float* dl = delta[cur];

    // P^T (keys x queries) = exp(c K Q^T - lse); masked entries and empty rows (lse = -inf) are 0.
    float pt[8][4], dpt[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) pt[n][e] = dpt[n][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kDT; ++kk) {
      uint32_t a[4], av[4];
      LoadA(a, ks, kPitch, warp * 16, kk * 16);
      LoadA(av, vs, kPitch, warp * 16, kk * 16);
#pragma unroll
      for (int n = 0; n < 8; n += 2) {
        uint32_t b[4], bo[4];
        LoadBT2(b, qs, kPitch, n * 8, kk * 16);
        Mma16816<T>(pt[n], a, b);
        Mma16816<T>(pt[n + 1], a, b + 2);
        LoadBT2(bo, dos, kPitch, n * 8, kk * 16);
        Mma16816<T>(dpt[n], av, bo);  // dP^T = V dO^T
        Mma16816<T>(dpt[n + 1], av, bo + 2);
      }
    }
    const int64_t diff = q0 - kq_base;
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int q = n * 8 + 2 * t + (e & 1);
        const int kr = e < 2 ? kr0 : kr1;
        bool ok = l2[q] != -INFINITY;
        if (kind == kMasked) {
          if constexpr (kAffine) {
            ok = ok && kr < nk && (!p.causal || kr <= diff + q);
          } else {
            ok = ok && qseg[cur][q] >= 0 && qseg[cur][q] == kseg[kr] && (!p.causal || kidx[kr] <= qidx[cur][q]);
          }
        }
        const float pv = ok ? exp2f(pt[n][e] * scale_log2 - l2[q]) : 0.f;
        pt[n][e] = pv;
        dpt[n][e] = pv * (dpt[n][e] - dl[q]);  // dS^T
      }
    // P^T and dS^T as bf16 A fragments from here on (half the registers of the fp32 accumulators).
    uint32_t pa[4][4], da[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      AccToA<T>(pa[kk], pt[2 * kk], pt[2 * kk + 1]);
      AccToA<T>(da[kk], dpt[2 * kk], dpt[2 * kk + 1]);
    }
    // dV += P^T dO;  dK += dS^T Q (scale applied at the end)
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
      for (int n = 0; n < kNT; n += 2) {
        uint32_t b[4], bq[4];
        LoadB2(b, dos, kPitch, kk * 16, n * 8);
        Mma16816<T>(dv[n], pa[kk], b);
        Mma16816<T>(dv[n + 1], pa[kk], b + 2);
        LoadB2(bq, qs, kPitch, kk * 16, n * 8);
        Mma16816<T>(dk[n], da[kk], bq);
        Mma16816<T>(dk[n + 1], da[kk], bq + 2);
      }
    }
    // Stage dS as [query][key] for dQ = dS K: register j of da[kk] holds keys kr0 (j even) or kr1 (j odd)
    // and queries 16 kk + 2t (+8 for j >= 2), the lower one in its low half.
    uint16_t* d16 = reinterpret_cast<uint16_t*>(dss);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int q = kk * 16 + 2 * t + (j >= 2 ? 8 : 0);
        const int kr = (j & 1) ? kr1 : kr0;
        d16[q * kDsPitch + kr] = uint16_t(da[kk][j] & 0xffff);
        d16[(q + 1) * kDsPitch + kr] = uint16_t(da[kk][j] >> 16);
      }
    __syncthreads();
    // dQ rows [16 warp, 16 warp + 16) of this query tile, four 8-column slices at a time.
    float* dqb = static_cast<float*>(p.dq.data);
    const int qr0 = warp * 16 + g, qr1 = qr0 + 8;
#pragma unroll
    for (int n0 = 0; n0 < kNT; n0 += 4) {
      float acc[4][4];
#pragma unroll
      for (int n = 0; n < 4; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        uint32_t a[4];
        LoadA(a, dss, kDsPitch, warp * 16, kk * 16);
#pragma unroll
        for (int n = 0; n < 4; n += 2) {
          uint32_t b[4];
          LoadB2(b, ks, kPitch, kk * 16, (n0 + n) * 8);
          Mma16816<T>(acc[n], a, b);
          Mma16816<T>(acc[n + 1], a, b + 2);
        }
      }
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        const int c = (n0 + n) * 8 + 2 * t;
        if (qr0 < nq) {
          float* dst = dqb + (q0 + qr0) * p.dq.stride_s + h * p.dq.stride_h + c;
          atomicAdd(dst, acc[n][0] * scale);
          atomicAdd(dst + 1, acc[n][1] * scale);
        }
        if (qr1 < nq) {
          float* dst = dqb + (q0 + qr1) * p.dq.stride_s + h * p.dq.stride_h + c;
          atomicAdd(dst, acc[n][2] * scale);
          atomicAdd(dst + 1, acc[n][3] * scale);
        }
      }
    }
  });
  // This block alone owns dK, dV of its key tile and kv head: plain read-modify-write.
  float* dkb = static_cast<float*>(p.dk.data);
  float* dvb = static_cast<float*>(p.dv.data);
#pragma unroll
  for (int n = 0; n < kNT; ++n) {
    const int c = n * 8 + 2 * t;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int kr = half ? kr1 : kr0;
      if (kr >= nk) continue;
      float* dkr = dkb + (k0 + kr) * p.dk.stride_s + hk * p.dk.stride_h + c;
      float* dvr = dvb + (k0 + kr) * p.dv.stride_s + hk * p.dv.stride_h + c;
      dkr[0] += dk[n][2 * half] * scale;
      dkr[1] += dk[n][2 * half + 1] * scale;
      dvr[0] += dv[n][2 * half];
      dvr[1] += dv[n][2 * half + 1];
    }
  }
}

// delta[h, i] = sum_d o[i, h, d] * dout[i, h, d]: one warp per (head, row).
template <class T>
__global__ void BackwardPrepKernel(AttentionParams p) {
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (row >= p.hq * p.sq) return;
  const int64_t h = row / p.sq, i = row % p.sq;
  const T* o = static_cast<const T*>(p.o.data) + i * p.o.stride_s + h * p.o.stride_h;
  const T* g = static_cast<const T*>(p.dout.data) + i * p.dout.stride_s + h * p.dout.stride_h;
  float acc = 0.f;
  for (int64_t x = lane; x < p.d; x += 32) acc += ToFloat(o[x]) * ToFloat(g[x]);
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffff, acc, off);
  if (lane == 0) p.delta[row] = acc;
}

template <class T>
__global__ void MergeKernel(int64_t sq, int64_t hq, int64_t d, View3 o_acc, float* lse_acc, View3 o_part,
                            const float* lse_part) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= hq * sq) return;
  const int64_t h = row / sq, i = row % sq;
  const float a = lse_acc[row], b = lse_part[row], mx = fmaxf(a, b);
  if (mx == -INFINITY) return;
  const float ea = expf(a - mx), eb = expf(b - mx), inv = 1.f / (ea + eb);
  T* oa = static_cast<T*>(o_acc.data) + i * o_acc.stride_s + h * o_acc.stride_h;
  const T* ob = static_cast<const T*>(o_part.data) + i * o_part.stride_s + h * o_part.stride_h;
  for (int64_t x = 0; x < d; ++x) oa[x] = FromFloat<T>((ToFloat(oa[x]) * ea + ToFloat(ob[x]) * eb) * inv);
  lse_acc[row] = mx + logf(ea + eb);
}

Status LastError(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return Status::Ok();
  return Status::Error(std::string(what) + ": " + cudaGetErrorString(e));
}

template <class Kernel>
Status Launch(Kernel kernel, dim3 grid, size_t smem, cudaStream_t stream, const AttentionParams& p, float arg,
              const char* what) {
  // The tiles exceed the 48 KB default of dynamic shared memory: raise the kernel's limit (cheap; done on
  // every launch because the instantiations for D = 64 and 128 share one function-pointer type).
  const cudaError_t attr = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (attr != cudaSuccess) return Status::Error(std::string(what) + ": " + cudaGetErrorString(attr));
  kernel<<<grid, kThreads, smem, stream>>>(p, arg);
  return LastError(what);
}

template <class T, int D>
Status ForwardD(const AttentionParams& p, dim3 grid, float scale_log2, cudaStream_t stream) {
  const size_t smem = size_t(5) * 64 * (D + 8) * sizeof(T);  // Q, and K, V in two stages
  const bool affine = !p.q_tok.index && !p.q_tok.segment && !p.k_tok.index && !p.k_tok.segment;
  return affine ? Launch(ForwardKernel<T, D, true>, grid, smem, stream, p, scale_log2, "attention forward")
                : Launch(ForwardKernel<T, D, false>, grid, smem, stream, p, scale_log2, "attention forward");
}

template <class T>
Status ForwardT(const AttentionParams& p) {
  const dim3 grid(unsigned((p.sq + kBq - 1) / kBq), unsigned(p.hq));
  const float scale_log2 = p.Scale() * kLog2e;
  auto stream = static_cast<cudaStream_t>(p.stream);
  return p.d == 64 ? ForwardD<T, 64>(p, grid, scale_log2, stream) : ForwardD<T, 128>(p, grid, scale_log2, stream);
}

template <class T, int D>
Status BackwardD(const AttentionParams& p, dim3 grid, cudaStream_t stream) {
  // K, V, Q and dO in two stages, dS
  const size_t smem = size_t(6) * 64 * (D + 8) * sizeof(T) + size_t(64) * (kBk + 8) * sizeof(T);
  const bool affine = !p.q_tok.index && !p.q_tok.segment && !p.k_tok.index && !p.k_tok.segment;
  return affine ? Launch(BackwardKernel<T, D, true>, grid, smem, stream, p, p.Scale(), "attention backward")
                : Launch(BackwardKernel<T, D, false>, grid, smem, stream, p, p.Scale(), "attention backward");
}

template <class T>
Status BackwardT(const AttentionParams& p) {
  const dim3 grid(unsigned((p.sk + kBk - 1) / kBk), unsigned(p.hkv));
  auto stream = static_cast<cudaStream_t>(p.stream);
  return p.d == 64 ? BackwardD<T, 64>(p, grid, stream) : BackwardD<T, 128>(p, grid, stream);
}

}  // namespace

bool DevicePresent() {
  static const bool present = [] {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  }();
  return present;
}

Status AttentionForward(const AttentionParams& p) {
  return p.dtype == DType::kBF16 ? ForwardT<__nv_bfloat16>(p) : ForwardT<__half>(p);
}

Status AttentionBackward(const AttentionParams& p) {
  return p.dtype == DType::kBF16 ? BackwardT<__nv_bfloat16>(p) : BackwardT<__half>(p);
}

Status AttentionBackwardPrep(const AttentionParams& p) {
  const int64_t threads = p.hq * p.sq * 32;
  const unsigned blocks = unsigned((threads + 255) / 256);
  auto stream = static_cast<cudaStream_t>(p.stream);
  if (p.dtype == DType::kBF16)
    BackwardPrepKernel<__nv_bfloat16><<<blocks, 256, 0, stream>>>(p);
  else
    BackwardPrepKernel<__half><<<blocks, 256, 0, stream>>>(p);
  return LastError("attention backward prep");
}

Status AttentionMerge(DType dtype, int64_t sq, int64_t hq, int64_t d, View3 o_acc, float* lse_acc, View3 o_part,
                      const float* lse_part, void* stream) {
  const unsigned blocks = unsigned((hq * sq + 255) / 256);
  auto s = static_cast<cudaStream_t>(stream);
  if (dtype == DType::kBF16)
    MergeKernel<__nv_bfloat16><<<blocks, 256, 0, s>>>(sq, hq, d, o_acc, lse_acc, o_part, lse_part);
  else
    MergeKernel<__half><<<blocks, 256, 0, s>>>(sq, hq, d, o_acc, lse_acc, o_part, lse_part);
  return LastError("attention merge");
}

}  // namespace rw::kernels::cuda
