// UCX transport: the ranks of a ring are processes (or nodes). UCP tag messages over whatever UCX selects
// on the machine (shared memory, TCP, RDMA); host memory. Connection by socket address: each rank listens
// on an ephemeral port of `listen_ip`, publishes address(), and connects to the next rank's address (which
// the control plane hands out at ring formation).
//
// One progress thread owns every UCX call (the worker runs single-threaded); it sleeps on the worker's
// event fd, so an idle transport costs no CPU. Each message is [MsgHeader | payload] in one tag message
// (an iov), so a receive sees the sender's tag, size and checksums and checks them against its own.
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
  std::string listen_ip = "127.0.0.1";
  uint64_t ring_id = 1;  // the UCP tag of this ring's messages
  TransportOptions transport;
};

class UcxTransport final : public Transport {
 public:
  // Starts the worker, the listener and the progress thread.
  static Status Create(const UcxOptions& opt, std::unique_ptr<UcxTransport>* out);
  ~UcxTransport() override;

  // "ip:port" that the previous rank connects to.
  std::string address() const;
  // Connects to the next rank and exchanges a hello around the ring link in both directions: returns once
  // this rank can send to the next one and has heard from the previous one.
  Status ConnectNext(const std::string& next_address, std::chrono::milliseconds timeout);

  int rank() const override;
  int size() const override;
  Request SendNext(const MsgTag& tag, const void* buf, size_t bytes) override;
  Request RecvPrev(const MsgTag& tag, void* buf, size_t bytes) override;
  void Abort(const std::string& reason) override;
  bool aborted() const override;
  TransportStats stats() const override;

  // Test hook: flip one payload byte of the next message this rank sends (after its checksum).
  void CorruptNextSend();

  struct Impl;

 private:
  explicit UcxTransport(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace rw::runtime
