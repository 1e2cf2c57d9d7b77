// An image VQGAN of LWM's architecture (its vqgan.py, described in issue 15): a frame of resolution x
// resolution RGB in [-1, 1] is encoded to a grid of codes (resolution / 2^(levels - 1) per side: 16 x 16 for
// LWM's 256 x 256 with 5 levels), and codes are decoded to a frame. On the kernel library's ops
// (kernels/vision.h): 3 x 3 "SAME" convolutions, GroupNorm + SiLU, LWM's pad-then-stride-2 downsampling,
// nearest-neighbour upsampling, and the nearest codebook entry.
//
//   encode: conv_in, per level (num_res_blocks ResNet blocks at hidden_channels x channel_mult[level]; a
//           downsampling after every level but the last), a middle of 2 ResNet blocks, GroupNorm + SiLU,
//           conv to z_channels, 1 x 1 quant_conv to quantized_embed_dim, nearest code;
//   decode: codebook rows, 1 x 1 post_quant_conv to z_channels, conv_in to the last level's width, a middle
//           of 2 ResNet blocks, per level from the last (num_res_blocks + 1 ResNet blocks; an upsampling
//           after every level but the first), GroupNorm + SiLU, conv to num_channels, clipped to [-1, 1].
//   A ResNet block: GroupNorm + SiLU, 3 x 3 conv, GroupNorm + SiLU, 3 x 3 conv, plus the input (through a
//   1 x 1 conv where the width changes). GroupNorm: 32 groups, eps 1e-6 (Flax's defaults). No attention
//   (LWM's VQGAN has none), no dropout at inference.
//
// A VQGAN directory holds config.json (LWM's VQGANConfig keys) and model.safetensors. Tensor names are the
// Flax parameter paths of LWM's model joined by '.', so that a converted LWM checkpoint maps one to one:
// "encoder.Conv_0.kernel", "encoder.DownsamplingBlock_0.ResnetBlock_1.GroupNorm_0.scale",
// "quantize.embeddings", "decoder.UpsamplingBlock_0.Upsample_0.Conv_0.bias", ... (docs/ARCHITECTURE.md,
// "Vision", lists them). Flax numbers modules in the order they are made: the decoder's UpsamplingBlock_0 is
// its deepest level. Convolution kernels are (kh, kw, cin, cout), as Flax stores them.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/layers.h"

namespace rw::runtime {

using kernels::Status;

struct VqganConfig {
  int64_t resolution = 256;
  int64_t num_channels = 3;
  int64_t hidden_channels = 128;
  std::vector<int64_t> channel_mult = {1, 2, 2, 4, 6};
  int64_t num_res_blocks = 2;
  int64_t z_channels = 64;
  int64_t num_embeddings = 8192;
  int64_t quantized_embed_dim = 64;
  int64_t norm_groups = 32;  // Flax's GroupNorm default (not in LWM's config; a small test model may set it)
  float norm_eps = 1e-6f;
  int64_t levels() const { return int64_t(channel_mult.size()); }
  int64_t grid() const { return resolution >> (levels() - 1); }  // codes per side of a frame
  int64_t codes_per_frame() const { return grid() * grid(); }
  Status Validate() const;
};

// config.json of a VQGAN directory: LWM's VQGANConfig keys. What LWM's class allows and its released
// model does not use (attention blocks, an attention middle block, resampling without convolutions,
// dropout) is refused by name. Errors name the file and the key.
Status ReadVqganConfig(const std::string& path, VqganConfig* out);
// The config as config.json (what ReadVqganConfig reads back).
std::string VqganConfigJson(const VqganConfig& c);

// The tensor names and shapes of a VQGAN of this config, in a fixed order (what model.safetensors holds).
std::vector<std::pair<std::string, std::vector<int64_t>>> VqganTensors(const VqganConfig& c);

class Vqgan {
 public:
  // dir/config.json and dir/model.safetensors; every tensor present with its shape, and none other.
  static Status Load(const std::string& dir, kernels::Exec ex, std::unique_ptr<Vqgan>* out);
  // The same from a config and tensors by name (a test's random model).
  static Status Make(const VqganConfig& c, std::map<std::string, std::vector<float>> tensors, kernels::Exec ex,
                     std::unique_ptr<Vqgan>* out);

  // frames x (resolution, resolution, num_channels) pixels in [-1, 1], NHWC, into frames x grid^2 codes
  // (row-major over the grid). `latents` (optional) gets the quantizer's input (frames x grid^2 x
  // quantized_embed_dim).
  Status Encode(int64_t frames, const float* pixels, std::vector<int32_t>* codes,
                std::vector<float>* latents = nullptr) const;
  // frames x grid^2 codes into frames x (resolution, resolution, num_channels) pixels in [-1, 1].
  Status Decode(int64_t frames, const int32_t* codes, std::vector<float>* pixels) const;

  const VqganConfig& config() const { return c_; }

 private:
  struct Act;  // one frame's activation (h, w, c)
  const std::vector<float>& T(const std::string& name) const;
  Status Conv(const std::string& name, int64_t k, Act& x, int64_t cout) const;
  Status Norm(const std::string& name, Act& x) const;  // GroupNorm + SiLU, in place
  Status Resnet(const std::string& name, Act& x, int64_t cout) const;

  VqganConfig c_;
  std::map<std::string, std::vector<float>> w_;
  kernels::Exec ex_;
};

}  // namespace rw::runtime
