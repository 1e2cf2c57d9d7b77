// The registry of backend tables and the dispatch check every entry point runs.
#include "kernels/backend.h"
#include "kernels/cuda/scratch.h"

#include <cstdlib>
#include <cstring>
#include <string>

namespace rw::kernels {

const char* OpName(Op op) {
  static const char* const kNames[] = {
      "attention_forward", "attention_backward_prep", "attention_backward", "attention_merge",
      "linear_forward",    "linear_backward",         "rmsnorm_forward",    "rmsnorm_backward",
      "rope",              "ffn_forward",             "ffn_backward",       "cross_entropy_forward",
      "cross_entropy_backward", "adamw",              "add_into",           "cast",
      "embedding_forward", "embedding_backward",     "conv2d_forward",     "group_norm_forward",
      "upsample_nearest2x", "nearest_code"};
  static_assert(sizeof(kNames) / sizeof(kNames[0]) == size_t(Op::kCount), "one name per op");
  const int i = int(op);
  return i >= 0 && i < int(Op::kCount) ? kNames[i] : "unknown";
}

const Backend* FindBackend(Device device) {
  switch (device) {
    case Device::kRef: return &RefBackend();
    case Device::kCpu: return &CpuBackend();
    case Device::kCuda:
#ifdef RW_HAVE_CUDA
      return &CudaBackend();
#else
      return nullptr;
#endif
  }
  return nullptr;
}

void SetHostMemory(Backend* b) {
  b->alloc = [](size_t bytes, void** ptr) {
    *ptr = bytes ? std::malloc(bytes) : nullptr;
    RW_REQUIRE(bytes == 0 || *ptr, "DeviceAlloc: out of host memory for " << bytes << " bytes");
    return Status::Ok();
  };
  b->free = [](void* ptr) { std::free(ptr); };
  b->copy = [](Backend::CopyKind, void* dst, const void* src, size_t bytes) {
    if (bytes) std::memcpy(dst, src, bytes);
    return Status::Ok();
  };
  b->memset = [](void* dst, int value, size_t bytes) {
    if (bytes) std::memset(dst, value, bytes);
    return Status::Ok();
  };
  b->synchronize = [] { return Status::Ok(); };
}

int64_t KernelScratchBytes(Device device, const StepShape& s) {
  const Backend* b = FindBackend(device);
  if (b && b->scratch_bytes) return b->scratch_bytes(s);
  // A build without the CUDA backend still plans GPU jobs: the estimate is host code of its own.
  return device == Device::kCuda ? cuda::ScratchBytes(s) : 0;
}

std::string DescribeBackend(Device device, DType dtype) {
  const Backend* b = FindBackend(device);
  if (!b) return std::string("no ") + DeviceName(device) + " backend in this build";
  return b->describe ? b->describe(dtype) : std::string(b->name) + " backend";
}

Status Dispatch(Device device, Op op, DType dtype, const Backend** out) {
  const Backend* b = FindBackend(device);
  if (!b) {
    if (device == Device::kCuda)
      return Status::Error("device: this build has no CUDA backend (configure with CUDA to get it)");
    return Status::Error("device: unknown device " + std::to_string(int(device)));
  }
  RW_REQUIRE(!b->available || b->available(),
             "device: " << b->name << " requested but no " << b->name << " device is present");
  RW_REQUIRE(b->supports(op, dtype), "dtype: the " << b->name << " backend has no " << OpName(op) << " in "
                                                   << DTypeName(dtype));
  *out = b;
  return Status::Ok();
}

Status AttentionWritesF32(const AttentionParams& p, bool) {
  RW_REQUIRE(p.o_dtype == DType::kF32, "o_dtype: the " << DeviceName(p.device) << " attention writes o in f32, got "
                                                       << DTypeName(p.o_dtype));
  return Status::Ok();
}

bool CudaAvailable() {
  const Backend* b = FindBackend(Device::kCuda);
  return b && (!b->available || b->available());
}

}  // namespace rw::kernels
