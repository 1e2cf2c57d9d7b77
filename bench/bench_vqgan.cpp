// VQGAN encode and decode throughput (runtime/vqgan.h) on LWM's configuration (256 x 256 frames, 16 x 16
// codes, 146 M parameters; random weights: the arithmetic is the trained model's) against the fp32 sgemm
// ceiling measured in the same run: frames/s, the convolutions' GFLOP/s and its ratio to the ceiling.
//   rw_bench_vqgan [--quick] [--frames N] [--threads T]
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>

#include "bench/ceilings.h"
#include "runtime/vqgan.h"

using namespace rw;

namespace {

// Multiply-adds x 2 of every convolution of the encoder or the decoder, at this config (from the tensors'
// shapes and the resolution each runs at).
double ConvFlops(const runtime::VqganConfig& c, bool encoder) {
  double flops = 0;
  const int64_t L = c.levels();
  auto add = [&](const std::string& name, const std::vector<int64_t>& shape) {
    if (shape.size() != 4) return;
    int64_t side = c.resolution;  // the side of the activation the conv runs on
    if (name.rfind("encoder.DownsamplingBlock_", 0) == 0) {
      const int64_t level = std::stoll(name.substr(26));
      side = c.resolution >> level;
      if (name.find("Downsample_0") != std::string::npos) side /= 2;  // stride 2: the output's side
    } else if (name.rfind("decoder.UpsamplingBlock_", 0) == 0) {
      const int64_t level = L - 1 - std::stoll(name.substr(24));
      side = c.resolution >> level;
      if (name.find("Upsample_0") != std::string::npos) side *= 2;
    } else if (name.find("MidBlock") != std::string::npos || name == "encoder.Conv_1.kernel" ||
               name == "decoder.Conv_0.kernel" || name.find("quant_conv") != std::string::npos) {
      side = c.grid();
    }
    flops += 2.0 * double(side) * double(side) * double(shape[0] * shape[1] * shape[2] * shape[3]);
  };
  for (const auto& [name, shape] : runtime::VqganTensors(c)) {
    const bool enc = name.rfind("encoder.", 0) == 0 || name.rfind("quant_conv", 0) == 0;
    const bool dec = name.rfind("decoder.", 0) == 0 || name.rfind("post_quant_conv", 0) == 0;
    if ((encoder && enc) || (!encoder && dec)) add(name, shape);
  }
  return flops;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  int64_t frames = 2;
  int threads = int(std::thread::hardware_concurrency());
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--frames") && i + 1 < argc) frames = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
  }
  runtime::VqganConfig c;  // LWM's
  if (quick) {
    c.resolution = 64, c.hidden_channels = 32, c.channel_mult = {1, 2, 2}, c.num_res_blocks = 1;
    c.num_embeddings = 512, frames = 1;
  }
  const double ceiling = bench::SgemmCeiling(threads);
  std::map<std::string, std::vector<float>> w;
  std::mt19937_64 gen(5);
  int64_t params = 0;
  for (const auto& [name, shape] : runtime::VqganTensors(c)) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    params += n;
    const double fan_in = shape.size() == 4 ? double(shape[0] * shape[1] * shape[2]) : 1.0;
    std::normal_distribution<float> dist(0.f, float(1.0 / std::sqrt(fan_in)));
    std::vector<float> t(static_cast<size_t>(n));
    for (auto& x : t) x = name.find(".scale") != std::string::npos ? 1.f : dist(gen);
    w[name] = std::move(t);
  }
  std::unique_ptr<runtime::Vqgan> v;
  const auto st = runtime::Vqgan::Make(c, std::move(w), kernels::Exec{kernels::Device::kCpu, threads}, &v);
  if (!st.ok()) {
    std::fprintf(stderr, "rw_bench_vqgan: %s\n", st.message().c_str());
    return 1;
  }
  std::vector<float> pixels(size_t(frames * c.resolution * c.resolution * c.num_channels));
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (auto& p : pixels) p = u(gen);
  std::vector<int32_t> codes;
  std::vector<float> out;
  const double te = bench::MedianSeconds(quick ? 1 : 3, [&] { (void)v->Encode(frames, pixels.data(), &codes); });
  const double td = bench::MedianSeconds(quick ? 1 : 3, [&] { (void)v->Decode(frames, codes.data(), &out); });
  const double fe = ConvFlops(c, true) * double(frames) / te / 1e9, fd = ConvFlops(c, false) * double(frames) / td / 1e9;
  std::printf("VQGAN %lldx%lld -> %lldx%lld codes, %.1f M parameters, %lld frames a call, %d threads; fp32 sgemm "
              "ceiling (%s) %.1f GFLOP/s\n", (long long)c.resolution, (long long)c.resolution, (long long)c.grid(),
              (long long)c.grid(), double(params) / 1e6, (long long)frames, threads, kernels::cpu::BlasName(), ceiling);
  std::printf("  encode  %7.3f frames/s  %7.1f GFLOP/s (%.1f GFLOP a frame)  %.2f of the ceiling\n", double(frames) / te,
              fe, ConvFlops(c, true) / 1e9, fe / ceiling);
  std::printf("  decode  %7.3f frames/s  %7.1f GFLOP/s (%.1f GFLOP a frame)  %.2f of the ceiling\n", double(frames) / td,
              fd, ConvFlops(c, false) / 1e9, fd / ceiling);
  return 0;
}
