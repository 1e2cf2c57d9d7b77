// What keeps the REST API answering under load and against clients that hold its threads.
//
// cpp-httplib (0.11, Debian's) serves each connection on a thread of a fixed pool and times out each
// recv, not a request: a client sending one byte a second holds a thread for as long as it likes, and a
// few dozen such clients stop the API. The guard:
//   - runs the pool (threads, and a count of the connections waiting for one);
//   - watches the API port's connections (the process's sockets bound to it, every 100 ms): one that has
//     not delivered a whole request within `request_deadline` of being accepted, or of its previous answer
//     (plus the keep-alive wait), is shut down, which returns its thread;
//   - says when more than `max_queued` connections wait for a thread: the API then answers 503 with
//     Retry-After at once instead of queueing without bound.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace httplib {
class TaskQueue;
struct Request;
}  // namespace httplib

namespace rw::scheduler {

struct ApiGuardOptions {
  int threads = 32;
  int max_queued = 64;
  std::chrono::milliseconds request_deadline{10000};
  std::chrono::milliseconds keep_alive{5000};  // the server's keep-alive wait for a next request
  std::function<void()> on_cut;                 // each connection cut (a metric)
};

class ApiGuard {
 public:
  explicit ApiGuard(ApiGuardOptions opt) : opt_(opt) {}
  ~ApiGuard() { Stop(); }
  ApiGuard(const ApiGuard&) = delete;
  ApiGuard& operator=(const ApiGuard&) = delete;

  // The thread pool for httplib::Server::new_task_queue (the server owns and deletes it).
  httplib::TaskQueue* NewTaskQueue();
  // Starts watching the connections of `port` (the API's, once bound).
  void Start(int port);
  void Stop();
  // From the pre-routing handler: the request of this connection is read; its handler runs.
  void RequestRead(const httplib::Request& req);
  // From the logger: the request is answered; the connection may send another.
  void Answered(const httplib::Request& req);
  // More connections wait for a thread than allowed: answer 503 now.
  bool Overloaded() const { return queued_.load() > opt_.max_queued; }
  int64_t queued() const { return queued_.load(); }
  int64_t cut() const { return cut_.load(); }  // connections shut down for a request not delivered in time

 private:
  using Clock = std::chrono::steady_clock;
  struct Conn {
    std::string peer;
    Clock::time_point deadline;
    bool serving = false;
  };
  void Watch();
  void Scan();
  // The peer ("addr:port") of descriptor `fd` when it is a connected IP socket whose local end is `port`,
  // else "". It reads descriptors httplib may close meanwhile (by design; see ops/sanitizers/tsan.supp).
  static std::string PeerOnPort(int fd, int port);

  const ApiGuardOptions opt_;
  int port_ = 0;
  std::atomic<int64_t> queued_{0}, cut_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::map<int, Conn> conns_;               // by file descriptor
  std::map<std::string, int> by_peer_;      // "addr:port" -> file descriptor
  std::thread watcher_;
};

}  // namespace rw::scheduler
