#include "runtime/model.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "runtime/ring_attention.h"

namespace rw::runtime {

Status ModelConfig::Validate() const {
  RW_REQUIRE(vocab_size >= 2, "model.vocab_size: must be >= 2, got " << vocab_size);
  RW_REQUIRE(hidden_size >= 2, "model.hidden_size: must be >= 2, got " << hidden_size);
  RW_REQUIRE(intermediate_size >= 1, "model.intermediate_size: must be >= 1, got " << intermediate_size);
  RW_REQUIRE(num_hidden_layers >= 1, "model.num_hidden_layers: must be >= 1, got " << num_hidden_layers);
  RW_REQUIRE(num_attention_heads >= 1 && hidden_size % num_attention_heads == 0,
             "model.num_attention_heads: " << num_attention_heads << " does not divide hidden_size " << hidden_size);
  RW_REQUIRE(head_dim() % 2 == 0, "model.num_attention_heads: head dim " << head_dim() << " must be even for RoPE");
  RW_REQUIRE(num_key_value_heads >= 1 && num_attention_heads % num_key_value_heads == 0,
             "model.num_key_value_heads: " << num_key_value_heads << " does not divide " << num_attention_heads
                                           << " attention heads");
  RW_REQUIRE(std::isfinite(rope_theta) && rope_theta > 1.0, "model.rope_theta: must be > 1, got " << rope_theta);
  RW_REQUIRE(std::isfinite(rms_norm_eps) && rms_norm_eps > 0, "model.rms_norm_eps: must be > 0, got " << rms_norm_eps);
  RW_REQUIRE(max_position_embeddings >= 1,
             "model.max_position_embeddings: must be >= 1, got " << max_position_embeddings);
  return Status::Ok();
}

size_t ParamTable::Add(const std::string& name, std::vector<int64_t> shape) {
  ParamInfo p;
  p.name = name;
  p.shape = std::move(shape);
  p.numel = 1;
  for (int64_t d : p.shape) p.numel *= size_t(d);
  p.offset = total_;
  total_ += p.numel;
  tensors_.push_back(p);
  return p.offset;
}

ParamTable::ParamTable(const ModelConfig& c) {
  const int64_t E = c.hidden_size, F = c.intermediate_size, D = c.head_dim();
  const int64_t HQ = c.num_attention_heads * D, HK = c.num_key_value_heads * D;
  embed = Add("model.embed_tokens.weight", {c.vocab_size, E});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Layer L;
    L.in_norm = Add(p + "input_layernorm.weight", {E});
    L.q = Add(p + "self_attn.q_proj.weight", {HQ, E});
    L.k = Add(p + "self_attn.k_proj.weight", {HK, E});
    L.v = Add(p + "self_attn.v_proj.weight", {HK, E});
    L.o = Add(p + "self_attn.o_proj.weight", {E, HQ});
    L.post_norm = Add(p + "post_attention_layernorm.weight", {E});
    L.gate = Add(p + "mlp.gate_proj.weight", {F, E});
    L.up = Add(p + "mlp.up_proj.weight", {F, E});
    L.down = Add(p + "mlp.down_proj.weight", {E, F});
    layers.push_back(L);
  }
  final_norm = Add("model.norm.weight", {E});
  lm_head = c.tie_word_embeddings ? embed : Add("lm_head.weight", {c.vocab_size, E});
}

const ParamInfo* ParamTable::Find(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

void InitParameters(const ModelConfig&, const ParamTable& t, uint64_t seed, float* params) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> normal(0.f, 0.02f);
  for (const auto& p : t.tensors()) {
    const bool norm = p.shape.size() == 1;
    for (size_t i = 0; i < p.numel; ++i) params[p.offset + i] = norm ? 1.f : normal(gen);
  }
}

