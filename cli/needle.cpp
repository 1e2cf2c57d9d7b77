// `ringworld needle`: LWM's needle retrieval over a ring of device actors in this process; JSON and a PNG heatmap.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/heatmap.h"
#include "actors/local_ring.h"
#include "runtime/needle.h"

namespace rw::cli {

int Needle(const std::string& checkpoint, const std::vector<int64_t>& lengths, const std::vector<double>& depths,
           int64_t trials, int ring, const std::string& layout, const std::string& output, uint64_t seed) {
  runtime::NeedleConfig cfg;
  cfg.lengths = lengths;
  cfg.depths = depths;
  cfg.trials = trials;
  cfg.layout = layout;
  cfg.seed = seed;
  kernels::Status st = cfg.Validate();
  if (!st.ok() || ring < 1) {
    std::fprintf(stderr, "ringworld needle: %s\n", ring < 1 ? "--ring: must be >= 1" : st.message().c_str());
    return 2;
  }
  if (!std::ifstream(checkpoint + "/config.json").good()) {
    std::fprintf(stderr, "ringworld needle: --checkpoint: %s has no config.json\n", checkpoint.c_str());
    return 2;
  }
  std::error_code ec;
  std::filesystem::create_directories(output, ec);
  if (ec) {
    std::fprintf(stderr, "ringworld needle: --output: cannot create %s: %s\n", output.c_str(), ec.message().c_str());
    return 2;
  }
  std::string error, json;
  const auto reports = actors::OnLocalRing<actors::needle_report>(
      ring, /*job=*/3, actors::needle_atom::value,
      actors::needle_task{1, checkpoint, lengths, depths, trials, seed, layout}, &error);
  if (!error.empty()) {
    std::fprintf(stderr, "ringworld needle: %s\n", error.c_str());
    return 1;
  }
  for (const auto& rep : reports)
    if (rep.rank == 0) json = rep.json;
  const auto j = nlohmann::json::parse(json);
  const std::string json_path = output + "/needle.json", png_path = output + "/needle.png";
  std::ofstream(json_path) << json;
  st = WriteHeatmapPng(png_path, lengths, depths, j["accuracy"].get<std::vector<std::vector<double>>>());
  if (!st.ok()) {
    std::fprintf(stderr, "ringworld needle: %s\n", st.message().c_str());
    return 1;
  }
  std::printf("needle retrieval, %lld trials per cell, ring of %d (%s): accuracy by context length x depth\n",
              (long long)trials, ring, layout.c_str());
  std::printf("%10s", "depth");
  for (int64_t l : lengths) std::printf(" %7lld", (long long)l);
  std::printf("\n");
  for (size_t di = 0; di < depths.size(); ++di) {
    std::printf("%9.0f%%", depths[di] * 100);
    for (size_t li = 0; li < lengths.size(); ++li) std::printf(" %7.2f", j["accuracy"][li][di].get<double>());
    std::printf("\n");
  }
  std::printf("mean accuracy %.3f; %s, %s\n", j["mean_accuracy"].get<double>(), json_path.c_str(), png_path.c_str());
  return 0;
}

}  // namespace rw::cli
