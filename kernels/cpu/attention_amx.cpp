// bf16 attention on AMX tiles: the tiling, masks, precision and order of attention_cpu.cpp's bf16 path,
// with the block products done by amx::Gemm on operands packed once per call instead of a library GEMM per
// block.
//
// Precision is that of the bf16 path: Q, K, V, dO and the rounded P and dS are bf16 operands; S, the
// softmax statistics, P before rounding, dP, dS and every accumulator (O, dQ, dK, dV) are fp32.
//
// Forward: one task per (kv head, query block), as there; K is packed as the B operand of S = Q K^T (K^T in
// pairs of rows) and V as that of O += P V, once per call.
// Backward: one task per (kv head, key block), which owns dK, dV of its block. It works on the transposed
// scores, S^T = K Q^T (key rows, query columns), so that P^T and dS^T — the A operands of dV += P^T dO and
// dK += dS^T Q — come out row-major as AMX wants them; dQ += dS K needs dS itself, one transpose of the bf16
// tile. The dQ shares are added in key-block order (a turn counter per query block), so runs are bitwise
// reproducible, as in attention_cpu.cpp. Per (kv head, query block) the call packs Q and dO twice, once
// per role: as B = Q^T and B = dO^T (pairs along D), and as B = Q and B = dO (pairs of rows).
// Tiles are padded with zeros to 16 rows / 32 reduction elements (amx.h); the padding never reaches an
// output, and the padded P and dS entries are written as zeros, so no garbage (NaN) meets a zero weight.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "kernels/cpu/amx.h"
#include "kernels/cpu/attention_blocks.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/vec.h"

