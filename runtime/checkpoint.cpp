#include "runtime/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "runtime/crc32c.h"
#include "runtime/crash_point.h"
#include "runtime/json_fields.h"
#include "runtime/private_file.h"
#include "runtime/safetensors.h"
#include "runtime/tokenizer.h"

namespace rw::runtime {
namespace {

namespace fs = std::filesystem;

Status FileCrc(const fs::path& p, uint64_t* size, uint32_t* crc) {
  std::ifstream f(p, std::ios::binary);
  RW_REQUIRE(f.good(), p.string() << ": cannot read");
  std::vector<char> buf(1 << 20);
  uint32_t c = 0;
  uint64_t n = 0;
  while (f) {
    f.read(buf.data(), std::streamsize(buf.size()));
    const auto got = f.gcount();
    c = Crc32c(buf.data(), size_t(got), c);
    n += uint64_t(got);
  }
  *size = n;
  *crc = c;
  return Status::Ok();
}

// A float as the shortest decimal that reads back as it (1e-05, not 9.999999747378752e-06).
double ShortestDouble(float f) {
  char buf[32];
  for (int digits = 6; digits <= 9; ++digits) {
    std::snprintf(buf, sizeof(buf), "%.*g", digits, double(f));
    if (std::strtof(buf, nullptr) == f) break;
  }
  return std::strtod(buf, nullptr);
}

// A special token's id, or null where the tokenizer has none or the model's vocabulary does not hold it (a
// model trained on pre-tokenized ids of a smaller vocabulary).
nlohmann::json TokenId(const ModelConfig& c, int32_t id) {
  return id >= 0 && id < c.vocab_size ? nlohmann::json(id) : nlohmann::json();
}

std::string ConfigJson(const ModelConfig& c, const Tokenizer& tok) {
  nlohmann::ordered_json j = {{"architectures", {"LlamaForCausalLM"}},
                              {"model_type", "llama"},
                              {"hidden_act", "silu"},
                              {"hidden_size", c.hidden_size},
                              {"intermediate_size", c.intermediate_size},
                              {"num_hidden_layers", c.num_hidden_layers},
                              {"num_attention_heads", c.num_attention_heads},
                              {"num_key_value_heads", c.num_key_value_heads},
                              {"max_position_embeddings", c.max_position_embeddings},
                              {"rms_norm_eps", ShortestDouble(c.rms_norm_eps)},
                              {"rope_theta", c.rope_theta},
                              {"vocab_size", c.vocab_size},
                              {"tie_word_embeddings", c.tie_word_embeddings},
                              {"attention_bias", false},
                              {"mlp_bias", false},
                              {"bos_token_id", TokenId(c, tok.bos())},
                              {"eos_token_id", TokenId(c, tok.eos())},
                              {"torch_dtype", "float32"}};
  if (tok.name() == kNoTokenizer) j["ringworld_tokenizer"] = kNoTokenizer;  // trained on pre-tokenized ids
  // LWM's key (its VideoLLaMAConfig): a second vocabulary, model.vision_embed_tokens and vision_head.
  if (c.vision_vocab_size > 0) j["vision_vocab_size"] = c.vision_vocab_size;
  return j.dump(2) + "\n";
}

// What transformers' generate reads: the tokens that start and end a sequence.
std::string GenerationConfigJson(const ModelConfig& c, const Tokenizer& tok) {
  nlohmann::ordered_json j = {
      {"bos_token_id", TokenId(c, tok.bos())}, {"eos_token_id", TokenId(c, tok.eos())}, {"do_sample", false}};
  return j.dump(2) + "\n";
}

// Beside tokenizer.model: transformers' LlamaTokenizer, adding BOS and not EOS, as our generate encodes a
// prompt.
std::string TokenizerConfigJson(const ModelConfig& c, const Tokenizer& tok) {
  nlohmann::ordered_json j = {{"tokenizer_class", "LlamaTokenizer"},
                              {"bos_token", tok.bos() >= 0 ? nlohmann::json(tok.Piece(tok.bos())) : nlohmann::json()},
                              {"eos_token", tok.eos() >= 0 ? nlohmann::json(tok.Piece(tok.eos())) : nlohmann::json()},
                              {"unk_token", tok.unk() >= 0 ? nlohmann::json(tok.Piece(tok.unk())) : nlohmann::json()},
                              {"add_bos_token", tok.bos() >= 0},
                              {"add_eos_token", false},
                              {"model_max_length", c.max_position_embeddings}};
  return j.dump(2) + "\n";
}

std::vector<TensorRef> Refs(const ParamTable& t, const float* base, const std::string& prefix) {
  std::vector<TensorRef> out;
  for (const auto& p : t.tensors()) out.push_back({prefix + p.name, p.shape, base + p.offset});
  return out;
}

// step-N directories of `dir`, newest first.
std::vector<std::pair<int64_t, fs::path>> Checkpoints(const fs::path& dir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("step-", 0) != 0 || !e.is_directory()) continue;
    char* end = nullptr;
    const long long n = std::strtoll(name.c_str() + 5, &end, 10);
    if (end && *end == '\0') out.push_back({n, e.path()});
  }
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.first > b.first; });
  return out;
}

