#include "runtime/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "runtime/ring_attention.h"

namespace rw::runtime {

Status ModelConfig::Validate() const {
  RW_REQUIRE(vocab_size >= 2, "model.vocab_size: must be >= 2, got " << vocab_size);
  RW_REQUIRE(vision_vocab_size == 0 || vision_vocab_size >= 2,
             "model.vision_vocab_size: must be 0 (none) or >= 2, got " << vision_vocab_size);
  RW_REQUIRE(double(vocab_size) + double(vision_vocab_size) <= double(INT32_MAX),
             "model.vocab_size: " << vocab_size << " text and " << vision_vocab_size
                                  << " vision ids do not fit 32-bit token ids");
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
  // Its size, counted in double before anything is allocated (the int64 products of a forged config.json
  // could overflow): a model past a trillion parameters is refused by name instead of failing an allocation.
  const double h = double(hidden_size), kv = double(num_key_value_heads) * double(head_dim());
  const double per_layer = 2 * h * h + 2 * h * kv + 3 * h * double(intermediate_size) + 2 * h;
  const double params = double(total_vocab()) * h * (tie_word_embeddings ? 1 : 2) + double(num_hidden_layers) * per_layer + h;
  RW_REQUIRE(params <= kMaxParameters, "model: " << params << " parameters (hidden_size " << hidden_size
                                                 << ", intermediate_size " << intermediate_size << ", num_hidden_layers "
                                                 << num_hidden_layers << ", vocab_size " << vocab_size
                                                 << ") is past the limit of " << kMaxParameters);
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
  if (c.vision_vocab_size > 0) vision_embed = Add("model.vision_embed_tokens.weight", {c.vision_vocab_size, E});
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
  if (c.vision_vocab_size > 0)
    vision_head = c.tie_word_embeddings ? vision_embed : Add("vision_head.weight", {c.vision_vocab_size, E});
}

std::vector<ParamTable::Range> ParamTable::Units() const {
  std::vector<Range> u;
  u.push_back({embed, layers.empty() ? final_norm : layers[0].in_norm});
  for (size_t l = 0; l < layers.size(); ++l) u.push_back({layers[l].in_norm, l + 1 < layers.size() ? layers[l + 1].in_norm : final_norm});
  u.push_back({final_norm, total_});
  return u;
}

const ParamInfo* ParamTable::Find(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

void InitParameters(const ModelConfig& c, const ParamTable& t, uint64_t seed, float* params) {
  InitParameterRanges(c, t, seed, {ParamTable::Range{0, t.total()}}, params);
}

void InitParameterRanges(const ModelConfig&, const ParamTable& t, uint64_t seed,
                         const std::vector<ParamTable::Range>& ranges, float* out) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> normal(0.f, 0.02f);
  size_t r = 0;  // the first range not yet passed
  for (const auto& p : t.tensors()) {
    const bool norm = p.shape.size() == 1;
    for (size_t i = 0; i < p.numel; ++i) {
      const size_t at = p.offset + i;
      const float x = norm ? 1.f : normal(gen);  // every value drawn, kept or not: the stream stays the same
      while (r < ranges.size() && ranges[r].end <= at) out += ranges[r++].size();
      if (r < ranges.size() && at >= ranges[r].begin) out[at - ranges[r].begin] = x;
    }
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

}  // namespace

// Buffers are sized by the first step and only grow (std::vector keeps its capacity on resize and copy),
// so from the second step at a shape on, the model allocates nothing.
struct ModelWorkspace::Impl {
  std::vector<LayerActs> acts;  // per layer; under remat only each x_in is kept
  LayerActs scratch;            // a layer not kept (forward only, or recomputed under remat)
  std::vector<float> x, x_again, o, rot, rstd, loss, dhf, dx, dh, tmp, dq, dk, dv;
  Act hf, d_attn_op;
  // The loss head's rows of one vocabulary, gathered (models with a vision vocabulary only).
  Act head_h;
  std::vector<float> head_w, head_dh;
  std::vector<int32_t> head_t, head_rows;
  RingBuffers ring;
};

ModelWorkspace::ModelWorkspace() : impl_(std::make_unique<Impl>()) {}
ModelWorkspace::~ModelWorkspace() = default;

namespace {

template <class T>
size_t Cap(const std::vector<T>& v) {
  return v.capacity() * sizeof(T);
}
size_t Cap(const Act& a) { return Cap(a.f) + Cap(a.b); }
size_t Cap(const LayerActs& a) {
  return Cap(a.x_in) + Cap(a.rstd1) + Cap(a.attn) + Cap(a.lse) + Cap(a.x_mid) + Cap(a.rstd2) + Cap(a.h1) + Cap(a.q) +
         Cap(a.k) + Cap(a.v) + Cap(a.h2);
}

}  // namespace

ModelWorkspace::Held ModelWorkspace::Bytes() const {
  const Impl& w = *impl_;
  Held h;
  for (const auto& a : w.acts) h.activations += Cap(a);
  h.activations += Cap(w.scratch) + Cap(w.x_again);
  for (const auto* v : {&w.x, &w.o, &w.rot, &w.rstd, &w.loss, &w.dhf, &w.dx, &w.dh, &w.tmp, &w.dq, &w.dk, &w.dv,
                        &w.head_w, &w.head_dh})
    h.workspace += Cap(*v);
  h.workspace += Cap(w.hf) + Cap(w.d_attn_op) + Cap(w.head_h) + Cap(w.head_t) + Cap(w.head_rows);
  const RingBuffers& r = w.ring;
  h.ring = Cap(r.block[0]) + Cap(r.block[1]) + Cap(r.o_part) + Cap(r.lse_part) + Cap(r.delta) + Cap(r.dkv[0]) +
           Cap(r.dkv[1]) + Cap(r.incoming);
  return h;
}

namespace {

using Work = ModelWorkspace::Impl;

// The caller's workspace, or one for this call.
struct WorkOf {
  std::unique_ptr<ModelWorkspace> own;
  Work* w;
  explicit WorkOf(const ModelExec& mx)
      : own(mx.workspace ? nullptr : std::make_unique<ModelWorkspace>()),
        w(&(mx.workspace ? mx.workspace : own.get())->impl()) {}
};

struct Dims {
  int64_t S, E, F, V, H, HKV, D, HQD, HKD;
};

Dims DimsOf(const ModelConfig& c, int64_t S) {
  const int64_t D = c.head_dim();
  return {S, c.hidden_size, c.intermediate_size, c.total_vocab(), c.num_attention_heads, c.num_key_value_heads, D,
          c.num_attention_heads * D, c.num_key_value_heads * D};
}

Status CheckExec(const ModelExec& mx) {
  RW_REQUIRE(mx.precision == DType::kF32 || mx.precision == DType::kBF16,
             "precision: the model runs in f32 or bf16, got " << kernels::DTypeName(mx.precision));
  RW_REQUIRE(mx.precision == DType::kF32 || mx.compute_params || mx.units,
             "precision: bf16 needs the bf16 copy of the parameters (ModelExec::compute_params)");
  return Status::Ok();
}

// The rank's device and threads: every op of the model runs on its backend.
Exec ExecOf(const ModelExec& mx) { return Exec{mx.device, mx.num_threads}; }

// A unit's weights (and gradients) by table offset: the whole vectors when they are replicated, the unit's
// gathered buffers when they are sharded (ModelExec::units).
struct Wts {
  const float* p = nullptr;
  const kernels::bf16* c = nullptr;
  float* g = nullptr;
  size_t begin = 0;
  const float* P(size_t off) const { return p + (off - begin); }
  float* G(size_t off) const { return g + (off - begin); }
};

// Unit u's weights (with a gradient buffer when `grads`): asked of the unit source, or the whole vectors.
Status UnitOf(const ModelExec& mx, const float* P, float* G, int u, bool grads, Wts* out) {
  if (!mx.units) {
    *out = Wts{P, mx.compute_params, G, 0};
    return Status::Ok();
  }
  UnitSource::Unit x;
  RW_RETURN_IF_ERROR(mx.units->Acquire(u, grads, &x));
  *out = Wts{x.params, x.compute, x.grads, x.begin};
  return Status::Ok();
}

Status UnitDone(const ModelExec& mx, int u) { return mx.units ? mx.units->GradReady(u) : Status::Ok(); }

// The weights a GEMM reads: the bf16 compute copy under mixed precision, the fp32 master otherwise.
View Gemm(const ModelExec& mx, const Wts& w, size_t offset) {
  return mx.precision == DType::kBF16 ? View(w.c + (offset - w.begin)) : View(w.P(offset));
}

Status CheckBatch(const ModelConfig& c, const RankBatch& b) {
  const size_t S = b.tokens.size();
  RW_REQUIRE(S >= 1, "batch: empty shard");
  RW_REQUIRE(b.targets.size() == S && b.weights.size() == S && b.positions.size() == S && b.segments.size() == S &&
                 b.index.size() == S,
             "batch: tokens, targets, weights, positions, segments and index must all have " << S << " entries");
  for (size_t i = 0; i < S; ++i) {
    RW_REQUIRE(b.tokens[i] >= 0 && b.tokens[i] < c.total_vocab(),
               "batch.tokens[" << i << "]: id " << b.tokens[i] << " outside the vocabulary of " << c.total_vocab());
    RW_REQUIRE(b.targets[i] < c.total_vocab(),
               "batch.targets[" << i << "]: id " << b.targets[i] << " outside the vocabulary of " << c.total_vocab());
  }
  return Status::Ok();
}

RingAttentionConfig AttnConfig(const ModelConfig& c, const ModelExec& ex, int64_t S, int64_t layer, Work& w) {
  RingAttentionConfig a;
  a.device = ex.device;
  a.dtype = ex.precision;
  a.s = S;
  a.hq = c.num_attention_heads;
  a.hkv = c.num_key_value_heads;
  a.d = c.head_dim();
  a.causal = true;
  a.num_threads = ex.num_threads;
  a.tag = ex.tag;
  a.tag.layer = ex.tag.layer + uint32_t(layer);
  a.buffers = &w.ring;
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
Status ProjectRotate(const Exec& ex, const ModelExec& mx, const ModelConfig& c, const RankBatch& b, int64_t S,
                     int64_t E, int64_t heads, int64_t D, View h, View w, Act& out, std::vector<float>& rot) {
  out.Resize(size_t(S * heads * D), mx.precision);
  float* y = out.dt == DType::kF32 ? out.f.data() : (rot.resize(size_t(S * heads * D)), rot.data());
  RW_RETURN_IF_ERROR(kernels::LinearForward(ex, S, E, heads * D, h, w, y));
  RW_RETURN_IF_ERROR(kernels::Rope(ex, S, heads, D, kernels::Dense3(y, heads, D), kernels::Dense3(y, heads, D),
                                   b.positions.data(), c.rope_theta, false));
  if (out.dt != DType::kF32) RW_RETURN_IF_ERROR(kernels::Cast(ex, S * heads * D, y, out.view()));
  return Status::Ok();
}

// The loss head's cross-entropy over hf (S, E), the final norm's output: sets *sum to sum_i w_i ce_i and,
// with dhf, writes dhf (S, E) and adds the heads' gradients (scaled by loss_scale). One vocabulary: one
// softmax over all ids. With a vision vocabulary, LWM's two: the rows whose target is a text id are scored
// against lm_head over the text ids, those with a vision target against vision_head over the vision ids;
// each group is gathered into contiguous rows (text first, then vision: a fixed order of the sum), and rows
// without a target get a zero gradient.
Status LossHead(const ModelConfig& c, const ParamTable& tb, const ModelExec& mx, const Wts& H, const RankBatch& b,
                Work& w, float loss_scale, float* dhf, double* sum) {
  const Dims d = DimsOf(c, int64_t(b.tokens.size()));
  const Exec ex = ExecOf(mx);
  w.loss.resize(d.S);
  if (c.vision_vocab_size == 0) {
    RW_RETURN_IF_ERROR(kernels::CrossEntropyForward(ex, d.S, d.E, d.V, w.hf.view(), Gemm(mx, H, tb.lm_head),
                                                    b.targets.data(), b.weights.data(), w.loss.data(), sum));
    if (!dhf) return Status::Ok();
    return kernels::CrossEntropyBackward(ex, d.S, d.E, d.V, w.hf.view(), Gemm(mx, H, tb.lm_head), b.targets.data(),
                                         b.weights.data(), loss_scale, dhf, H.G(tb.lm_head));
  }
  if (dhf) std::fill_n(dhf, d.S * d.E, 0.f);
  *sum = 0;
  const int64_t V = c.vocab_size, E = d.E;
  const size_t row_bytes = size_t(E) * (mx.precision == DType::kF32 ? sizeof(float) : sizeof(kernels::bf16));
  for (const bool vision : {false, true}) {
    w.head_rows.clear();
    w.head_t.clear();
    w.head_w.clear();
    for (int64_t i = 0; i < d.S; ++i) {
      const int32_t t = b.targets[size_t(i)];
      if (t < 0 || (t >= V) != vision) continue;
      w.head_rows.push_back(int32_t(i));
      w.head_t.push_back(vision ? int32_t(t - V) : t);
      w.head_w.push_back(b.weights[size_t(i)]);
    }
    const int64_t n = int64_t(w.head_rows.size());
    if (n == 0) continue;
    w.head_h.Resize(size_t(n * E), mx.precision);
    const char* from = static_cast<const char*>(w.hf.data());
    char* to = static_cast<char*>(const_cast<void*>(w.head_h.data()));
    for (int64_t r = 0; r < n; ++r)
      std::memcpy(to + size_t(r) * row_bytes, from + size_t(w.head_rows[size_t(r)]) * row_bytes, row_bytes);
    const int64_t vocab = vision ? c.vision_vocab_size : V;
    const size_t head = vision ? tb.vision_head : tb.lm_head;
    double part = 0;
    RW_RETURN_IF_ERROR(kernels::CrossEntropyForward(ex, n, E, vocab, w.head_h.view(), Gemm(mx, H, head),
                                                    w.head_t.data(), w.head_w.data(), w.loss.data(), &part));
    *sum += part;
    if (!dhf) continue;
    w.head_dh.resize(size_t(n * E));
    RW_RETURN_IF_ERROR(kernels::CrossEntropyBackward(ex, n, E, vocab, w.head_h.view(), Gemm(mx, H, head),
                                                     w.head_t.data(), w.head_w.data(), loss_scale,
                                                     w.head_dh.data(), H.G(head)));
    for (int64_t r = 0; r < n; ++r)
      std::copy_n(w.head_dh.data() + r * E, E, dhf + int64_t(w.head_rows[size_t(r)]) * E);
  }
  return Status::Ok();
}

// One layer's forward: x (S, E) in, x out; fills a's activations (the backward's inputs).
Status LayerForward(Transport& t, const ModelConfig& c, const ParamTable& tb, const ModelExec& mx, const Wts& P,
                    const RankBatch& b, int64_t l, std::vector<float>& x, LayerActs& a, Work& w) {
  const Dims d = DimsOf(c, int64_t(b.tokens.size()));
  const Exec ex = ExecOf(mx);
  const auto& L = tb.layers[l];
  a.x_in = x;
  a.rstd1.resize(d.S);
  a.h1.Resize(d.S * d.E, mx.precision);
  RW_RETURN_IF_ERROR(kernels::RmsNormForward(ex, d.S, d.E, x.data(), P.P(L.in_norm), c.rms_norm_eps, a.h1.view(),
                                             a.rstd1.data()));
  RW_RETURN_IF_ERROR(ProjectRotate(ex, mx, c, b, d.S, d.E, d.H, d.D, a.h1.view(), Gemm(mx, P, L.q), a.q, w.rot));
  RW_RETURN_IF_ERROR(ProjectRotate(ex, mx, c, b, d.S, d.E, d.HKV, d.D, a.h1.view(), Gemm(mx, P, L.k), a.k, w.rot));
  a.v.Resize(d.S * d.HKD, mx.precision);
  RW_RETURN_IF_ERROR(kernels::LinearForward(ex, d.S, d.E, d.HKD, a.h1.view(), Gemm(mx, P, L.v), a.v.view()));
  a.attn.resize(d.S * d.HQD);
  a.lse.resize(d.H * d.S);
  RankQkv sh{a.q.data(), a.k.data(), a.v.data(), b.index.data(), b.segments.data()};
  RingStats rs;
  RW_RETURN_IF_ERROR(RingAttentionForward(t, AttnConfig(c, mx, d.S, l, w), sh, a.attn.data(), a.lse.data(), &rs));
  AddStats(mx, rs);
  w.o.resize(d.S * d.E);
  RW_RETURN_IF_ERROR(kernels::LinearForward(ex, d.S, d.HQD, d.E, a.attn.data(), Gemm(mx, P, L.o), w.o.data()));
  RW_RETURN_IF_ERROR(kernels::AddInto(ex, d.S * d.E, w.o.data(), x.data()));
  a.x_mid = x;
  a.rstd2.resize(d.S);
  a.h2.Resize(d.S * d.E, mx.precision);
  RW_RETURN_IF_ERROR(kernels::RmsNormForward(ex, d.S, d.E, x.data(), P.P(L.post_norm), c.rms_norm_eps, a.h2.view(),
                                             a.rstd2.data()));
  RW_RETURN_IF_ERROR(kernels::FfnForward(ex, d.S, d.E, d.F, a.h2.view(),
                                         {Gemm(mx, P, L.gate), Gemm(mx, P, L.up), Gemm(mx, P, L.down)}, w.o.data()));
  return kernels::AddInto(ex, d.S * d.E, w.o.data(), x.data());
}

// The forward; keeps each layer's activations in w.acts when `keep` (only their inputs under remat).
// Leaves the final hidden state (pre-norm) in w.x.
Status RunForward(Transport& t, const ModelConfig& c, const ParamTable& tb, const ModelExec& mx, const float* P,
                  const RankBatch& b, Work& w, bool keep, KvCache* kv = nullptr) {
  RW_RETURN_IF_ERROR(CheckExec(mx));
  const Dims d = DimsOf(c, int64_t(b.tokens.size()));
  w.x.assign(d.S * d.E, 0.f);
  {
    Wts E;
    RW_RETURN_IF_ERROR(UnitOf(mx, P, nullptr, 0, false, &E));
    RW_RETURN_IF_ERROR(kernels::EmbeddingForward(ExecOf(mx), d.S, d.E, d.V, b.tokens.data(), E.P(tb.embed), w.x.data()));
  }
  if (keep && w.acts.size() != size_t(c.num_hidden_layers)) w.acts.resize(size_t(c.num_hidden_layers));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const bool whole = keep && !mx.remat_layers;
    LayerActs& a = whole ? w.acts[l] : w.scratch;
    if (keep && mx.remat_layers) w.acts[l].x_in = w.x;  // what the backward recomputes the layer from
    Wts W;
    RW_RETURN_IF_ERROR(UnitOf(mx, P, nullptr, int(1 + l), false, &W));
    RW_RETURN_IF_ERROR(LayerForward(t, c, tb, mx, W, b, l, w.x, a, w));
    if (kv) {
      kv->k[l] = a.k.f;
      kv->v[l] = a.v.f;
    }
  }
  return Status::Ok();
}

}  // namespace

Status Forward(Transport& t, const ModelConfig& c, const ParamTable& tb, const ModelExec& mx, const float* P,
               const RankBatch& b, double* loss_sum) {
  RW_RETURN_IF_ERROR(CheckBatch(c, b));
  const Dims d = DimsOf(c, int64_t(b.tokens.size()));
  const Exec ex = ExecOf(mx);
  WorkOf wo(mx);
  Work& w = *wo.w;
  RW_RETURN_IF_ERROR(RunForward(t, c, tb, mx, P, b, w, false));
  w.hf.Resize(d.S * d.E, mx.precision);
  w.rstd.resize(d.S);
  Wts H;
  RW_RETURN_IF_ERROR(UnitOf(mx, P, nullptr, int(c.num_hidden_layers + 1), false, &H));
  RW_RETURN_IF_ERROR(kernels::RmsNormForward(ex, d.S, d.E, w.x.data(), H.P(tb.final_norm), c.rms_norm_eps, w.hf.view(),
                                             w.rstd.data()));
  double sum = 0;
  RW_RETURN_IF_ERROR(LossHead(c, tb, mx, H, b, w, 0.f, nullptr, &sum));
  *loss_sum += sum;
  return Status::Ok();
}

Status Prefill(Transport& t, const ModelConfig& c, const ParamTable& tb, const ModelExec& mx, const float* P,
               const RankBatch& b, KvCache* cache, std::vector<float>* hidden) {
  RW_RETURN_IF_ERROR(CheckBatch(c, b));
  RW_REQUIRE(mx.precision == DType::kF32, "precision: ring decoding keeps an fp32 KV cache; prefill in f32");
  const Dims d = DimsOf(c, int64_t(b.tokens.size()));
  WorkOf wo(mx);
  Work& w = *wo.w;
  cache->k.assign(c.num_hidden_layers, {});
  cache->v.assign(c.num_hidden_layers, {});
  cache->index = b.index;
  cache->segments = b.segments;
  RW_RETURN_IF_ERROR(RunForward(t, c, tb, mx, P, b, w, false, cache));
  hidden->resize(d.S * d.E);
  w.rstd.resize(d.S);
  Wts H;
  RW_RETURN_IF_ERROR(UnitOf(mx, P, nullptr, int(c.num_hidden_layers + 1), false, &H));
  return kernels::RmsNormForward(ExecOf(mx), d.S, d.E, w.x.data(), H.P(tb.final_norm), c.rms_norm_eps, hidden->data(),
                                 w.rstd.data());
}

Status ForwardBackward(Transport& t, const ModelConfig& c, const ParamTable& tb, const ModelExec& mx, const float* P0,
                       const RankBatch& b, float loss_scale, float* G0, double* loss_sum) {
  RW_RETURN_IF_ERROR(CheckBatch(c, b));
  const Dims d = DimsOf(c, int64_t(b.tokens.size()));
  const Exec ex = ExecOf(mx);
  WorkOf wo(mx);
  Work& w = *wo.w;
  RW_RETURN_IF_ERROR(RunForward(t, c, tb, mx, P0, b, w, true));

  // Loss head: final norm, lm_head, cross-entropy (blockwise inside the kernel).
  w.hf.Resize(d.S * d.E, mx.precision);
  for (auto* v : {&w.dhf, &w.dx, &w.dh, &w.tmp}) v->resize(d.S * d.E);
  w.rstd.resize(d.S);
  w.dq.resize(d.S * d.HQD);
  w.dk.resize(d.S * d.HKD);
  w.dv.resize(d.S * d.HKD);
  float *const dhf = w.dhf.data(), *const dx = w.dx.data(), *const dh = w.dh.data(), *const tmp = w.tmp.data();
  const int head = int(c.num_hidden_layers + 1);
  Wts H;
  RW_RETURN_IF_ERROR(UnitOf(mx, P0, G0, head, true, &H));
  RW_RETURN_IF_ERROR(kernels::RmsNormForward(ex, d.S, d.E, w.x.data(), H.P(tb.final_norm), c.rms_norm_eps, w.hf.view(),
                                             w.rstd.data()));
  double sum = 0;
  RW_RETURN_IF_ERROR(LossHead(c, tb, mx, H, b, w, loss_scale, dhf, &sum));
  *loss_sum += sum;
  RW_RETURN_IF_ERROR(kernels::RmsNormBackward(ex, d.S, d.E, w.x.data(), H.P(tb.final_norm), w.rstd.data(), dhf, dx,
                                              H.G(tb.final_norm)));
  RW_RETURN_IF_ERROR(UnitDone(mx, head));

  for (int64_t l = c.num_hidden_layers - 1; l >= 0; --l) {
    const auto& L = tb.layers[l];
    LayerActs& a = mx.remat_layers ? w.scratch : w.acts[l];
    Wts P;
    RW_RETURN_IF_ERROR(UnitOf(mx, P0, G0, int(1 + l), true, &P));
    if (mx.remat_layers) {  // recompute this layer's activations from its input (same ops, same bits)
      w.x_again = w.acts[l].x_in;
      RW_RETURN_IF_ERROR(LayerForward(t, c, tb, mx, P, b, l, w.x_again, a, w));
    }
    // x_out = x_mid + mlp(norm2(x_mid))
    RW_RETURN_IF_ERROR(kernels::FfnBackward(ex, d.S, d.E, d.F, a.h2.view(),
                                            {Gemm(mx, P, L.gate), Gemm(mx, P, L.up), Gemm(mx, P, L.down)}, dx, dh,
                                            {P.G(L.gate), P.G(L.up), P.G(L.down)}));
    RW_RETURN_IF_ERROR(kernels::RmsNormBackward(ex, d.S, d.E, a.x_mid.data(), P.P(L.post_norm), a.rstd2.data(), dh,
                                                tmp, P.G(L.post_norm)));
    RW_RETURN_IF_ERROR(kernels::AddInto(ex, d.S * d.E, tmp, dx));  // dx is now d x_mid
    // x_mid = x_in + o_proj(attention(rope(q), rope(k), v))
    // The attention's dout, written straight in the activation dtype.
    w.d_attn_op.Resize(size_t(d.S * d.HQD), mx.precision);
    RW_RETURN_IF_ERROR(kernels::LinearBackward(ex, d.S, d.HQD, d.E, a.attn.data(), Gemm(mx, P, L.o), dx,
                                               w.d_attn_op.view(), P.G(L.o)));
    RankQkv sh{a.q.data(), a.k.data(), a.v.data(), b.index.data(), b.segments.data()};
    RingStats rs;
    RW_RETURN_IF_ERROR(RingAttentionBackward(t, AttnConfig(c, mx, d.S, l, w), sh, a.attn.data(), a.lse.data(),
                                             w.d_attn_op.data(), w.dq.data(), w.dk.data(), w.dv.data(), &rs));
    AddStats(mx, rs);
    RW_RETURN_IF_ERROR(kernels::Rope(ex, d.S, d.H, d.D, kernels::Dense3(w.dq.data(), d.H, d.D),
                                     kernels::Dense3(w.dq.data(), d.H, d.D), b.positions.data(), c.rope_theta, true));
    RW_RETURN_IF_ERROR(kernels::Rope(ex, d.S, d.HKV, d.D, kernels::Dense3(w.dk.data(), d.HKV, d.D),
                                     kernels::Dense3(w.dk.data(), d.HKV, d.D), b.positions.data(), c.rope_theta, true));
    RW_RETURN_IF_ERROR(kernels::LinearBackward(ex, d.S, d.E, d.HQD, a.h1.view(), Gemm(mx, P, L.q), w.dq.data(), dh,
                                               P.G(L.q)));
    RW_RETURN_IF_ERROR(kernels::LinearBackward(ex, d.S, d.E, d.HKD, a.h1.view(), Gemm(mx, P, L.k), w.dk.data(), tmp,
                                               P.G(L.k)));
    RW_RETURN_IF_ERROR(kernels::AddInto(ex, d.S * d.E, tmp, dh));
    RW_RETURN_IF_ERROR(kernels::LinearBackward(ex, d.S, d.E, d.HKD, a.h1.view(), Gemm(mx, P, L.v), w.dv.data(), tmp,
                                               P.G(L.v)));
    RW_RETURN_IF_ERROR(kernels::AddInto(ex, d.S * d.E, tmp, dh));
    const std::vector<float>& x_in = mx.remat_layers ? w.acts[l].x_in : a.x_in;
    RW_RETURN_IF_ERROR(kernels::RmsNormBackward(ex, d.S, d.E, x_in.data(), P.P(L.in_norm), a.rstd1.data(), dh, tmp,
                                                P.G(L.in_norm)));
    RW_RETURN_IF_ERROR(kernels::AddInto(ex, d.S * d.E, tmp, dx));  // dx is now d x_in
    RW_RETURN_IF_ERROR(UnitDone(mx, int(1 + l)));
  }
  // Embedding rows: a scatter-add in token order (deterministic).
  Wts E;
  RW_RETURN_IF_ERROR(UnitOf(mx, P0, G0, 0, true, &E));
  RW_RETURN_IF_ERROR(kernels::EmbeddingBackward(ex, d.S, d.E, d.V, b.tokens.data(), dx, E.G(tb.embed)));
  return UnitDone(mx, 0);
}

}  // namespace rw::runtime
