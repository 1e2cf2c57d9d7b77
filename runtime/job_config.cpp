#include "runtime/job_config.h"

#include <cmath>
#include <charconv>
#include <yaml-cpp/yaml.h>

#include <set>

#include <fstream>
#include <functional>
#include <sstream>
#include <variant>

#include "runtime/checkpoint.h"

namespace rw::runtime {
namespace {

// One setting: where it lives in a JobConfig (or a StageConfig) and what it means.
template <class Root>
struct Setting {
  const char* key;
  const char* doc;
  std::variant<std::function<int64_t&(Root&)>, std::function<double&(Root&)>, std::function<bool&(Root&)>,
               std::function<std::string&(Root&)>, std::function<float&(Root&)>, std::function<uint64_t&(Root&)>>
      field;
};

#define RW_FIELD(Root, T, expr) std::function<T&(Root&)>([](Root& j) -> T& { return expr; })

const std::vector<Setting<JobConfig>>& JobTable() {
  static const std::vector<Setting<JobConfig>> table = {
      {"name", "job name, used in logs and metrics", RW_FIELD(JobConfig, std::string, j.name)},
      {"seed", "seed of the initialization and of the data order", RW_FIELD(JobConfig, uint64_t, j.seed)},
      {"output_dir", "where metrics.jsonl goes", RW_FIELD(JobConfig, std::string, j.output_dir)},
      {"model.vocab_size", "vocabulary size (byte tokenizer: 259)", RW_FIELD(JobConfig, int64_t, j.model.vocab_size)},
      {"model.vision_vocab_size",
       "LWM's vision vocabulary (8448): a second embedding and head, vision ids after the text ones; 0: none",
       RW_FIELD(JobConfig, int64_t, j.model.vision_vocab_size)},
      {"model.hidden_size", "model width E", RW_FIELD(JobConfig, int64_t, j.model.hidden_size)},
      {"model.intermediate_size", "SwiGLU width F", RW_FIELD(JobConfig, int64_t, j.model.intermediate_size)},
      {"model.num_hidden_layers", "transformer layers", RW_FIELD(JobConfig, int64_t, j.model.num_hidden_layers)},
      {"model.num_attention_heads", "query heads", RW_FIELD(JobConfig, int64_t, j.model.num_attention_heads)},
      {"model.num_key_value_heads", "key/value heads (GQA)", RW_FIELD(JobConfig, int64_t, j.model.num_key_value_heads)},
      {"model.rope_theta", "RoPE base of the stages that do not set their own (init_from: config.json's)",
       RW_FIELD(JobConfig, double, j.model.rope_theta)},
      {"model.rms_norm_eps", "RMSNorm epsilon", RW_FIELD(JobConfig, float, j.model.rms_norm_eps)},
      {"model.tie_word_embeddings", "lm_head shares the embedding matrix",
       RW_FIELD(JobConfig, bool, j.model.tie_word_embeddings)},
      {"model.max_position_embeddings", "longest context the model is configured for",
       RW_FIELD(JobConfig, int64_t, j.model.max_position_embeddings)},
      {"data.source", "synthetic | files", RW_FIELD(JobConfig, std::string, j.data.source)},
      {"data.path", "files: the directory made by ringworld data prepare", RW_FIELD(JobConfig, std::string, j.data.path)},
      {"data.task", "synthetic task: copy | needle", RW_FIELD(JobConfig, std::string, j.data.task)},
      {"data.tokenizer", "synthetic: bytes | PATH of a SentencePiece .model (copied into every checkpoint)",
       RW_FIELD(JobConfig, std::string, j.data.tokenizer)},
      {"data.min_len", "copy: shortest string; needle: shortest document, in tokens",
       RW_FIELD(JobConfig, int64_t, j.data.min_len)},
      {"data.max_len", "copy: longest string; needle: longest document (capped at each stage's seq_len)",
       RW_FIELD(JobConfig, int64_t, j.data.max_len)},
      {"data.answer_weight", "needle: loss weight of the answer's tokens (other tokens weigh 1)",
       RW_FIELD(JobConfig, double, j.data.answer_weight)},
      {"loss.weighting", "per_token | per_modality", RW_FIELD(JobConfig, std::string, j.loss.weighting)},
      {"loss.text_weight", "per_modality: weight of the text mean", RW_FIELD(JobConfig, double, j.loss.text_weight)},
      {"loss.vision_weight", "per_modality: weight of the vision mean", RW_FIELD(JobConfig, double, j.loss.vision_weight)},
      {"remat", "none | layer (recompute each layer's forward in its backward: less memory, ~1/3 more compute)",
       RW_FIELD(JobConfig, std::string, j.remat)},
      {"precision", "fp32 | bf16 (mixed: fp32 master weights, optimizer and gradients; bf16 GEMM and attention "
                    "operands with fp32 accumulation; ring K/V blocks travel in bf16)",
       RW_FIELD(JobConfig, std::string, j.precision)},
      {"init_from", "Hugging Face LLaMA directory to start from (model settings must match it)",
       RW_FIELD(JobConfig, std::string, j.init_from)},
      {"optimizer.lr", "peak learning rate", RW_FIELD(JobConfig, double, j.optimizer.lr)},
      {"optimizer.min_lr_ratio", "cosine floor as a fraction of lr", RW_FIELD(JobConfig, double, j.optimizer.min_lr_ratio)},
      {"optimizer.warmup_steps", "linear warmup steps", RW_FIELD(JobConfig, int64_t, j.optimizer.warmup_steps)},
      {"optimizer.schedule", "cosine | constant", RW_FIELD(JobConfig, std::string, j.optimizer.schedule)},
      {"optimizer.beta1", "AdamW beta1", RW_FIELD(JobConfig, double, j.optimizer.beta1)},
      {"optimizer.beta2", "AdamW beta2", RW_FIELD(JobConfig, double, j.optimizer.beta2)},
      {"optimizer.eps", "AdamW epsilon", RW_FIELD(JobConfig, double, j.optimizer.eps)},
      {"optimizer.weight_decay", "decoupled weight decay on matrices", RW_FIELD(JobConfig, double, j.optimizer.weight_decay)},
      {"optimizer.grad_clip", "max global gradient norm (0: off)", RW_FIELD(JobConfig, double, j.optimizer.grad_clip)},
      {"optimizer.shard",
       "each ring member keeps AdamW's moments for 1/R of the parameters (ZeRO-1 over the ring): gradients are "
       "reduce-scattered, each rank updates its share, the weights all-gathered; checkpoints are unchanged",
       RW_FIELD(JobConfig, bool, j.optimizer.shard)},
      {"ring.devices", "devices of the job: dp x fsdp x sp ranks (see mesh.*); one ring of them by default", RW_FIELD(JobConfig, int64_t, j.ring.devices)},
      {"ring.min_devices", "fewest devices the job may shrink to", RW_FIELD(JobConfig, int64_t, j.ring.min_devices)},
      {"ring.layout", "contiguous | zigzag | striped", RW_FIELD(JobConfig, std::string, j.ring.layout)},
      {"ring.transport", "inproc | ucx", RW_FIELD(JobConfig, std::string, j.ring.transport)},
      {"ring.threads_per_device", "kernel threads per rank (0: cores / devices)",
       RW_FIELD(JobConfig, int64_t, j.ring.threads_per_device)},
      {"mesh.dp", "data-parallel replicas (each runs its share of the batch's sequences on its own sp ring)",
       RW_FIELD(JobConfig, int64_t, j.mesh.dp)},
      {"mesh.fsdp", "data-parallel ranks that shard the weights, their gradients and AdamW's moments (ZeRO-3; "
                    "optimizer.shard is then implied); every stage's batch a multiple of dp x fsdp",
       RW_FIELD(JobConfig, int64_t, j.mesh.fsdp)},
      {"mesh.sp", "ranks in a sequence ring (0: the stage's devices / (dp x fsdp))", RW_FIELD(JobConfig, int64_t, j.mesh.sp)},
      {"checkpoint.dir", "checkpoint directory (empty: none)", RW_FIELD(JobConfig, std::string, j.checkpoint.dir)},
      {"checkpoint.every_steps", "checkpoint period in steps (0: end and stage changes)",
       RW_FIELD(JobConfig, int64_t, j.checkpoint.every_steps)},
      {"checkpoint.keep", "checkpoints kept", RW_FIELD(JobConfig, int64_t, j.checkpoint.keep)},
      {"checkpoint.keep_every", "also keep every checkpoint whose step is a multiple of this (0: none)",
       RW_FIELD(JobConfig, int64_t, j.checkpoint.keep_every)},
      {"checkpoint.async", "write checkpoints in the background while training goes on",
       RW_FIELD(JobConfig, bool, j.checkpoint.async)},
  };
  return table;
}

const std::vector<Setting<StageConfig>>& StageTable() {
  static const std::vector<Setting<StageConfig>> table = {
      {"seq_len", "tokens per sequence", RW_FIELD(StageConfig, int64_t, j.seq_len)},
      {"rope_theta", "RoPE base of the stage (0: model.rope_theta)", RW_FIELD(StageConfig, double, j.rope_theta)},
      {"steps", "optimizer steps of the stage", RW_FIELD(StageConfig, int64_t, j.steps)},
      {"batch", "sequences per step", RW_FIELD(StageConfig, int64_t, j.batch)},
      {"devices", "ring size of the stage (0: ring.devices); a change re-forms the ring",
       RW_FIELD(StageConfig, int64_t, j.devices)},
  };
  return table;
}

// The key of a mapping entry as text: keys are plain scalars ({a: 1}: 2 or [x]: 1 is refused, not aborted on).
Status KeyText(const YAML::Node& key, const std::string& where, std::string* out) {
  RW_REQUIRE(key.IsScalar(), where << ": a key must be a plain name, not a list or a mapping");
  *out = key.Scalar();
  return Status::Ok();
}

// An integer exactly as written ("128.7", "1e3", "12abc" are not integers; yaml-cpp's as<int> read 128.7
// as 128) and within the type.
template <class T>
bool ParseInteger(const std::string& text, T* out) {
  const char* b = text.data();
  const char* e = b + text.size();
  if (b != e && *b == '+') ++b;
  const auto [end, ec] = std::from_chars(b, e, *out);
  return ec == std::errc() && end == e && b != e;
}

template <class Root>
Status Apply(const Setting<Root>& s, const YAML::Node& node, const std::string& key, Root& root) {
  RW_REQUIRE(node.IsScalar(), key << ": expected a single value");
  const std::string text = node.Scalar();
  try {
    bool ok = true;
    std::visit(
        [&](auto& get) {
          using T = std::decay_t<decltype(get(root))>;
          if constexpr (std::is_same_v<T, std::string>) {
            get(root) = text;
          } else if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
            ok = ParseInteger(text, &get(root));
          } else if constexpr (std::is_floating_point_v<T>) {
            get(root) = node.as<T>();
            ok = std::isfinite(get(root));
          } else {
            get(root) = node.as<T>();
          }
        },
        s.field);
    if (!ok) throw YAML::Exception(YAML::Mark::null_mark(), "not a value of the type");
  } catch (const YAML::Exception&) {
    const char* want = std::visit(
        [&](auto& get) -> const char* {
          using T = std::decay_t<decltype(get(root))>;
          if constexpr (std::is_same_v<T, bool>) return "true or false";
          if constexpr (std::is_integral_v<T>) return "an integer";
          return "a finite number";
        },
        s.field);
    return Status::Error(key + ": expected " + want + ", got '" + text + "'");
  }
  return Status::Ok();
}

template <class Root>
const Setting<Root>* Find(const std::vector<Setting<Root>>& table, const std::string& key) {
  for (const auto& s : table)
    if (key == s.key) return &s;
  return nullptr;
}

Status ApplyStage(const YAML::Node& map, const std::string& where, StageConfig& st) {
  RW_REQUIRE(map.IsMap(), where << ": expected a mapping of seq_len, rope_theta, steps, batch");
  for (const auto& kv : map) {
    std::string k;
    RW_RETURN_IF_ERROR(KeyText(kv.first, where, &k));
    const auto* s = Find(StageTable(), k);
    RW_REQUIRE(s, where << "." << k << ": unknown key (stage keys: seq_len, rope_theta, steps, batch, devices)");
    RW_RETURN_IF_ERROR(Apply(*s, kv.second, where + "." + k, st));
  }
  return Status::Ok();
}

Status ApplyOverride(const std::string& item, JobConfig* job) {
  const auto eq = item.find('=');
  RW_REQUIRE(eq != std::string::npos && eq > 0, "--set: '" << item << "' is not key=value");
  const std::string key = item.substr(0, eq);
  const std::string text = item.substr(eq + 1);
  YAML::Node value;
  try {
    value = text.empty() ? YAML::Node(std::string()) : YAML::Load(text);  // key= clears a string
  } catch (const YAML::Exception& e) {
    return Status::Error("--set " + key + ": cannot read the value '" + text + "': " + e.what());
  }
  if (key.rfind("stages.", 0) == 0) {  // stages.N.key
    const auto dot = key.find('.', 7);
    RW_REQUIRE(dot != std::string::npos, "--set " << key << ": stages are set as stages.N.key");
    size_t n = 0;
    try {
      n = std::stoul(key.substr(7, dot - 7));
    } catch (...) {
      return Status::Error("--set " + key + ": '" + key.substr(7, dot - 7) + "' is not a stage number");
    }
    RW_REQUIRE(n < job->stages.size(), "--set " << key << ": the job has " << job->stages.size() << " stages");
    const std::string sub = key.substr(dot + 1);
    const auto* s = Find(StageTable(), sub);
    RW_REQUIRE(s, "--set " << key << ": unknown stage key '" << sub << "'");
    return Apply(*s, value, key, job->stages[n]);
  }
  const auto* s = Find(JobTable(), key);
  RW_REQUIRE(s, "--set " << key << ": unknown key");
  return Apply(*s, value, key, *job);
}

}  // namespace

