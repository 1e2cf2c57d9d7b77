// The in-process transport: ordering, tag and size checks, stale epochs, payload corruption, abort,
// and the deterministic all-reduce.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <random>

#include "ring_harness.h"

namespace rw::runtime {
namespace {

using test::RunRanks;
using namespace std::chrono_literals;

MsgTag Tag(uint32_t step, uint32_t hop, uint32_t epoch = 0) {
  MsgTag t;
  t.job = 7;
  t.epoch = epoch;
  t.step = step;
  t.hop = hop;
  return t;
}

// The decision on a header read off the wire (UCX): untrusted bytes, so a short, corrupt or sealed-but-
// hostile header is classified without trusting its size; a size beyond max(64 x expected, 64 MiB) is
// corrupt even with a valid CRC (it would be allocated to be dropped). tests/fuzz/fuzz_msg_header.cpp
// fuzzes the same function.
TEST(MsgHeader, AHeaderOffTheWireIsClassifiedWithoutTrustingItsSize) {
  MsgTag expect;
  expect.job = 7, expect.epoch = 3, expect.step = 11, expect.layer = 2, expect.hop = 1;
  auto sealed = [&](MsgTag tag, uint64_t bytes) {
    MsgHeader h;
    h.tag = tag;
    h.bytes = bytes;
    h.Seal();
    return h;
  };
  MsgHeader out;
  MsgHeader h = sealed(expect, 4096);
  EXPECT_EQ(ClassifyHeader(&h, sizeof(h), expect, 4096, &out), HeaderAction::kAccept);
  EXPECT_EQ(out.bytes, 4096u);
  EXPECT_EQ(ClassifyHeader(&h, sizeof(h) - 1, expect, 4096, &out), HeaderAction::kCorrupt);  // short
  MsgHeader flipped = h;
  reinterpret_cast<unsigned char*>(&flipped)[20] ^= 1;
  EXPECT_EQ(ClassifyHeader(&flipped, sizeof(h), expect, 4096, &out), HeaderAction::kCorrupt);  // CRC
  MsgTag old = expect;
  old.epoch = 2;
  h = sealed(old, 8192);
  EXPECT_EQ(ClassifyHeader(&h, sizeof(h), expect, 4096, &out), HeaderAction::kStale);
  MsgTag other = expect;
  other.step = 12;
  h = sealed(other, 4096);
  EXPECT_EQ(ClassifyHeader(&h, sizeof(h), expect, 4096, &out), HeaderAction::kRefuse);
  h = sealed(expect, 4095);
  EXPECT_EQ(ClassifyHeader(&h, sizeof(h), expect, 4096, &out), HeaderAction::kRefuse);
  // A valid CRC over an absurd size: never allocated.
  for (const MsgTag& tag : {old, other}) {
    h = sealed(tag, uint64_t(1) << 60);
    EXPECT_EQ(ClassifyHeader(&h, sizeof(h), expect, 4096, &out), HeaderAction::kCorrupt);
    h = sealed(tag, uint64_t(64) << 20);  // the floor of the bound: still dropped
    EXPECT_EQ(ClassifyHeader(&h, sizeof(h), expect, 4096, &out), tag.epoch == 3 ? HeaderAction::kRefuse : HeaderAction::kStale);
  }
  h = sealed(other, 64 * (uint64_t(1) << 30));  // 64 x a 1 GiB block
  EXPECT_EQ(ClassifyHeader(&h, sizeof(h), expect, uint64_t(1) << 30, &out), HeaderAction::kRefuse);
}

TEST(InprocTransport, MessagesGoAroundTheRingInOrderIntoCallerBuffers) {
  for (int R : {1, 2, 3, 5}) {
    auto fabric = InprocFabric::Create(R);
    auto st = RunRanks(fabric, [&](int r, Transport& t) -> Status {
      std::vector<int> out(100), in(100);
      for (int hop = 0; hop < 3; ++hop) {
        for (int i = 0; i < 100; ++i) out[i] = r * 1000 + hop * 100 + i;
        Request rr = t.RecvPrev(Tag(1, hop), in.data(), in.size() * 4);
        Request sr = t.SendNext(Tag(1, hop), out.data(), out.size() * 4);
        RW_RETURN_IF_ERROR(t.Wait(rr));
        RW_RETURN_IF_ERROR(t.Wait(sr));
        for (int i = 0; i < 100; ++i)
          RW_REQUIRE(in[i] == t.prev() * 1000 + hop * 100 + i, "rank " << r << " got " << in[i] << " at " << i);
      }
      return Status::Ok();
    });
    for (int r = 0; r < R; ++r) EXPECT_TRUE(st[r].ok()) << "R=" << R << " rank " << r << ": " << st[r].message();
  }
}

TEST(InprocTransport, TagOrSizeMismatchFailsBothSidesNamingTheTags) {
  auto fabric = InprocFabric::Create(2);
  auto st = RunRanks(fabric, [&](int r, Transport& t) -> Status {
    int buf[4] = {1, 2, 3, 4}, in[4];
    if (r == 0) return t.Wait(t.SendNext(Tag(3, 1), buf, 16));  // hop 1 where hop 0 is expected
    return t.Wait(t.RecvPrev(Tag(3, 0), in, 16));
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_FALSE(st[r].ok());
    EXPECT_NE(st[r].message().find("hop 0"), std::string::npos) << st[r].message();
    EXPECT_NE(st[r].message().find("hop 1"), std::string::npos) << st[r].message();
  }
  fabric = InprocFabric::Create(2);
  st = RunRanks(fabric, [&](int r, Transport& t) -> Status {
    int buf[4] = {1, 2, 3, 4}, in[4];
    if (r == 0) return t.Wait(t.SendNext(Tag(3, 0), buf, 12));
    return t.Wait(t.RecvPrev(Tag(3, 0), in, 16));
  });
  ASSERT_FALSE(st[1].ok());
  EXPECT_NE(st[1].message().find("12 bytes"), std::string::npos) << st[1].message();
}

TEST(InprocTransport, OlderEpochMessagesAreDroppedNeverConsumed) {
  auto fabric = InprocFabric::Create(2);
  auto st = RunRanks(fabric, [&](int r, Transport& t) -> Status {
    int stale[2] = {-1, -1}, fresh[2] = {5, 6}, in[2] = {0, 0};
    if (r == 0) {
      RW_RETURN_IF_ERROR(t.Wait(t.SendNext(Tag(9, 0, /*epoch=*/1), stale, 8)));
      return t.Wait(t.SendNext(Tag(9, 0, /*epoch=*/2), fresh, 8));
    }
    std::this_thread::sleep_for(20ms);  // let the stale one arrive first
    RW_RETURN_IF_ERROR(t.Wait(t.RecvPrev(Tag(9, 0, /*epoch=*/2), in, 8)));
    RW_REQUIRE(in[0] == 5 && in[1] == 6, "received " << in[0] << "," << in[1] << " instead of the epoch-2 data");
    RW_REQUIRE(t.stats().stale_dropped == 1, "stale_dropped = " << t.stats().stale_dropped);
    return Status::Ok();
  });
  EXPECT_TRUE(st[0].ok()) << st[0].message();
  EXPECT_TRUE(st[1].ok()) << st[1].message();
}

TEST(InprocTransport, CorruptedPayloadIsDetectedByItsChecksum) {
  TransportOptions opt;
  opt.check_payload = true;
  auto fabric = InprocFabric::Create(2, opt);
  fabric->CorruptNextMessageTo(1);
  auto st = RunRanks(fabric, [&](int r, Transport& t) -> Status {
    std::vector<float> buf(1000, 1.5f), in(1000);
    if (r == 0) return t.Wait(t.SendNext(Tag(1, 0), buf.data(), 4000));
    return t.Wait(t.RecvPrev(Tag(1, 0), in.data(), 4000));
  });
  ASSERT_FALSE(st[1].ok());
  EXPECT_NE(st[1].message().find("checksum"), std::string::npos) << st[1].message();
}

// A ring of one sends nothing, so only its collectives can tell it was aborted (a cancelled job of one
// device trained on to its end): after Abort they fail, as they do on larger rings.
TEST(InprocTransport, ARingOfOneFailsItsCollectivesOnceAborted) {
  auto fabric = InprocFabric::Create(1);
  const std::unique_ptr<Transport> endpoint = fabric->Endpoint(0);
  Transport& t = *endpoint;
  float x[3] = {1.f, 2.f, 3.f};
  ASSERT_TRUE(t.AllReduceSum(x, 3, Tag(1, 0)).ok());
  ASSERT_TRUE(t.Barrier(Tag(2, 0)).ok());
  t.Abort("job cancelled");
  const Status a = t.AllReduceSum(x, 3, Tag(1, 1)), b = t.Barrier(Tag(2, 1));
  ASSERT_FALSE(a.ok());
  ASSERT_FALSE(b.ok());
  std::printf("  %s\n", a.message().c_str());
  EXPECT_NE(a.message().find("aborted"), std::string::npos);
  EXPECT_NE(b.message().find("aborted"), std::string::npos);
}

TEST(InprocTransport, AbortMidRingEndsEveryRankWithAnErrorWithinOneSecond) {
  auto fabric = InprocFabric::Create(4);
  std::atomic<int> waiting{0};
  const auto t0 = std::chrono::steady_clock::now();
  std::thread aborter([&] {
    while (waiting.load() < 3) std::this_thread::yield();
    std::this_thread::sleep_for(50ms);
    fabric->Endpoint(3)->Abort("rank 3 lost");
  });
  std::vector<double> returned_after(4);
  auto st = RunRanks(
      fabric,
      [&](int r, Transport& t) -> Status {
        if (r == 3) return Status::Error("rank 3 never joins");  // a dead rank: its neighbours block
        int buf = r, in = 0;
        Status result;
        for (uint32_t hop = 0; hop < 10 && result.ok(); ++hop) {
          Request rr = t.RecvPrev(Tag(1, hop), &in, 4);
          Request sr = t.SendNext(Tag(1, hop), &buf, 4);
          if (hop == 0) waiting.fetch_add(1);
          Status a = t.Wait(rr), b = t.Wait(sr);
          result = a.ok() ? b : a;
        }
        returned_after[r] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        return result;
      },
      5000ms);
  aborter.join();
  for (int r = 0; r < 3; ++r) {
    ASSERT_FALSE(st[r].ok()) << "rank " << r << " should fail";
    EXPECT_NE(st[r].message().find("aborted"), std::string::npos) << st[r].message();
    std::printf("  rank %d returned %.3f s after start\n", r, returned_after[r]);
    EXPECT_LT(returned_after[r], 1.0);
  }
}

// A rank that leaves a ring operation early (an error between posting and waiting) drops Requests still
// in flight. Their buffers are about to be freed, so the drop aborts the ring and waits for the transfer to
// end: the peer gets an abort, never this rank's freed memory. (The regression: a rank's workspace freed
// while the peer's mover still copied out of it, a TSan report in CI; under ASan, a use after free.)
TEST(InprocTransport, ADroppedRequestAbortsTheRingAndEndsBeforeItsBufferIsFreed) {
  for (const bool drop_send : {true, false}) {
    auto fabric = InprocFabric::Create(2);
    std::shared_ptr<detail::Op> dropped;
    bool aborted_after_drop = false;
    auto st = RunRanks(fabric, [&](int r, Transport& t) -> Status {
      const bool dropper = drop_send ? r == 0 : r == 1;
      if (dropper) {
        {
          auto buf = std::make_unique<std::vector<float>>(4096, 1.25f);  // freed after the Request
          Request req = drop_send ? t.SendNext(Tag(4, 0), buf->data(), 4096 * 4)
                                  : t.RecvPrev(Tag(4, 0), buf->data(), 4096 * 4);
          dropped = req.op();
        }
        aborted_after_drop = t.aborted();
        return Status::Error("left early");
      }
      std::this_thread::sleep_for(50ms);  // the drop has happened: the peer's post now meets an aborted ring
      std::vector<float> mine(4096, 2.5f);
      return drop_send ? t.Wait(t.RecvPrev(Tag(4, 0), mine.data(), 4096 * 4))
                       : t.Wait(t.SendNext(Tag(4, 0), mine.data(), 4096 * 4));
    });
    const int peer = drop_send ? 1 : 0;
    std::printf("  dropped a %s: peer's status: %s\n", drop_send ? "send" : "receive", st[peer].message().c_str());
    ASSERT_TRUE(dropped);
    EXPECT_TRUE(dropped->done) << "the dropped transfer was still in flight when its buffer was freed";
    EXPECT_TRUE(aborted_after_drop);
    ASSERT_FALSE(st[peer].ok()) << "the peer completed a transfer with the dropped rank's freed buffer";
    EXPECT_NE(st[peer].message().find("aborted"), std::string::npos) << st[peer].message();
  }
}

TEST(InprocTransport, AllReduceSumIsDeterministicAndEqualOnEveryRank) {
  for (int R : {1, 2, 3, 4, 8}) {
    const size_t n = 1003;
    std::vector<std::vector<float>> data(R), first;
    for (int run = 0; run < 2; ++run) {
      for (int r = 0; r < R; ++r) {
        std::mt19937 g(r + 1);
        std::uniform_real_distribution<float> d(-1, 1);
        data[r].resize(n);
        for (auto& x : data[r]) x = d(g);
      }
      const auto inputs = data;
      auto fabric = InprocFabric::Create(R);
      auto st = RunRanks(fabric, [&](int r, Transport& t) { return t.AllReduceSum(data[r].data(), n, Tag(2, 0)); });
      for (int r = 0; r < R; ++r) ASSERT_TRUE(st[r].ok()) << st[r].message();
      double max_err = 0;
      for (size_t i = 0; i < n; ++i) {
        double want = 0;
        for (int r = 0; r < R; ++r) want += inputs[r][i];
        max_err = std::max(max_err, std::fabs(double(data[0][i]) - want));
        for (int r = 1; r < R; ++r) ASSERT_EQ(std::memcmp(&data[r][i], &data[0][i], 4), 0) << "ranks differ at " << i;
      }
      std::printf("  R=%d allreduce max_abs_diff vs fp64 sum = %.3e\n", R, max_err);
      EXPECT_LT(max_err, 1e-5);
      if (run == 0)
        first = data;
      else
        for (int r = 0; r < R; ++r) ASSERT_EQ(std::memcmp(first[r].data(), data[r].data(), n * 4), 0) << "run differs";
    }
  }
}

// The halves of the all-reduce, on their own: after ReduceScatterSum a rank's owned chunk is the ring-order
// float sum (the scalar reference below, bit for bit); AllGatherChunks then gives AllReduceSum's bits; and
// GatherChunksToFirst brings every rank's owned chunk to rank 0 alone. Ragged n (chunks of unequal length,
// n < R too), fresh random inputs.
TEST(InprocTransport, ReduceScatterAllGatherAndGatherToTheFirstRank) {
  for (int R : {1, 2, 3, 5}) {
    for (size_t n : {size_t(3), size_t(1003), size_t(4099)}) {
      std::vector<std::vector<float>> in(R);
      for (int r = 0; r < R; ++r) {
        std::mt19937 g(uint32_t(100 * R + r + n));
        std::uniform_real_distribution<float> d(-2, 2);
        in[r].resize(n);
        for (auto& x : in[r]) x = d(g);
      }
      // The reference: chunk c summed in ring order from rank c, in float.
      std::vector<float> want(n);
      for (int c = 0; c < R; ++c)
        for (size_t i = Transport::ChunkBegin(n, R, c); i < Transport::ChunkBegin(n, R, c + 1); ++i) {
          float acc = in[c][i];
          for (int k = 1; k < R; ++k) acc = in[(c + k) % R][i] + acc;
          want[i] = acc;
        }
      auto rs = in, ar = in;
      std::vector<float> gathered(n, -7.f);
      auto fabric = InprocFabric::Create(R);
      auto st = RunRanks(fabric, [&](int r, Transport& t) -> Status {
        RW_RETURN_IF_ERROR(t.ReduceScatterSum(rs[r].data(), n, Tag(3, 0)));
        const int c = t.OwnedChunk();
        const size_t b = Transport::ChunkBegin(n, R, c), e = Transport::ChunkBegin(n, R, c + 1);
        RW_REQUIRE(std::memcmp(rs[r].data() + b, want.data() + b, (e - b) * 4) == 0,
                   "rank " << r << ": owned chunk " << c << " is not the ring-order sum");
        std::vector<float> mine(rs[r].begin() + std::ptrdiff_t(b), rs[r].begin() + std::ptrdiff_t(e));
        RW_RETURN_IF_ERROR(t.GatherChunksToFirst(mine.data(), n, r == 0 ? gathered.data() : nullptr, Tag(4, 0)));
        RW_RETURN_IF_ERROR(t.AllGatherChunks(rs[r].data(), n, Tag(3, 0)));
        return t.AllReduceSum(ar[r].data(), n, Tag(5, 0));
      });
      for (int r = 0; r < R; ++r) ASSERT_TRUE(st[r].ok()) << "R=" << R << " n=" << n << ": " << st[r].message();
      for (int r = 0; r < R; ++r) {
        EXPECT_EQ(std::memcmp(rs[r].data(), want.data(), n * 4), 0) << "R=" << R << " n=" << n << " rank " << r;
        EXPECT_EQ(std::memcmp(ar[r].data(), want.data(), n * 4), 0) << "R=" << R << " n=" << n << " rank " << r;
      }
      EXPECT_EQ(std::memcmp(gathered.data(), want.data(), n * 4), 0) << "R=" << R << " n=" << n;
    }
  }
}

TEST(InprocTransport, BarrierReturnsOnlyAfterEveryRankEntered) {
  auto fabric = InprocFabric::Create(4);
  std::atomic<int> entered{0};
  auto st = RunRanks(fabric, [&](int r, Transport& t) -> Status {
    std::this_thread::sleep_for(std::chrono::milliseconds(10 * r));
    entered.fetch_add(1);
    RW_RETURN_IF_ERROR(t.Barrier(Tag(5, 0)));
    RW_REQUIRE(entered.load() == 4, "rank " << r << " left the barrier with " << entered.load() << " entered");
    return Status::Ok();
  });
  for (auto& s : st) EXPECT_TRUE(s.ok()) << s.message();
}

}  // namespace
}  // namespace rw::runtime