namespace {

using kernels::DType;
using kernels::Exec;
using kernels::View;

// An activation in the step's activation dtype (fp32, or bf16 under mixed precision).
struct Act {
  DType dt = DType::kF32;
  std::vector<float> f;
  std::vector<kernels::bf16> b;
  void Resize(size_t n, DType t) {
    dt = t;
    if (t == DType::kF32)
      f.resize(n);
    else
      b.resize(n);
  }
  View view() { return dt == DType::kF32 ? View(f.data()) : View(b.data()); }
  const void* data() const { return dt == DType::kF32 ? static_cast<const void*>(f.data()) : b.data(); }
  void Clear() {
    std::vector<float>().swap(f);
    std::vector<kernels::bf16>().swap(b);
  }
};

struct LayerActs {
  std::vector<float> x_in, rstd1, attn, lse, x_mid, rstd2;  // fp32 in every precision
  Act h1, q, k, v, h2;                                      // GEMM / attention operands
};

struct Dims {
  int64_t S, E, F, V, H, HKV, D, HQD, HKD;
};

Dims DimsOf(const ModelConfig& c, int64_t S) {
  const int64_t D = c.head_dim();
  return {S, c.hidden_size, c.intermediate_size, c.vocab_size, c.num_attention_heads, c.num_key_value_heads, D,
          c.num_attention_heads * D, c.num_key_value_heads * D};
}

Status CheckExec(const ModelExec& mx) {
  RW_REQUIRE(mx.precision == DType::kF32 || mx.precision == DType::kBF16,
             "precision: the model runs in f32 or bf16, got " << kernels::DTypeName(mx.precision));
  RW_REQUIRE(mx.precision == DType::kF32 || mx.compute_params,
             "precision: bf16 needs the bf16 copy of the parameters (ModelExec::compute_params)");
  return Status::Ok();
}

// The weights a GEMM reads: the bf16 compute copy under mixed precision, the fp32 master otherwise.
View Gemm(const ModelExec& mx, const float* P, size_t offset) {
  return mx.precision == DType::kBF16 ? View(mx.compute_params + offset) : View(P + offset);
}

Status CheckBatch(const ModelConfig& c, const ShardBatch& b) {
  const size_t S = b.tokens.size();
  RW_REQUIRE(S >= 1, "batch: empty shard");
  RW_REQUIRE(b.targets.size() == S && b.weights.size() == S && b.positions.size() == S && b.segments.size() == S &&
                 b.index.size() == S,
             "batch: tokens, targets, weights, positions, segments and index must all have " << S << " entries");
  for (size_t i = 0; i < S; ++i) {
    RW_REQUIRE(b.tokens[i] >= 0 && b.tokens[i] < c.vocab_size,
               "batch.tokens[" << i << "]: id " << b.tokens[i] << " outside the vocabulary of " << c.vocab_size);
    RW_REQUIRE(b.targets[i] < c.vocab_size,
               "batch.targets[" << i << "]: id " << b.targets[i] << " outside the vocabulary of " << c.vocab_size);
  }
  return Status::Ok();
}

RingAttentionConfig AttnConfig(const ModelConfig& c, const ModelExec& ex, int64_t S, int64_t layer) {
  RingAttentionConfig a;
  a.dtype = ex.precision;
  a.s = S;
  a.hq = c.num_attention_heads;
  a.hkv = c.num_key_value_heads;
  a.d = c.head_dim();
  a.causal = true;
  a.num_threads = ex.num_threads;
  a.tag = ex.tag;
  a.tag.layer = ex.tag.layer + uint32_t(layer);
  return a;
}

void AddStats(const ModelExec& mx, const RingStats& s) {
  if (!mx.stats) return;
  mx.stats->wall_seconds += s.wall_seconds;
  mx.stats->compute_seconds += s.compute_seconds;
  mx.stats->blocks_computed += s.blocks_computed;
  mx.stats->blocks_skipped += s.blocks_skipped;
}

// q or k: the projection, RoPE at each row's position (fp32), then the attention operand in the activation
// dtype. fp32 projects straight into the operand and rotates it in place.
Status ProjectRotate(const Exec& ex, const ModelExec& mx, const ModelConfig& c, const ShardBatch& b, int64_t S,
                     int64_t E, int64_t heads, int64_t D, View h, View w, Act& out) {
  out.Resize(size_t(S * heads * D), mx.precision);
  std::vector<float> tmp;
  float* y = out.dt == DType::kF32 ? out.f.data() : (tmp.resize(size_t(S * heads * D)), tmp.data());
  RW_RETURN_IF_ERROR(kernels::LinearForward(ex, S, E, heads * D, h, w, y));
  RW_RETURN_IF_ERROR(kernels::Rope(ex, S, heads, D, kernels::Dense3(y, heads, D), kernels::Dense3(y, heads, D),
                                   b.positions.data(), c.rope_theta, false));
  if (out.dt != DType::kF32) RW_RETURN_IF_ERROR(kernels::Cast(ex, S * heads * D, y, out.view()));
  return Status::Ok();
}

// One layer's forward: x (S, E) in, x out; fills a's activations (the backward's inputs).
Status LayerForward(Transport& t, const ModelConfig& c, const ParamTable& tb, const ModelExec& mx, const float* P,
                    const ShardBatch& b, int64_t l, std::vector<float>& x, LayerActs& a) {
  const Dims d = DimsOf(c, int64_t(b.tokens.size()));
  const Exec ex{kernels::Device::kCpu, mx.num_threads};
  const auto& L = tb.layers[l];
  a.x_in = x;
  a.rstd1.resize(d.S);
  a.h1.Resize(d.S * d.E, mx.precision);
  RW_RETURN_IF_ERROR(kernels::RmsNormForward(ex, d.S, d.E, x.data(), P + L.in_norm, c.rms_norm_eps, a.h1.view(),
                                             a.rstd1.data()));
  RW_RETURN_IF_ERROR(ProjectRotate(ex, mx, c, b, d.S, d.E, d.H, d.D, a.h1.view(), Gemm(mx, P, L.q), a.q));
  RW_RETURN_IF_ERROR(ProjectRotate(ex, mx, c, b, d.S, d.E, d.HKV, d.D, a.h1.view(), Gemm(mx, P, L.k), a.k));
  a.v.Resize(d.S * d.HKD, mx.precision);
  RW_RETURN_IF_ERROR(kernels::LinearForward(ex, d.S, d.E, d.HKD, a.h1.view(), Gemm(mx, P, L.v), a.v.view()));
  a.attn.resize(d.S * d.HQD);
  a.lse.resize(d.H * d.S);
  RingShard sh{a.q.data(), a.k.data(), a.v.data(), b.index.data(), b.segments.data()};
  RingStats rs;
  RW_RETURN_IF_ERROR(RingAttentionForward(t, AttnConfig(c, mx, d.S, l), sh, a.attn.data(), a.lse.data(), &rs));
  AddStats(mx, rs);
  std::vector<float> o(d.S * d.E);
  RW_RETURN_IF_ERROR(kernels::LinearForward(ex, d.S, d.HQD, d.E, a.attn.data(), Gemm(mx, P, L.o), o.data()));
  for (int64_t i = 0; i < d.S * d.E; ++i) x[i] += o[i];
  a.x_mid = x;
  a.rstd2.resize(d.S);
  a.h2.Resize(d.S * d.E, mx.precision);
  RW_RETURN_IF_ERROR(kernels::RmsNormForward(ex, d.S, d.E, x.data(), P + L.post_norm, c.rms_norm_eps, a.h2.view(),
                                             a.rstd2.data()));
  RW_RETURN_IF_ERROR(kernels::FfnForward(ex, d.S, d.E, d.F, a.h2.view(),
                                         {Gemm(mx, P, L.gate), Gemm(mx, P, L.up), Gemm(mx, P, L.down)}, o.data()));
  for (int64_t i = 0; i < d.S * d.E; ++i) x[i] += o[i];
  return Status::Ok();
}

// Keeps only the layer's input: what a `remat: layer` backward recomputes the rest from.
void DropAllButInput(LayerActs& a) {
  for (auto* v : {&a.rstd1, &a.attn, &a.lse, &a.x_mid, &a.rstd2}) std::vector<float>().swap(*v);
  for (auto* v : {&a.h1, &a.q, &a.k, &a.v, &a.h2}) v->Clear();
}

// The forward; keeps each layer's activations when `acts` is given (only their inputs under remat).
// Leaves the final hidden state (pre-norm) in `x`.
Status RunForward(Transport& t, const ModelConfig& c, const ParamTable& tb, const ModelExec& mx, const float* P,
                  const ShardBatch& b, std::vector<float>& x, std::vector<LayerActs>* acts, KvShard* kv = nullptr) {
  RW_RETURN_IF_ERROR(CheckExec(mx));
  const Dims d = DimsOf(c, int64_t(b.tokens.size()));
  x.assign(d.S * d.E, 0.f);
  RW_RETURN_IF_ERROR(kernels::EmbeddingForward(Exec{kernels::Device::kCpu, mx.num_threads}, d.S, d.E, d.V,
                                               b.tokens.data(), P + tb.embed, x.data()));
  if (acts) acts->assign(c.num_hidden_layers, {});
  LayerActs tmp;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerActs& a = acts ? (*acts)[l] : tmp;
    RW_RETURN_IF_ERROR(LayerForward(t, c, tb, mx, P, b, l, x, a));
    if (kv) {
      kv->k[l] = a.k.f;
      kv->v[l] = a.v.f;
    }
    if (mx.remat_layers) DropAllButInput(a);
  }
  return Status::Ok();
}

}  // namespace

