// CUDA versions of the per-token layers and AdamW, in fp32: row kernels for RMSNorm and the cross-entropy
// softmax, elementwise kernels for RoPE, SwiGLU and AdamW, and cuBLAS sgemm for the projections of the
// blockwise FFN and loss. A first, simple backend (the attention kernels carry the tensor-core work);
// every one is checked against the reference by the same tests as the CPU version.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/cuda/cuda.h"

namespace rw::kernels::cuda {
namespace {

Status LastError(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return Status::Ok();
  return Status::Error(std::string(what) + ": " + cudaGetErrorString(e));
}

cudaStream_t StreamOf(const Exec& ex) { return static_cast<cudaStream_t>(ex.stream); }

// One cuBLAS handle per host thread (handles are not thread-safe); bound to the caller's stream per call.
cublasHandle_t Blas(const Exec& ex) {
  thread_local cublasHandle_t handle = [] {
    cublasHandle_t h = nullptr;
    cublasCreate(&h);
    return h;
  }();
  cublasSetStream(handle, StreamOf(ex));
  return handle;
}

// Row-major C (m x n) = alpha op(A) op(B) + beta C, through column-major cuBLAS: C^T = op(B)^T op(A)^T.
Status Sgemm(const Exec& ex, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
             int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const cublasStatus_t st = cublasSgemm(Blas(ex), tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                        int(n), int(m), int(k), &alpha, b, int(ldb), a, int(lda), &beta, c, int(ldc));
  if (st != CUBLAS_STATUS_SUCCESS) return Status::Error("cublasSgemm failed with status " + std::to_string(int(st)));
  return Status::Ok();
}

// Block-wide sum for blocks of 256 threads.
__device__ float BlockSum(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < int(blockDim.x >> 5); ++w) total += scratch[w];
  return total;
}

__device__ float BlockMax(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float m = -INFINITY;
  for (int w = 0; w < int(blockDim.x >> 5); ++w) m = fmaxf(m, scratch[w]);
  return m;
}

__global__ void RmsNormFwdKernel(int64_t e, const float* x, const float* w, float eps, float* y, float* rstd) {
  __shared__ float scratch[32];
  const float* xi = x + blockIdx.x * e;
  float ss = 0.f;
  for (int64_t j = threadIdx.x; j < e; j += blockDim.x) ss += xi[j] * xi[j];
  const float r = rsqrtf(BlockSum(ss, scratch) / float(e) + eps);
  for (int64_t j = threadIdx.x; j < e; j += blockDim.x) y[blockIdx.x * e + j] = xi[j] * r * w[j];
  if (threadIdx.x == 0) rstd[blockIdx.x] = r;
}

__global__ void RmsNormBwdKernel(int64_t e, const float* x, const float* w, const float* rstd, const float* dy,
                                 float* dx, float* dw) {
  __shared__ float scratch[32];
  const float* xi = x + blockIdx.x * e;
  const float* gi = dy + blockIdx.x * e;
  const float r = rstd[blockIdx.x];
  float dot = 0.f;
  for (int64_t j = threadIdx.x; j < e; j += blockDim.x) dot += xi[j] * w[j] * gi[j];
  const float k = r * r * BlockSum(dot, scratch) / float(e);
  for (int64_t j = threadIdx.x; j < e; j += blockDim.x) {
    dx[blockIdx.x * e + j] = r * (w[j] * gi[j] - xi[j] * k);
    atomicAdd(dw + j, gi[j] * xi[j] * r);
  }
}

__global__ void RopeKernel(int64_t s, int64_t h, int64_t d, View3 x, View3 y, const int64_t* pos, double theta,
                           bool inverse) {
  const int64_t half = d / 2;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= s * h * half) return;
  const int64_t i = idx % half, hh = (idx / half) % h, t = idx / (half * h);
  const double a = double(pos[t]) * pow(theta, -2.0 * double(i) / double(d));  // fp64 angle: 1M positions
  const float c = float(cos(a)), sn = float(inverse ? -sin(a) : sin(a));
  const float* in = static_cast<const float*>(x.data) + t * x.stride_s + hh * x.stride_h;
  float* out = static_cast<float*>(y.data) + t * y.stride_s + hh * y.stride_h;
  const float x0 = in[i], x1 = in[i + half];
  out[i] = x0 * c - x1 * sn;
  out[i + half] = x1 * c + x0 * sn;
}

