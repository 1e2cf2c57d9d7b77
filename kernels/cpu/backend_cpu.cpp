// The CPU backend's table. fp32 everywhere; bf16 for the ops whose GEMMs take bf16 operands (attention,
// linear, ffn, cross-entropy), for the rmsnorm output and for casts. Which bf16 GEMM kernel runs is decided
// at run time by what the CPU has (cpu/gemm.h, Bf16GemmPath()).
#include "kernels/backend.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/amx.h"
#include "kernels/cpu/gemm.h"
#include "kernels/layers.h"

#include <algorithm>

namespace rw::kernels {
namespace {

bool Supports(Op op, DType dtype) {
  if (dtype == DType::kF32) return true;
  if (dtype != DType::kBF16) return false;
  switch (op) {
    case Op::kAttentionForward:
    case Op::kAttentionBackwardPrep:
    case Op::kAttentionBackward:
    case Op::kLinearForward:
    case Op::kLinearBackward:
    case Op::kRmsNormForward:
    case Op::kFfnForward:
    case Op::kFfnBackward:
    case Op::kCrossEntropyForward:
    case Op::kCrossEntropyBackward:
    case Op::kCast:
      return true;
    default:
      return false;
  }
}

// The CPU kernels' scratch (kernels/cpu/layers_cpu.cpp, attention_cpu.cpp, attention_amx.cpp; thread-local
// and kept, so the parts add up): the FFN's blocks (gate, up in the forward; gate, up, act, dact in the
// backward; their bf16 copies), the loss head's logits blocks, the bf16 operand copies of fp32 inputs, the
// RMSNorm dw partials, RoPE's cos/sin tables (kept below 64 MiB), the attention's turn table, AMX's packed
// operands (where the CPU has AMX); per kernel thread the attention's tiles.
int64_t ScratchBytes(const StepShape& s) {
  const bool bf16 = s.dtype == DType::kBF16;
  const int64_t S = s.tokens, HQ = s.heads * s.head_dim, HK = s.kv_heads * s.head_dim;
  const int64_t bf = TokenBlock(s.ffn), bc = TokenBlock(s.vocab);
  int64_t k = (bf16 ? 32 : 24) * bf * s.ffn + (bf16 ? 10 : 8) * bc * s.vocab + 4 * s.threads * s.hidden;
  if (bf16) k += S * (8 * HQ + 4 * HK + 2 * std::max(s.hidden, HQ) + 2 * s.hidden);
  if (4 * S * s.head_dim <= (int64_t(64) << 20)) k += 2 * (8 * S + 4 * S * s.head_dim);
  const int64_t tiles = (S + 127) / 128;
  k += 4 * tiles * tiles;
  if (bf16 && cpu::amx::Available()) k += S * (10 * HK + 8 * HQ);
  const int64_t g = std::max<int64_t>(1, s.heads / std::max<int64_t>(1, s.kv_heads));
  k += s.threads * (512 * g * (2 * s.head_dim + 258) + 512 * g * (3 * s.head_dim + 258) + 1024 * s.head_dim + 3072);
  return k;
}

Backend Make() {
  Backend b;
  b.name = "cpu";
  b.device = Device::kCpu;
  SetHostMemory(&b);
  b.supports = Supports;
  b.describe = [](DType dtype) {
    if (dtype == DType::kBF16)
      return std::string("GEMMs by ") + cpu::Bf16GemmPath() + "; attention by " + cpu::Bf16AttentionPath();
    return std::string("GEMMs by ") + cpu::BlasName();
  };
  b.scratch_bytes = ScratchBytes;
  b.check_attention = AttentionWritesF32;
  b.attention_forward = cpu::AttentionForward;
  b.attention_backward_prep = cpu::AttentionBackwardPrep;
  b.attention_backward = cpu::AttentionBackward;
  b.attention_merge = cpu::AttentionMerge;
  b.linear_forward = cpu::LinearForward;
  b.linear_backward = cpu::LinearBackward;
  b.rmsnorm_forward = cpu::RmsNormForward;
  // The fp32-only ops read their views as floats (supports() refused any other dtype before they run).
  b.rmsnorm_backward = [](const Exec& ex, int64_t n, int64_t e, View x, const float* w, const float* rstd, View dy,
                          View dx, float* dw) {
    return cpu::RmsNormBackward(ex, n, e, x.as<const float>(), w, rstd, dy.as<const float>(), dx.as<float>(), dw);
  };
  b.rope = cpu::Rope;
  b.ffn_forward = cpu::FfnForward;
  b.ffn_backward = cpu::FfnBackward;
  b.cross_entropy_forward = cpu::CrossEntropyForward;
  b.cross_entropy_backward = cpu::CrossEntropyBackward;
  b.adamw_step = [](const Exec& ex, int64_t n, View p, View g, View m, View v, const AdamWHyper& hp, int64_t step) {
    return cpu::AdamWStep(ex, n, p.as<float>(), g.as<const float>(), m.as<float>(), v.as<float>(), hp, step);
  };
  b.add_into = [](const Exec& ex, int64_t n, View src, View dst) {
    return cpu::AddInto(ex, n, src.as<const float>(), dst.as<float>());
  };
  b.cast = cpu::Cast;
  b.embedding_forward = [](const Exec& ex, int64_t n, int64_t e, const int32_t* ids, View table, View x) {
    return cpu::EmbeddingForward(ex, n, e, ids, table.as<const float>(), x.as<float>());
  };
  b.embedding_backward = [](const Exec& ex, int64_t n, int64_t e, const int32_t* ids, View dx, View dt) {
    return cpu::EmbeddingBackward(ex, n, e, ids, dx.as<const float>(), dt.as<float>());
  };
  b.conv2d_forward = cpu::Conv2dForward;
  b.group_norm_forward = cpu::GroupNormForward;
  b.upsample_nearest2x = cpu::UpsampleNearest2x;
  b.nearest_code = cpu::NearestCode;
  return b;
}

}  // namespace

const Backend& CpuBackend() {
  static const Backend b = Make();
  return b;
}

}  // namespace rw::kernels
