// The safetensors format (Hugging Face): an 8-byte little-endian header length, a JSON header naming each
// tensor's dtype, shape and byte range, then the raw little-endian data. We write F32; we read F32, F16
// and BF16 (converting to fp32), so an HF LLaMA checkpoint of any of those loads.
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

}  // namespace rw::runtime
