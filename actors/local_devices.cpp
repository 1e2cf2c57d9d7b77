#include "actors/local_devices.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <thread>

extern char** environ;

namespace rw::actors {

using kernels::Status;

LocalDevices::LocalDevices(const LocalDeviceOptions& o) : opt_(o), sys_(std::make_unique<caf::actor_system>(cfg_)) {}

Status LocalDevices::Start(const LocalDeviceOptions& o, std::unique_ptr<LocalDevices>* out) {
  RW_REQUIRE(o.devices >= 1, "devices: " << o.devices << " (at least 1)");
  std::unique_ptr<LocalDevices> d(new LocalDevices(o));
  if (o.processes) {
    RW_RETURN_IF_ERROR(d->SpawnHosts());  // on an error the destructor stops those started
  } else {
    for (int r = 0; r < o.devices; ++r) d->devices_.push_back(SpawnDevice(*d->sys_, r));
  }
  d->alive_.assign(d->devices_.size(), true);
  *out = std::move(d);
  return Status::Ok();
}

Status LocalDevices::SpawnHosts() {
  const std::string self_exe = std::filesystem::read_symlink("/proc/self/exe").string();
  const std::string& dir = opt_.host_dir;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  for (int r = 0; r < opt_.devices; ++r) {
    const std::string port_file = dir + "/port." + std::to_string(r);
    std::filesystem::remove(port_file, ec);
    std::string a0 = self_exe, a1 = "device-host", a2 = "1", a3 = port_file;
    char* argv[] = {a0.data(), a1.data(), a2.data(), a3.data(), nullptr};
    pid_t pid;
    RW_REQUIRE(posix_spawn(&pid, self_exe.c_str(), nullptr, nullptr, argv, environ) == 0,
               "--processes: cannot start a device host");
    pids_.push_back(pid);
    if (opt_.started) opt_.started(pid);
  }
  for (int r = 0; r < opt_.devices; ++r) {
    uint16_t port = 0;
    for (int i = 0; i < 3000 && !port; ++i) {
      std::ifstream f(dir + "/port." + std::to_string(r));
      f >> port;
      if (!port) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    RW_REQUIRE(port, "--processes: device host " << r << " did not start within 30 s");
    auto host = sys_->middleman().remote_actor<host_actor>("127.0.0.1", port);
    RW_REQUIRE(host, "--processes: cannot reach device host " << r << ": " << sys_->render(host.error()));
    hosts_.push_back(*host);
    caf::scoped_actor self{*sys_};
    std::string err;
    self->request(*host, std::chrono::seconds(10), devices_atom::value)
        .receive([&](const std::vector<device_actor>& d) { devices_.insert(devices_.end(), d.begin(), d.end()); },
                 [&](caf::error& e) { err = sys_->render(e); });
    RW_REQUIRE(err.empty(), "--processes: device host " << r << ": " << err);
  }
  return Status::Ok();
}

void LocalDevices::StopHosts() {
  {
    caf::scoped_actor s{*sys_};
    for (auto& h : hosts_) s->send(h, quit_atom::value);
  }
  for (pid_t& pid : pids_) {
    if (pid <= 0) continue;  // lost, and reaped then
    int status = 0;
    for (int k = 0; k < 500 && waitpid(pid, &status, WNOHANG) == 0; ++k)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (waitpid(pid, &status, WNOHANG) == 0) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
    }
    if (opt_.reaped) opt_.reaped(pid);
    pid = -1;
  }
}

LocalDevices::~LocalDevices() {
  if (opt_.processes) {
    StopHosts();
  } else {
    caf::scoped_actor s{*sys_};
    for (auto& d : devices_) s->send_exit(d, caf::exit_reason::user_shutdown);
  }
  devices_.clear();  // handles go before their system
  hosts_.clear();
  sys_.reset();
}

Status LocalDevices::Form(const std::function<Status(int, RingPlan*)>& plan, RingPlan* out, Ring* ring) {
  RW_RETURN_IF_ERROR(plan(Available(), out));
  ring_.clear();
  for (size_t i = 0; i < devices_.size() && int(ring_.size()) < out->devices; ++i)
    if (alive_[i]) {
      ring_.push_back(i);
      ring->devices.push_back(devices_[i]);
    }
  ring->transport = opt_.transport;
  ring->where = std::to_string(out->devices) + " devices";
  unanswered_.clear();
  gone_.clear();
  return Status::Ok();
}

// A host that missed a probe stays gone for this ring (a slow answer later does not take it back): the
// ring is aborted and the device forgotten, as a daemon forgets a worker that missed its heartbeats.
std::string LocalDevices::Gone(std::vector<int>* ranks) {
  if (ranks) {  // what the probes found so far (asked after an abort, often: no probe here)
    ranks->insert(ranks->end(), unanswered_.begin(), unanswered_.end());
    return gone_;
  }
  if (!unanswered_.empty()) return gone_;
  const auto now = std::chrono::steady_clock::now();
  if (hosts_.empty() || now - last_probe_ < std::chrono::seconds(1)) return "";
  last_probe_ = now;
  caf::scoped_actor self{*sys_};
  for (size_t rank = 0; rank < ring_.size(); ++rank) {
    const size_t i = ring_[rank];
    if (i >= hosts_.size()) continue;
    bool answered = false;
    self->request(hosts_[i], kProbeTimeout, devices_atom::value)
        .receive([&](const std::vector<device_actor>&) { answered = true; }, [](caf::error&) {});
    if (!answered) {
      unanswered_.push_back(int(rank));
      gone_ = "device process " + std::to_string(pids_[i]) + " (rank " + std::to_string(rank) +
              ") did not answer within " + std::to_string(kProbeTimeout.count()) + " s";
      return gone_;
    }
  }
  return "";
}

int LocalDevices::Available() { return int(std::count(alive_.begin(), alive_.end(), true)); }

std::string LocalDevices::Lost(const std::vector<int>& lost) {
  std::vector<int> ranks = lost;  // and those that missed a probe, though they answered the abort
  for (int r : unanswered_)
    if (std::find(ranks.begin(), ranks.end(), r) == ranks.end()) ranks.push_back(r);
  std::string list;
  for (int rank : ranks) {
    if (rank < 0 || rank >= int(ring_.size())) continue;
    const size_t i = ring_[rank];
    if (!alive_[i]) continue;
    alive_[i] = false;
    list += (list.empty() ? "" : ", ") + std::string("rank ") + std::to_string(rank);
    if (i < pids_.size() && pids_[i] > 0) {  // gone or hung: make sure, and reap it
      list += " (device process " + std::to_string(pids_[i]) + ")";
      if (opt_.reaped) opt_.reaped(pids_[i]);
      kill(pids_[i], SIGKILL);
      waitpid(pids_[i], nullptr, 0);
      pids_[i] = -1;
    }
  }
  return list;
}

}  // namespace rw::actors
