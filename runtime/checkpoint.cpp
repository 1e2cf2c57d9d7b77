#include "runtime/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "runtime/crc32c.h"
#include "runtime/safetensors.h"
#include "runtime/tokenizer.h"

namespace rw::runtime {
namespace {

namespace fs = std::filesystem;

Status FsyncPath(const fs::path& p, bool dir) {
  const int fd = ::open(p.c_str(), (dir ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  RW_REQUIRE(fd >= 0, p.string() << ": cannot open to fsync");
  const int rc = ::fsync(fd);
  ::close(fd);
  RW_REQUIRE(rc == 0, p.string() << ": fsync failed");
  return Status::Ok();
}

Status WriteText(const fs::path& p, const std::string& text) {
  {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f << text;
    RW_REQUIRE(f.good(), p.string() << ": write failed");
  }
  return FsyncPath(p, false);
}

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

std::string ConfigJson(const ModelConfig& c) {
  nlohmann::ordered_json j = {{"architectures", {"LlamaForCausalLM"}},
                              {"model_type", "llama"},
                              {"hidden_act", "silu"},
                              {"hidden_size", c.hidden_size},
                              {"intermediate_size", c.intermediate_size},
                              {"num_hidden_layers", c.num_hidden_layers},
                              {"num_attention_heads", c.num_attention_heads},
                              {"num_key_value_heads", c.num_key_value_heads},
                              {"max_position_embeddings", c.max_position_embeddings},
                              {"rms_norm_eps", c.rms_norm_eps},
                              {"rope_theta", c.rope_theta},
                              {"vocab_size", c.vocab_size},
                              {"tie_word_embeddings", c.tie_word_embeddings},
                              {"attention_bias", false},
                              {"torch_dtype", "float32"}};
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

Status Assign(const std::string& where, const std::map<std::string, LoadedTensor>& tensors, const ParamTable& t,
              const std::string& prefix, float* dst) {
  for (const auto& p : t.tensors()) {
    auto it = tensors.find(prefix + p.name);
    if (it == tensors.end() && p.name == "lm_head.weight") it = tensors.find(prefix + "model.embed_tokens.weight");
    RW_REQUIRE(it != tensors.end(), where << ": tensor " << prefix + p.name << " is missing");
    RW_REQUIRE(it->second.shape == p.shape, where << ": tensor " << prefix + p.name << " has the wrong shape");
    std::copy(it->second.data.begin(), it->second.data.end(), dst + p.offset);
  }
  return Status::Ok();
}

Status LoadInto(const std::string& file, const ParamTable& t, const std::string& prefix, float* dst) {
  std::map<std::string, LoadedTensor> tensors;
  RW_RETURN_IF_ERROR(ReadSafetensors(file, &tensors));
  return Assign(file, tensors, t, prefix, dst);
}

}  // namespace

Status SaveCheckpoint(const std::string& dir, const ModelConfig& c, const ParamTable& t, const float* params,
                      const float* m, const float* v, const TrainerState& state, const SaveOptions& opt,
                      std::string* path, int64_t* bytes) {
  const fs::path root(dir);
  std::error_code ec;
  fs::create_directories(root, ec);
  RW_REQUIRE(!ec, "checkpoint.dir: cannot create " << dir << ": " << ec.message());
  const std::string name = "step-" + std::to_string(state.step);
  const fs::path tmp = root / (".tmp-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  RW_REQUIRE(!ec, "checkpoint.dir: cannot create " << tmp.string() << ": " << ec.message());
  RW_RETURN_IF_ERROR(WriteSafetensors((tmp / "model.safetensors").string(), Refs(t, params, ""), {{"format", "pt"}}));
  if (m && v) {
    auto refs = Refs(t, m, "exp_avg.");
    auto vs = Refs(t, v, "exp_avg_sq.");
    refs.insert(refs.end(), vs.begin(), vs.end());
    RW_RETURN_IF_ERROR(WriteSafetensors((tmp / "optimizer.safetensors").string(), refs));
  }
  RW_RETURN_IF_ERROR(WriteText(tmp / "config.json", ConfigJson(c)));
  nlohmann::ordered_json st = {{"step", state.step},
                               {"stage", state.stage},
                               {"data_cursor", state.data_cursor},
                               {"seed", state.seed},
                               {"job", state.job}};
  RW_RETURN_IF_ERROR(WriteText(tmp / "trainer_state.json", st.dump(2) + "\n"));
  if (!opt.tokenizer_model.empty()) RW_RETURN_IF_ERROR(WriteText(tmp / kTokenizerFile, opt.tokenizer_model));
  std::ostringstream manifest;
  int64_t total_bytes = 0;
  for (const char* f :
       {"model.safetensors", "optimizer.safetensors", "config.json", "trainer_state.json", kTokenizerFile}) {
    if (!fs::exists(tmp / f)) continue;
    uint64_t size = 0;
    uint32_t crc = 0;
    RW_RETURN_IF_ERROR(FileCrc(tmp / f, &size, &crc));
    manifest << f << " " << size << " " << crc << "\n";
    total_bytes += int64_t(size);
  }
  RW_RETURN_IF_ERROR(WriteText(tmp / "MANIFEST", manifest.str()));
  RW_RETURN_IF_ERROR(FsyncPath(tmp, true));
  const fs::path final_path = root / name;
  fs::remove_all(final_path, ec);  // a checkpoint of the same step from an earlier, interrupted run
  fs::rename(tmp, final_path, ec);
  RW_REQUIRE(!ec, "checkpoint: cannot rename " << tmp.string() << " to " << final_path.string() << ": " << ec.message());
  RW_RETURN_IF_ERROR(FsyncPath(root, true));
  // Retention, and leftovers of interrupted writes.
  const auto all = Checkpoints(root);
  for (size_t i = size_t(std::max<int64_t>(opt.keep, 1)); i < all.size(); ++i)
    if (opt.keep_every <= 0 || all[i].first % opt.keep_every != 0) fs::remove_all(all[i].second, ec);
  CollectCheckpointLeftovers(dir);
  if (path) *path = final_path.string();
  if (bytes) *bytes = total_bytes;
  return Status::Ok();
}

Status CheckpointTokenizer(const std::string& ckpt_dir, const ModelConfig& c, std::unique_ptr<Tokenizer>* out) {
  RW_RETURN_IF_ERROR(DirectoryTokenizer(ckpt_dir, out));
  RW_REQUIRE(c.vocab_size >= (*out)->vocab_size(), ckpt_dir << ": the model's vocabulary (" << c.vocab_size
                                                   << ") is smaller than its tokenizer's (" << (*out)->name() << ": "
                                                   << (*out)->vocab_size() << ")");
  return Status::Ok();
}

int CollectCheckpointLeftovers(const std::string& dir) {
  std::error_code ec;
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().filename().string().rfind(".tmp-", 0) == 0) n += fs::remove_all(e.path(), ec) > 0;
  return n;
}

std::vector<std::pair<int64_t, std::string>> ListCheckpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  for (const auto& [step, path] : Checkpoints(dir)) out.push_back({step, path.string()});
  return out;
}

Status VerifyCheckpoint(const std::string& ckpt_dir) {
  const fs::path d(ckpt_dir);
  std::ifstream f(d / "MANIFEST");
  RW_REQUIRE(f.good(), ckpt_dir << ": no MANIFEST (an incomplete checkpoint)");
  std::string file;
  uint64_t size = 0;
  uint32_t crc = 0;
  int files = 0;
  while (f >> file >> size >> crc) {
    uint64_t got_size = 0;
    uint32_t got_crc = 0;
    RW_RETURN_IF_ERROR(FileCrc(d / file, &got_size, &got_crc));
    RW_REQUIRE(got_size == size, ckpt_dir << "/" << file << ": " << got_size << " bytes, MANIFEST says " << size);
    RW_REQUIRE(got_crc == crc, ckpt_dir << "/" << file << ": CRC32C mismatch (corrupt)");
    ++files;
  }
  RW_REQUIRE(files > 0, ckpt_dir << ": empty MANIFEST");
  return Status::Ok();
}

Status ReadHfConfig(const std::string& path, ModelConfig* out) {
  std::ifstream f(path);
  RW_REQUIRE(f.good(), path << ": cannot open");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    return Status::Error(path + ": not JSON: " + e.what());
  }
  ModelConfig c;
  const std::string where = path + ": ";
  try {
    if (j.contains("model_type"))
      RW_REQUIRE(j["model_type"] == "llama", where << "model_type: '" << j["model_type"].get<std::string>()
                                                   << "' is not llama");
    c.vocab_size = j.at("vocab_size").get<int64_t>();
    c.hidden_size = j.at("hidden_size").get<int64_t>();
    c.intermediate_size = j.at("intermediate_size").get<int64_t>();
    c.num_hidden_layers = j.at("num_hidden_layers").get<int64_t>();
    c.num_attention_heads = j.at("num_attention_heads").get<int64_t>();
    c.num_key_value_heads = j.value("num_key_value_heads", c.num_attention_heads);
    c.rope_theta = j.value("rope_theta", 10000.0);
    c.rms_norm_eps = j.value("rms_norm_eps", 1e-6f);
    c.tie_word_embeddings = j.value("tie_word_embeddings", false);
    c.max_position_embeddings = j.value("max_position_embeddings", int64_t(2048));
    if (j.contains("head_dim") && !j["head_dim"].is_null())
      RW_REQUIRE(j["head_dim"].get<int64_t>() == c.head_dim(),
                 where << "head_dim: " << j["head_dim"].get<int64_t>() << " differs from hidden_size / heads");
  } catch (const nlohmann::json::exception& e) {
    return Status::Error(where + e.what());
  }
  Status st = c.Validate();
  RW_REQUIRE(st.ok(), where << st.message());
  *out = c;
  return Status::Ok();
}

Status LoadWeights(const std::string& ckpt_dir, const ParamTable& t, float* params) {
  const fs::path dir(ckpt_dir), single = dir / "model.safetensors", index = dir / "model.safetensors.index.json";
  if (fs::exists(single) || !fs::exists(index)) return LoadInto(single.string(), t, "", params);
  // Sharded: model.safetensors.index.json maps each tensor to its file.
  std::map<std::string, LoadedTensor> all;
  try {
    std::ifstream f(index);
    const auto j = nlohmann::json::parse(f);
    std::set<std::string> files;
    for (const auto& [name, file] : j.at("weight_map").items()) files.insert(file.get<std::string>());
    for (const auto& file : files) {
      std::map<std::string, LoadedTensor> part;
      RW_RETURN_IF_ERROR(ReadSafetensors((dir / file).string(), &part));
      all.merge(part);
    }
  } catch (const nlohmann::json::exception& e) {
    return Status::Error(index.string() + ": " + e.what());
  }
  return Assign(index.string(), all, t, "", params);
}

Status LoadLatestCheckpoint(const std::string& dir, const ModelConfig&, const ParamTable& t, float* params, float* m,
                            float* v, TrainerState* state, bool* found, std::vector<std::string>* skipped,
                            int64_t max_step) {
  *found = false;
  for (const auto& [step, path] : Checkpoints(dir)) {
    if (max_step >= 0 && step > max_step) continue;  // not recorded: it does not exist
    Status st = VerifyCheckpoint(path.string());
    if (st.ok()) st = LoadWeights(path.string(), t, params);
    if (st.ok() && m && v) {
      std::map<std::string, LoadedTensor> tensors;
      st = LoadInto((path / "optimizer.safetensors").string(), t, "exp_avg.", m);
      if (st.ok()) st = LoadInto((path / "optimizer.safetensors").string(), t, "exp_avg_sq.", v);
    }
    if (st.ok()) {
      try {
        std::ifstream f(path / "trainer_state.json");
        const auto j = nlohmann::json::parse(f);
        state->step = j.at("step").get<int64_t>();
        state->stage = j.at("stage").get<int64_t>();
        state->data_cursor = j.at("data_cursor").get<int64_t>();
        state->seed = j.at("seed").get<uint64_t>();
        state->job = j.at("job").get<std::string>();
      } catch (const std::exception& e) {
        st = Status::Error(path.string() + "/trainer_state.json: " + e.what());
      }
    }
    if (st.ok()) {
      *found = true;
      return Status::Ok();
    }
    if (skipped) skipped->push_back(st.message());
  }
  return Status::Ok();
}

}  // namespace rw::runtime
