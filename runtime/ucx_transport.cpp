#include "runtime/ucx_transport.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <list>
#include <mutex>
#include <thread>
#include <vector>

#include "runtime/crc32c.h"

namespace rw::runtime {

namespace {
std::string UcsError(const std::string& what, ucs_status_t st) { return std::string(what) + ": " + ucs_status_string(st); }
}  // namespace

struct UcxTransport::Impl {
  UcxOptions opt;
  ucp_context_h context = nullptr;
  ucp_worker_h worker = nullptr;
  ucp_listener_h listener = nullptr;
  ucp_ep_h ep_next = nullptr;
  ucp_ep_h ep_prev = nullptr;  // created from the previous rank's connection request
  std::string addr;
  int efd = -1, wake_fd = -1, epfd = -1;
  std::thread progress;

  // Commands for the progress thread (the only thread that touches UCX).
  std::mutex cmd_mu;
  std::deque<std::function<void()>> cmds;
  bool stopping = false;

  std::atomic<bool> aborted{false};
  std::mutex abort_mu;
  std::string abort_reason;

  struct SendCtx {
    MsgHeader header;
    ucp_dt_iov_t iov[2];
    std::shared_ptr<detail::Op> op;
    std::vector<unsigned char> corrupted;  // test hook: a damaged copy of the payload
    Impl* self;
  };
  struct RecvCtx {
    MsgHeader header;
    ucp_dt_iov_t iov[2];
    MsgTag expect;
    void* buf;
    size_t bytes;
    std::shared_ptr<detail::Op> op;
    Impl* self;
  };
  std::list<SendCtx*> sends_in_flight;  // progress thread only
  std::deque<RecvCtx*> recv_queue;      // progress thread only; front is posted to UCX
  void* recv_request = nullptr;         // the posted front receive
  bool recv_posted = false;
  bool failing = false;  // shutting down or aborted: queued receives fail instead of being posted
  Status fail_status;

  // An abort travels around the ring as a message of its own tag, always awaited by one posted receive,
  // so every rank learns of it in R hops instead of waiting for UCX to notice a closed peer.
  char abort_in[256] = {};
  void* abort_request = nullptr;
  uint64_t AbortTag() const { return opt.ring_id ^ (uint64_t(1) << 63); }

  std::atomic<uint64_t> bytes_sent{0}, messages_sent{0}, stale_dropped{0};
  std::atomic<bool> corrupt_next{false};

  void Run(std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> lock(cmd_mu);
      cmds.push_back(std::move(fn));
    }
    const uint64_t one = 1;
    (void)!write(wake_fd, &one, sizeof(one));
  }

  Status AbortStatus() {
    std::lock_guard<std::mutex> lock(abort_mu);
    return Status::Error("transport: aborted: " + abort_reason);
  }

  // --- progress thread ---------------------------------------------------------------------------------
  void Loop() {
    epoll_event evs[2];
    for (;;) {
      std::deque<std::function<void()>> todo;
      bool stop;
      {
        std::lock_guard<std::mutex> lock(cmd_mu);
        todo.swap(cmds);
        stop = stopping;
      }
      for (auto& fn : todo) fn();
      while (ucp_worker_progress(worker) != 0) {
      }
      PostFrontRecv();
      if (stop) return;
      if (ucp_worker_arm(worker) == UCS_ERR_BUSY) continue;
      const int n = epoll_wait(epfd, evs, 2, 100);
      for (int i = 0; i < n; ++i)
        if (evs[i].data.fd == wake_fd) {
          uint64_t v;
          (void)!read(wake_fd, &v, sizeof(v));
        }
    }
  }

  static void SendDone(void* request, ucs_status_t status, void* user) {
    auto* ctx = static_cast<SendCtx*>(user);
    ctx->op->Complete(status == UCS_OK ? Status::Ok() : Status::Error(UcsError("transport: send failed", status)));
    ctx->self->sends_in_flight.remove(ctx);
    delete ctx;
    if (request) ucp_request_free(request);
  }

