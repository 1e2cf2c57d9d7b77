// The jobs' configurations as the scheduler reads them: each job's file parsed and validated once (at
// submission, for the live jobs when the daemon starts, when a failed job is resumed) and kept with the job
// while it may run, instead of on every scheduling tick: validation opens the job's files (data.tokenizer's
// SentencePiece model, init_from's config.json, data.path's meta.json), which must not happen under the
// daemon's lock.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/job_config.h"
#include "scheduler/job_table.h"

namespace rw::scheduler {

struct ParsedJob {
  kernels::Status status;                    // ok, or why the job's file no longer validates (the job waits)
  runtime::JobConfig config;                 // with the record's overrides (the daemon's resolved paths)
  std::vector<std::string> overrides;        // the record's; a ring's plan adds its stages' ring sizes
  std::chrono::steady_clock::time_point parsed_at;
};

class JobConfigs {
 public:
  // Parses and validates a job record's file with its overrides. Slow (it opens the job's files): call it
  // with no lock of the daemon's held.
  static std::shared_ptr<const ParsedJob> Parse(const JobRecord& r);
  // A configuration already parsed and validated (the submission's) with the record's overrides.
  static std::shared_ptr<const ParsedJob> Parsed(runtime::JobConfig config, const std::vector<std::string>& overrides);

  void Put(const std::string& job, std::shared_ptr<const ParsedJob> parsed);
  std::shared_ptr<const ParsedJob> Get(const std::string& job) const;  // null when not kept
  void Forget(const std::string& job);                                  // the job ended

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<const ParsedJob>> jobs_;
};

}  // namespace rw::scheduler