// The tensor of the file each parameter is read from (name -> shape in `tensors`), in the table's order; a
// missing or mis-shaped tensor is named, and so is one we would not read.
template <class T>
Status MatchTensors(const std::string& where, const std::map<std::string, T>& tensors, const ParamTable& t,
                    const std::string& prefix, std::vector<typename std::map<std::string, T>::const_iterator>* src) {
  std::set<std::string> used;
  src->clear();
  for (const auto& p : t.tensors()) {
    auto it = tensors.find(prefix + p.name);
    if (it == tensors.end() && p.name == "lm_head.weight") it = tensors.find(prefix + "model.embed_tokens.weight");
    RW_REQUIRE(it != tensors.end(), where << ": tensor " << prefix + p.name << " is missing");
    RW_REQUIRE(it->second.shape == p.shape, where << ": tensor " << prefix + p.name << " has the wrong shape");
    src->push_back(it);
    used.insert(it->first);
  }
  // A tensor we would not read is a model we do not implement (biases, extra norms): refused, not ignored.
  // Transformers drops the same two: the rotary tables older versions saved, and a tied model's lm_head.
  const bool tied = t.Find("lm_head.weight") == nullptr;
  for (const auto& [name, tensor] : tensors) {
    if (name.rfind(prefix, 0) != 0 || used.count(name)) continue;
    const std::string bare = name.substr(prefix.size());
    const bool rotary = bare.size() > 19 && bare.compare(bare.size() - 19, 19, "rotary_emb.inv_freq") == 0;
    RW_REQUIRE(rotary || (tied && bare == "lm_head.weight"),
               where << ": tensor " << name << " is not part of the model (a LLaMA without biases"
                     << (tied ? ", with tied embeddings" : "") << "); refusing to drop it");
  }
  return Status::Ok();
}

}  // namespace

namespace {

// The checkpoint's temporary directory (fresh) for step `step`.
Status MakeTempDir(const fs::path& root, int64_t step, fs::path* tmp) {
  std::error_code ec;
  fs::create_directories(root, ec);
  RW_REQUIRE(!ec, "checkpoint.dir: cannot create " << root.string() << ": " << ec.message());
  *tmp = root / (".tmp-step-" + std::to_string(step) + "-" + std::to_string(::getpid()));
  fs::remove_all(*tmp, ec);
  fs::create_directories(*tmp, ec);
  RW_REQUIRE(!ec, "checkpoint.dir: cannot create " << tmp->string() << ": " << ec.message());
  return Status::Ok();
}

// Everything after the weight files (which `tmp` holds, synced; `known` gives the size and CRC32C of those
// whose writers computed them): config, generation config, trainer state and tokenizer, the MANIFEST, the
// directory synced, the fence, the rename that commits, retention and leftovers.
Status CommitTempDir(const fs::path& root, const fs::path& tmp, const ModelConfig& c, const TrainerState& state,
                     const SaveOptions& opt, const std::map<std::string, std::pair<uint64_t, uint32_t>>& known,
                     std::string* path, int64_t* bytes) {
  std::error_code ec;
  std::unique_ptr<Tokenizer> byte_tok;
  const Tokenizer* tok = opt.tokenizer;
  if (!tok) {
    RW_RETURN_IF_ERROR(MakeTokenizer("bytes", &byte_tok));
    tok = byte_tok.get();
  }
  RW_RETURN_IF_ERROR(WriteSyncedText(tmp / "config.json", ConfigJson(c, *tok)));
  RW_RETURN_IF_ERROR(WriteSyncedText(tmp / "generation_config.json", GenerationConfigJson(c, *tok)));
  RW_CRASH_POINT("checkpoint.config_written");
  nlohmann::ordered_json st = {{"step", state.step},
                               {"stage", state.stage},
                               {"data_cursor", state.data_cursor},
                               {"data_cursor_unit", state.data_cursor_unit},
                               {"seed", state.seed},
                               {"job", state.job}};
  RW_RETURN_IF_ERROR(WriteSyncedText(tmp / "trainer_state.json", st.dump(2) + "\n"));
  RW_CRASH_POINT("checkpoint.trainer_state_written");
  if (const std::string model = tok->Serialized(); !model.empty()) {
    RW_RETURN_IF_ERROR(WriteSyncedText(tmp / kTokenizerFile, model));
    RW_RETURN_IF_ERROR(WriteSyncedText(tmp / "tokenizer_config.json", TokenizerConfigJson(c, *tok)));
    RW_CRASH_POINT("checkpoint.tokenizer_written");
  }
  std::ostringstream manifest;
  int64_t total_bytes = 0;
  for (const auto& [f, entry] : known) {
    manifest << f << " " << entry.first << " " << entry.second << "\n";
    total_bytes += int64_t(entry.first);
  }
  for (const char* f :
       {"model.safetensors", "optimizer.safetensors", "config.json", "generation_config.json", "trainer_state.json",
        kTokenizerFile, "tokenizer_config.json"}) {
    if (known.count(f) || !fs::exists(tmp / f)) continue;
    uint64_t size = 0;
    uint32_t crc = 0;
    RW_RETURN_IF_ERROR(FileCrc(tmp / f, &size, &crc));
    manifest << f << " " << size << " " << crc << "\n";
    total_bytes += int64_t(size);
  }
  RW_RETURN_IF_ERROR(WriteSyncedText(tmp / "MANIFEST", manifest.str()));
  RW_CRASH_POINT("checkpoint.manifest_written");
  RW_RETURN_IF_ERROR(FsyncPath(tmp, true));
  RW_CRASH_POINT("checkpoint.tmp_synced");
  if (opt.before_commit) {
    if (const Status gate = opt.before_commit(state.step); !gate.ok()) {
      fs::remove_all(tmp, ec);
      return Status::Error("checkpoint of step " + std::to_string(state.step) + " not committed: " + gate.message());
    }
  }
  const fs::path final_path = root / ("step-" + std::to_string(state.step));
  // The commit is one rename. A checkpoint of the same step from an earlier run (one that resumed from an
  // older checkpoint reaches the step again) is swapped out atomically, so a crash leaves one or the other;
  // the old one, now under the temporary name, goes with the leftovers. Where the file system cannot
  // exchange, it is removed first, and a crash between the two leaves neither (the run resumes from an
  // older checkpoint).
  bool exchanged = false;
  if (fs::exists(final_path, ec)) {
    exchanged = ::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_path.c_str(), RENAME_EXCHANGE) == 0;
    if (!exchanged) fs::remove_all(final_path, ec);
  }
  if (!exchanged) {
    fs::rename(tmp, final_path, ec);
    RW_REQUIRE(!ec, "checkpoint: cannot rename " << tmp.string() << " to " << final_path.string() << ": "
                                                  << ec.message());
  }
  RW_CRASH_POINT("checkpoint.renamed");
  RW_RETURN_IF_ERROR(FsyncPath(root, true));
  RW_CRASH_POINT("checkpoint.parent_synced");
  // Retention, and leftovers of interrupted writes (of this step or earlier: a later step's shards may be
  // being written by their ranks now).
  const auto all = Checkpoints(root);
  for (size_t i = size_t(std::max<int64_t>(opt.keep, 1)); i < all.size(); ++i)
    if (opt.keep_every <= 0 || all[i].first % opt.keep_every != 0) fs::remove_all(all[i].second, ec);
  CollectCheckpointLeftovers(root.string(), state.step);
  RW_CRASH_POINT("checkpoint.retention_done");
  if (path) *path = final_path.string();
  if (bytes) *bytes = total_bytes;
  return Status::Ok();
}

