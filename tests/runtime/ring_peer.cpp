// One rank of a multi-process ring for the UCX tests: rendezvous through files in a directory (each rank
// writes its listener address, reads the next rank's), connect, then run one scenario:
//   ring      ring attention forward + backward on the fixture's problem; writes its results to out.<rank>
//   corrupt   rank 0 corrupts its first payload; rank 1 must report a checksum error (exit 3 when it does)
//   abort     rank 0 aborts while the others wait on it; every other rank must fail (exit 4) within 1 s
//   crash     (peer-failure detection on) rank 0 is killed with SIGKILL while rank 1 waits on it; rank 1
//             must fail, naming the lost peer, within 5 s (exit 5)
//   bandwidth rank 0 sends blocks to rank 1 and prints the transfer rate beside a memcpy of the same size
//   stall     (TCP only) rank 0 starts a large send, then stops itself (SIGSTOP) as a host cut off by the
//             network would; rank 1's receive matches the transfer and can never end. Rank 1 aborts: its wait
//             must fail within 1.5 s (ended by the endpoints' close) and its transport must close within 5 s
//             (exit 6); it then kills rank 0.
//             Further ranks idle (exit 6). stall-abandon: the same, with the receive abandoned at once (the
//             abort's last resort) instead of ended by closing the endpoints (its wait: within 5 s)
//   sender-killed rank 0 sends 1 GiB and kills itself (SIGKILL) 0.1 s later, while rank 1 is receiving it;
//             rank 1 aborts 0.3 s after the death (as the control plane would): its wait must fail within
//             5 s (exit 5) and its process live (over UCX's CMA it ended: ucs_fatal, SIGABRT)
// Exit code 0 on success of the scenario, 1 on an unexpected error, 2 on bad arguments.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>

#include "ring_fixture.h"
#include "runtime/layout.h"
#include "runtime/ring_attention.h"
#include "runtime/ucx_transport.h"

using namespace rw::runtime;
using Clock = std::chrono::steady_clock;

