// The backend interface (after ggml's): one table of function pointers per device. Each op is an entry;
// `supports(op, dtype)` says which (op, dtype) pairs the table runs. The public entry points
// (kernels/attention.h, kernels/layers.h) validate their arguments once, pick the table of the caller's
// device, check that it supports the op in the operands' dtype, and call the entry. Adding a backend (a GPU
// architecture, a CPU ISA) means writing one table; no entry point changes.
//
// The dtype an op is dispatched on (its "compute dtype"):
//   attention ops         AttentionParams::dtype (q, k, v, dout)
//   linear, ffn, ce       the weights' dtype (the bf16 compute copy or the fp32 master)
//   rmsnorm forward       the output's dtype (the reductions are fp32 either way)
//   cast                  the narrow side (bf16 for f32 <-> bf16)
//   everything else       f32 (statistics, gradients, optimizer state, the residual stream)
#pragma once

#include <string>

#include "kernels/attention.h"
#include "kernels/layers.h"
#include "kernels/vision.h"

namespace rw::kernels {

enum class Op : int {
  kAttentionForward,
  kAttentionBackwardPrep,
  kAttentionBackward,
  kAttentionMerge,
  kLinearForward,
  kLinearBackward,
  kRmsNormForward,
  kRmsNormBackward,
  kRope,
  kFfnForward,
  kFfnBackward,
  kCrossEntropyForward,
  kCrossEntropyBackward,
  kAdamW,
  kAddInto,
  kCast,
  kEmbeddingForward,
  kEmbeddingBackward,
  kConv2dForward,
  kGroupNormForward,
  kUpsampleNearest,
  kNearestCode,
  kCount
};
const char* OpName(Op op);

// The shapes of one model step on a rank, for what a backend's kernels hold beside their operands.
struct StepShape {
  int64_t tokens = 0;                              // the rank's rows
  int64_t hidden = 0, ffn = 0, vocab = 0;          // vocab: the widest softmax the loss head runs
  int64_t heads = 0, kv_heads = 0, head_dim = 0;
  int64_t threads = 1;                             // kernel threads of the rank
  DType dtype = DType::kF32;                       // the step's compute precision
};

struct Backend {
  const char* name = "";
  Device device = Device::kCpu;
  // True when the device can run now (a CUDA build on a machine without a GPU has the table, not the device).
  bool (*available)() = nullptr;
  bool (*supports)(Op op, DType dtype) = nullptr;
  // What runs the GEMMs and attention in `dtype` on this machine, for the logs ("GEMMs by ...; attention
  // by ..."): decided at run time by the CPU's features or the GPU's.
  std::string (*describe)(DType dtype) = nullptr;
  // Bytes this backend's kernels hold for a step of these shapes besides their operands (blocks of the FFN
  // and the loss head, packed operands, tables, per-thread tiles): an estimate for the memory plan, made
  // from the kernels' own block sizes and on this machine's features.
  int64_t (*scratch_bytes)(const StepShape& s) = nullptr;

  // The device's memory (kernels/device_memory.h dispatches here): allocation, copies between the host and
  // the device and on the device, memset, and waiting for the device's queued work.
  enum class CopyKind { kToDevice, kToHost, kOnDevice };
  Status (*alloc)(size_t bytes, void** ptr) = nullptr;
  void (*free)(void* ptr) = nullptr;
  Status (*copy)(CopyKind kind, void* dst, const void* src, size_t bytes) = nullptr;
  Status (*memset)(void* dst, int value, size_t bytes) = nullptr;
  Status (*synchronize)() = nullptr;

  // Optional: this backend's constraints beyond the shared checks (head dims, alignment, o's dtype); the
  // message names the argument.
  Status (*check_attention)(const AttentionParams& p, bool backward) = nullptr;

