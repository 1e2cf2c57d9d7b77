#include "kernels/cuda/scratch.h"

#include <algorithm>

#include "kernels/layers.h"

namespace rw::kernels::cuda {

int64_t ScratchBytes(const StepShape& s) {
  return std::max(16 * TokenBlock(s.ffn) * s.ffn, 4 * TokenBlock(s.vocab) * s.vocab);
}

}  // namespace rw::kernels::cuda
