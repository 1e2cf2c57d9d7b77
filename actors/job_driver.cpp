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

namespace {

using Clock = std::chrono::steady_clock;

struct RingArgs {
  std::vector<device_actor> devices;  // rank = position
  uint64_t job = 0;
  uint32_t epoch = 0;
  std::string transport;
  train_task task;
  RingHooks hooks;
  runtime::Mesh mesh;
};

struct ring_state {
  static inline const char* name = "rw.ring";
  RingArgs a;
  int R = 0;
  std::map<caf::actor_addr, int> rank_of;
  std::vector<bool> reported;
  int reports = 0;
  bool running = false;  // formed, and the ranks given their task
  bool aborted = false, stop_sent = false, finished = false;
  Clock::time_point abort_deadline = Clock::time_point::max();
  RingOutcome out;
  caf::typed_response_promise<RingOutcome> promise;
};

using ring_pointer = ring_actor::stateful_pointer<ring_state>;

void Finish(ring_pointer self) {
  ring_state& st = self->state;
  if (st.finished) return;
  st.finished = true;
  if (st.running)
    for (const auto& d : st.a.devices) self->demonitor(d.address());
  st.out.ok = st.out.error.empty();
  st.promise.deliver(st.out);
  self->quit();
}

// An echo of some rank's abort ("transport: aborted: ..."), not a cause.
bool AbortEcho(const std::string& error) { return error.find("transport: aborted") != std::string::npos; }

// The ring's first error, except that a rank's own failure replaces another rank's echo of the abort it
// caused (ranks' reports race each other here).
void Fail(ring_pointer self, const std::string& why) {
  std::string& error = self->state.out.error;
  if (error.empty() || (AbortEcho(error) && !AbortEcho(why))) error = why;
}

void AbortAll(ring_pointer self, const std::string& why) {
  ring_state& st = self->state;
  if (st.aborted) return;
  st.aborted = true;
  for (int r = 0; r < st.R; ++r)
    if (!st.reported[r]) self->send(st.a.devices[r], abort_atom::value, why);
}

// Rank r has answered (or is taken as lost): the ring ends once every rank has.
bool Answered(ring_pointer self, int r) {
  ring_state& st = self->state;
  if (r < 0 || r >= st.R || st.reported[r]) return false;
  st.reported[r] = true;
  ++st.reports;
  return true;
}

void EndIfAllAnswered(ring_pointer self) {
  if (self->state.reports >= self->state.R) Finish(self);
}

void Lost(ring_pointer self, int r, const std::string& why) {
  if (!Answered(self, r)) return;
  self->state.out.lost = true;
  self->state.out.lost_ranks.push_back(r);
  Fail(self, "rank " + std::to_string(r) + ": " + why);
}

// The ring is formed: every rank gets its task, and the clock starts.
void Start(ring_pointer self) {
  ring_state& st = self->state;
  st.running = true;
  for (int r = 0; r < st.R; ++r) {
    st.rank_of[st.a.devices[r].address()] = r;
    self->monitor(st.a.devices[r]);
  }
  st.a.task.epoch = st.a.epoch;
  st.a.task.reporter = caf::actor_cast<caf::actor>(self);
  for (int r = 0; r < st.R; ++r) self->send(st.a.devices[r], train_atom::value, st.a.task);
  self->delayed_send(self, std::chrono::milliseconds(100), tick_atom::value);
}

// Every 100 ms while the ring runs: the hosts known gone, the abort's deadline, and the driver's poll.
void Tick(ring_pointer self) {
  ring_state& st = self->state;
  const RingHooks& hooks = st.a.hooks;
  if (st.finished || !st.running) return;
  if (st.aborted && hooks.gone_ranks)  // on a host known gone: no answer can come
    for (int r : hooks.gone_ranks()) Lost(self, r, "its host is gone");
  if (st.reports >= st.R) return Finish(self);
  const auto now = Clock::now();
  if (st.aborted && st.abort_deadline == Clock::time_point::max())
    st.abort_deadline = now + std::chrono::milliseconds(int64_t(hooks.abort_answer_s * 1000));
  if (now > st.abort_deadline) {  // ranks that do not answer an abort: their process is gone or hung
    st.out.lost = true;
    for (int r = 0; r < st.R; ++r)
      if (!st.reported[r]) st.out.lost_ranks.push_back(r);
    Fail(self, "ranks did not answer the abort within " + std::to_string(int(hooks.abort_answer_s)) + " s");
    return Finish(self);
  }
  if (hooks.poll) {  // a tick comes every 100 ms: the poll's period
    const std::string req = hooks.poll();
    if (req == "stop") {
      if (!st.stop_sent)
        for (int r = 0; r < st.R; ++r) self->send(st.a.devices[r], stop_atom::value);
      st.stop_sent = true;
    } else if (!req.empty()) {
      Fail(self, req);
      AbortAll(self, req);
    }
  }
  self->delayed_send(self, std::chrono::milliseconds(100), tick_atom::value);
}

ring_actor::behavior_type RingBehavior(ring_pointer self, RingArgs args) {
  ring_state& st = self->state;
  st.a = std::move(args);
  st.R = int(st.a.devices.size());
  st.reported.assign(static_cast<size_t>(st.R), false);
  self->set_down_handler([self](const caf::down_msg& dm) {
    auto it = self->state.rank_of.find(dm.source);
    if (it == self->state.rank_of.end()) return;
    const int r = it->second;
    if (self->state.reported[r]) return;
    Lost(self, r, "device lost (" + self->system().render(dm.reason) + ")");
    AbortAll(self, "rank " + std::to_string(r) + " lost");
    EndIfAllAnswered(self);
  });
  // An error in place of a rank's report (its task refused, or its actor failed): counted against the first
  // rank that has not reported.
  // A hook that throws (a sink's write, a pool's probe): the ring fails and is aborted, and the job actor
  // still gets its outcome (a promise never delivered would leave it waiting for good).
  self->set_exception_handler([self](caf::scheduled_actor*, std::exception_ptr& ep) -> caf::error {
    const std::string what = ExceptionMessage(ep);
    Fail(self, "ring driver: " + what);
    AbortAll(self, "the ring's driver failed: " + what);
    Finish(self);
    return caf::exit_reason::user_shutdown;
  });
  self->set_error_handler([self](caf::error& e) {
    for (int r = 0; r < self->state.R; ++r)
      if (Answered(self, r)) {
        Fail(self, "rank " + std::to_string(r) + ": " + self->system().render(e));
        AbortAll(self, "rank " + std::to_string(r) + " failed");
        break;
      }
    EndIfAllAnswered(self);
  });
  return {
      [self](run_atom) {
        ring_state& s = self->state;
        s.promise = self->make_response_promise<RingOutcome>();
        auto formation = SpawnRingFormation(self->system(), s.a.devices, s.a.job, s.a.epoch, s.a.transport, s.a.mesh);
        // A device that cannot join is as good as lost: the caller re-plans without it.
        self->request(formation, caf::infinite, form_atom::value)
            .then(
                [self](const std::string& error) {
                  if (error.empty()) return Start(self);
                  self->state.out.error = error;
                  self->state.out.lost = true;
                  Finish(self);
                },
                [self](caf::error& e) {
                  self->state.out.error = "ring formation: " + self->system().render(e);
                  self->state.out.lost = true;
                  Finish(self);
                });
        return s.promise;
      },
      [self](const runtime::StepMetrics& m) {
        if (self->state.a.hooks.on_step) self->state.a.hooks.on_step(m);
      },
      [self](const runtime::CheckpointInfo& c) {
        if (self->state.a.hooks.on_checkpoint) self->state.a.hooks.on_checkpoint(c);
      },
      // Rank 0 asks before each commit: yes while this ring is the job's (not aborted, no rank failed or
      // lost). Once the ring has ended this actor is gone and the question fails: also a no.
      [self](commit_atom, uint32_t ep, int64_t) -> bool {
        const ring_state& s = self->state;
        return ep == s.a.epoch && !s.aborted && s.out.error.empty() && !s.finished;
      },
      [self](const train_report& rep) {
        ring_state& s = self->state;
        if (!Answered(self, rep.rank)) return;
        if (rep.process_stopping) s.out.stopping_ranks.push_back(rep.rank);
        if (!rep.ok) {
          Fail(self, "rank " + std::to_string(rep.rank) + ": " + rep.error);
          AbortAll(self, "rank " + std::to_string(rep.rank) + " failed");
        } else if (rep.rank == 0) {
          s.out.stopped = rep.stopped;
          s.out.steps = rep.steps;
          s.out.resumed_from = rep.resumed_from;
          s.out.first_loss = rep.first_loss;
          s.out.last_loss = rep.last_loss;
        }
        EndIfAllAnswered(self);
      },
      [self](tick_atom) { Tick(self); },
  };
}

}  // namespace

