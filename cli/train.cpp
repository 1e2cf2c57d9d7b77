#include "cli/commands.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

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
  actors::RingHooks hooks;
  hooks.on_step = [&](const runtime::StepMetrics& m) {
    metrics << m.ToJson() << "\n";
    metrics.flush();
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    Progress(m, tty, elapsed / double(m.step - resumed_from) * double(m.total_steps - m.step));
  };
  hooks.on_checkpoint = [&](const runtime::CheckpointInfo& c) {
    if (!c.ok) std::fprintf(stderr, "%sringworld train: checkpoint of step %lld failed: %s\n", tty ? "\n" : "",
                            (long long)c.step, c.error.c_str());
  };
  double first_loss = 0, last_loss = 0;
  int64_t steps = 0;
  // The rings of the job, one after another: each resumes from the checkpoint the previous one committed.
  for (uint32_t epoch = 1;; ++epoch) {
    if (epoch > 1 && !job.checkpoint.dir.empty()) {  // the checkpoint the previous ring committed at its stop
      st = runtime::FindResumeCheckpoint(job.checkpoint.dir, start, &start, &resume, nullptr);
      if (!st.ok()) {
        std::fprintf(stderr, "ringworld train: %s\n", st.message().c_str());
        return finish(1);
      }
    }
    actors::RingPlan plan;
    st = actors::PlanRing(yaml, job_path, overrides, start, max_devices, &plan);
    if (!st.ok()) {
      std::fprintf(stderr, "ringworld train: %s\n", st.message().c_str());
      return finish(1);
    }
    if (plan.devices == 0) break;  // nothing left to run
    if (plan.stop_at_step > 0 || epoch > 1)
      std::printf("%sring of %d devices (epoch %u) from step %lld%s\n", tty && epoch > 1 ? "\n" : "", plan.devices,
                  epoch, (long long)start,
                  plan.stop_at_step ? (" until step " + std::to_string(plan.stop_at_step)).c_str() : "");
    std::vector<actors::device_actor> ring(devices.begin(), devices.begin() + plan.devices);
    actors::train_task task{epoch, yaml, job_path, plan.overrides, {}, plan.stop_at_step, start, resume};
    const actors::RingOutcome out =
        actors::RunRing(sys, ring, /*job=*/1, epoch, job.ring.transport, task, hooks);
    if (!out.ok) {
      std::fprintf(stderr, "%sringworld train: %s\n", tty ? "\n" : "", out.error.c_str());
      return finish(1);
    }
    if (steps == 0) first_loss = out.first_loss;
    if (out.steps > out.resumed_from) last_loss = out.last_loss;
    steps = std::max(steps, out.steps);
    if (out.stopped && (plan.stop_at_step == 0 || out.steps < plan.stop_at_step)) {  // preempted
      std::printf("%spreempted after step %lld: checkpoint committed in %s; run the same command to resume\n",
                  tty ? "\n" : "", (long long)out.steps,
                  job.checkpoint.dir.empty() ? "(no checkpoint.dir)" : job.checkpoint.dir.c_str());
      return finish(kExitPreempted);
    }
    if (plan.stop_at_step == 0) break;
    start = out.steps;
  }
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
