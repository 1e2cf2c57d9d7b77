// Every job file shipped in configs/ parses and validates (the GPU recipes with their external paths
// replaced by a local model and dataset, which a test cannot ship at 7B size).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/job_config.h"

namespace rw::runtime {
namespace {

namespace fs = std::filesystem;

TEST(Configs, EveryShippedJobFileValidates) {
  const fs::path tmp = fs::temp_directory_path() / ("rw_cfg_" + std::to_string(getpid()));
  fs::create_directories(tmp / "model");
  fs::create_directories(tmp / "data");
  std::ofstream(tmp / "data" / "meta.json") << "{}";
  // The shipped jobs name their files relative to the repository root, where the README runs them.
  const fs::path cwd = fs::current_path();
  fs::current_path(fs::path(RW_CONFIGS).parent_path());
  int checked = 0;
  for (const auto& e : fs::directory_iterator(RW_CONFIGS)) {
    if (e.path().extension() != ".yaml") continue;
    std::vector<std::string> overrides;
    JobConfig probe;
    // External paths of the cluster recipes point at the stand-ins above.
    std::ifstream f(e.path());
    const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (text.find("source: files") != std::string::npos) overrides.push_back("data.path=" + (tmp / "data").string());
    if (text.find("init_from:") != std::string::npos) {
      // The recipes start from LLaMA-2-7B (lwm-text-1m) or its LWM-Text continuation (lwm-vision, which
      // extends the vocabulary with the vision tokens): a stand-in with LLaMA-2-7B's config.json, so that a
      // recipe that contradicts its init_from is refused here.
      std::ofstream(tmp / "model" / "config.json")
          << nlohmann::json{{"model_type", "llama"}, {"vocab_size", 32000}, {"hidden_size", 4096},
                            {"intermediate_size", 11008}, {"num_hidden_layers", 32}, {"num_attention_heads", 32},
                            {"num_key_value_heads", 32}, {"rms_norm_eps", 1e-5}, {"max_position_embeddings", 4096},
                            {"rope_theta", 10000.0}, {"hidden_act", "silu"}, {"tie_word_embeddings", false}}
                 .dump();
      overrides.push_back("init_from=" + (tmp / "model").string());
    }
    JobConfig job;
    const auto st = LoadJobConfig(e.path().string(), overrides, &job);
    EXPECT_TRUE(st.ok()) << e.path() << ": " << st.message();
    std::printf("  %-20s %zu stages, %lld steps, longest %lld tokens\n", e.path().filename().c_str(), job.stages.size(),
                (long long)job.total_steps(), job.stages.empty() ? 0LL : (long long)job.stages.back().seq_len);
    ++checked;
  }
  fs::current_path(cwd);
  EXPECT_GE(checked, 3);
  fs::remove_all(tmp);
}

}  // namespace
}  // namespace rw::runtime
