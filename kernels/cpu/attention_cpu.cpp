// Fast CPU attention: FlashAttention-2 style tiling over OpenBLAS block products.
//
// Forward: one task per (kv head, query block). The g = Hq/Hkv query heads that share a kv head are
// stacked into one tile of g*Bq rows so each block product is (g*Bq x D) * (D x Bk): larger GEMMs, and
// each K/V block is read once for the whole group. Per key block:
//   S = c Q K^T;  m_new = max(m, rowmax(S));  P = exp(S - m_new)
//   l = l e^(m - m_new) + rowsum(P);  O = O e^(m - m_new) + P V
// and at the end O /= l, lse = m + log(l).
// Backward: one task per (kv head, key block); the task owns dK, dV of its block (no races) and adds its
// dQ share to each query block in key-block order (a turn counter per query block), so the floating-point
// sum is the same whatever the thread timing: runs are bitwise reproducible. The add is O(Bq D) against
// O(Bq Bk D) of GEMMs, and tasks start in key-block order, so the turns rarely wait.
// Blocks that the causal or segment mask empties are skipped; blocks it leaves whole skip the per-element
// mask.
//
// bf16 (q, k, v, dout in bf16): the same tiling with bf16 block products accumulating in fp32, as
// FlashAttention does on GPUs. S, the softmax statistics (m, l, lse), P before rounding, dP, dS and every
// accumulator (O, dQ, dK, dV) are fp32; P and dS are rounded to bf16 only as operands of the next product.
// The scale c is applied to S in fp32 (not folded into a bf16 Q, which would round Q twice).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#include "kernels/cpu/amx.h"
#include "kernels/cpu/attention_blocks.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/scratch.h"
#include "kernels/cpu/vec.h"

namespace rw::kernels::cpu {
namespace {

template <class T>
constexpr DType kDType = std::is_same_v<T, float> ? DType::kF32 : DType::kBF16;

// P (rows x nk, fp32) as the operand of the next product: itself in fp32, rounded in bf16.
template <class T>
const T* Operand(const float* x, int64_t n, std::vector<T>& tmp) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    for (int64_t i = 0; i < n; ++i) tmp[i] = ToBf16(x[i]);
    return tmp.data();
  }
}