  void PostSend(SendCtx* ctx) {
    if (aborted || !ep_next || next_lost) {
      ctx->op->Complete(aborted  ? AbortStatus()
                        : ep_next ? Status::Error("transport: the next rank is gone (" + lost_reason + ")")
                                  : Status::Error("transport: not connected to the next rank"));
      delete ctx;
      return;
    }
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_DATATYPE |
                     UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
    p.cb.send = &SendDone;
    p.user_data = ctx;
    p.datatype = ucp_dt_make_iov();
    sends_in_flight.push_back(ctx);
    ucs_status_ptr_t r = ucp_tag_send_nbx(ep_next, ctx->iov, 2, opt.ring_id, &p);
    if (UCS_PTR_IS_ERR(r)) SendDone(nullptr, UCS_PTR_STATUS(r), ctx);
  }

  static void RecvDone(void* request, ucs_status_t status, const ucp_tag_recv_info_t* info, void* user) {
    auto* ctx = static_cast<RecvCtx*>(user);
    Impl* self = ctx->self;
    if (request) ucp_request_free(request);
    self->recv_posted = false;
    self->recv_request = nullptr;
    Status st;
    if (status == UCS_ERR_MESSAGE_TRUNCATED) {
      st = Status::Error("transport: rank " + std::to_string(self->opt.rank) + " expected " + ctx->expect.ToString() +
                         " of " + std::to_string(ctx->bytes) + " bytes, got a larger message");
    } else if (status != UCS_OK) {
      st = self->failing     ? self->fail_status
           : self->prev_lost ? Status::Error("transport: rank " + std::to_string(self->opt.rank) + " waits on " +
                                             ctx->expect.ToString() + " but the previous rank is gone (" +
                                             self->lost_reason + ")")
                             : Status::Error(UcsError("transport: receive failed", status));
    } else if (!ctx->header.Intact()) {
      st = Status::Error("transport: corrupt message header from rank " + std::to_string((self->opt.rank + self->opt.size - 1) % self->opt.size));
    } else if (ctx->header.tag.epoch < ctx->expect.epoch) {
      self->stale_dropped += 1;  // an old ring's message: drop it and receive again into the same buffers
      self->PostFrontRecv();
      return;
    } else if (!(ctx->header.tag == ctx->expect) || ctx->header.bytes != ctx->bytes ||
               info->length != sizeof(MsgHeader) + ctx->bytes) {
      st = Status::Error("transport: rank " + std::to_string(self->opt.rank) + " expected " + ctx->expect.ToString() +
                         " of " + std::to_string(ctx->bytes) + " bytes from rank " +
                         std::to_string((self->opt.rank + self->opt.size - 1) % self->opt.size) + ", got " +
                         ctx->header.tag.ToString() + " of " + std::to_string(ctx->header.bytes) + " bytes");
    } else if (self->opt.transport.check_payload && Crc32c(ctx->buf, ctx->bytes) != ctx->header.payload_crc) {
      st = Status::Error("transport: payload checksum mismatch on " + ctx->expect.ToString() + " to rank " +
                         std::to_string(self->opt.rank));
    }
    ctx->op->Complete(st);
    self->recv_queue.pop_front();
    delete ctx;
    self->PostFrontRecv();
  }

  void PostFrontRecv() {
    if (recv_posted) return;
    if (failing) {  // nothing is posted: fail the queue without touching UCX
      while (!recv_queue.empty()) {
        recv_queue.front()->op->Complete(fail_status);
        delete recv_queue.front();
        recv_queue.pop_front();
      }
      return;
    }
    if (recv_queue.empty()) return;
    RecvCtx* ctx = recv_queue.front();
    if (prev_lost && !MessageWaiting()) {
      ctx->op->Complete(Status::Error("transport: rank " + std::to_string(opt.rank) + " waits on " +
                                      ctx->expect.ToString() + " but the previous rank is gone (" + lost_reason + ")"));
      recv_queue.pop_front();
      delete ctx;
      PostFrontRecv();
      return;
    }
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_DATATYPE |
                     UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
    p.cb.recv = &RecvDone;
    p.user_data = ctx;
    p.datatype = ucp_dt_make_iov();
    recv_posted = true;
    ucs_status_ptr_t r = ucp_tag_recv_nbx(worker, ctx->iov, 2, opt.ring_id, ~uint64_t(0), &p);
    if (UCS_PTR_IS_ERR(r)) {
      RecvDone(nullptr, UCS_PTR_STATUS(r), nullptr, ctx);
      return;
    }
    recv_request = r;
  }