std::string ShardName(int k, int of) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "shard-%05d-of-%05d.safetensors", k, of);
  return buf;
}

// shard-KKKKK-of-FFFFF.safetensors -> k, of (false for any other name).
bool ParseShardName(const std::string& name, int* k, int* of) {
  int a = -1, b = -1, used = 0;
  if (std::sscanf(name.c_str(), "shard-%5d-of-%5d.safetensors%n", &a, &b, &used) != 2 ||
      used != int(name.size()) || a < 0 || b <= 0 || a >= b || name != ShardName(a, b))
    return false;
  *k = a;
  *of = b;
  return true;
}

}  // namespace

Status SaveCheckpoint(const std::string& dir, const ModelConfig& c, const ParamTable& t, const float* params,
                      const float* m, const float* v, const TrainerState& state, const SaveOptions& opt,
                      std::string* path, int64_t* bytes) {
  const fs::path root(dir);
  fs::path tmp;
  RW_RETURN_IF_ERROR(MakeTempDir(root, state.step, &tmp));
  RW_CRASH_POINT("checkpoint.tmp_created");
  RW_RETURN_IF_ERROR(WriteSafetensors((tmp / "model.safetensors").string(), Refs(t, params, ""), {{"format", "pt"}}));
  RW_CRASH_POINT("checkpoint.model_written");
  if (m && v) {
    auto refs = Refs(t, m, "exp_avg.");
    auto vs = Refs(t, v, "exp_avg_sq.");
    refs.insert(refs.end(), vs.begin(), vs.end());
    RW_RETURN_IF_ERROR(WriteSafetensors((tmp / "optimizer.safetensors").string(), refs));
    RW_CRASH_POINT("checkpoint.optimizer_written");
  }
  return CommitTempDir(root, tmp, c, state, opt, {}, path, bytes);
}

Status WriteCheckpointShard(const std::string& dir, int64_t step, int shard, int shards, size_t total,
                            const std::vector<ShardPiece>& pieces, ShardFile* out) {
  RW_REQUIRE(shard >= 0 && shard < shards && shards <= 99999, "checkpoint: shard " << shard << " of " << shards);
  std::error_code ec;
  fs::create_directories(dir, ec);
  RW_REQUIRE(!ec, "checkpoint.dir: cannot create " << dir << ": " << ec.message());
  std::vector<TensorRef> refs;
  for (const auto& [set, which] : {std::pair<const char*, int>{"weights@", 0}, {"exp_avg@", 1}, {"exp_avg_sq@", 2}})
    for (const ShardPiece& p : pieces) {
      RW_REQUIRE(p.lo + p.n <= total, "checkpoint: shard piece [" << p.lo << ", " << p.lo + p.n << ") of " << total);
      if (p.n == 0) continue;
      const float* data = which == 0 ? p.params : which == 1 ? p.m : p.v;
      RW_REQUIRE(data, "checkpoint: shard piece at " << p.lo << " has no " << set << " data");
      refs.push_back({set + std::to_string(p.lo), {int64_t(p.n)}, data});
    }
  // The name carries the step (leftovers are collected by step) and the writer, so that a ring that was
  // given up on and one that replaced it never write one file.
  std::ostringstream name;
  name << ".tmp-shard-" << step << "-" << shard << "-of-" << shards << "-" << ::getpid() << "-"
       << std::hex << (uint64_t(std::chrono::steady_clock::now().time_since_epoch().count()) & 0xffffffffu);
  const fs::path file = fs::path(dir) / name.str();
  RW_RETURN_IF_ERROR(WriteSafetensors(file.string(), refs,
                                      {{"format", "ringworld-shard"}, {"shard", std::to_string(shard)},
                                       {"shards", std::to_string(shards)}, {"parameters", std::to_string(total)}}));
  RW_CRASH_POINT("sharded_checkpoint.shard_written");
  out->file = name.str();
  return FileCrc(file, &out->bytes, &out->crc);
}