__device__ __forceinline__ float Sigmoid(float g) { return 1.f / (1.f + expf(-g)); }

__global__ void SwigluKernel(int64_t n, float* g, const float* u) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) g[i] = g[i] * Sigmoid(g[i]) * u[i];
}

// a = silu(g) u;  u := da silu(g);  g := da u silu'(g)
__global__ void SwigluBwdKernel(int64_t n, float* g, float* u, const float* da, float* a) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float sg = Sigmoid(g[i]), silu = g[i] * sg;
  a[i] = silu * u[i];
  const float dgi = da[i] * u[i] * sg * (1.f + g[i] * (1.f - sg));
  u[i] = da[i] * silu;
  g[i] = dgi;
}

// Per row of a logits block: loss = lse - z[target] (forward) or z := w (softmax - onehot) (backward).
__global__ void CrossEntropyRowKernel(int64_t vocab, float* z, const int32_t* target, const float* weight,
                                      float grad_scale, float* loss, bool backward) {
  __shared__ float scratch[32];
  float* zi = z + blockIdx.x * vocab;
  const int32_t tg = target[blockIdx.x];
  const bool skip = tg < 0 || tg >= vocab;
  float m = -INFINITY;
  for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x) m = fmaxf(m, zi[c]);
  m = BlockMax(m, scratch);
  float s = 0.f;
  for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x) s += expf(zi[c] - m);
  const float lse = m + logf(BlockSum(s, scratch));
  if (!backward) {
    if (threadIdx.x == 0) loss[blockIdx.x] = skip ? 0.f : lse - zi[tg];
    return;
  }
  const float wi = skip ? 0.f : grad_scale * (weight ? weight[blockIdx.x] : 1.f);
  __syncthreads();  // everyone has read zi before it is overwritten
  for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x)
    zi[c] = wi == 0.f ? 0.f : wi * (expf(zi[c] - lse) - (c == tg ? 1.f : 0.f));
}

__global__ void AdamWKernel(int64_t n, float* p, const float* g, float* m, float* v, float lr, float b1, float b2,
                            float eps, float decay, float inv_c1, float inv_c2) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float mi = b1 * m[i] + (1.f - b1) * g[i];
  const float vi = b2 * v[i] + (1.f - b2) * g[i] * g[i];
  p[i] = p[i] * decay - lr * (mi * inv_c1) / (sqrtf(vi * inv_c2) + eps);
  m[i] = mi;
  v[i] = vi;
}

__global__ void AddIntoKernel(int64_t n, const float* src, float* dst) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] += src[i];
}

unsigned Blocks(int64_t n, int threads = 256) { return unsigned((n + threads - 1) / threads); }

// Scratch on the device for one call, freed at the end.
struct Scratch {
  std::vector<void*> ptrs;
  ~Scratch() {
    for (void* p : ptrs) cudaFree(p);
  }
  float* Floats(size_t n) {
    void* p = nullptr;
    if (cudaMalloc(&p, n * sizeof(float)) != cudaSuccess) return nullptr;
    ptrs.push_back(p);
    return static_cast<float*>(p);
  }
};

}  // namespace

Status RmsNormForward(const Exec& ex, int64_t n, int64_t e, const float* x, const float* w, float eps, float* y,
                      float* rstd) {
  RmsNormFwdKernel<<<unsigned(n), 256, 0, StreamOf(ex)>>>(e, x, w, eps, y, rstd);
  return LastError("rmsnorm forward");
}

Status RmsNormBackward(const Exec& ex, int64_t n, int64_t e, const float* x, const float* w, const float* rstd,
                       const float* dy, float* dx, float* dw) {
  RmsNormBwdKernel<<<unsigned(n), 256, 0, StreamOf(ex)>>>(e, x, w, rstd, dy, dx, dw);
  return LastError("rmsnorm backward");
}

Status Rope(const Exec& ex, int64_t s, int64_t h, int64_t d, View3 x, View3 y, const int64_t* pos, double theta,
            bool inverse) {
  RopeKernel<<<Blocks(s * h * (d / 2)), 256, 0, StreamOf(ex)>>>(s, h, d, x, y, pos, theta, inverse);
  return LastError("rope");
}