namespace rw::kernels::cpu {
namespace {

using amx::Up16;
using amx::Up32;

// The transposed mask of a block of S^T (key rows j < nk, query columns gi * nq + i). The query token arrays
// go in the thread's mask scratch, reserved by MaskScratch at the start of its parallel region: a thread
// whose first masked block comes in a later call then allocates nothing there.
std::vector<int64_t>& MaskQueryIndex(size_t n) { return Scratch<int64_t, struct MaskTQIndex>(n); }
std::vector<int32_t>& MaskQuerySegment(size_t n) { return Scratch<int32_t, struct MaskTQSegment>(n); }
void ApplyMaskTransposed(const AttentionParams& p, int64_t q0, int64_t nq, int64_t k0, int64_t nk, int64_t group,
                         float* st, int64_t ld) {
  std::vector<int64_t>& qidx = MaskQueryIndex(size_t(nq));
  std::vector<int32_t>& qseg = MaskQuerySegment(size_t(nq));
  for (int64_t i = 0; i < nq; ++i) {
    qidx[i] = p.q_tok.Index(q0 + i);
    qseg[i] = p.q_tok.Segment(q0 + i);
  }
  for (int64_t j = 0; j < nk; ++j) {
    const int64_t kj = p.k_tok.Index(k0 + j);
    const int32_t ks = p.k_tok.Segment(k0 + j);
    float* row = st + j * ld;
    for (int64_t gi = 0; gi < group; ++gi)
      for (int64_t i = 0; i < nq; ++i) {
        const bool ok = ks >= 0 && qseg[i] == ks && (!p.causal || kj <= qidx[i]);
        row[gi * nq + i] = ok ? row[gi * nq + i] : kNegInf;
      }
  }
}

// The query rows of kv head hk, block [q0, q0 + nq), as a contiguous (group nq) x d bf16 tile.
void GatherTile(const View3& src, int64_t q0, int64_t nq, int64_t hk, int64_t group, int64_t d, bf16* dst) {
  GatherRows<bf16>(src, q0, nq, hk * group, group, d, 1.f, dst);
}

}  // namespace

Status AttentionForwardAmx(const AttentionParams& p) {
  const int64_t bq = p.block_q > 0 ? p.block_q : 128, bk = p.block_k > 0 ? p.block_k : 256;
  const int64_t group = p.hq / p.hkv, d = p.d, dp = Up32(d), dn = Up16(d);
  const int64_t nqb = (p.sq + bq - 1) / bq, nkb = (p.sk + bk - 1) / bk;
  const int64_t bk16 = Up16(bk), bk32 = Up32(bk), r16 = Up16(group * bq);
  const auto& qbounds = Bounds(p.q_tok, p.sq, bq, Scratch<BlockBounds, struct AmxFwdQBounds>(0));
  const auto& kbounds = Bounds(p.k_tok, p.sk, bk, Scratch<BlockBounds, struct AmxFwdKBounds>(0));
  const float c = p.Scale();
  // K as the B operand of S = Q K^T and V as that of O += P V, per (kv head, key block).
  const int64_t kblock = dp * bk16, vblock = bk32 * dn;
  std::vector<bf16>& kpack = Scratch<bf16, struct AmxFwdK>(size_t(p.hkv * nkb * kblock));
  std::vector<bf16>& vpack = Scratch<bf16, struct AmxFwdV>(size_t(p.hkv * nkb * vblock));
  const int threads = Threads(p);
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < p.hkv * nkb; ++t) {
      const int64_t hk = t / nkb, k0 = (t % nkb) * bk, nk = std::min(bk, p.sk - k0);
      amx::PackTransposed(p.k.at<bf16>(k0, hk), nk, d, p.k.stride_s, bk16, dp, kpack.data() + t * kblock);
      amx::PackRows(p.v.at<bf16>(k0, hk), nk, d, p.v.stride_s, bk32, dn, vpack.data() + t * vblock);
    }
    ReserveMaskScratch(bk);
    std::vector<bf16>& qt = Scratch<bf16, struct AmxFwdQ>(size_t(r16 * dp));
    std::vector<bf16>& pt = Scratch<bf16, struct AmxFwdP>(size_t(r16 * bk32));
    std::vector<float>& s = Scratch<float, struct AmxFwdS>(size_t(r16 * bk16));
    std::vector<float>& acc = Scratch<float, struct AmxFwdAcc>(size_t(r16 * dn));
    std::vector<float>& m = Scratch<float, struct AmxFwdMax>(size_t(r16));
    std::vector<float>& l = Scratch<float, struct AmxFwdSum>(size_t(r16));
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < p.hkv * nqb; ++task) {
      // Last query blocks first: under a causal mask they see the most keys.
      const int64_t hk = task / nqb, qb = nqb - 1 - task % nqb;
      const int64_t q0 = qb * bq, nq = std::min(bq, p.sq - q0), rows = group * nq, rows16 = Up16(rows);
      // Q tile, zero beyond d and below the last row.
      std::fill(qt.begin(), qt.begin() + rows16 * dp, bf16{});
      for (int64_t gi = 0; gi < group; ++gi)
        for (int64_t i = 0; i < nq; ++i) std::copy_n(p.q.at<bf16>(q0 + i, hk * group + gi), d, &qt[(gi * nq + i) * dp]);
      std::fill(acc.begin(), acc.begin() + rows16 * dn, 0.f);
      std::fill(m.begin(), m.begin() + rows, kNegInf);
      std::fill(l.begin(), l.begin() + rows, 0.f);
      std::fill(pt.begin() + rows * bk32, pt.begin() + rows16 * bk32, bf16{});  // padding rows of P
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const BlockKind kind = Classify(p, qbounds[qb], kbounds[kb]);
        if (kind == BlockKind::kEmpty) continue;
        const int64_t k0 = kb * bk, nk = std::min(bk, p.sk - k0), nk16 = Up16(nk), nk32 = Up32(nk);
        const int64_t blk = hk * nkb + kb;
        amx::Gemm(rows16, nk16, dp, qt.data(), dp, kpack.data() + blk * kblock, 2 * bk16, s.data(), bk16, false);
        if (kind == BlockKind::kMasked) ApplyMask(p, q0, nq, k0, nk, group, s.data(), bk16);
        for (int64_t r = 0; r < rows; ++r) {
          float* row = s.data() + r * bk16;
          const float m_new = std::max(m[r], c * amx::RowMax(row, nk));
          if (m_new == kNegInf) {  // nothing visible yet: P row is zero
            std::fill(pt.begin() + r * bk32, pt.begin() + r * bk32 + nk32, bf16{});
            continue;
          }
          const float sum = amx::ExpRow(row, nk, c, m_new, pt.data() + r * bk32, nk32);
          const float alpha = FastExp(m[r] - m_new);
          l[r] = l[r] * alpha + sum;
          m[r] = m_new;
          if (alpha != 1.f) {
            float* o = acc.data() + r * dn;
#pragma omp simd
            for (int64_t x = 0; x < d; ++x) o[x] *= alpha;
          }
        }
        amx::Gemm(rows16, dn, nk32, pt.data(), bk32, vpack.data() + blk * vblock, 2 * dn, acc.data(), dn, true);
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
          const float* a = acc.data() + r * dn;
          for (int64_t x = 0; x < d; ++x) out[x] = a[x] * inv;
          p.lse[h * p.sq + q0 + i] = m[r] + std::log(l[r]);
        }
      }
    }
  }
  return Status::Ok();
}

