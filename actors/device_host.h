// A process that hosts device actors for others: it spawns them and publishes a small host actor on the
// CAF middleman; whoever connects asks it for the devices and drives them like local ones (control over
// CAF, tensors over the ring's transport). The seed of `ringworld worker`.
#pragma once

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <vector>

#include "actors/device_actor.h"

namespace rw::actors {

using devices_atom = caf::atom_constant<caf::atom("devices")>;
using quit_atom = caf::atom_constant<caf::atom("quit")>;

using host_actor = caf::typed_actor<caf::replies_to<devices_atom>::with<std::vector<device_actor>>,
                                    caf::reacts_to<quit_atom>>;

// Spawns `n` devices and the host actor that hands them out; quit stops the devices and the host.
host_actor SpawnHost(caf::actor_system& sys, int n);

}  // namespace rw::actors
