#include "runtime/ring_decode.h"

#include <algorithm>

#include "kernels/attention.h"
#include "kernels/layers.h"
#include "runtime/data.h"
#include "runtime/checkpoint.h"
#include "runtime/generate.h"

namespace rw::runtime {

namespace {
constexpr uint32_t kDecodeStepBase = 1u << 30;  // decode tags stay clear of the prefill's
}

RingDecoder::RingDecoder(Transport& t, const ModelConfig& c, const ParamTable& table, const float* params,
                         kernels::Exec ex, uint64_t job_tag)
    : t_(t), c_(c), tb_(table), p_(params), ex_(ex), job_(job_tag) {}

Status RingDecoder::Prefill(const std::vector<int32_t>& prompt, LayoutKind kind, std::vector<float>* logits) {
  const int R = t_.size();
  const int64_t n = int64_t(prompt.size());
  RW_REQUIRE(n >= 1, "prompt: empty");
  const int64_t unit = 2 * R;  // every layout splits a multiple of 2R evenly
  const int64_t L = (n + unit - 1) / unit * unit;
  Layout layout;
  RW_RETURN_IF_ERROR(Layout::Make(kind, L, R, &layout));
  PackedSequence seq;
  seq.tokens.assign(L, 0);
  seq.targets.assign(L, -1);
  seq.segments.assign(L, -1);
  seq.positions.assign(L, 0);
  seq.weights.assign(L, 0.f);
  seq.modality.assign(L, 0);
  for (int64_t i = 0; i < n; ++i) {
    seq.tokens[i] = prompt[i];
    seq.segments[i] = 0;
    seq.positions[i] = i;
  }
  const RankBatch shard = ShardOf(seq, layout, t_.rank());
  ModelExec mx;
  mx.device = ex_.device;
  mx.num_threads = ex_.num_threads;
  mx.tag.job = job_;
  mx.tag.step = step_++;
  std::vector<float> hidden;
  RW_RETURN_IF_ERROR(runtime::Prefill(t_, c_, tb_, mx, p_, shard, &cache_, &hidden));
  // The last prompt token's logits: computed by the rank that holds it, summed over the ring (others add 0).
  const int64_t E = c_.hidden_size, V = c_.total_vocab();  // lm_head then vision_head: one matrix
  logits->assign(V, 0.f);
  for (size_t i = 0; i < shard.index.size(); ++i)
    if (shard.index[i] == n - 1)
      RW_RETURN_IF_ERROR(kernels::LinearForward(ex_, 1, E, V,
                                                hidden.data() + i * E, p_ + tb_.lm_head, logits->data()));
  RW_RETURN_IF_ERROR(t_.AllReduceSum(logits->data(), size_t(V), MsgTag{job_, 0, kDecodeStepBase - 1, 0, 0}));
  pos_ = n;
  return Status::Ok();
}

Status RingDecoder::Step(int32_t token, std::vector<float>* logits) {
  RW_REQUIRE(token >= 0 && token < c_.total_vocab(), "token: id " << token << " outside the vocabulary");
  RW_REQUIRE(!cache_.k.empty(), "decode before prefill");
  const int R = t_.size(), rank = t_.rank();
  const int64_t H = c_.num_attention_heads, HKV = c_.num_key_value_heads, D = c_.head_dim();
  const bool owner = rank == R - 1;  // generated tokens' keys and values live on the last rank
  if (owner) {
    cache_.index.push_back(pos_);
    cache_.segments.push_back(0);
  }
  const int64_t rows = int64_t(cache_.index.size());
  const int32_t q_segment = 0;
  const int64_t part = H * D + H;  // one rank's (o, lse)
  std::vector<float> parts(size_t(R * part));
  const uint32_t step = kDecodeStepBase + step_++;
  auto attend = [&](int64_t l, const float* q, const float* k, const float* v, float* out) -> Status {
    auto& kc = cache_.k[l];
    auto& vc = cache_.v[l];
    if (owner) {
      kc.insert(kc.end(), k, k + HKV * D);
      vc.insert(vc.end(), v, v + HKV * D);
    }
    // This rank's partial attention over its cache rows.
    float* mine = parts.data() + size_t(rank) * part;
    kernels::AttentionParams a;
    a.device = ex_.device;
    a.sq = 1;
    a.sk = rows;
    a.hq = H;
    a.hkv = HKV;
    a.d = D;
    a.causal = true;
    a.q_tok.offset = pos_;
    a.q_tok.segment = &q_segment;
    a.k_tok.index = cache_.index.data();
    a.k_tok.segment = cache_.segments.data();
    a.q = kernels::Dense3(q, H, D);
    a.k = kernels::Dense3(kc.data(), HKV, D);
    a.v = kernels::Dense3(vc.data(), HKV, D);
    a.o = kernels::Dense3(mine, H, D);
    a.lse = mine + H * D;
    a.num_threads = ex_.num_threads;
    RW_RETURN_IF_ERROR(kernels::AttentionForward(a));
    // Around the ring once: after hop s every rank holds the parts of ranks rank, rank-1, ..., rank-s-1.
    for (int s = 0; s + 1 < R; ++s) {
      const int send_of = (rank - s + R) % R, recv_of = (rank - s - 1 + 2 * R) % R;
      const MsgTag tag{job_, 0, step, uint32_t(l), uint32_t(s)};
      Request rr = t_.RecvPrev(tag, parts.data() + size_t(recv_of) * part, size_t(part) * sizeof(float));
      Request sr = t_.SendNext(tag, parts.data() + size_t(send_of) * part, size_t(part) * sizeof(float));
      const Status a1 = t_.Wait(rr), a2 = t_.Wait(sr);
      RW_RETURN_IF_ERROR(a1);
      RW_RETURN_IF_ERROR(a2);
    }
    // Merge in rank order: the same bits on every rank.
    float* acc = parts.data();
    for (int r = 1; r < R; ++r) {
      float* p = parts.data() + size_t(r) * part;
      RW_RETURN_IF_ERROR(kernels::AttentionMerge(ex_.device, kernels::DType::kF32, 1, H, D,
                                                 kernels::Dense3(acc, H, D), acc + H * D, kernels::Dense3(p, H, D),
                                                 p + H * D));
    }
    std::copy_n(acc, H * D, out);
    return Status::Ok();
  };
  RW_RETURN_IF_ERROR(DecodeToken(c_, tb_, p_, ex_, token, pos_, attend, logits));
  ++pos_;
  return Status::Ok();
}

Status GenerateRank(Transport& t, const std::string& checkpoint_dir, const std::vector<int32_t>& prompt,
                    const SamplingConfig& s, int64_t max_tokens, int32_t eos, const std::string& layout,
                    kernels::Exec ex, std::vector<int32_t>* out) {
  RW_RETURN_IF_ERROR(s.Validate());
  RW_REQUIRE(!prompt.empty(), "--prompt: empty");
  RW_REQUIRE(max_tokens >= 0, "--max-tokens: must be >= 0, got " << max_tokens);
  LayoutKind kind;
  {
    const Status st = ParseLayout(layout, &kind);
    RW_REQUIRE(st.ok(), "--layout: " << st.message());
  }
  ModelConfig c;
  RW_RETURN_IF_ERROR(ReadHfConfig(checkpoint_dir + "/config.json", &c));
  const ParamTable table(c);
  std::vector<float> params(table.total());
  RW_RETURN_IF_ERROR(LoadWeights(checkpoint_dir, table, params.data()));
  for (int32_t id : prompt)
    RW_REQUIRE(id >= 0 && id < c.total_vocab(), "--prompt: token " << id << " outside the vocabulary");
  RingDecoder dec(t, c, table, params.data(), ex);
  std::vector<float> logits;
  RW_RETURN_IF_ERROR(dec.Prefill(prompt, kind, &logits));
  uint64_t rng = s.seed;
  out->clear();
  for (int64_t i = 0; i < max_tokens; ++i) {
    // Text generation: with a vision vocabulary, a draw among the text ids (lm_head's own softmax).
    logits.resize(size_t(c.vocab_size));
    const int32_t next = Sample(logits, s, &rng);  // the same logits bits on every rank: the same token
    out->push_back(next);
    if (next == eos || i + 1 == max_tokens) break;
    RW_RETURN_IF_ERROR(dec.Step(next, &logits));
  }
  return Status::Ok();
}

}  // namespace rw::runtime
