#include "runtime/inproc_transport.h"

#include <cstring>
#include <map>

#include "runtime/crc32c.h"

namespace rw::runtime {

class InprocEndpoint final : public Transport {
 public:
  InprocEndpoint(std::shared_ptr<InprocFabric> fabric, int rank) : fabric_(std::move(fabric)), rank_(rank) {
    options_ = fabric_->options_;
  }
  int rank() const override { return rank_; }
  int size() const override { return fabric_->size(); }

  Request SendNext(const MsgTag& tag, const void* buf, size_t bytes) override {
    auto op = std::make_shared<detail::Op>();
    InprocFabric::SendOp s{MsgHeader{}, buf, op};
    s.header.tag = tag;
    s.header.bytes = bytes;
    if (options_.check_payload) s.header.payload_crc = Crc32c(buf, bytes);
    s.header.Seal();
    auto& ch = *fabric_->channels_[next()];
    {
      std::lock_guard<std::mutex> lock(ch.mu);
      if (ch.aborted) {
        op->Complete(Status::Error("transport: aborted: " + ch.reason));
        return Request(this, op);
      }
      ch.sends.push_back(std::move(s));
    }
    ch.cv.notify_all();
    stats_.bytes_sent += bytes;
    stats_.messages_sent += 1;
    return Request(this, op);
  }

  Request RecvPrev(const MsgTag& tag, void* buf, size_t bytes) override {
    auto op = std::make_shared<detail::Op>();
    auto& ch = *fabric_->channels_[rank_];
    {
      std::lock_guard<std::mutex> lock(ch.mu);
      if (ch.aborted) {
        op->Complete(Status::Error("transport: aborted: " + ch.reason));
        return Request(this, op);
      }
      ch.recvs.push_back(InprocFabric::RecvOp{tag, buf, bytes, op});
    }
    ch.cv.notify_all();
    return Request(this, op);
  }

  void Abort(const std::string& reason) override { fabric_->AbortAll(reason); }

  bool aborted() const override {
    auto& ch = *fabric_->channels_[rank_];
    std::lock_guard<std::mutex> lock(ch.mu);
    return ch.aborted;
  }

  TransportStats stats() const override {
    TransportStats s = stats_;
    auto& ch = *fabric_->channels_[rank_];
    std::lock_guard<std::mutex> lock(ch.mu);
    s.stale_dropped = ch.stats.stale_dropped;
    return s;
  }

