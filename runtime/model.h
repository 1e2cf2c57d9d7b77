// The LLaMA model over the ring (Hugging Face LlamaForCausalLM semantics and tensor names): embeddings,
// per layer RMSNorm -> q/k/v projections -> RoPE -> ring attention (GQA) -> o_proj -> residual ->
// RMSNorm -> SwiGLU MLP -> residual; final RMSNorm; lm_head (tied or not); cross-entropy with per-token
// weights, blockwise over tokens.
//
// Precision (ModelExec::precision): fp32, or bf16 mixed precision. What is in which precision, and why:
//   fp32 always: master weights, gradients (accumulated and all-reduced), the residual stream x and its
//     gradient, norm weights and statistics, RoPE (applied in fp32, then rounded), the attention output O
//     and lse (merged across ring hops in fp32), dQ/dK/dV, logits, softmax and loss.
//   bf16 under mixed precision: the GEMM weights (a copy of the master), the norm outputs that feed GEMMs,
//     q/k/v and the attention's dout, the FFN's and loss head's inner operands; every product accumulates
//     in fp32. Kept activations are bf16 where they are GEMM operands, so memory per token drops too.
//
// Every rank holds the whole (replicated) parameter vector and its shard of each sequence. A step's
// forward and backward run on the shard, attention crossing ranks through the ring; the parameter
// gradients are then summed over the ring in a fixed order (Transport::AllReduceSum), so a run with the
// same ring size and seed is bitwise reproducible.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/layers.h"
#include "runtime/transport.h"

namespace rw::runtime {

// The largest model a config may describe (parameters): 1e12, past anything a device holds today.
constexpr double kMaxParameters = 1e12;

struct ModelConfig {
  int64_t vocab_size = 259;
  int64_t hidden_size = 64;
  int64_t intermediate_size = 176;
  int64_t num_hidden_layers = 2;
  int64_t num_attention_heads = 4;
  int64_t num_key_value_heads = 2;
  double rope_theta = 10000.0;
  float rms_norm_eps = 1e-5f;
  bool tie_word_embeddings = false;
  int64_t max_position_embeddings = 4096;
  // LWM's second vocabulary (its VideoLLaMA: 8448 = 8192 VQGAN codes, end of frame 8192, end of vision
  // 8193, padding): > 0 gives the model a vision embedding table and a vision head beside the text ones.
  // Token ids are then one space: text ids [0, vocab_size), vision id v at vocab_size + v. A position whose
  // target is a vision id is scored by the vision head's softmax over the vision vocabulary only, a text
  // target by lm_head's over the text vocabulary only (LWM's two losses); inputs read the table of their id.
  // 0: one vocabulary (vision ids, if any, inside vocab_size; runtime/tokenizer.h's appended layout).
  int64_t vision_vocab_size = 0;
  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  // Every id the model embeds: text and vision.
  int64_t total_vocab() const { return vocab_size + vision_vocab_size; }
  // Names the offending field: e.g. "model.num_key_value_heads: 3 does not divide 4 attention heads".
  Status Validate() const;
};

// One tensor of the flat parameter vector.
struct ParamInfo {
  std::string name;  // Hugging Face name, e.g. model.layers.0.self_attn.q_proj.weight
  std::vector<int64_t> shape;
  size_t offset = 0, numel = 0;
};

// Where every tensor lives in the flat fp32 parameter (and gradient) vector.
class ParamTable {
 public:
  explicit ParamTable(const ModelConfig& c);
  const std::vector<ParamInfo>& tensors() const { return tensors_; }
  size_t total() const { return total_; }
  const ParamInfo* Find(const std::string& name) const;

  struct Layer {
    size_t in_norm, q, k, v, o, post_norm, gate, up, down;
  };
  size_t embed = 0, final_norm = 0, lm_head = 0;  // lm_head == embed when tied
  // With a vision vocabulary: its table right after the text one, its head right after lm_head (tied: the
  // table), so each pair reads as one (total_vocab, E) matrix. 0 without one.
  size_t vision_embed = 0, vision_head = 0;
  std::vector<Layer> layers;
  // The units weights are sharded and gathered by (ZeRO-3), each a contiguous range of the flat vector:
  // 0 the embedding, 1 + l layer l, L + 1 the head (final norm and, untied, lm_head).
  struct Range {
    size_t begin = 0, end = 0;
    size_t size() const { return end - begin; }
  };
  std::vector<Range> Units() const;

