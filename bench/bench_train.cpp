// Training throughput (issue 4 figures): tokens/s and model FLOP utilization against the sgemm
// rate measured in this same run, for a tiny and a small LLaMA at several sequence lengths and ring sizes
// (in-process ring; each rank gets cores / R kernel threads). Each sequence is one document, so attention
// covers the whole causal triangle.
//
// Model FLOPs per token (forward + backward, the usual 6N rule plus causal attention):
//   6 * N_matmul_params + 6 * layers * seq_len * hidden       (12 L E per layer, halved by the causal mask)
// Usage: rw_bench_train [--quick] [--steps 3] [--model tiny|small] [--seq L] [--ring R] [--precision fp32|bf16] [--remat none|layer] [--optimizer-shard]
//                       [--dp D] [--fsdp F]
// --dp/--fsdp: the R devices as a mesh of dp x fsdp data groups of sp = R / (dp x fsdp) ranks, one sequence
// per group (a step's tokens: seq x dp x fsdp); fsdp > 1 shards the weights (ZeRO-3). Peak memory per device
// is then the process's peak / R.
// Two ceilings measured in the run: the fp32 sgemm rate (OpenBLAS) and the bf16 GEMM rate (oneDNN, or the
// widened fallback); fp32 rows report MFU against the first, bf16 rows against the second.
// The peak column is the process's peak resident memory, which only grows: it belongs to the row only when
// the process runs one row (--model, --seq and --ring given).
// Beside it, `ringworld plan`'s figure for the row (runtime/memory_plan.h: R ranks in this one process) plus
// the process's resident memory before the first row (libraries, the ceilings' leftovers), and their ratio.
// --steps N: N steps per row, the first a warm-up that is not timed; --steps 1 times that one step (for
// 64K rows, minutes a step on 2 cores, where a warm-up would double the run for little).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "bench/ceilings.h"
#include "kernels/cpu/gemm.h"
#include "runtime/inproc_transport.h"
#include "runtime/memory_plan.h"
#include "runtime/trainer.h"

using namespace rw::runtime;

