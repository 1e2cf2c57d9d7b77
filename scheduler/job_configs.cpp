#include "scheduler/job_configs.h"

namespace rw::scheduler {

std::shared_ptr<const ParsedJob> JobConfigs::Parse(const JobRecord& r) {
  auto p = std::make_shared<ParsedJob>();
  p->status = runtime::ParseJobConfig(r.spec, r.id, r.overrides, &p->config);
  p->overrides = r.overrides;
  p->parsed_at = std::chrono::steady_clock::now();
  return p;
}

std::shared_ptr<const ParsedJob> JobConfigs::Parsed(runtime::JobConfig config, const std::vector<std::string>& overrides) {
  auto p = std::make_shared<ParsedJob>();
  p->config = std::move(config);
  p->overrides = overrides;
  p->parsed_at = std::chrono::steady_clock::now();
  return p;
}

void JobConfigs::Put(const std::string& job, std::shared_ptr<const ParsedJob> parsed) {
  std::lock_guard<std::mutex> lock(mu_);
  jobs_[job] = std::move(parsed);
}

std::shared_ptr<const ParsedJob> JobConfigs::Get(const std::string& job) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job);
  return it == jobs_.end() ? nullptr : it->second;
}

void JobConfigs::Forget(const std::string& job) {
  std::lock_guard<std::mutex> lock(mu_);
  jobs_.erase(job);
}

}  // namespace rw::scheduler
