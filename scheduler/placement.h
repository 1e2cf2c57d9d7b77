// Placement and preemption as pure functions over a description of the cluster (each worker's devices and
// the job holding each one; the running jobs and their priorities): no HTTP, no locks, no state store. The
// daemon describes its registry under its lock and applies the answer (tests/scheduler/test_placement.cpp
// checks the choices case by case).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/common.h"

namespace rw::scheduler {

struct Slot {
  std::string worker;
  int index = 0;  // the device's index on its worker
  bool operator==(const Slot& o) const { return worker == o.worker && index == o.index; }
};

// One worker's devices as placement sees them.
struct WorkerDevices {
  std::string worker;
  bool usable = true;                // alive and not draining: only then are its devices offered to a ring
  std::vector<std::string> used_by;  // per device: the job holding it, "" when free
};

// The devices a ring of `job` may use: the free ones and those `job` holds itself (a job re-forming its
// ring gives its devices back first); job "" counts the free ones only.
int CountFree(const std::vector<WorkerDevices>& workers, const std::string& job = "");

// A ring of `devices` over the free devices, on the fewest workers: on one worker when one has enough (the
// tightest fit: the fewest free devices that suffice), else over the workers with the most free devices
// first; ties go to the smaller worker id, and each worker's devices are taken in index order. Rank i is
// (*out)[i]. An error, and nothing in *out, when fewer than `devices` are free.
kernels::Status PlaceRing(const std::vector<WorkerDevices>& workers, int devices, std::vector<Slot>* out);

// A job that holds (or is about to hold) devices, as the preemption choice sees it.
struct RunningJob {
  std::string job;
  int64_t priority = 0;
  bool running = true;      // RUNNING still (a cancelled job's driver may not have stopped yet: no victim)
  bool preempting = false;  // already asked to stop for another job
};

// The job to preempt for a waiting job of `priority`: the running one of the lowest priority strictly
// below it, ties to the smaller job id (the earlier submitted). "" when no running job is below it, or when
// a preemption is under way: one at a time, since the devices that one frees may be all the waiting job needs.
std::string ChooseVictim(const std::vector<RunningJob>& jobs, int64_t priority);

}  // namespace rw::scheduler
