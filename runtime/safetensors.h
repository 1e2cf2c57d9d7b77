// The safetensors format (Hugging Face): an 8-byte little-endian header length, a JSON header naming each
// tensor's dtype, shape and byte range, then the raw little-endian data. We write F32 (checkpoints) or
// BF16/F16 (an export); we read F32, F16 and BF16 (converting to fp32), so an HF LLaMA checkpoint of any of
// those loads.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "kernels/common.h"

namespace rw::runtime {

using kernels::Status;

struct TensorRef {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;
  kernels::DType dtype = kernels::DType::kF32;  // as written: kF32, kBF16 or kF16 (rounded to nearest even)
};

// Writes the tensors (in the given order) and optional string metadata to `path`, fsynced.
Status WriteSafetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                        const std::map<std::string, std::string>& metadata = {});

struct LoadedTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;  // converted to fp32
};

// Reads every tensor of `path`. Errors name the file and, where it applies, the tensor.
Status ReadSafetensors(const std::string& path, std::map<std::string, LoadedTensor>* out);

// One tensor as the header describes it, checked against the file's size (as ReadSafetensors checks).
struct TensorInfo {
  std::string dtype;  // F32, F16 or BF16
  std::vector<int64_t> shape;
  uint64_t numel = 0;
  uint64_t file_offset = 0;  // of its first byte, from the start of the file
};
// The header only: no tensor data is read.
Status ReadSafetensorsHeader(const std::string& path, std::map<std::string, TensorInfo>* out);
// Elements [first, first + count) of `t` (from that file's header), converted to fp32, into dst.
Status ReadTensorRange(const std::string& path, const std::string& name, const TensorInfo& t, uint64_t first,
                       uint64_t count, float* dst);

}  // namespace rw::runtime