 private:
  std::shared_ptr<InprocFabric> fabric_;
  int rank_;
  TransportStats stats_;
};

std::shared_ptr<InprocFabric> InprocFabric::Create(int ring_size, TransportOptions options) {
  RW_CHECK(ring_size >= 1) << "ring size " << ring_size;
  auto f = std::shared_ptr<InprocFabric>(new InprocFabric(ring_size, options));
  for (int r = 0; r < ring_size; ++r) f->channels_[r]->mover = std::thread([raw = f.get(), r] { raw->MoverLoop(r); });
  return f;
}

InprocFabric::InprocFabric(int ring_size, TransportOptions options) : options_(options) {
  for (int r = 0; r < ring_size; ++r) channels_.push_back(std::make_unique<Channel>());
}

InprocFabric::~InprocFabric() {
  for (auto& ch : channels_) {
    {
      std::lock_guard<std::mutex> lock(ch->mu);
      ch->stopping = true;  // under this channel's mutex, the one its mover reads it under
    }
    ch->cv.notify_all();
  }
  for (auto& ch : channels_)
    if (ch->mover.joinable()) ch->mover.join();
}

std::unique_ptr<Transport> InprocFabric::Endpoint(int rank) {
  RW_CHECK(rank >= 0 && rank < size()) << "rank " << rank << " of " << size();
  return std::make_unique<InprocEndpoint>(shared_from_this(), rank);
}

void InprocFabric::AbortAll(const std::string& reason) {
  for (int r = 0; r < size(); ++r) Abort(r, reason);
}

void InprocFabric::Abort(int rank, const std::string& reason) {
  auto& ch = *channels_[rank];
  {
    std::lock_guard<std::mutex> lock(ch.mu);
    if (!ch.aborted) {
      ch.aborted = true;
      ch.reason = reason;
    }
  }
  ch.cv.notify_all();
}

void InprocFabric::CorruptNextMessageTo(int rank) {
  std::lock_guard<std::mutex> lock(channels_[rank]->mu);
  channels_[rank]->corrupt_next = true;
}

std::vector<RankRings> InprocMesh(const Mesh& mesh, TransportOptions options) {
  const int W = int(mesh.world());
  auto world = InprocFabric::Create(W, options);
  std::vector<RankRings> rings(static_cast<size_t>(W));
  // A sub-ring's fabric is made by its first member and found by the others through it.
  std::map<int, std::shared_ptr<InprocFabric>> sp, fsdp, replica;
  auto endpoint = [&](std::map<int, std::shared_ptr<InprocFabric>>& fabrics, int first, int size, int at) {
    auto& f = fabrics[first];
    if (!f) f = InprocFabric::Create(size, options);
    return f->Endpoint(at);
  };
  for (int r = 0; r < W; ++r) {
    RankRings& x = rings[size_t(r)];
    x.world = world->Endpoint(r);
    if (mesh.sp < W) x.sp = endpoint(sp, int(mesh.group_of(r) * mesh.sp), int(mesh.sp), int(mesh.sp_rank(r)));
    if (mesh.fsdp > 1) {
      x.fsdp = endpoint(fsdp, mesh.FsdpRing(r).front(), int(mesh.fsdp), int(mesh.fsdp_rank(r)));
      if (mesh.dp * mesh.sp > 1)
        x.replica = endpoint(replica, mesh.ReplicaRing(r).front(), int(mesh.dp * mesh.sp), int(mesh.replica_rank(r)));
    }
  }
  return rings;
}

void InprocFabric::MoverLoop(int rank) {
  Channel& ch = *channels_[rank];
  const int from = (rank + size() - 1) % size();
  std::unique_lock<std::mutex> lock(ch.mu);
  for (;;) {
    ch.cv.wait(lock, [&] {
      if (ch.stopping) return true;
      if (ch.aborted) return !ch.sends.empty() || !ch.recvs.empty();  // fail what is queued, then sleep
      return !ch.sends.empty() && !ch.recvs.empty();
    });
    if (ch.stopping || ch.aborted) {
      const Status err = Status::Error("transport: aborted: " + (ch.aborted ? ch.reason : std::string("shut down")));
      for (auto& s : ch.sends) s.op->Complete(err);
      for (auto& r : ch.recvs) r.op->Complete(err);
      ch.sends.clear();
      ch.recvs.clear();
      if (ch.stopping) return;
      continue;  // an aborted channel keeps failing new posts (they check `aborted`)
    }
    SendOp s = std::move(ch.sends.front());
    ch.sends.pop_front();
    if (s.header.tag.epoch < ch.recvs.front().tag.epoch) {  // stale: an old ring's message, never consumed
      ch.stats.stale_dropped += 1;
      s.op->Complete(Status::Ok());
      continue;
    }
    RecvOp v = std::move(ch.recvs.front());
    ch.recvs.pop_front();
    if (!s.header.Intact() || !(s.header.tag == v.tag) || s.header.bytes != v.bytes) {
      const Status err = Status::Error(
          "transport: rank " + std::to_string(rank) + " expected " + v.tag.ToString() + " of " +
          std::to_string(v.bytes) + " bytes from rank " + std::to_string(from) + ", got " +
          (s.header.Intact() ? s.header.tag.ToString() + " of " + std::to_string(s.header.bytes) + " bytes"
                             : std::string("a corrupt header")));
      s.op->Complete(err);
      v.op->Complete(err);
      continue;
    }
    const bool corrupt = std::exchange(ch.corrupt_next, false);
    lock.unlock();
    if (v.bytes) std::memcpy(v.buf, s.buf, v.bytes);
    if (corrupt && v.bytes) static_cast<unsigned char*>(v.buf)[v.bytes / 2] ^= 0x40;
    Status st;
    if (options_.check_payload && Crc32c(v.buf, v.bytes) != s.header.payload_crc)
      st = Status::Error("transport: payload checksum mismatch on " + v.tag.ToString() + " from rank " +
                         std::to_string(from) + " to rank " + std::to_string(rank));
    s.op->Complete(st);
    v.op->Complete(st);
    lock.lock();
  }
}

}  // namespace rw::runtime
