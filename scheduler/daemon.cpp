// The daemon's state and its scheduling loop: opening the state directory, the loop (woken by the changes
// that can let a job run, else ticking for heartbeats), placing the next queued job or preempting for it,
// graceful shutdown. The other parts of DaemonImpl: see daemon_impl.h.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "scheduler/daemon_impl.h"

namespace rw::scheduler {

namespace fs = std::filesystem;

DaemonImpl::~DaemonImpl() {
  if (http_) http_->stop();
  if (http_thread_.joinable()) http_thread_.join();
  if (guard_) guard_->Stop();
}

Status DaemonImpl::Init() {
  std::error_code ec;
  const bool existed = fs::exists(opt_.state_dir, ec);
  fs::create_directories(opt_.state_dir + "/logs", ec);
  RW_REQUIRE(!ec, "--state: cannot create " << opt_.state_dir << ": " << ec.message());
  // The state (job files, the token, logs) is the daemon user's alone: the directories are 0700, so what
  // RocksDB and the logs create inside (0644 by their defaults) cannot be reached by others.
  for (const std::string& d : {opt_.state_dir, opt_.state_dir + "/logs"}) {
    const auto mode = fs::status(d, ec).permissions();
    RW_REQUIRE(!ec, "--state: " << d << ": " << ec.message());
    if ((mode & (fs::perms::group_all | fs::perms::others_all)) != fs::perms::none) {
      fs::permissions(d, fs::perms::owner_all, fs::perm_options::replace, ec);
      RW_REQUIRE(!ec, "--state: cannot make " << d << " private (0700): " << ec.message());
      if (existed) std::fprintf(stderr, "ringworld daemon: %s made private (0700; others could read it)\n", d.c_str());
    }
  }
  RW_RETURN_IF_ERROR(storage::OpenRocksStore(opt_.state_dir + "/db", opt_.cluster_id, &store_));
  fs::permissions(opt_.state_dir + "/db", fs::perms::owner_all, fs::perm_options::replace, ec);
  RW_RETURN_IF_ERROR(JobTable::Open(store_.get(), &jobs_));
  log_ = std::make_unique<JobLog>(opt_.state_dir + "/logs", jobs_.get());
  checkpoints_ = std::make_unique<CheckpointRecords>(store_.get(), jobs_.get(), &metrics_, log_.get());
  RW_RETURN_IF_ERROR(LoadOrCreateToken(opt_.state_dir, &token_));
  actors::ChannelCredentials channel;
  RW_RETURN_IF_ERROR(actors::WriteChannelCredentials(token_, opt_.state_dir + "/channel", &channel));
  actors::EnableChannelAuth(cfg_, channel);
  sys_ = std::make_unique<caf::actor_system>(cfg_);
  for (const auto& [field, root] : {std::pair<const char*, std::string>{"--data-root", opt_.data_root},
                                    {"--checkpoint-root", opt_.checkpoint_root}})
    RW_REQUIRE(fs::is_directory(root, ec), field << ": " << root << " is not a directory");
  instance_ = RandomHex(8);
  // Jobs that were running when the daemon stopped (or died) have no driver now: they resume from their
  // last recorded checkpoint once workers are back.
  for (const auto& id : jobs_->IdsIn(JobState::kRunning)) {
    RW_RETURN_IF_ERROR(jobs_->Transition(id, JobState::kPreempted, "daemon restarted: resumes from its last checkpoint"));
    log_->Log(id, "PREEMPTED: daemon restarted");
  }
  // The jobs that may run are parsed now, once, before anything is served (a failed one when it is resumed).
  for (const auto& r : jobs_->List())
    if (r.state == JobState::kQueued || r.state == JobState::kPreempted) configs_.Put(r.id, JobConfigs::Parse(r));
  RW_RETURN_IF_ERROR(LoadKnownWorkers());
  // The API.
  const auto colon = opt_.listen.rfind(':');
  RW_REQUIRE(colon != std::string::npos, "--listen: expected HOST:PORT, got '" << opt_.listen << "'");
  host_ = opt_.listen.substr(0, colon);
  const int want = std::atoi(opt_.listen.c_str() + colon + 1);
  RW_REQUIRE(opt_.tls_cert.empty() == opt_.tls_key.empty(), "--tls-cert, --tls-key: give both or neither");
  if (opt_.tls_cert.empty()) {
    http_ = std::make_unique<httplib::Server>();
  } else {
    auto https = std::make_unique<httplib::SSLServer>(opt_.tls_cert.c_str(), opt_.tls_key.c_str());
    RW_REQUIRE(https->is_valid(), "--tls-cert, --tls-key: cannot load " << opt_.tls_cert << " and " << opt_.tls_key
                                                                        << " (PEM certificate and its private key)");
    http_ = std::move(https);
  }
  RW_REQUIRE(opt_.api_threads >= 1 && opt_.api_threads <= 1024, "--api-threads: 1 to 1024");
  RW_REQUIRE(opt_.api_max_queued >= 0, "--api-max-queued: must be >= 0");
  RW_REQUIRE(opt_.api_request_deadline_s > 0 && opt_.api_request_deadline_s <= 3600,
             "--api-request-deadline: seconds in (0, 3600]");
  ApiGuardOptions g;
  g.threads = opt_.api_threads;
  g.max_queued = opt_.api_max_queued;
  g.request_deadline = std::chrono::milliseconds(int64_t(opt_.api_request_deadline_s * 1000));
  g.keep_alive = std::chrono::seconds(5);
  g.on_cut = [this] { metrics_.ApiCut(); };
  guard_ = std::make_unique<ApiGuard>(g);
  http_->new_task_queue = [guard = guard_.get()] { return guard->NewTaskQueue(); };
  http_->set_keep_alive_timeout(5);
  http_->set_logger([guard = guard_.get()](const httplib::Request& req, const httplib::Response&) {
    guard->Answered(req);
  });
  Routes();
  // Debian's cpp-httplib is a shared library built to listen with a backlog of 5: a burst of clients would
  // see dropped and retried connects. The socket is seen as it is made, and listens again with a real one.
  int listen_fd = -1;
  http_->set_socket_options([&listen_fd](socket_t sock) {
    httplib::default_socket_options(sock);
    listen_fd = sock;
  });
  port_ = want > 0 ? (http_->bind_to_port(host_.c_str(), want) ? want : -1) : http_->bind_to_any_port(host_.c_str());
  RW_REQUIRE(port_ > 0, "--listen: cannot listen on " << opt_.listen);
  RW_REQUIRE(listen_fd >= 0 && ::listen(listen_fd, kListenBacklog) == 0,
             "--listen: cannot set the listen backlog on " << opt_.listen);
  http_->set_socket_options(httplib::default_socket_options);
  guard_->Start(port_);
  std::ofstream(opt_.state_dir + "/api.addr.tmp") << (opt_.tls_cert.empty() ? "" : "https://") << host_ << ":" << port_
                                                  << "\n";
  fs::rename(opt_.state_dir + "/api.addr.tmp", opt_.state_dir + "/api.addr", ec);
  return Status::Ok();
}

int DaemonImpl::Run(const std::atomic<bool>& stop) {
  http_thread_ = std::thread([this] { http_->listen_after_bind(); });
  std::fprintf(stderr, "ringworld daemon: cluster %s, API on %s://%s:%d (token in %s/token), state in %s\n",
               opt_.cluster_id.c_str(), opt_.tls_cert.empty() ? "http" : "https", host_.c_str(), port_,
               opt_.state_dir.c_str(), opt_.state_dir.c_str());
  while (!stop.load()) {
    WaitForWake(kTickFallback);
    Tick();
  }
  // Graceful shutdown: every running job stops after its step with a checkpoint.
  shutting_down_ = true;
  bool preempted = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    preempted = !runners_.empty();
  }
  const auto deadline = Clock::now() + std::chrono::duration<double>(opt_.grace_s);
  for (;;) {
    ReapRunners();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (runners_.empty()) break;
    }
    if (Clock::now() > deadline) {
      std::fprintf(stderr, "ringworld daemon: jobs still running after the %.0f s grace period; exiting\n",
                   opt_.grace_s);
      _exit(kExitPreempted);  // the committed checkpoints stay as they are
    }
    WaitForWake(std::chrono::milliseconds(50));  // a runner that finishes wakes it
  }
  http_->stop();
  if (http_thread_.joinable()) http_thread_.join();
  return preempted ? kExitPreempted : 0;
}

