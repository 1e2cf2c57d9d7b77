#include "actors/job_driver.h"

#include <chrono>
#include <map>

#include "runtime/checkpoint.h"

namespace rw::actors {

using kernels::Status;

Status PlanRing(const runtime::JobConfig& job, int64_t start_step, int available, RingPlan* out) {
  *out = RingPlan{};
  out->start_step = start_step;
  const size_t n = job.stages.size();
  size_t s = 0;
  while (s < n && job.stage_end_step(s) <= start_step) ++s;
  if (s == n) return Status::Ok();  // nothing left: devices = 0
  const int wanted = int(job.stage_devices(s));
  size_t e = s + 1;
  while (e < n && job.stage_devices(e) == wanted) ++e;
  out->wanted = wanted;
  out->stop_at_step = e < n ? job.stage_end_step(e - 1) : 0;
  std::string why;
  // The job was parsed (and its files checked) once; each candidate ring is checked against its stages.
  for (int R = std::min(wanted, available); R >= std::max<int64_t>(1, job.ring.min_devices); --R) {
    Status st;
    for (size_t i = s; i < e && st.ok(); ++i) st = job.CheckStageRing(i, R);
    if (!st.ok()) {
      if (why.empty()) why = st.message();
      continue;
    }
    runtime::Mesh mesh;
    RW_RETURN_IF_ERROR(job.StageMesh(s, R, &mesh));
    size_t last = s + 1;  // the stages after s that make the same mesh of R (a ring has one mesh)
    while (last < e) {
      runtime::Mesh m;
      RW_RETURN_IF_ERROR(job.StageMesh(last, R, &m));
      if (m != mesh) break;
      ++last;
    }
    out->devices = R;
    out->mesh = mesh;
    out->stop_at_step = last < n ? job.stage_end_step(last - 1) : 0;
    out->stage_devices.assign(n, 0);
    for (size_t i = s; i < last; ++i) out->stage_devices[i] = R;
    return Status::Ok();
  }
  return Status::Error("no valid ring: stage " + std::to_string(s) + " wants " + std::to_string(wanted) +
                       " devices, ring.min_devices is " + std::to_string(job.ring.min_devices) + ", " +
                       std::to_string(available) + " available" + (why.empty() ? "" : " (" + why + ")"));
}

RingOutcome RunRing(caf::actor_system& sys, const std::vector<device_actor>& devices, uint64_t job, uint32_t epoch,
                    const std::string& transport, train_task task, const RingHooks& hooks,
                    const runtime::Mesh& mesh) {
  RingOutcome out;
  const int R = int(devices.size());
  Status st = FormRing(sys, devices, job, epoch, transport, mesh);
  if (!st.ok()) {
    out.error = st.message();
    out.lost = true;  // a device that cannot join is as good as lost: the caller re-plans without it
    return out;
  }
  caf::scoped_actor self{sys};
  std::map<caf::actor_addr, int> rank_of;
  for (int r = 0; r < R; ++r) {
    rank_of[devices[r].address()] = r;
    self->monitor(devices[r]);
  }
  task.epoch = epoch;
  task.reporter = caf::actor_cast<caf::actor>(self);
  for (int r = 0; r < R; ++r) self->send(devices[r], train_atom::value, task);

  std::vector<bool> reported(R, false);
  int reports = 0;
  bool aborted = false, stop_sent = false;
  auto abort_all = [&](const std::string& why) {
    if (aborted) return;
    aborted = true;
    for (int r = 0; r < R; ++r)
      if (!reported[r]) self->send(devices[r], abort_atom::value, why);
  };
  auto fail = [&](const std::string& why) {
    if (out.error.empty()) out.error = why;
  };
  using clock = std::chrono::steady_clock;
  auto last_poll = clock::now();
  clock::time_point abort_deadline = clock::time_point::max();
  while (reports < R) {
    self->receive(
        [&](const runtime::StepMetrics& m) {
          if (hooks.on_step) hooks.on_step(m);
        },
        [&](const runtime::CheckpointInfo& c) {
          if (hooks.on_checkpoint) hooks.on_checkpoint(c);
        },
        // Rank 0 asks before each commit: yes while this ring is the job's (not aborted, no rank failed or
        // lost). Once RunRing has returned, this actor is gone and the question fails: also a no.
        [&](commit_atom, uint32_t ep, int64_t) -> bool { return ep == epoch && !aborted && out.error.empty(); },
        [&](const train_report& rep) {
          if (rep.rank < 0 || rep.rank >= R || reported[rep.rank]) return;
          reported[rep.rank] = true;
          ++reports;
          if (rep.process_stopping) out.stopping_ranks.push_back(rep.rank);
          if (!rep.ok) {
            fail("rank " + std::to_string(rep.rank) + ": " + rep.error);
            abort_all("rank " + std::to_string(rep.rank) + " failed");
          } else if (rep.rank == 0) {
            out.stopped = rep.stopped;
            out.steps = rep.steps;
            out.resumed_from = rep.resumed_from;
            out.first_loss = rep.first_loss;
            out.last_loss = rep.last_loss;
          }
        },
        [&](const caf::down_msg& dm) {
          auto it = rank_of.find(dm.source);
          if (it == rank_of.end() || reported[it->second]) return;
          reported[it->second] = true;
          ++reports;
          out.lost = true;
          out.lost_ranks.push_back(it->second);
          fail("rank " + std::to_string(it->second) + ": device lost (" + sys.render(dm.reason) + ")");
          abort_all("rank " + std::to_string(it->second) + " lost");
        },
        [&](caf::error& e) {
          // An error reply without a rank: count it against the first rank that has not reported.
          for (int r = 0; r < R; ++r)
            if (!reported[r]) {
              reported[r] = true;
              ++reports;
              fail("rank " + std::to_string(r) + ": " + sys.render(e));
              abort_all("rank " + std::to_string(r) + " failed");
              break;
            }
        },
        caf::after(std::chrono::milliseconds(100)) >> [] {});
    if (aborted && hooks.gone_ranks)  // on a host known gone: no answer can come
      for (int r : hooks.gone_ranks())
        if (r >= 0 && r < R && !reported[r]) {
          reported[r] = true;
          ++reports;
          out.lost = true;
          out.lost_ranks.push_back(r);
          fail("rank " + std::to_string(r) + ": its host is gone");
        }
    if (reports >= R) break;
    const auto now = clock::now();
    if (aborted && abort_deadline == clock::time_point::max())
      abort_deadline = now + std::chrono::milliseconds(int64_t(hooks.abort_answer_s * 1000));
    if (now > abort_deadline) {  // ranks that do not answer an abort: their process is gone or hung
      out.lost = true;
      for (int r = 0; r < R; ++r)
        if (!reported[r]) out.lost_ranks.push_back(r);
      fail("ranks did not answer the abort within " + std::to_string(int(hooks.abort_answer_s)) + " s");
      break;
    }
    if (hooks.poll && now - last_poll >= std::chrono::milliseconds(100)) {
      last_poll = now;
      const std::string req = hooks.poll();
      if (req == "stop") {
        if (!stop_sent)
          for (int r = 0; r < R; ++r) self->send(devices[r], stop_atom::value);
        stop_sent = true;
      } else if (!req.empty()) {
        fail(req);
        abort_all(req);
      }
    }
  }
  for (const auto& d : devices) self->demonitor(d.address());
  out.ok = out.error.empty();
  return out;
}

}  // namespace rw::actors

