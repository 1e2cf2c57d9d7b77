// The safetensors reader on an untrusted file (checkpoints, init_from, HF weights).
#include <cstddef>
#include <cstdint>

#include "runtime/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = rw::fuzz::Scratch() / "model.safetensors";
  rw::fuzz::WriteFile(path, std::string(reinterpret_cast<const char*>(data), size));
  std::map<std::string, rw::runtime::LoadedTensor> tensors;
  if (rw::runtime::ReadSafetensors(path.string(), &tensors).ok()) {
    volatile float sum = 0;
    for (const auto& [name, t] : tensors)
      for (float v : t.data) sum = sum + v;  // every element is readable
  }
  return 0;
}