void DaemonImpl::Wake() {
  {
    std::lock_guard<std::mutex> lock(wake_mu_);
    woken_ = true;
  }
  wake_cv_.notify_one();
}

void DaemonImpl::WaitForWake(std::chrono::milliseconds at_most) {
  std::unique_lock<std::mutex> lock(wake_mu_);
  wake_cv_.wait_for(lock, at_most, [this] { return woken_; });
  woken_ = false;
}

void DaemonImpl::Tick() {
  CheckHeartbeats();
  ReapRunners();
  if (shutting_down_) return;
  if (Clock::now() < settle_until_) {
    std::lock_guard<std::mutex> lock(mu_);
    bool all_back = true;
    for (const auto& [id, w] : workers_) all_back = all_back && w.alive;
    if (!all_back) return;
  }
  for (const auto& id : jobs_->IdsIn(JobState::kPreempted))  // preempted jobs go back to the queue by themselves
    if (jobs_->Transition(id, JobState::kQueued, "requeued").ok()) log_->Log(id, "QUEUED: requeued");
  Schedule();
  metrics_.JobsByState(jobs_->CountByState());
}

std::shared_ptr<const ParsedJob> DaemonImpl::ParsedFor(const std::string& id) {
  std::shared_ptr<const ParsedJob> p = configs_.Get(id);
  if (p && (p->status.ok() || Clock::now() - p->parsed_at < kReparseAfter)) return p;
  // Missing is not expected: every way to QUEUED keeps the configuration first (submission, start, resume).
  JobRecord rec;
  if (!jobs_->Get(id, &rec).ok()) return nullptr;
  p = JobConfigs::Parse(rec);
  configs_.Put(id, p);
  ForgetIfEnded(id);  // cancelled while it was parsed: not kept
  return p;
}

