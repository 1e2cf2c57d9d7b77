#include "runtime/fsdp.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "runtime/checkpoint.h"

namespace rw::runtime {
namespace {
// Tags of the fsdp and replica rings' collectives: their own layer range (the model's layers and the
// trainer's reductions use others), numbered in the order each rank issues them within a step.
constexpr uint32_t kFsdpLayer = 0x40000000u;
}  // namespace

ShardedWeights::ShardedWeights(const ParamTable& table, const OptimizerConfig& opt, Transport& fsdp,
                               Transport* replica, kernels::DType precision, kernels::Exec ex, uint64_t job)
    : table_(table), fsdp_(fsdp), replica_(replica), precision_(precision), ex_(ex), job_(job) {
  const int F = fsdp.size();
  const int chunk = fsdp.OwnedChunk();  // the chunk the reduce-scatter leaves summed here
  size_t at = 0, largest = 0;
  for (const auto& r : table.Units()) {
    UnitShard u;
    u.begin = r.begin;
    u.n = r.size();
    u.lo = Transport::ChunkBegin(u.n, F, chunk);
    u.hi = Transport::ChunkBegin(u.n, F, chunk + 1);
    u.at = at;
    u.opt = std::make_unique<AdamW>(opt, table, ex.num_threads, ex.device, u.begin + u.lo, u.begin + u.hi);
    if (precision == kernels::DType::kBF16) {
      // Matrices go in bf16 (what the GEMMs read), vectors (the norms) in fp32 beside them; a unit of the
      // embedding (a lookup in fp32) goes in fp32 whole.
      bool lookup = false;
      for (const auto& p : table.tensors()) {
        if (p.offset < r.begin || p.offset >= r.end) continue;
        if (p.name == "model.embed_tokens.weight") lookup = true;
        if (p.shape.size() == 1) u.fp32_ranges.push_back({p.offset - r.begin, p.offset - r.begin + p.numel});
      }
      u.bf16_gather = !lookup;
      for (const auto& [a, b] : u.fp32_ranges) u.fp32_n += b - a;
    }
    at += u.hi - u.lo;
    largest = std::max(largest, u.n);
    units_.push_back(std::move(u));
  }
  shard_p_.assign(at, 0.f);
  shard_g_.assign(at, 0.f);
  for (int i = 0; i < 2; ++i) {
    gathered_[i].p.reserve(largest);  // (under bf16 gathers only the fp32 ranges are written: the model reads no more)
    gradient_[i].g.reserve(largest);
    if (precision == kernels::DType::kBF16) gathered_[i].c.reserve(largest);
  }
  thread_ = std::thread([this] { Loop(); });
}

ShardedWeights::~ShardedWeights() {
  bool busy;
  {
    // A collective whose result was just taken may not have counted itself done yet: a moment's grace, so
    // that a rank leaving after its last collective does not abort a ring its peers are still finishing.
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::milliseconds(200), [&] { return pending_ == 0; });
    busy = pending_ > 0;
  }
  if (busy) fsdp_.Abort("a rank left its step with collectives of its weight shards posted");
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void ShardedWeights::Loop() {
  for (;;) {
    std::packaged_task<Status()> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stopping, and nothing left
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    const auto t0 = std::chrono::steady_clock::now();
    job();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    {
      std::lock_guard<std::mutex> lock(mu_);
      comm_seconds_ += secs;
      --pending_;
    }
    cv_.notify_all();
  }
}

std::future<Status> ShardedWeights::Post(std::function<Status()> job) {
  std::packaged_task<Status()> task(std::move(job));
  std::future<Status> f = task.get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.push_back(std::move(task));
    ++pending_;
  }
  cv_.notify_all();
  return f;
}

Status ShardedWeights::Await(std::future<Status>& f) {
  if (!f.valid()) return error_;
  const auto t0 = std::chrono::steady_clock::now();
  const Status st = f.get();
  wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!st.ok() && error_.ok()) error_ = st;
  return error_;
}

Status ShardedWeights::Drain() {
  for (auto& g : gathered_) (void)Await(g.ready);
  for (auto& g : gradient_) (void)Await(g.done);
  return error_;
}

ShardedWeights::Overlap ShardedWeights::overlap() const {
  std::lock_guard<std::mutex> lock(mu_);
  return Overlap{comm_seconds_, wait_seconds_};
}

void ShardedWeights::TakeShard(const float* params) {
  for (const auto& u : units_)
    std::memcpy(shard_p_.data() + u.at, params + u.begin + u.lo, sizeof(float) * (u.hi - u.lo));
}

