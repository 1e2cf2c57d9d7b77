// Helpers for the libFuzzer targets: a scratch directory of this process (readers that take a path get
// the input written there) and splitting one input into parts.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace rw::fuzz {

inline const std::filesystem::path& Scratch() {
  static const std::filesystem::path dir = [] {
    auto p = std::filesystem::temp_directory_path() / ("rw_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(p);
    std::atexit([] { std::filesystem::remove_all(Scratch()); });
    return p;
  }();
  return dir;
}

inline void WriteFile(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

// The input cut at each occurrence of `sep` into at most n parts (the last takes the rest).
inline std::vector<std::string> Split(const uint8_t* data, size_t size, const std::string& sep, size_t n) {
  std::vector<std::string> parts;
  std::string s(reinterpret_cast<const char*>(data), size);
  size_t at = 0;
  while (parts.size() + 1 < n) {
    const size_t k = s.find(sep, at);
    if (k == std::string::npos) break;
    parts.push_back(s.substr(at, k - at));
    at = k + sep.size();
  }
  parts.push_back(s.substr(at));
  parts.resize(n);
  return parts;
}

}  // namespace rw::fuzz
