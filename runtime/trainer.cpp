#include "runtime/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "kernels/backend.h"
#include "runtime/checkpoint.h"
#include "runtime/dataset.h"
#include "runtime/fsdp.h"
#include "runtime/ring_attention.h"

namespace rw::runtime {
namespace {

int64_t PeakRssBytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::atoll(line.c_str() + 6) * 1024;
  return 0;
}

// Tags: the gradient and loss reductions of a step use layer numbers above any model layer's.
constexpr uint32_t kReduceLayer = 0x7fff0000u;

}  // namespace

std::string StepMetrics::ToJson() const {
  char buf[512];
  std::snprintf(buf, sizeof(buf),
                "{\"step\": %lld, \"stage\": %lld, \"seq_len\": %lld, \"loss\": %.6f, \"grad_norm\": %.6f, "
                "\"lr\": %.6g, \"tokens\": %lld, \"tokens_per_s\": %.1f, \"step_seconds\": %.4f, "
                "\"ring_overlap_ratio\": %.4f, \"peak_bytes\": %lld, \"ring_bytes\": %lld}",
                (long long)step, (long long)stage, (long long)seq_len, loss, grad_norm, lr, (long long)tokens,
                tokens_per_s, step_seconds, ring_overlap_ratio, (long long)peak_bytes, (long long)ring_bytes);
  return buf;
}

std::string StepMetrics::ToLogLine() const {
  char buf[256];
  std::snprintf(buf, sizeof(buf), "step %lld/%lld stage %lld seq_len %lld loss %.4f grad_norm %.3f lr %.2e %.0f tok/s",
                (long long)step, (long long)total_steps, (long long)stage, (long long)seq_len, loss, grad_norm, lr,
                tokens_per_s);
  return buf;
}

std::string ComputePath(const JobConfig& job, kernels::Device device) {
  const bool bf16 = job.precision == "bf16";
  return std::string("precision ") + (bf16 ? "bf16: " : "fp32: ") +
         kernels::DescribeBackend(device, bf16 ? kernels::DType::kBF16 : kernels::DType::kF32);
}

int RankThreads(const JobConfig& job, int64_t ring) {
  return int(job.ring.threads_per_device > 0
                 ? job.ring.threads_per_device
                 : std::max<int64_t>(1, int64_t(std::thread::hardware_concurrency()) / std::max<int64_t>(1, ring)));
}

Status TrainRank(Transport& t, const JobConfig& job, const std::function<void(const StepMetrics&)>& on_step,
                 TrainResult* result, const TrainControl& control) {
  RankRings rings;
  rings.world = std::shared_ptr<Transport>(std::shared_ptr<Transport>(), &t);  // not owned
  return TrainRank(rings, job, on_step, result, control);
}

namespace {
// A refused checkpoint commit (the gate's reason), set by whichever thread committed.
struct Fence {
  std::mutex mu;
  std::string why;
  void Set(const std::string& reason) {
    std::lock_guard<std::mutex> lock(mu);
    if (why.empty()) why = reason;
  }
  std::string Get() {
    std::lock_guard<std::mutex> lock(mu);
    return why;
  }
};
Status TrainRankOnRings(const RankRings& rings, const JobConfig& job,
                        const std::function<void(const StepMetrics&)>& on_step, TrainResult* result,
                        const TrainControl& control, Fence& fence);
}  // namespace

Status TrainRank(const RankRings& rings, const JobConfig& job, const std::function<void(const StepMetrics&)>& on_step,
                 TrainResult* result, const TrainControl& control) {
  Fence fence;
  Status st = TrainRankOnRings(rings, job, on_step, result, control, fence);
  // The refusal aborted the rings, so this rank's failure may be any collective's "aborted": say why.
  if (const std::string why = fence.Get(); !st.ok() && !why.empty() && st.message().find(why) == std::string::npos)
    st = Status::Error("checkpoint commit refused: " + why + " (" + st.message() + ")");
  // A rank that fails leaves none of its peers waiting on it: in a mesh they meet it on rings the failure
  // did not come through (its sp ring, its fsdp ring), which nothing else would abort.
  // (An aborted ring keeps its first reason.)
  if (!st.ok() && rings.world) rings.Abort("rank " + std::to_string(rings.world->rank()) + " failed: " + st.message());
  return st;
}

