#include "runtime/transport.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <utility>
#include <vector>

#include "runtime/crc32c.h"

namespace rw::runtime {

std::string MsgTag::ToString() const {
  std::ostringstream os;
  os << "(job " << job << ", epoch " << epoch << ", step " << step << ", layer " << layer << ", hop " << hop << ")";
  return os.str();
}

void MsgHeader::Seal() {
  header_crc = 0;
  header_crc = Crc32c(this, offsetof(MsgHeader, header_crc));
}

bool MsgHeader::Intact() const {
  return magic == kMagic && version == 1 && header_crc == Crc32c(this, offsetof(MsgHeader, header_crc));
}

HeaderAction ClassifyHeader(const void* data, size_t len, const MsgTag& expect, uint64_t bytes, MsgHeader* out) {
  *out = MsgHeader{};
  out->magic = 0;
  if (len != sizeof(MsgHeader)) return HeaderAction::kCorrupt;
  std::memcpy(out, data, sizeof(MsgHeader));
  if (!out->Intact()) return HeaderAction::kCorrupt;
  // A payload the receiver does not want is still received whole (UCX tag messages are): bounded, so a
  // header cannot make it allocate without limit.
  const uint64_t max_drop = std::max<uint64_t>(bytes > UINT64_MAX / 64 ? UINT64_MAX : 64 * bytes, uint64_t(64) << 20);
  if (out->tag.epoch < expect.epoch) return out->bytes > max_drop ? HeaderAction::kCorrupt : HeaderAction::kStale;
  if (!(out->tag == expect) || out->bytes != bytes)
    return out->bytes > max_drop ? HeaderAction::kCorrupt : HeaderAction::kRefuse;
  return HeaderAction::kAccept;
}

void detail::Op::Complete(Status st) {
  {
    std::lock_guard<std::mutex> lock(mu);
    if (done) return;
    done = true;
    status = std::move(st);
  }
  cv.notify_all();
}

bool Request::done() const {
  if (!op_) return true;
  std::lock_guard<std::mutex> lock(op_->mu);
  return op_->done;
}

Request& Request::operator=(Request&& o) noexcept {
  if (this != &o) {
    Settle();
    owner_ = std::exchange(o.owner_, nullptr);
    op_ = std::move(o.op_);
  }
  return *this;
}

void Request::Settle() noexcept {
  if (!op_ || !owner_ || done()) return;
  owner_->Abort("rank " + std::to_string(owner_->rank()) +
                " left a ring operation early (it failed) with a transfer in flight");
  // Both transports end every operation after an abort: at once in process; over UCX within seconds, or,
  // where a peer could still write into the buffer without our progress (RDMA, CMA), only when UCX ends it.
  // Until then the buffer is the transport's: wait (loudly), never hand it back in use.
  for (;;) {
    const Status st = owner_->Wait(*this);
    if (done()) break;
    std::fprintf(stderr, "transport: rank %d: a transfer has not ended after the ring's abort (%s); still waiting "
                 "before its buffer is freed\n", owner_->rank(), st.message().c_str());
  }
  op_.reset();
}

Status Transport::Wait(const Request& req) {
  RW_REQUIRE(req.valid(), "request: waiting on an empty request");
  auto op = req.op();
  std::unique_lock<std::mutex> lock(op->mu);
  if (!op->cv.wait_for(lock, options_.wait_timeout, [&] { return op->done; }))
    return Status::Error("transport: wait timed out after " + std::to_string(options_.wait_timeout.count()) +
                         " ms on rank " + std::to_string(rank()));
  return op->status;
}

Status Transport::AllReduceSum(float* data, size_t n, MsgTag tag) {
  RW_RETURN_IF_ERROR(ReduceScatterSum(data, n, tag));
  return AllGatherChunks(data, n, tag);
}

Status Transport::ReduceScatterSum(float* data, size_t n, MsgTag tag) {
  const int R = size(), r = rank();
  // An aborted ring fails here at every size: a ring of 1 sends nothing, so without this check a cancelled
  // job of one device would train on to its end.
  RW_REQUIRE(!aborted(), "transport: aborted (rank " << r << " of " << R << ")");
  if (R == 1 || n == 0) return Status::Ok();
  auto begin = [&](int c) { return ChunkBegin(n, R, c); };
  if (reduce_in_.size() < n / R + 1) reduce_in_.resize(n / R + 1);
  float* const incoming = reduce_in_.data();
  // At hop h, rank r sends chunk (r - h) and adds the received chunk (r - h - 1). After R-1 hops rank r
  // holds the full sum of chunk (r + 1) mod R, accumulated in ring order.
  for (int h = 0; h < R - 1; ++h) {
    const int cs = ((r - h) % R + R) % R, cr = ((r - h - 1) % R + R) % R;
    tag.hop = uint32_t(h);
    Request rr = RecvPrev(tag, incoming, (begin(cr + 1) - begin(cr)) * sizeof(float));
    Request sr = SendNext(tag, data + begin(cs), (begin(cs + 1) - begin(cs)) * sizeof(float));
    RW_RETURN_IF_ERROR(Wait(rr));
    RW_RETURN_IF_ERROR(Wait(sr));
    float* dst = data + begin(cr);
    for (size_t i = 0; i < begin(cr + 1) - begin(cr); ++i) dst[i] = incoming[i] + dst[i];
  }
  return Status::Ok();
}

Status Transport::AllGatherChunks(float* data, size_t n, MsgTag tag) {
  return AllGatherChunkBytes(reinterpret_cast<char*>(data), n, sizeof(float), tag);
}

Status Transport::AllGatherChunks(kernels::bf16* data, size_t n, MsgTag tag) {
  return AllGatherChunkBytes(reinterpret_cast<char*>(data), n, sizeof(kernels::bf16), tag);
}

Status Transport::AllGatherChunkBytes(char* data, size_t n, size_t es, MsgTag tag) {
  const int R = size(), r = rank();
  RW_REQUIRE(!aborted(), "transport: aborted (rank " << r << " of " << R << ")");
  if (R == 1 || n == 0) return Status::Ok();
  auto begin = [&](int c) { return ChunkBegin(n, R, c); };
  // At hop h, rank r passes on chunk (r + 1 - h), its own first, and receives chunk (r - h).
  for (int h = 0; h < R - 1; ++h) {
    const int cs = ((r + 1 - h) % R + R) % R, cr = ((r - h) % R + R) % R;
    tag.hop = uint32_t(R - 1 + h);
    Request rr = RecvPrev(tag, data + begin(cr) * es, (begin(cr + 1) - begin(cr)) * es);
    Request sr = SendNext(tag, data + begin(cs) * es, (begin(cs + 1) - begin(cs)) * es);
    RW_RETURN_IF_ERROR(Wait(rr));
    RW_RETURN_IF_ERROR(Wait(sr));
  }
  return Status::Ok();
}

Status Transport::GatherChunksToFirst(const float* owned, size_t n, float* all, MsgTag tag) {
  const int R = size(), r = rank();
  RW_REQUIRE(!aborted(), "transport: aborted (rank " << r << " of " << R << ")");
  auto begin = [&](int c) { return ChunkBegin(n, R, c); };
  auto len = [&](int c) { return begin(c + 1) - begin(c); };
  auto chunk_of = [&](int owner) { return (owner + 1) % R; };
  if (r == 0) {
    RW_REQUIRE(all != nullptr || n == 0, "transport: GatherChunksToFirst needs rank 0's buffer");
    std::copy(owned, owned + len(chunk_of(0)), all + begin(chunk_of(0)));
    // Rank R-1 passes on, at hop h, the chunk of rank R-1-h (its own first).
    for (int h = 0; h < R - 1; ++h) {
      const int c = chunk_of(R - 1 - h);
      tag.hop = uint32_t(h);
      RW_RETURN_IF_ERROR(Wait(RecvPrev(tag, all + begin(c), len(c) * sizeof(float))));
    }
    return Status::Ok();
  }
  // Rank r sends at hop h (h < r) the chunk of rank r - h: its own, then those rank r - 1 relays to it.
  std::vector<float> relay[2];
  const float* cur = owned;
  for (int h = 0; h < r; ++h) {
    tag.hop = uint32_t(h);
    Request rr;
    if (r - 1 - h >= 1) {
      const int c = chunk_of(r - 1 - h);
      relay[h % 2].resize(len(c));
      rr = RecvPrev(tag, relay[h % 2].data(), len(c) * sizeof(float));
    }
    Request sr = SendNext(tag, cur, len(chunk_of(r - h)) * sizeof(float));
    if (rr.valid()) RW_RETURN_IF_ERROR(Wait(rr));
    RW_RETURN_IF_ERROR(Wait(sr));
    cur = relay[h % 2].data();
  }
  return Status::Ok();
}

Status Transport::AllGather(const void* mine, size_t bytes, void* all, MsgTag tag) {
  const int R = size(), r = rank();
  RW_REQUIRE(!aborted(), "transport: aborted (rank " << r << " of " << R << ")");
  auto* out = static_cast<uint8_t*>(all);
  std::memcpy(out + size_t(r) * bytes, mine, bytes);
  // At hop h, rank r passes on the block of rank r - h and receives that of rank r - h - 1.
  for (int h = 0; h < R - 1; ++h) {
    const int cs = ((r - h) % R + R) % R, cr = ((r - h - 1) % R + R) % R;
    tag.hop = uint32_t(h);
    Request rr = RecvPrev(tag, out + size_t(cr) * bytes, bytes);
    Request sr = SendNext(tag, out + size_t(cs) * bytes, bytes);
    RW_RETURN_IF_ERROR(Wait(rr));
    RW_RETURN_IF_ERROR(Wait(sr));
  }
  return Status::Ok();
}

Status Transport::Barrier(MsgTag tag) {
  RW_REQUIRE(!aborted(), "transport: aborted (rank " << rank() << " of " << size() << ")");
  if (size() == 1) return Status::Ok();
  uint8_t token = 1, got = 0;
  for (uint32_t round = 0; round < 2; ++round) {
    tag.hop = round;
    if (rank() == 0) {
      RW_RETURN_IF_ERROR(Wait(SendNext(tag, &token, 1)));
      RW_RETURN_IF_ERROR(Wait(RecvPrev(tag, &got, 1)));
    } else {
      RW_RETURN_IF_ERROR(Wait(RecvPrev(tag, &got, 1)));
      RW_RETURN_IF_ERROR(Wait(SendNext(tag, &token, 1)));
    }
  }
  return Status::Ok();
}

}  // namespace rw::runtime
