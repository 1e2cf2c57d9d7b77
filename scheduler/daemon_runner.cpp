// Driving one job with the same job driver as `ringworld train` (actors::SpawnJob, a job actor):
// here its device pool is the workers' devices (placed under the daemon's lock, lost workers marked, a
// SIGTERM'd worker drained) and its sink the job table, the job's log, its metrics file and Prometheus.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "scheduler/daemon_impl.h"

namespace rw::scheduler {
namespace {

namespace fs = std::filesystem;

uint64_t JobNumber(const std::string& id) {  // job-000042 -> 42: names the job in the device actors' logs
  return std::strtoull(id.c_str() + (id.rfind('-') + 1), nullptr, 10);
}

}  // namespace

void DaemonImpl::Finish(Runner* r, JobState to, const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ReleaseLocked(r->job);
  }
  JobState now;
  if (jobs_->StateOf(r->job, &now) && now == JobState::kRunning) {
    const Status st = jobs_->Transition(r->job, to, message);
    if (!st.ok()) std::fprintf(stderr, "ringworld daemon: %s\n", st.message().c_str());
    log_->Log(r->job, std::string(JobStateName(to)) + ": " + message);
  }
  ForgetIfEnded(r->job);
  r->done = true;
  Wake();  // its devices are free
}

// The workers' devices, for this job.
class DaemonImpl::WorkerPool final : public actors::DevicePool {
 public:
  WorkerPool(DaemonImpl& d, Runner& r) : d_(d), r_(r) {}
  Status Form(const std::function<Status(int, actors::RingPlan*)>& plan, actors::RingPlan* out, Ring* ring) override {
    ring_workers_.clear();
    std::map<std::string, int> per_worker;
    {
      std::lock_guard<std::mutex> lock(d_.mu_);
      Status st = plan(d_.FreeLocked(r_.job), out);
      d_.ReleaseLocked(r_.job);
      r_.slots.clear();
      if (st.ok() && out->devices > 0) st = d_.PlaceLocked(r_.job, out->devices, &r_.slots);
      RW_RETURN_IF_ERROR(st);
      for (const auto& s : r_.slots) {
        ring->devices.push_back(d_.workers_.at(s.worker).devices.at(s.index));
        ring_workers_.insert(s.worker);
        per_worker[s.worker]++;
      }
    }
    for (const auto& [w, n] : per_worker)
      ring->where += (ring->where.empty() ? "" : ", ") + w + " (" + std::to_string(n) + ")";
    ring->transport = ring_workers_.size() == 1 ? "inproc" : "ucx";
    return Status::Ok();
  }
  std::string Gone(std::vector<int>* ranks) override {
    std::lock_guard<std::mutex> lock(d_.mu_);
    std::string why;
    for (const auto& w : ring_workers_) {
      const Worker& wk = d_.workers_.at(w);
      if (!wk.alive && why.empty()) why = "worker " + w + " lost: " + wk.lost_reason;
    }
    if (ranks && !why.empty())
      for (size_t rank = 0; rank < r_.slots.size(); ++rank)
        if (!d_.workers_.at(r_.slots[rank].worker).alive) ranks->push_back(int(rank));
    return why;
  }
  int Available() override {
    std::lock_guard<std::mutex> lock(d_.mu_);
    return d_.FreeLocked(r_.job);
  }
  std::string Lost(const std::vector<int>& ranks) override {
    std::string list;
    std::vector<std::pair<std::string, std::string>> rows;
    {
      std::lock_guard<std::mutex> lock(d_.mu_);
      for (int rank : ranks)  // a worker whose device went away must register again
        if (rank >= 0 && rank < int(r_.slots.size())) {
          const std::string& w = r_.slots[rank].worker;
          list += (list.empty() ? "" : ", ") + std::string("rank ") + std::to_string(rank) + " on " + w;
          rows.push_back({w, d_.MarkLostLocked(d_.workers_.at(w), "its device of rank " + std::to_string(rank) +
                                                                      " of " + r_.job + " went away")});
        }
    }
    d_.PersistWorkers(rows);
    return list;
  }
  // A worker whose process was told to stop (SIGTERM) drains now, not at its next heartbeat: else the
  // requeued job could be placed on it again and stop again, step after step.
  void Stopping(const std::vector<int>& ranks) override {
    std::lock_guard<std::mutex> lock(d_.mu_);
    for (int rank : ranks)
      if (rank >= 0 && rank < int(r_.slots.size())) {
        Worker& w = d_.workers_.at(r_.slots[rank].worker);
        if (w.draining) continue;
        std::fprintf(stderr, "ringworld daemon: worker %s is draining (its ring stopped on SIGTERM)\n",
                     r_.slots[rank].worker.c_str());
        w.draining = true;
        d_.Wake();
      }
  }