Status FfnForward(const Exec& ex, int64_t n, int64_t e, int64_t f, const float* x, FfnWeights w, float* y,
                  int64_t block) {
  Scratch scratch;
  float* g = scratch.Floats(block * f);
  float* u = scratch.Floats(block * f);
  if (!g || !u) return Status::Error("ffn forward: out of device memory for the block scratch");
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const int64_t nb = std::min(block, n - b0);
    RW_RETURN_IF_ERROR(Sgemm(ex, false, true, nb, f, e, 1.f, x + b0 * e, e, w.w_gate.as<const float>(), e, 0.f, g, f));
    RW_RETURN_IF_ERROR(Sgemm(ex, false, true, nb, f, e, 1.f, x + b0 * e, e, w.w_up.as<const float>(), e, 0.f, u, f));
    SwigluKernel<<<Blocks(nb * f), 256, 0, StreamOf(ex)>>>(nb * f, g, u);
    RW_RETURN_IF_ERROR(Sgemm(ex, false, true, nb, e, f, 1.f, g, f, w.w_down.as<const float>(), f, 0.f, y + b0 * e, e));
  }
  RW_RETURN_IF_ERROR(LastError("ffn forward"));
  return cudaStreamSynchronize(StreamOf(ex)) == cudaSuccess ? Status::Ok() : LastError("ffn forward");
}

Status FfnBackward(const Exec& ex, int64_t n, int64_t e, int64_t f, const float* x, FfnWeights w, const float* dy,
                   float* dx, FfnGrads dw, int64_t block) {
  Scratch scratch;
  float* g = scratch.Floats(block * f);
  float* u = scratch.Floats(block * f);
  float* a = scratch.Floats(block * f);
  float* da = scratch.Floats(block * f);
  if (!g || !u || !a || !da) return Status::Error("ffn backward: out of device memory for the block scratch");
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const int64_t nb = std::min(block, n - b0);
    const float* xb = x + b0 * e;
    const float* dyb = dy + b0 * e;
    RW_RETURN_IF_ERROR(Sgemm(ex, false, true, nb, f, e, 1.f, xb, e, w.w_gate.as<const float>(), e, 0.f, g, f));
    RW_RETURN_IF_ERROR(Sgemm(ex, false, true, nb, f, e, 1.f, xb, e, w.w_up.as<const float>(), e, 0.f, u, f));
    RW_RETURN_IF_ERROR(Sgemm(ex, false, false, nb, f, e, 1.f, dyb, e, w.w_down.as<const float>(), f, 0.f, da, f));
    SwigluBwdKernel<<<Blocks(nb * f), 256, 0, StreamOf(ex)>>>(nb * f, g, u, da, a);
    RW_RETURN_IF_ERROR(Sgemm(ex, true, false, e, f, nb, 1.f, dyb, e, a, f, 1.f, dw.w_down, f));
    RW_RETURN_IF_ERROR(Sgemm(ex, false, false, nb, e, f, 1.f, g, f, w.w_gate.as<const float>(), e, 0.f, dx + b0 * e, e));
    RW_RETURN_IF_ERROR(Sgemm(ex, false, false, nb, e, f, 1.f, u, f, w.w_up.as<const float>(), e, 1.f, dx + b0 * e, e));
    RW_RETURN_IF_ERROR(Sgemm(ex, true, false, f, e, nb, 1.f, g, f, xb, e, 1.f, dw.w_gate, e));
    RW_RETURN_IF_ERROR(Sgemm(ex, true, false, f, e, nb, 1.f, u, f, xb, e, 1.f, dw.w_up, e));
  }
  RW_RETURN_IF_ERROR(LastError("ffn backward"));
  return cudaStreamSynchronize(StreamOf(ex)) == cudaSuccess ? Status::Ok() : LastError("ffn backward");
}

