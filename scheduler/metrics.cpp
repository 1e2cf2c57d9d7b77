#include "scheduler/metrics.h"

#include <prometheus/text_serializer.h>

#include <chrono>

namespace rw::scheduler {
namespace {

using namespace prometheus;

Family<Gauge>& G(Registry& r, const char* name, const char* help) { return BuildGauge().Name(name).Help(help).Register(r); }
Family<Counter>& C(Registry& r, const char* name, const char* help) {
  return BuildCounter().Name(name).Help(help).Register(r);
}
Family<Histogram>& H(Registry& r, const char* name, const char* help) {
  return BuildHistogram().Name(name).Help(help).Register(r);
}

const Histogram::BucketBoundaries& SecondsBuckets() {
  static const Histogram::BucketBoundaries b = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
  return b;
}

}  // namespace

DaemonMetrics::DaemonMetrics()
    : registry_(std::make_shared<Registry>()),
      jobs_(G(*registry_, "ringworld_jobs", "Jobs by state")),
      workers_(G(*registry_, "ringworld_workers", "Workers by state (alive, lost)")),
      heartbeats_missed_(C(*registry_, "ringworld_heartbeats_missed_total",
                           "Workers declared lost after missing their heartbeats")),
      step_seconds_(H(*registry_, "ringworld_step_seconds", "Wall time of a training step")),
      tokens_per_s_(G(*registry_, "ringworld_tokens_per_second", "Training throughput of the last step")),
      loss_(G(*registry_, "ringworld_loss", "Training loss of the last step")),
      grad_norm_(G(*registry_, "ringworld_grad_norm", "Global gradient L2 norm of the last step, before clipping")),
      overlap_(G(*registry_, "ringworld_ring_overlap_ratio",
                 "Rank 0's attention compute time over its ring wall time in the last step")),
      memory_(G(*registry_, "ringworld_device_memory_bytes", "Peak memory in use on rank 0's device (host RSS on CPU)")),
      step_(G(*registry_, "ringworld_job_step", "Last training step done")),
      stage_(G(*registry_, "ringworld_job_stage", "Curriculum stage of the last step")),
      seq_len_(G(*registry_, "ringworld_job_seq_len", "Sequence length of the last step")),
      last_step_time_(G(*registry_, "ringworld_job_last_step_timestamp_seconds", "Unix time of the last step")),
      ring_bytes_(C(*registry_, "ringworld_ring_bytes_sent_total", "Bytes rank 0 sent to its ring neighbour")),
      ckpt_seconds_(H(*registry_, "ringworld_checkpoint_seconds", "Time to write and commit a checkpoint")),
      ckpt_bytes_(C(*registry_, "ringworld_checkpoint_bytes_total", "Bytes of committed checkpoints")),
      ckpt_failures_(C(*registry_, "ringworld_checkpoint_failures_total", "Checkpoint writes that failed")),
      ckpt_fallbacks_(C(*registry_, "ringworld_checkpoint_fallbacks_total",
                        "Resumes that skipped a corrupt or missing newest checkpoint")),
      resizes_(C(*registry_, "ringworld_elastic_resizes_total", "Ring re-formations after a device was lost")),
      api_shed_(C(*registry_, "ringworld_api_requests_shed_total",
                  "API requests answered 503 because too many connections waited for a thread")
                    .Add({})),
      api_cut_(C(*registry_, "ringworld_api_connections_cut_total",
                 "API connections shut down for not delivering a whole request in time")
                   .Add({})) {
  WorkersByState(0, 0);
}

DaemonMetrics::JobSeries& DaemonMetrics::Job(const std::string& job) {
  auto it = job_series_.find(job);
  if (it != job_series_.end()) return it->second;
  const Labels l{{"job_id", job}};
  JobSeries s{&step_seconds_.Add(l, SecondsBuckets()),
              &tokens_per_s_.Add(l), &loss_.Add(l), &grad_norm_.Add(l), &overlap_.Add(l), &memory_.Add(l),
              &step_.Add(l), &stage_.Add(l), &seq_len_.Add(l), &last_step_time_.Add(l),
              &ring_bytes_.Add(l), &ckpt_bytes_.Add(l), &ckpt_failures_.Add(l), &ckpt_fallbacks_.Add(l),
              &resizes_.Add(l), &ckpt_seconds_.Add(l, SecondsBuckets())};
  return job_series_.emplace(job, s).first->second;
}

void DaemonMetrics::ApiShed() { api_shed_.Increment(); }
void DaemonMetrics::ApiCut() { api_cut_.Increment(); }

void DaemonMetrics::JobsByState(const std::map<std::string, int>& counts) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [state, n] : counts) jobs_.Add({{"state", state}}).Set(n);
}

