// Runs one function per rank on its own thread over an in-process fabric, under a watchdog: if the ranks
// are not done by the deadline the fabric is aborted (so every wait fails), the test fails, and the
// threads still join. No test can hang. Also the small random models the model tests share.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <future>
#include <thread>
#include <vector>

#include "runtime/inproc_transport.h"
#include "runtime/mesh.h"
#include "runtime/model.h"

namespace rw::runtime::test {

// Runs fn(r) for r in [0, n) on threads of their own; past the deadline, fails the test and calls abort()
// (which must make every rank's waits fail), then joins them all.
inline std::vector<Status> RunThreads(int n, const std::function<Status(int)>& fn, std::chrono::milliseconds deadline,
                                      const std::function<void()>& abort) {
  std::vector<std::promise<Status>> done(n);
  std::vector<std::future<Status>> results;
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    results.push_back(done[r].get_future());
    threads.emplace_back([&, r] { done[r].set_value(fn(r)); });
  }
  const auto until = std::chrono::steady_clock::now() + deadline;
  bool timed_out = false;
  for (auto& f : results)
    if (f.wait_until(until) != std::future_status::ready) timed_out = true;
  if (timed_out) {
    ADD_FAILURE() << "watchdog: ranks still running after " << deadline.count() << " ms; aborting their rings";
    abort();
  }
  for (auto& t : threads) t.join();
  std::vector<Status> out;
  for (auto& f : results) out.push_back(f.get());
  return out;
}

inline std::vector<Status> RunRanks(const std::shared_ptr<InprocFabric>& fabric,
                                    const std::function<Status(int, Transport&)>& fn,
                                    std::chrono::milliseconds deadline = std::chrono::milliseconds(60000)) {
  return RunThreads(
      fabric->size(), [&](int r) { return fn(r, *fabric->Endpoint(r)); }, deadline,
      [&] { fabric->AbortAll("watchdog"); });
}

// The same over a mesh (InprocMesh: the world ring and the mesh's sub-rings); the watchdog aborts them all.
inline std::vector<Status> RunMesh(const Mesh& mesh, const std::function<Status(int, const RankRings&)>& fn,
                                   std::chrono::milliseconds deadline = std::chrono::milliseconds(120000)) {
  const std::vector<RankRings> rings = InprocMesh(mesh);
  return RunThreads(
      int(mesh.world()), [&](int r) { return fn(r, rings[size_t(r)]); }, deadline,
      [&] {
        for (const auto& x : rings) x.Abort("watchdog");
      });
}

// A small random LLaMA for model tests: the given shape, HF initialization scaled by `scale` (sharper
// distributions than the 0.02 init).
inline std::vector<float> ScaledInit(const ModelConfig& c, uint64_t seed, float scale) {
  const ParamTable tb(c);
  std::vector<float> p(tb.total());
  InitParameters(c, tb, seed, p.data());
  for (auto& x : p) x *= scale;
  return p;
}

inline ModelConfig SmallModel(int64_t vocab, int64_t hidden, int64_t inter, int64_t layers, int64_t heads,
                              int64_t kv_heads) {
  ModelConfig c;
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.intermediate_size = inter;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  return c;
}

}  // namespace rw::runtime::test