Status AttentionBackwardAmx(const AttentionParams& p) {
  const int64_t bq = p.block_q > 0 ? p.block_q : 128, bk = p.block_k > 0 ? p.block_k : 128;
  const int64_t group = p.hq / p.hkv, d = p.d, dp = Up32(d), dn = Up16(d);
  const int64_t nqb = (p.sq + bq - 1) / bq, nkb = (p.sk + bk - 1) / bk;
  const int64_t bk16 = Up16(bk), bk32 = Up32(bk), r16 = Up16(group * bq), r32 = Up32(group * bq);
  const auto& qbounds = Bounds(p.q_tok, p.sq, bq, Scratch<BlockBounds, struct AmxBwdQBounds>(0));
  const auto& kbounds = Bounds(p.k_tok, p.sk, bk, Scratch<BlockBounds, struct AmxBwdKBounds>(0));
  const float c = p.Scale();
  // Per (kv head, key block): K and V row-padded (A operands of S^T = K Q^T and dP^T = V dO^T) and K in pairs
  // of rows (B of dQ += dS K). Per (kv head, query block): Q and dO as B = Q^T, dO^T (pairs along D) and as
  // B = Q, dO (pairs of rows).
  const int64_t arow = bk16 * dp, krows = bk32 * dn, qd = dp * r16, qr = r32 * dn;
  std::vector<bf16>& ka = Scratch<bf16, struct AmxBwdKa>(size_t(p.hkv * nkb * arow));
  std::vector<bf16>& va = Scratch<bf16, struct AmxBwdVa>(size_t(p.hkv * nkb * arow));
  std::vector<bf16>& kr = Scratch<bf16, struct AmxBwdKr>(size_t(p.hkv * nkb * krows));
  std::vector<bf16>& qdp = Scratch<bf16, struct AmxBwdQd>(size_t(p.hkv * nqb * qd));
  std::vector<bf16>& qrp = Scratch<bf16, struct AmxBwdQr>(size_t(p.hkv * nqb * qr));
  std::vector<bf16>& gdp = Scratch<bf16, struct AmxBwdGd>(size_t(p.hkv * nqb * qd));
  std::vector<bf16>& grp = Scratch<bf16, struct AmxBwdGr>(size_t(p.hkv * nqb * qr));
  // dQ of query block qb receives the shares of its non-empty key blocks in increasing key-block order
  // (attention_cpu.cpp's Backward explains the turns).
  std::vector<int>& turn_of = Scratch<int, struct AmxBwdTurnOf>(0);
  turn_of.assign(size_t(nqb * nkb), -1);
  for (int64_t qb = 0; qb < nqb; ++qb) {
    int next = 0;
    for (int64_t kb = 0; kb < nkb; ++kb)
      if (Classify(p, qbounds[qb], kbounds[kb]) != BlockKind::kEmpty) turn_of[qb * nkb + kb] = next++;
  }
  thread_local std::unique_ptr<std::atomic<int>[]> turns_store;
  thread_local int64_t turns_size = 0;
  if (turns_size < p.hkv * nqb) {
    turns_store.reset(new std::atomic<int>[size_t(p.hkv * nqb)]);
    turns_size = p.hkv * nqb;
  }
  std::atomic<int>* const turns = turns_store.get();
  for (int64_t i = 0; i < p.hkv * nqb; ++i) turns[i].store(0);
  const int threads = Threads(p);

#pragma omp parallel num_threads(threads)
  {
    std::vector<bf16>& tile = Scratch<bf16, struct AmxBwdTile>(size_t(r16 * d));
#pragma omp for schedule(static) nowait
    for (int64_t t = 0; t < p.hkv * nkb; ++t) {
      const int64_t hk = t / nkb, k0 = (t % nkb) * bk, nk = std::min(bk, p.sk - k0);
      bf16* kat = ka.data() + t * arow;
      bf16* vat = va.data() + t * arow;
      std::fill(kat, kat + arow, bf16{});
      std::fill(vat, vat + arow, bf16{});
      for (int64_t j = 0; j < nk; ++j) {
        std::copy_n(p.k.at<bf16>(k0 + j, hk), d, kat + j * dp);
        std::copy_n(p.v.at<bf16>(k0 + j, hk), d, vat + j * dp);
      }
      amx::PackRows(p.k.at<bf16>(k0, hk), nk, d, p.k.stride_s, bk32, dn, kr.data() + t * krows);
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < p.hkv * nqb; ++t) {
      const int64_t hk = t / nqb, q0 = (t % nqb) * bq, nq = std::min(bq, p.sq - q0), rows = group * nq;
      GatherTile(p.q, q0, nq, hk, group, d, tile.data());
      amx::PackTransposed(tile.data(), rows, d, d, r16, dp, qdp.data() + t * qd);
      amx::PackRows(tile.data(), rows, d, d, r32, dn, qrp.data() + t * qr);
      GatherTile(p.dout, q0, nq, hk, group, d, tile.data());
      amx::PackTransposed(tile.data(), rows, d, d, r16, dp, gdp.data() + t * qd);
      amx::PackRows(tile.data(), rows, d, d, r32, dn, grp.data() + t * qr);
    }
    // Each thread's tiles; every one is written before it is read.
    MaskQueryIndex(size_t(bq));
    MaskQuerySegment(size_t(bq));
    std::vector<float>& st = Scratch<float, struct AmxBwdSt>(size_t(bk16 * r16));   // S^T, then P^T (fp32)
    std::vector<float>& dpt = Scratch<float, struct AmxBwdDpt>(size_t(bk16 * r16)); // dP^T
    std::vector<bf16>& pt = Scratch<bf16, struct AmxBwdPt>(size_t(bk16 * r32));     // P^T rounded
    std::vector<bf16>& dst = Scratch<bf16, struct AmxBwdDst>(size_t(bk32 * r32));   // dS^T rounded
    std::vector<bf16>& ds = Scratch<bf16, struct AmxBwdDs>(size_t(r16 * bk32));     // dS rounded
    std::vector<float>& dqp = Scratch<float, struct AmxBwdDq>(size_t(r16 * dn));
    std::vector<float>& dk_acc = Scratch<float, struct AmxBwdDk>(size_t(bk16 * dn));
    std::vector<float>& dv_acc = Scratch<float, struct AmxBwdDv>(size_t(bk16 * dn));
    std::vector<float>& lse = Scratch<float, struct AmxBwdLse>(size_t(r16));
    std::vector<float>& delta = Scratch<float, struct AmxBwdDelta>(size_t(r16));
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < p.hkv * nkb; ++task) {
      const int64_t hk = task / nkb, kb = task % nkb;
      const int64_t k0 = kb * bk, nk = std::min(bk, p.sk - k0), nk16 = Up16(nk), nk32 = Up32(nk);
      const int64_t blk = hk * nkb + kb;
      std::fill(dk_acc.begin(), dk_acc.end(), 0.f);
      std::fill(dv_acc.begin(), dv_acc.end(), 0.f);
      bool touched = false;
      for (int64_t qb = 0; qb < nqb; ++qb) {
        const BlockKind kind = Classify(p, qbounds[qb], kbounds[kb]);
        if (kind == BlockKind::kEmpty) continue;
        touched = true;
        const int64_t q0 = qb * bq, nq = std::min(bq, p.sq - q0), rows = group * nq;
        const int64_t rows16 = Up16(rows), rows32 = Up32(rows), qblk = hk * nqb + qb;
        for (int64_t gi = 0; gi < group; ++gi)
          for (int64_t i = 0; i < nq; ++i) {
            lse[gi * nq + i] = p.lse[(hk * group + gi) * p.sq + q0 + i];
            delta[gi * nq + i] = p.delta[(hk * group + gi) * p.sq + q0 + i];
          }
        // S^T = K Q^T; P^T = exp(c S^T - lse) with masked entries, padding and empty rows (lse = -inf) 0.
        amx::Gemm(nk16, rows16, dp, ka.data() + blk * arow, dp, qdp.data() + qblk * qd, 2 * r16, st.data(), r16,
                  false);
        if (kind == BlockKind::kMasked) ApplyMaskTransposed(p, q0, nq, k0, nk, group, st.data(), r16);
        for (int64_t j = 0; j < nk; ++j) {
          float* row = st.data() + j * r16;
          amx::ExpRowColumns(row, rows, c, lse.data(), pt.data() + j * r32, rows32);
        }
        for (int64_t j = nk; j < nk16; ++j) std::fill_n(pt.data() + j * r32, rows32, bf16{});
        // dV += P^T dO;  dP^T = V dO^T
        amx::Gemm(nk16, dn, rows32, pt.data(), r32, grp.data() + qblk * qr, 2 * dn, dv_acc.data(), dn, true);
        amx::Gemm(nk16, rows16, dp, va.data() + blk * arow, dp, gdp.data() + qblk * qd, 2 * r16, dpt.data(), r16,
                  false);
        // dS^T = P^T (dP^T - delta), rounded; dS, its transpose, for dQ.
        for (int64_t j = 0; j < nk; ++j) {
          const float* dr = dpt.data() + j * r16;
          const float* pr = st.data() + j * r16;
          amx::DsRow(dr, pr, delta.data(), rows, dst.data() + j * r32, rows32);
        }
        for (int64_t j = nk; j < nk32; ++j) std::fill_n(dst.data() + j * r32, rows32, bf16{});
        amx::TransposeBf16(dst.data(), r32, nk32, rows16, ds.data(), bk32);
        // dK += dS^T Q (times c at the end);  dQ += c dS K, added in key-block order.
        amx::Gemm(nk16, dn, rows32, dst.data(), r32, qrp.data() + qblk * qr, 2 * dn, dk_acc.data(), dn, true);
        amx::Gemm(rows16, dn, nk32, ds.data(), bk32, kr.data() + blk * krows, 2 * dn, dqp.data(), dn, false);
        std::atomic<int>& turn = turns[qblk];
        while (turn.load(std::memory_order_acquire) != turn_of[qb * nkb + kb]) std::this_thread::yield();
        for (int64_t gi = 0; gi < group; ++gi)
          for (int64_t i = 0; i < nq; ++i) {
            float* out = p.dq.at<float>(q0 + i, hk * group + gi);
            const float* src = dqp.data() + (gi * nq + i) * dn;
#pragma omp simd
            for (int64_t x = 0; x < d; ++x) out[x] += c * src[x];
          }
        turn.fetch_add(1, std::memory_order_release);
      }
      if (!touched) continue;
      for (int64_t j = 0; j < nk; ++j) {
        float* dkr = p.dk.at<float>(k0 + j, hk);
        float* dvr = p.dv.at<float>(k0 + j, hk);
        for (int64_t x = 0; x < d; ++x) {
          dkr[x] += c * dk_acc[j * dn + x];
          dvr[x] += dv_acc[j * dn + x];
        }
      }
    }
  }
  return Status::Ok();
}

}  // namespace rw::kernels::cpu