template <class T>
Status Forward(const AttentionParams& p) {
  constexpr DType dt = kDType<T>;
  const int64_t bq = p.block_q > 0 ? p.block_q : 128, bk = p.block_k > 0 ? p.block_k : 256;
  const int64_t group = p.hq / p.hkv, d = p.d;
  const int64_t nqb = (p.sq + bq - 1) / bq, nkb = (p.sk + bk - 1) / bk;
  const auto& qbounds = Bounds(p.q_tok, p.sq, bq, Scratch<BlockBounds, struct FwdQBounds>(0));
  const auto& kbounds = Bounds(p.k_tok, p.sk, bk, Scratch<BlockBounds, struct FwdKBounds>(0));
  const float c = p.Scale();
  SetBlasThreads(1);

#pragma omp parallel num_threads(Threads(p))
  {
    // Each thread's tiles, kept from call to call (kernels/cpu/scratch.h); every one is written before read.
    std::vector<T>& qt = Scratch<T, struct FwdQ>(size_t(group * bq * d));
    std::vector<T>& pt = Scratch<T, struct FwdP>(std::is_same_v<T, float> ? 0 : size_t(group * bq * bk));
    ReserveMaskScratch(bk);
    std::vector<float>& s = Scratch<float, struct FwdS>(size_t(group * bq * bk));
    std::vector<float>& acc = Scratch<float, struct FwdAcc>(size_t(group * bq * d));
    std::vector<float>& m = Scratch<float, struct FwdMax>(size_t(group * bq));
    std::vector<float>& l = Scratch<float, struct FwdSum>(size_t(group * bq));
    // fp32 folds c into the Q tile (the order these kernels always had); bf16 scales S in fp32.
    const float q_mul = dt == DType::kF32 ? c : 1.f, s_mul = dt == DType::kF32 ? 1.f : c;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < p.hkv * nqb; ++task) {
      // Last query blocks first: under a causal mask they see the most keys, and handing out the big
      // tasks first keeps the threads' tails short.
      const int64_t hk = task / nqb, qb = nqb - 1 - task % nqb;
      const int64_t q0 = qb * bq, nq = std::min(bq, p.sq - q0), rows = group * nq;
      GatherRows<T>(p.q, q0, nq, hk * group, group, d, q_mul, qt.data());
      std::fill(acc.begin(), acc.begin() + rows * d, 0.f);
      std::fill(m.begin(), m.begin() + rows, kNegInf);
      std::fill(l.begin(), l.begin() + rows, 0.f);
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const BlockKind kind = Classify(p, qbounds[qb], kbounds[kb]);
        if (kind == BlockKind::kEmpty) continue;
        const int64_t k0 = kb * bk, nk = std::min(bk, p.sk - k0);
        Gemm(dt, false, true, rows, nk, d, s_mul, qt.data(), d, p.k.at<T>(k0, hk), p.k.stride_s, 0.f, s.data(),
             nk);
        if (kind == BlockKind::kMasked) ApplyMask(p, q0, nq, k0, nk, group, s.data(), nk);
        for (int64_t r = 0; r < rows; ++r) {
          float* row = s.data() + r * nk;
          float mx = kNegInf;
          // (a > m ? a : m, not std::max: GCC vectorizes this form; the maximum is exact either way)
#pragma omp simd reduction(max : mx)
          for (int64_t j = 0; j < nk; ++j) mx = row[j] > mx ? row[j] : mx;
          const float m_new = std::max(m[r], mx);
          if (m_new == kNegInf) {  // nothing visible yet: P row is zero
            std::fill(row, row + nk, 0.f);
            continue;
          }
          float sum = 0.f;
#pragma omp simd reduction(+ : sum)
          for (int64_t j = 0; j < nk; ++j) {
            row[j] = FastExp(row[j] - m_new);
            sum += row[j];
          }
          const float alpha = FastExp(m[r] - m_new);
          l[r] = l[r] * alpha + sum;
          m[r] = m_new;
          if (alpha != 1.f) {
            float* o = acc.data() + r * d;
            for (int64_t x = 0; x < d; ++x) o[x] *= alpha;
          }
        }
        Gemm(dt, false, false, rows, d, nk, 1.f, Operand<T>(s.data(), rows * nk, pt), nk, p.v.at<T>(k0, hk),
             p.v.stride_s, 1.f, acc.data(), d);
      }
      for (int64_t gi = 0; gi < group; ++gi) {
        const int64_t h = hk * group + gi;
        for (int64_t i = 0; i < nq; ++i) {
          const int64_t r = gi * nq + i;
          float* out = p.o.at<float>(q0 + i, h);
          if (l[r] == 0.f) {
            std::fill(out, out + d, 0.f);
            p.lse[h * p.sq + q0 + i] = kNegInf;
            continue;
          }
          const float inv = 1.f / l[r];
          const float* a = acc.data() + r * d;
          for (int64_t x = 0; x < d; ++x) out[x] = a[x] * inv;
          p.lse[h * p.sq + q0 + i] = m[r] + std::log(l[r]);
        }
      }
    }
  }
  return Status::Ok();
}

template <class T>
Status BackwardPrep(const AttentionParams& p) {
#pragma omp parallel for num_threads(Threads(p)) schedule(static)
  for (int64_t hi = 0; hi < p.hq * p.sq; ++hi) {
    const int64_t h = hi / p.sq, i = hi % p.sq;
    const float* o = p.o.at<float>(i, h);
    const T* g = p.dout.at<T>(i, h);
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t x = 0; x < p.d; ++x) {
      if constexpr (std::is_same_v<T, float>)
        acc += o[x] * g[x];
      else
        acc += o[x] * ToFloat(g[x]);
    }
    p.delta[hi] = acc;
  }
  return Status::Ok();
}

