// The data plane of a ring: asynchronous point-to-point transfers to the next rank and from the previous
// one, into caller-owned buffers, plus the collectives built on them.
//
// Every transfer carries a MsgTag (job, ring epoch, step, layer, hop) and its size. The channel from the
// previous rank is FIFO and matched strictly in order: the next message must carry exactly the tag and
// size of the next posted receive, else both sides get an error naming the two tags. A message from an
// older epoch than the receive's is dropped (never consumed) and counted: that is the fencing an elastic
// ring needs after it re-forms. Abort() fails every pending and future wait: in process at once, over UCX
// within seconds (docs/RELIABILITY.md has the cases).
//
// Implementations: inproc (threads of one process; runtime/inproc_transport.h), ucx (processes;
// runtime/ucx_transport.h), nccl (GPUs).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kernels/common.h"

namespace rw::runtime {

using kernels::Status;

struct MsgTag {
  uint64_t job = 0;
  uint32_t epoch = 0;
  uint32_t step = 0;
  uint32_t layer = 0;
  uint32_t hop = 0;
  bool operator==(const MsgTag& o) const {
    return job == o.job && epoch == o.epoch && step == o.step && layer == o.layer && hop == o.hop;
  }
  std::string ToString() const;
};

// What travels in front of every payload.
struct MsgHeader {
  uint32_t magic = kMagic;
  uint32_t version = 1;
  MsgTag tag;
  uint64_t bytes = 0;
  uint32_t payload_crc = 0;  // CRC32C of the payload when the sender checks payloads, else 0
  uint32_t header_crc = 0;   // CRC32C of everything above
  static constexpr uint32_t kMagic = 0x52574d31;  // "RWM1"
  void Seal();                // sets header_crc
  bool Intact() const;        // magic, version and header_crc agree
};

// What a receiver waiting for `expect` of `bytes` bytes does with the `len` bytes that arrived as a header
// (the wire is untrusted: a peer of another build, a corrupted link, or a hostile process):
//   kCorrupt  not a whole, intact header, or one that announces more than the receiver would ever drop
//             (max(64 x bytes, 64 MiB)): the receive fails;
//   kStale    an older epoch's message: drop it (its payload of header.bytes, when any) and wait again;
//   kRefuse   this epoch but another tag or size: consume its payload, then fail naming both;
//   kAccept   the expected message: receive its payload (when bytes > 0).
// *out is the header (zeroed unless whole). One decision for every transport that reads headers off a wire.
enum class HeaderAction { kCorrupt, kStale, kRefuse, kAccept };
HeaderAction ClassifyHeader(const void* data, size_t len, const MsgTag& expect, uint64_t bytes, MsgHeader* out);

namespace detail {
// Completion state of one posted operation, shared by the poster and the progress engine.
struct Op {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  Status status;
  void Complete(Status st);
};
}  // namespace detail

class Transport;

// Handle of a posted send or receive. Wait on it before touching the buffer again.
//
// The buffer belongs to the transport until the operation has ended, so a handle never lets go of one
// still in flight: a Request dropped (or assigned over) before its operation ended means its caller left
// early, on an error, and the ring cannot go on with a message missing; it aborts its transport, which
// ends every pending operation (Abort above), and waits for this one to end before the caller's
// buffers can be freed. Move-only: one handle per operation.
class Request {
 public:
  Request() = default;
  Request(Transport* owner, std::shared_ptr<detail::Op> op) : owner_(owner), op_(std::move(op)) {}
  Request(Request&& o) noexcept : owner_(o.owner_), op_(std::move(o.op_)) { o.owner_ = nullptr; }
  Request& operator=(Request&& o) noexcept;
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;
  ~Request() { Settle(); }

  bool valid() const { return op_ != nullptr; }
  std::shared_ptr<detail::Op> op() const { return op_; }
  bool done() const;