int64_t JobConfig::stage_end_step(size_t i) const {
  int64_t n = 0;
  for (size_t k = 0; k <= i && k < stages.size(); ++k) n += stages[k].steps;
  return n;
}

int64_t JobConfig::total_steps() const {
  int64_t n = 0;
  for (const auto& s : stages) n += s.steps;
  return n;
}

Status JobConfig::CheckStageRing(size_t i, int64_t devices) const {
  const std::string at = "stages[" + std::to_string(i) + "]";
  RW_REQUIRE(devices >= ring.min_devices, at << ".devices: " << devices << " is below ring.min_devices " << ring.min_devices);
  Mesh mesh;
  return StageMesh(i, devices, &mesh);
}

Status JobConfig::StageMesh(size_t i, int64_t devices, Mesh* out) const {
  const std::string at = "stages[" + std::to_string(i) + "]";
  LayoutKind kind;
  {
    Status st = ParseLayout(ring.layout, &kind);
    RW_REQUIRE(st.ok(), "ring." << st.message());
  }
  RW_REQUIRE(mesh.dp >= 1 && mesh.fsdp >= 1, "mesh: dp and fsdp must be >= 1, got dp " << mesh.dp << ", fsdp " << mesh.fsdp);
  RW_REQUIRE(devices >= 1 && devices % mesh.fsdp == 0,
             at << ".devices: " << devices << " devices do not divide into mesh.fsdp = " << mesh.fsdp << " shards");
  // The sp ring the stage has on its own devices; on fewer, dp gives way before sp does: the largest dp
  // that keeps an sp ring at least that long, else the longest sp ring there is.
  const int64_t sp_wanted = std::max<int64_t>(1, configured_devices(i) / (mesh.dp * mesh.fsdp));
  std::string why;
  auto valid = [&](int64_t dp) {
    if (devices % (dp * mesh.fsdp) != 0) return false;
    if (mesh.fsdp > 1 && stages[i].batch % (dp * mesh.fsdp) != 0) {  // the shards' collectives pair up per sequence
      if (why.empty())
        why = at + ".batch: " + std::to_string(stages[i].batch) + " sequences do not split evenly over " +
              std::to_string(dp * mesh.fsdp) + " data groups (dp " + std::to_string(dp) + " x fsdp " +
              std::to_string(mesh.fsdp) + "; with weights sharded every group runs as many)";
      return false;
    }
    const Mesh m{dp, mesh.fsdp, devices / (dp * mesh.fsdp)};
    Layout lay;
    Status st = Layout::Make(kind, stages[i].seq_len, int(m.sp), &lay);
    if (!st.ok() && why.empty())
      why = at + "." + st.message() + " (sp ring of " + std::to_string(m.sp) + " in mesh " + m.ToString() +
            ", ring.layout = " + ring.layout + ")";
    return st.ok();
  };
  const int64_t top = std::min(mesh.dp, devices / mesh.fsdp);
  for (int64_t dp = top; dp >= 1; --dp)
    if (devices / (dp * mesh.fsdp) >= sp_wanted && valid(dp)) {
      *out = Mesh{dp, mesh.fsdp, devices / (dp * mesh.fsdp)};
      return Status::Ok();
    }
  for (int64_t dp = 1; dp <= top; ++dp)
    if (valid(dp)) {
      *out = Mesh{dp, mesh.fsdp, devices / (dp * mesh.fsdp)};
      return Status::Ok();
    }
  return Status::Error(why.empty() ? at + ".devices: " + std::to_string(devices) + " devices make no mesh of fsdp " +
                                         std::to_string(mesh.fsdp)
                                   : why);
}

