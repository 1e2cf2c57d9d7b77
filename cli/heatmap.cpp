#include "cli/heatmap.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <map>
#include <zlib.h>

namespace rw::cli {
namespace {

void Be32(std::vector<uint8_t>& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(uint8_t(v >> s));
}

void Chunk(std::vector<uint8_t>& png, const char* type, const std::vector<uint8_t>& data) {
  Be32(png, uint32_t(data.size()));
  std::vector<uint8_t> body(type, type + 4);
  body.insert(body.end(), data.begin(), data.end());
  png.insert(png.end(), body.begin(), body.end());
  Be32(png, uint32_t(crc32(0, body.data(), uInt(body.size()))));
}

std::vector<uint8_t> EncodePng(int w, int h, const std::vector<uint8_t>& rgb) {
  std::vector<uint8_t> raw;  // each row: filter byte 0, then RGB
  for (int y = 0; y < h; ++y) {
    raw.push_back(0);
    raw.insert(raw.end(), rgb.begin() + size_t(y) * w * 3, rgb.begin() + size_t(y + 1) * w * 3);
  }
  uLongf z_len = compressBound(uLong(raw.size()));  // zlib stream of the rows (PNG's IDAT)
  std::vector<uint8_t> z(z_len);
  if (compress2(z.data(), &z_len, raw.data(), uLong(raw.size()), Z_BEST_COMPRESSION) != Z_OK) return {};
  z.resize(z_len);
  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  std::vector<uint8_t> ihdr;
  Be32(ihdr, uint32_t(w));
  Be32(ihdr, uint32_t(h));
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8-bit RGB
  Chunk(png, "IHDR", ihdr);
  Chunk(png, "IDAT", z);
  Chunk(png, "IEND", {});
  return png;
}

// 3x5 glyphs, one row per entry (bits 2..0 left to right).
const std::map<char, std::array<uint8_t, 5>>& Font() {
  static const std::map<char, std::array<uint8_t, 5>> f = {
      {'0', {7, 5, 5, 5, 7}}, {'1', {2, 6, 2, 2, 7}}, {'2', {7, 1, 7, 4, 7}}, {'3', {7, 1, 7, 1, 7}},
      {'4', {5, 5, 7, 1, 1}}, {'5', {7, 4, 7, 1, 7}}, {'6', {7, 4, 7, 5, 7}}, {'7', {7, 1, 1, 1, 1}},
      {'8', {7, 5, 7, 5, 7}}, {'9', {7, 5, 7, 1, 7}}, {'K', {5, 5, 6, 5, 5}}, {'M', {5, 7, 7, 5, 5}},
      {'%', {5, 1, 2, 4, 5}}, {'.', {0, 0, 0, 0, 2}}};
  return f;
}

struct Canvas {
  int w, h;
  std::vector<uint8_t> px;
  Canvas(int w_, int h_) : w(w_), h(h_), px(size_t(w_) * h_ * 3, 255) {}
  void Rect(int x0, int y0, int rw, int rh, uint8_t r, uint8_t g, uint8_t b) {
    for (int y = std::max(0, y0); y < std::min(h, y0 + rh); ++y)
      for (int x = std::max(0, x0); x < std::min(w, x0 + rw); ++x) {
        uint8_t* p = &px[(size_t(y) * w + x) * 3];
        p[0] = r, p[1] = g, p[2] = b;
      }
  }
  // Text of height 5*scale, centred on (cx, cy).
  void Text(const std::string& s, int cx, int cy, int scale) {
    const int tw = int(s.size()) * 4 * scale - scale;
    int x = cx - tw / 2;
    const int y = cy - 5 * scale / 2;
    for (char c : s) {
      auto it = Font().find(c);
      if (it != Font().end())
        for (int r = 0; r < 5; ++r)
          for (int col = 0; col < 3; ++col)
            if (it->second[r] >> (2 - col) & 1) Rect(x + col * scale, y + r * scale, scale, scale, 40, 40, 40);
      x += 4 * scale;
    }
  }
};

std::string LengthLabel(int64_t n) {
  if (n >= 1048576 && n % 1048576 == 0) return std::to_string(n / 1048576) + "M";
  if (n >= 1024 && n % 1024 == 0) return std::to_string(n / 1024) + "K";
  return std::to_string(n);
}

}  // namespace

kernels::Status WriteHeatmapPng(const std::string& path, const std::vector<int64_t>& lengths,
                                const std::vector<double>& depths, const std::vector<std::vector<double>>& accuracy) {
  RW_REQUIRE(!lengths.empty() && !depths.empty() && accuracy.size() == lengths.size(), "heatmap: empty or ragged");
  const int cell = 40, scale = 2, left = 50, bottom = 30, top = 10, right = 10;
  const int W = left + int(lengths.size()) * cell + right, H = top + int(depths.size()) * cell + bottom;
  Canvas c(W, H);
  for (size_t i = 0; i < lengths.size(); ++i) {
    RW_REQUIRE(accuracy[i].size() == depths.size(), "heatmap: row " << i << " has the wrong number of depths");
    for (size_t j = 0; j < depths.size(); ++j) {
      const double a = std::clamp(accuracy[i][j], 0.0, 1.0);
      // red (0) -> yellow (0.5) -> green (1)
      const uint8_t r = uint8_t(a < 0.5 ? 220 : 220 - (a - 0.5) * 2 * 180);
      const uint8_t g = uint8_t(a < 0.5 ? 60 + a * 2 * 150 : 210);
      c.Rect(left + int(i) * cell + 1, top + int(j) * cell + 1, cell - 2, cell - 2, r, g, 70);
    }
    c.Text(LengthLabel(lengths[i]), left + int(i) * cell + cell / 2, top + int(depths.size()) * cell + bottom / 2,
           scale);
  }
  for (size_t j = 0; j < depths.size(); ++j)
    c.Text(std::to_string(int(std::lround(depths[j] * 100))) + "%", left / 2, top + int(j) * cell + cell / 2, scale);
  const std::vector<uint8_t> png = EncodePng(W, H, c.px);
  RW_REQUIRE(!png.empty(), path << ": cannot compress the heatmap");
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(png.data()), std::streamsize(png.size()));
  RW_REQUIRE(f.good(), path << ": cannot write the heatmap");
  return kernels::Status::Ok();
}

}  // namespace rw::cli