Status CommitShardedCheckpoint(const std::string& dir, const ModelConfig& c, const std::vector<ShardFile>& files,
                               const TrainerState& state, const SaveOptions& opt, std::string* path, int64_t* bytes) {
  const fs::path root(dir);
  std::error_code ec;
  auto drop_shards = [&] {
    for (const auto& f : files) fs::remove(root / f.file, ec);
  };
  fs::path tmp;
  if (Status st = MakeTempDir(root, state.step, &tmp); !st.ok()) {
    drop_shards();
    return st;
  }
  RW_CRASH_POINT("checkpoint.tmp_created");
  std::map<std::string, std::pair<uint64_t, uint32_t>> known;
  for (size_t k = 0; k < files.size(); ++k) {
    const std::string name = ShardName(int(k), int(files.size()));
    fs::rename(root / files[k].file, tmp / name, ec);
    if (ec) {
      const std::string why = ec.message();
      drop_shards();
      fs::remove_all(tmp, ec);
      return Status::Error("checkpoint: cannot move " + (root / files[k].file).string() + " into " + tmp.string() +
                           ": " + why);
    }
    known[name] = {files[k].bytes, files[k].crc};
  }
  RW_CRASH_POINT("sharded_checkpoint.shards_moved");
  return CommitTempDir(root, tmp, c, state, opt, known, path, bytes);
}

Status CheckpointTokenizer(const std::string& ckpt_dir, const ModelConfig& c, std::unique_ptr<Tokenizer>* out) {
  RW_RETURN_IF_ERROR(DirectoryTokenizer(ckpt_dir, out));
  RW_REQUIRE(c.vocab_size >= (*out)->vocab_size(), ckpt_dir << ": the model's vocabulary (" << c.vocab_size
                                                   << ") is smaller than its tokenizer's (" << (*out)->name() << ": "
                                                   << (*out)->vocab_size() << ")");
  return Status::Ok();
}

int CollectCheckpointLeftovers(const std::string& dir, int64_t max_step) {
  std::error_code ec;
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(".tmp-", 0) != 0) continue;
    if (max_step >= 0) {  // .tmp-step-N-... or .tmp-shard-N-...: only those of steps <= max_step
      const size_t dash = name.find('-', 5);
      const long long step = dash == std::string::npos ? -1 : std::strtoll(name.c_str() + dash + 1, nullptr, 10);
      if (step > max_step) continue;
    }
    n += fs::remove_all(e.path(), ec) > 0;
  }
  return n;
}

std::vector<std::pair<int64_t, std::string>> ListCheckpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  for (const auto& [step, path] : Checkpoints(dir)) out.push_back({step, path.string()});
  return out;
}

namespace {

// MANIFEST: one line per file, "<name> <bytes> <CRC32C>".
using Manifest = std::map<std::string, std::pair<uint64_t, uint32_t>>;

Status ReadManifest(const fs::path& d, Manifest* out) {
  const std::string where = (d / "MANIFEST").string();
  std::ifstream f(d / "MANIFEST");
  RW_REQUIRE(f.good(), d.string() << ": no MANIFEST (an incomplete checkpoint)");
  out->clear();
  std::string line;
  for (int n = 1; std::getline(f, line); ++n) {
    if (line.empty()) continue;
    std::istringstream in(line);
    std::string file, rest;
    uint64_t size = 0;
    uint32_t crc = 0;
    RW_REQUIRE(in >> file >> size >> crc && !(in >> rest), where << ": line " << n << " is not \"<file> <bytes> <crc32c>\"");
    // Only plain names: a manifest must not make a reader open files outside its checkpoint.
    RW_REQUIRE(file.find('/') == std::string::npos && file != "." && file != "..",
               where << ": line " << n << " names " << file << ", which is not a file of the checkpoint");
    RW_REQUIRE(out->emplace(file, std::make_pair(size, crc)).second, where << ": lists " << file << " twice");
  }
  RW_REQUIRE(!out->empty(), d.string() << ": empty MANIFEST");
  return Status::Ok();
}

// One file of a checkpoint against its MANIFEST line (a file it does not list was not written with it).
Status CheckListed(const fs::path& d, const Manifest& m, const std::string& file) {
  const auto it = m.find(file);
  RW_REQUIRE(it != m.end(), d.string() << ": MANIFEST does not list " << file);
  uint64_t got_size = 0;
  uint32_t got_crc = 0;
  RW_RETURN_IF_ERROR(FileCrc(d / file, &got_size, &got_crc));
  RW_REQUIRE(got_size == it->second.first,
             d.string() << "/" << file << ": " << got_size << " bytes, MANIFEST says " << it->second.first);
  RW_REQUIRE(got_crc == it->second.second,
             d.string() << "/" << file << ": CRC32C mismatch (corrupt, or edited since the checkpoint was written; "
                           "one edited on purpose loads once its MANIFEST is removed)");
  return Status::Ok();
}

// The weight files LoadWeights reads: model.safetensors; or the index and the files it names; or our shard
// files (every shard-K-of-F.safetensors of the directory).
Status WeightFiles(const fs::path& dir, std::vector<std::string>* files) {
  files->clear();
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::exists(dir / "model.safetensors")) {
    files->push_back("model.safetensors");
    return Status::Ok();
  }
  if (!fs::exists(index)) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      int k = 0, of = 0;
      if (ParseShardName(e.path().filename().string(), &k, &of)) files->push_back(e.path().filename().string());
    }
    std::sort(files->begin(), files->end());
    RW_REQUIRE(!files->empty(), dir.string() << ": no weights (model.safetensors, model.safetensors.index.json or "
                                                 "shard-*-of-*.safetensors)");
    return Status::Ok();
  }
  files->push_back("model.safetensors.index.json");
  try {
    std::ifstream f(index);
    const auto j = nlohmann::json::parse(f);
    std::set<std::string> shards;
    for (const auto& [name, file] : j.at("weight_map").items()) shards.insert(file.get<std::string>());
    for (const auto& s : shards) {
      RW_REQUIRE(s.find('/') == std::string::npos && s != "." && s != "..",
                 index.string() << ": weight_map names " << s << ", which is not a file of the checkpoint");
      files->push_back(s);
    }
  } catch (const nlohmann::json::exception& e) {
    return Status::Error(index.string() + ": " + e.what());
  }
  return Status::Ok();
}

