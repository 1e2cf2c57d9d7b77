// The scheduler daemon: one per cluster. It keeps its state in RocksDB (jobs, events, workers, checkpoint
// records), serves the REST API and /metrics over HTTP, accepts workers (which publish their device actors
// on the CAF middleman), places queued jobs on rings of their devices and drives each running job with the
// same driver as `ringworld train` (actors/job_driver): curriculum stages, checkpoints recorded as they
// commit, elastic re-formation when a device is lost, preemption by priority, graceful shutdown.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "kernels/common.h"

namespace rw::scheduler {

using kernels::Status;

struct DaemonOptions {
  std::string state_dir = "ringworld-state";  // RocksDB, the API token, job logs, api.addr
  std::string listen = "127.0.0.1:8470";      // HOST:PORT (port 0: any; the chosen one goes to state_dir/api.addr)
  std::string data_root = ".";                // data.path and init_from must lie inside
  std::string checkpoint_root = ".";          // checkpoint.dir and output_dir must lie inside
  std::string cluster_id = "ringworld";
  size_t max_body_bytes = 1 << 20;            // larger requests get 413
  double worker_timeout_s = 5;                // a worker silent this long is lost
  double worker_connect_s = 5;                // registration: the worker's device host must answer within it
  double grace_s = 30;                        // SIGTERM: time for running jobs to checkpoint
  std::string tls_cert, tls_key;              // both set: the API is served over HTTPS (PEM files)
  int api_threads = 32;                       // the API's thread pool
  int api_max_queued = 64;                    // connections waiting for a thread beyond it: 503 + Retry-After
  double api_request_deadline_s = 10;         // a connection's whole request must arrive within it, or it is cut
};

constexpr int kExitPreempted = 75;  // the daemon stopped on SIGTERM after preempting its jobs

class Daemon {
 public:
  // Opens (or creates) the state directory, rebuilds the job table, binds the API; nothing runs yet.
  static Status Open(const DaemonOptions& options, std::unique_ptr<Daemon>* out);
  virtual ~Daemon() = default;
  virtual int port() const = 0;
  // Serves and schedules until `stop` becomes true (a signal handler sets it); then shuts down gracefully
  // (running jobs stop after their step with a checkpoint and become PREEMPTED, within the grace period).
  // Returns the process exit code: 0, or kExitPreempted when jobs were preempted by the shutdown.
  virtual int Run(const std::atomic<bool>& stop) = 0;
};

}  // namespace rw::scheduler