Status Forward(Transport& t, const ModelConfig& c, const ParamTable& tb, const ModelExec& mx, const float* P,
               const ShardBatch& b, double* loss_sum) {
  RW_RETURN_IF_ERROR(CheckBatch(c, b));
  const Dims d = DimsOf(c, int64_t(b.tokens.size()));
  const Exec ex{kernels::Device::kCpu, mx.num_threads};
  std::vector<float> x;
  RW_RETURN_IF_ERROR(RunForward(t, c, tb, mx, P, b, x, nullptr));
  Act hf;
  hf.Resize(d.S * d.E, mx.precision);
  std::vector<float> rstd(d.S), loss(d.S);
  RW_RETURN_IF_ERROR(kernels::RmsNormForward(ex, d.S, d.E, x.data(), P + tb.final_norm, c.rms_norm_eps, hf.view(),
                                             rstd.data()));
  double sum = 0;
  RW_RETURN_IF_ERROR(kernels::CrossEntropyForward(ex, d.S, d.E, d.V, hf.view(), Gemm(mx, P, tb.lm_head),
                                                  b.targets.data(), b.weights.data(), loss.data(), &sum));
  *loss_sum += sum;
  return Status::Ok();
}

Status Prefill(Transport& t, const ModelConfig& c, const ParamTable& tb, const ModelExec& mx, const float* P,
               const ShardBatch& b, KvShard* cache, std::vector<float>* hidden) {
  RW_RETURN_IF_ERROR(CheckBatch(c, b));
  RW_REQUIRE(mx.precision == DType::kF32, "precision: ring decoding keeps an fp32 KV cache; prefill in f32");
  const Dims d = DimsOf(c, int64_t(b.tokens.size()));
  const Exec ex{kernels::Device::kCpu, mx.num_threads};
  cache->k.assign(c.num_hidden_layers, {});
  cache->v.assign(c.num_hidden_layers, {});
  cache->index = b.index;
  cache->segments = b.segments;
  std::vector<float> x, rstd(d.S);
  RW_RETURN_IF_ERROR(RunForward(t, c, tb, mx, P, b, x, nullptr, cache));
  hidden->resize(d.S * d.E);
  return kernels::RmsNormForward(ex, d.S, d.E, x.data(), P + tb.final_norm, c.rms_norm_eps, hidden->data(),
                                 rstd.data());
}