// A tensor of one of a directory's files, as MatchTensors sees it.
struct Located {
  std::vector<int64_t> shape;
  std::string file;
  TensorInfo info;
};

Status LoadWeightsUnverified(const fs::path& dir, const ParamTable& t, float* params) {
  CheckpointReader r;
  RW_RETURN_IF_ERROR(CheckpointReader::Open(dir.string(), t, &r, /*with_moments=*/false));
  return r.Read("", 0, t.total(), params);
}

}  // namespace

Status VerifyCheckpoint(const std::string& ckpt_dir) {
  const fs::path d(ckpt_dir);
  Manifest m;
  RW_RETURN_IF_ERROR(ReadManifest(d, &m));
  for (const auto& [file, entry] : m) RW_RETURN_IF_ERROR(CheckListed(d, m, file));
  // What a resume reads must be in it; the optional files too, when the checkpoint has them.
  for (const char* f : {"config.json", "trainer_state.json"})
    RW_REQUIRE(m.count(f), ckpt_dir << ": MANIFEST does not list " << f << " (not a checkpoint of ours, or damaged)");
  // The weights: model.safetensors, or every shard file of one sharding.
  int shards = 0;
  std::set<int> listed;
  for (const auto& [file, entry] : m) {
    int k = 0, of = 0;
    if (!ParseShardName(file, &k, &of)) continue;
    RW_REQUIRE(shards == 0 || shards == of, ckpt_dir << ": MANIFEST lists shard files of " << shards << " and of " << of
                                                     << " shards");
    shards = of;
    listed.insert(k);
  }
  if (shards > 0)
    RW_REQUIRE(int(listed.size()) == shards, ckpt_dir << ": MANIFEST lists " << listed.size() << " of the " << shards
                                                      << " shard files (a damaged checkpoint)");
  else
    RW_REQUIRE(m.count("model.safetensors"),
               ckpt_dir << ": MANIFEST does not list model.safetensors (not a checkpoint of ours, or damaged)");
  for (const char* f : {"optimizer.safetensors", kTokenizerFile})
    RW_REQUIRE(m.count(f) || !fs::exists(d / f), ckpt_dir << ": has " << f << ", which its MANIFEST does not list");
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(d, ec)) {
    int k = 0, of = 0;
    const std::string f = e.path().filename().string();
    RW_REQUIRE(!ParseShardName(f, &k, &of) || m.count(f), ckpt_dir << ": has " << f << ", which its MANIFEST does not list");
  }
  return Status::Ok();
}

Status NewestVerifiedCheckpoint(std::vector<std::pair<int64_t, std::string>> candidates, int64_t* step,
                                std::string* path, std::vector<std::string>* skipped) {
  *step = 0;
  path->clear();
  if (candidates.empty()) return Status::Ok();
  std::sort(candidates.begin(), candidates.end(), [](auto& a, auto& b) { return a.first > b.first; });
  std::string why;
  for (const auto& [s, p] : candidates) {
    const Status st = VerifyCheckpoint(p);
    if (st.ok()) {
      *step = s;
      *path = p;
      return Status::Ok();
    }
    if (skipped) skipped->push_back(st.message());
    if (why.empty()) why = st.message();
  }
  return Status::Error("every checkpoint of the run (" + std::to_string(candidates.size()) +
                       ", newest step " + std::to_string(candidates.front().first) + ") fails verification; newest: " +
                       why + ". Nothing was resumed or overwritten: repair or move them, or train into a fresh "
                             "checkpoint.dir");
}

Status FindResumeCheckpoint(const std::string& dir, int64_t max_step, int64_t* step, std::string* path,
                            std::vector<std::string>* skipped) {
  std::vector<std::pair<int64_t, std::string>> candidates;
  if (!dir.empty())
    for (const auto& [s, p] : Checkpoints(dir))
      if (max_step < 0 || s <= max_step) candidates.push_back({s, p.string()});  // unrecorded: it does not exist
  const Status st = NewestVerifiedCheckpoint(std::move(candidates), step, path, skipped);
  RW_REQUIRE(st.ok(), "checkpoint.dir " << dir << ": " << st.message());
  return Status::Ok();
}