template <class T>
Status Backward(const AttentionParams& p) {
  constexpr DType dt = kDType<T>;
  const int64_t bq = p.block_q > 0 ? p.block_q : 128, bk = p.block_k > 0 ? p.block_k : 128;
  const int64_t group = p.hq / p.hkv, d = p.d;
  const int64_t nqb = (p.sq + bq - 1) / bq, nkb = (p.sk + bk - 1) / bk;
  const auto& qbounds = Bounds(p.q_tok, p.sq, bq, Scratch<BlockBounds, struct BwdQBounds>(0));
  const auto& kbounds = Bounds(p.k_tok, p.sk, bk, Scratch<BlockBounds, struct BwdKBounds>(0));
  const float c = p.Scale();
  // dQ of query block qb receives the shares of its non-empty key blocks in increasing key-block order:
  // turn_of[qb * nkb + kb] is key block kb's place in that order, turns[hk * nqb + qb] the place whose add
  // is next. Tasks are handed out in increasing kb, so a waiting task only ever waits on a running one.
  std::vector<int>& turn_of = Scratch<int, struct BwdTurnOf>(0);
  turn_of.assign(size_t(nqb * nkb), -1);
  for (int64_t qb = 0; qb < nqb; ++qb) {
    int next = 0;
    for (int64_t kb = 0; kb < nkb; ++kb)
      if (Classify(p, qbounds[qb], kbounds[kb]) != BlockKind::kEmpty) turn_of[qb * nkb + kb] = next++;
  }
  // The turn counters, kept from call to call like the scratch buffers (atomics cannot live in a vector).
  // A plain pointer for the parallel region: named there, a thread_local would be each thread's own.
  thread_local std::unique_ptr<std::atomic<int>[]> turns_store;
  thread_local int64_t turns_size = 0;
  if (turns_size < p.hkv * nqb) {
    turns_store.reset(new std::atomic<int>[size_t(p.hkv * nqb)]);
    turns_size = p.hkv * nqb;
  }
  std::atomic<int>* const turns = turns_store.get();
  for (int64_t i = 0; i < p.hkv * nqb; ++i) turns[i].store(0);
  SetBlasThreads(1);

#pragma omp parallel num_threads(Threads(p))
  {
    const size_t rmax = size_t(group * bq);
    const size_t pn = std::is_same_v<T, float> ? 0 : rmax * size_t(bk);
    // Each thread's tiles, kept from call to call (kernels/cpu/scratch.h); every one is written before read.
    std::vector<T>& qt = Scratch<T, struct BwdQ>(rmax * d);
    std::vector<T>& gt = Scratch<T, struct BwdDout>(rmax * d);
    std::vector<T>& pt = Scratch<T, struct BwdP>(pn);
    std::vector<T>& dst = Scratch<T, struct BwdDs>(pn);
    ReserveMaskScratch(bk);
    std::vector<float>& s = Scratch<float, struct BwdS>(rmax * bk);
    std::vector<float>& dp = Scratch<float, struct BwdDp>(rmax * bk);
    std::vector<float>& dqp = Scratch<float, struct BwdDqPart>(rmax * d);
    std::vector<float>& dk_acc = Scratch<float, struct BwdDk>(size_t(bk * d));
    std::vector<float>& dv_acc = Scratch<float, struct BwdDv>(size_t(bk * d));
    std::vector<float>& lse = Scratch<float, struct BwdLse>(rmax);
    std::vector<float>& delta = Scratch<float, struct BwdDelta>(rmax);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < p.hkv * nkb; ++task) {
      const int64_t hk = task / nkb, kb = task % nkb;
      const int64_t k0 = kb * bk, nk = std::min(bk, p.sk - k0);
      const T* kblk = p.k.at<T>(k0, hk);
      const T* vblk = p.v.at<T>(k0, hk);
      std::fill(dk_acc.begin(), dk_acc.end(), 0.f);
      std::fill(dv_acc.begin(), dv_acc.end(), 0.f);
      bool touched = false;
      for (int64_t qb = 0; qb < nqb; ++qb) {
        const BlockKind kind = Classify(p, qbounds[qb], kbounds[kb]);
        if (kind == BlockKind::kEmpty) continue;
        touched = true;
        const int64_t q0 = qb * bq, nq = std::min(bq, p.sq - q0), rows = group * nq;
        GatherRows<T>(p.q, q0, nq, hk * group, group, d, 1.f, qt.data());
        GatherRows<T>(p.dout, q0, nq, hk * group, group, d, 1.f, gt.data());
        for (int64_t gi = 0; gi < group; ++gi)
          for (int64_t i = 0; i < nq; ++i) {
            lse[gi * nq + i] = p.lse[(hk * group + gi) * p.sq + q0 + i];
            delta[gi * nq + i] = p.delta[(hk * group + gi) * p.sq + q0 + i];
          }
        // P = exp(c Q K^T - lse), masked entries and empty rows (lse = -inf) are 0.
        Gemm(dt, false, true, rows, nk, d, c, qt.data(), d, kblk, p.k.stride_s, 0.f, s.data(), nk);
        if (kind == BlockKind::kMasked) ApplyMask(p, q0, nq, k0, nk, group, s.data(), nk);
        for (int64_t r = 0; r < rows; ++r) {
          float* row = s.data() + r * nk;
          const float lr = lse[r];
          if (lr == kNegInf) {
            std::fill(row, row + nk, 0.f);
            continue;
          }
#pragma omp simd
          for (int64_t j = 0; j < nk; ++j) row[j] = FastExp(row[j] - lr);
        }
        // dV += P^T dO;  dP = dO V^T;  dS = P (dP - delta)
        Gemm(dt, true, false, nk, d, rows, 1.f, Operand<T>(s.data(), rows * nk, pt), nk, gt.data(), d, 1.f,
             dv_acc.data(), d);
        Gemm(dt, false, true, rows, nk, d, 1.f, gt.data(), d, vblk, p.v.stride_s, 0.f, dp.data(), nk);
        for (int64_t r = 0; r < rows; ++r) {
          float* dpr = dp.data() + r * nk;
          const float* pr = s.data() + r * nk;
          const float dr = delta[r];
#pragma omp simd
          for (int64_t j = 0; j < nk; ++j) dpr[j] = pr[j] * (dpr[j] - dr);
        }
        // dK += c dS^T Q;  dQ += c dS K (added under the query block's lock)
        const T* ds = Operand<T>(dp.data(), rows * nk, dst);
        Gemm(dt, true, false, nk, d, rows, c, ds, nk, qt.data(), d, 1.f, dk_acc.data(), d);
        Gemm(dt, false, false, rows, d, nk, c, ds, nk, kblk, p.k.stride_s, 0.f, dqp.data(), d);
        std::atomic<int>& turn = turns[hk * nqb + qb];
        while (turn.load(std::memory_order_acquire) != turn_of[qb * nkb + kb]) std::this_thread::yield();
        for (int64_t gi = 0; gi < group; ++gi)
          for (int64_t i = 0; i < nq; ++i) {
            float* dst = p.dq.at<float>(q0 + i, hk * group + gi);
            const float* src = dqp.data() + (gi * nq + i) * d;
            for (int64_t x = 0; x < d; ++x) dst[x] += src[x];
          }
        turn.fetch_add(1, std::memory_order_release);
      }
      if (!touched) continue;
      for (int64_t j = 0; j < nk; ++j) {
        float* dkr = p.dk.at<float>(k0 + j, hk);
        float* dvr = p.dv.at<float>(k0 + j, hk);
        for (int64_t x = 0; x < d; ++x) {
          dkr[x] += dk_acc[j * d + x];
          dvr[x] += dv_acc[j * d + x];
        }
      }
    }
  }
  return Status::Ok();
}

}  // namespace

