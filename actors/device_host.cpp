#include "actors/device_host.h"

namespace rw::actors {
namespace {

struct HostState {
  std::vector<device_actor> devices;
  static inline const char* name = "device_host";
};

host_actor::behavior_type Host(host_actor::stateful_pointer<HostState> self, int n) {
  for (int i = 0; i < n; ++i) self->state.devices.push_back(SpawnDevice(self->system(), i));
  return {
      [=](devices_atom) { return self->state.devices; },
      [=](quit_atom) {
        for (auto& d : self->state.devices) self->send_exit(d, caf::exit_reason::user_shutdown);
        self->quit();
      },
  };
}

}  // namespace

host_actor SpawnHost(caf::actor_system& sys, int n) { return sys.spawn(Host, n); }

}  // namespace rw::actors
