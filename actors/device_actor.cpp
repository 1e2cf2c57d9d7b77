#include "actors/device_actor.h"

#include <caf/io/all.hpp>

#include <chrono>
#include <map>
#include <mutex>
#include <random>

#include "runtime/inproc_transport.h"
#include "runtime/generate.h"
#include "runtime/needle.h"
#include "runtime/ring_decode.h"
#include "runtime/ring_attention.h"
#include "runtime/vision_generate.h"
#include "runtime/ucx_transport.h"

namespace rw::actors {
namespace {

using runtime::Transport;

// In-process rings: the ranks of one formation (its ring id) share one fabric. Held weakly: it lives as
// long as an endpoint of it does.
std::shared_ptr<runtime::InprocFabric> FabricFor(uint64_t ring_id, int size) {
  static std::mutex mu;
  static std::map<uint64_t, std::weak_ptr<runtime::InprocFabric>> fabrics;
  std::lock_guard<std::mutex> lock(mu);
  for (auto it = fabrics.begin(); it != fabrics.end();)  // forget rings nobody holds any more
    it = it->second.expired() ? fabrics.erase(it) : std::next(it);
  auto& slot = fabrics[ring_id];
  auto f = slot.lock();
  if (!f || f->size() != size) {
    f = runtime::InprocFabric::Create(size);
    slot = f;
  }
  return f;
}

// The lane: a detached actor (its own thread) that does the device's blocking work.
using lane_actor = caf::typed_actor<
    caf::replies_to<connect_atom, std::shared_ptr<Transport>, std::string, std::string>::with<attention_report>,
    caf::replies_to<attend_atom, attention_task, std::shared_ptr<Transport>>::with<attention_report>,
    caf::replies_to<attend_atom, selftest_task, ring_spec, std::shared_ptr<Transport>>::with<attention_report>,
    caf::replies_to<train_atom, train_task, ring_spec, runtime::RankRings,
                    std::shared_ptr<std::atomic<bool>>>::with<train_report>,
    caf::replies_to<eval_atom, eval_task, std::shared_ptr<Transport>>::with<eval_report>,
    caf::replies_to<needle_atom, needle_task, std::shared_ptr<Transport>>::with<needle_report>,
    caf::replies_to<generate_atom, generate_task, std::shared_ptr<Transport>>::with<generate_report>>;

attention_report Run(Transport& t, runtime::ShardData& io, uint32_t epoch, uint32_t step) {
  attention_report rep;
  runtime::MsgTag tag;
  tag.epoch = epoch;
  tag.step = step;
  runtime::RingStats fs, bs;
  const kernels::Status st = runtime::RunShard(t, io, tag, 1, &fs, &bs);
  rep.ok = st.ok();
  rep.error = st.message();
  rep.fwd_seconds = fs.wall_seconds;
  rep.bwd_seconds = bs.wall_seconds;
  rep.overlap_fwd = fs.overlap_ratio();
  rep.overlap_bwd = bs.overlap_ratio();
  return rep;
}

// A lane's work that throws (a bad_alloc or length_error from a forged file, a defect) fails that task with
// the reason instead of killing the lane and, linked to it, the device: the device stays for the next job.
template <class Report, class F>
Report Guarded(F&& work) {
  try {
    return work();
  } catch (const std::exception& e) {
    Report rep;
    rep.ok = false;
    rep.error = std::string("internal error: ") + e.what();
    return rep;
  } catch (...) {
    Report rep;
    rep.ok = false;
    rep.error = "internal error: unknown exception";
    return rep;
  }
}

lane_actor::behavior_type Lane(lane_actor::pointer lane) {
  return {
      [](generate_atom, const generate_task& task, std::shared_ptr<Transport> t) {
        return Guarded<generate_report>([&] {
          generate_report rep;
          rep.rank = t->rank();
          const runtime::SamplingConfig s{task.temperature, task.top_k, task.top_p, task.seed};
          const kernels::Exec ex{kernels::Device::kCpu, 1};
          kernels::Status st;
          if (task.vision_codes > 0) {
            runtime::VisionGenerateOptions o;
            o.prompt = task.prompt;
            o.uncond = task.uncond;
            o.codes_per_frame = task.codes_per_frame;
            o.frames = task.frames;
            o.cfg_scale = task.cfg_scale;
            o.sampling = s;
            const runtime::VisionOutput out{task.vqgan, task.output, task.fps};
            st = runtime::GenerateVisionRank(*t, task.checkpoint, o, task.vision_codes, task.layout, ex,
                                             task.output.empty() ? nullptr : &out, &rep.tokens);
          } else {
            st = runtime::GenerateRank(*t, task.checkpoint, task.prompt, s, task.max_tokens, task.eos, task.layout,
                                       ex, &rep.tokens);
          }
          rep.ok = st.ok();
          rep.error = st.message();
          return rep;
        });
      },
      [](needle_atom, const needle_task& task, std::shared_ptr<Transport> t) {
        return Guarded<needle_report>([&] {
          needle_report rep;
          rep.rank = t->rank();
          runtime::NeedleConfig cfg;
          cfg.lengths = task.lengths;
          cfg.depths = task.depths;
          cfg.trials = task.trials;
          cfg.seed = task.seed;
          cfg.layout = task.layout;
          runtime::NeedleResult res;
          const kernels::Status st = runtime::NeedleRank(*t, task.checkpoint, cfg, &res);
          rep.ok = st.ok();
          rep.error = st.message();
          if (st.ok() && t->rank() == 0) rep.json = res.ToJson();
          return rep;
        });
      },
      [](eval_atom, const eval_task& task, std::shared_ptr<Transport> t) {
        return Guarded<eval_report>([&] {
          eval_report rep;
          runtime::EvalResult res;
          const kernels::Status st =
              runtime::EvalRank(*t, task.checkpoint, task.data, task.seq_len, task.layout, 1, &res);
          rep.ok = st.ok();
          rep.error = st.message();
          rep.loss = res.loss;
          rep.perplexity = res.perplexity;
          rep.tokens = res.tokens;
          return rep;
        });
      },
      [lane](train_atom, const train_task& task, const ring_spec& spec, const runtime::RankRings& rings,
             std::shared_ptr<std::atomic<bool>> stop) {
        return Guarded<train_report>([&] {
          train_report rep;
          rep.rank = spec.rank;
          runtime::JobConfig job;
          kernels::Status st = runtime::ParseJobConfig(task.job_yaml, task.origin, task.overrides, &job);
          if (st.ok()) st = runtime::ApplyRingSizes(task.stage_devices, &job);
          runtime::TrainResult res;
          if (st.ok()) {
            auto report = [&](const runtime::StepMetrics& m) {
              if (task.reporter) caf::anon_send(task.reporter, m);
            };
            runtime::TrainControl control;
            control.stop_at_step = task.stop_at_step;
            control.stop_flags = {&PreemptFlag(), stop.get()};
            control.resume_max_step = task.resume_max_step;
            control.resume_checkpoint = task.resume_checkpoint;
            control.on_checkpoint = [&](const runtime::CheckpointInfo& info) {
              if (task.reporter) caf::anon_send(task.reporter, info);
            };
            // No commit without the driver's yes: a driver that gave this ring up (or is gone, or cannot
            // be reached) refuses, and the ring stops instead of overwriting its successor's checkpoints.
            if (task.reporter)
              // Asked in half-second tries (the question is idempotent), so that a ring aborted meanwhile
              // (its worker lost the daemon) stops at once instead of holding its devices for the deadline.
              control.commit_gate = [&, sys = &lane->system()](int64_t step) -> kernels::Status {
                caf::scoped_actor asker{*sys};
                for (int tries = 0; tries < 30; ++tries) {
                  if (rings.aborted()) return kernels::Status::Error("the ring was aborted");
                  bool answered = false, timed_out = false;
                  kernels::Status st;
                  asker->request(task.reporter, std::chrono::milliseconds(500), commit_atom::value, task.epoch, step)
                      .receive(
                          [&](bool yes) {
                            answered = true;
                            if (!yes)
                              st = kernels::Status::Error("the ring's driver has given this ring (epoch " +
                                                          std::to_string(task.epoch) + ") up");
                          },
                          [&](caf::error& e) {
                            timed_out = e == caf::sec::request_timeout;
                            if (!timed_out) st = kernels::Status::Error("the ring's driver: " + sys->render(e));
                          });
                  if (answered || !timed_out) return st;
                }
                return kernels::Status::Error("the ring's driver did not answer within 15 s");
              };
            st = runtime::TrainRank(rings, job, report, &res, control);
          }
          // In this process's log too: the driver may be out of reach (a partition), and a worker's operator
          // should see why its devices stopped.
          if (!st.ok())
            std::fprintf(stderr, "ringworld device: rank %d of job %llu (epoch %u): training stopped: %s\n", spec.rank,
                         static_cast<unsigned long long>(spec.job), unsigned(task.epoch), st.message().c_str());
          rep.ok = st.ok();
          rep.error = st.message();
          rep.stopped = res.stopped;
          rep.process_stopping = PreemptFlag().load();
          rep.resumed_from = res.resumed_from;
          for (const auto& why : res.skipped_checkpoints)
            std::fprintf(stderr, "rank %d: skipped a checkpoint: %s\n", spec.rank, why.c_str());
          rep.first_loss = res.first_loss;
          rep.last_loss = res.last_loss;
          rep.steps = res.steps;
          return rep;
        });
      },
      [](connect_atom, std::shared_ptr<Transport> t, const std::string& prev, const std::string& next) {
        return Guarded<attention_report>([&] {
          attention_report rep;
          auto* ucx = dynamic_cast<runtime::UcxTransport*>(t.get());
          kernels::Status st = ucx ? ucx->ConnectRing(prev, next, std::chrono::seconds(30)) : kernels::Status::Ok();
          rep.ok = st.ok();
          rep.error = st.message();
          return rep;
        });
      },
      [](attend_atom, const attention_task& task, std::shared_ptr<Transport> t) {
        return Guarded<attention_report>([&] {
          return Run(*t, *task.io, task.epoch, task.step);
        });
      },
      [](attend_atom, const selftest_task& task, const ring_spec& spec, std::shared_ptr<Transport> t) {
        return Guarded<attention_report>([&] {
          attention_report rep;
          runtime::LayoutKind kind;
          runtime::Layout layout;
          runtime::ShardData io;
          kernels::Status st = runtime::ParseLayout(task.layout, &kind);
          if (st.ok()) st = runtime::Layout::Make(kind, task.L, spec.size, &layout);
          runtime::SyntheticAttention problem{task.seed, task.L, task.hq, task.hkv, task.d, task.causal, task.doc_len};
          if (st.ok()) st = runtime::MakeShard(problem, layout, spec.rank, &io);
          if (!st.ok()) {
            rep.error = st.message();
            return rep;
          }
          rep = Run(*t, io, task.epoch, task.step);
          if (rep.ok && !task.output_path.empty()) {
            st = runtime::WriteOutputs(io, task.output_path);
            rep.ok = st.ok();
            rep.error = st.message();
          }
          return rep;
        });
      },
  };
}

struct DeviceState {
  int index = 0;
  ring_spec spec;             // of the world ring
  runtime::RankRings rings;   // the world ring and, in a mesh of several data groups, the rank's sp ring
  std::shared_ptr<std::atomic<bool>> stop;  // the running training job's stop request
  lane_actor lane;
  static inline const char* name = "device_actor";
};

// The slot of a rank's ring named by ring_spec::axis other than the world's; null for an unknown name.
std::shared_ptr<Transport>* SubRing(runtime::RankRings& rings, const std::string& axis) {
  if (axis == "sp") return &rings.sp;
  if (axis == "fsdp") return &rings.fsdp;
  if (axis == "replica") return &rings.replica;
  return nullptr;
}

// Work for another epoch than the ring's is refused: after a re-formation, late messages of the old ring
// must not run on the new one. Returns the refusal, or an empty string.
std::string StaleEpoch(const DeviceState& st, uint32_t epoch, const char* what) {
  if (st.rings && epoch == st.spec.epoch) return "";
  return "device " + std::to_string(st.index) + ": " + what + " of epoch " + std::to_string(epoch) +
         " but the ring is at epoch " + std::to_string(st.spec.epoch);
}

// Work for the ring goes to the lane, unless it belongs to another epoch: then the reply is a report
// carrying the refusal.
template <class Report, class... Args>
caf::result<Report> ToLane(device_probe_actor::stateful_pointer<DeviceState> self, uint32_t epoch, const char* what,
                           Args&&... args) {
  if (auto stale = StaleEpoch(self->state, epoch, what); !stale.empty()) {
    Report rep;
    rep.error = stale;
    return rep;
  }
  return self->delegate(self->state.lane, std::forward<Args>(args)...);
}

device_probe_actor::behavior_type Device(device_probe_actor::stateful_pointer<DeviceState> self, int index) {
  self->state.index = index;
  self->state.lane = self->spawn<caf::detached + caf::linked>(Lane);
  return {
      [=](prepare_atom, const ring_spec& spec) -> caf::result<std::string> {
        auto& st = self->state;
        if (spec.size < 1 || spec.rank < 0 || spec.rank >= spec.size)
          return caf::make_error(caf::sec::invalid_argument, "ring_spec: rank " + std::to_string(spec.rank) +
                                                                 " is not a rank of a ring of " + std::to_string(spec.size));
        if (spec.ring_id == 0 || spec.ring_id >> 63)
          return caf::make_error(caf::sec::invalid_argument, "ring_spec.ring_id: " + std::to_string(spec.ring_id) +
                                                                 " is not an id FormRing allocates (1 .. 2^63-1)");
        if (spec.axis != "" && !SubRing(st.rings, spec.axis))
          return caf::make_error(caf::sec::invalid_argument,
                                 "ring_spec.axis: unknown ring '" + spec.axis + "' (\"\" | sp | fsdp | replica)");
        if (spec.axis != "" && (!st.rings || spec.job != st.spec.job || spec.epoch != st.spec.epoch))
          return caf::make_error(caf::sec::invalid_argument,
                                 "ring_spec: an " + spec.axis + " ring of job " + std::to_string(spec.job) + " epoch " +
                                     std::to_string(spec.epoch) + " before its world ring");
        if (spec.transport != "inproc" && spec.transport != "ucx")
          return caf::make_error(caf::sec::invalid_argument,
                                 "ring_spec.transport: unknown transport '" + spec.transport + "' (inproc | ucx)");
        std::shared_ptr<Transport> made;
        std::string addr;
        if (spec.transport == "inproc") {
          made = FabricFor(spec.ring_id, spec.size)->Endpoint(spec.rank);
        } else {
          runtime::UcxOptions opt;
          opt.rank = spec.rank;
          opt.size = spec.size;
          opt.ring_id = spec.ring_id;
          std::unique_ptr<runtime::UcxTransport> t;
          auto s = runtime::UcxTransport::Create(opt, &t);
          if (!s.ok()) return caf::make_error(caf::sec::runtime_error, s.message());
          addr = t->address();
          made = std::move(t);
        }
        if (auto* slot = SubRing(st.rings, spec.axis)) {
          if (*slot) (*slot)->Abort("re-formed into epoch " + std::to_string(spec.epoch));
          *slot = std::move(made);
          return addr;
        }
        if (st.rings) st.rings.Abort("re-formed into epoch " + std::to_string(spec.epoch));
        st.spec = spec;
        st.rings = runtime::RankRings{};
        st.rings.world = std::move(made);
        return addr;
      },
      [=](connect_atom, const std::string& axis, const std::string& prev,
          const std::string& next) -> caf::result<attention_report> {
        auto& st = self->state;
        auto* slot = axis.empty() ? &st.rings.world : SubRing(st.rings, axis);
        const std::shared_ptr<Transport> t = slot ? *slot : nullptr;
        if (!t) return caf::make_error(caf::sec::runtime_error, "connect of ring '" + axis + "' before its prepare");
        return self->delegate(st.lane, connect_atom::value, t, prev, next);
      },
      [=](attend_atom, const attention_task& task) -> caf::result<attention_report> {
        return ToLane<attention_report>(self, task.epoch, "task", attend_atom::value, task, self->state.rings.world);
      },
      [=](attend_atom, const selftest_task& task) -> caf::result<attention_report> {
        return ToLane<attention_report>(self, task.epoch, "task", attend_atom::value, task, self->state.spec,
                                        self->state.rings.world);
      },
      [=](train_atom, const train_task& task) -> caf::result<train_report> {
        auto& st = self->state;
        if (StaleEpoch(st, task.epoch, "job").empty()) st.stop = std::make_shared<std::atomic<bool>>(false);
        return ToLane<train_report>(self, task.epoch, "job", train_atom::value, task, st.spec, st.rings, st.stop);
      },
      [=](eval_atom, const eval_task& task) -> caf::result<eval_report> {
        return ToLane<eval_report>(self, task.epoch, "eval", eval_atom::value, task, self->state.rings.world);
      },
      [=](generate_atom, const generate_task& task) -> caf::result<generate_report> {
        return ToLane<generate_report>(self, task.epoch, "generate", generate_atom::value, task, self->state.rings.world);
      },
      [=](needle_atom, const needle_task& task) -> caf::result<needle_report> {
        return ToLane<needle_report>(self, task.epoch, "needle", needle_atom::value, task, self->state.rings.world);
      },
      [=](abort_atom, const std::string& reason) {
        self->state.rings.Abort(reason);
      },
      [=](stop_atom) {
        if (self->state.stop) self->state.stop->store(true);
      },
  };
}

}  // namespace

std::atomic<bool>& PreemptFlag() {
  static std::atomic<bool> flag{false};
  return flag;
}

device_actor SpawnDevice(caf::actor_system& sys, int device_index) {
  return sys.spawn(Device, device_index);  // the production interface of what it answers
}

uint64_t AllocateRingId() {
  // A counter from a random start: a process's ids never repeat, and a restarted daemon does not take up
  // where the last one began (a worker may still hold an aborted ring of the old daemon's under that id).
  static std::atomic<uint64_t> next{[] {
    std::random_device rd;
    const uint64_t r = (uint64_t(rd()) << 32) ^ uint64_t(rd());
    return (r & ((uint64_t(1) << 62) - 1)) | 1;  // leaves 2^62 ids before the top bit (the abort tag's)
  }()};
  return next++;
}

namespace {

// Forming a ring, as an actor: each ring of the formation (the world ring, then the mesh's sub-rings, one
// after another: a ring's ranks only wait on each other) is prepared rank by rank, then connected all at
// once. Answers (form_atom) with "" or the error, naming the rank.
struct forming_state {
  static inline const char* name = "rw.forming";
  struct Ring {
    std::vector<int> members;  // positions in `devices`, in ring order
    std::string axis;          // "" the world ring, else sp, fsdp or replica
  };
  std::vector<device_actor> devices;
  uint64_t job = 0;
  uint32_t epoch = 0;
  std::string transport;
  std::vector<Ring> rings;
  size_t at = 0;            // the ring being formed
  uint64_t ring_id = 0;     // its id
  std::vector<std::string> addr;
  int answers = 0;          // connect answers in
  std::string silent, failed;
  caf::response_promise promise;
};

using forming_actor = caf::stateful_actor<forming_state>;

std::string RingName(const forming_state& st) {
  const forming_state::Ring& ring = st.rings[st.at];
  std::string what = ring.axis.empty() ? std::string("ring") : ring.axis + " ring of ranks";
  if (!ring.axis.empty())
    for (int m : ring.members) what += " " + std::to_string(m);
  return what + " formation (" + st.transport + ", " + std::to_string(ring.members.size()) + " ranks)";
}

void FormNextRing(forming_actor* self);

void Formed(forming_actor* self, const std::string& error) {
  self->state.promise.deliver(error);
  self->quit();
}

// A rank that did not answer is the cause; its neighbours' timeouts waiting for it are the symptom.
void ConnectAnswered(forming_actor* self) {
  forming_state& st = self->state;
  if (++st.answers < int(st.rings[st.at].members.size())) return;
  if (!st.silent.empty())
    return Formed(self, RingName(st) + ": no answer from rank " + st.silent + " within 60 s (its device still busy?)" +
                            (st.failed.empty() ? "" : "; " + st.failed));
  if (!st.failed.empty()) return Formed(self, RingName(st) + ": " + st.failed);
  ++st.at;
  FormNextRing(self);
}

// Connect all ranks at once (all requests out, then their answers): each waits on its neighbours. A rank
// whose lane is still busy (with the work of an older ring that has not returned from its abort) answers
// late or never: the error names it.
void Connect(forming_actor* self) {
  forming_state& st = self->state;
  const forming_state::Ring& ring = st.rings[st.at];
  const int R = int(ring.members.size());
  st.answers = 0;
  for (int r = 0; r < R; ++r) {
    const int m = ring.members[r];
    self->request(st.devices[m], std::chrono::seconds(60), connect_atom::value, ring.axis,
                  st.addr[(r + R - 1) % R], st.addr[(r + 1) % R])
        .then(
            [self, m](const attention_report& rep) {
              if (!rep.ok && self->state.failed.empty()) self->state.failed = "rank " + std::to_string(m) + ": " + rep.error;
              ConnectAnswered(self);
            },
            [self, m](caf::error& e) {
              forming_state& s = self->state;
              if (e == caf::sec::request_timeout)
                s.silent += (s.silent.empty() ? "" : ", ") + std::to_string(m);
              else if (s.failed.empty())
                s.failed = "rank " + std::to_string(m) + ": " + self->system().render(e);
              ConnectAnswered(self);
            });
  }
}

// Prepares rank r of the current ring, then the next; after the last, connects them.
void Prepare(forming_actor* self, int r) {
  forming_state& st = self->state;
  const forming_state::Ring& ring = st.rings[st.at];
  const int R = int(ring.members.size());
  if (r == R) return Connect(self);
  const int m = ring.members[r];
  ring_spec spec{st.job, st.epoch, r, R, st.transport, st.ring_id, ring.axis};
  self->request(st.devices[m], std::chrono::seconds(30), prepare_atom::value, spec)
      .then(
          [self, r](const std::string& a) {
            self->state.addr[r] = a;
            Prepare(self, r + 1);
          },
          [self, m](caf::error& e) {
            Formed(self, "rank " + std::to_string(m) + ": prepare failed: " + self->system().render(e));
          });
}

void FormNextRing(forming_actor* self) {
  forming_state& st = self->state;
  if (st.at == st.rings.size()) return Formed(self, "");
  st.ring_id = AllocateRingId();
  st.addr.assign(st.rings[st.at].members.size(), std::string());
  st.silent.clear();
  st.failed.clear();
  Prepare(self, 0);
}

caf::behavior Forming(forming_actor* self, std::vector<device_actor> devices, uint64_t job, uint32_t epoch,
                      std::string transport, runtime::Mesh mesh) {
  forming_state& st = self->state;
  const int R = int(devices.size());
  std::vector<int> all(static_cast<size_t>(R));
  for (int r = 0; r < R; ++r) all[r] = r;
  st.rings.push_back({all, ""});
  if (mesh.world() == R) {  // else one ring of every device
    if (mesh.sp < R)
      for (int g = 0; g < mesh.data_groups(); ++g) {
        std::vector<int> members(static_cast<size_t>(mesh.sp));
        for (int i = 0; i < mesh.sp; ++i) members[i] = g * int(mesh.sp) + i;
        st.rings.push_back({members, "sp"});
      }
    if (mesh.fsdp > 1)
      for (int r = 0; r < R; ++r) {  // each ring formed by its first member
        if (mesh.fsdp_rank(r) == 0) st.rings.push_back({mesh.FsdpRing(r), "fsdp"});
        if (mesh.dp * mesh.sp > 1 && mesh.replica_rank(r) == 0) st.rings.push_back({mesh.ReplicaRing(r), "replica"});
      }
  }
  st.devices = std::move(devices);
  st.job = job;
  st.epoch = epoch;
  st.transport = std::move(transport);
  return {[self](form_atom) {
    self->state.promise = self->make_response_promise();
    FormNextRing(self);
    return self->state.promise;
  }};
}

}  // namespace

caf::actor SpawnRingFormation(caf::actor_system& sys, const std::vector<device_actor>& devices, uint64_t job,
                              uint32_t epoch, const std::string& transport, const runtime::Mesh& mesh) {
  return sys.spawn(Forming, devices, job, epoch, transport, mesh);
}

kernels::Status FormRing(caf::actor_system& sys, const std::vector<device_actor>& devices, uint64_t job,
                         uint32_t epoch, const std::string& transport, const runtime::Mesh& mesh) {
  caf::scoped_actor self{sys};
  std::string error;
  self->request(SpawnRingFormation(sys, devices, job, epoch, transport, mesh), caf::infinite, form_atom::value)
      .receive([&](const std::string& e) { error = e; }, [&](caf::error& e) { error = sys.render(e); });
  return error.empty() ? kernels::Status::Ok() : kernels::Status::Error(error);
}

void AddMessageTypes(caf::actor_system_config& cfg) {
  cfg.add_message_type<ring_spec>("rw::ring_spec");
  cfg.add_message_type<attention_report>("rw::attention_report");
  cfg.add_message_type<selftest_task>("rw::selftest_task");
  cfg.add_message_type<device_actor>("rw::device_actor");
  cfg.add_message_type<std::vector<device_actor>>("rw::device_list");
  cfg.add_message_type<train_task>("rw::train_task");
  cfg.add_message_type<train_report>("rw::train_report");
  cfg.add_message_type<eval_task>("rw::eval_task");
  cfg.add_message_type<eval_report>("rw::eval_report");
  cfg.add_message_type<needle_task>("rw::needle_task");
  cfg.add_message_type<needle_report>("rw::needle_report");
  cfg.add_message_type<generate_task>("rw::generate_task");
  cfg.add_message_type<generate_report>("rw::generate_report");
  cfg.add_message_type<std::vector<int32_t>>("rw::i32_list");
  cfg.add_message_type<std::vector<double>>("rw::f64_list");
  cfg.add_message_type<std::vector<int64_t>>("rw::i64_list");
  cfg.add_message_type<runtime::StepMetrics>("rw::step_metrics");
  cfg.add_message_type<runtime::CheckpointInfo>("rw::checkpoint_info");
  cfg.load<caf::io::middleman>();
}

}  // namespace rw::actors
