#include "cli/train.h"

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
#include "runtime/job_config.h"

extern char** environ;

namespace rw::cli {
namespace {

// First SIGTERM/SIGINT: finish the step, checkpoint, exit with kExitPreempted. Second: exit at once (the
// last committed checkpoint is untouched: checkpoints are renamed into place only when whole).
constexpr int kExitPreempted = 75;  // EX_TEMPFAIL: run it again to resume
std::atomic<int> g_signals{0};
pid_t g_children[1024];
std::atomic<int> g_num_children{0};

void OnSignal(int) {
  if (g_signals.fetch_add(1) > 0) _exit(128 + SIGTERM);
  actors::PreemptFlag().store(true);
  for (int i = 0; i < g_num_children.load(); ++i) kill(g_children[i], SIGTERM);  // device hosts stop with us
}

void InstallSignals() {
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
}

// --processes: one device host per rank, each a child process of this one (`ringworld device-host`),
// reached over the CAF middleman on 127.0.0.1; the ring between them is UCX.
kernels::Status SpawnHosts(caf::actor_system& sys, int R, const std::string& dir,
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
    g_children[g_num_children.fetch_add(1)] = pid;
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


struct Config : caf::actor_system_config {
  Config() { actors::AddMessageTypes(*this); }
};

void Progress(const runtime::StepMetrics& m, bool tty, double eta_s) {
  if (tty) {
    const int width = 28, done = int(width * m.step / std::max<int64_t>(1, m.total_steps));
    std::printf("\r[%.*s%*s] stage %lld step %lld/%lld  loss %.4f  %.0f tok/s  ETA %.0fs   ", done,
                "############################", width - done, "", (long long)m.stage, (long long)m.step,
                (long long)m.total_steps, m.loss, m.tokens_per_s, eta_s);
    std::fflush(stdout);
  } else if (m.step == 1 || m.step % 10 == 0 || m.step == m.total_steps) {
    std::printf("step %lld/%lld stage %lld seq_len %lld loss %.4f grad_norm %.3f lr %.2e %.0f tok/s\n",
                (long long)m.step, (long long)m.total_steps, (long long)m.stage, (long long)m.seq_len, m.loss,
                m.grad_norm, m.lr, m.tokens_per_s);
    std::fflush(stdout);
  }
}

}  // namespace

int DeviceHost(int n, const std::string& port_file) {
  InstallSignals();
  struct Config : caf::actor_system_config {
    Config() { actors::AddMessageTypes(*this); }
  } cfg;
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
  // A run that will resume continues its metrics file; a fresh run starts a new one.
  bool resuming = false;
  if (!job.checkpoint.dir.empty())
    for (const auto& e : std::filesystem::directory_iterator(job.checkpoint.dir, ec))
      resuming = resuming || e.path().filename().string().rfind("step-", 0) == 0;
  std::ofstream metrics(metrics_path, resuming ? std::ios::app : std::ios::trunc);
  if (!metrics) {
    std::fprintf(stderr, "ringworld train: output_dir: cannot write %s\n", metrics_path.c_str());
    return 2;
  }
  std::printf("ringworld train %s: %lld devices (%s, %s), %zu stages, %lld steps -> %s\n", job.name.c_str(),
              (long long)job.ring.devices, job.ring.layout.c_str(), job.ring.transport.c_str(), job.stages.size(),
              (long long)job.total_steps(), metrics_path.c_str());

  // Ring segments: runs of stages on the same ring size. The ring is re-formed between segments and the
  // next one resumes from the checkpoint the previous one committed at its end.
  struct Segment {
    int devices;
    int64_t end_step;  // global step of the segment's last step
  };
  std::vector<Segment> segments;
  for (size_t i = 0; i < job.stages.size(); ++i) {
    const int d = int(job.stage_devices(i));
    if (segments.empty() || segments.back().devices != d) segments.push_back({d, 0});
    segments.back().end_step = job.stage_end_step(i);
  }
  if (segments.size() > 1 && job.checkpoint.dir.empty()) {
    std::fprintf(stderr, "ringworld train: stages: the ring size changes between stages, which needs checkpoint.dir "
                         "(the re-formed ring starts from the checkpoint of the stage change)\n");
    return 2;
  }
  int max_devices = 0;
  for (const auto& seg : segments) max_devices = std::max(max_devices, seg.devices);

  Config cfg;
  caf::actor_system sys{cfg};
  std::vector<actors::device_actor> devices;
  std::vector<actors::host_actor> hosts;
  InstallSignals();
  auto stop_hosts = [&] {
    caf::scoped_actor s{sys};
    for (auto& h : hosts) s->send(h, actors::quit_atom::value);
    for (int i = 0; i < g_num_children.load(); ++i) {
      int status = 0;
      for (int k = 0; k < 500 && waitpid(g_children[i], &status, WNOHANG) == 0; ++k)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      if (waitpid(g_children[i], &status, WNOHANG) == 0) {
        kill(g_children[i], SIGKILL);
        waitpid(g_children[i], &status, 0);
      }
    }
  };
  if (processes) {
    st = SpawnHosts(sys, max_devices, (std::filesystem::path(job.output_dir) / ".hosts").string(), &hosts, &devices);
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
  caf::scoped_actor self{sys};
  const bool tty = isatty(STDOUT_FILENO);
  const auto t0 = std::chrono::steady_clock::now();
  actors::train_report first, last;
  for (size_t si = 0; si < segments.size(); ++si) {
    const Segment& seg = segments[si];
    const int R = seg.devices;
    const uint32_t epoch = uint32_t(si + 1);
    std::vector<actors::device_actor> ring(devices.begin(), devices.begin() + R);
    st = actors::FormRing(sys, ring, /*job=*/1, epoch, job.ring.transport);
    if (!st.ok()) {
      std::fprintf(stderr, "ringworld train: %s\n", st.message().c_str());
      return finish(1);
    }
    if (segments.size() > 1)
      std::printf("%sring of %d devices (epoch %u) until step %lld\n", tty ? "\n" : "", R, epoch,
                  (long long)seg.end_step);
    const int64_t stop_at = si + 1 < segments.size() ? seg.end_step : 0;
    for (int r = 0; r < R; ++r)
      self->send(ring[r], actors::train_atom::value,
                 actors::train_task{epoch, yaml, job_path, overrides, caf::actor_cast<caf::actor>(self), stop_at});
    int reports = 0, failed = 0;
    actors::train_report rank0;
    while (reports < R) {
      self->receive(
          [&](const runtime::StepMetrics& m) {
            metrics << m.ToJson() << "\n";
            metrics.flush();
            const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            Progress(m, tty, elapsed / double(m.step) * double(m.total_steps - m.step));
          },
          [&](const actors::train_report& rep) {
            ++reports;
            if (!rep.ok) {
              if (!failed++) std::fprintf(stderr, "\nringworld train: rank %d: %s\n", rep.rank, rep.error.c_str());
              for (auto& d : ring) self->send(d, actors::abort_atom::value, "rank " + std::to_string(rep.rank) + " failed");
            } else if (rep.rank == 0) {
              rank0 = rep;
            }
          },
          [&](caf::error& e) {
            ++reports;
            ++failed;
            std::fprintf(stderr, "\nringworld train: %s\n", sys.render(e).c_str());
          });
    }
    if (failed) return finish(1);
    if (si == 0) first = rank0;
    last = rank0;
    if (rank0.stopped && rank0.steps < seg.end_step) {  // preempted, not a planned ring change
      std::printf("%spreempted after step %lld: checkpoint committed in %s; run the same command to resume\n",
                  tty ? "\n" : "", (long long)rank0.steps,
                  job.checkpoint.dir.empty() ? "(no checkpoint.dir)" : job.checkpoint.dir.c_str());
      return finish(kExitPreempted);
    }
    if (rank0.resumed_from >= seg.end_step && si + 1 < segments.size()) continue;  // segment done before
  }
  finish(0);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (first.resumed_from > 0)
    std::printf("%sresumed from the checkpoint of step %lld\n", tty ? "\n" : "", (long long)first.resumed_from);
  if (last.resumed_from == job.total_steps()) {
    std::printf("the job was already complete at step %lld (%s); nothing to do\n", (long long)last.resumed_from,
                job.checkpoint.dir.c_str());
    return 0;
  }
  std::printf("%sdone: %lld steps in %.1f s, loss %.4f -> %.4f; metrics in %s\n", tty ? "\n" : "", (long long)last.steps,
              secs, first.first_loss, last.last_loss, metrics_path.c_str());
  return 0;
}

}  // namespace rw::cli
