// A job's story as the daemon tells it, in two places: its events (the job table: every state change and
// every note, in the state store, `ringworld status`) and its log file (state_dir/logs/JOB.log: the events
// and a line per step, timestamped, `ringworld logs` follows it by offset).
#pragma once

#include <mutex>
#include <string>

#include "scheduler/job_table.h"
#include "storage/state_store.h"

namespace rw::scheduler {

class JobLog {
 public:
  JobLog(std::string dir, JobTable* jobs) : dir_(std::move(dir)), jobs_(jobs) {}

  // A line of the job's log file.
  void Log(const std::string& job, const std::string& line);
  // An event of the job (written with `extra`, e.g. a checkpoint record's change, in one synced batch),
  // which is a line of its log too.
  void Note(const std::string& job, const std::string& message, const storage::Batch& extra = {});
  // Up to `max_bytes` of the job's log from `offset` (clamped to the file); *next gets the offset after
  // them, 0 when the job has no log yet.
  std::string Read(const std::string& job, long long offset, long long max_bytes, long long* next) const;

 private:
  std::string Path(const std::string& job) const { return dir_ + "/" + job + ".log"; }
  const std::string dir_;
  JobTable* const jobs_;
  std::mutex mu_;  // lines of concurrent writers (a job's driver, the scheduler, the API) stay whole
};

}  // namespace rw::scheduler
