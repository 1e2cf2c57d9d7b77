#include "runtime/hf_export.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "runtime/checkpoint.h"
#include "runtime/model.h"
#include "runtime/private_file.h"
#include "runtime/safetensors.h"
#include "runtime/tokenizer.h"

namespace rw::runtime {
namespace {

namespace fs = std::filesystem;

const char* TorchDType(kernels::DType t) {
  return t == kernels::DType::kBF16 ? "bfloat16" : t == kernels::DType::kF16 ? "float16" : "float32";
}

// The checkpoint to export: `path` itself when it is one (it has a MANIFEST), else the newest checkpoint of
// the checkpoint.dir `path` that verifies.
Status Resolve(const std::string& path, std::string* ckpt) {
  const fs::path p(path);
  RW_REQUIRE(fs::is_directory(p), "--checkpoint: " << path << " is not a directory");
  if (fs::exists(p / "MANIFEST")) {
    RW_RETURN_IF_ERROR(VerifyCheckpoint(path));
    *ckpt = path;
    return Status::Ok();
  }
  int64_t step = 0;
  RW_RETURN_IF_ERROR(FindResumeCheckpoint(path, -1, &step, ckpt, nullptr));
  RW_REQUIRE(!ckpt->empty(), "--checkpoint: " << path << " is neither a checkpoint of ours (no MANIFEST) nor a "
                                                  "checkpoint.dir (no step-N directory)");
  return Status::Ok();
}

}  // namespace

bool ParseExportDType(const std::string& name, kernels::DType* out) {
  if (name == "float32" || name == "fp32") *out = kernels::DType::kF32;
  else if (name == "bfloat16" || name == "bf16") *out = kernels::DType::kBF16;
  else if (name == "float16" || name == "fp16") *out = kernels::DType::kF16;
  else return false;
  return true;
}

Status ExportHuggingFace(const std::string& checkpoint, const std::string& out, const ExportOptions& opt,
                         ExportResult* result) {
  RW_REQUIRE(opt.max_shard_bytes > 0, "--max-shard-size: must be positive");
  RW_REQUIRE(opt.dtype == kernels::DType::kF32 || opt.dtype == kernels::DType::kBF16 || opt.dtype == kernels::DType::kF16,
             "--dtype: float32, bfloat16 or float16");
  RW_REQUIRE(!out.empty(), "--to: an output directory is needed");
  const fs::path dst(out);
  std::error_code ec;
  RW_REQUIRE(!fs::exists(dst, ec) || (fs::is_directory(dst, ec) && fs::is_empty(dst, ec)),
             "--to: " << out << " exists and is not an empty directory; refusing to write into it");
  ExportResult res;
  RW_RETURN_IF_ERROR(Resolve(checkpoint, &res.source));
  const fs::path src(res.source);
  ModelConfig c;
  RW_RETURN_IF_ERROR(ReadHfConfig((src / "config.json").string(), &c));
  const ParamTable t(c);
  CheckpointReader reader;
  RW_RETURN_IF_ERROR(CheckpointReader::Open(res.source, t, &reader, /*with_moments=*/false));

  // The files: tensors in the table's (transformers') order, a new file when the next tensor would take the
  // current one past max_shard_bytes (a tensor larger than that gets a file of its own).
  const int64_t es = opt.dtype == kernels::DType::kF32 ? 4 : 2;
  std::vector<std::vector<size_t>> groups;
  int64_t in_group = 0;
  for (size_t i = 0; i < t.tensors().size(); ++i) {
    const int64_t b = int64_t(t.tensors()[i].numel) * es;
    if (groups.empty() || (in_group > 0 && in_group + b > opt.max_shard_bytes)) {
      groups.emplace_back();
      in_group = 0;
    }
    groups.back().push_back(i);
    in_group += b;
  }
  const size_t k = groups.size();
  RW_REQUIRE(k <= 99999, "--max-shard-size: " << opt.max_shard_bytes << " bytes would make " << k << " files");
  auto file_name = [&](size_t g) {
    if (k == 1) return std::string("model.safetensors");
    char buf[64];
    std::snprintf(buf, sizeof(buf), "model-%05zu-of-%05zu.safetensors", g + 1, k);
    return std::string(buf);
  };

  // Written beside `out`, renamed into place once whole.
  if (dst.has_parent_path()) fs::create_directories(dst.parent_path(), ec);
  const fs::path tmp = fs::path(out + ".tmp-export-" + std::to_string(::getpid()));
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  RW_REQUIRE(!ec, "--to: cannot create " << tmp.string() << ": " << ec.message());
  struct Cleanup {
    const fs::path& p;
    bool armed = true;
    ~Cleanup() {
      std::error_code e;
      if (armed) fs::remove_all(p, e);
    }
  } cleanup{tmp};

  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  std::vector<float> buf;
  for (size_t g = 0; g < k; ++g) {
    size_t n = 0;
    for (size_t i : groups[g]) n += t.tensors()[i].numel;
    buf.resize(n);
    std::vector<TensorRef> refs;
    size_t at = 0;
    for (size_t i : groups[g]) {
      const ParamInfo& p = t.tensors()[i];
      RW_RETURN_IF_ERROR(reader.Read("", p.offset, p.offset + p.numel, buf.data() + at));
      refs.push_back({p.name, p.shape, buf.data() + at, opt.dtype});
      weight_map[p.name] = file_name(g);
      at += p.numel;
      ++res.tensors;
      res.parameters += int64_t(p.numel);
    }
    RW_RETURN_IF_ERROR(WriteSafetensors((tmp / file_name(g)).string(), refs, {{"format", "pt"}}));
    res.files.push_back(file_name(g));
    res.bytes += int64_t(fs::file_size(tmp / file_name(g)));
  }
  std::vector<float>().swap(buf);
  if (k > 1) {
    // transformers' index: the weights' total bytes and which file holds each tensor (sorted by name, as it
    // writes them).
    nlohmann::json sorted = weight_map;  // nlohmann::json keeps keys sorted
    nlohmann::ordered_json index = {{"metadata", {{"total_size", res.parameters * es}}}, {"weight_map", sorted}};
    RW_RETURN_IF_ERROR(WriteSyncedText(tmp / "model.safetensors.index.json", index.dump(2) + "\n"));
  }
  // config.json as the checkpoint has it, with the dtype the weights now have.
  try {
    std::ifstream f(src / "config.json");
    nlohmann::ordered_json config = nlohmann::ordered_json::parse(f);
    config["torch_dtype"] = TorchDType(opt.dtype);
    RW_RETURN_IF_ERROR(WriteSyncedText(tmp / "config.json", config.dump(2) + "\n"));
  } catch (const nlohmann::json::exception& e) {
    return Status::Error((src / "config.json").string() + ": " + e.what());
  }
  for (const char* f : {"generation_config.json", kTokenizerFile, "tokenizer_config.json"}) {
    if (!fs::exists(src / f)) continue;
    fs::copy_file(src / f, tmp / f, fs::copy_options::overwrite_existing, ec);
    RW_REQUIRE(!ec, "--to: cannot copy " << (src / f).string() << ": " << ec.message());
    RW_RETURN_IF_ERROR(FsyncPath(tmp / f, false));
  }
  RW_RETURN_IF_ERROR(FsyncPath(tmp, true));
  if (fs::exists(dst, ec)) fs::remove(dst, ec);  // the empty directory the check above allowed
  fs::rename(tmp, dst, ec);
  RW_REQUIRE(!ec, "--to: cannot rename " << tmp.string() << " to " << out << ": " << ec.message());
  cleanup.armed = false;
  RW_RETURN_IF_ERROR(FsyncPath(fs::absolute(dst).parent_path(), true));
  if (result) *result = std::move(res);
  return Status::Ok();
}

}  // namespace rw::runtime