namespace {

std::string ReadWhenThere(const std::string& path, std::chrono::seconds timeout) {
  const auto until = Clock::now() + timeout;
  while (Clock::now() < until) {
    std::ifstream f(path);
    std::string s;
    if (f && std::getline(f, s) && !s.empty()) return s;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return "";
}

int Fail(const Status& st) {
  std::fprintf(stderr, "ring_peer: %s\n", st.message().c_str());
  return 1;
}

void WriteFloats(std::ofstream& f, const std::vector<float>& v) {
  f.write(reinterpret_cast<const char*>(v.data()), std::streamsize(v.size() * 4));
}

int RunRing(UcxTransport& t, const std::string& dir, int R, const std::string& layout_name, bool causal) {
  using namespace rw::runtime::test;
  LayoutKind kind;
  if (!ParseLayout(layout_name, &kind).ok()) return 2;
  const Global G = MakeGlobal(2 * R * 13, true, 42);
  Layout lay;
  if (auto st = Layout::Make(kind, G.L, R, &lay); !st.ok()) return Fail(st);
  const int r = t.rank();
  RankRun run;
  if (auto st = RunRank(t, G, lay, causal, 3, &run); !st.ok()) return Fail(st);
  auto &o = run.o, &lse = run.lse, &dq = run.dq, &dk = run.dk, &dv = run.dv;
  std::ofstream f(dir + "/out." + std::to_string(r), std::ios::binary);
  for (const auto* vec : {&o, &lse, &dq, &dk, &dv}) WriteFloats(f, *vec);
  return f ? 0 : 1;
}

int RunBandwidth(UcxTransport& t) {
  const size_t bytes = size_t(64) << 20;  // 64 MiB blocks: a K/V block of a long shard
  std::vector<unsigned char> buf(bytes, 1), dst(bytes);
  MsgTag tag;
  tag.job = 4;
  const int reps = 8;
  if (t.rank() == 0) {
    for (int i = 0; i < reps + 1; ++i) {
      tag.hop = uint32_t(i);
      if (auto st = t.Wait(t.SendNext(tag, buf.data(), bytes)); !st.ok()) return Fail(st);
    }
    return 0;
  }
  if (t.rank() != 1) return 0;
  tag.hop = 0;
  if (auto st = t.Wait(t.RecvPrev(tag, dst.data(), bytes)); !st.ok()) return Fail(st);  // warm-up
  const auto t0 = Clock::now();
  for (int i = 1; i <= reps; ++i) {
    tag.hop = uint32_t(i);
    if (auto st = t.Wait(t.RecvPrev(tag, dst.data(), bytes)); !st.ok()) return Fail(st);
  }
  const double ucx = double(bytes) * reps / std::chrono::duration<double>(Clock::now() - t0).count();
  const auto m0 = Clock::now();
  for (int i = 0; i < reps; ++i) std::memcpy(dst.data(), buf.data(), bytes);
  const double mem = double(bytes) * reps / std::chrono::duration<double>(Clock::now() - m0).count();
  std::printf("ucx_bandwidth_GBps=%.2f memcpy_GBps=%.2f ratio=%.2f\n", ucx / 1e9, mem / 1e9, ucx / mem);
  return 0;
}

// See the header. The receive is posted only after rank 0 has stopped, so UCX matches it to a rendezvous
// announcement already waiting and asks a process that will never answer for the data.
int RunStall(std::unique_ptr<UcxTransport>& t, const std::string& dir, bool abandon) {
  const char* env = std::getenv("RW_STALL_BYTES");
  const size_t bytes = env ? size_t(std::atoll(env)) : size_t(32) << 20;
  std::vector<unsigned char> buf(bytes, 7);
  MsgTag tag;
  tag.job = 6;
  if (t->rank() == 0) {
    std::ofstream(dir + "/pid.0") << getpid() << "\n";
    Request send = t->SendNext(tag, buf.data(), bytes);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the announcement is out
    raise(SIGSTOP);
    return t->Wait(send).ok() ? 0 : 1;  // not reached: rank 1 kills this process
  }
  if (t->rank() != 1) {  // the rest of a ring larger than 2 stays alive and idle
    std::this_thread::sleep_for(std::chrono::milliseconds(7000));
    return 6;
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(900));
  const std::string pid0 = ReadWhenThere(dir + "/pid.0", std::chrono::seconds(5));
  Request recv = t->RecvPrev(tag, buf.data(), bytes);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const auto t0 = Clock::now();
  t->Abort("rank 1 gives up on a stalled peer");
  const Status st = t->Wait(recv);
  const double waited = std::chrono::duration<double>(Clock::now() - t0).count();
  const auto c0 = Clock::now();
  t.reset();
  const double closed = std::chrono::duration<double>(Clock::now() - c0).count();
  if (!pid0.empty()) kill(std::stoi(pid0), SIGKILL);
  std::printf("rank 1: %s after %.3f s; transport closed in %.3f s\n", st.ok() ? "ok" : st.message().c_str(), waited,
              closed);
  // Ended by the endpoints' close: in well under a second (0.2 s here); abandoned: after the close's 2 s.
  const double bound = abandon ? 5.0 : 1.5;
  return !st.ok() && waited < bound && closed < 5.0 ? 6 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: ring_peer RANK SIZE DIR MODE LAYOUT [causal]\n");
    return 2;
  }
  const int rank = std::atoi(argv[1]), size = std::atoi(argv[2]);
  const std::string dir = argv[3], mode = argv[4], layout = argv[5];
  const bool causal = argc < 7 || std::string(argv[6]) != "full";
  UcxOptions opt;
  opt.rank = rank;
  opt.size = size;
  opt.transport.check_payload = mode == "corrupt" || mode == "ring";
  const bool stall = mode == "stall" || mode == "stall-abandon";
  opt.detect_peer_failure = mode == "crash" || stall;
  if (stall) setenv("UCX_TLS", "tcp", 1);  // shared memory would let rank 1 read a stopped rank's data
  opt.transport.wait_timeout = std::chrono::milliseconds(mode == "abort" ? 5000 : 60000);
  std::unique_ptr<UcxTransport> t;
  if (auto st = UcxTransport::Create(opt, &t); !st.ok()) return Fail(st);
  {
    const std::string tmp = dir + "/addr." + std::to_string(rank) + ".tmp";
    std::ofstream(tmp) << t->address() << "\n";
    std::rename(tmp.c_str(), (dir + "/addr." + std::to_string(rank)).c_str());
  }
  const std::string next = ReadWhenThere(dir + "/addr." + std::to_string((rank + 1) % size), std::chrono::seconds(20));
  const std::string prev =
      ReadWhenThere(dir + "/addr." + std::to_string((rank + size - 1) % size), std::chrono::seconds(20));
  if (next.empty() || prev.empty()) return Fail(Status::Error("no address from a neighbour"));
  if (auto st = t->ConnectRing(prev, next, std::chrono::milliseconds(20000)); !st.ok()) return Fail(st);

  if (mode == "ring") return RunRing(*t, dir, size, layout, causal);
  if (mode == "bandwidth") return RunBandwidth(*t);
  MsgTag tag;
  tag.job = 5;
  std::vector<float> buf(4096, 0.5f), in(4096);
  if (mode == "corrupt") {
    if (rank == 0) {
      t->CorruptNextSend();
      (void)t->Wait(t->SendNext(tag, buf.data(), buf.size() * 4));
      std::this_thread::sleep_for(std::chrono::milliseconds(200));  // let the receiver read it
      return 0;
    }
    if (rank != 1) return 0;
    const Status st = t->Wait(t->RecvPrev(tag, in.data(), in.size() * 4));
    std::printf("rank 1: %s\n", st.ok() ? "received without error" : st.message().c_str());
    return !st.ok() && st.message().find("checksum") != std::string::npos ? 3 : 1;
  }
  if (mode == "crash") {
    if (rank == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      raise(SIGKILL);
    }
    const auto t0 = Clock::now();
    const Status st = t->Wait(t->RecvPrev(tag, in.data(), in.size() * 4));
    const double waited = std::chrono::duration<double>(Clock::now() - t0).count();
    std::printf("rank %d: %s after %.3f s\n", rank, st.ok() ? "ok" : st.message().c_str(), waited);
    return !st.ok() && st.message().find("gone") != std::string::npos && waited < 5.0 ? 5 : 1;
  }
  if (mode == "sender-killed") {
    // 1 GiB: long enough (about 0.3 s over shared memory here) that the sender dies mid-transfer.
    std::vector<unsigned char> big(size_t(1) << 30, 3);
    if (rank == 0) {
      std::ofstream(dir + "/pid.0") << getpid() << "\n";
      Request send = t->SendNext(tag, big.data(), big.size());
      std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the receiver is copying by now
      raise(SIGKILL);
      return t->Wait(send).ok() ? 0 : 1;  // not reached
    }
    if (rank != 1) return 0;
    const std::string pid0 = ReadWhenThere(dir + "/pid.0", std::chrono::seconds(10));
    Request recv = t->RecvPrev(tag, big.data(), big.size());
    // As in production (no UCX peer-failure handling on same-host rings), nothing fails the receive by
    // itself: the control plane notices the dead process and aborts the ring, here 0.3 s after its death.
    for (int i = 0; i < 5000 && !pid0.empty(); ++i) {
      std::ifstream st("/proc/" + pid0 + "/stat");
      std::string pid, comm, state;
      if (!(st >> pid >> comm >> state) || state == "Z" || state == "X") break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const auto t0 = Clock::now();
    t->Abort("rank 1's peer died mid-transfer");
    const Status st = t->Wait(recv);
    const double waited = std::chrono::duration<double>(Clock::now() - t0).count();
    std::printf("rank 1: %s after %.3f s\n", st.ok() ? "ok" : st.message().c_str(), waited);
    return !st.ok() && waited < 5.0 ? 5 : 1;
  }
  if (stall) {
    if (mode == "stall-abandon") t->AbandonStuckReceivesForTest();
    return RunStall(t, dir, mode == "stall-abandon");
  }
  if (mode == "abort") {
    if (rank == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      t->Abort("rank 0 aborts the ring");
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // stay alive: peers must not need our death
      return 0;
    }
    // Everyone else waits on its previous rank, which never sends (rank 0 never does; the rest wait first).
    const auto t0 = Clock::now();
    const Status st = t->Wait(t->RecvPrev(tag, in.data(), in.size() * 4));
    const double waited = std::chrono::duration<double>(Clock::now() - t0).count();
    std::printf("rank %d: %s after %.3f s\n", rank, st.ok() ? "ok" : st.message().c_str(), waited);
    return !st.ok() && waited < 1.0 + 0.3 ? 4 : 1;  // 0.3 s: rank 0's sleep before it aborts
  }
  return 2;
}