namespace {

// Well-formed UTF-8 without control characters: what a name in logs, metric labels and JSON must be.
bool PrintableUtf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    int n = c < 0x80 ? 0 : (c >> 5) == 0x6 ? 1 : (c >> 4) == 0xE ? 2 : (c >> 3) == 0x1E ? 3 : -1;
    if (n < 0 || (n == 0 && (c < 0x20 || c == 0x7F)) || (n == 1 && c < 0xC2) || i + n >= s.size() + (n == 0))
      return false;
    for (int k = 1; k <= n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += size_t(n) + 1;
  }
  return true;
}

}  // namespace

Status JobConfig::Validate() const {
  RW_REQUIRE(!name.empty(), "name: must not be empty");
  RW_REQUIRE(name.size() <= 200 && PrintableUtf8(name),
             "name: must be at most 200 bytes of UTF-8 text without control characters");
  RW_RETURN_IF_ERROR(model.Validate());
  int64_t data_vocab = 0;
  RW_RETURN_IF_ERROR(data.Validate(&data_vocab));
  RW_REQUIRE(data_vocab <= model.vocab_size, "model.vocab_size: " << model.vocab_size << " is smaller than the "
                                             "vocabulary of data.tokenizer " << data.tokenizer << " (" << data_vocab << ")");
  RW_RETURN_IF_ERROR(loss.Validate());
  RW_REQUIRE(remat == "none" || remat == "layer", "remat: '" << remat << "' is not none or layer");
  RW_REQUIRE(precision == "fp32" || precision == "bf16", "precision: '" << precision << "' is not fp32 or bf16");
  if (!init_from.empty()) {
    std::ifstream cfg(init_from + "/config.json");
    RW_REQUIRE(cfg.good(), "init_from: " << init_from << " has no config.json");
  }
  RW_RETURN_IF_ERROR(optimizer.Validate());
  RW_REQUIRE(ring.devices >= 1 && ring.devices <= 1024, "ring.devices: must be in [1, 1024], got " << ring.devices);
  RW_REQUIRE(ring.min_devices >= 1 && ring.min_devices <= ring.devices,
             "ring.min_devices: must be in [1, ring.devices = " << ring.devices << "], got " << ring.min_devices);
  LayoutKind kind;
  {
    Status st = ParseLayout(ring.layout, &kind);
    RW_REQUIRE(st.ok(), "ring." << st.message());
  }
  RW_REQUIRE(ring.transport == "inproc" || ring.transport == "ucx",
             "ring.transport: '" << ring.transport << "' is not inproc or ucx");
  RW_REQUIRE(ring.threads_per_device >= 0, "ring.threads_per_device: must be >= 0, got " << ring.threads_per_device);
  RW_REQUIRE(mesh.dp >= 1 && mesh.dp <= 1024, "mesh.dp: must be in [1, 1024], got " << mesh.dp);
  RW_REQUIRE(mesh.fsdp >= 1 && mesh.fsdp <= 1024, "mesh.fsdp: must be in [1, 1024], got " << mesh.fsdp);
  RW_REQUIRE(mesh.sp >= 0 && mesh.sp <= 1024, "mesh.sp: must be in [0, 1024] (0: the rest), got " << mesh.sp);
  RW_REQUIRE(ring.devices % (mesh.dp * mesh.fsdp) == 0,
             "mesh: dp " << mesh.dp << " x fsdp " << mesh.fsdp << " does not divide ring.devices = " << ring.devices);
  RW_REQUIRE(mesh.sp == 0 || mesh.dp * mesh.fsdp * mesh.sp == ring.devices,
             "mesh.sp: dp " << mesh.dp << " x fsdp " << mesh.fsdp << " x sp " << mesh.sp << " = "
                            << mesh.dp * mesh.fsdp * mesh.sp << ", not ring.devices = " << ring.devices);
  RW_REQUIRE(mesh.fsdp == 1 || !model.tie_word_embeddings,
             "mesh.fsdp: tied embeddings (model.tie_word_embeddings) are not sharded yet; use mesh.fsdp 1");
  RW_REQUIRE(!stages.empty(), "stages: a job needs at least one stage");
  for (size_t i = 0; i < stages.size(); ++i) {
    const auto& s = stages[i];
    const std::string at = "stages[" + std::to_string(i) + "]";
    RW_REQUIRE(s.seq_len >= 2, at << ".seq_len: must be >= 2, got " << s.seq_len);
    RW_REQUIRE(s.devices >= 0 && s.devices <= 1024, at << ".devices: must be in [0, 1024], got " << s.devices);
    RW_RETURN_IF_ERROR(CheckStageRing(i, stage_devices(i)));
    {  // the stage's own devices run on the mesh as configured (only a shrunk ring gives up dp)
      Mesh m;
      RW_RETURN_IF_ERROR(StageMesh(i, configured_devices(i), &m));
      RW_REQUIRE(m.dp == mesh.dp, at << ".devices: " << configured_devices(i) << " devices do not divide into mesh.dp "
                                     << mesh.dp << " x mesh.fsdp " << mesh.fsdp << " x an sp ring the layout splits "
                                     << s.seq_len << " tokens over");
    }
    RW_REQUIRE(s.seq_len <= model.max_position_embeddings,
               at << ".seq_len: " << s.seq_len << " exceeds model.max_position_embeddings " << model.max_position_embeddings);
    RW_REQUIRE(s.rope_theta == 0 || (std::isfinite(s.rope_theta) && s.rope_theta > 1),
               at << ".rope_theta: must be > 1 (or 0: model.rope_theta), got " << s.rope_theta);
    RW_REQUIRE(s.steps >= 1, at << ".steps: must be >= 1, got " << s.steps);
    RW_REQUIRE(s.batch >= 1, at << ".batch: must be >= 1, got " << s.batch);
    RW_REQUIRE(s.batch >= mesh.dp * mesh.fsdp, at << ".batch: " << s.batch << " sequences leave some of the mesh's "
                                                 << mesh.dp * mesh.fsdp << " data groups (dp x fsdp) without one");
    RW_REQUIRE(mesh.fsdp == 1 || s.batch % (mesh.dp * mesh.fsdp) == 0,
               at << ".batch: " << s.batch << " sequences do not split evenly over the mesh's " << mesh.dp * mesh.fsdp
                  << " data groups (with mesh.fsdp > 1 every group runs as many: the shards' collectives pair up)");
  }
  RW_REQUIRE(checkpoint.every_steps >= 0, "checkpoint.every_steps: must be >= 0, got " << checkpoint.every_steps);
  RW_REQUIRE(checkpoint.keep >= 1, "checkpoint.keep: must be >= 1, got " << checkpoint.keep);
  RW_REQUIRE(checkpoint.keep_every >= 0, "checkpoint.keep_every: must be >= 0, got " << checkpoint.keep_every);
  return Status::Ok();
}

