// A PNG heatmap of needle-retrieval accuracy (as in the LWM paper's Figure 3): context length across,
// needle depth down, red (0) to green (1), with the lengths and depths written in a small bitmap font.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/common.h"

namespace rw::cli {

// accuracy[i][j]: lengths[i] x depths[j], each in [0, 1].
kernels::Status WriteHeatmapPng(const std::string& path, const std::vector<int64_t>& lengths,
                                const std::vector<double>& depths, const std::vector<std::vector<double>>& accuracy);

}  // namespace rw::cli