 private:
  void Settle() noexcept;  // see above; a no-op once the operation has ended
  Transport* owner_ = nullptr;
  std::shared_ptr<detail::Op> op_;
};

struct TransportOptions {
  bool check_payload = false;  // CRC32C every payload (sender computes, receiver verifies)
  std::chrono::milliseconds wait_timeout{120000};  // a Wait that exceeds this fails: no silent hang
};

struct TransportStats {
  uint64_t bytes_sent = 0;
  uint64_t messages_sent = 0;
  uint64_t stale_dropped = 0;  // messages of an older epoch dropped unconsumed
};

class Transport {
 public:
  virtual ~Transport() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  int next() const { return (rank() + 1) % size(); }
  int prev() const { return (rank() + size() - 1) % size(); }

  // Posts a send of `bytes` at `buf` to the next rank. `buf` must stay valid until the Request completes.
  virtual Request SendNext(const MsgTag& tag, const void* buf, size_t bytes) = 0;
  // Posts a receive of exactly `bytes` into `buf` from the previous rank.
  virtual Request RecvPrev(const MsgTag& tag, void* buf, size_t bytes) = 0;
  // Blocks until the request completes; its error, or a timeout or abort error.
  virtual Status Wait(const Request& req);
  // Fails every pending and future operation on this endpoint (and tells the peers where it can).
  virtual void Abort(const std::string& reason) = 0;
  virtual bool aborted() const = 0;
  virtual TransportStats stats() const = 0;

  // Deterministic sum over the ring, in place: ReduceScatterSum then AllGatherChunks. Chunk c is summed in
  // ring order starting at rank c, ((x_c + x_c+1) + x_c+2) + ..., whatever the timing, so equal inputs give
  // equal bits.
  Status AllReduceSum(float* data, size_t n, MsgTag tag);

  // The R chunks of an n-element vector: chunk c is [ChunkBegin(n, R, c), ChunkBegin(n, R, c + 1)).
  static size_t ChunkBegin(size_t n, int R, int c) { return n * size_t(c) / size_t(R); }
  // The chunk this rank holds summed after ReduceScatterSum (and contributes to AllGatherChunks).
  int OwnedChunk() const { return (rank() + 1) % size(); }
  // The first half of AllReduceSum (hops 0 .. R-2): afterwards this rank's OwnedChunk of `data` holds the
  // ring's sum; the rest of `data` holds partial sums.
  Status ReduceScatterSum(float* data, size_t n, MsgTag tag);
  // The second half (hops R-1 .. 2R-3): every rank's OwnedChunk of `data` to every rank.
  Status AllGatherChunks(float* data, size_t n, MsgTag tag);
  // The same of a bf16 vector (half the bytes): sharded weights gathered in the compute precision.
  Status AllGatherChunks(kernels::bf16* data, size_t n, MsgTag tag);
  // Every rank's OwnedChunk (`owned`, its length) into `all` (n elements) on rank 0 only, relayed around the
  // ring; other ranks need no n-sized buffer (two chunk-sized relay buffers). `all` is ignored off rank 0.
  Status GatherChunksToFirst(const float* owned, size_t n, float* all, MsgTag tag);
  // Every rank's `bytes` at `mine`, in rank order, into `all` (size() * bytes) on every rank.
  Status AllGather(const void* mine, size_t bytes, void* all, MsgTag tag);
  // Returns once every rank has entered it (a token goes twice around the ring).
  Status Barrier(MsgTag tag);

 protected:
  TransportOptions options_;
  std::string abort_reason_;

 private:
  Status AllGatherChunkBytes(char* data, size_t n, size_t elem_bytes, MsgTag tag);
  // ReduceScatterSum's receive buffer, one chunk, kept across calls so a step's gradient sum allocates (and
  // page-faults) nothing. One collective runs on an endpoint at a time (their tags are matched in order).
  std::vector<float> reduce_in_;
};

}  // namespace rw::runtime
