// `ringworld vqgan encode|decode`: one image or video to its VQGAN codes, and codes back to frames, for
// inspection. The codes travel as the JSON record `data prepare` reads: {"vision": [[codes of frame 0],
// ...]} (with the frames' source indices beside them).
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "runtime/media.h"
#include "runtime/vqgan.h"

namespace rw::cli {
namespace {

// The VQGAN of --vqgan, or false after saying why (as `command`).
bool LoadVqgan(const char* command, const std::string& dir, std::unique_ptr<runtime::Vqgan>* out) {
  const runtime::Status st = runtime::Vqgan::Load(dir, kernels::Exec{kernels::Device::kCpu, 0}, out);
  if (!st.ok()) std::fprintf(stderr, "ringworld vqgan %s: --vqgan: %s\n", command, st.message().c_str());
  return st.ok();
}

}  // namespace

int VqganEncode(const std::string& vqgan_dir, const std::string& input, int64_t max_frames, double fps,
                const std::string& output) {
  using namespace rw::runtime;
  std::unique_ptr<Vqgan> v;
  if (!LoadVqgan("encode", vqgan_dir, &v)) return 2;
  MediaFrames m;
  Status st = ReadMediaFrames(input, v->config().resolution, FrameSelection{max_frames, fps}, &m);
  std::vector<int32_t> codes;
  if (st.ok()) st = v->Encode(m.count, m.pixels.data(), &codes);
  if (!st.ok()) {
    std::fprintf(stderr, "ringworld vqgan encode: %s\n", st.message().c_str());
    return 1;
  }
  const int64_t per = v->config().codes_per_frame();
  nlohmann::json frames = nlohmann::json::array();
  for (int64_t f = 0; f < m.count; ++f)
    frames.push_back(std::vector<int32_t>(codes.begin() + f * per, codes.begin() + (f + 1) * per));
  const nlohmann::json record = {{"vision", frames}, {"source_frames", m.picked}, {"grid", v->config().grid()}};
  if (output.empty() || output == "-") {
    std::printf("%s\n", record.dump().c_str());
  } else {
    std::ofstream f(output);
    f << record.dump() << "\n";
    if (!f.good()) {
      std::fprintf(stderr, "ringworld vqgan encode: --output: cannot write %s\n", output.c_str());
      return 1;
    }
    std::printf("%s: %lld of %lld frames, %lld codes each -> %s\n", input.c_str(), (long long)m.count,
                (long long)m.source_frames, (long long)per, output.c_str());
  }
  return 0;
}

int VqganDecode(const std::string& vqgan_dir, const std::string& codes_path, const std::string& output, double fps) {
  using namespace rw::runtime;
  std::unique_ptr<Vqgan> v;
  if (!LoadVqgan("decode", vqgan_dir, &v)) return 2;
  const int64_t per = v->config().codes_per_frame();
  std::vector<int32_t> codes;
  int64_t frames = 0;
  try {
    std::ifstream f(codes_path);
    if (!f.good()) {
      std::fprintf(stderr, "ringworld vqgan decode: --codes: cannot read %s\n", codes_path.c_str());
      return 2;
    }
    const auto j = nlohmann::json::parse(f);
    if (!j.is_object() || !j.contains("vision") || !j["vision"].is_array())
      throw std::runtime_error("expected {\"vision\": [[codes of a frame], ...]}");
    for (const auto& frame : j["vision"]) {
      if (!frame.is_array() || int64_t(frame.size()) != per)
        throw std::runtime_error("frame " + std::to_string(frames) + " does not hold " + std::to_string(per) + " codes");
      for (const auto& c : frame) {
        if (!c.is_number_integer()) throw std::runtime_error("frame " + std::to_string(frames) + " holds a non-integer");
        codes.push_back(c.get<int32_t>());
      }
      ++frames;
    }
    if (frames == 0) throw std::runtime_error("no frame");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ringworld vqgan decode: --codes: %s: %s\n", codes_path.c_str(), e.what());
    return 2;
  }
  std::vector<float> pixels;
  Status st = v->Decode(frames, codes.data(), &pixels);
  if (st.ok()) st = WriteMediaFrames(output, v->config().resolution, frames, pixels.data(), fps);
  if (!st.ok()) {
    std::fprintf(stderr, "ringworld vqgan decode: %s\n", st.message().c_str());
    return 1;
  }
  std::printf("%s: %lld frames of %lldx%lld -> %s\n", codes_path.c_str(), (long long)frames,
              (long long)v->config().resolution, (long long)v->config().resolution, output.c_str());
  return 0;
}

}  // namespace rw::cli
