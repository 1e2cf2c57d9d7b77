// Driving one job (a runner's thread): each of its rings planned over the devices free now, resumed from
// its newest good checkpoint and run with the same driver as `ringworld train` (actors/job_driver); the
// ring re-formed without a lost device, grown when devices are back, stopped for preemption or shutdown;
// the job's end recorded.
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

uint64_t JobNumber(const std::string& id) {  // job-000042 -> 42 (ring fabrics and UCX ring ids)
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

void DaemonImpl::Drive(Runner* r) {
  const std::string& id = r->job;
  const ParsedJob& parsed = *r->parsed;
  int failures_in_a_row = 0;
  int64_t last_ring_size = 0;
  for (;;) {
    JobRecord rec;
    if (!jobs_->Get(id, &rec).ok() || rec.state != JobState::kRunning) return Finish(r, JobState::kCancelled, "");
    if (shutting_down_) return Finish(r, JobState::kPreempted, "daemon shutting down");
    if (r->preempt) return Finish(r, JobState::kPreempted, "preempted by " + r->preempted_by);
    std::string resume;
    int64_t start = 0;
    if (const Status found = checkpoints_->ResumeStep(id, &start, &resume); !found.ok())
      return Finish(r, JobState::kFailed, "cannot resume: " + found.message());
    actors::RingPlan plan;
    std::vector<actors::device_actor> ring;
    std::set<std::string> ring_workers;
    std::string placement;
    std::string not_now;  // why no ring runs now
    {
      std::lock_guard<std::mutex> lock(mu_);
      Status st = actors::PlanRing(parsed.config, parsed.overrides, start, FreeLocked(id), &plan);
      ReleaseLocked(id);
      if (st.ok() && plan.devices > 0) st = PlaceLocked(id, plan.devices, &r->slots);
      if (!st.ok()) {
        not_now = "waiting for devices: " + st.message();
      } else if (plan.devices > 0) {
        std::map<std::string, int> per_worker;
        for (const auto& s : r->slots) {
          ring.push_back(workers_.at(s.worker).devices.at(s.index));
          ring_workers.insert(s.worker);
          per_worker[s.worker]++;
        }
        for (const auto& [w, n] : per_worker)
          placement += (placement.empty() ? "" : ", ") + w + " (" + std::to_string(n) + ")";
      }
    }
    if (!not_now.empty()) return Finish(r, JobState::kPreempted, not_now);  // requeued: it waits in the queue
    if (plan.devices == 0) return Finish(r, JobState::kSucceeded, "all steps done");
    const std::string transport = ring_workers.size() == 1 ? "inproc" : "ucx";
    const int64_t epoch = rec.epoch + 1;
    std::string msg = "ring of " + std::to_string(plan.devices) + " devices on " + placement + ", " + transport +
                      ", epoch " + std::to_string(epoch) + ", from step " + std::to_string(start);
    if (plan.devices < plan.wanted) msg += " (shrunk: the stage wants " + std::to_string(plan.wanted) + ")";
    if (plan.stop_at_step) msg += ", until step " + std::to_string(plan.stop_at_step);
    const Status recorded = jobs_->Update(id, [epoch](JobRecord& x) { x.epoch = epoch; }, msg);
    if (!recorded.ok()) std::fprintf(stderr, "ringworld daemon: %s: %s\n", id.c_str(), recorded.message().c_str());
    log_->Log(id, msg);
    if (last_ring_size && last_ring_size != plan.devices) metrics_.ElasticResize(id);
    last_ring_size = plan.devices;

    // The plan's overrides set only its stages' ring sizes: the parsed job's output_dir is the ring's.
    const std::string& output_dir = parsed.config.output_dir;
    std::error_code ec;
    fs::create_directories(output_dir, ec);
    std::ofstream metrics_file(fs::path(output_dir) / "metrics.jsonl", std::ios::app);
    if (!metrics_file) log_->Note(id, "output_dir: cannot write " + output_dir + "/metrics.jsonl");
    std::string stop_reason;
    actors::RingHooks hooks;
    hooks.on_step = [&](const runtime::StepMetrics& m) {
      metrics_.Step(id, m);
      metrics_file << m.ToJson() << "\n";
      metrics_file.flush();
      log_->Log(id, m.ToLogLine());
    };
    hooks.on_checkpoint = [&](const runtime::CheckpointInfo& c) { checkpoints_->Record(id, c); };
    hooks.poll = [&]() -> std::string {
      JobState now;
      if (!jobs_->StateOf(id, &now) || now != JobState::kRunning) return "job cancelled";
      bool grow = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (const auto& w : ring_workers) {
          const Worker& wk = workers_.at(w);
          if (!wk.alive) return "worker " + w + " lost: " + wk.lost_reason;
        }
        grow = plan.devices < plan.wanted && FreeLocked(id) >= plan.wanted && stop_reason.empty();
      }
      if (grow) {
        stop_reason = "grow";
        log_->Note(id, "devices are back: growing the ring at the next step's checkpoint");
        return "stop";
      }
      if (shutting_down_ || r->preempt) return "stop";
      return "";
    };
    actors::train_task task;
    task.job_yaml = rec.spec;
    task.origin = rec.id;
    task.overrides = plan.overrides;
    task.stop_at_step = plan.stop_at_step;
    task.resume_max_step = start;
    task.resume_checkpoint = resume;
    const actors::RingOutcome out =
        actors::RunRing(*sys_, ring, JobNumber(id), uint32_t(epoch), transport, task, hooks);

    if (!jobs_->Get(id, &rec).ok() || rec.state != JobState::kRunning) return Finish(r, JobState::kCancelled, "");
    {  // A worker whose process was told to stop (SIGTERM) drains now, not at its next heartbeat: else
       // the requeued job could be placed on it again and stop again, step after step.
      std::lock_guard<std::mutex> lock(mu_);
      for (int rank : out.stopping_ranks)
        if (rank >= 0 && rank < int(r->slots.size())) {
          Worker& w = workers_.at(r->slots[rank].worker);
          if (w.draining) continue;
          std::fprintf(stderr, "ringworld daemon: worker %s is draining (its ring stopped on SIGTERM)\n",
                       r->slots[rank].worker.c_str());
          w.draining = true;
          Wake();
        }
    }
    if (out.ok) {
      failures_in_a_row = 0;
      if (!out.stopped) return Finish(r, JobState::kSucceeded, "all steps done");
      if (plan.stop_at_step && out.steps >= plan.stop_at_step) continue;  // the next stage's ring
      if (stop_reason == "grow") continue;
      if (r->preempt) return Finish(r, JobState::kPreempted, "preempted by " + r->preempted_by);
      if (shutting_down_) return Finish(r, JobState::kPreempted, "daemon shutting down");
      return Finish(r, JobState::kPreempted, "a worker stopped the ring (SIGTERM): resumes from step " +
                                                 std::to_string(out.steps));
    }
    // A lost device (its worker died or hung) or a transport failure: re-form without it.
    bool worker_lost = out.lost;
    std::string lost_list;
    std::vector<std::pair<std::string, std::string>> lost_rows;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int rank : out.lost_ranks)  // a worker whose device went away must register again
        if (rank >= 0 && rank < int(r->slots.size())) {
          const std::string& w = r->slots[rank].worker;
          lost_list += (lost_list.empty() ? "" : ", ") + std::string("rank ") + std::to_string(rank) + " on " + w;
          lost_rows.push_back(
              {w, MarkLostLocked(workers_.at(w), "its device of rank " + std::to_string(rank) + " of " + id + " went away")});
        }
      for (const auto& w : ring_workers) worker_lost = worker_lost || !workers_.at(w).alive;
    }
    PersistWorkers(lost_rows);
    if (shutting_down_) return Finish(r, JobState::kPreempted, "daemon shutting down");
    if (!worker_lost || ++failures_in_a_row > 5) return Finish(r, JobState::kFailed, out.error);
    metrics_.ElasticResize(id);
    last_ring_size = 0;
    log_->Note(id, "ring failed: " + out.error + (lost_list.empty() ? "" : "; devices lost: " + lost_list) +
                       "; re-forming from the last checkpoint");
  }
}

}  // namespace rw::scheduler
