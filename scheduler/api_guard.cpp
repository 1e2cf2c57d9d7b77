#include "scheduler/api_guard.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cstdlib>
#include <deque>
#include <functional>
#include <set>
#include <vector>

namespace rw::scheduler {
namespace {

// A fixed pool that counts the connections waiting for a thread.
class CountingPool : public httplib::TaskQueue {
 public:
  CountingPool(int n, std::atomic<int64_t>* queued) : queued_(queued) {
    for (int i = 0; i < n; ++i) threads_.emplace_back([this] { Work(); });
  }
  void enqueue(std::function<void()> fn) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.push_back(std::move(fn));
      ++*queued_;
    }
    cv_.notify_one();
  }
  void shutdown() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

 private:
  void Work() {
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
        if (jobs_.empty()) return;  // stopping, and nothing left
        fn = std::move(jobs_.front());
        jobs_.pop_front();
        --*queued_;
      }
      fn();
    }
  }
  std::atomic<int64_t>* const queued_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// "addr:port" of a socket's local (peer = false) or remote end, as httplib writes remote_addr; "" when
// it is not a connected IP socket.
std::string Endpoint(int fd, bool peer, int* port) {
  sockaddr_storage a{};
  socklen_t len = sizeof(a);
  if ((peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len)
            : ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len)) != 0)
    return "";
  char host[INET6_ADDRSTRLEN] = {};
  if (a.ss_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(&a);
    ::inet_ntop(AF_INET, &v4->sin_addr, host, sizeof(host));
    *port = ntohs(v4->sin_port);
  } else if (a.ss_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&a);
    ::inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof(host));
    *port = ntohs(v6->sin6_port);
  } else {
    return "";
  }
  return std::string(host) + ":" + std::to_string(*port);
}

std::string PeerOf(const httplib::Request& req) { return req.remote_addr + ":" + std::to_string(req.remote_port); }

}  // namespace

httplib::TaskQueue* ApiGuard::NewTaskQueue() { return new CountingPool(opt_.threads, &queued_); }

void ApiGuard::Start(int port) {
  port_ = port;
  watcher_ = std::thread([this] { Watch(); });
}

void ApiGuard::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
}

void ApiGuard::RequestRead(const httplib::Request& req) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = by_peer_.find(PeerOf(req));
  if (it != by_peer_.end()) conns_[it->second].serving = true;
}

void ApiGuard::Answered(const httplib::Request& req) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = by_peer_.find(PeerOf(req));
  if (it == by_peer_.end()) return;
  Conn& c = conns_[it->second];
  c.serving = false;
  c.deadline = Clock::now() + opt_.keep_alive + opt_.request_deadline;
}

void ApiGuard::Watch() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    lock.unlock();
    Scan();
    lock.lock();
    cv_.wait_for(lock, std::chrono::milliseconds(100), [&] { return stop_; });
  }
}

std::string ApiGuard::PeerOnPort(int fd, int port) {
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return "";
  int local = 0, remote = 0;
  if (Endpoint(fd, false, &local).empty() || local != port) return "";
  return Endpoint(fd, true, &remote);
}

void ApiGuard::Scan() {
  // The process's connected sockets whose local end is the API port (the listening one has no peer).
  std::map<int, std::string> seen;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (dirent* e = ::readdir(d)) {
      char* end = nullptr;
      const long fd = std::strtol(e->d_name, &end, 10);
      if (end == e->d_name || *end != '\0' || fd == ::dirfd(d)) continue;
      const std::string peer = PeerOnPort(int(fd), port_);
      if (!peer.empty()) seen[int(fd)] = peer;
    }
    ::closedir(d);
  }
  const auto now = Clock::now();
  std::vector<std::pair<int, std::string>> late;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = conns_.begin(); it != conns_.end();) {  // closed, or the descriptor reused by another
      auto s = seen.find(it->first);
      if (s == seen.end() || s->second != it->second.peer) {
        by_peer_.erase(it->second.peer);
        it = conns_.erase(it);
      } else {
        ++it;
      }
    }
    for (const auto& [fd, peer] : seen)
      if (!conns_.count(fd)) {
        conns_[fd] = Conn{peer, now + opt_.request_deadline, false};
        by_peer_[peer] = fd;
      }
    for (auto& [fd, c] : conns_)
      if (!c.serving && now > c.deadline) {
        late.push_back({fd, c.peer});
        c.deadline = Clock::time_point::max();  // shut down once
      }
  }
  for (const auto& [fd, peer] : late) {
    // Closed meanwhile, or the descriptor reused: act only on the same connection (API port and peer).
    if (PeerOnPort(fd, port_) != peer) continue;
    ::shutdown(fd, SHUT_RDWR);  // its thread's read fails and it closes the socket
    ++cut_;
    if (opt_.on_cut) opt_.on_cut();
  }
}

}  // namespace rw::scheduler
