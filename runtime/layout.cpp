#include "runtime/layout.h"

namespace rw::runtime {

const char* LayoutName(LayoutKind k) {
  switch (k) {
    case LayoutKind::kContiguous: return "contiguous";
    case LayoutKind::kZigzag: return "zigzag";
    case LayoutKind::kStriped: return "striped";
  }
  return "unknown";
}

Status ParseLayout(const std::string& name, LayoutKind* out) {
  for (LayoutKind k : {LayoutKind::kContiguous, LayoutKind::kZigzag, LayoutKind::kStriped})
    if (name == LayoutName(k)) {
      *out = k;
      return Status::Ok();
    }
  return Status::Error("layout: unknown layout '" + name + "' (expected contiguous, zigzag or striped)");
}

Status Layout::Make(LayoutKind kind, int64_t global_len, int ring_size, Layout* out) {
  RW_REQUIRE(ring_size >= 1, "ring_size: must be >= 1, got " << ring_size);
  RW_REQUIRE(global_len >= 1, "seq_len: must be >= 1, got " << global_len);
  RW_REQUIRE(global_len % ring_size == 0,
             "seq_len: " << global_len << " does not split into " << ring_size << " equal shards");
  if (kind == LayoutKind::kZigzag)
    RW_REQUIRE(global_len % (2 * int64_t(ring_size)) == 0,
               "seq_len: zigzag needs " << 2 * ring_size << " equal chunks, and " << global_len
                                        << " is not a multiple of " << 2 * ring_size);
  out->kind_ = kind;
  out->len_ = global_len;
  out->ring_ = ring_size;
  return Status::Ok();
}

int64_t Layout::Global(int rank, int64_t i) const {
  const int64_t s = shard_len();
  switch (kind_) {
    case LayoutKind::kContiguous: return rank * s + i;
    case LayoutKind::kZigzag: {
      const int64_t c = s / 2;  // chunk length
      return i < c ? rank * c + i : (2 * int64_t(ring_) - 1 - rank) * c + (i - c);
    }
    case LayoutKind::kStriped: return i * ring_ + rank;
  }
  return -1;
}

std::pair<int, int64_t> Layout::Locate(int64_t g) const {
  const int64_t s = shard_len();
  switch (kind_) {
    case LayoutKind::kContiguous: return {int(g / s), g % s};
    case LayoutKind::kZigzag: {
      const int64_t c = s / 2, chunk = g / c;
      if (chunk < ring_) return {int(chunk), g % c};
      return {int(2 * int64_t(ring_) - 1 - chunk), c + g % c};
    }
    case LayoutKind::kStriped: return {int(g % ring_), g / ring_};
  }
  return {-1, -1};
}

std::vector<int64_t> Layout::GlobalIndices(int rank) const {
  std::vector<int64_t> out(shard_len());
  for (int64_t i = 0; i < shard_len(); ++i) out[i] = Global(rank, i);
  return out;
}

}  // namespace rw::runtime
