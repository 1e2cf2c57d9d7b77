// The devices of a run on this machine (`ringworld train`): device actors in this process, or with
// `processes` one device host child process each (`ringworld device-host`, reached over the CAF middleman
// on 127.0.0.1; the ring between them is UCX). It is the run's DevicePool: a lost device is forgotten (its
// host killed and reaped) and the job goes on from its last checkpoint on a ring of those left, as a
// daemon job does. A device host that dies drops its connection (the ring actor sees its device go); one
// that hangs (SIGSTOP, a deadlock) is found by a probe every second, as the daemon finds a hung worker by
// its heartbeats.
#pragma once

#include <sys/types.h>

#include <caf/all.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "actors/device_host.h"
#include "actors/job_driver.h"

namespace rw::actors {

struct LocalDeviceOptions {
  int devices = 1;
  bool processes = false;     // one device host process per device
  std::string host_dir;       // where the hosts write their ports (processes)
  std::string transport = "inproc";
  // Told of each device host process started, and of each one before it is reaped (the command forwards
  // its stop signals to them).
  std::function<void(pid_t)> started, reaped;
};

class LocalDevices final : public DevicePool {
 public:
  // An error names the host that did not start or answer (the hosts started are stopped).
  static kernels::Status Start(const LocalDeviceOptions& o, std::unique_ptr<LocalDevices>* out);
  // Stops the devices: device hosts are told to quit and reaped (killed after 5 s).
  ~LocalDevices() override;
  caf::actor_system& system() { return *sys_; }

  kernels::Status Form(const std::function<kernels::Status(int, RingPlan*)>& plan, RingPlan* out, Ring* ring) override;
  std::string Gone(std::vector<int>* ranks) override;
  int Available() override;
  std::string Lost(const std::vector<int>& ranks) override;
  void Stopping(const std::vector<int>&) override {}  // the whole process stops with them
  std::string Holder() const override { return pids_.empty() ? "this process" : "a device process"; }

 private:
  explicit LocalDevices(const LocalDeviceOptions& o);
  kernels::Status SpawnHosts();
  void StopHosts();

  const std::chrono::seconds kProbeTimeout{2};
  LocalDeviceOptions opt_;
  SystemConfig cfg_;
  std::unique_ptr<caf::actor_system> sys_;
  std::vector<device_actor> devices_;
  std::vector<host_actor> hosts_;  // of processes, one per device; empty in one process
  std::vector<pid_t> pids_;        // of processes, one per device (-1 once reaped); empty in one process
  std::chrono::steady_clock::time_point last_probe_{};
  std::vector<int> unanswered_;  // ranks of the current ring that missed a probe
  std::string gone_;
  std::vector<bool> alive_;
  std::vector<size_t> ring_;  // the current ring's devices, by rank
};

}  // namespace rw::actors
