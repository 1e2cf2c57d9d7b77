#include "cli/commands.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "actors/device_actor.h"
#include "actors/device_host.h"
#include "actors/job_driver.h"
#include "cli/signals.h"
#include "runtime/checkpoint.h"
#include "runtime/job_config.h"

extern char** environ;

namespace rw::cli {
namespace {

// --processes: one device host per rank, each a child process of this one (`ringworld device-host`),
// reached over the CAF middleman on 127.0.0.1; the ring between them is UCX.
kernels::Status SpawnHosts(caf::actor_system& sys, int R, const std::string& dir, std::vector<pid_t>* pids,
                           std::vector<actors::host_actor>* hosts, std::vector<actors::device_actor>* devices) {
  const std::string self_exe = std::filesystem::read_symlink("/proc/self/exe").string();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  for (int r = 0; r < R; ++r) {
    const std::string port_file = dir + "/port." + std::to_string(r);
    std::filesystem::remove(port_file, ec);
    std::string a0 = self_exe, a1 = "device-host", a2 = "1", a3 = port_file;
    char* argv[] = {a0.data(), a1.data(), a2.data(), a3.data(), nullptr};
    pid_t pid;
    RW_REQUIRE(posix_spawn(&pid, self_exe.c_str(), nullptr, nullptr, argv, environ) == 0,
               "--processes: cannot start a device host");
    pids->push_back(pid);
    ForwardStopTo(pid);  // device hosts stop with us
  }
  for (int r = 0; r < R; ++r) {
    uint16_t port = 0;
    for (int i = 0; i < 3000 && !port; ++i) {
      std::ifstream f(dir + "/port." + std::to_string(r));
      f >> port;
      if (!port) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    RW_REQUIRE(port, "--processes: device host " << r << " did not start within 30 s");
    auto host = sys.middleman().remote_actor<actors::host_actor>("127.0.0.1", port);
    RW_REQUIRE(host, "--processes: cannot reach device host " << r << ": " << sys.render(host.error()));
    hosts->push_back(*host);
    caf::scoped_actor self{sys};
    std::string err;
    self->request(*host, std::chrono::seconds(10), actors::devices_atom::value)
        .receive([&](const std::vector<actors::device_actor>& d) { devices->insert(devices->end(), d.begin(), d.end()); },
                 [&](caf::error& e) { err = sys.render(e); });
    RW_REQUIRE(err.empty(), "--processes: device host " << r << ": " << err);
  }
  return kernels::Status::Ok();
}



void Progress(const runtime::StepMetrics& m, bool tty, double eta_s) {
  if (tty) {
    const int width = 28, done = int(width * m.step / std::max<int64_t>(1, m.total_steps));
    std::printf("\r[%.*s%*s] stage %lld step %lld/%lld  loss %.4f  %.0f tok/s  ETA %.0fs   ", done,
                "############################", width - done, "", (long long)m.stage, (long long)m.step,
                (long long)m.total_steps, m.loss, m.tokens_per_s, eta_s);
    std::fflush(stdout);
  } else if (m.step == 1 || m.step % 10 == 0 || m.step == m.total_steps) {
    std::printf("%s\n", m.ToLogLine().c_str());
    std::fflush(stdout);
  }
}

// The devices of this process (or its device hosts). A lost one is forgotten (its host killed and
// reaped): the job goes on from its last checkpoint on a ring of those left, as a daemon job does. A
// device host that dies drops its connection (RunRing sees its device go); one that hangs (SIGSTOP, a
// deadlock) is found by a probe every second, as the daemon finds a hung worker by its heartbeats.
class LocalPool final : public actors::DevicePool {
 public:
  LocalPool(caf::actor_system& sys, std::vector<actors::device_actor> devices,
            std::vector<actors::host_actor> hosts, std::vector<pid_t>& pids, std::string transport)
      : sys_(sys), devices_(std::move(devices)), hosts_(std::move(hosts)), pids_(pids),
        transport_(std::move(transport)), alive_(devices_.size(), true) {}
  kernels::Status Form(const std::function<kernels::Status(int, actors::RingPlan*)>& plan, actors::RingPlan* out,
                       Ring* ring) override {
    RW_RETURN_IF_ERROR(plan(Available(), out));
    ring_.clear();
    for (size_t i = 0; i < devices_.size() && int(ring_.size()) < out->devices; ++i)
      if (alive_[i]) {
        ring_.push_back(i);
        ring->devices.push_back(devices_[i]);
      }
    ring->transport = transport_;
    ring->where = std::to_string(out->devices) + " devices";
    unanswered_.clear();
    gone_.clear();
    return kernels::Status::Ok();
  }
  // A host that missed a probe stays gone for this ring (a slow answer later does not take it back): the
  // ring is aborted and the device forgotten, as a daemon forgets a worker that missed its heartbeats.
  std::string Gone(std::vector<int>* ranks) override {
    if (ranks) {  // what the probes found so far (asked after an abort, often: no probe here)
      ranks->insert(ranks->end(), unanswered_.begin(), unanswered_.end());
      return gone_;
    }
    if (!unanswered_.empty()) return gone_;
    const auto now = std::chrono::steady_clock::now();
    if (hosts_.empty() || now - last_probe_ < std::chrono::seconds(1)) return "";
    last_probe_ = now;
    caf::scoped_actor self{sys_};
    for (size_t rank = 0; rank < ring_.size(); ++rank) {
      const size_t i = ring_[rank];
      if (i >= hosts_.size()) continue;
      bool answered = false;
      self->request(hosts_[i], kProbeTimeout, actors::devices_atom::value)
          .receive([&](const std::vector<actors::device_actor>&) { answered = true; }, [](caf::error&) {});
      if (!answered) {
        unanswered_.push_back(int(rank));
        gone_ = "device process " + std::to_string(pids_[i]) + " (rank " + std::to_string(rank) +
                ") did not answer within " + std::to_string(kProbeTimeout.count()) + " s";
        return gone_;
      }
    }
    return "";
  }
  int Available() override { return int(std::count(alive_.begin(), alive_.end(), true)); }
  std::string Lost(const std::vector<int>& lost) override {
    std::vector<int> ranks = lost;  // and those that missed a probe, though they answered the abort
    for (int r : unanswered_)
      if (std::find(ranks.begin(), ranks.end(), r) == ranks.end()) ranks.push_back(r);
    std::string list;
    for (int rank : ranks) {
      if (rank < 0 || rank >= int(ring_.size())) continue;
      const size_t i = ring_[rank];
      if (!alive_[i]) continue;
      alive_[i] = false;
      list += (list.empty() ? "" : ", ") + std::string("rank ") + std::to_string(rank);
      if (i < pids_.size() && pids_[i] > 0) {  // gone or hung: make sure, and reap it
        list += " (device process " + std::to_string(pids_[i]) + ")";
        StopForwardingTo(pids_[i]);
        kill(pids_[i], SIGKILL);
        waitpid(pids_[i], nullptr, 0);
        pids_[i] = -1;
      }
    }
    return list;
  }
  void Stopping(const std::vector<int>&) override {}  // the whole process stops with them
  std::string Holder() const override { return pids_.empty() ? "this process" : "a device process"; }

 private:
  const std::chrono::seconds kProbeTimeout{2};
  caf::actor_system& sys_;
  std::vector<actors::device_actor> devices_;
  std::vector<actors::host_actor> hosts_;  // of --processes, one per device; empty in one process
  std::vector<pid_t>& pids_;  // of --processes, one per device (-1 once reaped); empty in one process
  std::chrono::steady_clock::time_point last_probe_{};
  std::vector<int> unanswered_;  // ranks of the current ring that missed a probe
  std::string gone_;
  std::string transport_;
  std::vector<bool> alive_;
  std::vector<size_t> ring_;  // the current ring's devices, by rank
};

// The terminal and the metrics file.
class TerminalSink final : public actors::JobSink {
 public:
  TerminalSink(const runtime::JobConfig& job, std::ofstream& metrics, bool tty, int64_t start, std::string resume,
               std::chrono::steady_clock::time_point t0)
      : job_(job), metrics_(metrics), tty_(tty), resumed_from_(start), start_(start), resume_(std::move(resume)),
        t0_(t0) {}
  Interrupt Interrupted() override {
    if (StopRequested()) return {false, true, "stopped by a signal"};
    return {};
  }
  kernels::Status ResumePoint(int64_t* step, std::string* checkpoint) override {
    if (epoch_ > 0) {  // the first ring's was verified before anything was written
      std::vector<std::string> skipped;
      RW_RETURN_IF_ERROR(runtime::FindResumeCheckpoint(job_.checkpoint.dir, -1, &start_, &resume_, &skipped));
      for (const auto& why : skipped) Line("skipped a checkpoint: " + why);
    }
    *step = start_;
    *checkpoint = resume_;
    return kernels::Status::Ok();
  }
  uint32_t RingFormed(const actors::RingPlan& plan, const actors::DevicePool::Ring& ring, int64_t start,
                      bool) override {
    ++epoch_;
    if (plan.stop_at_step > 0 || epoch_ > 1 || plan.devices < plan.wanted || plan.mesh.data_groups() > 1) {
      std::string line = "ring of " + ring.where + " (epoch " + std::to_string(epoch_) + ") from step " +
                         std::to_string(start);
      if (plan.mesh.data_groups() > 1) line += ", mesh " + plan.mesh.ToString();
      if (plan.devices < plan.wanted) line += " (shrunk: the stage wants " + std::to_string(plan.wanted) + ")";
      if (plan.stop_at_step) line += " until step " + std::to_string(plan.stop_at_step);
      std::printf("%s%s\n", tty_ && epoch_ > 1 ? "\n" : "", line.c_str());
      std::fflush(stdout);
    }
    return epoch_;
  }
  void OnStep(const runtime::StepMetrics& m) override {
    metrics_ << m.ToJson() << "\n";
    metrics_.flush();
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    Progress(m, tty_, elapsed / double(std::max<int64_t>(1, m.step - resumed_from_)) * double(m.total_steps - m.step));
  }
  void OnCheckpoint(const runtime::CheckpointInfo& c) override {
    if (!c.ok) Line("checkpoint of step " + std::to_string(c.step) + " failed: " + c.error);
  }
  void Note(const std::string& line) override { Line(line); }

 private:
  void Line(const std::string& s) {
    std::fprintf(stderr, "%sringworld train: %s\n", tty_ ? "\n" : "", s.c_str());
  }
  const runtime::JobConfig& job_;
  std::ofstream& metrics_;
  const bool tty_;
  const int64_t resumed_from_;
  int64_t start_;
  std::string resume_;
  std::chrono::steady_clock::time_point t0_;
  uint32_t epoch_ = 0;
};

}  // namespace

int DeviceHost(int n, const std::string& port_file) {
  InstallStopSignals();
  actors::SystemConfig cfg;
  caf::actor_system sys{cfg};
  auto host = actors::SpawnHost(sys, n);
  auto port = sys.middleman().publish(host, 0, "127.0.0.1");
  if (!port) {
    std::fprintf(stderr, "ringworld device-host: %s\n", sys.render(port.error()).c_str());
    return 1;
  }
  const std::string tmp = port_file + ".tmp";
  std::ofstream(tmp) << *port << "\n";
  std::rename(tmp.c_str(), port_file.c_str());
  sys.await_all_actors_done();
  return 0;
}

int Train(const std::string& job_path, std::vector<std::string> overrides, bool processes) {
  if (processes) overrides.push_back("ring.transport=ucx");
  runtime::JobConfig job;
  kernels::Status st = runtime::LoadJobConfig(job_path, overrides, &job);
  if (!st.ok()) {
    std::fprintf(stderr, "ringworld train: %s\n", st.message().c_str());
    return 2;
  }
  std::string yaml;
  {
    std::ifstream f(job_path);
    std::stringstream ss;
    ss << f.rdbuf();
    yaml = ss.str();
  }
  std::error_code ec;
  std::filesystem::create_directories(job.output_dir, ec);
  const std::string metrics_path = (std::filesystem::path(job.output_dir) / "metrics.jsonl").string();
  // The checkpoint the first ring resumes from, verified here once for all its ranks. When every checkpoint of
  // the run is corrupt this is an error before anything is written: a run from step 0 would overwrite them.
  std::vector<std::string> skipped;
  std::string resume;
  int64_t start = 0;
  st = runtime::FindResumeCheckpoint(job.checkpoint.dir, -1, &start, &resume, &skipped);
  if (!st.ok()) {
    std::fprintf(stderr, "ringworld train: %s\n", st.message().c_str());
    return 1;
  }
  for (const auto& why : skipped) std::fprintf(stderr, "ringworld train: skipped a checkpoint: %s\n", why.c_str());
  // A run that resumes continues its metrics file; a fresh run starts a new one.
  std::ofstream metrics(metrics_path, start > 0 ? std::ios::app : std::ios::trunc);
  if (!metrics) {
    std::fprintf(stderr, "ringworld train: output_dir: cannot write %s\n", metrics_path.c_str());
    return 2;
  }
  std::printf("ringworld train %s: %lld devices (%s, %s), %zu stages, %lld steps -> %s\n", job.name.c_str(),
              (long long)job.ring.devices, job.ring.layout.c_str(), job.ring.transport.c_str(), job.stages.size(),
              (long long)job.total_steps(), metrics_path.c_str());
  std::printf("ringworld train: %s\n", runtime::ComputePath(job).c_str());

  int max_devices = 1;
  for (size_t i = 0; i < job.stages.size(); ++i) max_devices = std::max(max_devices, int(job.stage_devices(i)));
  if (max_devices != int(job.stage_devices(0)) && job.checkpoint.dir.empty()) {
    std::fprintf(stderr, "ringworld train: stages: the ring size changes between stages, which needs checkpoint.dir "
                         "(the re-formed ring starts from the checkpoint of the stage change)\n");
    return 2;
  }

  actors::SystemConfig cfg;
  caf::actor_system sys{cfg};
  std::vector<actors::device_actor> devices;
  std::vector<actors::host_actor> hosts;
  std::vector<pid_t> host_pids;
  InstallStopSignals();
  auto stop_hosts = [&] {
    caf::scoped_actor s{sys};
    for (auto& h : hosts) s->send(h, actors::quit_atom::value);
    for (pid_t pid : host_pids) {
      if (pid <= 0) continue;  // lost, and reaped then
      int status = 0;
      for (int k = 0; k < 500 && waitpid(pid, &status, WNOHANG) == 0; ++k)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      if (waitpid(pid, &status, WNOHANG) == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
      }
    }
  };
  if (processes) {
    st = SpawnHosts(sys, max_devices, (std::filesystem::path(job.output_dir) / ".hosts").string(), &host_pids, &hosts,
                    &devices);
  } else {
    for (int r = 0; r < max_devices; ++r) devices.push_back(actors::SpawnDevice(sys, r));
  }
  auto finish = [&](int code) {
    caf::scoped_actor s{sys};
    if (processes)
      stop_hosts();
    else
      for (auto& d : devices) s->send_exit(d, caf::exit_reason::user_shutdown);
    return code;
  };
  if (!st.ok()) {
    std::fprintf(stderr, "ringworld train: %s\n", st.message().c_str());
    return finish(1);
  }
  const bool tty = isatty(STDOUT_FILENO);
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t resumed_from = start;

  LocalPool pool(sys, devices, hosts, host_pids, job.ring.transport);
  TerminalSink sink(job, metrics, tty, start, resume, t0);

  actors::JobRun run;
  run.config = &job;
  run.yaml = yaml;
  run.origin = job_path;
  run.overrides = overrides;
  run.number = 1;
  const actors::JobOutcome out = actors::DriveJob(sys, run, pool, sink);
  using S = actors::JobOutcome::State;
  if (out.state == S::kPreempted) {
    std::printf("%spreempted after step %lld: checkpoint committed in %s; run the same command to resume\n",
                tty ? "\n" : "", (long long)out.steps,
                job.checkpoint.dir.empty() ? "(no checkpoint.dir)" : job.checkpoint.dir.c_str());
    return finish(kExitPreempted);
  }
  if (out.state != S::kSucceeded) {  // failed, or no valid ring with the devices left
    std::fprintf(stderr, "%sringworld train: %s\n", tty ? "\n" : "", out.message.c_str());
    return finish(1);
  }
  const int64_t steps = out.steps;
  const double first_loss = out.first_loss, last_loss = out.last_loss;
  finish(0);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (resumed_from >= job.total_steps()) {
    std::printf("the job was already complete at step %lld (%s); nothing to do\n", (long long)resumed_from,
                job.checkpoint.dir.c_str());
    return 0;
  }
  if (resumed_from > 0) std::printf("%sresumed from the checkpoint of step %lld\n", tty ? "\n" : "", (long long)resumed_from);
  std::printf("%sdone: %lld steps in %.1f s, loss %.4f -> %.4f; metrics in %s\n", tty ? "\n" : "", (long long)steps,
              secs, first_loss, last_loss, metrics_path.c_str());
  return 0;
}

}  // namespace rw::cli
