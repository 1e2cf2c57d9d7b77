// CRC32C (Castagnoli), as used by the transports' message checks and the checkpoint manifests.
// Hardware crc32 instruction when the build targets SSE4.2, a table otherwise.
#pragma once

#include <cstddef>
#include <cstdint>

namespace rw::runtime {

// Extends `crc` (0 to start) over `n` bytes.
uint32_t Crc32c(const void* data, size_t n, uint32_t crc = 0);

}  // namespace rw::runtime