namespace rw::actors {

JobOutcome DriveJob(caf::actor_system& sys, const JobRun& run, DevicePool& pool, JobSink& sink) {
  using State = JobOutcome::State;
  JobOutcome res;
  auto end = [&res](State s, std::string message) {
    res.state = s;
    res.message = std::move(message);
    return res;
  };
  int failed_in_a_row = 0;
  int last_ring_size = 0;     // 0: no ring yet
  bool after_failure = false;  // the previous ring failed: the next one is a re-formation, whatever its size
  for (;;) {
    if (const JobSink::Interrupt in = sink.Interrupted(); in.cancel || in.stop)
      return end(in.cancel ? State::kCancelled : State::kPreempted, in.why);
    int64_t start = 0;
    std::string resume;
    if (const Status found = sink.ResumePoint(&start, &resume); !found.ok())
      return end(State::kFailed, "cannot resume: " + found.message());
    RingPlan plan;
    DevicePool::Ring ring;
    const Status formed = pool.Form(
        [&](int available, RingPlan* p) { return PlanRing(*run.config, start, available, p); }, &plan,
        &ring);
    if (!formed.ok()) return end(State::kWaiting, "waiting for devices: " + formed.message());
    if (plan.devices == 0) return end(State::kSucceeded, "all steps done");
    const bool resized = after_failure || (last_ring_size != 0 && last_ring_size != plan.devices);
    last_ring_size = plan.devices;
    after_failure = false;
    const uint32_t epoch = sink.RingFormed(plan, ring, start, resized);

    bool growing = false;
    RingHooks hooks;
    hooks.abort_answer_s = run.abort_answer_s;
    hooks.on_step = [&](const runtime::StepMetrics& m) {
      if (!res.ran) res.first_loss = m.loss;  // this driver's first step, whichever ring computed it
      res.ran = true;
      res.last_loss = m.loss;
      sink.OnStep(m);
    };
    hooks.on_checkpoint = [&](const runtime::CheckpointInfo& c) { sink.OnCheckpoint(c); };
    hooks.gone_ranks = [&]() {
      std::vector<int> ranks;
      pool.Gone(&ranks);
      return ranks;
    };
    hooks.poll = [&]() -> std::string {
      const JobSink::Interrupt in = sink.Interrupted();
      if (in.cancel) return in.why.empty() ? "job cancelled" : in.why;
      if (std::string gone = pool.Gone(); !gone.empty()) return gone;
      if (!growing && plan.devices < plan.wanted && pool.Available() >= plan.wanted) {
        growing = true;
        sink.Note("devices are back: growing the ring at the next step's checkpoint");
        return "stop";
      }
      return in.stop ? "stop" : "";
    };
    train_task task;
    task.job_yaml = run.yaml;
    task.origin = run.origin;
    task.overrides = run.overrides;
    task.stage_devices = plan.stage_devices;
    task.stop_at_step = plan.stop_at_step;
    task.resume_max_step = start;
    task.resume_checkpoint = resume;
    const RingOutcome out = RunRing(sys, ring.devices, run.number, epoch, ring.transport, task, hooks, plan.mesh);
    pool.Stopping(out.stopping_ranks);
    res.steps = std::max(res.steps, out.steps);
    const JobSink::Interrupt after = sink.Interrupted();
    if (after.cancel) return end(State::kCancelled, after.why);
    if (out.ok) {
      failed_in_a_row = 0;
      if (!out.stopped) return end(State::kSucceeded, "all steps done");
      if (plan.stop_at_step && out.steps >= plan.stop_at_step) continue;  // the next stage's ring
      if (growing) continue;
      if (after.stop) return end(State::kPreempted, after.why);
      return end(State::kPreempted,
                 pool.Holder() + " stopped the ring (SIGTERM): resumes from step " + std::to_string(out.steps));
    }
    // A lost device (its process died or hung) or a transport failure: re-form without it. A stop
    // (preemption, shutdown) decides first: the job resumes later, its failed ring not counted.
    const std::string lost = pool.Lost(out.lost_ranks);
    if (after.stop) return end(State::kPreempted, after.why);
    const bool device_lost = out.lost || !pool.Gone().empty();
    if (!device_lost || ++failed_in_a_row > run.max_failed_rings) return end(State::kFailed, out.error);
    after_failure = true;
    sink.Note("ring failed: " + out.error + (lost.empty() ? "" : "; devices lost: " + lost) +
              "; re-forming from the last checkpoint");
  }
}

}  // namespace rw::actors
