// The daemon's records of each job's committed checkpoints (state store table kCheckpoints, key
// JOB/STEP, zero-padded: key order is step order): written as a ring's checkpoints commit, read when the
// job's next ring forms to choose the checkpoint it resumes from.
#pragma once

#include <cstdint>
#include <string>

#include "runtime/trainer.h"
#include "scheduler/job_log.h"
#include "scheduler/job_table.h"
#include "scheduler/metrics.h"
#include "storage/state_store.h"

namespace rw::scheduler {

class CheckpointRecords {
 public:
  CheckpointRecords(storage::StateStore* store, JobTable* jobs, DaemonMetrics* metrics, JobLog* log)
      : store_(store), jobs_(jobs), metrics_(metrics), log_(log) {}

  static std::string Key(const std::string& job, int64_t step);

  // The newest recorded checkpoint of `job` that verifies: its step into *step and its directory into *path
  // (0 and empty when none is recorded). Newer ones that do not verify lose their record, with an event and
  // a metric. Records that all fail verification (or a store that cannot be read) are an error, and every
  // record stays: a ring from step 0 would overwrite the run. Verified here once per ring: the ranks load it
  // as it is. Reads checkpoint files: call it with no lock held.
  kernels::Status ResumeStep(const std::string& job, int64_t* step, std::string* path);

  // A checkpoint a ring of `job` reports: committed, it is recorded (and the job's checkpoint_step moves
  // on), records of checkpoints that retention has removed go, in one synced batch with an event; failed,
  // it is an event.
  void Record(const std::string& job, const runtime::CheckpointInfo& c);

 private:
  storage::StateStore* const store_;
  JobTable* const jobs_;
  DaemonMetrics* const metrics_;
  JobLog* const log_;
};

}  // namespace rw::scheduler
