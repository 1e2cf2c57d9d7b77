// Ring benchmark (issue 3 figures), each section measured in this one run:
//   1. single-device attention fwd/bwd beside the sgemm ceiling;
//   2. in-process rings of R = 2, 4, 8 on the same total work: wall-time ratio to one device, overlap
//      ratio (compute / ring wall, per rank), measured per-rank compute imbalance (max / mean);
//   3. causal work imbalance of each layout at R = 4, 8 (attended pairs per rank, max / mean);
//   4. UCX between two processes: 64 MiB transfer rate beside memcpy;
//   5. peak memory per rank over UCX with R processes as R and L grow together (L = R x S).
// Usage: rw_bench_ring [--quick] [--L 16384] [--h 2] [--d 128] [--skip-ucx]
//        rw_bench_ring --jax R,L,H,D   (one JSON line, for bench/jax_ring_reference.py)
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kernels/attention.h"
#include "bench/ceilings.h"
#include "kernels/cpu/gemm.h"
#include "runtime/inproc_transport.h"
#include "runtime/layout.h"
#include "runtime/ring_attention.h"
#include "runtime/ucx_transport.h"

extern char** environ;

namespace {

using namespace rw::runtime;
using rw::kernels::AttentionParams;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

double Since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::vector<float> Random(size_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

struct Problem {
  int64_t L, h, d;
  std::vector<float> q, k, v, g;
};

Problem MakeProblem(int64_t L, int64_t h, int64_t d) {
  return {L, h, d, Random(L * h * d, 3), Random(L * h * d, 4), Random(L * h * d, 5), Random(L * h * d, 6)};
}

struct Timing {
  double fwd = 0, bwd = 0;
  std::vector<RingStats> fwd_stats, bwd_stats;
};

// One rank's forward + backward over any transport; shard gathered from the global problem.
Status RankRun(Transport& t, const Problem& P, const Layout& lay, int threads, bool causal, double* fwd_s,
               double* bwd_s, RingStats* fs, RingStats* bs) {
  const int r = t.rank();
  const auto idx = lay.GlobalIndices(r);
  const int64_t S = lay.shard_len(), w = P.h * P.d;
  std::vector<float> q(S * w), k(S * w), v(S * w), g(S * w);
  for (int64_t i = 0; i < S; ++i) {
    std::memcpy(&q[i * w], &P.q[idx[i] * w], w * 4);
    std::memcpy(&k[i * w], &P.k[idx[i] * w], w * 4);
    std::memcpy(&v[i * w], &P.v[idx[i] * w], w * 4);
    std::memcpy(&g[i * w], &P.g[idx[i] * w], w * 4);
  }
  RingAttentionConfig c;
  c.s = S;
  c.hq = c.hkv = P.h;
  c.d = P.d;
  c.causal = causal;
  c.num_threads = threads;
  c.tag.job = 11;
  RankQkv sh{q.data(), k.data(), v.data(), idx.data(), nullptr};
  std::vector<float> o(S * w), lse(P.h * S), dq(S * w), dk(S * w), dv(S * w);
  RW_RETURN_IF_ERROR(t.Barrier(c.tag));
  auto t0 = Clock::now();
  RW_RETURN_IF_ERROR(RingAttentionForward(t, c, sh, o.data(), lse.data(), fs));
  RW_RETURN_IF_ERROR(t.Barrier(c.tag));
  *fwd_s = Since(t0);
  t0 = Clock::now();
  RW_RETURN_IF_ERROR(RingAttentionBackward(t, c, sh, o.data(), lse.data(), g.data(), dq.data(), dk.data(), dv.data(), bs));
  RW_RETURN_IF_ERROR(t.Barrier(c.tag));
  *bwd_s = Since(t0);
  return Status::Ok();
}

// threads_per_rank 0: cores / R (no oversubscription).
Timing InprocRing(const Problem& P, LayoutKind kind, int R, bool causal, int cores, int reps, int threads_per_rank = 0) {
  Layout lay;
  if (!Layout::Make(kind, P.L, R, &lay).ok()) std::abort();
  const int threads = threads_per_rank > 0 ? threads_per_rank : std::max(1, cores / R);
  Timing best;
  std::vector<Timing> runs;
  for (int rep = 0; rep < reps; ++rep) {
    auto fabric = InprocFabric::Create(R);
    Timing tm;
    tm.fwd_stats.resize(R);
    tm.bwd_stats.resize(R);
    std::vector<double> f(R), b(R);
    std::vector<std::thread> th;
    for (int r = 0; r < R; ++r)
      th.emplace_back([&, r] {
        auto ep = fabric->Endpoint(r);
        auto st = RankRun(*ep, P, lay, threads, causal, &f[r], &b[r], &tm.fwd_stats[r], &tm.bwd_stats[r]);
        if (!st.ok()) {
          std::fprintf(stderr, "rank %d: %s\n", r, st.message().c_str());
          std::abort();
        }
      });
    for (auto& x : th) x.join();
    tm.fwd = *std::max_element(f.begin(), f.end());
    tm.bwd = *std::max_element(b.begin(), b.end());
    runs.push_back(tm);
  }
  std::sort(runs.begin(), runs.end(), [](const Timing& a, const Timing& b) { return a.fwd + a.bwd < b.fwd + b.bwd; });
  return runs[runs.size() / 2];
}

// Overlap of the critical rank (the one with the most compute): the others wait on it by construction,
// so their ratio measures imbalance, not overlap.
double CriticalOverlap(const std::vector<RingStats>& s) {
  size_t best = 0;
  for (size_t i = 0; i < s.size(); ++i)
    if (s[i].compute_seconds > s[best].compute_seconds) best = i;
  return s[best].overlap_ratio();
}
double ComputeImbalance(const std::vector<RingStats>& s) {
  double mx = 0, sum = 0;
  for (auto& x : s) {
    mx = std::max(mx, x.compute_seconds);
    sum += x.compute_seconds;
  }
  return sum > 0 ? mx / (sum / s.size()) : 1;
}

// Attended pairs per rank under a causal mask over the whole sequence: row g sees g + 1 keys.
double PairImbalance(LayoutKind kind, int64_t L, int R) {
  Layout lay;
  if (!Layout::Make(kind, L, R, &lay).ok()) return -1;
  double mx = 0, sum = 0;
  for (int r = 0; r < R; ++r) {
    double pairs = 0;
    for (int64_t g : lay.GlobalIndices(r)) pairs += double(g + 1);
    mx = std::max(mx, pairs);
    sum += pairs;
  }
  return mx / (sum / R);
}

// ---- processes -----------------------------------------------------------------------------------------
std::string Self() { return fs::read_symlink("/proc/self/exe").string(); }

std::vector<int> SpawnAndWait(const std::vector<std::vector<std::string>>& argvs, std::chrono::seconds deadline) {
  std::vector<pid_t> pids;
  for (const auto& a : argvs) {
    std::vector<std::string> copy = a;
    std::vector<char*> argv;
    for (auto& s : copy) argv.push_back(s.data());
    argv.push_back(nullptr);
    pid_t pid;
    if (posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0) std::abort();
    pids.push_back(pid);
  }
  std::vector<int> codes;
  const auto until = Clock::now() + deadline;
  for (pid_t pid : pids) {
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) != pid) {
      if (Clock::now() > until) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    codes.push_back(WIFEXITED(status) ? WEXITSTATUS(status) : 128);
  }
  return codes;
}

std::unique_ptr<UcxTransport> ConnectUcx(int rank, int size, const std::string& dir) {
  UcxOptions opt;
  opt.rank = rank;
  opt.size = size;
  std::unique_ptr<UcxTransport> t;
  if (!UcxTransport::Create(opt, &t).ok()) std::exit(1);
  const std::string mine = dir + "/addr." + std::to_string(rank);
  std::ofstream(mine + ".tmp") << t->address() << "\n";
  std::rename((mine + ".tmp").c_str(), mine.c_str());
  auto read = [&](int r) {
    std::string a;
    const auto until = Clock::now() + std::chrono::seconds(30);
    while (a.empty() && Clock::now() < until) {
      std::ifstream f(dir + "/addr." + std::to_string(r));
      std::getline(f, a);
      if (a.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return a;
  };
  const std::string next = read((rank + 1) % size), prev = read((rank + size - 1) % size);
  if (next.empty() || prev.empty() || !t->ConnectRing(prev, next, std::chrono::milliseconds(30000)).ok()) std::exit(1);
  return t;
}

// Resident set now and its high-water mark since the last ResetPeakRss(), in KiB (/proc/self/status).
long StatusKb(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(field, 0) == 0) return std::atol(line.c_str() + std::strlen(field));
  return -1;
}
// Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0): the peak then counts only what
// comes after UCX's own start-up mappings.
void ResetPeakRss() { std::ofstream("/proc/self/clear_refs") << "5"; }

// Child: one rank of a UCX ring. mode "bw" (ranks 0 -> 1 transfer rate) or "mem" (ring fwd+bwd, peak RSS).
int UcxChild(const std::string& mode, int rank, int size, const std::string& dir, int64_t S, int64_t h, int64_t d) {
  auto t = ConnectUcx(rank, size, dir);
  std::ofstream out(dir + "/result." + std::to_string(rank));
  if (mode == "bw") {
    const size_t bytes = size_t(64) << 20;
    std::vector<unsigned char> buf(bytes, 1), dst(bytes, 0);
    MsgTag tag;
    const int reps = 10;
    std::vector<double> times;
    for (int i = 0; i <= reps; ++i) {
      tag.hop = uint32_t(i);
      const auto t0 = Clock::now();
      Status st = rank == 0 ? t->Wait(t->SendNext(tag, buf.data(), bytes)) : t->Wait(t->RecvPrev(tag, dst.data(), bytes));
      if (!st.ok()) return 1;
      if (i) times.push_back(Since(t0));
    }
    if (rank == 1) {
      std::sort(times.begin(), times.end());
      const double ucx = bytes / times[times.size() / 2];
      std::vector<double> mt;
      for (int i = 0; i < reps; ++i) {
        const auto t0 = Clock::now();
        std::memcpy(dst.data(), buf.data(), bytes);
        mt.push_back(Since(t0));
      }
      std::sort(mt.begin(), mt.end());
      out << ucx / 1e9 << " " << bytes / mt[mt.size() / 2] / 1e9 << "\n";
    }
    return 0;
  }
  ResetPeakRss();
  const long base = StatusKb("VmRSS:");
  Layout lay;
  if (!Layout::Make(LayoutKind::kZigzag, S * size, size, &lay).ok()) return 1;
  // Each rank makes only its own shard (a real job's rank never holds the whole sequence).
  const auto idx = lay.GlobalIndices(rank);
  const int64_t w = h * d;
  std::vector<float> q = Random(S * w, 10 + rank), k = Random(S * w, 20 + rank), v = Random(S * w, 30 + rank),
                     g = Random(S * w, 40 + rank);
  RingAttentionConfig c;
  c.s = S;
  c.hq = c.hkv = h;
  c.d = d;
  c.causal = true;
  c.num_threads = 1;
  RankQkv sh{q.data(), k.data(), v.data(), idx.data(), nullptr};
  std::vector<float> o(S * w), lse(h * S), dq(S * w), dk(S * w), dv(S * w);
  RingStats fs, bs;
  const auto t0 = Clock::now();
  if (!RingAttentionForward(*t, c, sh, o.data(), lse.data(), &fs).ok()) return 1;
  if (!RingAttentionBackward(*t, c, sh, o.data(), lse.data(), g.data(), dq.data(), dk.data(), dv.data(), &bs).ok())
    return 1;
  const double secs = Since(t0);
  if (!t->Barrier(c.tag).ok()) return 1;
  out << base << " " << StatusKb("VmHWM:") << " " << secs << " " << fs.overlap_ratio() << " " << bs.overlap_ratio() << "\n";
  return 0;
}

std::vector<std::string> ReadResults(const std::string& dir, int R) {
  std::vector<std::string> out;
  for (int r = 0; r < R; ++r) {
    std::ifstream f(dir + "/result." + std::to_string(r));
    std::string s;
    std::getline(f, s);
    out.push_back(s);
  }
  return out;
}

std::string FreshDir(const std::string& name) {
  const std::string dir = (fs::temp_directory_path() / ("rw_bench_" + std::to_string(getpid()) + "_" + name)).string();
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "--ucx-child") {
    // --ucx-child MODE RANK SIZE DIR S H D
    return UcxChild(argv[2], std::atoi(argv[3]), std::atoi(argv[4]), argv[5], std::atoll(argv[6]), std::atoll(argv[7]),
                    std::atoll(argv[8]));
  }
  if (argc == 3 && std::string(argv[1]) == "--jax") {
    // --jax R,L,H,D: our in-process ring on the shape bench/jax_ring_reference.py times JAX on (contiguous,
    // causal, fp32); prints one JSON line.
    int R = 4;
    long long L = 4096, H = 2, D = 128;
    if (std::sscanf(argv[2], "%d,%lld,%lld,%lld", &R, &L, &H, &D) != 4) return 2;
    const int cores = rw::kernels::cpu::DefaultThreads();
    // Every rank may use every core: under the contiguous layout's causal imbalance the idle ranks' cores
    // then serve the busy ones (XLA's shared thread pool does the same for JAX).
    const Timing tm = InprocRing(MakeProblem(L, H, D), LayoutKind::kContiguous, R, true, cores, 3, cores);
    std::printf("{\"R\": %d, \"L\": %lld, \"H\": %lld, \"D\": %lld, \"fwd_s\": %.6f, \"bwd_s\": %.6f}\n", R, L, H,
                D, tm.fwd, tm.bwd);
    return 0;
  }
  int64_t L = 16384, H = 2, D = 128, mem_s = 8192, mem_h = 1, mem_d = 128;
  int reps = 3;
  bool ucx = true;
  std::vector<int> rings = {2, 4, 8}, mem_rings = {1, 2, 4, 8};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      L = 2048;
      H = 1;
      D = 64;
      reps = 1;
      mem_s = 512;
      mem_rings = {1, 2};
    } else if (a == "--L" && i + 1 < argc) {
      L = std::atoll(argv[++i]);
    } else if (a == "--h" && i + 1 < argc) {
      H = std::atoll(argv[++i]);
    } else if (a == "--d" && i + 1 < argc) {
      D = std::atoll(argv[++i]);
    } else if (a == "--skip-ucx") {
      ucx = false;
    } else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  const int cores = rw::kernels::cpu::DefaultThreads();
  const double sgemm = rw::bench::SgemmCeiling(cores, 5);
  std::printf("machine: %d cores; ceiling: sgemm 2048^3 (%s) = %.1f GFLOP/s\n", cores, rw::kernels::cpu::BlasName(), sgemm);
  const Problem P = MakeProblem(L, H, D);
  const double flops = rw::kernels::AttentionForwardFlops(L, L, H, D, true);