Status ReadHfConfig(const std::string& path, ModelConfig* out) {
  nlohmann::json j;
  RW_RETURN_IF_ERROR(ReadJsonFile(path, &j));
  ModelConfig c;
  const std::string where = path + ": ";
  // Each key read with its type checked, so that an error names the key (not only the file).
  auto has = [&](const nlohmann::json& o, const char* key) { return o.is_object() && o.contains(key) && !o[key].is_null(); };
  auto integer = [&](const char* key, int64_t fallback, int64_t* v) -> Status {
    if (!has(j, key)) {
      RW_REQUIRE(fallback >= 0, where << key << ": missing");
      *v = fallback;
      return Status::Ok();
    }
    RW_REQUIRE(j[key].is_number_integer(), where << key << ": expected an integer, got " << j[key].dump());
    *v = j[key].get<int64_t>();
    return Status::Ok();
  };
  auto number = [&](const nlohmann::json& o, const std::string& name, const char* key, double* v) -> Status {
    RW_REQUIRE(o[key].is_number(), where << name << ": expected a number, got " << o[key].dump());
    *v = o[key].get<double>();
    return Status::Ok();
  };
  auto text = [&](const nlohmann::json& o, const std::string& name, const char* key, std::string* v) -> Status {
    RW_REQUIRE(o[key].is_string(), where << name << ": expected a string, got " << o[key].dump());
    *v = o[key].get<std::string>();
    return Status::Ok();
  };
  auto boolean = [&](const char* key, bool* v) -> Status {
    if (!has(j, key)) return Status::Ok();
    RW_REQUIRE(j[key].is_boolean(), where << key << ": expected true or false, got " << j[key].dump());
    *v = j[key].get<bool>();
    return Status::Ok();
  };
  try {
    RW_REQUIRE(j.is_object(), where << "expected a JSON object");
    if (has(j, "model_type")) {
      std::string type;
      RW_RETURN_IF_ERROR(text(j, "model_type", "model_type", &type));
      RW_REQUIRE(type == "llama", where << "model_type: '" << type << "' is not llama");
    }
    RW_RETURN_IF_ERROR(integer("vocab_size", -1, &c.vocab_size));
    RW_RETURN_IF_ERROR(integer("vision_vocab_size", 0, &c.vision_vocab_size));
    RW_RETURN_IF_ERROR(integer("hidden_size", -1, &c.hidden_size));
    RW_RETURN_IF_ERROR(integer("intermediate_size", -1, &c.intermediate_size));
    RW_RETURN_IF_ERROR(integer("num_hidden_layers", -1, &c.num_hidden_layers));
    RW_RETURN_IF_ERROR(integer("num_attention_heads", -1, &c.num_attention_heads));
    RW_RETURN_IF_ERROR(integer("num_key_value_heads", c.num_attention_heads, &c.num_key_value_heads));
    RW_RETURN_IF_ERROR(integer("max_position_embeddings", 2048, &c.max_position_embeddings));
    // RoPE: transformers 4.x writes rope_theta and rope_scaling at the top, 5.x a rope_parameters mapping.
    for (const char* key : {"rope_parameters", "rope_scaling"})
      RW_REQUIRE(!has(j, key) || j[key].is_object(), where << key << ": expected a mapping, got " << j[key].dump());
    double top = 0, inner = 0;
    if (has(j, "rope_theta")) RW_RETURN_IF_ERROR(number(j, "rope_theta", "rope_theta", &top));
    if (has(j, "rope_parameters") && has(j["rope_parameters"], "rope_theta"))
      RW_RETURN_IF_ERROR(number(j["rope_parameters"], "rope_parameters.rope_theta", "rope_theta", &inner));
    RW_REQUIRE(top == 0 || inner == 0 || top == inner,
               where << "rope_theta: " << top << " differs from rope_parameters.rope_theta " << inner);
    c.rope_theta = inner != 0 ? inner : top != 0 ? top : 10000.0;
    for (const char* key : {"rope_parameters", "rope_scaling"}) {
      if (!has(j, key)) continue;
      const nlohmann::json& r = j[key];
      std::string type = "default";
      for (const char* tk : {"rope_type", "type"})
        if (has(r, tk)) RW_RETURN_IF_ERROR(text(r, std::string(key) + "." + tk, tk, &type));
      RW_REQUIRE(type == "default", where << key << ".rope_type: '" << type
                                          << "' is not supported (RingWorld's LLaMA has the default RoPE only; no scaling)");
      for (const auto& [k, v] : r.items()) {
        RW_REQUIRE(k == "rope_type" || k == "type" || k == "rope_theta",
                   where << key << "." << k << ": not supported with the default RoPE");
        if (k == "rope_theta" && std::string(key) == "rope_scaling") {
          double t = 0;
          RW_RETURN_IF_ERROR(number(r, "rope_scaling.rope_theta", "rope_theta", &t));
          RW_REQUIRE(t == c.rope_theta, where << "rope_scaling.rope_theta: " << t << " differs from " << c.rope_theta);
        }
      }
    }
    if (has(j, "rms_norm_eps")) {
      double eps = 0;
      RW_RETURN_IF_ERROR(number(j, "rms_norm_eps", "rms_norm_eps", &eps));
      c.rms_norm_eps = float(eps);
    } else {
      c.rms_norm_eps = 1e-6f;  // transformers' LlamaConfig default
    }
    RW_RETURN_IF_ERROR(boolean("tie_word_embeddings", &c.tie_word_embeddings));
    if (has(j, "head_dim")) {
      int64_t hd = 0;
      RW_RETURN_IF_ERROR(integer("head_dim", -1, &hd));
      RW_REQUIRE(hd == c.head_dim(), where << "head_dim: " << hd << " differs from hidden_size / heads");
    }
    // What a LLaMA may say that we do not implement: refused by name rather than computed wrongly.
    for (const char* key : {"attention_bias", "mlp_bias"}) {
      bool on = false;
      RW_RETURN_IF_ERROR(boolean(key, &on));
      RW_REQUIRE(!on, where << key << ": true is not supported (RingWorld's LLaMA has no biases)");
    }
    if (has(j, "hidden_act")) {
      std::string act;
      RW_RETURN_IF_ERROR(text(j, "hidden_act", "hidden_act", &act));
      RW_REQUIRE(act == "silu", where << "hidden_act: '" << act << "' is not supported (RingWorld's LLaMA is SwiGLU with silu)");
    }
    for (const char* key : {"sliding_window", "layer_types", "num_experts", "num_local_experts"})
      RW_REQUIRE(!has(j, key), where << key << ": not supported (RingWorld's LLaMA has full causal attention and a dense MLP)");
    for (const char* key : {"attention_dropout", "hidden_dropout"}) {
      double p = 0;
      if (has(j, key)) RW_RETURN_IF_ERROR(number(j, key, key, &p));
      RW_REQUIRE(p == 0, where << key << ": " << p << " is not supported (RingWorld's LLaMA has no dropout)");
    }
  } catch (const nlohmann::json::exception& e) {
    return Status::Error(where + e.what());
  }
  Status st = c.Validate();
  RW_REQUIRE(st.ok(), where << st.message());
  *out = c;
  return Status::Ok();
}