namespace {

int64_t ResidentBytes() {  // VmRSS of this process
  FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  long long kb = 0;
  while (std::fgets(line, sizeof(line), f))
    if (std::sscanf(line, "VmRSS: %lld kB", &kb) == 1) break;
  std::fclose(f);
  return int64_t(kb) * 1024;
}

struct Shape {
  const char* name;
  int64_t hidden, inter, layers, heads, kv;
};

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  int steps = 3;
  std::string only_model;  // --model tiny|small: only that model
  int64_t only_seq = 0;    // --seq L: only that sequence length
  int only_ring = 0;       // --ring R: only that ring size
  std::string only_precision;  // --precision fp32|bf16: only that precision
  std::string remat = "none";  // --remat none|layer
  bool shard = false;          // --optimizer-shard: optimizer.shard (ZeRO-1 over the ring)
  int64_t dp = 1, fsdp = 1;    // --dp, --fsdp: the mesh
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") quick = true;
    if (a == "--steps" && i + 1 < argc) steps = std::max(1, std::atoi(argv[++i]));
    if (a == "--model" && i + 1 < argc) only_model = argv[++i];
    if (a == "--seq" && i + 1 < argc) only_seq = std::atoll(argv[++i]);
    if (a == "--ring" && i + 1 < argc) only_ring = std::atoi(argv[++i]);
    if (a == "--precision" && i + 1 < argc) only_precision = argv[++i];
    if (a == "--remat" && i + 1 < argc) remat = argv[++i];
    if (a == "--optimizer-shard") shard = true;
    if (a == "--dp" && i + 1 < argc) dp = std::max(1, std::atoi(argv[++i]));
    if (a == "--fsdp" && i + 1 < argc) fsdp = std::max(1, std::atoi(argv[++i]));
  }
  const int cores = rw::kernels::cpu::DefaultThreads();
  const double sgemm = rw::bench::SgemmCeiling(cores), bgemm = rw::bench::Bf16Ceiling(cores);
  std::printf("machine: %d cores; ceilings 2048^3: fp32 sgemm (%s) %.1f GFLOP/s, bf16 GEMM (%s) %.1f GFLOP/s\n",
              cores, rw::kernels::cpu::BlasName(), sgemm, rw::kernels::cpu::Bf16GemmPath(), bgemm);
  std::printf("bf16 attention: %s\n", rw::kernels::cpu::Bf16AttentionPath().c_str());
  const int64_t base = ResidentBytes();
  std::printf("process before the rows: %.3f GiB resident\n", double(base) / double(1 << 30));
  std::printf("%-6s %-6s %-3s %-10s %-5s | %-10s %-10s %-12s %-8s %-8s %-9s %-9s %-7s\n", "model", "seq", "R",
              "dp,fsdp,sp", "prec", "step s", "tokens/s", "model GF/s", "MFU", "peak GiB", "plan+base", "peak/plan",
              "hidden");
  const std::vector<Shape> shapes = {{"tiny", 128, 352, 4, 8, 4}, {"small", 512, 1408, 4, 8, 4}};
  std::vector<int64_t> seqs = quick ? std::vector<int64_t>{256} : std::vector<int64_t>{4096, 16384};
  if (only_seq > 0) seqs = {only_seq};
  for (const auto& sh : shapes)
    for (int64_t L : seqs)
      for (int R : quick ? std::vector<int>{1, 2} : std::vector<int>{1, 2, 4})
        for (const std::string prec : {"fp32", "bf16"}) {
        if (!only_model.empty() && only_model != sh.name) continue;
        if (only_ring > 0 && only_ring != R) continue;
        if (!only_precision.empty() && only_precision != prec) continue;
        if (R % (dp * fsdp) != 0) continue;  // no such mesh of R devices
        const Mesh mesh{dp, fsdp, R / (dp * fsdp)};
        JobConfig job;
        job.model.hidden_size = sh.hidden;
        job.model.intermediate_size = sh.inter;
        job.model.num_hidden_layers = sh.layers;
        job.model.num_attention_heads = sh.heads;
        job.model.num_key_value_heads = sh.kv;
        job.model.max_position_embeddings = L;
        // One copy-task document fills each sequence (2 n + 3 = L + 1 tokens: L positions, each with a target),
        // so attention is causal over the whole sequence and the FLOP count below holds (packed short
        // documents would mask most of it away).
        job.data.min_len = job.data.max_len = (L - 2) / 2;
        job.ring.devices = R;
        job.ring.layout = "zigzag";
        job.precision = prec;
        job.remat = remat;
        job.optimizer.shard = shard;
        job.mesh.dp = mesh.dp;
        job.mesh.fsdp = mesh.fsdp;
        job.stages = {StageConfig{L, 10000, steps, mesh.data_groups()}};
        const ParamTable table(job.model);
        double matmul_params = 0;
        for (const auto& t : table.tensors())
          if (t.shape.size() == 2 && t.name != "model.embed_tokens.weight") matmul_params += double(t.numel);
        const double flops_per_token = 6 * matmul_params + 6.0 * double(sh.layers * L * sh.hidden);
        std::vector<double> secs;
        int64_t peak = 0;  // the process's peak resident bytes (every rank is in this process)
        const std::vector<RankRings> rings = InprocMesh(mesh);
        std::vector<std::thread> th;
        std::vector<Status> st(R);
        TrainResult first;  // rank 0's: the weight shards' collective time, and the compute's wait for it
        for (int r = 0; r < R; ++r)
          th.emplace_back([&, r] {
            st[r] = TrainRank(rings[size_t(r)], job, [&](const StepMetrics& m) {
              secs.push_back(m.step_seconds);
              peak = std::max(peak, m.peak_bytes);
            }, r == 0 ? &first : nullptr);
          });
        for (auto& x : th) x.join();
        for (auto& s : st)
          if (!s.ok()) {
            std::fprintf(stderr, "%s\n", s.message().c_str());
            return 1;
          }
        if (secs.size() > 1) secs.erase(secs.begin());  // the first step warms up
        std::sort(secs.begin(), secs.end());
        const double step = secs[secs.size() / 2], tps = double(L * mesh.data_groups()) / step,
                     gf = tps * flops_per_token / 1e9;
        // The plan's rank (PlanMemory's choice of ring for each mesh) times R, plus the process baseline.
        const int64_t planned =
            R * RankMemoryOnMesh(job, L, mesh, RankThreads(job, R), mesh.data_groups()).total() + base;
        char m[32];
        std::snprintf(m, sizeof(m), "%lld,%lld,%lld", (long long)mesh.dp, (long long)mesh.fsdp, (long long)mesh.sp);
        // hidden: the share of the shards' gather and reduce-scatter time the compute did not wait for.
        char hidden[16] = "-";
        if (first.shard_comm_seconds > 0)
          std::snprintf(hidden, sizeof(hidden), "%.2f", 1.0 - first.shard_wait_seconds / first.shard_comm_seconds);
        std::printf("%-6s %-6ld %-3d %-10s %-5s | %10.3f %10.0f %12.1f %8.3f %8.2f %9.2f %9.3f %7s\n", sh.name, long(L), R,
                    m, prec.c_str(), step, tps, gf, gf / (prec == "bf16" ? bgemm : sgemm),
                    double(peak) / double(1 << 30), double(planned) / double(1 << 30), double(peak) / double(planned),
                    hidden);
        std::fflush(stdout);
      }
  return 0;
}
