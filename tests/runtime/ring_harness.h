// Runs one function per rank on its own thread over an in-process fabric, under a watchdog: if the ranks
// are not done by the deadline the fabric is aborted (so every wait fails), the test fails, and the
// threads still join. No test can hang.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <future>
#include <thread>
#include <vector>

#include "runtime/inproc_transport.h"

namespace rw::runtime::test {

inline std::vector<Status> RunRanks(const std::shared_ptr<InprocFabric>& fabric,
                                    const std::function<Status(int, Transport&)>& fn,
                                    std::chrono::milliseconds deadline = std::chrono::milliseconds(60000)) {
  const int R = fabric->size();
  std::vector<std::promise<Status>> done(R);
  std::vector<std::future<Status>> results;
  std::vector<std::thread> threads;
  for (int r = 0; r < R; ++r) {
    results.push_back(done[r].get_future());
    threads.emplace_back([&, r] {
      auto ep = fabric->Endpoint(r);
      done[r].set_value(fn(r, *ep));
    });
  }
  const auto until = std::chrono::steady_clock::now() + deadline;
  bool timed_out = false;
  for (auto& f : results)
    if (f.wait_until(until) != std::future_status::ready) timed_out = true;
  if (timed_out) {
    ADD_FAILURE() << "watchdog: ranks still running after " << deadline.count() << " ms; aborting the ring";
    fabric->AbortAll("watchdog");
  }
  for (auto& t : threads) t.join();
  std::vector<Status> out;
  for (auto& f : results) out.push_back(f.get());
  return out;
}

}  // namespace rw::runtime::test