void ShardedWeights::InitShard(const ModelConfig& c, uint64_t seed) {
  std::vector<ParamTable::Range> mine;
  for (const auto& u : units_)
    if (u.hi > u.lo) mine.push_back({u.begin + u.lo, u.begin + u.hi});
  InitParameterRanges(c, table_, seed, mine, shard_p_.data());  // the chunks, in unit order: the shard's layout
}

Status ShardedWeights::LoadShard(const std::string& dir) {
  CheckpointReader r;  // either layout, written on any mesh: the chunks of this shard are ranges of it
  RW_RETURN_IF_ERROR(CheckpointReader::Open(dir, table_, &r));
  for (auto& u : units_) {
    const size_t lo = u.begin + u.lo, hi = u.begin + u.hi;
    RW_RETURN_IF_ERROR(r.Read("", lo, hi, shard_p_.data() + u.at));
    RW_RETURN_IF_ERROR(r.Read("exp_avg.", lo, hi, u.opt->m().data()));
    RW_RETURN_IF_ERROR(r.Read("exp_avg_sq.", lo, hi, u.opt->v().data()));
  }
  return Status::Ok();
}

MsgTag ShardedWeights::NextTag() { return MsgTag{job_, 0, step_, kFsdpLayer + ops_++, 0}; }

void ShardedWeights::BeginStep(uint32_t step) {
  step_ = step;
  ops_ = 0;
  std::fill(shard_g_.begin(), shard_g_.end(), 0.f);  // nothing is posted between steps (FinishStep drained)
  for (auto& g : gathered_) g.unit = -1;               // the weights changed
  in_use_ = -1;
}

void ShardedWeights::PostGather(int slot, int unit) {
  Gathered& g = gathered_[slot];
  (void)Await(g.ready);  // a gather still writing this buffer (one the model did not ask for)
  const UnitShard& u = units_[size_t(unit)];
  g.unit = unit;
  g.p.resize(u.n);
  if (precision_ == kernels::DType::kBF16) g.c.resize(u.n);
  if (u.bf16_gather) {
    // The chunk cast here and the bf16 chunks gathered; the fp32 ranges as a sum in which each element has
    // one non-zero term, its owner's (x + 0 = x: exact, whatever the order).
    const MsgTag tag = NextTag(), exact_tag = NextTag();
    g.ready = Post([this, &g, &u, tag, exact_tag]() -> Status {
      RW_RETURN_IF_ERROR(kernels::Cast(kernels::Exec{ex_.device, 1}, int64_t(u.hi - u.lo), shard_p_.data() + u.at,
                                       g.c.data() + u.lo));
      RW_RETURN_IF_ERROR(fsdp_.AllGatherChunks(g.c.data(), u.n, tag));
      if (u.fp32_n == 0) return Status::Ok();
      g.exact.assign(u.fp32_n, 0.f);
      size_t at = 0;
      for (const auto& [a, b] : u.fp32_ranges) {
        for (size_t i = std::max(a, u.lo); i < std::min(b, u.hi); ++i) g.exact[at + i - a] = shard_p_[u.at + i - u.lo];
        at += b - a;
      }
      RW_RETURN_IF_ERROR(fsdp_.AllReduceSum(g.exact.data(), g.exact.size(), exact_tag));
      at = 0;
      for (const auto& [a, b] : u.fp32_ranges) {
        std::memcpy(g.p.data() + a, g.exact.data() + at, sizeof(float) * (b - a));
        at += b - a;
      }
      return Status::Ok();
    });
    return;
  }
  std::memcpy(g.p.data() + u.lo, shard_p_.data() + u.at, sizeof(float) * (u.hi - u.lo));
  const MsgTag tag = NextTag();
  g.ready = Post([this, &g, n = u.n, tag]() -> Status {
    RW_RETURN_IF_ERROR(fsdp_.AllGatherChunks(g.p.data(), n, tag));
    if (precision_ != kernels::DType::kBF16) return Status::Ok();
    // One thread: the compute's threads are busy with the current unit.
    return kernels::Cast(kernels::Exec{ex_.device, 1}, int64_t(n), g.p.data(), g.c.data());
  });
}

