// Counter-based random numbers: splitmix64. The value for (seed, stream, index) is the same wherever and
// whenever it is computed, which is what lets every rank make its own rows of a global batch or problem.
#pragma once

#include <cstdint>

namespace rw::runtime {

inline uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace rw::runtime