Status AdoptModel(const ModelConfig& theirs, const std::string& dir, const std::function<bool(const std::string&)>& is_set,
                  ModelConfig* model) {
  ModelConfig m = *model;
  auto take = [&](const char* key, auto& mine, const auto& other) -> Status {
    if (is_set(std::string("model.") + key))
      RW_REQUIRE(mine == other, "init_from: " << dir << " has " << key << " = " << other << ", the job sets model."
                                              << key << " = " << mine << " (leave it out: it comes from config.json)");
    mine = other;
    return Status::Ok();
  };
  // A larger vocabulary extends theirs (LWM's vision tokens after LLaMA's text): their rows are loaded and
  // the new ones start from the initialization. A smaller one would drop trained rows: refused.
  const bool extends = is_set("model.vocab_size") && m.vocab_size > theirs.vocab_size;
  if (!extends) RW_RETURN_IF_ERROR(take("vocab_size", m.vocab_size, theirs.vocab_size));
  // So does a vision vocabulary (LWM's vision model from its text model): the new rows start initialized.
  const bool adds_vision = is_set("model.vision_vocab_size") && m.vision_vocab_size > theirs.vision_vocab_size;
  if (!adds_vision) RW_RETURN_IF_ERROR(take("vision_vocab_size", m.vision_vocab_size, theirs.vision_vocab_size));
  RW_RETURN_IF_ERROR(take("hidden_size", m.hidden_size, theirs.hidden_size));
  RW_RETURN_IF_ERROR(take("intermediate_size", m.intermediate_size, theirs.intermediate_size));
  RW_RETURN_IF_ERROR(take("num_hidden_layers", m.num_hidden_layers, theirs.num_hidden_layers));
  RW_RETURN_IF_ERROR(take("num_attention_heads", m.num_attention_heads, theirs.num_attention_heads));
  RW_RETURN_IF_ERROR(take("num_key_value_heads", m.num_key_value_heads, theirs.num_key_value_heads));
  RW_RETURN_IF_ERROR(take("rms_norm_eps", m.rms_norm_eps, theirs.rms_norm_eps));
  RW_RETURN_IF_ERROR(take("tie_word_embeddings", m.tie_word_embeddings, theirs.tie_word_embeddings));
  if (!is_set("model.max_position_embeddings")) m.max_position_embeddings = theirs.max_position_embeddings;
  if (!is_set("model.rope_theta")) m.rope_theta = theirs.rope_theta;
  *model = m;
  return Status::Ok();
}

