// `ringworld export`: one of our checkpoints (whole or sharded over a mesh; runtime/checkpoint.h) as a plain
// Hugging Face directory that transformers' from_pretrained loads: the weights under their LLaMA names in
// safetensors files of at most max_shard_bytes each, with model.safetensors.index.json mapping every tensor
// to its file (one file: model.safetensors and no index, as transformers writes it), config.json,
// generation_config.json and the tokenizer files when the checkpoint has them. Nothing of the trainer's
// (moments, trainer state, MANIFEST) goes out.
//
// Memory: one output file's tensors at a time (read as ranges of the checkpoint, whatever its sharding), so
// a model larger than the host's memory exports with max_shard_bytes well below it. The directory is written
// under a temporary name beside `out` and renamed into place once whole; an `out` that exists and is not
// empty is refused, never overwritten.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/common.h"

namespace rw::runtime {

using kernels::Status;

struct ExportOptions {
  int64_t max_shard_bytes = 5'000'000'000;        // transformers' default max_shard_size, "5GB"
  kernels::DType dtype = kernels::DType::kF32;    // kF32, kBF16 or kF16 (rounded to nearest even)
};

struct ExportResult {
  std::string source;               // the checkpoint directory exported (a checkpoint.dir: its newest that verifies)
  std::vector<std::string> files;   // the weight files written, in order
  int64_t tensors = 0, parameters = 0, bytes = 0;  // bytes: of the weight files
};

// `checkpoint`: a step-N directory of ours, or a checkpoint.dir (its newest checkpoint that verifies). Its
// MANIFEST is verified first. Errors name the file, the option or the tensor.
Status ExportHuggingFace(const std::string& checkpoint, const std::string& out, const ExportOptions& opt,
                         ExportResult* result);

// "float32" | "bfloat16" | "float16" (also fp32, bf16, fp16) -> the dtype; false for anything else.
bool ParseExportDType(const std::string& name, kernels::DType* out);

}  // namespace rw::runtime
