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

Preemption ChoosePreemption(const std::vector<RunningJob>& jobs, const WaitingJob& waiting, int free,
                            const std::function<bool(int available)>& fits) {
  std::vector<const RunningJob*> victims;
  for (const auto& j : jobs) {
    if (j.preempting) return {"", true};
    const bool below = j.priority < waiting.priority;
    const bool jumped = j.backfilled && j.priority == waiting.priority && j.submitted_seq > waiting.submitted_seq;
    if (j.running && (below || jumped)) victims.push_back(&j);
  }
  std::sort(victims.begin(), victims.end(), [](const RunningJob* a, const RunningJob* b) {
    return a->priority != b->priority ? a->priority < b->priority : a->job < b->job;
  });
  int available = free;
  for (const RunningJob* v : victims) {
    available += v->devices;
    if (fits(available)) return {victims.front()->job, true};
  }
  return {};
}

}  // namespace rw::scheduler
