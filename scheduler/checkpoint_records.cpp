#include "scheduler/checkpoint_records.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "runtime/checkpoint.h"

namespace rw::scheduler {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using storage::Table;

double WallSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

bool OfJob(const std::string& key, const std::string& job) { return key.compare(0, job.size() + 1, job + "/") == 0; }

}  // namespace

std::string CheckpointRecords::Key(const std::string& job, int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "/%012lld", (long long)step);
  return job + buf;
}

kernels::Status CheckpointRecords::ResumeStep(const std::string& job, int64_t* step, std::string* path) {
  *step = 0;
  path->clear();
  std::vector<std::pair<std::string, std::string>> rows;
  const kernels::Status read = store_->GetAll(Table::kCheckpoints, &rows);
  if (!read.ok()) return kernels::Status::Error("cannot read the checkpoint records: " + read.message());
  std::vector<std::pair<int64_t, std::string>> mine;  // (step, path)
  for (const auto& [key, value] : rows) {
    if (!OfJob(key, job)) continue;
    try {
      const auto j = json::parse(value);
      mine.push_back({j.at("step").get<int64_t>(), j.at("path").get<std::string>()});
    } catch (const std::exception&) {
    }
  }
  std::vector<std::string> skipped;
  const kernels::Status st = runtime::NewestVerifiedCheckpoint(mine, step, path, &skipped);
  if (!st.ok()) return st;  // every record stays: an operator may repair the files and resume the job
  // The newer records that failed verification go, now that an older checkpoint stands in for them.
  std::sort(mine.rbegin(), mine.rend());
  for (size_t i = 0; i < skipped.size() && i < mine.size(); ++i) {
    metrics_->CheckpointFallback(job);
    storage::Batch b;
    b.Delete(Table::kCheckpoints, Key(job, mine[i].first));
    log_->Note(job, "checkpoint of step " + std::to_string(mine[i].first) + " is unusable (" + skipped[i] +
                        "); falling back to the previous one", b);
  }
  return kernels::Status::Ok();
}

void CheckpointRecords::Record(const std::string& job, const runtime::CheckpointInfo& c) {
  metrics_->Checkpoint(job, c);
  if (!c.ok) {
    log_->Note(job, "checkpoint of step " + std::to_string(c.step) + " FAILED: " + c.error);
    return;
  }
  storage::Batch b;
  b.Put(Table::kCheckpoints, Key(job, c.step),
        json{{"step", c.step}, {"stage", c.stage}, {"path", c.path}, {"bytes", c.bytes}, {"seconds", c.seconds},
             {"time", WallSeconds()}}
            .dump());
  // Records of checkpoints that retention has removed go too.
  std::vector<std::pair<std::string, std::string>> rows;
  if (store_->GetAll(Table::kCheckpoints, &rows).ok())
    for (const auto& [key, value] : rows) {
      if (!OfJob(key, job)) continue;
      try {
        if (!fs::exists(json::parse(value).at("path").get<std::string>())) b.Delete(Table::kCheckpoints, key);
      } catch (const std::exception&) {
      }
    }
  char msg[256];
  std::snprintf(msg, sizeof(msg), "checkpoint of step %lld committed (%.1f MB in %.2f s)", (long long)c.step,
                double(c.bytes) / 1e6, c.seconds);
  const int64_t step = c.step;
  const kernels::Status st =
      jobs_->Update(job, [step](JobRecord& r) { r.checkpoint_step = std::max(r.checkpoint_step, step); }, msg, b);
  if (!st.ok()) {  // the checkpoint is on disk, unrecorded: the job resumes from an older one
    std::fprintf(stderr, "ringworld daemon: %s: checkpoint of step %lld not recorded: %s\n", job.c_str(),
                 (long long)c.step, st.message().c_str());
    return;
  }
  log_->Log(job, msg);
}

}  // namespace rw::scheduler
