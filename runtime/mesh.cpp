#include "runtime/mesh.h"

#include <algorithm>

namespace rw::runtime {

std::string Mesh::ToString() const {
  return "dp " + std::to_string(dp) + " x fsdp " + std::to_string(fsdp) + " x sp " + std::to_string(sp);
}

void Mesh::GroupSequences(int64_t batch, int64_t g, int64_t* lo, int64_t* hi) const {
  const int64_t G = data_groups(), base = batch / G, extra = batch % G;
  *lo = g * base + std::min(g, extra);
  *hi = *lo + base + (g < extra ? 1 : 0);
}

std::vector<int> Mesh::FsdpRing(int64_t rank) const {
  std::vector<int> r;
  for (int64_t f = 0; f < fsdp; ++f) r.push_back(int((dp_rank(rank) * fsdp + f) * sp + sp_rank(rank)));
  return r;
}

std::vector<int> Mesh::ReplicaRing(int64_t rank) const {
  std::vector<int> r;
  for (int64_t d = 0; d < dp; ++d)
    for (int64_t s = 0; s < sp; ++s) r.push_back(int((d * fsdp + fsdp_rank(rank)) * sp + s));
  return r;
}

void RankRings::Abort(const std::string& reason) const {
  for (const auto* t : {&world, &sp, &fsdp, &replica})
    if (*t) (*t)->Abort(reason);
}

bool RankRings::aborted() const {
  for (const auto* t : {&world, &sp, &fsdp, &replica})
    if (*t && (*t)->aborted()) return true;
  return false;
}

TransportStats RankRings::stats() const {
  TransportStats s;
  for (const auto* t : {&world, &sp, &fsdp, &replica}) {
    if (!*t) continue;
    const TransportStats o = (*t)->stats();
    s.bytes_sent += o.bytes_sent;
    s.messages_sent += o.messages_sent;
    s.stale_dropped += o.stale_dropped;
  }
  return s;
}

}  // namespace rw::runtime
