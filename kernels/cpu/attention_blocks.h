// The block bookkeeping both CPU attention kernels share (attention_cpu.cpp: fp32 and bf16 over GEMM
// calls; attention_amx.cpp: bf16 on AMX tiles): which (query block, key block) pairs the masks leave
// empty, whole or partly masked, the masks themselves, and the gather of a kv head's query rows.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/attention.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/scratch.h"

namespace rw::kernels::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Bounds of the global index and segment id over a block of rows: decides skip / whole / mask.
struct BlockBounds {
  int64_t idx_min, idx_max;
  int32_t seg_min, seg_max;
};

// Into `out` (a scratch buffer: cleared, its capacity kept).
const std::vector<BlockBounds>& Bounds(const TokenInfo& t, int64_t n, int64_t block, std::vector<BlockBounds>& out) {
  out.clear();
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    BlockBounds bb{std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min(),
                   std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min()};
    for (int64_t s = b0; s < std::min(n, b0 + block); ++s) {
      bb.idx_min = std::min(bb.idx_min, t.Index(s));
      bb.idx_max = std::max(bb.idx_max, t.Index(s));
      bb.seg_min = std::min(bb.seg_min, t.Segment(s));
      bb.seg_max = std::max(bb.seg_max, t.Segment(s));
    }
    out.push_back(bb);
  }
  return out;
}

enum class BlockKind { kEmpty, kWhole, kMasked };

BlockKind Classify(const AttentionParams& p, const BlockBounds& q, const BlockBounds& k) {
  if (p.causal && q.idx_max < k.idx_min) return BlockKind::kEmpty;
  if (q.seg_max < 0 || k.seg_max < 0) return BlockKind::kEmpty;  // all padding
  if (q.seg_max < k.seg_min || k.seg_max < q.seg_min) return BlockKind::kEmpty;
  const bool one_segment =
      q.seg_min == q.seg_max && k.seg_min == k.seg_max && q.seg_min == k.seg_min && q.seg_min >= 0;
  if (one_segment && (!p.causal || q.idx_min >= k.idx_max)) return BlockKind::kWhole;
  return BlockKind::kMasked;
}

// Per-row mask of a block: -inf where query i may not see key j. Token arrays are gathered once per
// block so the inner loop is over plain arrays.
std::vector<int64_t>& MaskKeyIndex(size_t n) { return Scratch<int64_t, struct MaskIndex>(n); }
std::vector<int32_t>& MaskKeySegment(size_t n) { return Scratch<int32_t, struct MaskSegment>(n); }
// A kernel's parallel region reserves the mask's scratch for its largest key block on every thread, so a
// thread whose first masked block comes in a later call allocates nothing then.
[[maybe_unused]] void ReserveMaskScratch(int64_t block_k) {
  MaskKeyIndex(size_t(block_k));
  MaskKeySegment(size_t(block_k));
}

void ApplyMask(const AttentionParams& p, int64_t q0, int64_t nq, int64_t k0, int64_t nk, int64_t group,
               float* s, int64_t lds) {
  std::vector<int64_t>& kidx = MaskKeyIndex(size_t(nk));
  std::vector<int32_t>& kseg = MaskKeySegment(size_t(nk));
  for (int64_t j = 0; j < nk; ++j) {
    kidx[j] = p.k_tok.Index(k0 + j);
    kseg[j] = p.k_tok.Segment(k0 + j);
  }
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t qi = p.q_tok.Index(q0 + i);
    const int32_t qs = p.q_tok.Segment(q0 + i);
    for (int64_t gi = 0; gi < group; ++gi) {
      float* row = s + (gi * nq + i) * lds;
      if (qs < 0) {
        std::fill(row, row + nk, kNegInf);
        continue;
      }
      for (int64_t j = 0; j < nk; ++j) {
        const bool ok = kseg[j] == qs && (!p.causal || kidx[j] <= qi);
        row[j] = ok ? row[j] : kNegInf;
      }
    }
  }
}

// The team size (unused in a build without OpenMP).
[[maybe_unused]] int Threads(const AttentionParams& p) {
  return p.num_threads > 0 ? p.num_threads : DefaultThreads();
}

// Copies the g query heads of kv head hk for rows [q0, q0+nq) into a (g*nq x D) tile, row gi*nq + i,
// times `mul` (fp32 only: a bf16 tile is copied as it is).
template <class T>
void GatherRows(const View3& src, int64_t q0, int64_t nq, int64_t h0, int64_t group, int64_t d, float mul,
                T* dst) {
  for (int64_t gi = 0; gi < group; ++gi)
    for (int64_t i = 0; i < nq; ++i) {
      const T* in = src.at<T>(q0 + i, h0 + gi);
      T* out = dst + (gi * nq + i) * d;
      if constexpr (std::is_same_v<T, float>) {
        for (int64_t x = 0; x < d; ++x) out[x] = in[x] * mul;
      } else {
        std::copy_n(in, d, out);
      }
    }
}

}  // namespace
}  // namespace rw::kernels::cpu