Status CrossEntropyForward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, const float* h, const float* w,
                           const int32_t* target, const float* weight, float* loss, double* weighted_sum,
                           int64_t block) {
  Scratch scratch;
  float* z = scratch.Floats(block * vocab);
  if (!z) return Status::Error("cross-entropy forward: out of device memory for the logits block");
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const int64_t nb = std::min(block, n - b0);
    RW_RETURN_IF_ERROR(Sgemm(ex, false, true, nb, vocab, e, 1.f, h + b0 * e, e, w, e, 0.f, z, vocab));
    CrossEntropyRowKernel<<<unsigned(nb), 256, 0, StreamOf(ex)>>>(vocab, z, target + b0, nullptr, 0.f, loss + b0,
                                                                   false);
  }
  RW_RETURN_IF_ERROR(LastError("cross-entropy forward"));
  if (weighted_sum) {  // the sum is small (N values): reduce on the host in fp64
    std::vector<float> l(n), wt(weight ? n : 0);
    cudaMemcpyAsync(l.data(), loss, n * sizeof(float), cudaMemcpyDeviceToHost, StreamOf(ex));
    if (weight) cudaMemcpyAsync(wt.data(), weight, n * sizeof(float), cudaMemcpyDeviceToHost, StreamOf(ex));
    cudaStreamSynchronize(StreamOf(ex));
    double total = 0;
    for (int64_t i = 0; i < n; ++i) total += double(weight ? wt[i] : 1.f) * double(l[i]);
    *weighted_sum = total;
  }
  return LastError("cross-entropy forward");
}

Status CrossEntropyBackward(const Exec& ex, int64_t n, int64_t e, int64_t vocab, const float* h, const float* w,
                            const int32_t* target, const float* weight, float grad_scale, float* dh, float* dw,
                            int64_t block) {
  Scratch scratch;
  float* z = scratch.Floats(block * vocab);
  if (!z) return Status::Error("cross-entropy backward: out of device memory for the logits block");
  for (int64_t b0 = 0; b0 < n; b0 += block) {
    const int64_t nb = std::min(block, n - b0);
    RW_RETURN_IF_ERROR(Sgemm(ex, false, true, nb, vocab, e, 1.f, h + b0 * e, e, w, e, 0.f, z, vocab));
    CrossEntropyRowKernel<<<unsigned(nb), 256, 0, StreamOf(ex)>>>(vocab, z, target + b0,
                                                                   weight ? weight + b0 : nullptr, grad_scale,
                                                                   nullptr, true);
    RW_RETURN_IF_ERROR(Sgemm(ex, false, false, nb, e, vocab, 1.f, z, vocab, w, e, 0.f, dh + b0 * e, e));
    RW_RETURN_IF_ERROR(Sgemm(ex, true, false, vocab, e, nb, 1.f, z, vocab, h + b0 * e, e, 1.f, dw, e));
  }
  RW_RETURN_IF_ERROR(LastError("cross-entropy backward"));
  return cudaStreamSynchronize(StreamOf(ex)) == cudaSuccess ? Status::Ok() : LastError("cross-entropy backward");
}

Status AdamWStep(const Exec& ex, int64_t n, float* p, const float* g, float* m, float* v, const AdamWHyper& hp,
                 int64_t step) {
  const float inv_c1 = float(1.0 / (1.0 - std::pow(double(hp.beta1), double(step))));
  const float inv_c2 = float(1.0 / (1.0 - std::pow(double(hp.beta2), double(step))));
  AdamWKernel<<<Blocks(n), 256, 0, StreamOf(ex)>>>(n, p, g, m, v, hp.lr, hp.beta1, hp.beta2, hp.eps,
                                                   1.f - hp.lr * hp.weight_decay, inv_c1, inv_c2);
  return LastError("adamw");
}

Status AddInto(const Exec& ex, int64_t n, const float* src, float* dst) {
  AddIntoKernel<<<Blocks(n), 256, 0, StreamOf(ex)>>>(n, src, dst);
  return LastError("add");
}

Status LinearForward(const Exec& ex, int64_t n, int64_t in, int64_t out, const float* x, const float* w, float* y) {
  return Sgemm(ex, false, true, n, out, in, 1.f, x, in, w, in, 0.f, y, out);
}

Status LinearBackward(const Exec& ex, int64_t n, int64_t in, int64_t out, const float* x, const float* w,
                      const float* dy, float* dx, float* dw) {
  if (dx) RW_RETURN_IF_ERROR(Sgemm(ex, false, false, n, in, out, 1.f, dy, out, w, in, 0.f, dx, in));
  return Sgemm(ex, true, false, out, in, n, 1.f, dy, out, x, in, 1.f, dw, in);
}

}  // namespace rw::kernels::cuda
