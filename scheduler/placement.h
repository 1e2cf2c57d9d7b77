// Placement and preemption as pure functions over a description of the cluster (each worker's devices and
// the job holding each one; the running jobs and their priorities): no HTTP, no locks, no state store. The
// daemon describes its registry under its lock and applies the answer (tests/scheduler/test_placement.cpp
// checks the choices case by case).
#pragma once

#include <cstdint>
#include <functional>
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
  bool backfilled = false;  // it started while a job ahead of it in the queue waited for devices
  int64_t submitted_seq = 0;
  int devices = 1;          // the devices it holds
};

// The job that waits at the head of the queue.
struct WaitingJob {
  int64_t priority = 0;
  int64_t submitted_seq = 0;
};

struct Preemption {
  std::string victim;  // the job to ask to stop now; "" when none
  // A preemption is under way, or `victim` is one whose devices (with the free ones and, when needed, those
  // of the next victims) let the waiting job run. While it holds, no later job is backfilled onto the free
  // devices: they are the waiting job's.
  bool pending = false;
};

// Whom to preempt for the waiting job. Victims are running jobs of lower priority, and jobs backfilled past
// it (same priority, submitted later): lowest priority first, ties to the smaller job id (the earlier
// submitted). A victim is chosen only when the waiting job fits (`fits(devices available)`) in the free
// devices plus those of the victims taken in that order up to and including some k-th: stopping jobs that
// would not let it run only loses their work. One at a time: while one stops, nothing else is chosen.
Preemption ChoosePreemption(const std::vector<RunningJob>& jobs, const WaitingJob& waiting, int free,
                            const std::function<bool(int available)>& fits);

}  // namespace rw::scheduler
