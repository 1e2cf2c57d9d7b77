// The control-plane vocabulary of the actors: atoms and the small message types (with inspect(), so they
// can cross the CAF middleman). Tensors never travel here; they ride a runtime::Transport.
#pragma once

#include <caf/all.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/attention_problem.h"
#include "runtime/trainer.h"
#include "runtime/transport.h"

namespace rw::actors {

using prepare_atom = caf::atom_constant<caf::atom("prepare")>;
using connect_atom = caf::atom_constant<caf::atom("connect")>;
using attend_atom = caf::atom_constant<caf::atom("attend")>;
using abort_atom = caf::atom_constant<caf::atom("abort")>;
using train_atom = caf::atom_constant<caf::atom("train")>;
using eval_atom = caf::atom_constant<caf::atom("eval")>;
using stop_atom = caf::atom_constant<caf::atom("stop")>;
using needle_atom = caf::atom_constant<caf::atom("needle")>;
using generate_atom = caf::atom_constant<caf::atom("generate")>;
// (commit_atom, epoch, step) -> bool: rank 0 asks its ring's driver before each checkpoint commit.
using commit_atom = caf::atom_constant<caf::atom("commit")>;
// Asks a ring formation (SpawnRingFormation), a ring actor or a job actor (job_driver.h) to do its work.
using form_atom = caf::atom_constant<caf::atom("form")>;
using run_atom = caf::atom_constant<caf::atom("run")>;
// A ring actor's clock: polls its hooks and the abort deadline every 100 ms.
using tick_atom = caf::atom_constant<caf::atom("tick")>;

// What a device needs to join a ring: who it is in it, and how tensors travel.
struct ring_spec {
  uint64_t job = 0;
  uint32_t epoch = 0;  // bumped at every re-formation; work of an older epoch is refused
  int32_t rank = 0;
  int32_t size = 1;
  std::string transport = "inproc";  // inproc | ucx
  // Allocated by FormRing, one per formation, never reused in its process: the key of an in-process ring's
  // fabric and the UCP tag of a UCX ring's messages (below 2^63: the top bit marks the abort message).
  uint64_t ring_id = 0;
  // Which of the rank's rings (runtime/mesh.h): "" the world ring (preparing it drops the rank's old rings),
  // "sp" the sequence ring of its data group (rank and size within that ring), formed after the world.
  std::string axis;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, ring_spec& x) {
  return f(caf::meta::type_name("ring_spec"), x.job, x.epoch, x.rank, x.size, x.transport, x.ring_id, x.axis);
}

// One rank's attention problem, in host memory owned by the caller (local messages only: a shared_ptr
// cannot cross processes, and tensors must not go through CAF anyway).
using attention_io = runtime::ShardData;

struct attention_task {
  uint32_t epoch = 0;
  uint32_t step = 0;
  std::shared_ptr<attention_io> io;
};

// A self-test any device can run wherever it lives: it builds its own rows of a synthetic problem, runs
// ring attention, and writes its outputs to output_path (the data plane here is the file system).
struct selftest_task {
  uint32_t epoch = 0;
  uint32_t step = 0;
  uint64_t seed = 1;
  int64_t L = 0, hq = 1, hkv = 1, d = 64;
  bool causal = true;
  int64_t doc_len = 0;
  std::string layout = "zigzag";
  std::string output_path;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, selftest_task& x) {
  return f(caf::meta::type_name("selftest_task"), x.epoch, x.step, x.seed, x.L, x.hq, x.hkv, x.d, x.causal, x.doc_len,
           x.layout, x.output_path);
}

struct attention_report {
  bool ok = false;
  std::string error;
  double fwd_seconds = 0, bwd_seconds = 0;
  double overlap_fwd = 0, overlap_bwd = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, attention_report& x) {
  return f(caf::meta::type_name("attention_report"), x.ok, x.error, x.fwd_seconds, x.bwd_seconds, x.overlap_fwd,
           x.overlap_bwd);
}

// A training job for one rank: the job file's text (every rank parses the same text) and its overrides.
// Rank 0 sends a StepMetrics to `reporter` after every step.
struct train_task {
  uint32_t epoch = 0;
  std::string job_yaml;
  std::string origin;
  std::vector<std::string> overrides;   // the job's own (--set, the API's), applied to its text
  std::vector<int64_t> stage_devices;   // the ring's plan: per stage its ring size, 0 for stages it does not run
  caf::actor reporter;        // gets StepMetrics (rank 0, every step) and CheckpointInfo (rank 0, each commit)
  int64_t stop_at_step = 0;  // > 0: stop (with a checkpoint) after this step: the ring is re-formed then
  int64_t resume_max_step = -1;  // resume from a checkpoint of step <= this (-1: the newest that verifies)
  std::string resume_checkpoint;  // the one the driver chose and verified (empty: each rank finds it)
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, train_task& x) {
  return f(caf::meta::type_name("train_task"), x.epoch, x.job_yaml, x.origin, x.overrides, x.stage_devices, x.reporter,
           x.stop_at_step,
           x.resume_max_step, x.resume_checkpoint);
}

struct train_report {
  bool ok = false;
  bool stopped = false;  // preempted: a checkpoint was committed, the run can resume
  std::string error;
  int32_t rank = 0;
  double first_loss = 0, last_loss = 0;
  int64_t steps = 0;
  int64_t resumed_from = 0;
  bool process_stopping = false;  // this rank's process was asked to stop (SIGTERM): it takes no new ring
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, train_report& x) {
  return f(caf::meta::type_name("train_report"), x.ok, x.stopped, x.error, x.rank, x.first_loss, x.last_loss, x.steps,
           x.resumed_from, x.process_stopping);
}

struct eval_task {
  uint32_t epoch = 0;
  std::string checkpoint, data;
  int64_t seq_len = 0;
  std::string layout = "zigzag";
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, eval_task& x) {
  return f(caf::meta::type_name("eval_task"), x.epoch, x.checkpoint, x.data, x.seq_len, x.layout);
}

struct eval_report {
  bool ok = false;
  std::string error;
  double loss = 0, perplexity = 0;
  int64_t tokens = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, eval_report& x) {
  return f(caf::meta::type_name("eval_report"), x.ok, x.error, x.loss, x.perplexity, x.tokens);
}

// Needle retrieval over the ring (runtime/needle.h); rank 0's report carries the result as JSON.
struct needle_task {
  uint32_t epoch = 0;
  std::string checkpoint;
  std::vector<int64_t> lengths;
  std::vector<double> depths;
  int64_t trials = 4;
  uint64_t seed = 1;
  std::string layout = "zigzag";
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, needle_task& x) {
  return f(caf::meta::type_name("needle_task"), x.epoch, x.checkpoint, x.lengths, x.depths, x.trials, x.seed, x.layout);
}

struct needle_report {
  bool ok = false;
  std::string error;
  int32_t rank = 0;
  std::string json;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, needle_report& x) {
  return f(caf::meta::type_name("needle_report"), x.ok, x.error, x.rank, x.json);
}

// Generation over the ring (runtime/ring_decode.h); the report carries the generated token ids. With
// vision_codes > 0 it is vision generation (runtime/vision_generate.h): frames of codes_per_frame codes of a
// codebook of vision_codes, guided by the `uncond` prompt when cfg_scale != 1; the report carries the codes.
struct generate_task {
  uint32_t epoch = 0;
  std::string checkpoint;
  std::vector<int32_t> prompt;
  int64_t max_tokens = 64;
  double temperature = 0, top_p = 1;
  int64_t top_k = 0;
  uint64_t seed = 1;
  int32_t eos = -1;
  std::string layout = "zigzag";
  int64_t vision_codes = 0;
  std::vector<int32_t> uncond;
  int64_t codes_per_frame = 0, frames = 0;
  double cfg_scale = 1;
  std::string vqgan, output;  // rank 0 decodes the frames as they come and writes them to output
  double fps = 8;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, generate_task& x) {
  return f(caf::meta::type_name("generate_task"), x.epoch, x.checkpoint, x.prompt, x.max_tokens, x.temperature, x.top_p,
           x.top_k, x.seed, x.eos, x.layout, x.vision_codes, x.uncond, x.codes_per_frame, x.frames, x.cfg_scale, x.vqgan,
           x.output, x.fps);
}

struct generate_report {
  bool ok = false;
  std::string error;
  int32_t rank = 0;
  std::vector<int32_t> tokens;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, generate_report& x) {
  return f(caf::meta::type_name("generate_report"), x.ok, x.error, x.rank, x.tokens);
}

}  // namespace rw::actors

namespace rw::runtime {
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, StepMetrics& x) {
  return f(caf::meta::type_name("step_metrics"), x.step, x.total_steps, x.stage, x.seq_len, x.loss, x.grad_norm, x.lr,
           x.tokens, x.tokens_per_s, x.step_seconds, x.ring_overlap_ratio, x.peak_bytes, x.ring_bytes);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, CheckpointInfo& x) {
  return f(caf::meta::type_name("checkpoint_info"), x.ok, x.error, x.step, x.stage, x.path, x.bytes, x.seconds);
}
}  // namespace rw::runtime

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(rw::actors::attention_task)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::shared_ptr<rw::runtime::Transport>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::shared_ptr<std::atomic<bool>>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(rw::runtime::RankRings)  // a rank's rings, handed to its own lane only