Status LoadWeights(const std::string& ckpt_dir, const ParamTable& t, float* params) {
  const fs::path dir(ckpt_dir);
  // A checkpoint with a MANIFEST (ours) is read only when what is read matches it: a flipped bit in the
  // weights is an error here, not a model that generates nonsense. Others (transformers' own) have none.
  if (fs::exists(dir / "MANIFEST")) {
    Manifest m;
    RW_RETURN_IF_ERROR(ReadManifest(dir, &m));
    std::vector<std::string> files;
    RW_RETURN_IF_ERROR(WeightFiles(dir, &files));
    files.push_back("config.json");
    for (const auto& f : files) RW_RETURN_IF_ERROR(CheckListed(dir, m, f));
  }
  return LoadWeightsUnverified(dir, t, params);
}

Status LoadCheckpoint(const std::string& ckpt_dir, const ParamTable& t, float* params, float* m, float* v,
                      TrainerState* state, MomentRange range) {
  CheckpointReader r;
  RW_RETURN_IF_ERROR(CheckpointReader::Open(ckpt_dir, t, &r));
  RW_RETURN_IF_ERROR(r.Read("", 0, t.total(), params));
  if (m && v) {  // read tensor by tensor, only the range's bytes (never the whole file at once)
    const size_t lo = std::min(range.lo, t.total()), hi = std::max(lo, std::min(range.hi, t.total()));
    RW_RETURN_IF_ERROR(r.Read("exp_avg.", lo, hi, m));
    RW_RETURN_IF_ERROR(r.Read("exp_avg_sq.", lo, hi, v));
  }
  return ReadTrainerState(ckpt_dir, state);
}

Status ReadTrainerState(const std::string& ckpt_dir, TrainerState* state) {
  const fs::path path(ckpt_dir);
  try {
    std::ifstream f(path / "trainer_state.json");
    const auto j = nlohmann::json::parse(f);
    const std::string where = path.string() + "/trainer_state.json: ";
    RW_RETURN_IF_ERROR(JsonInteger(j.at("step"), where + "step", 0, INT64_MAX, &state->step));
    RW_RETURN_IF_ERROR(JsonInteger(j.at("stage"), where + "stage", 0, INT64_MAX, &state->stage));
    RW_RETURN_IF_ERROR(JsonInteger(j.at("data_cursor"), where + "data_cursor", 0, INT64_MAX, &state->data_cursor));
    state->data_cursor_unit = j.value("data_cursor_unit", std::string("step"));
    RW_RETURN_IF_ERROR(JsonUnsigned(j.at("seed"), where + "seed", &state->seed));
    state->job = j.at("job").get<std::string>();
  } catch (const std::exception& e) {
    return Status::Error(path.string() + "/trainer_state.json: " + e.what());
  }
  return Status::Ok();
}

