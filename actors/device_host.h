// A process that hosts device actors for others: it spawns them and publishes a small host actor on the
// CAF middleman; whoever connects asks it for the devices and drives them like local ones (control over
// CAF, tensors over the ring's transport). The seed of `ringworld worker`.
#pragma once

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "actors/channel_auth.h"
#include "actors/device_actor.h"

namespace rw::actors {

using devices_atom = caf::atom_constant<caf::atom("devices")>;
using quit_atom = caf::atom_constant<caf::atom("quit")>;

using host_actor = caf::typed_actor<caf::replies_to<devices_atom>::with<std::vector<device_actor>>,
                                    caf::reacts_to<quit_atom>>;

// Spawns `n` devices and the host actor that hands them out; quit stops the devices and the host.
host_actor SpawnHost(caf::actor_system& sys, int n);

// `ringworld device-host`: hosts `n` devices for a parent's `train --processes` ring, published on
// 127.0.0.1; writes the port to `port_file` (whole, by rename) and returns 0 once the parent says quit
// (1: could not publish).
int ServeDeviceHost(int n, const std::string& port_file);

// The daemon's side of a worker's devices: connects to the device host published at host:port over the
// authenticated channel and asks it for its devices, each within `deadline`. *slow: the host was reached
// but did not answer in time (transient: right after a partition heals an old connection can hold
// messages back). The error says which step failed.
kernels::Status ReachDeviceHost(caf::actor_system& sys, const std::string& host, uint16_t port,
                                std::chrono::milliseconds deadline, std::vector<device_actor>* devices, bool* slow);

// A worker's devices, published on the authenticated channel (channel_auth.h) for the daemon's rings.
class PublishedDevices {
 public:
  // An error names what failed (`listen` refused, ...).
  static kernels::Status Start(int n, const std::string& listen, const ChannelCredentials& channel,
                               std::unique_ptr<PublishedDevices>* out);
  ~PublishedDevices();  // waits for the devices to end (after Quit)
  uint16_t port() const { return port_; }
  // Aborts whatever ring the devices are in (the worker drains or leaves).
  void AbortRings(const std::string& why);
  // Stops the devices and the host.
  void Quit();

 private:
  explicit PublishedDevices(const ChannelCredentials& channel);
  SystemConfig cfg_;
  std::unique_ptr<caf::actor_system> sys_;
  host_actor host_;
  uint16_t port_ = 0;
};

}  // namespace rw::actors
