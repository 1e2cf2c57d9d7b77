// UCX transport: the ranks of a ring are processes (or nodes). UCP tag messages over whatever UCX selects
// on the machine (shared memory, CMA, TCP, RDMA); host memory. Each rank publishes address() (its UCP worker
// address, hex) and connects to its neighbours' addresses, which the control plane hands out at ring
// formation. Worker addresses, not socket addresses: UCX's client-server mode in the Debian build leaves
// the shared-memory transports out and carries same-host rings over TCP.
//
// One progress thread owns every UCX call (the worker runs single-threaded); it polls while operations are
// outstanding and naps when idle (see Loop for why not event fds). Each message is a MsgHeader then its payload, as two UCP tag
// messages (contiguous buffers keep UCX's zero-copy protocols): a receive checks the sender's tag, size
// and checksums against its own before it takes the payload.
// Receives are matched one at a time, in posting order: the channel is FIFO like the in-process one.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "runtime/transport.h"

namespace rw::runtime {

struct UcxOptions {
  int rank = 0;
  int size = 1;
  std::string net_devices = "lo";  // UCX_NET_DEVICES unless set in the environment; "all" on a cluster
  // UCX peer-failure handling on the endpoints: a crashed neighbour fails the waits on it at once. UCX 1.13
  // offers it on TCP/RDMA but not on shared memory, so it costs same-host rings their fastest path; off by
  // default, where the control plane's heartbeats detect a lost rank and call Abort().
  bool detect_peer_failure = false;
  uint64_t ring_id = 1;  // the UCP tag of this ring's messages, below 2^63 (FormRing allocates one per ring)
  TransportOptions transport;
};

class UcxTransport final : public Transport {
 public:
  // Starts the worker, the listener and the progress thread.
  static Status Create(const UcxOptions& opt, std::unique_ptr<UcxTransport>* out);
  ~UcxTransport() override;

  // This rank's UCP worker address, hex: what its neighbours connect to.
  std::string address() const;
  // Connects to both neighbours and exchanges a hello around the ring: returns once this rank can send to
  // the next one and has heard from the previous one.
  Status ConnectRing(const std::string& prev_address, const std::string& next_address,
                     std::chrono::milliseconds timeout);

  int rank() const override;
  int size() const override;
  Request SendNext(const MsgTag& tag, const void* buf, size_t bytes) override;
  Request RecvPrev(const MsgTag& tag, void* buf, size_t bytes) override;
  void Abort(const std::string& reason) override;
  bool aborted() const override;
  TransportStats stats() const override;

  // Test hook: flip one payload byte of the next message this rank sends (after its checksum).
  void CorruptNextSend();
  // Test hook: a receive that its cancel does not end is abandoned at once, without closing the endpoints
  // first (the last resort of an abort, which the partition drill reaches and no loopback case does).
  void AbandonStuckReceivesForTest();

  struct Impl;

 private:
  explicit UcxTransport(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace rw::runtime