ring_actor SpawnRing(caf::actor_system& sys, const std::vector<device_actor>& devices, uint64_t job, uint32_t epoch,
                     const std::string& transport, train_task task, const RingHooks& hooks,
                     const runtime::Mesh& mesh) {
  RingArgs a;
  a.devices = devices;
  a.job = job;
  a.epoch = epoch;
  a.transport = transport;
  a.task = std::move(task);
  a.hooks = hooks;
  a.mesh = mesh;
  // Detached: its hooks may block (a pool's probe of a device host, the daemon's lock, a metrics write).
  return sys.spawn<caf::detached>(RingBehavior, std::move(a));
}

RingOutcome RunRing(caf::actor_system& sys, const std::vector<device_actor>& devices, uint64_t job, uint32_t epoch,
                    const std::string& transport, train_task task, const RingHooks& hooks,
                    const runtime::Mesh& mesh) {
  caf::scoped_actor self{sys};
  RingOutcome out;
  self->request(SpawnRing(sys, devices, job, epoch, transport, std::move(task), hooks, mesh), caf::infinite,
                run_atom::value)
      .receive([&](const RingOutcome& o) { out = o; },
               [&](caf::error& e) {
                 out.error = "ring actor: " + sys.render(e);
                 out.ok = false;
               });
  return out;
}

}  // namespace rw::actors