  // Fails every queued receive. Runs as a command of the progress thread, never inside a UCX callback
  // (it drives ucp_worker_progress, which must not be re-entered).
  void FailAll(const Status& st) {
    failing = true;
    fail_status = st;
    if (recv_posted && recv_request) {
      ucp_request_cancel(worker, recv_request);  // its callback runs with UCS_ERR_CANCELED
      while (recv_posted) ucp_worker_progress(worker);
    }
    PostFrontRecv();
  }

  // A neighbour's endpoint failed: it crashed, or it finished and closed. That alone is no error (a rank
  // that is done leaves); what fails is an operation that now cannot complete: a receive from a lost
  // previous rank with no message of it left in UCX's unexpected queue, or a send to a lost next rank.
  static void EpError(void* arg, ucp_ep_h ep, ucs_status_t status) {
    auto* self = static_cast<Impl*>(arg);
    self->Run([self, ep, status] { self->OnPeerLost(ep, status); });  // not inside the callback
  }

  bool prev_lost = false, next_lost = false;
  std::string lost_reason;

  void OnPeerLost(ucp_ep_h ep, ucs_status_t status) {
    lost_reason = UcsError("peer lost", status);
    if (ep == ep_next) next_lost = true;
    if (ep == ep_prev) {
      prev_lost = true;
      if (recv_posted && recv_request) {  // posted and unmatched: its message can no longer come
        ucp_request_cancel(worker, recv_request);
        while (recv_posted) ucp_worker_progress(worker);
      }
    }
  }

  // True when a message of this ring is waiting in UCX's unexpected queue.
  bool MessageWaiting() {
    ucp_tag_recv_info_t info;
    return ucp_tag_probe_nb(worker, opt.ring_id, ~uint64_t(0), 0, &info) != nullptr;
  }

  void DoAbort(const std::string& reason) {  // progress thread
    {
      std::lock_guard<std::mutex> lock(abort_mu);
      if (aborted) return;
      abort_reason = reason;
      aborted = true;
    }
    const Status st = AbortStatus();
    SendAbort(reason);
    FailAll(st);
    // Force-closing the endpoints cancels sends in flight (their callbacks run with an error) and tells the
    // peers' error handlers.
    for (ucp_ep_h* ep : {&ep_next, &ep_prev}) {
      if (!*ep) continue;
      ucp_request_param_t p{};
      p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
      p.flags = UCP_EP_CLOSE_FLAG_FORCE;
      ucs_status_ptr_t r = ucp_ep_close_nbx(*ep, &p);
      if (UCS_PTR_IS_PTR(r)) {
        while (ucp_request_check_status(r) == UCS_INPROGRESS) ucp_worker_progress(worker);
        ucp_request_free(r);
      }
      *ep = nullptr;
    }
    for (SendCtx* ctx : sends_in_flight) ctx->op->Complete(st);
  }

  static void AbortArrived(void* request, ucs_status_t status, const ucp_tag_recv_info_t*, void* user) {
    auto* self = static_cast<Impl*>(user);
    if (request) ucp_request_free(request);
    self->abort_request = nullptr;
    if (status != UCS_OK) return;  // cancelled at shutdown
    std::string reason(self->abort_in, strnlen(self->abort_in, sizeof(self->abort_in)));
    self->Run([self, reason] { self->DoAbort(reason); });
  }

