#include "runtime/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "kernels/device_memory.h"

namespace rw::runtime {

Status WriteSafetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    RW_REQUIRE(t.dtype == kernels::DType::kF32 || t.dtype == kernels::DType::kBF16 || t.dtype == kernels::DType::kF16,
               path << ": tensor " << t.name << ": safetensors are written in F32, BF16 or F16");
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= uint64_t(d);
    const uint64_t es = t.dtype == kernels::DType::kF32 ? 4 : 2;
    const char* dt = t.dtype == kernels::DType::kF32 ? "F32" : t.dtype == kernels::DType::kBF16 ? "BF16" : "F16";
    header[t.name] = {{"dtype", dt}, {"shape", t.shape}, {"data_offsets", {offset, offset + numel * es}}};
    offset += numel * es;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  RW_REQUIRE(fd >= 0, path << ": cannot create: " << std::strerror(errno));
  auto write_all = [&](const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n) {
      const ssize_t w = ::write(fd, c, n);
      if (w <= 0) return false;
      c += w;
      n -= size_t(w);
    }
    return true;
  };
  const uint64_t hlen = text.size();  // little-endian on every machine we build for
  bool ok = write_all(&hlen, 8) && write_all(text.data(), text.size());
  std::vector<uint16_t> half;
  for (const auto& t : tensors) {
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= uint64_t(d);
    if (t.dtype == kernels::DType::kF32) {
      ok = ok && write_all(t.data, numel * 4);
      continue;
    }
    for (uint64_t at = 0; ok && at < numel; at += uint64_t(1) << 20) {  // converted 1M elements at a time
      const uint64_t n = std::min<uint64_t>(numel - at, uint64_t(1) << 20);
      half.resize(n);
      for (uint64_t i = 0; i < n; ++i) half[i] = kernels::FloatToBits(t.dtype, t.data[at + i]);
      ok = write_all(half.data(), n * 2);
    }
  }
  ok = ok && ::fsync(fd) == 0;
  ::close(fd);
  RW_REQUIRE(ok, path << ": write failed: " << std::strerror(errno));
  return Status::Ok();
}

Status ReadSafetensorsHeader(const std::string& path, std::map<std::string, TensorInfo>* out) {
  std::ifstream f(path, std::ios::binary);
  RW_REQUIRE(f.good(), path << ": cannot open");
  f.seekg(0, std::ios::end);
  const uint64_t size = uint64_t(f.tellg());
  f.seekg(0);
  uint64_t hlen = 0;
  RW_REQUIRE(size >= 8 && f.read(reinterpret_cast<char*>(&hlen), 8), path << ": not a safetensors file (too short)");
  RW_REQUIRE(hlen <= size - 8 && hlen <= (uint64_t(100) << 20), path << ": header length " << hlen << " is impossible");
  std::string text(hlen, '\0');
  f.read(text.data(), std::streamsize(hlen));
  RW_REQUIRE(f.good(), path << ": short read of the header");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    return Status::Error(path + ": header is not JSON: " + e.what());
  }
  RW_REQUIRE(header.is_object(), path << ": header is not a JSON object");
  const uint64_t data_size = size - 8 - hlen;
  std::map<std::string, TensorInfo> result;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const auto& t = it.value();
    const std::string where = path + ": tensor " + it.key();
    TensorInfo info;
    std::vector<uint64_t> offs;
    try {
      info.dtype = t.at("dtype").get<std::string>();
      info.shape = t.at("shape").get<std::vector<int64_t>>();
      offs = t.at("data_offsets").get<std::vector<uint64_t>>();
    } catch (const std::exception&) {
      return Status::Error(where + ": needs dtype, shape and data_offsets");
    }
    const int es = info.dtype == "F32" ? 4 : (info.dtype == "F16" || info.dtype == "BF16") ? 2 : 0;
    RW_REQUIRE(es, where << ": dtype " << info.dtype << " is not F32, F16 or BF16");
    // The element count, checked against the bytes the file has as it grows: a shape such as
    // [2^31, 2^31] overflowed numel * es to 0, matched empty data_offsets and then asked for 2^62 floats.
    uint64_t numel = 1;
    for (int64_t d : info.shape) {
      RW_REQUIRE(d >= 0, where << ": negative dimension");
      RW_REQUIRE(d == 0 || numel <= data_size / uint64_t(es) / uint64_t(d),
                 where << ": shape holds more elements than the file's " << data_size << " data bytes");
      numel *= uint64_t(d);
    }
    RW_REQUIRE(offs.size() == 2 && offs[0] <= offs[1] && offs[1] <= data_size && offs[1] - offs[0] == numel * es,
               where << ": data_offsets do not match its shape or the file size (truncated file?)");
    info.numel = numel;
    info.file_offset = 8 + hlen + offs[0];
    result[it.key()] = std::move(info);
  }
  *out = std::move(result);
  return Status::Ok();
}

Status ReadTensorRange(const std::string& path, const std::string& name, const TensorInfo& t, uint64_t first,
                       uint64_t count, float* dst) {
  const std::string where = path + ": tensor " + name;
  RW_REQUIRE(first <= t.numel && count <= t.numel - first,
             where << ": elements [" << first << ", " << first + count << ") are outside its " << t.numel);
  const int es = t.dtype == "F32" ? 4 : 2;
  std::ifstream f(path, std::ios::binary);
  RW_REQUIRE(f.good(), path << ": cannot open");
  f.seekg(std::streamoff(t.file_offset + first * uint64_t(es)));
  if (es == 4) {
    f.read(reinterpret_cast<char*>(dst), std::streamsize(count * 4));
  } else {
    std::vector<uint16_t> half(count);
    f.read(reinterpret_cast<char*>(half.data()), std::streamsize(count * 2));
    const auto dt = t.dtype == "BF16" ? kernels::DType::kBF16 : kernels::DType::kF16;
    for (uint64_t i = 0; i < count; ++i) dst[i] = kernels::BitsToFloat(dt, half[i]);
  }
  RW_REQUIRE(f.good(), where << ": short read");
  return Status::Ok();
}

Status ReadSafetensors(const std::string& path, std::map<std::string, LoadedTensor>* out) {
  std::map<std::string, TensorInfo> header;
  RW_RETURN_IF_ERROR(ReadSafetensorsHeader(path, &header));
  std::map<std::string, LoadedTensor> result;
  for (const auto& [name, info] : header) {
    LoadedTensor lt;
    lt.shape = info.shape;
    lt.data.resize(info.numel);
    RW_RETURN_IF_ERROR(ReadTensorRange(path, name, info, 0, info.numel, lt.data.data()));
    result[name] = std::move(lt);
  }
  *out = std::move(result);
  return Status::Ok();
}

}  // namespace rw::runtime
