#include "runtime/rng.h"
#include "runtime/attention_problem.h"

#include <cstdio>
#include <fstream>

namespace rw::runtime {
namespace {

// splitmix64: a counter-based generator, so row r of tensor t is the same on every rank.

void FillRow(uint64_t seed, uint64_t tensor, int64_t row, float* out, int64_t n) {
  uint64_t state = Mix(seed ^ Mix(tensor * 0x100000001b3ull ^ uint64_t(row)));
  for (int64_t i = 0; i < n; ++i) {
    state = Mix(state);
    out[i] = float(double(state >> 11) * (2.0 / 9007199254740992.0) - 1.0);  // uniform in [-1, 1)
  }
}

}  // namespace

Status MakeShard(const SyntheticAttention& spec, const Layout& layout, int rank, ShardData* out) {
  RW_REQUIRE(layout.global_len() == spec.L, "L: the layout covers " << layout.global_len() << " tokens, the problem "
                                                                     << spec.L);
  RW_REQUIRE(spec.hq >= 1 && spec.hkv >= 1 && spec.hq % spec.hkv == 0 && spec.d >= 1,
             "heads: need hq a positive multiple of hkv and d >= 1");
  RW_REQUIRE(rank >= 0 && rank < layout.ring_size(), "rank: " << rank << " outside the ring");
  ShardData& sd = *out;
  sd.s = layout.shard_len();
  sd.hq = spec.hq;
  sd.hkv = spec.hkv;
  sd.d = spec.d;
  sd.causal = spec.causal;
  sd.index = layout.GlobalIndices(rank);
  const int64_t wq = spec.hq * spec.d, wk = spec.hkv * spec.d;
  sd.q.resize(sd.s * wq);
  sd.k.resize(sd.s * wk);
  sd.v.resize(sd.s * wk);
  sd.dout.resize(sd.s * wq);
  sd.segment.clear();
  for (int64_t i = 0; i < sd.s; ++i) {
    const int64_t g = sd.index[i];
    FillRow(spec.seed, 1, g, &sd.q[i * wq], wq);
    FillRow(spec.seed, 2, g, &sd.k[i * wk], wk);
    FillRow(spec.seed, 3, g, &sd.v[i * wk], wk);
    FillRow(spec.seed, 4, g, &sd.dout[i * wq], wq);
    if (spec.doc_len > 0) sd.segment.push_back(int32_t(g / spec.doc_len));
  }
  return Status::Ok();
}

Status RunShard(Transport& t, ShardData& sd, MsgTag tag, int num_threads, RingStats* fwd, RingStats* bwd) {
  RingAttentionConfig c;
  c.s = sd.s;
  c.hq = sd.hq;
  c.hkv = sd.hkv;
  c.d = sd.d;
  c.causal = sd.causal;
  c.num_threads = num_threads;
  c.tag = tag;
  RankQkv sh{sd.q.data(), sd.k.data(), sd.v.data(), sd.index.data(), sd.segment.empty() ? nullptr : sd.segment.data()};
  sd.o.resize(sd.q.size());
  sd.lse.resize(size_t(sd.hq) * sd.s);
  sd.dq.resize(sd.q.size());
  sd.dk.resize(sd.k.size());
  sd.dv.resize(sd.v.size());
  RW_RETURN_IF_ERROR(RingAttentionForward(t, c, sh, sd.o.data(), sd.lse.data(), fwd));
  return RingAttentionBackward(t, c, sh, sd.o.data(), sd.lse.data(), sd.dout.data(), sd.dq.data(), sd.dk.data(),
                               sd.dv.data(), bwd);
}

Status WriteOutputs(const ShardData& sd, const std::string& path) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    RW_REQUIRE(f.good(), "output_path: cannot write " << tmp);
    for (const auto* v : {&sd.o, &sd.lse, &sd.dq, &sd.dk, &sd.dv})
      f.write(reinterpret_cast<const char*>(v->data()), std::streamsize(v->size() * sizeof(float)));
    RW_REQUIRE(f.good(), "output_path: short write to " << tmp);
  }
  RW_REQUIRE(std::rename(tmp.c_str(), path.c_str()) == 0, "output_path: cannot rename " << tmp << " to " << path);
  return Status::Ok();
}

}  // namespace rw::runtime