namespace {
Status TrainRankOnRings(const RankRings& rings, const JobConfig& job,
                        const std::function<void(const StepMetrics&)>& on_step, TrainResult* result,
                        const TrainControl& control, Fence& fence) {
  RW_RETURN_IF_ERROR(job.Validate());
  Transport& t = rings.world_ring();   // every rank: gradients, loss, optimizer, checkpoints, stop votes
  Transport& sp = rings.sp_ring();     // this rank's data group: attention
  const int R = t.size(), rank = t.rank();
  // The ring must be the size of the stage it resumes into (a driver re-forms it at stage changes).
  ModelConfig model = job.model;
  const ParamTable table(model);
  // mesh.fsdp > 1 (ZeRO-3): the weights, their gradients and the moments are sharded over the fsdp ring
  // (runtime/fsdp.h) and the whole vectors are not held (an init_from reads them whole, once).
  const bool zero3 = job.mesh.fsdp > 1;
  std::vector<float> params(zero3 ? 0 : table.total()), grads(zero3 ? 0 : table.total());
  if (!zero3) InitParameters(model, table, job.seed, params.data());
  const int threads = RankThreads(job, R);
  // optimizer.shard (ZeRO-1 over the ring): this rank keeps the moments of the chunk of the parameters that
  // the gradients' reduce-scatter sums here, updates that chunk, and the weights are all-gathered.
  RW_REQUIRE(!zero3 || (rings.fsdp && rings.fsdp->size() == job.mesh.fsdp),
             "mesh.fsdp: " << job.mesh.fsdp << " shards, but this rank's fsdp ring has "
                           << (rings.fsdp ? rings.fsdp->size() : 0) << " ranks");
  const bool sharded = !zero3 && job.optimizer.shard && R > 1;
  const size_t n = table.total();
  const size_t lo = sharded ? Transport::ChunkBegin(n, R, t.OwnedChunk()) : 0,
               hi = zero3 ? 0 : sharded ? Transport::ChunkBegin(n, R, t.OwnedChunk() + 1) : n;
  AdamW opt(job.optimizer, table, threads, control.device, lo, hi);
  // Mixed precision: GEMMs read a bf16 copy of the fp32 master weights, made again after every update.
  const kernels::DType precision = job.precision == "bf16" ? kernels::DType::kBF16 : kernels::DType::kF32;
  std::unique_ptr<ShardedWeights> shards;
  if (zero3) {
    shards = std::make_unique<ShardedWeights>(table, job.optimizer, *rings.fsdp, rings.replica.get(), precision,
                                              kernels::Exec{control.device, threads}, job.seed);
    shards->InitShard(model, job.seed);
  }
  std::vector<kernels::bf16> compute(precision == kernels::DType::kBF16 && !zero3 ? table.total() : 0);
  auto refresh_compute = [&]() -> Status {
    if (compute.empty()) return Status::Ok();
    return kernels::Cast(kernels::Exec{control.device, threads}, int64_t(table.total()), params.data(),
                         compute.data());
  };
  LayoutKind kind;
  RW_RETURN_IF_ERROR(ParseLayout(job.ring.layout, &kind));
  // The data, and the tokenizer its text was encoded with (a SentencePiece model goes into every checkpoint).
  Dataset files;
  std::unique_ptr<Tokenizer> tok;
  if (job.data.source == "files") {
    RW_RETURN_IF_ERROR(Dataset::Open(job.data.path, &files));
    RW_RETURN_IF_ERROR(CheckModelReads(files, model, "data.path"));
    RW_RETURN_IF_ERROR(DirectoryTokenizer(job.data.path, &tok));
  } else {
    RW_RETURN_IF_ERROR(MakeTokenizer(job.data.tokenizer, &tok, "data.tokenizer"));  // its vocabulary: Validate
  }
  SaveOptions save_opt{job.checkpoint.keep, job.checkpoint.keep_every, tok.get(), {}};
  // A refused commit (the writer may be the background thread) aborts the ring, so that every rank stops.
  if (control.commit_gate)
    save_opt.before_commit = [&](int64_t s) -> Status {
      Status st = control.commit_gate(s);
      if (!st.ok()) {
        fence.Set(st.message());
        rings.Abort("the commit of step " + std::to_string(s) + " was refused: " + st.message());
      }
      return st;
    };
  const int64_t total = job.total_steps();
  int64_t step = 0;
  TrainResult res;
  res.optimizer_bytes =
      zero3 ? shards->optimizer_bytes() : int64_t(sizeof(float) * (opt.m().size() + opt.v().size()));
  TrainerState resumed;  // of the checkpoint resumed from
  if (!job.checkpoint.dir.empty()) {
    if (rank == 0) CollectCheckpointLeftovers(job.checkpoint.dir);  // of writes a crash interrupted
    // The checkpoint the driver chose, or the newest of the directory that verifies; then this rank's part
    // of it: under fsdp the shard's chunks of weights and moments, else the weights and the moments of this
    // rank's range (all of them unless the optimizer is sharded).
    std::string path = control.resume_checkpoint;
    int64_t at = 0;
    if (path.empty())
      RW_RETURN_IF_ERROR(
          FindResumeCheckpoint(job.checkpoint.dir, control.resume_max_step, &at, &path, &res.skipped_checkpoints));
    const bool found = !path.empty();
    if (found && zero3) {
      RW_RETURN_IF_ERROR(shards->LoadShard(path));
      RW_RETURN_IF_ERROR(ReadTrainerState(path, &resumed));
    } else if (found) {
      RW_RETURN_IF_ERROR(
          LoadCheckpoint(path, table, params.data(), opt.m().data(), opt.v().data(), &resumed, MomentRange{lo, hi}));
    }
    if (found) {
      RW_REQUIRE(resumed.seed == job.seed, "checkpoint.dir: holds a run of seed " << resumed.seed << ", the job has seed "
                                                                               << job.seed);
      RW_REQUIRE(resumed.step <= total, "checkpoint.dir: checkpoint of step " << resumed.step << " is past the job's "
                                                                           << total << " steps");
      res.resumed_from = resumed.step;
    }
  }
  if (res.resumed_from == 0 && !job.init_from.empty()) {
    ModelConfig theirs;
    RW_RETURN_IF_ERROR(ReadHfConfig(job.init_from + "/config.json", &theirs));
    // ParseJobConfig took the model from config.json; a job made otherwise must match it in every key.
    ModelConfig mine = model;
    RW_RETURN_IF_ERROR(AdoptModel(theirs, job.init_from, [](const std::string& k) {
      return k != "model.max_position_embeddings" && k != "model.rope_theta";
    }, &mine));
    if (zero3) {  // read whole, once; the shard keeps its chunks below
      params.assign(n, 0.f);
      InitParameters(model, table, job.seed, params.data());
    }
    if (theirs.vocab_size == model.vocab_size && theirs.vision_vocab_size == model.vision_vocab_size) {
      RW_RETURN_IF_ERROR(LoadWeights(job.init_from, table, params.data()));
    } else {  // a vocabulary extended past theirs (or a vision one added): their rows, the rest as initialized
      ModelConfig small = model;
      small.vocab_size = theirs.vocab_size;
      small.vision_vocab_size = theirs.vision_vocab_size;
      const ParamTable st(small);
      std::vector<float> loaded(st.total());
      RW_RETURN_IF_ERROR(LoadWeights(job.init_from, st, loaded.data()));
      for (const auto& p : st.tensors())
        std::copy(loaded.begin() + std::ptrdiff_t(p.offset), loaded.begin() + std::ptrdiff_t(p.offset + p.numel),
                  params.begin() + std::ptrdiff_t(table.Find(p.name)->offset));  // (V, E) rows come first
    }
    if (zero3) {
      shards->TakeShard(params.data());
      std::vector<float>().swap(params);
    }
  }
  RW_RETURN_IF_ERROR(refresh_compute());
  // Checkpoints (rank 0): a snapshot of parameters and moments at the step boundary, written by a
  // background thread while training goes on (one write in flight; the next snapshot waits for it).
  // `final` writes wait for the commit: the run ends or the ring is re-formed right after.
  std::thread writer;
  Status write_status;
  std::vector<float> snap_p, snap_m, snap_v;
  auto join_writer = [&]() -> Status {
    if (writer.joinable()) writer.join();
    Status st = write_status;
    write_status = Status::Ok();
    return st;
  };
  // The loader of files data: the stage's windows, read in shuffled epochs from the cursor.
  std::unique_ptr<WindowIndex> windows;
  DataCursor cursor;
  Mesh mesh;  // of the stage running
  // zero3: a sharded checkpoint. Each rank of rank 0's fsdp ring copies its shard and writes it to a file of
  // its own (in the background unless the save is final); at the next step boundary (or the next save) the
  // ring all-gathers what each wrote, and rank 0 commits the files as one checkpoint (runtime/checkpoint.h).
  // The ring's ranks hold one shard each; the other data groups hold copies and write nothing.
  struct PendingShard {
    bool active = false;
    std::thread thread;
    Status status;
    ShardFile file;
    TrainerState state;
    ModelConfig model;
    std::vector<float> storage;
    std::vector<ShardPiece> pieces;
  } pending;
  struct ShardWire {  // what a writer tells position 0: its file, or why it has none
    uint64_t bytes = 0;
    uint32_t crc = 0;
    uint32_t ok = 0;
    char text[240] = {};
  };
  auto commit = [&](const std::function<Status(CheckpointInfo*)>& write_fn, int64_t at_step, int64_t at_stage,
                    bool final) -> Status {  // rank 0: the write (or commit) of a checkpoint, reported
    auto write = [&, write_fn, at_step, at_stage]() {
      const auto t0 = std::chrono::steady_clock::now();
      CheckpointInfo info;
      info.step = at_step;
      info.stage = at_stage;
      Status st = write_fn(&info);
      info.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      info.ok = st.ok();
      info.error = st.message();
      if (st.ok()) res.last_checkpoint = info.path;
      if (control.on_checkpoint) control.on_checkpoint(info);
      write_status = st;
    };
    if (final || !job.checkpoint.async) {
      write();
      return join_writer();
    }
    writer = std::thread(write);
    return Status::Ok();
  };
  auto finish_shards = [&](bool final) -> Status {  // every rank of rank 0's fsdp ring, at the same point
    if (!pending.active) return Status::Ok();
    pending.active = false;
    if (pending.thread.joinable()) pending.thread.join();
    std::vector<float>().swap(pending.storage);
    ShardWire mine;
    mine.ok = pending.status.ok();
    mine.bytes = pending.file.bytes;
    mine.crc = pending.file.crc;
    const std::string text = mine.ok ? pending.file.file : pending.status.message();
    std::memcpy(mine.text, text.data(), std::min(text.size(), sizeof(mine.text) - 1));
    std::vector<ShardWire> all(size_t(shards->shards()));
    RW_RETURN_IF_ERROR(shards->AllGather(&mine, sizeof(mine), all.data()));
    if (rank != 0) return Status::Ok();
    (void)join_writer();  // rank 0's previous commit (a failure was reported by on_checkpoint)
    std::vector<ShardFile> files;
    std::string failed;
    for (size_t k = 0; k < all.size(); ++k) {
      const std::string what(all[k].text, strnlen(all[k].text, sizeof(all[k].text)));
      if (all[k].ok)
        files.push_back(ShardFile{what, all[k].bytes, all[k].crc});
      else if (failed.empty())
        failed = "shard " + std::to_string(k) + ": " + what;
    }
    const TrainerState state = pending.state;
    return commit(
        [&, files, failed, state, model_now = pending.model](CheckpointInfo* info) -> Status {
          if (!failed.empty()) {  // the others' files go with the leftovers of a later commit or run
            std::error_code ec;
            for (const auto& f : files) std::filesystem::remove(std::filesystem::path(job.checkpoint.dir) / f.file, ec);
            return Status::Error("checkpoint of step " + std::to_string(state.step) + " not written: " + failed);
          }
          return CommitShardedCheckpoint(job.checkpoint.dir, model_now, files, state, save_opt, &info->path,
                                         &info->bytes);
        },
        state.step, state.stage, final);
  };
  auto save = [&](int64_t stage_index, bool final) -> Status {
    if (job.checkpoint.dir.empty()) return Status::Ok();
    const TrainerState state{step, stage_index, windows ? cursor.next : step, job.seed, job.name,
                             windows ? "windows" : "step"};
    if (zero3) {
      if (mesh.dp_rank(rank) != 0 || mesh.sp_rank(rank) != 0) return Status::Ok();  // a copy of a shard
      RW_RETURN_IF_ERROR(finish_shards(false));  // an earlier one still open
      RW_RETURN_IF_ERROR(shards->Snapshot(&pending.storage, &pending.pieces));
      pending.active = true;
      pending.state = state;
      pending.model = model;
      pending.status = Status::Ok();
      auto write = [&] {
        pending.status = WriteCheckpointShard(job.checkpoint.dir, pending.state.step, shards->shard(), shards->shards(),
                                              n, pending.pieces, &pending.file);
      };
      if (final || !job.checkpoint.async) {
        write();
        return finish_shards(true);
      }
      pending.thread = std::thread(write);
      return Status::Ok();
    }
    if (rank == 0) {
      Status prev = join_writer();  // a failed background write was reported by on_checkpoint already
      (void)prev;
    }
    if (sharded) {  // every rank's chunk of the moments into rank 0's snapshot (all ranks take part)
      if (rank == 0) {
        snap_m.resize(n);
        snap_v.resize(n);
      }
      MsgTag g{job.seed, 0, uint32_t(step), kReduceLayer + 6, 0};
      RW_RETURN_IF_ERROR(t.GatherChunksToFirst(opt.m().data(), n, rank == 0 ? snap_m.data() : nullptr, g));
      g.layer = kReduceLayer + 7;
      RW_RETURN_IF_ERROR(t.GatherChunksToFirst(opt.v().data(), n, rank == 0 ? snap_v.data() : nullptr, g));
    }
    if (rank != 0) return Status::Ok();
    snap_p.assign(params.begin(), params.end());
    if (!sharded) {
      snap_m.assign(opt.m().begin(), opt.m().end());
      snap_v.assign(opt.v().begin(), opt.v().end());
    }
    return commit(
        [&, state, model_now = model](CheckpointInfo* info) -> Status {
          return SaveCheckpoint(job.checkpoint.dir, model_now, table, snap_p.data(), snap_m.data(), snap_v.data(),
                                state, save_opt, &info->path, &info->bytes);
        },
        state.step, state.stage, final);
  };
  // Whatever way this function returns, no writer thread outlives it.
  struct JoinAtExit {
    std::thread& w;
    std::thread& shard;
    ~JoinAtExit() {
      if (w.joinable()) w.join();
      if (shard.joinable()) shard.join();
    }
  } join_at_exit{writer, pending.thread};
  auto report = [&] {  // the run's result, when it ends well
    if (shards) {
      const ShardedWeights::Overlap o = shards->overlap();
      res.shard_comm_seconds = o.comm_seconds;
      res.shard_wait_seconds = o.wait_seconds;
    }
    if (result) *result = res;
  };
  ModelWorkspace workspace;  // the rank's buffers, reused by every step
  std::vector<double> all_sums(2 * size_t(R));  // every rank's loss-weight sums, gathered each step
  std::vector<double> norm_parts(static_cast<size_t>(R));  // optimizer.shard: every chunk's sum of squares
  for (size_t si = 0; si < job.stages.size(); ++si) {
    const StageConfig& stage = job.stages[si];
    model.rope_theta = stage.theta(job.model);
    if (step + stage.steps <= res.resumed_from) {  // a stage done before the checkpoint
      step += stage.steps;
      continue;
    }
    RW_REQUIRE(R == job.stage_devices(si), "stages[" << si << "]: the stage runs on " << job.stage_devices(si)
                                                     << " devices, this ring has " << R << " (re-form it at the stage change)");
    RW_RETURN_IF_ERROR(job.StageMesh(si, R, &mesh));
    RW_REQUIRE(sp.size() == mesh.sp && sp.rank() == mesh.sp_rank(rank),
               "stages[" << si << "]: mesh " << mesh.ToString() << " puts rank " << rank << " at position "
                         << mesh.sp_rank(rank) << " of an sp ring of " << mesh.sp << ", the rank's sp ring is position "
                         << sp.rank() << " of " << sp.size());
    RW_REQUIRE(!zero3 || (rings.fsdp->rank() == mesh.fsdp_rank(rank) &&
                          (rings.replica ? rings.replica->size() : 1) == mesh.dp * mesh.sp),
               "stages[" << si << "]: mesh " << mesh.ToString() << " does not match rank " << rank
                         << "'s fsdp and replica rings");
    // This data group's sequences of every global batch, and this rank's positions of each.
    int64_t seq_lo = 0, seq_hi = 0;
    mesh.GroupSequences(stage.batch, mesh.group_of(rank), &seq_lo, &seq_hi);
    Layout layout;
    RW_RETURN_IF_ERROR(Layout::Make(kind, stage.seq_len, int(mesh.sp), &layout));
    const std::vector<int64_t> mine = layout.GlobalIndices(sp.rank());  // this rank's rows of every sequence
    if (job.data.source == "files") {
      windows = std::make_unique<WindowIndex>(files, stage.seq_len);
      RW_REQUIRE(windows->size() > 0, "data.path: " << job.data.path << " has no document of 2 tokens or more");
      cursor = DataCursor{job.seed, int64_t(si), 0};
      if (res.resumed_from > step) {  // mid-stage: where the checkpoint's loader stood
        if (resumed.stage == int64_t(si) && resumed.data_cursor_unit == "windows")
          cursor.next = resumed.data_cursor;
        else  // a checkpoint that did not record it (an older one, or stages since edited): replay the stage
          SkipBatches(*windows, stage.batch, res.resumed_from - step, &cursor);
      }
    }
    for (int64_t k = 0; k < stage.steps; ++k) {
      ++step;
      if (step <= res.resumed_from) continue;  // done before the checkpoint
      if (const std::string why = fence.Get(); !why.empty())
        return Status::Error("checkpoint commit refused: " + why);
      const auto t0 = std::chrono::steady_clock::now();
      const uint64_t bytes0 = rings.stats().bytes_sent;
      // This rank's rows of the global batch (the batch is a function of (seed, stage, step), never of R),
      // with the loss weights of the whole batch: its weight sums per modality are the ranks' sums, added
      // exactly in rank order after a small all-gather.
      // (this data group's sequences only: the others' windows are passed over by their lengths)
      auto weighted = windows ? NextBatch(*windows, stage.batch, &cursor, &mine, seq_lo, seq_hi)
                              : GlobalBatch(job.data, *tok, job.seed, step, stage.seq_len, stage.batch, &mine, seq_lo,
                                            seq_hi);
      double sums[2];
      WeightSums(weighted, sums);
      RW_RETURN_IF_ERROR(
          t.AllGather(sums, sizeof(sums), all_sums.data(), MsgTag{job.seed, 0, uint32_t(step), kReduceLayer + 3, 0}));
      double global_sums[2] = {0, 0};
      for (int q = 0; q < R; ++q) {
        global_sums[0] += all_sums[2 * q];
        global_sums[1] += all_sums[2 * q + 1];
      }
      double scale = 0;
      RW_RETURN_IF_ERROR(ApplyLossWeighting(job.loss, global_sums, weighted, &scale));
      if (zero3)
        shards->BeginStep(uint32_t(step));
      else
        std::fill(grads.begin(), grads.end(), 0.f);
      double loss = 0;
      RingStats rs;
      for (size_t b = 0; b < weighted.size(); ++b) {
        ModelExec mx;
        mx.device = control.device;
        mx.workspace = &workspace;
        mx.num_threads = threads;
        mx.tag.job = job.seed;
        mx.tag.step = uint32_t(step);
        mx.tag.layer = uint32_t(b * model.num_hidden_layers);
        mx.stats = &rs;
        mx.remat_layers = job.remat == "layer";
        mx.precision = precision;
        mx.compute_params = compute.empty() ? nullptr : compute.data();
        mx.units = shards.get();
        RW_RETURN_IF_ERROR(ForwardBackward(sp, model, table, mx, zero3 ? nullptr : params.data(),
                                           std::move(weighted[b]).Rows(), float(scale),
                                           zero3 ? nullptr : grads.data(), &loss));
      }
      MsgTag tag{job.seed, 0, uint32_t(step), kReduceLayer, 0};
      // (zero3: the shards' gradients were reduce-scattered unit by unit; FinishStep sums the replicas.)
      if (sharded)  // only this rank's chunk is summed: it is all its optimizer updates
        RW_RETURN_IF_ERROR(t.ReduceScatterSum(grads.data(), grads.size(), tag));
      else if (!zero3)
        RW_RETURN_IF_ERROR(t.AllReduceSum(grads.data(), grads.size(), tag));
      float loss_f = float(loss);
      tag.layer = kReduceLayer + 1;
      RW_RETURN_IF_ERROR(t.AllReduceSum(&loss_f, 1, tag));
      double grad_norm = 0, lr = 0;
      if (zero3) {
        RW_RETURN_IF_ERROR(shards->FinishStep(step, total, &grad_norm, &lr));
      } else if (sharded) {
        // The global norm from each chunk's fp64 sum of squares, added in chunk order (rank q owns chunk
        // q + 1): the same on every rank and in every run of this ring size.
        const double mine = opt.SquaredNorm(grads.data());
        RW_RETURN_IF_ERROR(t.AllGather(&mine, sizeof(mine), norm_parts.data(),
                                       MsgTag{job.seed, 0, uint32_t(step), kReduceLayer + 4, 0}));
        double ss = 0;
        for (int c = 0; c < R; ++c) ss += norm_parts[size_t((c + R - 1) % R)];
        grad_norm = std::sqrt(ss);
        RW_RETURN_IF_ERROR(opt.Apply(params.data(), grads.data(), grad_norm, step, total, &lr));
        tag.layer = kReduceLayer + 5;
        RW_RETURN_IF_ERROR(t.AllGatherChunks(params.data(), params.size(), tag));
      } else {
        RW_RETURN_IF_ERROR(opt.Step(params.data(), grads.data(), step, total, &grad_norm, &lr));
      }
      RW_RETURN_IF_ERROR(refresh_compute());
      // The shard files of the last checkpoint, written in the background since: committed now.
      if (zero3) RW_RETURN_IF_ERROR(finish_shards(false));
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double mean_loss = double(loss_f) * scale;
      if (step == res.resumed_from + 1) res.first_loss = mean_loss;
      res.last_loss = mean_loss;
      res.steps = step;
      if (rank == 0 && on_step) {
        StepMetrics m;
        m.step = step;
        m.total_steps = total;
        m.stage = int64_t(si);
        m.seq_len = stage.seq_len;
        m.loss = mean_loss;
        m.grad_norm = grad_norm;
        m.lr = lr;
        m.tokens = stage.seq_len * stage.batch;
        m.step_seconds = secs;
        m.tokens_per_s = double(m.tokens) / secs;
        m.ring_overlap_ratio = rs.overlap_ratio();
        m.peak_bytes = PeakRssBytes();
        m.ring_bytes = int64_t(rings.stats().bytes_sent - bytes0);
        on_step(m);
      }
      // Stop together: any rank's request stops every rank after this same step.
      bool want_stop = control.stop_at_step > 0 && step >= control.stop_at_step;
      for (const auto* flag : control.stop_flags) want_stop = want_stop || flag->load();
      float stop = want_stop ? 1.f : 0.f;
      if (control.stop_at_step > 0 || !control.stop_flags.empty()) {
        tag.layer = kReduceLayer + 2;
        RW_RETURN_IF_ERROR(t.AllReduceSum(&stop, 1, tag));
      }
      const bool stage_end = k + 1 == stage.steps;
      const bool periodic = job.checkpoint.every_steps > 0 && step % job.checkpoint.every_steps == 0;
      if (stage_end || periodic || stop > 0) RW_RETURN_IF_ERROR(save(int64_t(si), stop > 0 || step == total));
      if (stop > 0 && step < total) {
        res.stopped = true;
        report();
        return Status::Ok();
      }
    }
  }
  if (zero3) RW_RETURN_IF_ERROR(finish_shards(true));
  RW_RETURN_IF_ERROR(join_writer());
  report();
  return Status::Ok();
}

}  // namespace