Status CheckpointReader::Open(const std::string& dir, const ParamTable& t, CheckpointReader* out, bool with_moments) {
  const fs::path d(dir);
  CheckpointReader r;
  r.dir_ = dir;
  r.total_ = t.total();
  std::vector<std::string> files;
  RW_RETURN_IF_ERROR(WeightFiles(d, &files));
  int k = 0, shards = 0;
  if (ParseShardName(files[0], &k, &shards)) {  // ours, sharded: pieces of the flat vectors
    r.sharded_ = true;
    std::set<int> seen;
    for (const auto& f : files) {
      int fk = 0, of = 0;
      ParseShardName(f, &fk, &of);
      RW_REQUIRE(of == shards, dir << ": shard files of " << shards << " and of " << of << " shards");
      seen.insert(fk);
      std::map<std::string, TensorInfo> header;
      const std::string path = (d / f).string();
      RW_RETURN_IF_ERROR(ReadSafetensorsHeader(path, &header));
      for (const auto& [name, info] : header) {
        const size_t at = name.find('@');
        const std::string set = name.substr(0, at);
        const char* prefix = set == "weights" ? "" : set == "exp_avg" ? "exp_avg." : set == "exp_avg_sq" ? "exp_avg_sq." : nullptr;
        char* end = nullptr;
        const unsigned long long lo = at == std::string::npos ? 0 : std::strtoull(name.c_str() + at + 1, &end, 10);
        RW_REQUIRE(prefix && at != std::string::npos && end && *end == '\0' && end != name.c_str() + at + 1,
                   path << ": tensor " << name << " is not a piece of a sharded checkpoint (weights@N, exp_avg@N, "
                        << "exp_avg_sq@N)");
        RW_REQUIRE(info.shape.size() == 1 && info.numel > 0 && lo < r.total_ && info.numel <= r.total_ - lo,
                   path << ": tensor " << name << " of " << info.numel << " elements does not fit the model's "
                        << r.total_ << " parameters (a checkpoint of another model?)");
        if (with_moments || *prefix == '\0') r.sets_[prefix].push_back(Piece{size_t(lo), size_t(info.numel), path, name, 0, info});
      }
    }
    RW_REQUIRE(int(seen.size()) == shards, dir << ": has " << seen.size() << " of the " << shards << " shard files");
    for (auto& [set, pieces] : r.sets_) {  // each vector covered exactly once
      std::sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) { return a.lo < b.lo; });
      size_t expect = 0;
      const std::string what = set.empty() ? "weights" : set.substr(0, set.size() - 1);
      for (const Piece& p : pieces) {
        RW_REQUIRE(p.lo == expect, dir << ": the shards' " << what << " " << (p.lo > expect ? "leave out" : "hold twice")
                                       << " elements from " << std::min(p.lo, expect) << " (" << p.file << ": " << p.name << ")");
        expect = p.lo + p.n;
      }
      RW_REQUIRE(expect == r.total_, dir << ": the shards' " << what << " end at element " << expect << " of the model's "
                                         << r.total_ << " (a checkpoint of another model?)");
    }
    RW_REQUIRE(r.sets_.count(""), dir << ": the shard files hold no weights");
    RW_REQUIRE(r.sets_.count("exp_avg.") == r.sets_.count("exp_avg_sq."), dir << ": the shard files hold one moment of two");
  } else {  // whole tensors: ours, or a Hugging Face directory (one file, or an index and its files)
    std::map<std::string, Located> tensors;
    for (const auto& f : files) {
      if (f == "model.safetensors.index.json") continue;
      std::map<std::string, TensorInfo> header;
      const std::string path = (d / f).string();
      RW_RETURN_IF_ERROR(ReadSafetensorsHeader(path, &header));
      for (auto& [name, info] : header) {
        const auto [it, fresh] = tensors.emplace(name, Located{info.shape, path, info});
        RW_REQUIRE(fresh, dir << ": tensor " << name << " is in both " << it->second.file << " and " << path);
      }
    }
    auto add = [&](const std::string& where, const std::map<std::string, Located>& from, const std::string& prefix) -> Status {
      std::vector<std::map<std::string, Located>::const_iterator> src;
      RW_RETURN_IF_ERROR(MatchTensors(where, from, t, prefix, &src));
      auto& pieces = r.sets_[prefix];
      for (size_t i = 0; i < src.size(); ++i)
        pieces.push_back(Piece{t.tensors()[i].offset, t.tensors()[i].numel, src[i]->second.file, src[i]->first, 0,
                               src[i]->second.info});
      return Status::Ok();
    };
    RW_RETURN_IF_ERROR(add(files.size() == 1 ? (d / files[0]).string() : dir, tensors, ""));
    if (with_moments && fs::exists(d / "optimizer.safetensors")) {
      const std::string path = (d / "optimizer.safetensors").string();
      std::map<std::string, TensorInfo> header;
      RW_RETURN_IF_ERROR(ReadSafetensorsHeader(path, &header));
      std::map<std::string, Located> moments;
      for (auto& [name, info] : header) moments.emplace(name, Located{info.shape, path, info});
      RW_RETURN_IF_ERROR(add(path, moments, "exp_avg."));
      RW_RETURN_IF_ERROR(add(path, moments, "exp_avg_sq."));
    }
  }
  *out = std::move(r);
  return Status::Ok();
}

Status CheckpointReader::Read(const std::string& set, size_t lo, size_t hi, float* dst) const {
  const auto it = sets_.find(set);
  RW_REQUIRE(it != sets_.end(), dir_ << ": has no " << (set.empty() ? std::string("weights") : "optimizer state (" + set + ")"));
  RW_REQUIRE(lo <= hi && hi <= total_, dir_ << ": range [" << lo << ", " << hi << ") of " << total_ << " elements");
  const auto& pieces = it->second;
  auto p = std::upper_bound(pieces.begin(), pieces.end(), lo, [](size_t x, const Piece& q) { return x < q.lo + q.n; });
  for (; p != pieces.end() && p->lo < hi; ++p) {
    const size_t b = std::max(lo, p->lo), e = std::min(hi, p->lo + p->n);
    if (b < e) RW_RETURN_IF_ERROR(ReadTensorRange(p->file, p->name, p->info, p->first + (b - p->lo), e - b, dst + (b - lo)));
  }
  return Status::Ok();
}

Status LoadLatestCheckpoint(const std::string& dir, const ModelConfig&, const ParamTable& t, float* params, float* m,
                            float* v, TrainerState* state, bool* found, std::vector<std::string>* skipped,
                            int64_t max_step, MomentRange range) {
  *found = false;
  int64_t step = 0;
  std::string path;
  RW_RETURN_IF_ERROR(FindResumeCheckpoint(dir, max_step, &step, &path, skipped));
  if (path.empty()) return Status::Ok();
  RW_RETURN_IF_ERROR(LoadCheckpoint(path, t, params, m, v, state, range));
  *found = true;
  return Status::Ok();
}

}  // namespace rw::runtime