namespace rw::actors {

namespace {

struct job_state {
  static inline const char* name = "rw.job";
  JobRun run;
  DevicePool* pool = nullptr;
  JobSink* sink = nullptr;
  JobOutcome res;
  int failed_in_a_row = 0;
  int last_ring_size = 0;      // 0: no ring yet
  bool after_failure = false;  // the previous ring failed: the next one is a re-formation, whatever its size
  // The ring running now.
  RingPlan plan;
  bool growing = false;
  std::function<void(const JobOutcome&)> on_end;
  caf::typed_response_promise<JobOutcome> promise;
};

using job_pointer = job_actor::stateful_pointer<job_state>;

void End(job_pointer self, JobOutcome::State state, std::string message) {
  job_state& st = self->state;
  st.res.state = state;
  st.res.message = std::move(message);
  if (st.on_end) st.on_end(st.res);
  st.promise.deliver(st.res);
  self->quit();
}

void AfterRing(job_pointer self, const RingOutcome& out);

// Plans the next ring over what the pool has now, resumes it from the job's newest good checkpoint, and
// hands it to a ring actor; its outcome comes back to AfterRing.
void NextRing(job_pointer self) {
  using State = JobOutcome::State;
  job_state& st = self->state;
  DevicePool& pool = *st.pool;
  JobSink& sink = *st.sink;
  if (const JobSink::Interrupt in = sink.Interrupted(); in.cancel || in.stop)
    return End(self, in.cancel ? State::kCancelled : State::kPreempted, in.why);
  int64_t start = 0;
  std::string resume;
  if (const Status found = sink.ResumePoint(&start, &resume); !found.ok())
    return End(self, State::kFailed, "cannot resume: " + found.message());
  DevicePool::Ring ring;
  const runtime::JobConfig& config = *st.run.config;
  const Status formed = pool.Form(
      [&config, start](int available, RingPlan* p) { return PlanRing(config, start, available, p); }, &st.plan,
      &ring);
  if (!formed.ok()) return End(self, State::kWaiting, "waiting for devices: " + formed.message());
  if (st.plan.devices == 0) return End(self, State::kSucceeded, "all steps done");
  const bool resized = st.after_failure || (st.last_ring_size != 0 && st.last_ring_size != st.plan.devices);
  st.last_ring_size = st.plan.devices;
  st.after_failure = false;
  const uint32_t epoch = sink.RingFormed(st.plan, ring, start, resized);

  // The ring actor calls these while this actor waits for its outcome (nothing else runs here meanwhile).
  st.growing = false;
  RingHooks hooks;
  hooks.abort_answer_s = st.run.abort_answer_s;
  hooks.on_step = [self](const runtime::StepMetrics& m) {
    JobOutcome& res = self->state.res;
    if (!res.ran) res.first_loss = m.loss;  // this driver's first step, whichever ring computed it
    res.ran = true;
    res.last_loss = m.loss;
    self->state.sink->OnStep(m);
  };
  hooks.on_checkpoint = [self](const runtime::CheckpointInfo& c) { self->state.sink->OnCheckpoint(c); };
  hooks.gone_ranks = [self]() {
    std::vector<int> ranks;
    self->state.pool->Gone(&ranks);
    return ranks;
  };
  hooks.poll = [self]() -> std::string {
    job_state& s = self->state;
    const JobSink::Interrupt in = s.sink->Interrupted();
    if (in.cancel) return in.why.empty() ? "job cancelled" : in.why;
    if (std::string gone = s.pool->Gone(); !gone.empty()) return gone;
    if (!s.growing && s.plan.devices < s.plan.wanted && s.pool->Available() >= s.plan.wanted) {
      s.growing = true;
      s.sink->Note("devices are back: growing the ring at the next step's checkpoint");
      return "stop";
    }
    return in.stop ? "stop" : "";
  };
  train_task task;
  task.job_yaml = st.run.yaml;
  task.origin = st.run.origin;
  task.overrides = st.run.overrides;
  task.stage_devices = st.plan.stage_devices;
  task.stop_at_step = st.plan.stop_at_step;
  task.resume_max_step = start;
  task.resume_checkpoint = resume;
  const ring_actor r = SpawnRing(self->system(), ring.devices, st.run.number, epoch, ring.transport, std::move(task),
                                 hooks, st.plan.mesh);
  self->link_to(r);  // this actor gone (shutdown), the ring goes too: its hooks point here
  self->request(r, caf::infinite, run_atom::value)
      .then([self](const RingOutcome& out) { AfterRing(self, out); },
            [self](caf::error& e) {
              RingOutcome out;
              out.error = "ring actor: " + self->system().render(e);
              AfterRing(self, out);
            });
}

// Acts on how a ring ended: the job's end, the next stage's ring, a grown ring, a stop, or a lost device
// (re-formed without it from the last checkpoint).
void AfterRing(job_pointer self, const RingOutcome& out) {
  using State = JobOutcome::State;
  job_state& st = self->state;
  DevicePool& pool = *st.pool;
  JobSink& sink = *st.sink;
  pool.Stopping(out.stopping_ranks);
  st.res.steps = std::max(st.res.steps, out.steps);
  const JobSink::Interrupt after = sink.Interrupted();
  if (after.cancel) return End(self, State::kCancelled, after.why);
  if (out.ok) {
    st.failed_in_a_row = 0;
    if (!out.stopped) return End(self, State::kSucceeded, "all steps done");
    if (st.plan.stop_at_step && out.steps >= st.plan.stop_at_step) return NextRing(self);  // the next stage's ring
    if (st.growing) return NextRing(self);
    if (after.stop) return End(self, State::kPreempted, after.why);
    return End(self, State::kPreempted,
               pool.Holder() + " stopped the ring (SIGTERM): resumes from step " + std::to_string(out.steps));
  }
  // A lost device (its process died or hung) or a transport failure: re-form without it. A stop
  // (preemption, shutdown) decides first: the job resumes later, its failed ring not counted.
  const std::string lost = pool.Lost(out.lost_ranks);
  if (after.stop) return End(self, State::kPreempted, after.why);
  const bool device_lost = out.lost || !pool.Gone().empty();
  if (!device_lost || ++st.failed_in_a_row > st.run.max_failed_rings) return End(self, State::kFailed, out.error);
  st.after_failure = true;
  sink.Note("ring failed: " + out.error + (lost.empty() ? "" : "; devices lost: " + lost) +
            "; re-forming from the last checkpoint");
  NextRing(self);
}

job_actor::behavior_type JobBehavior(job_pointer self, JobRun run, DevicePool* pool, JobSink* sink,
                                     std::function<void(const JobOutcome&)> on_end) {
  self->state.run = std::move(run);
  self->state.on_end = std::move(on_end);
  // Its ring actor is linked to it (so that a job actor gone takes its ring along); a ring's end, however it
  // ends, is its outcome (AfterRing), never this actor's end.
  self->set_exit_handler([](const caf::exit_msg&) {});
  // A pool or sink that throws: the job fails with the reason (its caller is told, never left waiting).
  self->set_exception_handler([self](caf::scheduled_actor*, std::exception_ptr& ep) -> caf::error {
    const std::string what = ExceptionMessage(ep);
    End(self, JobOutcome::State::kFailed, "job driver: " + what);
    return caf::exit_reason::user_shutdown;
  });
  self->state.pool = pool;
  self->state.sink = sink;
  return {[self](run_atom) {
    self->state.promise = self->make_response_promise<JobOutcome>();
    NextRing(self);
    return self->state.promise;
  }};
}

}  // namespace

job_actor SpawnJob(caf::actor_system& sys, const JobRun& run, DevicePool& pool, JobSink& sink,
                   std::function<void(const JobOutcome&)> on_end) {
  // Detached (its own thread): between rings it calls the pool and the sink, which may read files (the
  // resume checkpoint's verification) or wait on a scheduler's lock.
  return sys.spawn<caf::detached>(JobBehavior, run, &pool, &sink, std::move(on_end));
}

job_actor StartJob(caf::actor_system& sys, const JobRun& run, DevicePool& pool, JobSink& sink,
                   std::function<void(const JobOutcome&)> on_end) {
  job_actor job = SpawnJob(sys, run, pool, sink, std::move(on_end));
  caf::anon_send(job, run_atom::value);
  return job;
}

JobOutcome DriveJob(caf::actor_system& sys, const JobRun& run, DevicePool& pool, JobSink& sink) {
  caf::scoped_actor self{sys};
  JobOutcome out;
  self->request(SpawnJob(sys, run, pool, sink), caf::infinite, run_atom::value)
      .receive([&](const JobOutcome& o) { out = o; },
               [&](caf::error& e) {
                 out.state = JobOutcome::State::kFailed;
                 out.message = "job actor: " + sys.render(e);
               });
  return out;
}

}  // namespace rw::actors