 private:
  size_t Add(const std::string& name, std::vector<int64_t> shape);
  std::vector<ParamInfo> tensors_;
  size_t total_ = 0;
};

// Hugging Face's initialization: weights ~ N(0, 0.02), norm weights 1. Deterministic in `seed`.
void InitParameters(const ModelConfig& c, const ParamTable& t, uint64_t seed, float* params);
// The same values, of the given ranges of the flat vector only (ascending, disjoint), one after another in
// `out`: the generator runs over the whole vector, the memory is the ranges' (a shard's initialization).
void InitParameterRanges(const ModelConfig& c, const ParamTable& t, uint64_t seed,
                         const std::vector<ParamTable::Range>& ranges, float* out);

// One rank's share of one packed sequence (all arrays of length S, in the layout's local order).
struct RankBatch {
  std::vector<int32_t> tokens;     // input ids
  std::vector<int32_t> targets;    // next token; -1 where nothing is predicted
  std::vector<float> weights;      // loss weight per token (0 where target < 0)
  std::vector<int64_t> positions;  // RoPE positions, restarting at each document
  std::vector<int32_t> segments;   // document id; -1 padding
  std::vector<int64_t> index;      // global token index (the layout's), for the causal mask
};

struct RingStats;

// A rank's working memory for the model: every layer's kept activations, the step's scratch buffers and
// the ring's (RingBuffers). Sized by the first step and reused by every later one (grown when a shape
// grows), so a rank that keeps one per job allocates nothing per layer or step. Not shared between threads.
class ModelWorkspace {
 public:
  ModelWorkspace();
  ~ModelWorkspace();
  ModelWorkspace(const ModelWorkspace&) = delete;
  ModelWorkspace& operator=(const ModelWorkspace&) = delete;
  struct Impl;
  Impl& impl() { return *impl_; }
  // Bytes held now (capacities), by part: the layers' kept activations (and the recomputed layer's), the
  // step's other buffers, the ring's (runtime/memory_plan.h predicts each from the shapes).
  struct Held {
    size_t activations = 0, workspace = 0, ring = 0;
  };
  Held Bytes() const;

 private:
  std::unique_ptr<Impl> impl_;
};

// Where the model reads a unit's weights and writes its gradients when the weights are sharded (ZeRO-3
// over fsdp; runtime/fsdp.h): the model asks for each unit (ParamTable::Units) just before it uses it, and
// says when the unit's gradient is complete. Offsets inside a unit are the table's minus unit.begin.
class UnitSource {
 public:
  struct Unit {
    const float* params = nullptr;            // the unit's fp32 weights, whole
    const kernels::bf16* compute = nullptr;   // their bf16 copy under mixed precision
    float* grads = nullptr;                   // a zeroed gradient buffer for the unit (when asked for)
    size_t begin = 0;                         // the unit's first table offset
  };
  virtual ~UnitSource() = default;
  virtual Status Acquire(int unit, bool with_grads, Unit* out) = 0;
  // The backward of `unit` is done: its gradient buffer holds this rank's contribution (added).
  virtual Status GradReady(int unit) = 0;
};

struct ModelExec {
  kernels::Device device = kernels::Device::kCpu;  // the rank's device: every op runs on its backend
  ModelWorkspace* workspace = nullptr;  // the rank's buffers, kept across steps; null: each call makes its own
  int num_threads = 1;         // kernel threads of this rank
  MsgTag tag;                  // job, epoch, step; tag.layer is the first layer's number, then + 1 per layer
  RingStats* stats = nullptr;  // when set, the ring attention calls add their compute and wall time here
  bool remat_layers = false;   // keep only each layer's input; recompute the rest in the backward
  // kF32: every operand fp32. kBF16 (mixed precision): GEMMs and attention read `compute_params`, the bf16
  // copy of the parameters (same offsets; the caller refreshes it after each optimizer step), and take bf16
  // activations; norms, softmax statistics, the loss, the residual stream and every gradient stay fp32.
  kernels::DType precision = kernels::DType::kF32;
  const kernels::bf16* compute_params = nullptr;
  // Sharded weights: when set, `params`, `grads` and compute_params are not read; each unit comes from here.
  UnitSource* units = nullptr;
};

// Forward and backward over this rank's shard. Adds loss_scale * d(sum_i w_i ce_i)/dparams to `grads`
// (not yet summed over the ring) and adds the rank's sum_i w_i ce_i to *loss_sum.
Status ForwardBackward(Transport& t, const ModelConfig& c, const ParamTable& table, const ModelExec& ex,
                       const float* params, const RankBatch& b, float loss_scale, float* grads, double* loss_sum);

// Forward only: adds the rank's sum_i w_i ce_i to *loss_sum (evaluation).
Status Forward(Transport& t, const ModelConfig& c, const ParamTable& table, const ModelExec& ex, const float* params,
               const RankBatch& b, double* loss_sum);

// A rank's share of a prompt's keys and values for decoding over the ring (the sharded KV cache): per layer
// the keys (after RoPE) and values of its rows, with each row's global position and segment.
struct KvCache {
  std::vector<std::vector<float>> k, v;  // per layer, (rows, Hkv, D)
  std::vector<int64_t> index;            // global position of each row
  std::vector<int32_t> segments;         // document id of each row; -1: padding (never attended)
};

// The prefill of ring inference: the forward over this rank's shard of a prompt, keeping every layer's keys
// and values in `cache` and the final hidden states (after the final norm) of its rows in `hidden` (S, E).
Status Prefill(Transport& t, const ModelConfig& c, const ParamTable& table, const ModelExec& ex, const float* params,
               const RankBatch& batch, KvCache* cache, std::vector<float>* hidden);

}  // namespace rw::runtime
