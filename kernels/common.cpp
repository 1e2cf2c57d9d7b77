#include "kernels/common.h"

namespace rw::kernels {

const char* DeviceName(Device d) {
  switch (d) {
    case Device::kRef: return "ref";
    case Device::kCpu: return "cpu";
    case Device::kCuda: return "cuda";
  }
  return "unknown";
}

const char* DTypeName(DType t) {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
  }
  return "unknown";
}

}  // namespace rw::kernels
