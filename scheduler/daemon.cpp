#include "scheduler/daemon.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <httplib.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "actors/device_host.h"
#include "actors/job_driver.h"
#include "runtime/checkpoint.h"
#include "runtime/job_config.h"
#include "scheduler/job_table.h"
#include "scheduler/metrics.h"
#include "scheduler/paths.h"
#include "storage/state_store.h"

namespace rw::scheduler {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using storage::Table;

std::string RandomHex(size_t bytes) {
  std::ifstream f("/dev/urandom", std::ios::binary);
  std::string raw(bytes, '\0');
  f.read(raw.data(), std::streamsize(bytes));
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : raw) {
    out += hex[c >> 4];
    out += hex[c & 15];
  }
  return out;
}

// The API token: made at first start, 0600, in the state directory.
// $RINGWORLD_TOKEN, when set at first start, becomes the token (a cluster manager's shared secret).
Status LoadOrCreateToken(const std::string& dir, std::string* token) {
  const std::string path = dir + "/token";
  std::ifstream in(path);
  if (in >> *token && token->size() >= 32) return Status::Ok();
  const char* given = std::getenv("RINGWORLD_TOKEN");
  if (given && *given) RW_REQUIRE(std::strlen(given) >= 32, "RINGWORLD_TOKEN: at least 32 characters");
  *token = given && *given ? std::string(given) : RandomHex(32);
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  RW_REQUIRE(fd >= 0, path << ": cannot create the API token file");
  const std::string line = *token + "\n";
  const bool ok = ::write(fd, line.data(), line.size()) == ssize_t(line.size()) && ::fsync(fd) == 0;
  ::close(fd);
  RW_REQUIRE(ok && std::rename(tmp.c_str(), path.c_str()) == 0, path << ": cannot write the API token file");
  return Status::Ok();
}

bool SameSecret(const std::string& a, const std::string& b) {  // constant time for equal lengths
  if (a.size() != b.size()) return false;
  unsigned char d = 0;
  for (size_t i = 0; i < a.size(); ++i) d |= static_cast<unsigned char>(a[i] ^ b[i]);
  return d == 0;
}

uint64_t JobNumber(const std::string& id) {  // job-000042 -> 42 (ring fabrics and UCX ring ids)
  return std::strtoull(id.c_str() + (id.rfind('-') + 1), nullptr, 10);
}

std::string CheckpointKey(const std::string& job, int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "/%012lld", (long long)step);
  return job + buf;
}

double WallSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

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

struct Slot {
  std::string worker;
  int index = 0;
  bool operator==(const Slot& o) const { return worker == o.worker && index == o.index; }
};

// One running job: a thread that drives its rings.
struct Runner {
  std::string job;
  std::thread thread;
  std::vector<Slot> slots;             // devices it holds (under the daemon's lock)
  std::atomic<bool> preempt{false};    // a higher-priority job wants its devices
  std::string preempted_by;
  std::atomic<bool> done{false};
};

class DaemonImpl final : public Daemon {
 public:
  explicit DaemonImpl(const DaemonOptions& o) : opt_(o), sys_(cfg_) {}
  ~DaemonImpl() override {
    http_.stop();
    if (http_thread_.joinable()) http_thread_.join();
  }

  Status Init() {
    std::error_code ec;
    fs::create_directories(opt_.state_dir + "/logs", ec);
    RW_REQUIRE(!ec, "--state: cannot create " << opt_.state_dir << ": " << ec.message());
    RW_RETURN_IF_ERROR(storage::OpenRocksStore(opt_.state_dir + "/db", opt_.cluster_id, &store_));
    RW_RETURN_IF_ERROR(JobTable::Open(store_.get(), &jobs_));
    RW_RETURN_IF_ERROR(LoadOrCreateToken(opt_.state_dir, &token_));
    for (const auto& [field, root] : {std::pair<const char*, std::string>{"--data-root", opt_.data_root},
                                      {"--checkpoint-root", opt_.checkpoint_root}})
      RW_REQUIRE(fs::is_directory(root, ec), field << ": " << root << " is not a directory");
    instance_ = RandomHex(8);
    // Jobs that were running when the daemon stopped (or died) have no driver now: they resume from their
    // last recorded checkpoint once workers are back.
    for (const auto& r : jobs_->List())
      if (r.state == JobState::kRunning) {
        RW_RETURN_IF_ERROR(jobs_->Transition(r.id, JobState::kPreempted, "daemon restarted: resumes from its last checkpoint"));
        Log(r.id, "PREEMPTED: daemon restarted");
      }
    // Workers known before: listed as lost until they register again.
    std::vector<std::pair<std::string, std::string>> rows;
    RW_RETURN_IF_ERROR(store_->GetAll(Table::kWorkers, &rows));
    for (const auto& [id, value] : rows) {
      Worker w;
      w.id = id;
      try {
        const auto j = json::parse(value);
        w.name = j.value("name", id);
        w.host = j.value("host", "");
        w.memory = j.value("memory", std::vector<int64_t>{});
      } catch (const std::exception&) {
      }
      w.lost_reason = "daemon restarted; not registered since";
      workers_[id] = std::move(w);
    }
    // After a restart, give the known workers a heartbeat period to register again before placing jobs, so
    // rings are not formed small only to grow a moment later.
    if (!rows.empty())
      settle_until_ = Clock::now() + std::chrono::milliseconds(int64_t(opt_.worker_timeout_s * 1000));
    // The API.
    const auto colon = opt_.listen.rfind(':');
    RW_REQUIRE(colon != std::string::npos, "--listen: expected HOST:PORT, got '" << opt_.listen << "'");
    host_ = opt_.listen.substr(0, colon);
    const int want = std::atoi(opt_.listen.c_str() + colon + 1);
    Routes();
    port_ = want > 0 ? (http_.bind_to_port(host_.c_str(), want) ? want : -1) : http_.bind_to_any_port(host_.c_str());
    RW_REQUIRE(port_ > 0, "--listen: cannot listen on " << opt_.listen);
    std::ofstream(opt_.state_dir + "/api.addr.tmp") << host_ << ":" << port_ << "\n";
    fs::rename(opt_.state_dir + "/api.addr.tmp", opt_.state_dir + "/api.addr", ec);
    return Status::Ok();
  }

