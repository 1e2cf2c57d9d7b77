#include "actors/job_driver.h"

#include <chrono>
#include <map>

#include "runtime/checkpoint.h"

namespace rw::actors {

using kernels::Status;

Status PlanRing(const std::string& yaml, const std::string& origin, const std::vector<std::string>& overrides,
                int64_t start_step, int available, RingPlan* out) {
  runtime::JobConfig job;
  RW_RETURN_IF_ERROR(runtime::ParseJobConfig(yaml, origin, overrides, &job));
  return PlanRing(job, overrides, start_step, available, out);
}

Status PlanRing(const runtime::JobConfig& job, const std::vector<std::string>& overrides, int64_t start_step,
                int available, RingPlan* out) {
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
    out->devices = R;
    out->overrides = overrides;
    for (size_t i = s; i < e; ++i)
      out->overrides.push_back("stages." + std::to_string(i) + ".devices=" + std::to_string(R));
    return Status::Ok();
  }
  return Status::Error("no valid ring: stage " + std::to_string(s) + " wants " + std::to_string(wanted) +
                       " devices, ring.min_devices is " + std::to_string(job.ring.min_devices) + ", " +
                       std::to_string(available) + " available" + (why.empty() ? "" : " (" + why + ")"));
}

RingOutcome RunRing(caf::actor_system& sys, const std::vector<device_actor>& devices, uint64_t job, uint32_t epoch,
                    const std::string& transport, train_task task, const RingHooks& hooks) {
  RingOutcome out;
  const int R = int(devices.size());
  Status st = FormRing(sys, devices, job, epoch, transport);
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