void DaemonImpl::ForgetIfEnded(const std::string& job) {
  JobState s;
  if (!jobs_->StateOf(job, &s) || s == JobState::kSucceeded || s == JobState::kFailed || s == JobState::kCancelled) {
    configs_.Forget(job);
    std::lock_guard<std::mutex> lock(mu_);
    waiting_.erase(job);
  }
}

// Queued jobs start in order (priority, then submission) when a ring for them fits in the free devices.
// The first that does not fit is the head: it waits (saying why, once per reason), and a running job is
// preempted for it when that lets it run (ChoosePreemption). While such a preemption is chosen or under
// way, the free devices are the head's; otherwise later jobs that fit start on them (backfill), and give
// their devices back when the head could then run. A job whose file does not validate waits with its
// reason and holds nobody back.
void DaemonImpl::Schedule() {
  std::string head;         // the first job that waits for devices
  bool keep_free = false;   // a preemption for the head is chosen or under way
  for (const QueuedJob& q : jobs_->Queue()) {
    const std::shared_ptr<const ParsedJob> parsed = ParsedFor(q.id);
    if (!parsed) continue;
    if (!parsed->status.ok()) {
      NoteWaiting(q.id, parsed->status.message());
      continue;
    }
    actors::RingPlan plan;
    std::vector<Slot> slots;
    Status st;
    std::string victim;
    {
      std::lock_guard<std::mutex> lock(mu_);
      // Its previous driver (preempted, requeued) is still finishing: its thread is joined first, and its
      // Finish wakes this loop. Its devices come free then: nobody is started on them before.
      if (runners_.count(q.id)) return;
      const int free = FreeLocked();
      if (!head.empty() && free == 0) return;  // nothing left to backfill onto
      st = actors::PlanRing(parsed->config, q.checkpoint_step, free, &plan);
      // Its devices are held from now on, so that the job after it is planned without them; its driver
      // re-places its ring over them and any freed since.
      if (st.ok() && plan.devices > 0) st = PlaceLocked(q.id, plan.devices, &slots);
      if (!st.ok() && head.empty()) {
        std::vector<RunningJob> running;
        for (const auto& [id, r] : runners_) {
          JobState s;
          running.push_back({id, r->priority, jobs_->StateOf(id, &s) && s == JobState::kRunning, r->preempt.load(),
                             !r->backfilled_past.empty(), r->submitted_seq, int(r->slots.size())});
        }
        const auto fits = [&](int available) {
          actors::RingPlan p;
          return actors::PlanRing(parsed->config, q.checkpoint_step, available, &p).ok();
        };
        const Preemption p = ChoosePreemption(running, {q.priority, q.submitted_seq}, free, fits);
        victim = p.victim;
        keep_free = p.pending;
      }
    }
    if (!st.ok()) {
      NoteWaiting(q.id, st.message());
      if (head.empty()) head = q.id;
      if (!victim.empty()) {
        // The event first, then the request: the victim's PREEMPTED follows its "preempting for". Runners
        // are removed by this thread only (ReapRunners), so the victim's is still there.
        log_->Note(victim, "preempting for " + q.id + " (priority " + std::to_string(q.priority) + ")");
        std::lock_guard<std::mutex> lock(mu_);
        Runner* r = runners_.at(victim).get();
        r->preempted_by = q.id;
        r->preempt = true;
      }
      if (keep_free) return;
      continue;
    }
    Start(q, parsed, std::move(slots), head);
  }
}