namespace {

// The settings as written, with the keys the file and the overrides set (init_from takes the rest).
Status ParseFields(const std::string& yaml, const std::string& origin, const std::vector<std::string>& overrides,
                   JobConfig* out, std::set<std::string>* set_keys_out) {
  JobConfig job;
  std::set<std::string> set_keys;
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    return Status::Error(origin + ": not valid YAML: " + e.what());
  }
  RW_REQUIRE(root.IsMap(), origin << ": a job file is a mapping of settings");
  const std::vector<std::string> sections = {"model", "data", "loss", "optimizer", "ring", "mesh", "checkpoint"};
  for (const auto& kv : root) {
    std::string k;
    RW_RETURN_IF_ERROR(KeyText(kv.first, origin, &k));
    if (k == "stages") {
      RW_REQUIRE(kv.second.IsSequence(), origin << ": stages: expected a list of stages");
      for (size_t i = 0; i < kv.second.size(); ++i) {
        job.stages.emplace_back();
        RW_RETURN_IF_ERROR(ApplyStage(kv.second[i], origin + ": stages[" + std::to_string(i) + "]", job.stages.back()));
      }
      continue;
    }
    if (std::find(sections.begin(), sections.end(), k) != sections.end()) {
      RW_REQUIRE(kv.second.IsMap(), origin << ": " << k << ": expected a mapping");
      for (const auto& sub : kv.second) {
        std::string sub_key;
        RW_RETURN_IF_ERROR(KeyText(sub.first, origin + ": " + k, &sub_key));
        const std::string key = k + "." + sub_key;
        const auto* s = Find(JobTable(), key);
        RW_REQUIRE(s, origin << ": " << key << ": unknown key");
        set_keys.insert(key);
        Status st = Apply(*s, sub.second, key, job);
        RW_REQUIRE(st.ok(), origin << ": " << st.message());
      }
      continue;
    }
    const auto* s = Find(JobTable(), k);
    RW_REQUIRE(s, origin << ": " << k << ": unknown key");
    set_keys.insert(k);
    Status st = Apply(*s, kv.second, k, job);
    RW_REQUIRE(st.ok(), origin << ": " << st.message());
  }
  for (const auto& o : overrides) {
    RW_RETURN_IF_ERROR(ApplyOverride(o, &job));
    set_keys.insert(o.substr(0, o.find('=')));
  }
  *out = std::move(job);
  if (set_keys_out) *set_keys_out = std::move(set_keys);
  return Status::Ok();
}

}  // namespace