std::string Bf16AttentionPath() {
  if (amx::Available()) return std::string("AMX tile products (") + amx::Describe() + ")";
  return std::string("block products by the bf16 GEMM (no AMX: ") + amx::Describe() + ")";
}

Status AttentionForward(const AttentionParams& p) {
  if (p.dtype == DType::kBF16) return amx::Available() ? AttentionForwardAmx(p) : Forward<bf16>(p);
  return Forward<float>(p);
}
Status AttentionBackwardPrep(const AttentionParams& p) {
  return p.dtype == DType::kBF16 ? BackwardPrep<bf16>(p) : BackwardPrep<float>(p);
}
Status AttentionBackward(const AttentionParams& p) {
  if (p.dtype == DType::kBF16) return amx::Available() ? AttentionBackwardAmx(p) : Backward<bf16>(p);
  return Backward<float>(p);
}

Status AttentionMerge(DType, int64_t sq, int64_t hq, int64_t d, View3 o_acc, float* lse_acc, View3 o_part,
                      const float* lse_part, void*) {
#pragma omp parallel for schedule(static)
  for (int64_t hi = 0; hi < hq * sq; ++hi) {
    const int64_t h = hi / sq, i = hi % sq;
    const float a = lse_acc[hi], b = lse_part[hi];
    const float mx = std::max(a, b);
    if (mx == kNegInf) continue;
    const float ea = std::exp(a - mx), eb = std::exp(b - mx);
    const float inv = 1.f / (ea + eb);
    float* oa = o_acc.at<float>(i, h);
    const float* ob = o_part.at<float>(i, h);
    for (int64_t x = 0; x < d; ++x) oa[x] = (oa[x] * ea + ob[x] * eb) * inv;
    lse_acc[hi] = mx + std::log(ea + eb);
  }
  return Status::Ok();
}

}  // namespace rw::kernels::cpu
