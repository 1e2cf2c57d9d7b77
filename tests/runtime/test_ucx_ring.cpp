// UCX between real processes on loopback: ring attention across R processes equals the single-device
// kernels; a corrupted payload is caught; an abort ends every rank within a second. Every child runs
// under a watchdog that kills it, so no test can hang.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "ring_fixture.h"
#include "runtime/layout.h"

extern char** environ;

namespace rw::runtime {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

struct Peers {
  fs::path dir;
  std::vector<int> exit_codes;
};

// Starts R ring_peer processes and waits for all (killing any still alive at the deadline).
Peers RunPeers(int R, const std::string& mode, const std::string& layout, const std::string& causal = "causal",
               std::chrono::seconds deadline = 60s) {
  Peers p;
  p.dir = fs::temp_directory_path() / ("rw_ucx_" + std::to_string(getpid()) + "_" + mode + "_" + layout + "_" +
                                       std::to_string(R) + "_" + causal);
  fs::remove_all(p.dir);
  fs::create_directories(p.dir);
  std::vector<pid_t> pids;
  for (int r = 0; r < R; ++r) {
    std::vector<std::string> args = {RW_RING_PEER, std::to_string(r), std::to_string(R), p.dir.string(), mode, layout,
                                     causal};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid;
    EXPECT_EQ(0, posix_spawn(&pid, RW_RING_PEER, nullptr, nullptr, argv.data(), environ));
    pids.push_back(pid);
  }
  p.exit_codes.assign(R, -1);
  const auto until = std::chrono::steady_clock::now() + deadline;
  for (int r = 0; r < R; ++r) {
    int status = 0;
    for (;;) {
      const pid_t w = waitpid(pids[r], &status, WNOHANG);
      if (w == pids[r]) break;
      if (std::chrono::steady_clock::now() > until) {
        ADD_FAILURE() << "watchdog: peer " << r << " still running; killing it";
        kill(pids[r], SIGKILL);
        waitpid(pids[r], &status, 0);
        break;
      }
      std::this_thread::sleep_for(5ms);
    }
    p.exit_codes[r] = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  return p;
}

std::vector<float> ReadFloats(std::ifstream& f, size_t n) {
  std::vector<float> v(n);
  f.read(reinterpret_cast<char*>(v.data()), std::streamsize(n * 4));
  return v;
}

class UcxRing : public ::testing::TestWithParam<std::tuple<int, std::string>> {};

TEST_P(UcxRing, RingAttentionAcrossProcessesEqualsTheSingleDeviceKernels) {
  const auto [R, layout_name] = GetParam();
  Peers p = RunPeers(R, "ring", layout_name);
  for (int r = 0; r < R; ++r) ASSERT_EQ(p.exit_codes[r], 0) << "rank " << r << " failed";
  const test::Global G = test::MakeGlobal(2 * R * 13, true, 42);
  const test::Result want = test::SingleDevice(G, true);
  LayoutKind kind;
  ASSERT_TRUE(ParseLayout(layout_name, &kind).ok());
  Layout lay;
  ASSERT_TRUE(Layout::Make(kind, G.L, R, &lay).ok());
  test::Result got{std::vector<float>(G.q.size()), std::vector<float>(G.hq * G.L), std::vector<float>(G.q.size()),
                   std::vector<float>(G.k.size()), std::vector<float>(G.v.size())};
  const int64_t S = lay.shard_len();
  for (int r = 0; r < R; ++r) {
    std::ifstream f(p.dir / ("out." + std::to_string(r)), std::ios::binary);
    ASSERT_TRUE(f) << "no output from rank " << r;
    const auto idx = lay.GlobalIndices(r);
    auto o = ReadFloats(f, S * G.hq * G.d), lse = ReadFloats(f, G.hq * S), dq = ReadFloats(f, S * G.hq * G.d),
         dk = ReadFloats(f, S * G.hkv * G.d), dv = ReadFloats(f, S * G.hkv * G.d);
    test::Scatter(o, idx, G.hq * G.d, got.o);
    test::Scatter(dq, idx, G.hq * G.d, got.dq);
    test::Scatter(dk, idx, G.hkv * G.d, got.dk);
    test::Scatter(dv, idx, G.hkv * G.d, got.dv);
    for (int64_t h = 0; h < G.hq; ++h)
      for (int64_t i = 0; i < S; ++i) got.lse[h * G.L + idx[i]] = lse[h * S + i];
  }
  std::printf("  UCX R=%d %s, %d processes\n", R, layout_name.c_str(), R);
  EXPECT_LE(test::RelErr("o", got.o, want.o), 1e-5);
  EXPECT_LE(test::RelErr("lse", got.lse, want.lse), 1e-5);
  EXPECT_LE(test::RelErr("dq", got.dq, want.dq), 1e-5);
  EXPECT_LE(test::RelErr("dk", got.dk, want.dk), 1e-5);
  EXPECT_LE(test::RelErr("dv", got.dv, want.dv), 1e-5);
  fs::remove_all(p.dir);
}

INSTANTIATE_TEST_SUITE_P(Processes, UcxRing,
                         ::testing::Combine(::testing::Values(2, 4),
                                            ::testing::Values("contiguous", "zigzag", "striped")),
                         [](const auto& info) {
                           return "R" + std::to_string(std::get<0>(info.param)) + "_" + std::get<1>(info.param);
                         });

TEST(UcxTransport, CorruptedPayloadBetweenProcessesIsDetected) {
  Peers p = RunPeers(2, "corrupt", "contiguous");
  EXPECT_EQ(p.exit_codes[0], 0);
  EXPECT_EQ(p.exit_codes[1], 3) << "rank 1 should report a checksum error";
  fs::remove_all(p.dir);
}

TEST(UcxTransport, AbortEndsEveryProcessWithAnErrorWithinOneSecond) {
  Peers p = RunPeers(4, "abort", "contiguous", "causal", 30s);
  EXPECT_EQ(p.exit_codes[0], 0);
  for (int r = 1; r < 4; ++r) EXPECT_EQ(p.exit_codes[r], 4) << "rank " << r << " should fail within 1 s";
  fs::remove_all(p.dir);
}

TEST(UcxTransport, KilledPeerIsDetectedWithinFiveSecondsWhenPeerFailureDetectionIsOn) {
  Peers p = RunPeers(2, "crash", "contiguous", "causal", 30s);
  EXPECT_EQ(p.exit_codes[0], 128 + SIGKILL);
  EXPECT_EQ(p.exit_codes[1], 5) << "rank 1 should fail naming the lost peer within 5 s";
  fs::remove_all(p.dir);
}

// A device process killed with a large transfer announced (train_device_lost met it under load): the
// receiver's wait fails and its process lives. Over UCX's CMA transport the receiver's read of the dead
// process's memory ended the receiver too (ucs_fatal in UCX 1.13), so the transport leaves CMA out unless
// UCX_TLS names it; with UCX_TLS=all this test fails that way (rank 1 ends with SIGABRT).
TEST(UcxTransport, APeerKilledWithATransferAnnouncedFailsTheWaitAndNotTheProcess) {
  setenv("RW_UCX_NO_CMA", "1", 1);  // the fix is opt-in until the cluster drill's assertion is understood
  Peers p = RunPeers(2, "sender-killed", "contiguous", "causal", 30s);
  unsetenv("RW_UCX_NO_CMA");
  EXPECT_EQ(p.exit_codes[0], 128 + SIGKILL);
  EXPECT_EQ(p.exit_codes[1], 5) << "rank 1 should live and fail its receive within 5 s";
  fs::remove_all(p.dir);
}

// A peer cut off mid-transfer (the partition drill's hang): a receive matched to a rendezvous transfer from a
// stopped process does not end on cancel; the abort must still end the wait, and the transport must close,
// in bounded time. In a ring of 2 the transfer runs on the receiver's endpoint to its next rank (UCX pairs
// the endpoints by creation order), in a ring of 3 on the one to its previous rank: both are covered.
TEST(UcxTransport, AbortEndsAReceiveMatchedToATransferFromAStoppedPeer) {
  for (int R : {2, 3}) {
    Peers p = RunPeers(R, "stall", "contiguous", "causal", 30s);
    EXPECT_EQ(p.exit_codes[1], 6) << "R=" << R << ": rank 1's wait should end within 1.5 s (by the endpoints' "
                                  << "close, not the abandon) and its close within 5 s";
    EXPECT_EQ(p.exit_codes[0], 128 + SIGKILL) << "R=" << R << ": rank 1 kills the stopped rank 0";
    for (int r = 2; r < R; ++r) EXPECT_EQ(p.exit_codes[r], 6) << "R=" << R << ": rank " << r;
    fs::remove_all(p.dir);
  }
  // The last resort, for a receive that not even the endpoints' close ends (the drill has met such): the
  // receive is abandoned, its worker left unprogressed, and the wait and the close still end in time.
  Peers p = RunPeers(2, "stall-abandon", "contiguous", "causal", 30s);
  EXPECT_EQ(p.exit_codes[1], 6) << "abandoned: rank 1's wait and close should end within 5 s each";
  EXPECT_EQ(p.exit_codes[0], 128 + SIGKILL);
  fs::remove_all(p.dir);
}

}  // namespace
}  // namespace rw::runtime
