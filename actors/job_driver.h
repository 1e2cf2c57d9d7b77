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
  int devices = 0;           // ring size (every rank of the mesh)
  int wanted = 0;            // the stage's own ring size (devices < wanted: an elastic, shrunk ring)
  int64_t start_step = 0;    // the checkpoint it resumes from
  int64_t stop_at_step = 0;  // 0: run to the end; else the last step of the ring's stages
  // Per stage of the job: the ring size of the stages this ring runs (= devices), 0 for the others.
  std::vector<int64_t> stage_devices;
  runtime::Mesh mesh;        // of those stages on `devices` (JobConfig::StageMesh): dp shrinks first
};

// Plans the ring that continues `job` (parsed and validated once: ParseJobConfig) from the checkpoint of
// `start_step` with at most `available` devices: the stage's own ring size when that many are available,
// else the largest ring >= ring.min_devices that splits every stage it runs into equal valid shards. The
// ring runs the stages that want its size and make the same mesh of it.
// An error says why no ring is possible (the caller waits for devices). Opens no file, so a scheduler may
// plan under its lock.
kernels::Status PlanRing(const runtime::JobConfig& job, int64_t start_step, int available, RingPlan* out);

struct RingHooks {
  std::function<void(const runtime::StepMetrics&)> on_step;
  std::function<void(const runtime::CheckpointInfo&)> on_checkpoint;
  // Polled about every 100 ms while the ring runs: "" goes on; "stop" asks the ranks to stop after the
  // current step with a checkpoint; anything else aborts the ring with that reason.
  std::function<std::string()> poll;
  // The ranks whose host is known gone (a worker that missed its heartbeats, a device process that missed
  // its probe): after an abort they are taken as lost at once, not waited for. May be empty.
  std::function<std::vector<int>()> gone_ranks;
  // After an abort, other ranks that have not answered within this time are taken as lost (their process
  // is gone or hung: a stopped worker keeps its connections open, so no CAF down message comes).
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

}  // namespace rw::actors

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(rw::actors::RingOutcome)  // local messages only: a ring's driver is in its process