Status EvalRank(Transport& t, const std::string& checkpoint_dir, const std::string& data_dir, int64_t seq_len,
                const std::string& layout_name, int num_threads, EvalResult* out) {
  ModelConfig model;
  RW_RETURN_IF_ERROR(ReadHfConfig(checkpoint_dir + "/config.json", &model));
  const ParamTable table(model);
  std::vector<float> params(table.total());
  RW_RETURN_IF_ERROR(LoadWeights(checkpoint_dir, table, params.data()));
  Dataset data;
  RW_RETURN_IF_ERROR(Dataset::Open(data_dir, &data));
  RW_RETURN_IF_ERROR(CheckModelReads(data, model, "--data"));
  LayoutKind kind;
  RW_RETURN_IF_ERROR(ParseLayout(layout_name, &kind));
  Layout layout;
  {
    Status st = Layout::Make(kind, seq_len, t.size(), &layout);
    RW_REQUIRE(st.ok(), "--" << st.message());
  }
  double loss = 0;
  double count = 0;  // the same on every rank: each sees whole sequences
  const auto seqs = data.PackAll(seq_len);
  ModelWorkspace workspace;
  for (size_t i = 0; i < seqs.size(); ++i) {
    ModelExec mx;
    mx.workspace = &workspace;
    mx.num_threads = num_threads;
    mx.tag.step = uint32_t(i);
    RW_RETURN_IF_ERROR(Forward(t, model, table, mx, params.data(), ShardOf(seqs[i], layout, t.rank()), &loss));
    for (float w : seqs[i].weights) count += w;
  }
  // Every rank counted the whole sequences' weights; only the loss is per rank.
  float sum = float(loss);
  RW_RETURN_IF_ERROR(t.AllReduceSum(&sum, 1, MsgTag{0, 0, uint32_t(seqs.size()), kReduceLayer, 0}));
  out->tokens = int64_t(count);
  out->loss = count > 0 ? double(sum) / double(count) : 0;
  out->perplexity = std::exp(out->loss);
  return Status::Ok();
}

}  // namespace rw::runtime
