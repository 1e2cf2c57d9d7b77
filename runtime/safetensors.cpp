#include "runtime/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

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
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= uint64_t(d);
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + numel * 4}}};
    offset += numel * 4;
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
  for (const auto& t : tensors) {
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= uint64_t(d);
    ok = ok && write_all(t.data, numel * 4);
  }
  ok = ok && ::fsync(fd) == 0;
  ::close(fd);
  RW_REQUIRE(ok, path << ": write failed: " << std::strerror(errno));
  return Status::Ok();
}

Status ReadSafetensors(const std::string& path, std::map<std::string, LoadedTensor>* out) {
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
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    return Status::Error(path + ": header is not JSON: " + e.what());
  }
  RW_REQUIRE(header.is_object(), path << ": header is not a JSON object");
  const uint64_t data_size = size - 8 - hlen;
  std::map<std::string, LoadedTensor> result;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const auto& t = it.value();
    const std::string where = path + ": tensor " + it.key();
    std::string dtype;
    std::vector<int64_t> shape;
    std::vector<uint64_t> offs;
    try {
      dtype = t.at("dtype").get<std::string>();
      shape = t.at("shape").get<std::vector<int64_t>>();
      offs = t.at("data_offsets").get<std::vector<uint64_t>>();
    } catch (const std::exception&) {
      return Status::Error(where + ": needs dtype, shape and data_offsets");
    }
    const int es = dtype == "F32" ? 4 : (dtype == "F16" || dtype == "BF16") ? 2 : 0;
    RW_REQUIRE(es, where << ": dtype " << dtype << " is not F32, F16 or BF16");
    // The element count, checked against the bytes the file has as it grows: a shape such as
    // [2^31, 2^31] overflowed numel * es to 0, matched empty data_offsets and then asked for 2^62 floats.
    uint64_t numel = 1;
    for (int64_t d : shape) {
      RW_REQUIRE(d >= 0, where << ": negative dimension");
      RW_REQUIRE(d == 0 || numel <= data_size / uint64_t(es) / uint64_t(d),
                 where << ": shape holds more elements than the file's " << data_size << " data bytes");
      numel *= uint64_t(d);
    }
    RW_REQUIRE(offs.size() == 2 && offs[0] <= offs[1] && offs[1] <= data_size && offs[1] - offs[0] == numel * es,
               where << ": data_offsets do not match its shape or the file size (truncated file?)");
    LoadedTensor lt;
    lt.shape = shape;
    lt.data.resize(numel);
    f.seekg(std::streamoff(8 + hlen + offs[0]));
    if (es == 4) {
      f.read(reinterpret_cast<char*>(lt.data.data()), std::streamsize(numel * 4));
    } else {
      std::vector<uint16_t> half(numel);
      f.read(reinterpret_cast<char*>(half.data()), std::streamsize(numel * 2));
      const auto dt = dtype == "BF16" ? kernels::DType::kBF16 : kernels::DType::kF16;
      for (uint64_t i = 0; i < numel; ++i) lt.data[i] = kernels::BitsToFloat(dt, half[i]);
    }
    RW_REQUIRE(f.good(), where << ": short read");
    result[it.key()] = std::move(lt);
  }
  *out = std::move(result);
  return Status::Ok();
}

}  // namespace rw::runtime
