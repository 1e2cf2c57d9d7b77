// The daemon's one owner of state, DaemonImpl, declared for the files that define its parts (internal to
// scheduler/; the public interface is daemon.h):
//   daemon.cpp          opening the state, the scheduling loop (woken on changes), placing the next job,
//                       preemption, graceful shutdown
//   daemon_api.cpp      the REST API: routes, request parsing, the token, replies
//   daemon_workers.cpp  the worker registry: heartbeats, lost and draining workers, devices per job
//   daemon_runner.cpp   driving one job: its rings, elastic re-formation, its end
// and the parts that hold no daemon state of their own: placement.h (placement and victim choice, pure),
// job_configs.h (each job parsed once), checkpoint_records.h, job_log.h (events and log files).
//
// Locks: mu_ guards the registry (workers_), the runners and waiting_; nothing slow runs under it (no file
// of a job is opened, no state store write, no log line). The job table, the parsed jobs (JobConfigs) and
// the logs have their own; the order is mu_, the job table's, the parsed jobs' (a submission keeps its
// configuration under the table's lock), and wake_mu_ last.
#pragma once

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "actors/channel_auth.h"
#include "actors/device_host.h"
#include "actors/job_driver.h"
#include "scheduler/api_guard.h"
#include "scheduler/checkpoint_records.h"
#include "scheduler/daemon.h"
#include "scheduler/job_configs.h"
#include "scheduler/job_log.h"
#include "scheduler/job_table.h"
#include "scheduler/metrics.h"
#include "scheduler/placement.h"
#include "storage/state_store.h"

namespace rw::scheduler {

using Clock = std::chrono::steady_clock;

// Random bytes as hex (/dev/urandom): the API token, the daemon's instance id.
std::string RandomHex(size_t bytes);
// The API token: made at first start, 0600, in the state directory; a token file that is not one is refused.
Status LoadOrCreateToken(const std::string& dir, std::string* token);

struct Worker {
  std::string id, name, host, kind = "cpu", instance;
  int port = 0;
  int64_t pid = 0;
  std::vector<int64_t> memory;  // per device
  std::vector<actors::device_actor> devices;
  std::vector<std::string> used_by;  // job id per device, "" when free
  Clock::time_point last_seen;
  bool alive = false, draining = false;
  std::string lost_reason;
};

// One running job: a thread that drives its rings.
struct Runner {
  std::string job;
  int64_t priority = 0;
  int64_t submitted_seq = 0;
  std::string backfilled_past;              // the waiting job it started ahead of ("" when none)
  std::shared_ptr<const ParsedJob> parsed;  // its configuration, parsed once
  // Its driver (actors::SpawnJob) and what the driver writes to and takes devices from; held here so that
  // they live until the driver has ended (it calls Finish last).
  std::unique_ptr<actors::DevicePool> pool;
  std::unique_ptr<actors::JobSink> sink;
  actors::job_actor driver;
  std::vector<Slot> slots;             // devices it holds (under the daemon's lock)
  std::atomic<bool> preempt{false};    // a higher-priority job wants its devices
  std::string preempted_by;            // written before preempt is set
  std::atomic<bool> done{false};
};

class DaemonImpl final : public Daemon {
 public:
  explicit DaemonImpl(const DaemonOptions& o) : opt_(o) {}
  ~DaemonImpl() override;
  Status Init();
  int port() const override { return port_; }
  int Run(const std::atomic<bool>& stop) override;

 private:
  // ---- the scheduling loop (daemon.cpp) ----
  // Wakes the scheduling loop: a job was submitted, cancelled or resumed, a worker registered, was lost or
  // drains, a runner finished. Without one the loop still ticks every kTickFallback (heartbeats, the
  // stop flag a signal handler sets).
  void Wake();
  void WaitForWake(std::chrono::milliseconds at_most);
  void Tick();
  void Schedule();
  // The head job's parsed configuration: the one kept, parsed again (no lock held) only when missing or,
  // after kReparseAfter, when it did not validate (a file of the job may be back).
  std::shared_ptr<const ParsedJob> ParsedFor(const std::string& id);  // null: no such job
  // Says (in the job's log, and in the API's "waiting") why a queued job waits; once per reason.
  void NoteWaiting(const std::string& job, const std::string& why);
  // Starts a placed job's driver (RUNNING); `backfilled_past` names the job it started ahead of, if any.
  void Start(const QueuedJob& q, std::shared_ptr<const ParsedJob> parsed, std::vector<Slot> slots,
             const std::string& backfilled_past);
  void ReapRunners();
  // Drops a job's parsed configuration once it has ended (SUCCEEDED, FAILED, CANCELLED): a failed job is
  // parsed again when it is resumed.
  void ForgetIfEnded(const std::string& job);