  std::printf("\n1-2. causal attention, L=%ld H=%ld D=%ld fp32, median of %d runs (ring: slowest rank)\n", long(L),
              long(H), long(D), reps);
  const Timing one = InprocRing(P, LayoutKind::kContiguous, 1, true, cores, reps);
  std::printf("  1 device:   fwd %.3f s (%.1f GFLOP/s, %.2f of sgemm)  bwd %.3f s (%.1f GFLOP/s, %.2f of sgemm)\n",
              one.fwd, flops / one.fwd / 1e9, flops / one.fwd / 1e9 / sgemm, one.bwd, 2.5 * flops / one.bwd / 1e9,
              2.5 * flops / one.bwd / 1e9 / sgemm);
  std::printf("  %-3s %-10s | %-8s %-8s %-11s | %-11s %-11s | %-13s\n", "R", "layout", "fwd s", "bwd s", "wall/1dev",
              "overlap fwd", "overlap bwd", "compute max/mean");
  for (int R : rings)
    for (LayoutKind kind : {LayoutKind::kContiguous, LayoutKind::kZigzag, LayoutKind::kStriped}) {
      const Timing tm = InprocRing(P, kind, R, true, cores, reps);
      std::printf("  %-3d %-10s | %8.3f %8.3f %11.3f | %11.3f %11.3f | fwd %.2f bwd %.2f\n", R, LayoutName(kind), tm.fwd,
                  tm.bwd, (tm.fwd + tm.bwd) / (one.fwd + one.bwd), CriticalOverlap(tm.fwd_stats), CriticalOverlap(tm.bwd_stats),
                  ComputeImbalance(tm.fwd_stats), ComputeImbalance(tm.bwd_stats));
      std::fflush(stdout);
    }

