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

void RankRings::Abort(const std::string& reason) const {
  if (world) world->Abort(reason);
  if (sp) sp->Abort(reason);
}

bool RankRings::aborted() const { return (world && world->aborted()) || (sp && sp->aborted()); }

TransportStats RankRings::stats() const {
  TransportStats s = world ? world->stats() : TransportStats{};
  if (sp) {
    const TransportStats o = sp->stats();
    s.bytes_sent += o.bytes_sent;
    s.messages_sent += o.messages_sent;
    s.stale_dropped += o.stale_dropped;
  }
  return s;
}

}  // namespace rw::runtime
