// The safetensors reader on an untrusted file (checkpoints, init_from, HF weights), and the same file as the
// one shard of a sharded checkpoint of a tiny model (CheckpointReader: its piece names, ranges and tiling).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "runtime/checkpoint.h"
#include "runtime/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

namespace {
// 536 parameters (the corpus's shard seeds hold pieces of them).
const rw::runtime::ModelConfig& Tiny() {
  static const rw::runtime::ModelConfig c = [] {
    rw::runtime::ModelConfig m;
    m.vocab_size = 8, m.hidden_size = 8, m.intermediate_size = 8, m.num_hidden_layers = 1;
    m.num_attention_heads = 2, m.num_key_value_heads = 1;
    return m;
  }();
  return c;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  const auto path = rw::fuzz::Scratch() / "model.safetensors";
  rw::fuzz::WriteFile(path, bytes);
  std::map<std::string, rw::runtime::LoadedTensor> tensors;
  if (rw::runtime::ReadSafetensors(path.string(), &tensors).ok()) {
    volatile float sum = 0;
    for (const auto& [name, t] : tensors)
      for (float v : t.data) sum = sum + v;  // every element is readable
  }
  const auto dir = rw::fuzz::Scratch() / "sharded";
  std::filesystem::create_directories(dir);
  rw::fuzz::WriteFile(dir / "shard-00000-of-00001.safetensors", bytes);
  static const rw::runtime::ParamTable table(Tiny());
  rw::runtime::CheckpointReader reader;
  if (rw::runtime::CheckpointReader::Open(dir.string(), table, &reader).ok()) {
    std::vector<float> all(table.total());
    for (const char* set : {"", "exp_avg.", "exp_avg_sq."})
      if (reader.Read(set, 0, all.size(), all.data()).ok() && table.total() > 3)
        (void)reader.Read(set, 1, all.size() - 2, all.data());
  }
  return 0;
}
