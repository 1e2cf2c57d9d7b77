#include "runtime/ring_attention.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/layers.h"

namespace rw::runtime {
namespace {

using Clock = std::chrono::steady_clock;
using kernels::AttentionParams;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// Bounds of a shard's global indices and segments: decide whether a (query shard, key block) pair is
// empty under the masks without touching its rows.
struct Bounds {
  int64_t imin, imax;
  int32_t smin, smax;
};

Bounds BoundsOf(int64_t n, const int64_t* index, const int32_t* segment) {
  Bounds b{std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min(),
           std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min()};
  for (int64_t i = 0; i < n; ++i) {
    b.imin = std::min(b.imin, index[i]);
    b.imax = std::max(b.imax, index[i]);
    const int32_t sg = segment ? segment[i] : 0;
    b.smin = std::min(b.smin, sg);
    b.smax = std::max(b.smax, sg);
  }
  return b;
}

bool Empty(bool causal, const Bounds& q, const Bounds& k) {
  if (causal && q.imax < k.imin) return true;
  if (q.smax < 0 || k.smax < 0) return true;
  return q.smax < k.smin || k.smax < q.smin;
}

// A K/V block as it travels: [meta | K | V | index | segment], each part 64-byte aligned.
struct KvLayout {
  size_t meta, k, v, idx, seg, total;
  explicit KvLayout(const RingAttentionConfig& c) {
    auto up = [](size_t x) { return (x + 63) / 64 * 64; };
    const size_t kv = size_t(c.s) * c.hkv * c.d * kernels::DTypeSize(c.dtype);
    meta = 0;
    k = up(sizeof(Bounds));
    v = k + up(kv);
    idx = v + up(kv);
    seg = idx + up(size_t(c.s) * sizeof(int64_t));
    total = seg + up(size_t(c.s) * sizeof(int32_t));
  }
};

struct KvBlock {
  unsigned char* bytes;
  const KvLayout* lay;
  Bounds* meta() { return reinterpret_cast<Bounds*>(bytes + lay->meta); }
  void* k() { return bytes + lay->k; }
  void* v() { return bytes + lay->v; }
  int64_t* idx() { return reinterpret_cast<int64_t*>(bytes + lay->idx); }
  int32_t* seg() { return reinterpret_cast<int32_t*>(bytes + lay->seg); }
};

// A buffer of at least n elements (resize only grows: after the first call at a shape, no allocation).
template <class T>
T* Room(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

Status Validate(const Transport& t, const RingAttentionConfig& c, const RankQkv& sh) {
  RW_REQUIRE(c.device == kernels::Device::kRef || c.device == kernels::Device::kCpu,
             "device: ring attention over this transport runs on ref or cpu devices; cuda rings use the nccl "
             "transport");
  RW_REQUIRE(c.s >= 1, "s: rows per rank must be >= 1, got " << c.s);
  RW_REQUIRE(c.hq >= 1 && c.hkv >= 1 && c.hq % c.hkv == 0,
             "hkv: query heads (" << c.hq << ") must be a positive multiple of kv heads (" << c.hkv << ")");
  RW_REQUIRE(c.d >= 1, "d: head dim must be >= 1, got " << c.d);
  RW_REQUIRE(c.dtype == kernels::DType::kF32 || c.dtype == kernels::DType::kBF16,
             "dtype: ring attention runs in f32 or bf16, got " << kernels::DTypeName(c.dtype));
  RW_REQUIRE(c.num_threads >= 0, "num_threads: must be >= 0, got " << c.num_threads);
  RW_REQUIRE(sh.q && sh.k && sh.v, "shard: q, k and v are required");
  RW_REQUIRE(sh.index, "shard.index: the global token index of each row is required");
  RW_REQUIRE(t.size() >= 1, "transport: empty ring");
  return Status::Ok();
}

AttentionParams Params(const RingAttentionConfig& c, const RankQkv& sh, KvBlock& blk) {
  AttentionParams p;
  p.device = c.device;
  p.dtype = c.dtype;
  p.sq = p.sk = c.s;
  p.hq = c.hq;
  p.hkv = c.hkv;
  p.d = c.d;
  p.causal = c.causal;
  p.scale = c.scale;
  p.block_q = c.block_q;
  p.block_k = c.block_k;
  p.num_threads = c.num_threads;
  p.q = kernels::Dense3(sh.q, c.hq, c.d);
  p.k = kernels::Dense3(blk.k(), c.hkv, c.d);
  p.v = kernels::Dense3(blk.v(), c.hkv, c.d);
  p.q_tok.index = sh.index;
  p.q_tok.segment = sh.segment;
  p.k_tok.index = blk.idx();
  p.k_tok.segment = sh.segment ? blk.seg() : nullptr;
  return p;
}

// Fills a travelling block with this rank's own K, V, indices and segments.
void PackOwn(const RingAttentionConfig& c, const RankQkv& sh, KvBlock& blk) {
  const size_t kv = size_t(c.s) * c.hkv * c.d * kernels::DTypeSize(c.dtype);
  std::memcpy(blk.k(), sh.k, kv);
  std::memcpy(blk.v(), sh.v, kv);
  std::memcpy(blk.idx(), sh.index, c.s * sizeof(int64_t));
  if (sh.segment)
    std::memcpy(blk.seg(), sh.segment, c.s * sizeof(int32_t));
  else
    std::fill(blk.seg(), blk.seg() + c.s, 0);
  *blk.meta() = BoundsOf(c.s, sh.index, sh.segment);
}

// Hop numbers: forward K/V use s; backward K/V use R + s and their dK/dV 2R + s, so a stray message of
// one kind can never be taken for another.
MsgTag Hop(MsgTag tag, uint32_t hop) {
  tag.hop = hop;
  return tag;
}

}  // namespace

Status RingAttentionForward(Transport& t, const RingAttentionConfig& c, const RankQkv& sh, float* o, float* lse,
                            RingStats* stats) {
  RW_RETURN_IF_ERROR(Validate(t, c, sh));
  RW_REQUIRE(o && lse, "o/lse: output buffers are required");
  const int R = t.size();
  const auto t0 = Clock::now();
  RingStats st;
  const KvLayout lay(c);
  RingBuffers local;
  RingBuffers& buf = c.buffers ? *c.buffers : local;
  KvBlock cur{Room(buf.block[0], lay.total), &lay}, nxt{Room(buf.block[1], lay.total), &lay};
  PackOwn(c, sh, cur);
  const Bounds qb = BoundsOf(c.s, sh.index, sh.segment);

  const size_t rows = size_t(c.s) * c.hq;
  std::fill(o, o + rows * c.d, 0.f);
  std::fill(lse, lse + rows, -std::numeric_limits<float>::infinity());
  float* const o_part = Room(buf.o_part, rows * c.d);
  float* const lse_part = Room(buf.lse_part, rows);
  bool merged_any = false;

  for (int s = 0; s < R; ++s) {
    Request rr, sr;
    if (s < R - 1) {
      rr = t.RecvPrev(Hop(c.tag, s), nxt.bytes, lay.total);
      sr = t.SendNext(Hop(c.tag, s), cur.bytes, lay.total);
    }
    if (Empty(c.causal, qb, *cur.meta())) {
      ++st.blocks_skipped;
    } else {
      const auto c0 = Clock::now();
      AttentionParams p = Params(c, sh, cur);
      // The first block computed writes the running (O, lse) itself: merging a partial into (0, -inf) gives
      // the partial bit for bit, so the merge pass (one read and write of O) is only for the later blocks.
      p.o = kernels::Dense3(merged_any ? o_part : o, c.hq, c.d);
      p.lse = merged_any ? lse_part : lse;
      RW_RETURN_IF_ERROR(kernels::AttentionForward(p));
      if (merged_any)
        RW_RETURN_IF_ERROR(kernels::AttentionMerge(c.device, kernels::DType::kF32, c.s, c.hq, c.d,
                                                   kernels::Dense3(o, c.hq, c.d), lse,
                                                   kernels::Dense3(o_part, c.hq, c.d), lse_part));
      merged_any = true;
      st.compute_seconds += Seconds(c0, Clock::now());
      ++st.blocks_computed;
    }
    if (s < R - 1) {
      const Status a = t.Wait(rr), b = t.Wait(sr);
      RW_RETURN_IF_ERROR(a);
      RW_RETURN_IF_ERROR(b);
      std::swap(cur, nxt);
    }
  }
  st.wall_seconds = Seconds(t0, Clock::now());
  if (stats) *stats = st;
  return Status::Ok();
}

Status RingAttentionBackward(Transport& t, const RingAttentionConfig& c, const RankQkv& sh, const float* o,
                             const float* lse, const void* dout, float* dq, float* dk, float* dv,
                             RingStats* stats) {
  RW_RETURN_IF_ERROR(Validate(t, c, sh));
  RW_REQUIRE(o && lse && dout, "o/lse/dout: the forward's outputs and the output gradient are required");
  RW_REQUIRE(dq && dk && dv, "dq/dk/dv: output buffers are required");
  const int R = t.size();
  const auto t0 = Clock::now();
  RingStats st;
  const KvLayout lay(c);
  RingBuffers local;
  RingBuffers& buf = c.buffers ? *c.buffers : local;
  KvBlock cur{Room(buf.block[0], lay.total), &lay}, nxt{Room(buf.block[1], lay.total), &lay};
  PackOwn(c, sh, cur);
  const Bounds qb = BoundsOf(c.s, sh.index, sh.segment);
  const size_t kv = size_t(c.s) * c.hkv * c.d, dkv_bytes = 2 * kv * sizeof(float);
  const kernels::Exec ex{c.device, c.num_threads};

  // delta = rowsum(dout * o), once for all blocks.
  float* const delta = Room(buf.delta, size_t(c.s) * c.hq);
  {
    AttentionParams p = Params(c, sh, cur);
    p.o = kernels::Dense3(o, c.hq, c.d);
    p.lse = const_cast<float*>(lse);
    p.dout = kernels::Dense3(dout, c.hq, c.d);
    p.delta = delta;
    RW_RETURN_IF_ERROR(kernels::AttentionBackwardPrep(p));
  }
  std::fill(dq, dq + size_t(c.s) * c.hq * c.d, 0.f);
  // dK|dV of the block being worked on: two alternating outgoing buffers (the previous step's may still
  // be in flight) and one for what arrives.
  float* const part[2] = {Room(buf.dkv[0], 2 * kv), Room(buf.dkv[1], 2 * kv)};
  float* const incoming = Room(buf.incoming, 2 * kv);
  Request dkv_send;

  for (int s = 0; s < R; ++s) {
    // Post order matches the previous rank's send order: its dK/dV of step s-1, then K/V of step s.
    Request rd, rr, sr;
    if (s > 0) rd = t.RecvPrev(Hop(c.tag, 2 * R + s - 1), incoming, dkv_bytes);
    if (s < R - 1) {
      rr = t.RecvPrev(Hop(c.tag, R + s), nxt.bytes, lay.total);
      sr = t.SendNext(Hop(c.tag, R + s), cur.bytes, lay.total);
    }
    float* const mine = part[s % 2];
    std::fill(mine, mine + 2 * kv, 0.f);
    if (Empty(c.causal, qb, *cur.meta())) {
      ++st.blocks_skipped;
    } else {
      const auto c0 = Clock::now();
      AttentionParams p = Params(c, sh, cur);
      p.o = kernels::Dense3(o, c.hq, c.d);
      p.lse = const_cast<float*>(lse);
      p.dout = kernels::Dense3(dout, c.hq, c.d);
      p.delta = delta;
      p.dq = kernels::Dense3(dq, c.hq, c.d);
      p.dk = kernels::Dense3(mine, c.hkv, c.d);
      p.dv = kernels::Dense3(mine + kv, c.hkv, c.d);
      RW_RETURN_IF_ERROR(kernels::AttentionBackward(p));
      st.compute_seconds += Seconds(c0, Clock::now());
      ++st.blocks_computed;
    }
    if (s > 0) {
      RW_RETURN_IF_ERROR(t.Wait(rd));
      // What the earlier ranks accumulated plus this rank's share: the same order on every run.
      RW_RETURN_IF_ERROR(kernels::AddInto(ex, int64_t(2 * kv), incoming, mine));
    }
    if (R > 1) {
      if (dkv_send.valid()) RW_RETURN_IF_ERROR(t.Wait(dkv_send));
      dkv_send = t.SendNext(Hop(c.tag, 2 * R + s), mine, dkv_bytes);
    }
    if (s < R - 1) {
      const Status a = t.Wait(rr), b = t.Wait(sr);
      RW_RETURN_IF_ERROR(a);
      RW_RETURN_IF_ERROR(b);
      std::swap(cur, nxt);
    }
  }
  if (R == 1) {
    std::memcpy(dk, part[0], kv * sizeof(float));
    std::memcpy(dv, part[0] + kv, kv * sizeof(float));
  } else {
    // This rank's own block comes home from the previous rank after its last step.
    RW_RETURN_IF_ERROR(t.Wait(t.RecvPrev(Hop(c.tag, 2 * R + R - 1), incoming, dkv_bytes)));
    RW_RETURN_IF_ERROR(t.Wait(dkv_send));
    std::memcpy(dk, incoming, kv * sizeof(float));
    std::memcpy(dv, incoming + kv, kv * sizeof(float));
  }
  st.wall_seconds = Seconds(t0, Clock::now());
  if (stats) *stats = st;
  return Status::Ok();
}

}  // namespace rw::runtime