namespace rw::actors {

// One ring's run, as an actor: asked (run_atom), it forms a ring over `devices` (rank = position) with the
// given epoch, runs `task` on it (its reporter is this actor), and answers with how the ring ended once
// every rank has reported, then ends. The devices are monitored: a lost one aborts the ring. The hooks are
// called from this actor. `mesh`: of the devices (its sub-rings are formed too); another world size: one
// ring of every device.
using ring_actor = caf::typed_actor<
    caf::replies_to<run_atom>::with<RingOutcome>,
    // What the ring's ranks send it: rank 0's steps and checkpoints, its question before each commit, and
    // every rank's report at the end of its run.
    caf::reacts_to<runtime::StepMetrics>, caf::reacts_to<runtime::CheckpointInfo>,
    caf::replies_to<commit_atom, uint32_t, int64_t>::with<bool>, caf::reacts_to<train_report>,
    caf::reacts_to<tick_atom>>;
ring_actor SpawnRing(caf::actor_system& sys, const std::vector<device_actor>& devices, uint64_t job, uint32_t epoch,
                     const std::string& transport, train_task task, const RingHooks& hooks,
                     const runtime::Mesh& mesh = {});
// The same, waited for (a scoped actor of `sys`).
RingOutcome RunRing(caf::actor_system& sys, const std::vector<device_actor>& devices, uint64_t job, uint32_t epoch,
                    const std::string& transport, train_task task, const RingHooks& hooks,
                    const runtime::Mesh& mesh = {});

// ---- A job's life over rings: the one driver of `ringworld train` and of the daemon ----
//
// DriveJob plans a ring over the devices its pool has for it now, resumes it from the job's newest good
// checkpoint, runs it, and acts on how it ended: the job's end; a stage that wants another ring size (the
// next ring); devices back for a shrunk ring (grow at the next checkpoint); a stop (preemption, SIGTERM of
// a device's process, shutdown); a lost device (its process died or hung: the pool forgets it and the job
// goes on from its last checkpoint on the largest valid ring of what is left, >= ring.min_devices). What
// differs between `train` and the daemon is only where devices come from (DevicePool) and where the job's
// life is written (JobSink).

// The devices a job's rings are formed from: local device actors, the device hosts of `train --processes`,
// or the daemon's workers.
class DevicePool {
 public:
  struct Ring {
    std::vector<device_actor> devices;  // rank = position
    std::string transport;              // inproc | ucx
    std::string where;                  // for the log: "2 local devices", "w1 (2), w2 (1)"
  };
  virtual ~DevicePool() = default;
  // Gives back what the job holds, calls plan(available) with the number of devices the job could have
  // now and, when it plans a ring (devices > 0), takes that many: one atomic step, so that no other job
  // takes them between. An error: no ring can be formed now, and why (the job holds nothing then).
  virtual kernels::Status Form(const std::function<kernels::Status(int available, RingPlan*)>& plan, RingPlan* out,
                               Ring* ring) = 0;
  // Polled while a ring runs: "" while its devices' hosts are there, else why not (the ring is aborted);
  // `ranks`, when given, gets the ring's ranks on the hosts that are gone.
  virtual std::string Gone(std::vector<int>* ranks = nullptr) = 0;
  // The devices the job could have now (its own included): a shrunk ring grows when the stage's are back.
  virtual int Available() = 0;
  // After a ring: its ranks whose device went away (not placed again until they come back; returns them
  // for the log, "rank 1 on w2"), and those whose process was asked to stop (SIGTERM: place nothing there).
  virtual std::string Lost(const std::vector<int>& ranks) = 0;
  virtual void Stopping(const std::vector<int>& ranks) = 0;
  // What holds a device, for the job's events: "a worker", "a device process".
  virtual std::string Holder() const = 0;
};

// Where a job's life is written: the terminal and the metrics file, or the daemon's job table and logs.
class JobSink {
 public:
  struct Interrupt {
    bool cancel = false;  // the job was cancelled: abort its ring, end it CANCELLED
    bool stop = false;    // preemption or shutdown: stop the ring at the next step with a checkpoint
    std::string why;
  };
  virtual ~JobSink() = default;
  virtual Interrupt Interrupted() = 0;  // polled between rings and while one runs
  // The checkpoint the next ring resumes from (step 0 and "" for none), verified: asked once per ring.
  virtual kernels::Status ResumePoint(int64_t* step, std::string* checkpoint) = 0;
  // Records the ring about to run; returns its epoch (rings of a job are numbered 1, 2, ... for good).
  // `resized`: it re-forms the job on another ring size, or after a failed ring.
  virtual uint32_t RingFormed(const RingPlan& plan, const DevicePool::Ring& ring, int64_t start, bool resized) = 0;
  virtual void OnStep(const runtime::StepMetrics& m) = 0;
  virtual void OnCheckpoint(const runtime::CheckpointInfo& c) = 0;
  virtual void Note(const std::string& line) = 0;  // an event of the job: growing, a failed ring re-formed
};

struct JobOutcome {
  enum class State { kSucceeded, kPreempted, kWaiting, kFailed, kCancelled };
  State state = State::kFailed;
  // kPreempted: stopped with a checkpoint (why); kWaiting: no ring can be formed with the devices there are
  // (why); kFailed: the error.
  std::string message;
  int64_t steps = 0;  // the last step done
  double first_loss = 0, last_loss = 0;  // of the first and the last step reported to this driver
  bool ran = false;                      // some ring reported a step
};

struct JobRun {
  const runtime::JobConfig* config = nullptr;  // parsed and validated once (LoadJobConfig, ParseJobConfig)
  std::string yaml, origin;                    // what each rank parses, and where its relative paths start
  std::vector<std::string> overrides;
  uint64_t number = 1;       // the job's number, named in the device actors' logs (ring ids come from FormRing)
  int max_failed_rings = 5;  // rings in a row that fail with a device lost before the job fails
  double abort_answer_s = 5;
};

}  // namespace rw::actors

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(rw::actors::JobOutcome)

namespace rw::actors {

// A job's life over rings, as an actor: asked (run_atom), it plans, forms and runs ring after ring (each a
// ring_actor) until the job ends, then calls `on_end` (when given) and answers with the outcome, and ends.
// `pool` and `sink` must outlive it; it calls them, and `on_end`, from its own thread (it is detached:
// they may read files or wait on a lock). Nothing of them is touched after `on_end` returns.
using job_actor = caf::typed_actor<caf::replies_to<run_atom>::with<JobOutcome>>;
job_actor SpawnJob(caf::actor_system& sys, const JobRun& run, DevicePool& pool, JobSink& sink,
                   std::function<void(const JobOutcome&)> on_end = {});
// Spawns the job actor and asks it to run (nobody waits for its answer; `on_end` is told): the daemon's.
job_actor StartJob(caf::actor_system& sys, const JobRun& run, DevicePool& pool, JobSink& sink,
                   std::function<void(const JobOutcome&)> on_end);
// The same, waited for (a scoped actor of `sys`): `ringworld train`'s driver.
JobOutcome DriveJob(caf::actor_system& sys, const JobRun& run, DevicePool& pool, JobSink& sink);

}  // namespace rw::actors