Status ForwardBackward(Transport& t, const ModelConfig& c, const ParamTable& tb, const ModelExec& mx, const float* P,
                       const ShardBatch& b, float loss_scale, float* G, double* loss_sum) {
  RW_RETURN_IF_ERROR(CheckBatch(c, b));
  const Dims d = DimsOf(c, int64_t(b.tokens.size()));
  const Exec ex{kernels::Device::kCpu, mx.num_threads};
  std::vector<float> x;
  std::vector<LayerActs> acts;
  RW_RETURN_IF_ERROR(RunForward(t, c, tb, mx, P, b, x, &acts));

  // Loss head: final norm, lm_head, cross-entropy (blockwise inside the kernel).
  Act hf;
  hf.Resize(d.S * d.E, mx.precision);
  std::vector<float> rstd(d.S), loss(d.S), dhf(d.S * d.E), dx(d.S * d.E);
  RW_RETURN_IF_ERROR(kernels::RmsNormForward(ex, d.S, d.E, x.data(), P + tb.final_norm, c.rms_norm_eps, hf.view(),
                                             rstd.data()));
  double sum = 0;
  RW_RETURN_IF_ERROR(kernels::CrossEntropyForward(ex, d.S, d.E, d.V, hf.view(), Gemm(mx, P, tb.lm_head),
                                                  b.targets.data(), b.weights.data(), loss.data(), &sum));
  *loss_sum += sum;
  RW_RETURN_IF_ERROR(kernels::CrossEntropyBackward(ex, d.S, d.E, d.V, hf.view(), Gemm(mx, P, tb.lm_head),
                                                   b.targets.data(), b.weights.data(), loss_scale, dhf.data(),
                                                   G + tb.lm_head));
  RW_RETURN_IF_ERROR(kernels::RmsNormBackward(ex, d.S, d.E, x.data(), P + tb.final_norm, rstd.data(), dhf.data(),
                                              dx.data(), G + tb.final_norm));

  std::vector<float> dh(d.S * d.E), tmp(d.S * d.E), dq(d.S * d.HQD), dk(d.S * d.HKD), dv(d.S * d.HKD);
  Act d_attn_op;  // the attention's dout in the activation dtype
  for (int64_t l = c.num_hidden_layers - 1; l >= 0; --l) {
    const auto& L = tb.layers[l];
    LayerActs& a = acts[l];
    if (mx.remat_layers) {  // recompute this layer's activations from its input (same ops, same bits)
      std::vector<float> x_again = a.x_in;
      RW_RETURN_IF_ERROR(LayerForward(t, c, tb, mx, P, b, l, x_again, a));
    }
    // x_out = x_mid + mlp(norm2(x_mid))
    RW_RETURN_IF_ERROR(kernels::FfnBackward(ex, d.S, d.E, d.F, a.h2.view(),
                                            {Gemm(mx, P, L.gate), Gemm(mx, P, L.up), Gemm(mx, P, L.down)},
                                            dx.data(), dh.data(), {G + L.gate, G + L.up, G + L.down}));
    RW_RETURN_IF_ERROR(kernels::RmsNormBackward(ex, d.S, d.E, a.x_mid.data(), P + L.post_norm, a.rstd2.data(),
                                                dh.data(), tmp.data(), G + L.post_norm));
    for (int64_t i = 0; i < d.S * d.E; ++i) dx[i] += tmp[i];  // dx is now d x_mid
    // x_mid = x_in + o_proj(attention(rope(q), rope(k), v))
    // The attention's dout, written straight in the activation dtype.
    d_attn_op.Resize(size_t(d.S * d.HQD), mx.precision);
    RW_RETURN_IF_ERROR(kernels::LinearBackward(ex, d.S, d.HQD, d.E, a.attn.data(), Gemm(mx, P, L.o), dx.data(),
                                               d_attn_op.view(), G + L.o));
    const void* dout = d_attn_op.data();
    RingShard sh{a.q.data(), a.k.data(), a.v.data(), b.index.data(), b.segments.data()};
    RingStats rs;
    RW_RETURN_IF_ERROR(RingAttentionBackward(t, AttnConfig(c, mx, d.S, l), sh, a.attn.data(), a.lse.data(), dout,
                                             dq.data(), dk.data(), dv.data(), &rs));
    AddStats(mx, rs);
    RW_RETURN_IF_ERROR(kernels::Rope(ex, d.S, d.H, d.D, kernels::Dense3(dq.data(), d.H, d.D),
                                     kernels::Dense3(dq.data(), d.H, d.D), b.positions.data(), c.rope_theta, true));
    RW_RETURN_IF_ERROR(kernels::Rope(ex, d.S, d.HKV, d.D, kernels::Dense3(dk.data(), d.HKV, d.D),
                                     kernels::Dense3(dk.data(), d.HKV, d.D), b.positions.data(), c.rope_theta, true));
    RW_RETURN_IF_ERROR(kernels::LinearBackward(ex, d.S, d.E, d.HQD, a.h1.view(), Gemm(mx, P, L.q), dq.data(),
                                               dh.data(), G + L.q));
    RW_RETURN_IF_ERROR(kernels::LinearBackward(ex, d.S, d.E, d.HKD, a.h1.view(), Gemm(mx, P, L.k), dk.data(),
                                               tmp.data(), G + L.k));
    for (int64_t i = 0; i < d.S * d.E; ++i) dh[i] += tmp[i];
    RW_RETURN_IF_ERROR(kernels::LinearBackward(ex, d.S, d.E, d.HKD, a.h1.view(), Gemm(mx, P, L.v), dv.data(),
                                               tmp.data(), G + L.v));
    for (int64_t i = 0; i < d.S * d.E; ++i) dh[i] += tmp[i];
    RW_RETURN_IF_ERROR(kernels::RmsNormBackward(ex, d.S, d.E, a.x_in.data(), P + L.in_norm, a.rstd1.data(), dh.data(),
                                                tmp.data(), G + L.in_norm));
    for (int64_t i = 0; i < d.S * d.E; ++i) dx[i] += tmp[i];  // dx is now d x_in
    if (mx.remat_layers) DropAllButInput(a);
  }
  // Embedding rows: a scatter-add in token order (deterministic).
  return kernels::EmbeddingBackward(ex, d.S, d.E, d.V, b.tokens.data(), dx.data(), G + tb.embed);
}

}  // namespace rw::runtime
