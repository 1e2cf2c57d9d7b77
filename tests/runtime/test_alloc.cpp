// The hot path allocates nothing: with the rank's workspace kept across steps (the model's and the ring's
// buffers) and the kernels' per-thread scratch (kernels/cpu/scratch.h), an fp32 step after the first makes
// no heap allocation at all. Counted by replacing the global operator new in this test binary alone. bf16
// steps still allocate inside oneDNN's matmul execute (its execution context, outside our code; our calls
// keep their memory objects and pass the arguments on the stack): for them
// the test checks that nothing grows from step to step. One device: no transport message is in the count.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <random>

#include "ring_harness.h"
#include "runtime/model.h"

namespace {
std::atomic<bool> g_counting{false};
std::atomic<int64_t> g_calls{0}, g_bytes{0};
}  // namespace

void* operator new(std::size_t n) {
  if (g_counting.load(std::memory_order_relaxed)) {
    g_calls.fetch_add(1, std::memory_order_relaxed);
    g_bytes.fetch_add(int64_t(n), std::memory_order_relaxed);
  }
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace rw::runtime {
namespace {

using test::RunRanks;

RankBatch RandomShard(int64_t S, int64_t vocab, uint64_t seed) {
  std::mt19937 gen{uint32_t(seed)};
  RankBatch b;
  for (int64_t i = 0; i < S; ++i) {
    b.index.push_back(i);
    b.tokens.push_back(int32_t(gen() % vocab));
    b.targets.push_back(int32_t(gen() % vocab));
    b.weights.push_back(1.f);
    b.positions.push_back(i);
    b.segments.push_back(0);
  }
  return b;
}

TEST(HotPath, AnFp32StepAfterTheFirstAllocatesNothing) {
  const ModelConfig c = test::SmallModel(61, 32, 48, 2, 4, 2);
  const ParamTable tb(c);
  std::vector<float> params(tb.total()), grads(tb.total());
  InitParameters(c, tb, 3, params.data());
  std::vector<kernels::bf16> compute(tb.total());
  ASSERT_TRUE(kernels::Cast(kernels::Exec{kernels::Device::kCpu, 1}, int64_t(tb.total()), params.data(), compute.data()).ok());
  const RankBatch b = RandomShard(96, c.vocab_size, 5);
  for (kernels::DType dt : {kernels::DType::kF32, kernels::DType::kBF16})
    for (bool remat : {false, true}) {
      ModelWorkspace ws;
      int64_t calls[4] = {0, 0, 0, 0}, bytes[4] = {0, 0, 0, 0};  // steps 1-3 kept; then one without
      auto fabric = InprocFabric::Create(1);
      auto st = RunRanks(fabric, [&](int, Transport& t) -> Status {
        for (int step = 0; step < 4; ++step) {
          ModelExec mx;
          mx.workspace = step < 3 ? &ws : nullptr;
          mx.num_threads = 2;  // the kernels' worker threads keep their scratch too
          mx.remat_layers = remat;
          mx.precision = dt;
          mx.compute_params = compute.data();
          mx.tag.step = uint32_t(step);
          double loss = 0;
          g_calls = 0;
          g_bytes = 0;
          g_counting = true;
          const Status s = ForwardBackward(t, c, tb, mx, params.data(), b, 0.01f, grads.data(), &loss);
          g_counting = false;
          RW_RETURN_IF_ERROR(s);
          calls[step] = g_calls;
          bytes[step] = g_bytes;
        }
        return Status::Ok();
      });
      ASSERT_TRUE(st[0].ok()) << st[0].message();
      std::printf("  %s%s: step 1 %lld allocations (%lld bytes), step 2 %lld (%lld), step 3 %lld (%lld); "
                  "a step without the kept workspace %lld (%lld)\n",
                  kernels::DTypeName(dt), remat ? " remat" : "", (long long)calls[0], (long long)bytes[0],
                  (long long)calls[1], (long long)bytes[1], (long long)calls[2], (long long)bytes[2],
                  (long long)calls[3], (long long)bytes[3]);
      EXPECT_LT(calls[1], calls[3]) << "the kept workspace saves no allocation";
      EXPECT_LT(bytes[1], bytes[3]) << "the kept workspace saves no bytes";
      EXPECT_EQ(calls[2], calls[1]) << "allocations grow from step to step";
      if (dt == kernels::DType::kF32) EXPECT_EQ(calls[1], 0) << "an fp32 step after the first allocated";
      EXPECT_EQ(bytes[2], bytes[1]) << "allocated bytes grow from step to step";
    }
}

}  // namespace
}  // namespace rw::runtime
