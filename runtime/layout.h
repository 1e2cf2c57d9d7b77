// Sequence layouts: which global token each rank's local row holds.
//
// L global length, R ring size, S = L / R rows per rank.
//   contiguous: rank r holds [r S, (r + 1) S)
//   zigzag:     2R chunks of C = L / 2R; rank r holds chunks r and 2R - 1 - r (balances causal work: each
//               rank gets one early and one late chunk)
//   striped:    token t on rank t mod R, local row t / R
// The causal mask uses these *global* indices; RoPE uses positions, packing uses segment ids: the data
// path turns global indices into both.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kernels/common.h"

namespace rw::runtime {

using kernels::Status;

enum class LayoutKind { kContiguous, kZigzag, kStriped };

const char* LayoutName(LayoutKind k);
// Parses "contiguous" | "zigzag" | "striped"; the error names the value.
Status ParseLayout(const std::string& name, LayoutKind* out);

class Layout {
 public:
  // Checks that L splits into equal shards (zigzag: into 2R equal chunks); the message names the field.
  static Status Make(LayoutKind kind, int64_t global_len, int ring_size, Layout* out);

  LayoutKind kind() const { return kind_; }
  int64_t global_len() const { return len_; }
  int ring_size() const { return ring_; }
  int64_t shard_len() const { return len_ / ring_; }

  // Global index of local row i on rank r.
  int64_t Global(int rank, int64_t i) const;
  // (rank, local row) of global index g.
  std::pair<int, int64_t> Locate(int64_t g) const;
  // Global indices of all of rank r's rows, in local order.
  std::vector<int64_t> GlobalIndices(int rank) const;

 private:
  LayoutKind kind_ = LayoutKind::kContiguous;
  int64_t len_ = 0;
  int ring_ = 1;
};

}  // namespace rw::runtime
