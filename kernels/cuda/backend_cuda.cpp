// The CUDA backend's table: attention in bf16/f16 (tensor cores, fp32 accumulation) and the fp32 layer
// kernels. Compiled in every build that finds nvcc; `available` says whether a GPU is present.
#include <algorithm>
#include <cstdint>
#include <utility>

#include <string>

#include <cuda_runtime_api.h>

#include "kernels/backend.h"
#include "kernels/cuda/cuda.h"
#include "kernels/cuda/scratch.h"
#include "kernels/layers.h"

namespace rw::kernels {
namespace {

bool Supports(Op op, DType dtype) {
  switch (op) {
    case Op::kAttentionForward:
    case Op::kAttentionBackwardPrep:
    case Op::kAttentionBackward:
    case Op::kAttentionMerge:
      return dtype == DType::kBF16 || dtype == DType::kF16;
    case Op::kCast:
    case Op::kEmbeddingForward:
    case Op::kEmbeddingBackward:
      return false;  // not written yet: the model's CUDA path (issue: GPU devices) brings them
    case Op::kConv2dForward:
    case Op::kGroupNormForward:
    case Op::kUpsampleNearest:
    case Op::kNearestCode:
      return false;  // the VQGAN runs on the host backends (it is not on the training path)
    default:
      return dtype == DType::kF32;
  }
}

Status CheckAttention(const AttentionParams& p, bool backward) {
  RW_REQUIRE(p.o_dtype == p.dtype, "o_dtype: the cuda attention writes o in its dtype (" << DTypeName(p.dtype)
                                                                                         << "), got "
                                                                                         << DTypeName(p.o_dtype));
  RW_REQUIRE(p.d == 64 || p.d == 128, "d: the cuda attention supports head dim 64 or 128, got " << p.d);
  // Tiles move 16 bytes at a time: every activation view needs 16-byte aligned rows.
  for (auto [name, v] : {std::pair{"q", p.q}, {"k", p.k}, {"v", p.v}, {"o", p.o}}) {
    RW_REQUIRE(reinterpret_cast<uintptr_t>(v.data) % 16 == 0 && v.stride_s % 8 == 0 && v.stride_h % 8 == 0,
               name << ": the cuda attention needs a 16-byte aligned pointer and strides that are multiples of 8");
  }
  if (backward)
    RW_REQUIRE(reinterpret_cast<uintptr_t>(p.dout.data) % 16 == 0 && p.dout.stride_s % 8 == 0 &&
                   p.dout.stride_h % 8 == 0,
               "dout: the cuda attention needs a 16-byte aligned pointer and strides that are multiples of 8");
  return Status::Ok();
}

const float* F(View v) { return v.as<const float>(); }
float* W(View v) { return v.as<float>(); }

Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::Ok();
  return Status::Error(std::string(what) + ": " + cudaGetErrorString(e));
}

// Device memory: cudaMalloc and the synchronous copies (the host waits for them).
void SetCudaMemory(Backend* b) {
  b->alloc = [](size_t bytes, void** ptr) { return CudaStatus(cudaMalloc(ptr, bytes), "cudaMalloc"); };
  b->free = [](void* ptr) { cudaFree(ptr); };
  b->copy = [](Backend::CopyKind kind, void* dst, const void* src, size_t bytes) {
    switch (kind) {
      case Backend::CopyKind::kToDevice:
        return CudaStatus(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to device");
      case Backend::CopyKind::kToHost:
        return CudaStatus(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy to host");
      case Backend::CopyKind::kOnDevice:
        break;
    }
    return CudaStatus(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy on device");
  };
  b->memset = [](void* dst, int value, size_t bytes) { return CudaStatus(cudaMemset(dst, value, bytes), "cudaMemset"); };
  b->synchronize = [] { return CudaStatus(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); };
}

Backend Make() {
  Backend b;
  b.name = "cuda";
  b.device = Device::kCuda;
  b.available = cuda::DevicePresent;
  b.supports = Supports;
  b.describe = [](DType dtype) {
    return std::string("GEMMs by cuBLAS; attention by RingWorld's CUDA kernels") +
           (dtype == DType::kF32 ? " (f32 attention is not on the GPU: bf16 or f16)" : "");
  };
  b.scratch_bytes = cuda::ScratchBytes;
  SetCudaMemory(&b);
  b.check_attention = CheckAttention;
  b.attention_forward = cuda::AttentionForward;
  b.attention_backward_prep = cuda::AttentionBackwardPrep;
  b.attention_backward = cuda::AttentionBackward;
  b.attention_merge = cuda::AttentionMerge;
  b.linear_forward = [](const Exec& ex, int64_t n, int64_t in, int64_t out, View x, View w, View y) {
    return cuda::LinearForward(ex, n, in, out, F(x), F(w), W(y));
  };
  b.linear_backward = [](const Exec& ex, int64_t n, int64_t in, int64_t out, View x, View w, View dy, View dx,
                         float* dw) { return cuda::LinearBackward(ex, n, in, out, F(x), F(w), F(dy), W(dx), dw); };
  b.rmsnorm_forward = [](const Exec& ex, int64_t n, int64_t e, const float* x, const float* w, float eps, View y,
                         float* rstd) { return cuda::RmsNormForward(ex, n, e, x, w, eps, W(y), rstd); };
  b.rmsnorm_backward = [](const Exec& ex, int64_t n, int64_t e, View x, const float* w, const float* rstd, View dy,
                          View dx, float* dw) {
    return cuda::RmsNormBackward(ex, n, e, F(x), w, rstd, F(dy), W(dx), dw);
  };
  b.rope = cuda::Rope;
  b.ffn_forward = [](const Exec& ex, int64_t n, int64_t e, int64_t f, View x, FfnWeights w, View y, int64_t block) {
    return cuda::FfnForward(ex, n, e, f, F(x), w, W(y), block);
  };
  b.ffn_backward = [](const Exec& ex, int64_t n, int64_t e, int64_t f, View x, FfnWeights w, View dy, float* dx,
                      FfnGrads dw, int64_t block) {
    return cuda::FfnBackward(ex, n, e, f, F(x), w, F(dy), dx, dw, block);
  };
  b.cross_entropy_forward = [](const Exec& ex, int64_t n, int64_t e, int64_t vocab, View h, View w,
                               const int32_t* target, const float* weight, float* loss, double* weighted_sum,
                               int64_t block) {
    return cuda::CrossEntropyForward(ex, n, e, vocab, F(h), F(w), target, weight, loss, weighted_sum, block);
  };
  b.cross_entropy_backward = [](const Exec& ex, int64_t n, int64_t e, int64_t vocab, View h, View w,
                                const int32_t* target, const float* weight, float grad_scale, float* dh, float* dw,
                                int64_t block) {
    return cuda::CrossEntropyBackward(ex, n, e, vocab, F(h), F(w), target, weight, grad_scale, dh, dw, block);
  };
  b.adamw_step = [](const Exec& ex, int64_t n, View p, View g, View m, View v, const AdamWHyper& hp, int64_t step) {
    return cuda::AdamWStep(ex, n, W(p), F(g), W(m), W(v), hp, step);
  };
  b.add_into = [](const Exec& ex, int64_t n, View src, View dst) { return cuda::AddInto(ex, n, F(src), W(dst)); };
  return b;
}

}  // namespace

const Backend& CudaBackend() {
  static const Backend b = Make();
  return b;
}

}  // namespace rw::kernels