Status ShardedWeights::Acquire(int unit, bool with_grads, Unit* out) {
  RW_REQUIRE(unit >= 0 && size_t(unit) < units_.size(), "fsdp: no unit " << unit << " of " << units_.size());
  RW_REQUIRE(grads_of_ < 0 || !with_grads, "fsdp: unit " << unit << "'s gradients asked for before unit "
                                                        << grads_of_ << "'s were handed back");
  RW_RETURN_IF_ERROR(error_);
  // The buffer that holds the unit or has its gather posted; else gather it now into the other one.
  int s = -1;
  for (int i = 0; i < 2; ++i)
    if (gathered_[i].unit == unit) s = i;
  if (s < 0) {
    s = in_use_ == 0 ? 1 : 0;
    PostGather(s, unit);
  }
  RW_RETURN_IF_ERROR(Await(gathered_[s].ready));
  in_use_ = s;
  // The unit the model asks for next, in flight while this one computes.
  const int next = with_grads ? unit - 1 : unit + 1;
  if (next >= 0 && size_t(next) < units_.size() && gathered_[1 - s].unit != next) PostGather(1 - s, next);
  const UnitShard& u = units_[size_t(unit)];
  out->params = gathered_[s].p.data();
  out->compute = precision_ == kernels::DType::kBF16 ? gathered_[s].c.data() : nullptr;
  out->grads = nullptr;
  if (with_grads) {  // the gradient buffer not handed out last: its reduce-scatter (two units ago) done
    const int g = grad_in_use_ == 0 ? 1 : 0;
    RW_RETURN_IF_ERROR(Await(gradient_[g].done));
    gradient_[g].unit = unit;
    gradient_[g].g.assign(u.n, 0.f);
    out->grads = gradient_[g].g.data();
    grad_in_use_ = g;
    grads_of_ = unit;
  }
  out->begin = u.begin;
  return Status::Ok();
}

Status ShardedWeights::GradReady(int unit) {
  RW_REQUIRE(unit == grads_of_, "fsdp: unit " << unit << "'s gradient handed back, unit " << grads_of_ << "'s is out");
  grads_of_ = -1;
  RW_RETURN_IF_ERROR(error_);
  Gradient& g = gradient_[grad_in_use_];
  const UnitShard& u = units_[size_t(unit)];
  const MsgTag tag = NextTag();
  // shard_g_ is written only here, on the collectives' thread, in posting order, until FinishStep drains.
  g.done = Post([this, &g, &u, tag]() -> Status {
    RW_RETURN_IF_ERROR(fsdp_.ReduceScatterSum(g.g.data(), u.n, tag));
    return kernels::AddInto(kernels::Exec{ex_.device, 1}, int64_t(u.hi - u.lo), g.g.data() + u.lo,
                            shard_g_.data() + u.at);
  });
  return Status::Ok();
}

Status ShardedWeights::FinishStep(int64_t step, int64_t total, double* grad_norm, double* lr) {
  RW_REQUIRE(grads_of_ < 0, "fsdp: the step ends with unit " << grads_of_ << "'s gradient still out");
  RW_RETURN_IF_ERROR(Drain());
  for (auto& g : gathered_) g.unit = -1;  // the update below changes the weights
  in_use_ = -1;
  if (replica_ && replica_->size() > 1)
    RW_RETURN_IF_ERROR(replica_->AllReduceSum(shard_g_.data(), shard_g_.size(), NextTag()));
  // The global norm: each shard's fp64 sum of squares (units in order), the shards' added in chunk order.
  double mine = 0;
  for (const auto& u : units_) mine += u.opt->SquaredNormAt(shard_g_.data() + u.at);
  const int F = fsdp_.size();
  std::vector<double> parts(size_t(F), 0);
  RW_RETURN_IF_ERROR(fsdp_.AllGather(&mine, sizeof(mine), parts.data(), NextTag()));
  double ss = 0;
  for (int c = 0; c < F; ++c) ss += parts[size_t((c + F - 1) % F)];  // position q holds chunk q + 1
  *grad_norm = std::sqrt(ss);
  for (auto& u : units_)
    RW_RETURN_IF_ERROR(u.opt->ApplyAt(shard_p_.data() + u.at, shard_g_.data() + u.at, *grad_norm, step, total, lr));
  return Status::Ok();
}

Status ShardedWeights::Snapshot(std::vector<float>* storage, std::vector<ShardPiece>* pieces) {
  RW_RETURN_IF_ERROR(Drain());
  const size_t n = shard_p_.size();
  storage->resize(3 * n);
  float* p = storage->data();
  pieces->clear();
  for (const auto& u : units_) {
    const size_t len = u.hi - u.lo;
    if (len == 0) continue;
    std::memcpy(p + u.at, shard_p_.data() + u.at, sizeof(float) * len);
    std::memcpy(p + n + u.at, u.opt->m().data(), sizeof(float) * len);
    std::memcpy(p + 2 * n + u.at, u.opt->v().data(), sizeof(float) * len);
    pieces->push_back(ShardPiece{u.begin + u.lo, len, p + u.at, p + n + u.at, p + 2 * n + u.at});
  }
  return Status::Ok();
}

Status ShardedWeights::AllGather(const void* mine, size_t bytes, void* all) {
  RW_RETURN_IF_ERROR(Drain());  // the ring is this thread's now
  return fsdp_.AllGather(mine, bytes, all, NextTag());
}

}  // namespace rw::runtime
