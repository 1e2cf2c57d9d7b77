// What the CUDA kernels hold beside their operands, as plain host code: compiled in every build, so that
// `ringworld plan --device cuda` sizes a GPU job on a machine whose build has no CUDA backend.
#pragma once

#include <cstdint>

#include "kernels/backend.h"

namespace rw::kernels::cuda {

// kernels/cuda/layers_cuda.cu allocates device memory for one call and frees it at the call's end, so the
// peak is the largest call's: the FFN backward's four (block x F) fp32 buffers, or the loss head's
// (block x vocab) logits. Attention keeps its tiles in shared memory.
int64_t ScratchBytes(const StepShape& s);

}  // namespace rw::kernels::cuda
