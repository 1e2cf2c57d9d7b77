#include "scheduler/placement.h"

#include <algorithm>

namespace rw::scheduler {

using kernels::Status;

int CountFree(const std::vector<WorkerDevices>& workers, const std::string& job) {
  int n = 0;
  for (const auto& w : workers)
    if (w.usable)
      for (const auto& u : w.used_by) n += u.empty() || (!job.empty() && u == job);
  return n;
}

Status PlaceRing(const std::vector<WorkerDevices>& workers, int devices, std::vector<Slot>* out) {
  out->clear();
  RW_REQUIRE(devices >= 1, "placement: a ring needs at least one device, asked for " << devices);
  struct Free {
    int n;
    const WorkerDevices* w;
  };
  std::vector<Free> free;
  int total = 0;
  for (const auto& w : workers) {
    if (!w.usable) continue;
    const int n = int(std::count(w.used_by.begin(), w.used_by.end(), std::string()));
    if (n > 0) free.push_back({n, &w});
    total += n;
  }
  RW_REQUIRE(total >= devices, "placement: a ring of " << devices << " devices, " << total << " free");
  std::sort(free.begin(), free.end(), [](const Free& a, const Free& b) {
    return a.n > b.n || (a.n == b.n && a.w->worker < b.w->worker);
  });
  // One worker when one suffices: a ring within a process needs no network, and the larger workers stay
  // whole for larger rings.
  const Free* fit = nullptr;
  for (const auto& f : free)
    if (f.n >= devices && (!fit || f.n < fit->n)) fit = &f;
  std::vector<const WorkerDevices*> order;
  if (fit) {
    order.push_back(fit->w);
  } else {
    for (const auto& f : free) order.push_back(f.w);
  }
  for (const WorkerDevices* w : order)
    for (size_t i = 0; i < w->used_by.size() && int(out->size()) < devices; ++i)
      if (w->used_by[i].empty()) out->push_back({w->worker, int(i)});
  return Status::Ok();
}

std::string ChooseVictim(const std::vector<RunningJob>& jobs, int64_t priority) {
  const RunningJob* victim = nullptr;
  for (const auto& j : jobs) {
    if (j.preempting) return "";
    if (!j.running || j.priority >= priority) continue;
    if (!victim || j.priority < victim->priority || (j.priority == victim->priority && j.job < victim->job))
      victim = &j;
  }
  return victim ? victim->job : "";
}

}  // namespace rw::scheduler
