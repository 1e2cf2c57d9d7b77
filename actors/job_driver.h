// Driving one training job over rings of device actors: the one code path of `ringworld train` (devices
// in this process, or in device hosts) and of the daemon (devices on workers).
//
// A job runs as a sequence of rings. Each ring resumes from the job's last checkpoint and runs until the
// job ends, until a stage that needs another ring size (it stops there with a checkpoint, and the driver
// forms the next ring), or until it is stopped (preemption) or a device is lost. PlanRing says what the next
// ring is; RunRing forms it and runs it.
#pragma once

#include <caf/all.hpp>

#include <functional>
#include <string>
#include <vector>

#include "actors/device_actor.h"
#include "runtime/job_config.h"

namespace rw::actors {

struct RingPlan {
  int devices = 0;           // ring size
  int wanted = 0;            // the stage's own ring size (devices < wanted: an elastic, shrunk ring)
  int64_t start_step = 0;    // the checkpoint it resumes from
  int64_t stop_at_step = 0;  // 0: run to the end; else the last step of the ring's stages
  std::vector<std::string> overrides;  // the job's overrides plus stages.N.devices of the stages it runs
};

// Plans the ring that continues `job` (its text, origin and overrides) from the checkpoint of
// `start_step` with at most `available` devices: the stage's own ring size when that many are available,
// else the largest ring >= ring.min_devices that splits every stage it runs into equal valid shards.
// An error says why no ring is possible (the caller waits for devices).
kernels::Status PlanRing(const std::string& yaml, const std::string& origin, const std::vector<std::string>& overrides,
                         int64_t start_step, int available, RingPlan* out);
// The same for a job already parsed and validated (ParseJobConfig of its text with `overrides`): opens no
// file, so a scheduler may plan under its lock and on every tick (the daemon parses each job once).
kernels::Status PlanRing(const runtime::JobConfig& job, const std::vector<std::string>& overrides, int64_t start_step,
                         int available, RingPlan* out);

struct RingHooks {
  std::function<void(const runtime::StepMetrics&)> on_step;
  std::function<void(const runtime::CheckpointInfo&)> on_checkpoint;
  // Polled about every 100 ms while the ring runs: "" goes on; "stop" asks the ranks to stop after the
  // current step with a checkpoint; anything else aborts the ring with that reason.
  std::function<std::string()> poll;
  // After an abort, ranks that have not answered within this time are taken as lost (their process is
  // gone or hung: a stopped worker keeps its connections open, so no CAF down message comes).
  double abort_answer_s = 5;
};

struct RingOutcome {
  bool ok = false;       // every rank finished its run (to its end or to a stop) cleanly
  bool stopped = false;  // the ring stopped early with a checkpoint (stop request, SIGTERM, stop_at_step)
  bool lost = false;     // a device, or its process, went away
  std::vector<int> lost_ranks;  // the ranks whose device went away (not those that failed or were aborted)
  std::vector<int> stopping_ranks;  // ranks whose process was asked to stop (SIGTERM): place nothing there
  std::string error;     // the first error, naming the rank
  int64_t steps = 0;     // the last step done
  int64_t resumed_from = 0;
  double first_loss = 0, last_loss = 0;
};

// Forms a ring over `devices` (rank = position) with a new epoch and runs `task` on it (its reporter is
// replaced by this driver) until every rank has reported. Devices are monitored: a lost one aborts the
// ring. Blocking; uses a scoped actor of `sys`.
RingOutcome RunRing(caf::actor_system& sys, const std::vector<device_actor>& devices, uint64_t job, uint32_t epoch,
                    const std::string& transport, train_task task, const RingHooks& hooks);

}  // namespace rw::actors
