#include "runtime/fsdp.h"

#include <algorithm>
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
    at += u.hi - u.lo;
    largest = std::max(largest, u.n);
    units_.push_back(std::move(u));
  }
  shard_p_.assign(at, 0.f);
  shard_g_.assign(at, 0.f);
  unit_p_.reserve(largest);
  unit_g_.reserve(largest);
  if (precision == kernels::DType::kBF16) unit_c_.reserve(largest);
}

int64_t ShardedWeights::bytes() const {
  return int64_t(sizeof(float) * (shard_p_.capacity() + shard_g_.capacity() + 2 * shard_p_.size() +
                                  unit_p_.capacity() + unit_g_.capacity()) +
                 sizeof(kernels::bf16) * unit_c_.capacity());
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
  for (auto& u : units_) {
    const size_t lo = u.begin + u.lo, hi = u.begin + u.hi;
    RW_RETURN_IF_ERROR(LoadCheckpointRange(dir, table_, "", lo, hi, shard_p_.data() + u.at));
    RW_RETURN_IF_ERROR(LoadCheckpointRange(dir, table_, "exp_avg.", lo, hi, u.opt->m().data()));
    RW_RETURN_IF_ERROR(LoadCheckpointRange(dir, table_, "exp_avg_sq.", lo, hi, u.opt->v().data()));
  }
  return Status::Ok();
}

MsgTag ShardedWeights::NextTag() { return MsgTag{job_, 0, step_, kFsdpLayer + ops_++, 0}; }

void ShardedWeights::BeginStep(uint32_t step) {
  step_ = step;
  ops_ = 0;
  std::fill(shard_g_.begin(), shard_g_.end(), 0.f);
}

Status ShardedWeights::Acquire(int unit, bool with_grads, Unit* out) {
  RW_REQUIRE(unit >= 0 && size_t(unit) < units_.size(), "fsdp: no unit " << unit << " of " << units_.size());
  RW_REQUIRE(grads_of_ < 0 || !with_grads, "fsdp: unit " << unit << "'s gradients asked for before unit "
                                                        << grads_of_ << "'s were handed back");
  const UnitShard& u = units_[size_t(unit)];
  unit_p_.resize(u.n);
  std::memcpy(unit_p_.data() + u.lo, shard_p_.data() + u.at, sizeof(float) * (u.hi - u.lo));
  RW_RETURN_IF_ERROR(fsdp_.AllGatherChunks(unit_p_.data(), u.n, NextTag()));
  out->params = unit_p_.data();
  out->compute = nullptr;
  if (precision_ == kernels::DType::kBF16) {
    unit_c_.resize(u.n);
    RW_RETURN_IF_ERROR(kernels::Cast(ex_, int64_t(u.n), unit_p_.data(), unit_c_.data()));
    out->compute = unit_c_.data();
  }
  out->grads = nullptr;
  if (with_grads) {
    unit_g_.assign(u.n, 0.f);
    out->grads = unit_g_.data();
    grads_of_ = unit;
  }
  out->begin = u.begin;
  return Status::Ok();
}

Status ShardedWeights::GradReady(int unit) {
  RW_REQUIRE(unit == grads_of_, "fsdp: unit " << unit << "'s gradient handed back, unit " << grads_of_ << "'s is out");
  grads_of_ = -1;
  const UnitShard& u = units_[size_t(unit)];
  RW_RETURN_IF_ERROR(fsdp_.ReduceScatterSum(unit_g_.data(), u.n, NextTag()));
  return kernels::AddInto(ex_, int64_t(u.hi - u.lo), unit_g_.data() + u.lo, shard_g_.data() + u.at);
}

Status ShardedWeights::FinishStep(int64_t step, int64_t total, double* grad_norm, double* lr) {
  RW_REQUIRE(grads_of_ < 0, "fsdp: the step ends with unit " << grads_of_ << "'s gradient still out");
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

Status ShardedWeights::GatherToFirst(float* params, float* m, float* v) {
  const bool first = fsdp_.rank() == 0;
  RW_REQUIRE(!first || (params && m && v), "fsdp: position 0 gathers into whole vectors");
  for (auto& u : units_) {
    RW_RETURN_IF_ERROR(fsdp_.GatherChunksToFirst(shard_p_.data() + u.at, u.n, first ? params + u.begin : nullptr,
                                                 NextTag()));
    RW_RETURN_IF_ERROR(
        fsdp_.GatherChunksToFirst(u.opt->m().data(), u.n, first ? m + u.begin : nullptr, NextTag()));
    RW_RETURN_IF_ERROR(
        fsdp_.GatherChunksToFirst(u.opt->v().data(), u.n, first ? v + u.begin : nullptr, NextTag()));
  }
  return Status::Ok();
}

}  // namespace rw::runtime