  void PostAbortRecv() {
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
    p.cb.recv = &AbortArrived;
    p.user_data = this;
    ucs_status_ptr_t r = ucp_tag_recv_nbx(worker, abort_in, sizeof(abort_in), AbortTag(), ~uint64_t(0), &p);
    abort_request = UCS_PTR_IS_PTR(r) ? r : nullptr;
  }

  // Tells the next rank (bounded wait: a dead peer must not hold the abort up).
  void SendAbort(const std::string& reason) {
    if (!ep_next) return;
    char msg[256] = {};
    std::strncpy(msg, reason.c_str(), sizeof(msg) - 1);
    ucp_request_param_t p{};
    ucs_status_ptr_t r = ucp_tag_send_nbx(ep_next, msg, sizeof(msg), AbortTag(), &p);
    if (!UCS_PTR_IS_PTR(r)) return;
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
    while (ucp_request_check_status(r) == UCS_INPROGRESS && std::chrono::steady_clock::now() < until)
      ucp_worker_progress(worker);
    if (ucp_request_check_status(r) == UCS_INPROGRESS) ucp_request_cancel(worker, r);
    ucp_request_free(r);
  }

  void CancelAbortRecv() {
    if (!abort_request) return;
    ucp_request_cancel(worker, abort_request);
    while (abort_request) ucp_worker_progress(worker);
  }

  static void OnConnRequest(ucp_conn_request_h req, void* arg) {
    auto* self = static_cast<Impl*>(arg);
    if (self->ep_prev) {  // one ring link per listener: a second connection is refused
      ucp_listener_reject(self->listener, req);
      return;
    }
    ucp_ep_params_t ep{};
    ep.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLER |
                    UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    ep.conn_request = req;
    ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep.err_handler.cb = &EpError;
    ep.err_handler.arg = self;
    if (ucp_ep_create(self->worker, &ep, &self->ep_prev) != UCS_OK) self->ep_prev = nullptr;
  }
};

Status UcxTransport::Create(const UcxOptions& opt, std::unique_ptr<UcxTransport>* out) {
  RW_REQUIRE(opt.size >= 1 && opt.rank >= 0 && opt.rank < opt.size,
             "rank: " << opt.rank << " is not a rank of a ring of " << opt.size);
  auto impl = std::make_unique<Impl>();
  impl->opt = opt;
  ucp_config_t* config = nullptr;
  ucs_status_t st = ucp_config_read(nullptr, nullptr, &config);
  RW_REQUIRE(st == UCS_OK, UcsError("ucx: reading the configuration", st));
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_TAG | UCP_FEATURE_WAKEUP;
  st = ucp_init(&params, config, &impl->context);
  ucp_config_release(config);
  RW_REQUIRE(st == UCS_OK, UcsError("ucx: ucp_init", st));
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SINGLE;  // only the progress thread touches it
  st = ucp_worker_create(impl->context, &wp, &impl->worker);
  RW_REQUIRE(st == UCS_OK, UcsError("ucx: ucp_worker_create", st));
  st = ucp_worker_get_efd(impl->worker, &impl->efd);
  RW_REQUIRE(st == UCS_OK, UcsError("ucx: ucp_worker_get_efd", st));

  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = 0;  // ephemeral
  RW_REQUIRE(inet_pton(AF_INET, opt.listen_ip.c_str(), &sa.sin_addr) == 1,
             "listen_ip: '" << opt.listen_ip << "' is not an IPv4 address");
  ucp_listener_params_t lp{};
  lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
  lp.sockaddr.addr = reinterpret_cast<const sockaddr*>(&sa);
  lp.sockaddr.addrlen = sizeof(sa);
  lp.conn_handler.cb = &Impl::OnConnRequest;
  lp.conn_handler.arg = impl.get();
  st = ucp_listener_create(impl->worker, &lp, &impl->listener);
  RW_REQUIRE(st == UCS_OK, UcsError("ucx: listening on " + opt.listen_ip, st));
  ucp_listener_attr_t la{};
  la.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
  st = ucp_listener_query(impl->listener, &la);
  RW_REQUIRE(st == UCS_OK, UcsError("ucx: ucp_listener_query", st));
  const auto* bound = reinterpret_cast<const sockaddr_in*>(&la.sockaddr);
  impl->addr = opt.listen_ip + ":" + std::to_string(ntohs(bound->sin_port));

  impl->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  impl->epfd = epoll_create1(EPOLL_CLOEXEC);
  RW_REQUIRE(impl->wake_fd >= 0 && impl->epfd >= 0, "ucx: creating the progress thread's event fds failed");
  for (int fd : {impl->efd, impl->wake_fd}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    epoll_ctl(impl->epfd, EPOLL_CTL_ADD, fd, &ev);
  }
  impl->PostAbortRecv();
  Impl* raw = impl.get();
  impl->progress = std::thread([raw] { raw->Loop(); });
  out->reset(new UcxTransport(std::move(impl)));
  (*out)->options_ = opt.transport;
  return Status::Ok();
}

