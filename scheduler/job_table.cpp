#include "scheduler/job_table.h"

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "runtime/crash_point.h"

namespace rw::scheduler {
namespace {

using storage::Table;

bool Allowed(JobState from, JobState to) {
  switch (from) {
    case JobState::kQueued: return to == JobState::kRunning || to == JobState::kCancelled;
    case JobState::kRunning:
      return to == JobState::kSucceeded || to == JobState::kFailed || to == JobState::kCancelled ||
             to == JobState::kPreempted;
    case JobState::kPreempted: return to == JobState::kQueued || to == JobState::kCancelled;
    case JobState::kFailed: return to == JobState::kQueued;
    default: return false;  // terminal
  }
}

bool Live(JobState s) { return s == JobState::kQueued || s == JobState::kRunning || s == JobState::kPreempted; }

// Directory names as the daemon stores them (resolved, absolute); records written before trailing
// separators were stripped at submission compare equal too.
std::string DirKey(std::string d) {
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  return d;
}

std::string EventKey(const std::string& job, int64_t seq) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "/%012lld", (long long)seq);  // zero-padded: key order is event order
  return job + buf;
}

}  // namespace

const char* JobStateName(JobState s) {
  switch (s) {
    case JobState::kQueued: return "QUEUED";
    case JobState::kRunning: return "RUNNING";
    case JobState::kSucceeded: return "SUCCEEDED";
    case JobState::kFailed: return "FAILED";
    case JobState::kCancelled: return "CANCELLED";
    case JobState::kPreempted: return "PREEMPTED";
  }
  return "UNKNOWN";
}

bool ParseJobState(const std::string& name, JobState* out) {
  for (JobState s : {JobState::kQueued, JobState::kRunning, JobState::kSucceeded, JobState::kFailed,
                     JobState::kCancelled, JobState::kPreempted})
    if (name == JobStateName(s)) {
      *out = s;
      return true;
    }
  return false;
}

std::string JobTable::Encode(const JobRecord& r) {
  return nlohmann::json{{"id", r.id},
                        {"name", r.name},
                        {"spec", r.spec},
                        {"priority", r.priority},
                        {"state", JobStateName(r.state)},
                        {"submitted_seq", r.submitted_seq},
                        {"idempotency_key", r.idempotency_key},
                        {"message", r.message},
                        {"overrides", r.overrides},
                        {"checkpoint_dir", r.checkpoint_dir},
                        {"epoch", r.epoch},
                        {"checkpoint_step", r.checkpoint_step},
                        {"total_steps", r.total_steps}}
      .dump();
}

Status JobTable::Decode(const std::string& text, JobRecord* r) {
  try {
    const auto j = nlohmann::json::parse(text);
    r->id = j.at("id");
    r->name = j.at("name");
    r->spec = j.at("spec");
    r->priority = j.at("priority");
    r->submitted_seq = j.at("submitted_seq");
    r->idempotency_key = j.at("idempotency_key");
    r->message = j.at("message");
    r->overrides = j.value("overrides", std::vector<std::string>{});
    r->checkpoint_dir = j.value("checkpoint_dir", std::string());
    r->epoch = j.value("epoch", int64_t(0));
    r->checkpoint_step = j.value("checkpoint_step", int64_t(0));
    r->total_steps = j.value("total_steps", int64_t(0));
    RW_REQUIRE(ParseJobState(j.at("state"), &r->state), "state store: job " << r->id << " has an unknown state");
  } catch (const nlohmann::json::exception& e) {
    return Status::Error(std::string("state store: a job record is not readable: ") + e.what());
  }
  return Status::Ok();
}