  // Shapes, pointers and ranges are checked by the entry points before these run.
  Status (*attention_forward)(const AttentionParams& p) = nullptr;
  Status (*attention_backward_prep)(const AttentionParams& p) = nullptr;
  Status (*attention_backward)(const AttentionParams& p) = nullptr;
  Status (*attention_merge)(DType dtype, int64_t sq, int64_t hq, int64_t d, View3 o_acc, float* lse_acc,
                            View3 o_part, const float* lse_part, void* stream) = nullptr;
  Status (*linear_forward)(const Exec& ex, int64_t n, int64_t in, int64_t out, View x, View w, View y) = nullptr;
  Status (*linear_backward)(const Exec& ex, int64_t n, int64_t in, int64_t out, View x, View w, View dy, View dx,
                            float* dw) = nullptr;
  Status (*rmsnorm_forward)(const Exec& ex, int64_t n, int64_t e, const float* x, const float* w, float eps, View y,
                            float* rstd) = nullptr;
  Status (*rmsnorm_backward)(const Exec& ex, int64_t n, int64_t e, View x, const float* w, const float* rstd,
                             View dy, View dx, float* dw) = nullptr;
  Status (*rope)(const Exec& ex, int64_t s, int64_t h, int64_t d, View3 x, View3 y, const int64_t* pos,
                 double theta, bool inverse) = nullptr;
  Status (*ffn_forward)(const Exec& ex, int64_t n, int64_t e, int64_t f, View x, FfnWeights w, View y,
                        int64_t block) = nullptr;
  Status (*ffn_backward)(const Exec& ex, int64_t n, int64_t e, int64_t f, View x, FfnWeights w, View dy,
                         float* dx, FfnGrads dw, int64_t block) = nullptr;
  Status (*cross_entropy_forward)(const Exec& ex, int64_t n, int64_t e, int64_t vocab, View h, View w,
                                  const int32_t* target, const float* weight, float* loss, double* weighted_sum,
                                  int64_t block) = nullptr;
  Status (*cross_entropy_backward)(const Exec& ex, int64_t n, int64_t e, int64_t vocab, View h, View w,
                                   const int32_t* target, const float* weight, float grad_scale, float* dh,
                                   float* dw, int64_t block) = nullptr;
  Status (*adamw_step)(const Exec& ex, int64_t n, View p, View g, View m, View v, const AdamWHyper& hp,
                       int64_t step) = nullptr;
  Status (*add_into)(const Exec& ex, int64_t n, View src, View dst) = nullptr;
  Status (*cast)(const Exec& ex, int64_t n, View src, View dst) = nullptr;
  Status (*embedding_forward)(const Exec& ex, int64_t n, int64_t e, const int32_t* ids, View table,
                              View x) = nullptr;
  Status (*embedding_backward)(const Exec& ex, int64_t n, int64_t e, const int32_t* ids, View dx,
                               View dtable) = nullptr;
  // The VQGAN's ops (kernels/vision.h).
  Status (*conv2d_forward)(const Exec& ex, const Conv2dShape& s, const float* x, const float* w, const float* bias,
                           float* y) = nullptr;
  Status (*group_norm_forward)(const Exec& ex, int64_t n, int64_t pixels, int64_t c, int64_t groups, float eps,
                               const float* x, const float* scale, const float* bias, bool silu, float* y) = nullptr;
  Status (*upsample_nearest2x)(const Exec& ex, int64_t n, int64_t h, int64_t w, int64_t c, const float* x,
                               float* y) = nullptr;
  Status (*nearest_code)(const Exec& ex, int64_t n, int64_t d, int64_t k, const float* z, const float* codebook,
                         int32_t* index) = nullptr;
};

// The table of `device` in this build; null when the build has none (CUDA not compiled in).
const Backend* FindBackend(Device device);
// Host memory's entries (malloc, memcpy, memset), which the host devices' tables (ref, cpu) take.
void SetHostMemory(Backend* b);

// Backend::describe of `device` ("no <device> backend in this build" when there is none).
std::string DescribeBackend(Device device, DType dtype);
// Backend::scratch_bytes of `device`; for CUDA also in a build without its table (kernels/cuda/scratch.h);
// 0 when there is no estimate.
int64_t KernelScratchBytes(Device device, const StepShape& s);

// The table that runs `op` in `dtype` on `device`, or an error that names the device, op and dtype.
Status Dispatch(Device device, Op op, DType dtype, const Backend** out);

// check_attention of host backends that write o in fp32 (the running (O, lse) stays fp32 across ring hops).
Status AttentionWritesF32(const AttentionParams& p, bool backward);

// The tables (each defined beside its kernels).
const Backend& RefBackend();
const Backend& CpuBackend();
#ifdef RW_HAVE_CUDA
const Backend& CudaBackend();
#endif

}  // namespace rw::kernels
