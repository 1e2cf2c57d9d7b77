// Runs one task on a ring of device actors in this process: what `eval`, `generate` and `needle` share.
#pragma once

#include <string>
#include <vector>

#include "actors/device_actor.h"

namespace rw::actors {

// Runs `task` on a ring of `ring` device actors in this process (in-process transport) and returns every
// rank's report; when a rank fails the others are aborted and *error says which failure came first.
template <class Report, class Atom, class Task>
std::vector<Report> OnLocalRing(int ring, uint64_t job, Atom atom, const Task& task, std::string* error) {
  SystemConfig cfg;
  caf::actor_system sys{cfg};
  std::vector<device_actor> devices;
  for (int r = 0; r < ring; ++r) devices.push_back(SpawnDevice(sys, r));
  std::vector<Report> reports;
  caf::scoped_actor self{sys};
  const kernels::Status st = FormRing(sys, devices, job, /*epoch=*/1, "inproc");
  if (!st.ok()) {
    *error = st.message();
  } else {
    for (auto& d : devices) self->send(d, atom, task);
    for (int r = 0; r < ring; ++r)
      self->receive([&](const Report& rep) {
        if (!rep.ok && error->empty()) {
          *error = rep.error;
          for (auto& d : devices) self->send(d, abort_atom::value, std::string("a rank failed"));
        }
        reports.push_back(rep);
      });
  }
  for (auto& d : devices) self->send_exit(d, caf::exit_reason::user_shutdown);
  return reports;
}

}  // namespace rw::actors