UcxTransport::UcxTransport(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

UcxTransport::~UcxTransport() {
  Impl* im = impl_.get();
  // Graceful close (flush) of the endpoints when healthy, then stop the progress thread.
  std::promise<void> closed;
  auto done = closed.get_future();
  im->Run([im, &closed] {
    if (!im->aborted) {
      for (ucp_ep_h* ep : {&im->ep_next, &im->ep_prev}) {
        if (!*ep) continue;
        ucp_request_param_t p{};
        if ((ep == &im->ep_next && im->next_lost) || (ep == &im->ep_prev && im->prev_lost)) {
          p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;  // a failed endpoint can only be force-closed
          p.flags = UCP_EP_CLOSE_FLAG_FORCE;
        }
        ucs_status_ptr_t r = ucp_ep_close_nbx(*ep, &p);
        if (UCS_PTR_IS_PTR(r)) {
          const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
          while (ucp_request_check_status(r) == UCS_INPROGRESS && std::chrono::steady_clock::now() < until)
            ucp_worker_progress(im->worker);
          if (ucp_request_check_status(r) == UCS_INPROGRESS) ucp_request_cancel(im->worker, r);
          ucp_request_free(r);
        }
        *ep = nullptr;
      }
    }
    im->FailAll(Status::Error("transport: shut down"));
    im->CancelAbortRecv();
    closed.set_value();
  });
  done.wait();
  {
    std::lock_guard<std::mutex> lock(im->cmd_mu);
    im->stopping = true;
  }
  const uint64_t one = 1;
  (void)!write(im->wake_fd, &one, sizeof(one));
  im->progress.join();
  if (im->listener) ucp_listener_destroy(im->listener);
  if (im->worker) ucp_worker_destroy(im->worker);
  if (im->context) ucp_cleanup(im->context);
  close(im->wake_fd);
  close(im->epfd);
}

std::string UcxTransport::address() const { return impl_->addr; }
int UcxTransport::rank() const { return impl_->opt.rank; }
int UcxTransport::size() const { return impl_->opt.size; }
bool UcxTransport::aborted() const { return impl_->aborted; }

Status UcxTransport::ConnectNext(const std::string& next_address, std::chrono::milliseconds timeout) {
  const auto colon = next_address.rfind(':');
  RW_REQUIRE(colon != std::string::npos, "next_address: '" << next_address << "' is not host:port");
  const std::string host = next_address.substr(0, colon);
  const int port = std::atoi(next_address.c_str() + colon + 1);
  RW_REQUIRE(port > 0 && port < 65536, "next_address: bad port in '" << next_address << "'");
  auto sa = std::make_shared<sockaddr_in>();
  sa->sin_family = AF_INET;
  sa->sin_port = htons(uint16_t(port));
  RW_REQUIRE(inet_pton(AF_INET, host.c_str(), &sa->sin_addr) == 1,
             "next_address: '" << host << "' is not an IPv4 address");
  std::promise<Status> created;
  auto fut = created.get_future();
  Impl* im = impl_.get();
  im->Run([im, sa, &created] {
    ucp_ep_params_t ep{};
    ep.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR | UCP_EP_PARAM_FIELD_ERR_HANDLER |
                    UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    ep.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
    ep.sockaddr.addr = reinterpret_cast<const sockaddr*>(sa.get());
    ep.sockaddr.addrlen = sizeof(sockaddr_in);
    ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep.err_handler.cb = &Impl::EpError;
    ep.err_handler.arg = im;
    const ucs_status_t st = ucp_ep_create(im->worker, &ep, &im->ep_next);
    created.set_value(st == UCS_OK ? Status::Ok() : Status::Error(UcsError("ucx: connecting to the next rank", st)));
  });
  RW_RETURN_IF_ERROR(fut.get());
  // Hello around the link: proves next can hear us and we can hear prev.
  const auto keep = options_.wait_timeout;
  options_.wait_timeout = timeout;
  MsgTag hello;
  hello.job = ~uint64_t(0);
  uint32_t out = uint32_t(rank()), in = 0;
  Request rr = RecvPrev(hello, &in, sizeof(in));
  Request sr = SendNext(hello, &out, sizeof(out));
  Status a = Wait(rr), b = Wait(sr);
  options_.wait_timeout = keep;
  RW_RETURN_IF_ERROR(a);
  RW_RETURN_IF_ERROR(b);
  RW_REQUIRE(in == uint32_t(prev()), "ucx: hello from rank " << in << ", expected the previous rank " << prev());
  return Status::Ok();
}

Request UcxTransport::SendNext(const MsgTag& tag, const void* buf, size_t bytes) {
  auto op = std::make_shared<detail::Op>();
  auto* ctx = new Impl::SendCtx{};
  ctx->self = impl_.get();
  ctx->op = op;
  ctx->header.tag = tag;
  ctx->header.bytes = bytes;
  if (options_.check_payload) ctx->header.payload_crc = Crc32c(buf, bytes);
  ctx->header.Seal();
  const void* payload = buf;
  if (impl_->corrupt_next.exchange(false) && bytes) {
    ctx->corrupted.assign(static_cast<const unsigned char*>(buf), static_cast<const unsigned char*>(buf) + bytes);
    ctx->corrupted[bytes / 2] ^= 0x40;
    payload = ctx->corrupted.data();
  }
  ctx->iov[0] = {&ctx->header, sizeof(MsgHeader)};
  ctx->iov[1] = {const_cast<void*>(payload), bytes};
  impl_->bytes_sent += bytes;
  impl_->messages_sent += 1;
  Impl* im = impl_.get();
  im->Run([im, ctx] { im->PostSend(ctx); });
  return Request(op);
}

Request UcxTransport::RecvPrev(const MsgTag& tag, void* buf, size_t bytes) {
  auto op = std::make_shared<detail::Op>();
  auto* ctx = new Impl::RecvCtx{};
  ctx->self = impl_.get();
  ctx->op = op;
  ctx->expect = tag;
  ctx->buf = buf;
  ctx->bytes = bytes;
  ctx->iov[0] = {&ctx->header, sizeof(MsgHeader)};
  ctx->iov[1] = {buf, bytes};
  Impl* im = impl_.get();
  im->Run([im, ctx] {
    if (im->aborted) {
      ctx->op->Complete(im->AbortStatus());
      delete ctx;
      return;
    }
    im->recv_queue.push_back(ctx);
    im->PostFrontRecv();
  });
  return Request(op);
}

void UcxTransport::Abort(const std::string& reason) {
  Impl* im = impl_.get();
  im->Run([im, reason] { im->DoAbort(reason); });
}

TransportStats UcxTransport::stats() const {
  TransportStats s;
  s.bytes_sent = impl_->bytes_sent;
  s.messages_sent = impl_->messages_sent;
  s.stale_dropped = impl_->stale_dropped;
  return s;
}

void UcxTransport::CorruptNextSend() { impl_->corrupt_next = true; }

}  // namespace rw::runtime
