// The device mesh of a job: dp x fsdp x sp ranks. sp is the ring a sequence is split over (ring attention);
// dp and fsdp are data-parallel: each of the dp x fsdp data groups takes its share of the global batch's
// sequences and runs them on its own sp ring. fsdp members are the ones that will shard the weights
// (ZeRO-3; not yet: today they hold replicas, as dp members do). World rank r is (dp, fsdp, sp) with sp
// fastest, so a data group's ring is ranks [g * sp, (g + 1) * sp) — placed next to each other, on one host
// where a host has that many devices, since the ring carries the heaviest traffic.
//
// A rank talks over several rings (RankRings): the world ring (every rank: gradient and loss sums, the
// sharded optimizer, checkpoints, stop votes) and its group's sp ring (attention's K/V blocks). Each ring is
// a Transport of its own (its own fabric or UCX worker and tag), so their messages never meet.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/transport.h"

namespace rw::runtime {

struct Mesh {
  int64_t dp = 1, fsdp = 1, sp = 1;
  int64_t world() const { return dp * fsdp * sp; }
  int64_t data_groups() const { return dp * fsdp; }
  int64_t group_of(int64_t rank) const { return rank / sp; }  // the data group (dp-major, then fsdp)
  int64_t sp_rank(int64_t rank) const { return rank % sp; }
  int64_t fsdp_rank(int64_t rank) const { return group_of(rank) % fsdp; }
  int64_t dp_rank(int64_t rank) const { return group_of(rank) / fsdp; }
  // The world ranks of `rank`'s fsdp ring (same dp and sp position, fsdp 0 .. fsdp-1; it is at fsdp_rank)
  // and of its replica ring (same fsdp position: dp-major, then sp; it is at replica_rank).
  std::vector<int> FsdpRing(int64_t rank) const;
  std::vector<int> ReplicaRing(int64_t rank) const;
  int64_t replica_rank(int64_t rank) const { return dp_rank(rank) * sp + sp_rank(rank); }
  bool operator==(const Mesh& o) const { return dp == o.dp && fsdp == o.fsdp && sp == o.sp; }
  bool operator!=(const Mesh& o) const { return !(*this == o); }
  std::string ToString() const;  // "dp 2 x fsdp 1 x sp 4"
  // The sequences [lo, hi) of a global batch of `batch` that data group g runs: contiguous, the first
  // batch % groups groups one more.
  void GroupSequences(int64_t batch, int64_t g, int64_t* lo, int64_t* hi) const;
};

// The rings one rank talks over. `sp` is null when the mesh is one ring (sp = world): then every use of
// the sp ring goes to `world`. With fsdp > 1 (sharded weights): the rank's fsdp ring (the shards of every
// weight: gathers and reduce-scatters) and its replica ring (the ranks holding the same shard: the shard's
// gradient sum).
struct RankRings {
  std::shared_ptr<Transport> world;
  std::shared_ptr<Transport> sp;
  std::shared_ptr<Transport> fsdp, replica;
  Transport& world_ring() const { return *world; }
  Transport& sp_ring() const { return sp ? *sp : *world; }
  explicit operator bool() const { return world != nullptr; }
  void Abort(const std::string& reason) const;  // every ring of the rank
  bool aborted() const;                         // any of them
  TransportStats stats() const;                 // summed over the rings
};

}  // namespace rw::runtime