void DaemonMetrics::WorkersByState(int alive, int lost) {
  std::lock_guard<std::mutex> lock(mu_);
  workers_.Add({{"state", "alive"}}).Set(alive);
  workers_.Add({{"state", "lost"}}).Set(lost);
}

void DaemonMetrics::Step(const std::string& job, const runtime::StepMetrics& m) {
  std::lock_guard<std::mutex> lock(mu_);
  JobSeries& s = Job(job);
  s.step_seconds->Observe(m.step_seconds);
  s.tokens_per_s->Set(m.tokens_per_s);
  s.loss->Set(m.loss);
  s.grad_norm->Set(m.grad_norm);
  s.overlap->Set(m.ring_overlap_ratio);
  s.memory->Set(double(m.peak_bytes));
  s.step->Set(double(m.step));
  s.stage->Set(double(m.stage));
  s.seq_len->Set(double(m.seq_len));
  s.last_step_time->SetToCurrentTime();
  s.ring_bytes->Increment(double(m.ring_bytes));
}

void DaemonMetrics::Checkpoint(const std::string& job, const runtime::CheckpointInfo& c) {
  std::lock_guard<std::mutex> lock(mu_);
  JobSeries& s = Job(job);
  if (!c.ok) {
    s.ckpt_failures->Increment();
    return;
  }
  s.ckpt_seconds->Observe(c.seconds);
  s.ckpt_bytes->Increment(double(c.bytes));
}

void DaemonMetrics::CheckpointFallback(const std::string& job) {
  std::lock_guard<std::mutex> lock(mu_);
  Job(job).ckpt_fallbacks->Increment();
}

void DaemonMetrics::ElasticResize(const std::string& job) {
  std::lock_guard<std::mutex> lock(mu_);
  Job(job).resizes->Increment();
}

void DaemonMetrics::WorkerKnown(const std::string& worker) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!worker_series_.count(worker)) worker_series_.emplace(worker, &heartbeats_missed_.Add({{"worker", worker}}));
}

void DaemonMetrics::HeartbeatMissed(const std::string& worker) {
  WorkerKnown(worker);
  std::lock_guard<std::mutex> lock(mu_);
  worker_series_.at(worker)->Increment();
}

void DaemonMetrics::ForgetJob(const std::string& job) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = job_series_.find(job);
  if (it == job_series_.end()) return;
  const JobSeries& s = it->second;
  step_seconds_.Remove(s.step_seconds);
  tokens_per_s_.Remove(s.tokens_per_s);
  loss_.Remove(s.loss);
  grad_norm_.Remove(s.grad_norm);
  overlap_.Remove(s.overlap);
  memory_.Remove(s.memory);
  step_.Remove(s.step);
  stage_.Remove(s.stage);
  seq_len_.Remove(s.seq_len);
  last_step_time_.Remove(s.last_step_time);
  ring_bytes_.Remove(s.ring_bytes);
  ckpt_bytes_.Remove(s.ckpt_bytes);
  ckpt_failures_.Remove(s.ckpt_failures);
  ckpt_fallbacks_.Remove(s.ckpt_fallbacks);
  resizes_.Remove(s.resizes);
  ckpt_seconds_.Remove(s.ckpt_seconds);
  job_series_.erase(it);
}

void DaemonMetrics::ForgetWorker(const std::string& worker) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = worker_series_.find(worker);
  if (it == worker_series_.end()) return;
  heartbeats_missed_.Remove(it->second);
  worker_series_.erase(it);
}

std::string DaemonMetrics::Serialize() const {
  std::lock_guard<std::mutex> lock(mu_);
  return TextSerializer().Serialize(registry_->Collect());
}

}  // namespace rw::scheduler