  std::printf("\n3. causal work per rank (attended pairs), max / mean, L = R x 8192\n");
  for (int R : {4, 8})
    std::printf("  R=%d  contiguous %.3f  zigzag %.3f  striped %.3f\n", R,
                PairImbalance(LayoutKind::kContiguous, R * 8192, R), PairImbalance(LayoutKind::kZigzag, R * 8192, R),
                PairImbalance(LayoutKind::kStriped, R * 8192, R));

  if (ucx) {
    std::printf("\n4. UCX transfer between two processes (64 MiB messages, median of 10) vs memcpy\n");
    {
      const std::string dir = FreshDir("bw");
      std::vector<std::vector<std::string>> argvs;
      for (int r = 0; r < 2; ++r) argvs.push_back({Self(), "--ucx-child", "bw", std::to_string(r), "2", dir, "0", "0", "0"});
      const auto codes = SpawnAndWait(argvs, std::chrono::seconds(120));
      double ucx_gbps = 0, mem_gbps = 0;
      std::istringstream(ReadResults(dir, 2)[1]) >> ucx_gbps >> mem_gbps;
      std::printf("  ucx %.2f GB/s  memcpy %.2f GB/s  ratio %.2f  (exit codes %d %d)\n", ucx_gbps, mem_gbps,
                  mem_gbps > 0 ? ucx_gbps / mem_gbps : 0.0, codes[0], codes[1]);
      fs::remove_all(dir);
    }
    std::printf("\n5. peak memory per rank, UCX processes, zigzag causal fwd+bwd, S=%ld rows per rank, H=%ld D=%ld\n",
                long(mem_s), long(mem_h), long(mem_d));
    std::printf("  %-3s %-8s | %-16s %-16s %-12s | %-8s %-9s %-9s\n", "R", "L", "max peak RSS MiB", "max growth MiB",
                "growth/R=1", "wall s", "ovl fwd", "ovl bwd");
  // growth = peak RSS during the ring fwd+bwd minus RSS before the shard was made (UCX's mappings excluded);
  // overlap columns are the minimum over ranks (zigzag is balanced, so every rank is critical).
    double growth1 = 0;
    for (int R : mem_rings) {
      const std::string dir = FreshDir("mem" + std::to_string(R));
      std::vector<std::vector<std::string>> argvs;
      for (int r = 0; r < R; ++r)
        argvs.push_back({Self(), "--ucx-child", "mem", std::to_string(r), std::to_string(R), dir, std::to_string(mem_s),
                         std::to_string(mem_h), std::to_string(mem_d)});
      const auto codes = SpawnAndWait(argvs, std::chrono::seconds(900));
      double peak = 0, growth = 0, wall = 0, of = 1, ob = 1;
      for (const auto& line : ReadResults(dir, R)) {
        double base = 0, mx = 0, secs = 0, a = 0, b = 0;
        std::istringstream(line) >> base >> mx >> secs >> a >> b;
        peak = std::max(peak, mx / 1024);
        growth = std::max(growth, (mx - base) / 1024);
        wall = std::max(wall, secs);
        of = std::min(of, a);
        ob = std::min(ob, b);
      }
      if (R == mem_rings.front()) growth1 = growth;
      bool ok = true;
      for (int c : codes) ok = ok && c == 0;
      std::printf("  %-3d %-8ld | %16.1f %16.1f %12.3f | %8.2f %9.3f %9.3f%s\n", R, long(mem_s * R), peak, growth,
                  growth1 > 0 ? growth / growth1 : 0.0, wall, of, ob, ok ? "" : "  (a rank failed)");
      std::fflush(stdout);
      fs::remove_all(dir);
    }
  }
  return 0;
}
