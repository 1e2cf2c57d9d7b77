// The daemon's Prometheus metrics (prometheus-cpp), served as text on /metrics. Labels are bounded: a job's
// series exist while the job is live and are removed when it ends; workers likewise.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "runtime/trainer.h"

namespace rw::scheduler {

class DaemonMetrics {
 public:
  DaemonMetrics();
  void JobsByState(const std::map<std::string, int>& counts);  // every state, zeros included
  void WorkersByState(int alive, int lost);
  void Step(const std::string& job, const runtime::StepMetrics& m);
  void Checkpoint(const std::string& job, const runtime::CheckpointInfo& c);  // ok or failed
  void CheckpointFallback(const std::string& job);
  void ElasticResize(const std::string& job);
  void WorkerKnown(const std::string& worker);  // its series exist from registration on (at 0)
  void HeartbeatMissed(const std::string& worker);
  void ApiShed();  // a request answered 503 because too many connections waited for a thread
  void ApiCut();   // a connection shut down for not delivering its request in time
  void ForgetJob(const std::string& job);
  void ForgetWorker(const std::string& worker);
  std::string Serialize() const;  // Prometheus text exposition format

 private:
  struct JobSeries {
    prometheus::Histogram* step_seconds;
    prometheus::Gauge *tokens_per_s, *loss, *grad_norm, *overlap, *memory, *step, *stage, *seq_len, *last_step_time;
    prometheus::Counter *ring_bytes, *ckpt_bytes, *ckpt_failures, *ckpt_fallbacks, *resizes;
    prometheus::Histogram* ckpt_seconds;
  };
  JobSeries& Job(const std::string& job);
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Gauge>& jobs_;
  prometheus::Family<prometheus::Gauge>& workers_;
  prometheus::Family<prometheus::Counter>& heartbeats_missed_;
  prometheus::Family<prometheus::Histogram>& step_seconds_;
  prometheus::Family<prometheus::Gauge>& tokens_per_s_;
  prometheus::Family<prometheus::Gauge>& loss_;
  prometheus::Family<prometheus::Gauge>& grad_norm_;
  prometheus::Family<prometheus::Gauge>& overlap_;
  prometheus::Family<prometheus::Gauge>& memory_;
  prometheus::Family<prometheus::Gauge>& step_;
  prometheus::Family<prometheus::Gauge>& stage_;
  prometheus::Family<prometheus::Gauge>& seq_len_;
  prometheus::Family<prometheus::Gauge>& last_step_time_;
  prometheus::Family<prometheus::Counter>& ring_bytes_;
  prometheus::Family<prometheus::Histogram>& ckpt_seconds_;
  prometheus::Family<prometheus::Counter>& ckpt_bytes_;
  prometheus::Family<prometheus::Counter>& ckpt_failures_;
  prometheus::Family<prometheus::Counter>& ckpt_fallbacks_;
  prometheus::Family<prometheus::Counter>& resizes_;
  prometheus::Counter& api_shed_;
  prometheus::Counter& api_cut_;
  mutable std::mutex mu_;
  std::map<std::string, JobSeries> job_series_;
  std::map<std::string, prometheus::Counter*> worker_series_;
};

}  // namespace rw::scheduler