  // ---- the worker registry (daemon_workers.cpp) ----
  Status LoadKnownWorkers();  // at start: the workers of the state store, lost until they register again
  void CheckHeartbeats();
  // Marks `w` lost (a no-op when it is not alive) and returns its row for PersistWorkers ("" when nothing
  // changed): store writes happen after mu_ is released.
  std::string MarkLostLocked(Worker& w, const std::string& why);
  void PersistWorkers(const std::vector<std::pair<std::string, std::string>>& rows);
  std::vector<WorkerDevices> DevicesLocked() const;
  int FreeLocked(const std::string& job = "") const;
  // Places a ring of `devices` for `job` (PlaceRing) and marks its devices used by it.
  Status PlaceLocked(const std::string& job, int devices, std::vector<Slot>* slots);
  void ReleaseLocked(const std::string& job);
  nlohmann::json WorkerJson(const Worker& w) const;

  // ---- one job (daemon_runner.cpp) ----
  void Drive(Runner* r);  // starts the job's driver; it calls Finish when the job ends
  void Finish(Runner* r, JobState to, const std::string& message);
  class WorkerPool;    // the job driver's devices: the workers'
  class JobTableSink;  // where the job driver writes a job's life: the job table, its log, Prometheus

  // ---- the API (daemon_api.cpp) ----
  void Routes();
  void Register(const httplib::Request& req, httplib::Response& res);
  void Heartbeat(const httplib::Request& req, httplib::Response& res);
  Status ParseSubmission(const httplib::Request& req, JobRecord* rec, std::string* key, runtime::JobConfig* config);
  bool Authorized(const httplib::Request& req) const;
  // Why queued jobs wait, as the scheduler last said: copied under mu_, so that the API builds its replies
  // (2,000 records for a list) without holding the lock the scheduler and the heartbeats need.
  std::map<std::string, std::string> WaitingReasons();
  std::string WaitingReason(const std::string& job);

  static constexpr std::chrono::milliseconds kTickFallback{100};
  static constexpr int kListenBacklog = 1024;
  // Registrations connect to the worker (up to worker_connect_s each): at most this many at once hold API
  // threads, the others get 503 + Retry-After, so ports that accept and never answer cannot take the API.
  static constexpr int kMaxRegistering = 2;  // the kernel caps it at net.core.somaxconn
  static constexpr std::chrono::seconds kReparseAfter{5};

  DaemonOptions opt_;
  actors::SystemConfig cfg_;
  // Made in Init once the channel's credentials are written (CAF reads its TLS settings at start): the
  // workers' device hosts are reached over the authenticated channel only (actors/channel_auth.h).
  std::unique_ptr<caf::actor_system> sys_;
  std::unique_ptr<storage::StateStore> store_;
  std::unique_ptr<JobTable> jobs_;
  std::unique_ptr<JobLog> log_;
  std::unique_ptr<CheckpointRecords> checkpoints_;
  JobConfigs configs_;
  std::string token_, instance_, host_;
  int port_ = 0;
  std::unique_ptr<ApiGuard> guard_;        // outlives http_: its pool counts into the guard
  std::unique_ptr<httplib::Server> http_;  // an httplib::SSLServer with --tls-cert/--tls-key
  std::thread http_thread_;
  DaemonMetrics metrics_;
  std::atomic<bool> shutting_down_{false};
  std::atomic<int> registering_{0};
  Clock::time_point settle_until_{};
  std::mutex mu_;  // workers_, runners_, waiting_
  std::map<std::string, Worker> workers_;
  std::map<std::string, std::unique_ptr<Runner>> runners_;
  std::map<std::string, std::string> waiting_;  // queued job -> why it waits (said once per reason)
  std::mutex wake_mu_;
  std::condition_variable wake_cv_;
  bool woken_ = false;  // under wake_mu_
};

}  // namespace rw::scheduler