Status JobTable::Open(storage::StateStore* store, std::unique_ptr<JobTable>* out) {
  std::unique_ptr<JobTable> t(new JobTable(store));
  std::vector<std::pair<std::string, std::string>> rows;
  RW_RETURN_IF_ERROR(store->GetAll(Table::kJobs, &rows));
  for (const auto& [key, value] : rows) {
    JobRecord r;
    RW_RETURN_IF_ERROR(Decode(value, &r));
    t->next_job_ = std::max(t->next_job_, r.submitted_seq + 1);
    if (!r.idempotency_key.empty()) t->by_key_[r.idempotency_key] = r.id;
    t->jobs_[r.id] = std::move(r);
  }
  RW_RETURN_IF_ERROR(store->GetAll(Table::kJobEvents, &rows));
  for (const auto& [key, value] : rows) {
    const auto slash = key.rfind('/');
    if (slash != std::string::npos) t->next_event_ = std::max<int64_t>(t->next_event_, std::atoll(key.c_str() + slash + 1) + 1);
  }
  *out = std::move(t);
  return Status::Ok();
}

Status JobTable::Submit(const std::string& name, const std::string& spec, int64_t priority,
                        const std::string& idempotency_key, JobRecord* out) {
  JobRecord fields;
  fields.name = name;
  fields.spec = spec;
  fields.priority = priority;
  bool created = false;
  return Submit(fields, idempotency_key, out, &created);
}

Status JobTable::OwnerCheckLocked(const std::string& id, const std::string& dir, bool* conflict) const {
  if (dir.empty()) return Status::Ok();
  for (const auto& [other_id, other] : jobs_)
    if (other_id != id && Live(other.state) && DirKey(other.checkpoint_dir) == DirKey(dir)) {
      if (conflict) *conflict = true;
      return Status::Error("checkpoint.dir: " + dir + " belongs to " + other_id + " (" + JobStateName(other.state) + ")");
    }
  return Status::Ok();
}

Status JobTable::Submit(const JobRecord& fields, const std::string& idempotency_key, JobRecord* out, bool* created,
                        const std::function<void(const JobRecord&)>& on_created, bool* conflict) {
  std::lock_guard<std::mutex> lock(mu_);
  *created = false;
  if (conflict) *conflict = false;
  if (!idempotency_key.empty()) {
    auto it = by_key_.find(idempotency_key);
    if (it != by_key_.end()) {
      *out = jobs_.at(it->second);
      return Status::Ok();
    }
  }
  RW_RETURN_IF_ERROR(OwnerCheckLocked("", fields.checkpoint_dir, conflict));
  JobRecord r = fields;
  char id[32];
  std::snprintf(id, sizeof(id), "job-%06lld", (long long)next_job_);
  r.id = id;
  r.state = JobState::kQueued;
  r.epoch = 0;
  r.checkpoint_step = 0;
  r.submitted_seq = next_job_;
  r.idempotency_key = idempotency_key;
  r.message = "submitted";
  storage::Batch b;
  b.Put(Table::kJobs, r.id, Encode(r));
  b.Put(Table::kJobEvents, EventKey(r.id, next_event_),
        nlohmann::json{{"from", ""}, {"to", "QUEUED"}, {"message", "submitted"}}.dump());
  RW_CRASH_POINT("jobs.submit.before_write");
  RW_RETURN_IF_ERROR(store_->Write(b));  // persisted (synced) before anyone is told
  RW_CRASH_POINT("jobs.submit.after_write");
  ++next_job_;
  ++next_event_;
  if (!idempotency_key.empty()) by_key_[idempotency_key] = r.id;
  jobs_[r.id] = r;
  if (on_created) on_created(r);
  *out = r;
  *created = true;
  return Status::Ok();
}