void DaemonImpl::NoteWaiting(const std::string& job, const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::string& said = waiting_[job];
    if (said == why) return;
    said = why;
  }
  log_->Log(job, "waiting: " + why);
}

void DaemonImpl::Start(const QueuedJob& q, std::shared_ptr<const ParsedJob> parsed, std::vector<Slot> slots,
                       const std::string& backfilled_past) {
  if (!jobs_->Transition(q.id, JobState::kRunning, "placed").ok()) {  // cancelled meanwhile
    {
      std::lock_guard<std::mutex> lock(mu_);
      ReleaseLocked(q.id);
    }
    ForgetIfEnded(q.id);
    return;
  }
  log_->Log(q.id, backfilled_past.empty() ? "RUNNING: placed"
                                          : "RUNNING: placed (backfilled while " + backfilled_past + " waits for devices)");
  Runner* raw = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    waiting_.erase(q.id);
    auto r = std::make_unique<Runner>();
    r->job = q.id;
    r->priority = q.priority;
    r->submitted_seq = q.submitted_seq;
    r->backfilled_past = backfilled_past;
    r->parsed = std::move(parsed);
    r->slots = std::move(slots);
    raw = r.get();
    runners_[q.id] = std::move(r);
  }
  Drive(raw);  // a runner is reaped only once Finish marked it done
  Wake();  // the job after it may fit in the devices left
}

void DaemonImpl::ReapRunners() {
  std::vector<std::unique_ptr<Runner>> done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = runners_.begin(); it != runners_.end();)
      if (it->second->done.load()) {
        done.push_back(std::move(it->second));
        it = runners_.erase(it);
      } else {
        ++it;
      }
  }
  for (auto& r : done) metrics_.ForgetJob(r->job);
}

Status Daemon::Open(const DaemonOptions& options, std::unique_ptr<Daemon>* out) {
  auto d = std::make_unique<DaemonImpl>(options);
  RW_RETURN_IF_ERROR(d->Init());
  *out = std::move(d);
  return Status::Ok();
}

}  // namespace rw::scheduler
