// The CPU backend's table. fp32 everywhere; bf16 for the ops whose GEMMs take bf16 operands (attention,
// linear, ffn, cross-entropy), for the rmsnorm output and for casts. Which bf16 GEMM kernel runs is decided
// at run time by what the CPU has (cpu/gemm.h, Bf16GemmPath()).
#include "kernels/backend.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/gemm.h"

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

Backend Make() {
  Backend b;
  b.name = "cpu";
  b.device = Device::kCpu;
  b.supports = Supports;
  b.describe = [](DType dtype) {
    if (dtype == DType::kBF16)
      return std::string("GEMMs by ") + cpu::Bf16GemmPath() + "; attention by " + cpu::Bf16AttentionPath();
    return std::string("GEMMs by ") + cpu::BlasName();
  };
  b.check_attention = AttentionWritesF32;
  b.attention_forward = cpu::AttentionForward;
  b.attention_backward_prep = cpu::AttentionBackwardPrep;
  b.attention_backward = cpu::AttentionBackward;
  b.attention_merge = cpu::AttentionMerge;
  b.linear_forward = cpu::LinearForward;
  b.linear_backward = cpu::LinearBackward;
  b.rmsnorm_forward = cpu::RmsNormForward;
  b.rmsnorm_backward = cpu::RmsNormBackward;
  b.rope = cpu::Rope;
  b.ffn_forward = cpu::FfnForward;
  b.ffn_backward = cpu::FfnBackward;
  b.cross_entropy_forward = cpu::CrossEntropyForward;
  b.cross_entropy_backward = cpu::CrossEntropyBackward;
  b.adamw_step = cpu::AdamWStep;
  b.add_into = cpu::AddInto;
  b.cast = cpu::Cast;
  b.embedding_forward = cpu::EmbeddingForward;
  b.embedding_backward = cpu::EmbeddingBackward;
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