Status JobTable::Update(const std::string& id, const std::function<void(JobRecord&)>& change,
                        const std::string& message, const storage::Batch& extra) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  RW_REQUIRE(it != jobs_.end(), "job " << id << ": no such job");
  JobRecord next = it->second;
  change(next);
  next.id = it->second.id;
  next.state = it->second.state;
  storage::Batch b = extra;
  b.Put(Table::kJobs, id, Encode(next));
  const char* state = JobStateName(next.state);
  b.Put(Table::kJobEvents, EventKey(id, next_event_),
        nlohmann::json{{"from", state}, {"to", state}, {"message", message}}.dump());
  RW_CRASH_POINT("jobs.update.before_write");
  RW_RETURN_IF_ERROR(store_->Write(b));
  RW_CRASH_POINT("jobs.update.after_write");
  ++next_event_;
  it->second = std::move(next);
  return Status::Ok();
}

Status JobTable::Transition(const std::string& id, JobState to, const std::string& message) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  RW_REQUIRE(it != jobs_.end(), "job " << id << ": no such job");
  const JobState from = it->second.state;
  RW_REQUIRE(Allowed(from, to), "job " << id << ": cannot go from " << JobStateName(from) << " to " << JobStateName(to));
  // An ended job coming back (a FAILED one resumed) takes its directory back only if no live job took it.
  if (!Live(from) && Live(to)) RW_RETURN_IF_ERROR(OwnerCheckLocked(id, it->second.checkpoint_dir, nullptr));
  JobRecord next = it->second;
  next.state = to;
  next.message = message;
  storage::Batch b;
  b.Put(Table::kJobs, id, Encode(next));
  b.Put(Table::kJobEvents, EventKey(id, next_event_),
        nlohmann::json{{"from", JobStateName(from)}, {"to", JobStateName(to)}, {"message", message}}.dump());
  RW_CRASH_POINT("jobs.transition.before_write");
  RW_RETURN_IF_ERROR(store_->Write(b));
  RW_CRASH_POINT("jobs.transition.after_write");
  ++next_event_;
  it->second = std::move(next);
  return Status::Ok();
}

Status JobTable::Get(const std::string& id, JobRecord* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  RW_REQUIRE(it != jobs_.end(), "job " << id << ": no such job");
  *out = it->second;
  return Status::Ok();
}

std::vector<JobRecord> JobTable::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<JobRecord> out;
  for (const auto& [id, r] : jobs_) out.push_back(r);
  return out;
}

bool JobTable::StateOf(const std::string& id, JobState* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return false;
  *out = it->second.state;
  return true;
}

std::vector<std::string> JobTable::IdsIn(JobState state) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  for (const auto& [id, r] : jobs_)
    if (r.state == state) out.push_back(id);
  return out;
}

std::map<std::string, int> JobTable::CountByState() const {
  std::map<std::string, int> counts;
  for (JobState s : {JobState::kQueued, JobState::kRunning, JobState::kSucceeded, JobState::kFailed,
                     JobState::kCancelled, JobState::kPreempted})
    counts[JobStateName(s)] = 0;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, r] : jobs_) counts[JobStateName(r.state)]++;
  return counts;
}

std::vector<QueuedJob> JobTable::Queue() const {
  std::vector<QueuedJob> out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [id, r] : jobs_)
      if (r.state == JobState::kQueued) out.push_back({id, r.priority, r.submitted_seq, r.checkpoint_step});
  }
  std::sort(out.begin(), out.end(), [](const QueuedJob& a, const QueuedJob& b) {
    return a.priority != b.priority ? a.priority > b.priority : a.submitted_seq < b.submitted_seq;
  });
  return out;
}

Status JobTable::Events(const std::string& id, std::vector<JobEvent>* out) const {
  std::vector<std::pair<std::string, std::string>> rows;
  RW_RETURN_IF_ERROR(store_->GetAll(Table::kJobEvents, &rows));
  out->clear();
  for (const auto& [key, value] : rows) {
    if (key.compare(0, id.size() + 1, id + "/") != 0) continue;
    const auto j = nlohmann::json::parse(value);
    out->push_back({std::atoll(key.c_str() + id.size() + 1), id, j.at("from"), j.at("to"), j.at("message")});
  }
  return Status::Ok();
}

}  // namespace rw::scheduler