  int port() const override { return port_; }

  int Run(const std::atomic<bool>& stop) override {
    http_thread_ = std::thread([this] { http_.listen_after_bind(); });
    std::fprintf(stderr, "ringworld daemon: cluster %s, API on http://%s:%d (token in %s/token), state in %s\n",
                 opt_.cluster_id.c_str(), host_.c_str(), port_, opt_.state_dir.c_str(), opt_.state_dir.c_str());
    while (!stop.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
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
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    http_.stop();
    if (http_thread_.joinable()) http_thread_.join();
    return preempted ? kExitPreempted : 0;
  }

 private:
  // ---- the scheduling loop ----------------------------------------------------------------------------------
  void Tick() {
    CheckHeartbeats();
    ReapRunners();
    if (shutting_down_) return;
    if (Clock::now() < settle_until_) {
      std::lock_guard<std::mutex> lock(mu_);
      bool all_back = true;
      for (const auto& [id, w] : workers_) all_back = all_back && w.alive;
      if (!all_back) return;
    }
    for (const auto& r : jobs_->List())  // preempted jobs go back to the queue by themselves
      if (r.state == JobState::kPreempted) {
        if (jobs_->Transition(r.id, JobState::kQueued, "requeued").ok()) Log(r.id, "QUEUED: requeued");
      }
    Schedule();
    std::map<std::string, int> counts;
    for (JobState s : {JobState::kQueued, JobState::kRunning, JobState::kSucceeded, JobState::kFailed,
                       JobState::kCancelled, JobState::kPreempted})
      counts[JobStateName(s)] = 0;
    for (const auto& r : jobs_->List()) counts[JobStateName(r.state)]++;
    metrics_.JobsByState(counts);
  }

  void CheckHeartbeats() {
    std::lock_guard<std::mutex> lock(mu_);
    int alive = 0, lost = 0;
    const auto now = Clock::now();
    for (auto& [id, w] : workers_) {
      if (w.alive && now - w.last_seen > std::chrono::duration<double>(opt_.worker_timeout_s)) {
        char why[96];
        std::snprintf(why, sizeof(why), "no heartbeat for %.1f s", opt_.worker_timeout_s);
        MarkLostLocked(w, why);
        metrics_.HeartbeatMissed(id);
      }
      (w.alive ? alive : lost)++;
    }
    metrics_.WorkersByState(alive, lost);
  }

  void MarkLostLocked(Worker& w, const std::string& why) {
    if (!w.alive) return;
    w.alive = false;
    w.lost_reason = why;
    std::fprintf(stderr, "ringworld daemon: worker %s lost: %s\n", w.id.c_str(), why.c_str());
    store_->Put(Table::kWorkers, w.id, WorkerJson(w).dump());
  }

  void ReapRunners() {
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
    for (auto& r : done) {
      r->thread.join();
      metrics_.ForgetJob(r->job);
    }
  }

  int FreeLocked(const std::string& job = "") const {
    int n = 0;
    for (const auto& [id, w] : workers_)
      if (w.alive && !w.draining)
        for (const auto& u : w.used_by) n += u.empty() || u == job;
    return n;
  }

  // Fewest nodes: one worker when one has enough free devices (the tightest fit), else the workers with the
  // most free devices first. Marks the devices used by `job`.
  std::vector<Slot> PlaceLocked(const std::string& job, int R) {
    std::vector<std::pair<int, std::string>> free;  // (free devices, worker)
    for (const auto& [id, w] : workers_) {
      if (!w.alive || w.draining) continue;
      int n = 0;
      for (const auto& u : w.used_by) n += u.empty();
      if (n > 0) free.push_back({n, id});
    }
    std::sort(free.begin(), free.end(), [](auto& a, auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
    const std::pair<int, std::string>* fit = nullptr;
    for (const auto& f : free)
      if (f.first >= R && (!fit || f.first < fit->first)) fit = &f;
    std::vector<std::string> order;
    if (fit) {
      order.push_back(fit->second);
    } else {
      for (const auto& f : free) order.push_back(f.second);
    }
    std::vector<Slot> slots;
    for (const auto& id : order) {
      Worker& w = workers_.at(id);
      for (size_t i = 0; i < w.used_by.size() && int(slots.size()) < R; ++i)
        if (w.used_by[i].empty()) {
          w.used_by[i] = job;
          slots.push_back({id, int(i)});
        }
    }
    return slots;
  }

  void ReleaseLocked(const std::string& job) {
    for (auto& [id, w] : workers_)
      for (auto& u : w.used_by)
        if (u == job) u.clear();
  }

  void Schedule() {
    JobRecord next;
    if (!jobs_->NextQueued(&next)) return;
    std::lock_guard<std::mutex> lock(mu_);
    actors::RingPlan plan;
    const int free = FreeLocked();
    Status st = actors::PlanRing(next.spec, next.id, next.overrides, next.checkpoint_step, free, &plan);
    if (st.ok()) {
      waiting_.erase(next.id);
      if (jobs_->Transition(next.id, JobState::kRunning, "placed").ok()) {
        Log(next.id, "RUNNING: placed");
        auto r = std::make_unique<Runner>();
        r->job = next.id;
        Runner* raw = r.get();
        runners_[next.id] = std::move(r);
        raw->thread = std::thread([this, raw] { Drive(raw); });
      }
      return;
    }
    if (waiting_[next.id] != st.message()) {  // say why it waits, once per reason
      waiting_[next.id] = st.message();
      Log(next.id, "waiting: " + st.message());
    }
    // Preempt the lowest-priority running job below this one (one at a time).
    Runner* victim = nullptr;
    int64_t victim_priority = next.priority;
    for (auto& [id, r] : runners_) {
      if (r->preempt.load()) return;  // a preemption is under way
      JobRecord rec;
      if (!jobs_->Get(id, &rec).ok() || rec.state != JobState::kRunning) continue;
      if (rec.priority < victim_priority) {
        victim = r.get();
        victim_priority = rec.priority;
      }
    }
    if (victim) {
      victim->preempted_by = next.id;
      victim->preempt = true;
      Note(victim->job, "preempting for " + next.id + " (priority " + std::to_string(next.priority) + ")");
    }
  }

  // ---- one job ------------------------------------------------------------------------------------------------
  // The newest recorded checkpoint that verifies (its directory into *path); corrupt newer ones are skipped
  // with an event and a metric. Verified here once per ring; the ranks load it as it is.
  int64_t ResumeStep(const JobRecord& rec, std::string* path_out) {
    path_out->clear();
    std::vector<std::pair<std::string, std::string>> rows;
    if (!store_->GetAll(Table::kCheckpoints, &rows).ok()) return 0;
    std::vector<std::pair<int64_t, std::string>> mine;
    for (const auto& [key, value] : rows) {
      if (key.compare(0, rec.id.size() + 1, rec.id + "/") != 0) continue;
      try {
        const auto j = json::parse(value);
        mine.push_back({j.at("step").get<int64_t>(), j.at("path").get<std::string>()});
      } catch (const std::exception&) {
      }
    }
    std::sort(mine.rbegin(), mine.rend());
    for (const auto& [step, path] : mine) {
      const Status st = runtime::VerifyCheckpoint(path);
      if (st.ok()) {
        *path_out = path;
        return step;
      }
      metrics_.CheckpointFallback(rec.id);
      storage::Batch b;
      b.Delete(Table::kCheckpoints, CheckpointKey(rec.id, step));
      Note(rec.id, "checkpoint of step " + std::to_string(step) + " is unusable (" + st.message() +
                       "); falling back to the previous one", b);
    }
    return 0;
  }

  void RecordCheckpoint(const std::string& job, const runtime::CheckpointInfo& c) {
    metrics_.Checkpoint(job, c);
    if (!c.ok) {
      Note(job, "checkpoint of step " + std::to_string(c.step) + " FAILED: " + c.error);
      return;
    }
    storage::Batch b;
    b.Put(Table::kCheckpoints, CheckpointKey(job, c.step),
          json{{"step", c.step}, {"stage", c.stage}, {"path", c.path}, {"bytes", c.bytes}, {"seconds", c.seconds},
               {"time", WallSeconds()}}
              .dump());
    // Records of checkpoints that retention has removed go too.
    std::vector<std::pair<std::string, std::string>> rows;
    if (store_->GetAll(Table::kCheckpoints, &rows).ok())
      for (const auto& [key, value] : rows) {
        if (key.compare(0, job.size() + 1, job + "/") != 0) continue;
        try {
          if (!fs::exists(json::parse(value).at("path").get<std::string>())) b.Delete(Table::kCheckpoints, key);
        } catch (const std::exception&) {
        }
      }
    char msg[256];
    std::snprintf(msg, sizeof(msg), "checkpoint of step %lld committed (%.1f MB in %.2f s)", (long long)c.step,
                  double(c.bytes) / 1e6, c.seconds);
    const int64_t step = c.step;
    jobs_->Update(job, [step](JobRecord& r) { r.checkpoint_step = std::max(r.checkpoint_step, step); }, msg, b);
    Log(job, msg);
  }

  void Finish(Runner* r, JobState to, const std::string& message) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ReleaseLocked(r->job);
    }
    JobRecord rec;
    if (jobs_->Get(r->job, &rec).ok() && rec.state == JobState::kRunning) {
      const Status st = jobs_->Transition(r->job, to, message);
      if (!st.ok()) std::fprintf(stderr, "ringworld daemon: %s\n", st.message().c_str());
      Log(r->job, std::string(JobStateName(to)) + ": " + message);
    }
    r->done = true;
  }

  void Drive(Runner* r) {
    const std::string& id = r->job;
    int failures_in_a_row = 0;
    int64_t last_ring_size = 0;
    for (;;) {
      JobRecord rec;
      if (!jobs_->Get(id, &rec).ok() || rec.state != JobState::kRunning) return Finish(r, JobState::kCancelled, "");
      if (shutting_down_) return Finish(r, JobState::kPreempted, "daemon shutting down");
      if (r->preempt) return Finish(r, JobState::kPreempted, "preempted by " + r->preempted_by);
      std::string resume;
      const int64_t start = ResumeStep(rec, &resume);
      actors::RingPlan plan;
      std::vector<actors::device_actor> ring;
      std::set<std::string> ring_workers;
      std::string placement;
      std::string not_now;  // why no ring runs now
      {
        std::lock_guard<std::mutex> lock(mu_);
        Status st = actors::PlanRing(rec.spec, rec.id, rec.overrides, start, FreeLocked(id), &plan);
        ReleaseLocked(id);
        if (!st.ok()) {
          not_now = "waiting for devices: " + st.message();
        } else if (plan.devices > 0) {
          r->slots = PlaceLocked(id, plan.devices);
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
      jobs_->Update(id, [epoch](JobRecord& x) { x.epoch = epoch; }, msg);
      Log(id, msg);
      if (last_ring_size && last_ring_size != plan.devices) metrics_.ElasticResize(id);
      last_ring_size = plan.devices;

      runtime::JobConfig job;
      runtime::ParseJobConfig(rec.spec, rec.id, plan.overrides, &job);
      std::error_code ec;
      fs::create_directories(job.output_dir, ec);
      std::ofstream metrics_file(fs::path(job.output_dir) / "metrics.jsonl", std::ios::app);
      if (!metrics_file) Note(id, "output_dir: cannot write " + job.output_dir + "/metrics.jsonl");
      std::string stop_reason;
      actors::RingHooks hooks;
      hooks.on_step = [&](const runtime::StepMetrics& m) {
        metrics_.Step(id, m);
        metrics_file << m.ToJson() << "\n";
        metrics_file.flush();
        char line[256];
        std::snprintf(line, sizeof(line), "step %lld/%lld stage %lld seq_len %lld loss %.4f grad_norm %.3f %.0f tok/s",
                      (long long)m.step, (long long)m.total_steps, (long long)m.stage, (long long)m.seq_len, m.loss,
                      m.grad_norm, m.tokens_per_s);
        Log(id, line);
      };
      hooks.on_checkpoint = [&](const runtime::CheckpointInfo& c) { RecordCheckpoint(id, c); };
      hooks.poll = [&]() -> std::string {
        JobRecord now;
        if (!jobs_->Get(id, &now).ok() || now.state != JobState::kRunning) return "job cancelled";
        {
          std::lock_guard<std::mutex> lock(mu_);
          for (const auto& w : ring_workers) {
            const Worker& wk = workers_.at(w);
            if (!wk.alive) return "worker " + w + " lost: " + wk.lost_reason;
          }
          if (plan.devices < plan.wanted && FreeLocked(id) >= plan.wanted && stop_reason.empty()) {
            stop_reason = "grow";
            Note(id, "devices are back: growing the ring at the next step's checkpoint");
            return "stop";
          }
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
          actors::RunRing(sys_, ring, JobNumber(id), uint32_t(epoch), transport, task, hooks);

      if (!jobs_->Get(id, &rec).ok() || rec.state != JobState::kRunning) return Finish(r, JobState::kCancelled, "");
      {  // A worker whose process was told to stop (SIGTERM) drains now, not at its next heartbeat: else
         // the requeued job could be placed on it again and stop again, step after step.
        std::lock_guard<std::mutex> lock(mu_);
        for (int rank : out.stopping_ranks)
          if (rank >= 0 && rank < int(r->slots.size())) {
            Worker& w = workers_.at(r->slots[rank].worker);
            if (!w.draining) std::fprintf(stderr, "ringworld daemon: worker %s is draining (its ring stopped on SIGTERM)\n",
                                          r->slots[rank].worker.c_str());
            w.draining = true;
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
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (int rank : out.lost_ranks)  // a worker whose device went away must register again
          if (rank >= 0 && rank < int(r->slots.size())) {
            const std::string& w = r->slots[rank].worker;
            lost_list += (lost_list.empty() ? "" : ", ") + std::string("rank ") + std::to_string(rank) + " on " + w;
            MarkLostLocked(workers_.at(w), "its device of rank " + std::to_string(rank) + " of " + id + " went away");
          }
        for (const auto& w : ring_workers) worker_lost = worker_lost || !workers_.at(w).alive;
      }
      if (shutting_down_) return Finish(r, JobState::kPreempted, "daemon shutting down");
      if (!worker_lost || ++failures_in_a_row > 5)
        return Finish(r, JobState::kFailed, out.error);
      metrics_.ElasticResize(id);
      last_ring_size = 0;
      Note(id, "ring failed: " + out.error + (lost_list.empty() ? "" : "; devices lost: " + lost_list) +
                   "; re-forming from the last checkpoint");
    }
  }

  // ---- events and logs ---------------------------------------------------------------------------------------
  void Note(const std::string& job, const std::string& message, const storage::Batch& extra = {}) {
    jobs_->Update(job, [](JobRecord&) {}, message, extra);
    Log(job, message);
  }

  void Log(const std::string& job, const std::string& line) {
    std::lock_guard<std::mutex> lock(log_mu_);
    std::ofstream f(opt_.state_dir + "/logs/" + job + ".log", std::ios::app);
    const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    char ts[32];
    std::strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    f << ts << " " << line << "\n";
  }

  // ---- the API -----------------------------------------------------------------------------------------------
  static void Reply(httplib::Response& res, int status, const json& body) {
    res.status = status;
    res.set_content(body.dump(2) + "\n", "application/json");
  }
  static void Error(httplib::Response& res, int status, const std::string& message) {
    res.status = status;
    res.set_content(json{{"error", message}}.dump() + "\n", "application/json");
  }

  json JobJson(const JobRecord& r) const {
    json j{{"id", r.id},
           {"name", r.name},
           {"state", JobStateName(r.state)},
           {"priority", r.priority},
           {"message", r.message},
           {"checkpoint_dir", r.checkpoint_dir},
           {"checkpoint_step", r.checkpoint_step},
           {"total_steps", r.total_steps},
           {"epoch", r.epoch}};
    return j;
  }

  json WorkerJson(const Worker& w) const {
    int used = 0;
    for (const auto& u : w.used_by) used += !u.empty();
    return json{{"id", w.id},         {"name", w.name},   {"host", w.host},       {"kind", w.kind},
                {"devices", int(w.memory.size())},       {"used", used},         {"memory", w.memory},
                {"state", w.alive ? (w.draining ? "draining" : "alive") : "lost"},
                {"lost_reason", w.lost_reason},          {"pid", w.pid}};
  }

  bool Authorized(const httplib::Request& req) const {
    const std::string h = req.get_header_value("Authorization");
    return h.rfind("Bearer ", 0) == 0 && SameSecret(h.substr(7), token_);
  }

  // Parses a submission into a job record: the job file (YAML or JSON), its overrides, its paths confined to
  // the roots and resolved. The error names the field; nothing is stored on error.
  Status ParseSubmission(const httplib::Request& req, JobRecord* rec, std::string* key) {
    std::string spec;
    std::vector<std::string> overrides;
    int64_t priority = 0;
    const std::string type = req.get_header_value("Content-Type");
    if (type.rfind("application/json", 0) == 0) {
      json j;
      try {
        j = json::parse(req.body);
      } catch (const std::exception& e) {
        return Status::Error(std::string("body: not JSON: ") + e.what());
      }
      RW_REQUIRE(j.is_object(), "body: expected a JSON object {\"job\": ..., \"priority\": ..., \"set\": [...]}");
      for (const auto& [k, v] : j.items()) {
        if (k == "job") {
          RW_REQUIRE(v.is_string() || v.is_object(), "job: expected the job file's text or a JSON object");
          spec = v.is_string() ? v.get<std::string>() : v.dump(2);
        } else if (k == "priority") {
          RW_REQUIRE(v.is_number_integer(), "priority: expected an integer");
          priority = v.get<int64_t>();
        } else if (k == "set") {
          RW_REQUIRE(v.is_array(), "set: expected a list of \"key=value\" strings");
          for (const auto& s : v) {
            RW_REQUIRE(s.is_string(), "set: expected a list of \"key=value\" strings");
            overrides.push_back(s.get<std::string>());
          }
        } else {
          return Status::Error(k + ": unknown field (job, priority, set)");
        }
      }
      RW_REQUIRE(!spec.empty(), "job: missing");
    } else {
      spec = req.body;
      if (req.has_param("priority")) {
        const std::string p = req.get_param_value("priority");
        char* end = nullptr;
        priority = std::strtoll(p.c_str(), &end, 10);
        RW_REQUIRE(!p.empty() && end && *end == '\0', "priority: expected an integer, got '" << p << "'");
      }
    }
    RW_REQUIRE(priority >= -1000000 && priority <= 1000000, "priority: must be within +-1000000");
    for (const auto& o : overrides)
      RW_REQUIRE(o.rfind("ring.transport=", 0) != 0, "set: ring.transport is the daemon's choice");
    runtime::JobConfig job;
    // The fields only: no file of the job is opened before its paths are confined below.
    RW_RETURN_IF_ERROR(runtime::ParseJobFields(spec, "job", overrides, &job));
    // Confine and resolve every path of the job.
    std::string resolved;
    RW_REQUIRE(!job.checkpoint.dir.empty(), "checkpoint.dir: a daemon job needs one (preemption and elastic "
                                            "rings resume from it)");
    RW_RETURN_IF_ERROR(ConfinePath("checkpoint.dir", job.checkpoint.dir, opt_.checkpoint_root, &resolved));
    overrides.push_back("checkpoint.dir=" + resolved);
    rec->checkpoint_dir = resolved;
    RW_RETURN_IF_ERROR(ConfinePath("output_dir", job.output_dir, opt_.checkpoint_root, &resolved));
    overrides.push_back("output_dir=" + resolved);
    if (job.data.source == "files") {
      RW_RETURN_IF_ERROR(ConfinePath("data.path", job.data.path, opt_.data_root, &resolved));
      overrides.push_back("data.path=" + resolved);
    }
    if (job.data.tokenizer != "bytes") {
      RW_RETURN_IF_ERROR(ConfinePath("data.tokenizer", job.data.tokenizer, opt_.data_root, &resolved));
      overrides.push_back("data.tokenizer=" + resolved);
    }
    if (!job.init_from.empty()) {
      RW_RETURN_IF_ERROR(ConfinePath("init_from", job.init_from, opt_.data_root, &resolved));
      overrides.push_back("init_from=" + resolved);
    }
    RW_RETURN_IF_ERROR(runtime::ParseJobConfig(spec, "job", overrides, &job));  // missing files, now resolved
    rec->name = job.name;
    rec->spec = spec;
    rec->priority = priority;
    rec->overrides = overrides;
    rec->total_steps = job.total_steps();
    *key = req.get_header_value("Idempotency-Key");
    RW_REQUIRE(key->size() <= 200, "Idempotency-Key: longer than 200 characters");
    return Status::Ok();
  }

  void Routes() {
    http_.set_payload_max_length(opt_.max_body_bytes);
    http_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (req.method != "GET" && req.method != "HEAD" && !Authorized(req)) {
        Error(res, 401, "a bearer token is required (Authorization: Bearer <the token in " + opt_.state_dir + "/token>)");
        return httplib::Server::HandlerResponse::Handled;
      }
      return httplib::Server::HandlerResponse::Unhandled;
    });
    http_.set_error_handler([](const httplib::Request&, httplib::Response& res) {
      if (!res.body.empty()) return;
      const char* what = res.status == 413 ? "request body too large" : res.status == 404 ? "no such resource" : "error";
      Error(res, res.status, what);
    });
    http_.Get("/healthz", [this](const httplib::Request&, httplib::Response& res) {
      Reply(res, 200, json{{"ok", true}, {"cluster", opt_.cluster_id}, {"instance", instance_}});
    });
    http_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics_.Serialize(), "text/plain; version=0.0.4");
    });
    http_.Post("/v1/jobs", [this](const httplib::Request& req, httplib::Response& res) {
      if (shutting_down_) return Error(res, 503, "the daemon is shutting down");
      JobRecord rec;
      std::string key;
      Status st = ParseSubmission(req, &rec, &key);
      if (!st.ok()) return Error(res, 400, st.message());
      for (const auto& other : jobs_->List()) {
        const bool live = other.state == JobState::kQueued || other.state == JobState::kRunning ||
                          other.state == JobState::kPreempted;
        if (live && other.checkpoint_dir == rec.checkpoint_dir &&
            (key.empty() || other.idempotency_key != key))
          return Error(res, 409, "checkpoint.dir: " + rec.checkpoint_dir + " belongs to " + other.id + " (" +
                                     JobStateName(other.state) + ")");
      }
      JobRecord out;
      bool created = false;
      st = jobs_->Submit(rec, key, &out, &created);
      if (!st.ok()) return Error(res, 500, st.message());
      if (created) Log(out.id, "QUEUED: submitted (priority " + std::to_string(out.priority) + ")");
      Reply(res, created ? 201 : 200, JobJson(out));
    });
    http_.Get("/v1/jobs", [this](const httplib::Request&, httplib::Response& res) {
      json list = json::array();
      for (const auto& r : jobs_->List()) list.push_back(JobJson(r));
      Reply(res, 200, json{{"jobs", list}});
    });
    http_.Get(R"(/v1/jobs/([A-Za-z0-9_-]+))", [this](const httplib::Request& req, httplib::Response& res) {
      JobRecord r;
      if (!jobs_->Get(req.matches[1], &r).ok()) return Error(res, 404, "job " + std::string(req.matches[1]) + ": no such job");
      json j = JobJson(r);
      j["spec"] = r.spec;
      j["overrides"] = r.overrides;
      Reply(res, 200, j);
    });
    auto change = [this](const char* verb, JobState to, std::vector<JobState> from) {
      return [this, verb, to, from](const httplib::Request& req, httplib::Response& res) {
        JobRecord r;
        const std::string id = req.matches[1];
        if (!jobs_->Get(id, &r).ok()) return Error(res, 404, "job " + id + ": no such job");
        if (std::find(from.begin(), from.end(), r.state) == from.end())
          return Error(res, 409, "job " + id + " is " + JobStateName(r.state) + ": cannot " + verb);
        const Status st = jobs_->Transition(id, to, std::string(verb) + " (API)");
        if (!st.ok()) return Error(res, 409, st.message());
        Log(id, std::string(JobStateName(to)) + ": " + verb + " (API)");
        jobs_->Get(id, &r);
        Reply(res, 200, JobJson(r));
      };
    };
    http_.Post(R"(/v1/jobs/([A-Za-z0-9_-]+)/cancel)",
               change("cancel", JobState::kCancelled, {JobState::kQueued, JobState::kRunning, JobState::kPreempted}));
    http_.Post(R"(/v1/jobs/([A-Za-z0-9_-]+)/resume)",
               change("resume", JobState::kQueued, {JobState::kPreempted, JobState::kFailed}));
    http_.Get(R"(/v1/jobs/([A-Za-z0-9_-]+)/events)", [this](const httplib::Request& req, httplib::Response& res) {
      JobRecord r;
      const std::string id = req.matches[1];
      if (!jobs_->Get(id, &r).ok()) return Error(res, 404, "job " + id + ": no such job");
      std::vector<JobEvent> events;
      const Status st = jobs_->Events(id, &events);
      if (!st.ok()) return Error(res, 500, st.message());
      json list = json::array();
      for (const auto& e : events)
        list.push_back(json{{"seq", e.seq}, {"from", e.from}, {"to", e.to}, {"message", e.message}});
      Reply(res, 200, json{{"job", id}, {"events", list}});
    });
    http_.Get(R"(/v1/jobs/([A-Za-z0-9_-]+)/logs)", [this](const httplib::Request& req, httplib::Response& res) {
      JobRecord r;
      const std::string id = req.matches[1];
      if (!jobs_->Get(id, &r).ok()) return Error(res, 404, "job " + id + ": no such job");
      const long long offset = req.has_param("offset") ? std::atoll(req.get_param_value("offset").c_str()) : 0;
      std::ifstream f(opt_.state_dir + "/logs/" + id + ".log", std::ios::binary);
      std::string text;
      if (f) {
        f.seekg(0, std::ios::end);
        const long long size = f.tellg();
        const long long from = std::clamp<long long>(offset, 0, size);
        f.seekg(from);
        text.resize(size_t(std::min<long long>(size - from, 1 << 20)));
        f.read(text.data(), std::streamsize(text.size()));
        res.set_header("X-Next-Offset", std::to_string(from + (long long)text.size()));
      } else {
        res.set_header("X-Next-Offset", "0");
      }
      res.set_header("X-Job-State", JobStateName(r.state));
      res.set_content(text, "text/plain");
    });
    http_.Get("/v1/workers", [this](const httplib::Request&, httplib::Response& res) {
      std::lock_guard<std::mutex> lock(mu_);
      json list = json::array();
      for (const auto& [id, w] : workers_) list.push_back(WorkerJson(w));
      Reply(res, 200, json{{"workers", list}});
    });
    http_.Post("/v1/workers", [this](const httplib::Request& req, httplib::Response& res) { Register(req, res); });
    http_.Post(R"(/v1/workers/([A-Za-z0-9_.-]+)/heartbeat)", [this](const httplib::Request& req, httplib::Response& res) {
      const std::string id = req.matches[1];
      std::string instance;
      bool draining = false, leaving = false;
      try {
        const auto j = json::parse(req.body);
        instance = j.at("instance").get<std::string>();
        draining = j.value("draining", false);
        leaving = j.value("leaving", false);
      } catch (const std::exception& e) {
        return Error(res, 400, std::string("body: expected {\"instance\": ..., \"draining\": ...}: ") + e.what());
      }
      std::lock_guard<std::mutex> lock(mu_);
      auto it = workers_.find(id);
      if (it == workers_.end() || !it->second.alive || it->second.instance != instance)
        return Error(res, 409, "worker " + id + " is not registered with this daemon (" + instance_ +
                                   "): register again");
      Worker& w = it->second;
      w.last_seen = Clock::now();
      if (leaving) {  // a worker that drained and exits: gone now, not after a heartbeat timeout
        MarkLostLocked(w, "left (drained)");
        return Reply(res, 200, json{{"assigned", 0}});
      }
      if (draining && !w.draining) std::fprintf(stderr, "ringworld daemon: worker %s is draining\n", id.c_str());
      w.draining = draining;
      int used = 0;
      for (const auto& u : w.used_by) used += !u.empty();
      Reply(res, 200, json{{"assigned", used}});
    });
  }

  // A worker registers: the daemon connects to its device host over the CAF middleman and takes its devices.
  void Register(const httplib::Request& req, httplib::Response& res) {
    Worker w;
    try {
      const auto j = json::parse(req.body);
      w.name = j.at("name").get<std::string>();
      w.host = j.at("host").get<std::string>();
      w.port = j.at("port").get<int>();
      w.pid = j.value("pid", int64_t(0));
      w.kind = j.value("kind", std::string("cpu"));
      for (const auto& d : j.at("devices")) w.memory.push_back(d.at("memory_bytes").get<int64_t>());
    } catch (const std::exception& e) {
      return Error(res, 400, std::string("body: expected {name, host, port, devices: [{memory_bytes}]}: ") + e.what());
    }
    if (w.name.empty() || w.name.size() > 64 || w.name.find_first_not_of(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") != std::string::npos)
      return Error(res, 400, "name: 1-64 characters of [A-Za-z0-9_.-]");
    if (w.port <= 0 || w.port > 65535) return Error(res, 400, "port: not a TCP port");
    if (w.memory.empty() || w.memory.size() > 1024) return Error(res, 400, "devices: 1 to 1024 devices");
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = workers_.find(w.name);
      if (it != workers_.end() && it->second.alive)
        return Error(res, 409, "worker " + w.name + " is already registered and alive");
    }
    auto host = sys_.middleman().remote_actor<actors::host_actor>(w.host, uint16_t(w.port));
    if (!host) return Error(res, 400, "port: cannot reach the worker's device host at " + w.host + ":" +
                                          std::to_string(w.port) + ": " + sys_.render(host.error()));
    std::string err;
    {
      caf::scoped_actor self{sys_};
      self->request(*host, std::chrono::seconds(10), actors::devices_atom::value)
          .receive([&](const std::vector<actors::device_actor>& d) { w.devices = d; },
                   [&](caf::error& e) { err = sys_.render(e); });
    }
    if (!err.empty()) return Error(res, 400, "port: the worker's device host did not answer: " + err);
    if (w.devices.size() != w.memory.size())
      return Error(res, 400, "devices: " + std::to_string(w.memory.size()) + " announced, the host has " +
                                 std::to_string(w.devices.size()));
    w.id = w.name;
    w.instance = instance_;
    w.used_by.assign(w.devices.size(), "");
    w.alive = true;
    w.last_seen = Clock::now();
    std::lock_guard<std::mutex> lock(mu_);
    const Status st = store_->Put(Table::kWorkers, w.id, WorkerJson(w).dump());
    if (!st.ok()) return Error(res, 500, st.message());
    std::fprintf(stderr, "ringworld daemon: worker %s registered: %zu %s devices at %s:%d\n", w.id.c_str(),
                 w.devices.size(), w.kind.c_str(), w.host.c_str(), w.port);
    metrics_.WorkerKnown(w.id);
    const json reply{{"id", w.id}, {"instance", instance_}, {"heartbeat_s", std::min(1.0, opt_.worker_timeout_s / 5)}};
    workers_[w.id] = std::move(w);
    Reply(res, 201, reply);
  }

  DaemonOptions opt_;
  actors::SystemConfig cfg_;
  caf::actor_system sys_;
  std::unique_ptr<storage::StateStore> store_;
  std::unique_ptr<JobTable> jobs_;
  std::string token_, instance_, host_;
  int port_ = 0;
  httplib::Server http_;
  std::thread http_thread_;
  DaemonMetrics metrics_;
  std::atomic<bool> shutting_down_{false};
  Clock::time_point settle_until_{};
  std::mutex mu_;  // workers_, runners_, waiting_
  std::map<std::string, Worker> workers_;
  std::map<std::string, std::unique_ptr<Runner>> runners_;
  std::map<std::string, std::string> waiting_;
  std::mutex log_mu_;
};

}  // namespace

Status Daemon::Open(const DaemonOptions& options, std::unique_ptr<Daemon>* out) {
  auto d = std::make_unique<DaemonImpl>(options);
  RW_RETURN_IF_ERROR(d->Init());
  *out = std::move(d);
  return Status::Ok();
}

}  // namespace rw::scheduler