  std::string Holder() const override { return "a worker"; }

 private:
  DaemonImpl& d_;
  Runner& r_;
  std::set<std::string> ring_workers_;
};

// The job table, the job's log and metrics file, Prometheus.
class DaemonImpl::JobTableSink final : public actors::JobSink {
 public:
  JobTableSink(DaemonImpl& d, Runner& r, const std::string& output_dir) : d_(d), r_(r), output_dir_(output_dir) {}
  Interrupt Interrupted() override {
    JobState now;
    if (!d_.jobs_->StateOf(r_.job, &now) || now != JobState::kRunning) return {true, false, "job cancelled"};
    if (d_.shutting_down_) return {false, true, "daemon shutting down"};
    if (r_.preempt) return {false, true, "preempted by " + r_.preempted_by};
    return {};
  }
  Status ResumePoint(int64_t* step, std::string* checkpoint) override {
    return d_.checkpoints_->ResumeStep(r_.job, step, checkpoint);
  }
  uint32_t RingFormed(const actors::RingPlan& plan, const actors::DevicePool::Ring& ring, int64_t start,
                      bool resized) override {
    JobRecord rec;
    const int64_t epoch = d_.jobs_->Get(r_.job, &rec).ok() ? rec.epoch + 1 : 1;
    std::string msg = "ring of " + std::to_string(plan.devices) + " devices on " + ring.where + ", " +
                      ring.transport + ", epoch " + std::to_string(epoch) + ", from step " + std::to_string(start);
    if (plan.mesh.data_groups() > 1) msg += ", mesh " + plan.mesh.ToString();
    if (plan.devices < plan.wanted) msg += " (shrunk: the stage wants " + std::to_string(plan.wanted) + ")";
    if (plan.stop_at_step) msg += ", until step " + std::to_string(plan.stop_at_step);
    const Status recorded = d_.jobs_->Update(r_.job, [epoch](JobRecord& x) { x.epoch = epoch; }, msg);
    if (!recorded.ok()) std::fprintf(stderr, "ringworld daemon: %s: %s\n", r_.job.c_str(), recorded.message().c_str());
    d_.log_->Log(r_.job, msg);
    if (resized) d_.metrics_.ElasticResize(r_.job);
    // The plan's overrides set only its stages' ring sizes: the parsed job's output_dir is the ring's.
    std::error_code ec;
    fs::create_directories(output_dir_, ec);
    metrics_file_.close();
    metrics_file_.clear();
    metrics_file_.open(fs::path(output_dir_) / "metrics.jsonl", std::ios::app);
    if (!metrics_file_) d_.log_->Note(r_.job, "output_dir: cannot write " + output_dir_ + "/metrics.jsonl");
    return uint32_t(epoch);
  }
  void OnStep(const runtime::StepMetrics& m) override {
    d_.metrics_.Step(r_.job, m);
    metrics_file_ << m.ToJson() << "\n";
    metrics_file_.flush();
    d_.log_->Log(r_.job, m.ToLogLine());
  }
  void OnCheckpoint(const runtime::CheckpointInfo& c) override { d_.checkpoints_->Record(r_.job, c); }
  void Note(const std::string& line) override { d_.log_->Note(r_.job, line); }

 private:
  DaemonImpl& d_;
  Runner& r_;
  std::string output_dir_;
  std::ofstream metrics_file_;
};

void DaemonImpl::Drive(Runner* r) {
  const std::string& id = r->job;
  const ParsedJob& parsed = *r->parsed;
  actors::JobRun run;
  run.config = &parsed.config;
  {
    JobRecord rec;
    if (!jobs_->Get(id, &rec).ok()) return Finish(r, JobState::kCancelled, "");
    run.yaml = rec.spec;
  }
  run.origin = id;
  run.overrides = parsed.overrides;
  run.number = JobNumber(id);
  r->pool = std::make_unique<WorkerPool>(*this, *r);
  r->sink = std::make_unique<JobTableSink>(*this, *r, parsed.config.output_dir);
  // The driver runs on its own; when the job ends it records the outcome (Finish marks the runner done,
  // and the scheduling loop reaps it).
  r->driver = actors::StartJob(*sys_, run, *r->pool, *r->sink, [this, r](const actors::JobOutcome& out) {
    using S = actors::JobOutcome::State;
    switch (out.state) {
      case S::kSucceeded:
        return Finish(r, JobState::kSucceeded, out.message);
      case S::kCancelled:
        return Finish(r, JobState::kCancelled, "");
      case S::kPreempted:
      case S::kWaiting:  // requeued: it waits in the queue for devices
        return Finish(r, JobState::kPreempted, out.message);
      case S::kFailed:
        return Finish(r, JobState::kFailed, out.message);
    }
  });
}

}  // namespace rw::scheduler