Status ParseJobFields(const std::string& yaml, const std::string& origin, const std::vector<std::string>& overrides,
                      JobConfig* out) {
  return ParseFields(yaml, origin, overrides, out, nullptr);
}

Status ParseJobConfig(const std::string& yaml, const std::string& origin, const std::vector<std::string>& overrides,
                      JobConfig* out) {
  JobConfig job;
  std::set<std::string> set_keys;
  RW_RETURN_IF_ERROR(ParseFields(yaml, origin, overrides, &job, &set_keys));
  if (!job.init_from.empty()) {
    ModelConfig theirs;
    Status st = ReadHfConfig(job.init_from + "/config.json", &theirs);
    RW_REQUIRE(st.ok(), origin << ": init_from: " << st.message());
    st = AdoptModel(theirs, job.init_from, [&](const std::string& k) { return set_keys.count(k) > 0; }, &job.model);
    RW_REQUIRE(st.ok(), origin << ": " << st.message());
  }
  Status st = job.Validate();
  RW_REQUIRE(st.ok(), origin << ": " << st.message());
  *out = std::move(job);
  return Status::Ok();
}

Status LoadJobConfig(const std::string& path, const std::vector<std::string>& overrides, JobConfig* out) {
  std::ifstream f(path);
  RW_REQUIRE(f.good(), path << ": cannot open the job file");
  std::stringstream ss;
  ss << f.rdbuf();
  return ParseJobConfig(ss.str(), path, overrides, out);
}

Status ApplyRingSizes(const std::vector<int64_t>& stage_devices, JobConfig* job) {
  if (stage_devices.empty()) return Status::Ok();
  RW_REQUIRE(stage_devices.size() == job->stages.size(), "the ring's plan has " << stage_devices.size()
                                                         << " stages, the job " << job->stages.size());
  for (size_t i = 0; i < stage_devices.size(); ++i) {
    if (stage_devices[i] == 0) continue;
    RW_RETURN_IF_ERROR(job->CheckStageRing(i, stage_devices[i]));
    job->planned_devices.resize(job->stages.size(), 0);
    job->planned_devices[i] = stage_devices[i];
  }
  return Status::Ok();
}

std::string DescribeSettings() {
  std::ostringstream os;
  for (const auto& s : JobTable()) os << "  " << s.key << "  " << s.doc << "\n";
  os << "  stages: a list; each stage has:\n";
  for (const auto& s : StageTable()) os << "    " << s.key << "  " << s.doc << "\n";
  return os.str();
}

}  // namespace rw::runtime
