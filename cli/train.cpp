#include "cli/commands.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "actors/device_host.h"
#include "actors/local_devices.h"
#include "cli/signals.h"
#include "runtime/checkpoint.h"
#include "runtime/job_config.h"

namespace rw::cli {
namespace {

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
  return actors::ServeDeviceHost(n, port_file);
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

  InstallStopSignals();
  actors::LocalDeviceOptions lo;
  lo.devices = max_devices;
  lo.processes = processes;
  lo.host_dir = (std::filesystem::path(job.output_dir) / ".hosts").string();
  lo.transport = job.ring.transport;
  lo.started = ForwardStopTo;  // device hosts stop with us
  lo.reaped = StopForwardingTo;
  std::unique_ptr<actors::LocalDevices> pool;
  st = actors::LocalDevices::Start(lo, &pool);
  auto finish = [&](int code) {
    pool.reset();  // stops the devices, and reaps the device hosts
    return code;
  };
  if (!st.ok()) {
    std::fprintf(stderr, "ringworld train: %s\n", st.message().c_str());
    return finish(1);
  }
  const bool tty = isatty(STDOUT_FILENO);
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t resumed_from = start;

  TerminalSink sink(job, metrics, tty, start, resume, t0);

  actors::JobRun run;
  run.config = &job;
  run.yaml = yaml;
  run.origin = job_path;
  run.overrides = overrides;
  run.number = 1;
  const actors::JobOutcome out = actors::DriveJob(pool->system(), run, *pool, sink);
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
