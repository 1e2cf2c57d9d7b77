// Per-thread scratch for the CPU kernels' temporaries. A buffer keeps its capacity from call to call, so
// once a thread has run a kernel at its largest shape, the kernel makes no heap allocation. With the
// rank's workspace above it (runtime/model.h), this is what keeps the hot path free of allocation.
// Each use site names its own tag type (`Scratch<float, struct FfnGate>(n)`), so two buffers alive at
// once never share storage; internal linkage keeps tags of different files apart. The contents are what
// the thread's last use left: a site writes before it reads, or clears. A buffer taken before a parallel
// region is the calling thread's, shared by the region through the reference; one taken inside is each
// thread's own.
#pragma once

#include <cstddef>
#include <vector>

namespace rw::kernels::cpu {
namespace {

template <class T, class Tag>
std::vector<T>& Scratch(size_t n) {
  thread_local std::vector<T> buffer;
  buffer.resize(n);  // never shrinks its capacity: no allocation at or below the largest n seen
  return buffer;
}

}  // namespace
}  // namespace rw::kernels::cpu
