// In-process transport: the ranks of a ring are threads of one process. A fabric holds one FIFO channel
// per rank (from its previous rank) and one copy thread per rank that moves matched messages, so copies
// run beside the ranks' compute like a DMA engine would.
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "runtime/mesh.h"
#include "runtime/transport.h"

namespace rw::runtime {

class InprocFabric : public std::enable_shared_from_this<InprocFabric> {
 public:
  static std::shared_ptr<InprocFabric> Create(int ring_size, TransportOptions options = {});
  ~InprocFabric();
  // The endpoint of rank r (each rank's thread uses its own).
  std::unique_ptr<Transport> Endpoint(int rank);
  // Aborts every endpoint.
  void AbortAll(const std::string& reason);
  int size() const { return int(channels_.size()); }

  // Test hook: flip one payload byte of the next message delivered to `rank` (after the sender's CRC).
  void CorruptNextMessageTo(int rank);

 private:
  friend class InprocEndpoint;
  struct SendOp {
    MsgHeader header;
    const void* buf;
    std::shared_ptr<detail::Op> op;
  };
  struct RecvOp {
    MsgTag tag;
    void* buf;
    size_t bytes;
    std::shared_ptr<detail::Op> op;
  };
  struct Channel {  // messages from rank r-1 to rank r
    std::mutex mu;
    std::condition_variable cv;
    std::deque<SendOp> sends;
    std::deque<RecvOp> recvs;
    bool aborted = false;
    std::string reason;
    bool corrupt_next = false;
    bool stopping = false;  // the fabric is being destroyed: the mover fails what is queued and ends
    TransportStats stats;  // of the receiving side's channel
    std::thread mover;
  };

  explicit InprocFabric(int ring_size, TransportOptions options);
  void MoverLoop(int rank);
  void Abort(int rank, const std::string& reason);

  TransportOptions options_;
  std::vector<std::unique_ptr<Channel>> channels_;
};

// Every rank's rings of a mesh whose ranks are threads of this process: a fabric for the world ring and one
// for each sub-ring the mesh has (runtime/mesh.h: sp rings when there are several data groups, fsdp and
// replica rings when fsdp > 1). Aborting any rank's rings aborts those fabrics for every member.
std::vector<RankRings> InprocMesh(const Mesh& mesh, TransportOptions options = {});

}  // namespace rw::runtime
