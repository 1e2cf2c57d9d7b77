// The daemon's job table: job records and their state machine over the state store.
//
//   QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED
//   RUNNING -> PREEMPTED -> QUEUED (resume);  QUEUED -> CANCELLED;  PREEMPTED -> CANCELLED;
//   FAILED -> QUEUED (resume: from its last recorded checkpoint)
//
// Every transition is written (job record + an event, one synced batch) before it returns, so the caller
// may acknowledge it; an illegal transition is refused and changes nothing. At start the table is rebuilt
// from the store. Submissions carry an optional idempotency key: a retried submission returns the job the
// first one made.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "storage/state_store.h"

namespace rw::scheduler {

using kernels::Status;

enum class JobState { kQueued, kRunning, kSucceeded, kFailed, kCancelled, kPreempted };
const char* JobStateName(JobState s);
bool ParseJobState(const std::string& name, JobState* out);

struct JobRecord {
  std::string id;              // job-000001, ...
  std::string name;
  std::string spec;            // the job file's text
  int64_t priority = 0;        // higher runs first
  JobState state = JobState::kQueued;
  int64_t submitted_seq = 0;   // FIFO order among equal priorities
  std::string idempotency_key;
  std::string message;         // why the last transition happened
  // Set by the daemon: the settings it imposes (resolved, confined paths) and the job's progress.
  std::vector<std::string> overrides;
  std::string checkpoint_dir;  // resolved
  int64_t epoch = 0;           // the last ring's epoch (every ring of the job gets a new one)
  int64_t checkpoint_step = 0; // newest recorded checkpoint (0: none)
  int64_t total_steps = 0;
};

struct QueuedJob {
  std::string id;
  int64_t priority = 0;
  int64_t submitted_seq = 0;
  int64_t checkpoint_step = 0;
};

struct JobEvent {
  int64_t seq = 0;
  std::string job;
  std::string from, to, message;
};

class JobTable {
 public:
  // Rebuilds the table from the store (jobs, and the sequence counters from the events).
  static Status Open(storage::StateStore* store, std::unique_ptr<JobTable>* out);

  // Records a new QUEUED job (or returns the existing one for a repeated idempotency key).
  Status Submit(const std::string& name, const std::string& spec, int64_t priority, const std::string& idempotency_key,
                JobRecord* out);
  // The same with the record's daemon fields (overrides, checkpoint_dir, total_steps) set from `fields`;
  // *created is false when an earlier submission with the same key is returned. `on_created` runs with the
  // new record once it is stored, under the table's lock, so before any reader of the table sees the job
  // (the daemon keeps its parsed configuration there); it must not call the table.
  // A live job (QUEUED, RUNNING, PREEMPTED) owns its checkpoint_dir: a submission naming the directory of
  // another live job is refused (*conflict set when given), checked and recorded under one lock.
  Status Submit(const JobRecord& fields, const std::string& idempotency_key, JobRecord* out, bool* created,
                const std::function<void(const JobRecord&)>& on_created = {}, bool* conflict = nullptr);
  // Changes a job's record without a state change (progress: epoch, checkpoint_step) and writes an event
  // with `message`, plus `extra` (e.g. a checkpoint record), in one synced batch.
  Status Update(const std::string& id, const std::function<void(JobRecord&)>& change, const std::string& message,
                const storage::Batch& extra = {});
  // Moves a job to `to` if the state machine allows it; the error names the job and both states. An ended
  // job made live again (FAILED -> QUEUED) is refused while another live job owns its checkpoint_dir.
  Status Transition(const std::string& id, JobState to, const std::string& message);

  Status Get(const std::string& id, JobRecord* out) const;
  std::vector<JobRecord> List() const;
  // What a scheduler asks often, without copying records (their job files): a job's state (false: no
  // such job), the jobs in one state, and the number of jobs in each state (every state, zeros included).
  bool StateOf(const std::string& id, JobState* out) const;
  std::vector<std::string> IdsIn(JobState state) const;
  std::map<std::string, int> CountByState() const;
  // The QUEUED jobs in the order they run: highest priority, then earliest submitted (no job files copied).
  std::vector<QueuedJob> Queue() const;
  Status Events(const std::string& id, std::vector<JobEvent>* out) const;

 private:
  explicit JobTable(storage::StateStore* store) : store_(store) {}
  // An error naming the owner when a live job other than `id` owns `dir`.
  Status OwnerCheckLocked(const std::string& id, const std::string& dir, bool* conflict) const;
  static std::string Encode(const JobRecord& r);
  static Status Decode(const std::string& text, JobRecord* r);
  storage::StateStore* store_;
  mutable std::mutex mu_;
  std::map<std::string, JobRecord> jobs_;
  std::map<std::string, std::string> by_key_;  // idempotency key -> job id
  int64_t next_job_ = 1, next_event_ = 1;
};

}  // namespace rw::scheduler
