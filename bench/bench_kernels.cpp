// Kernel benchmark: attention forward/backward on the CPU (and CUDA when present) in GFLOP/s, fp32 rows as a
// ratio to the sgemm rate (oneDNN, or OpenBLAS) and bf16 rows as a ratio to the bf16 GEMM rate (oneDNN), both measured in
// this same run, beside a naive full-matrix fp32 attention.
//
// Napkin math, per head, non-causal: forward = 2 GEMMs of S*S*D multiply-adds = 4 S^2 D flops;
// backward = 5 GEMMs (S, dP, dV, dK, dQ) = 10 S^2 D flops (2.5x). Causal halves both. The softmax adds
// S^2 exps, which at D=128 is 1 exp per 512 GEMM flops: the kernel is GEMM-bound if the exps vectorize.
//
// Usage: rw_bench_kernels [--quick] [--s 2048,8192,32768] [--d 64,128] [--reps 3] [--threads N]
//                         [--naive-max-s 32768] [--cuda] [--cuda-only] [--json FILE]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "bench/ceilings.h"
#include "kernels/attention.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/vec.h"
#include "kernels/device_memory.h"

#ifdef RW_HAVE_CUDA
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#endif

namespace {

using namespace rw::kernels;
using Clock = std::chrono::steady_clock;

std::vector<int64_t> ParseList(const char* s) {
  std::vector<int64_t> out;
  for (const char* p = s; *p;) {
    out.push_back(std::strtoll(p, const_cast<char**>(&p), 10));
    if (*p == ',') ++p;
  }
  return out;
}

using rw::bench::MedianSeconds;

std::vector<float> Random(size_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// Naive attention, one head at a time: materialize the S x S score matrix, softmax it, multiply by V.
void NaiveAttention(int64_t s, int64_t h, int64_t d, bool causal, const float* q, const float* k,
                    const float* v, float* o, std::vector<float>& scores) {
  const float c = 1.f / std::sqrt(float(d));
  for (int64_t hh = 0; hh < h; ++hh) {
    cpu::Sgemm(false, true, s, s, d, c, q + hh * d, h * d, k + hh * d, h * d, 0.f, scores.data(), s);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < s; ++i) {
      float* row = scores.data() + i * s;
      const int64_t n = causal ? i + 1 : s;
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < n; ++j) m = std::max(m, row[j]);
      float sum = 0.f;
      for (int64_t j = 0; j < n; ++j) {
        row[j] = cpu::FastExp(row[j] - m);
        sum += row[j];
      }
      const float inv = 1.f / sum;
      for (int64_t j = 0; j < n; ++j) row[j] *= inv;
      for (int64_t j = n; j < s; ++j) row[j] = 0.f;
    }
    cpu::Sgemm(false, false, s, d, s, 1.f, scores.data(), s, v + hh * d, h * d, 0.f, o + hh * d, h * d);
  }
}

struct Options {
  std::vector<int64_t> s = {2048, 8192, 32768};
  std::vector<int64_t> d = {64, 128};
  int reps = 3;
  int threads = 0;
  int64_t naive_max_s = 32768;
  bool cuda_only = false;
  bool cuda = false;
  std::string json;  // --json FILE: one line per CUDA row, for ops/gpu-check.sh
};

// Heads per shape: enough work to time, small enough that the 32K rows finish in seconds on 2 cores.
int64_t HeadsFor(int64_t s) { return s <= 2048 ? 8 : (s <= 8192 ? 2 : 1); }

std::vector<bf16> ToBf16(const std::vector<float>& x) {
  std::vector<bf16> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = rw::kernels::ToBf16(x[i]);
  return out;
}

void BenchCpu(const Options& opt) {
  const int threads = opt.threads > 0 ? opt.threads : cpu::DefaultThreads();
  const double sgemm = rw::bench::SgemmCeiling(threads, std::max(opt.reps, 5));
  const double bgemm = rw::bench::Bf16Ceiling(threads, std::max(opt.reps, 5));
  std::printf("machine: %d threads, BLAS: %s\n", threads, cpu::BlasName());
  std::printf("ceilings (median, %d threads): fp32 sgemm 2048^3 = %.1f GFLOP/s; bf16 GEMM 2048^3 (%s) = %.1f GFLOP/s\n\n",
              threads, sgemm, cpu::Bf16GemmPath(), bgemm);
  std::printf("bf16 attention: %s\n\n", cpu::Bf16AttentionPath().c_str());
  // merge/fwd: a ring hop's merge pass of a partial (O, lse) into the running one (fp32, S rows), against
  // this forward block's time: what computing the hop's block straight into the running (O, lse) would save.
  std::printf("%-6s %-4s %-3s %-6s %-5s | %-9s %-6s | %-9s %-6s | %-9s %-6s | %-9s\n", "S", "D", "H", "causal",
              "dtype", "fwd GF/s", "/ceil", "bwd GF/s", "/ceil", "naive GF/s", "/sgemm", "merge/fwd");
  for (int64_t s : opt.s)
    for (int64_t d : opt.d)
      for (bool causal : {false, true})
        for (DType dt : {DType::kF32, DType::kBF16}) {
        const int64_t h = HeadsFor(s);
        auto q = Random(s * h * d, 3), k = Random(s * h * d, 4), v = Random(s * h * d, 5),
             g = Random(s * h * d, 6);
        const auto qb = ToBf16(q), kb = ToBf16(k), vb = ToBf16(v), gb = ToBf16(g);
        const bool narrow = dt == DType::kBF16;
        const double ceil = narrow ? bgemm : sgemm;
        std::vector<float> o(s * h * d), lse(h * s), delta(h * s), dq(s * h * d), dk(s * h * d), dv(s * h * d);
        AttentionParams p;
        p.device = Device::kCpu;
        p.sq = p.sk = s;
        p.hq = p.hkv = h;
        p.d = d;
        p.causal = causal;
        p.num_threads = threads;
        p.dtype = dt;
        p.q = narrow ? Dense3(qb.data(), h, d) : Dense3(q.data(), h, d);
        p.k = narrow ? Dense3(kb.data(), h, d) : Dense3(k.data(), h, d);
        p.v = narrow ? Dense3(vb.data(), h, d) : Dense3(v.data(), h, d);
        p.o = Dense3(o.data(), h, d);
        p.lse = lse.data();
        p.dout = narrow ? Dense3(gb.data(), h, d) : Dense3(g.data(), h, d);
        p.delta = delta.data();
        p.dq = Dense3(dq.data(), h, d);
        p.dk = Dense3(dk.data(), h, d);
        p.dv = Dense3(dv.data(), h, d);
        const double flops = AttentionForwardFlops(s, s, h, d, causal);
        const double tf = MedianSeconds(opt.reps, [&] {
          if (!AttentionForward(p).ok()) std::abort();
        });
        if (!AttentionBackwardPrep(p).ok()) std::abort();
        const double tb = MedianSeconds(opt.reps, [&] {
          if (!AttentionBackward(p).ok()) std::abort();
        });
        std::vector<float> o_acc = o, lse_acc = lse;
        const double tm = MedianSeconds(std::max(opt.reps, 3), [&] {
          if (!AttentionMerge(Device::kCpu, DType::kF32, s, h, d, Dense3(o_acc.data(), h, d), lse_acc.data(),
                              Dense3(o.data(), h, d), lse.data())
                   .ok())
            std::abort();
        });
        double naive = 0;
        if (!narrow && s <= opt.naive_max_s) {
          std::vector<float> scores(s * s), on(s * h * d);
          cpu::SetBlasThreads(threads);
          const double tn = MedianSeconds(std::min(opt.reps, 2), [&] {
            NaiveAttention(s, h, d, causal, q.data(), k.data(), v.data(), on.data(), scores);
          });
          naive = flops / tn / 1e9;
        }
        const double ff = flops / tf / 1e9, fb = 2.5 * flops / tb / 1e9;
        std::printf("%-6ld %-4ld %-3ld %-6s %-5s | %9.1f %6.2f | %9.1f %6.2f | ", long(s), long(d), long(h),
                    causal ? "yes" : "no", DTypeName(dt), ff, ff / ceil, fb, fb / ceil);
        if (naive > 0)
          std::printf("%9.1f %6.2f | ", naive, naive / sgemm);
        else
          std::printf("%9s %6s | ", "skipped", "-");
        std::printf("%9.4f\n", tm / tf);
        std::fflush(stdout);
      }
}

#ifdef RW_HAVE_CUDA
// Median seconds of one call on the GPU (each timed rep runs `inner` calls, then synchronizes).
double GpuSeconds(int reps, int inner, const std::function<void()>& fn) {
  fn();
  if (!DeviceSynchronize(Device::kCuda).ok()) std::abort();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    for (int j = 0; j < inner; ++j) fn();
    if (!DeviceSynchronize(Device::kCuda).ok()) std::abort();
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count() / inner);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// The GPU ceiling: cuBLAS bf16 GEMM 8192^3 with fp32 accumulation.
double CublasBf16Tflops() {
  const int n = 8192;
  DeviceBuffer a(Device::kCuda, size_t(n) * n * 2), b(Device::kCuda, size_t(n) * n * 2), c(Device::kCuda, size_t(n) * n * 2);
  auto h = ToHalf(DType::kBF16, Random(size_t(n) * n, 9));
  if (!CopyToDevice(Device::kCuda, a.get(), h.data(), h.size() * 2).ok()) std::abort();
  if (!CopyToDevice(Device::kCuda, b.get(), h.data(), h.size() * 2).ok()) std::abort();
  cublasHandle_t handle;
  cublasCreate(&handle);
  const float one = 1.f, zero = 0.f;
  const double t = GpuSeconds(5, 5, [&] {
    cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a.get(), CUDA_R_16BF, n, b.get(), CUDA_R_16BF, n,
                 &zero, c.get(), CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  });
  cublasDestroy(handle);
  return 2.0 * n * n * n / t / 1e12;
}

void BenchCuda(const Options& opt) {
  if (!CudaAvailable()) {
    std::printf("cuda: no CUDA device on this machine; GPU rows skipped\n");
    return;
  }
  FILE* json = opt.json.empty() ? nullptr : std::fopen(opt.json.c_str(), "w");
  const double ceiling = CublasBf16Tflops();
  std::printf("\nceiling: cuBLAS bf16 GEMM 8192^3 = %.1f TFLOP/s (median)\n", ceiling);
  std::printf("%-6s %-4s %-3s %-6s | %-10s %-7s | %-10s %-7s\n", "S", "D", "H", "causal", "fwd TF/s", "/cublas",
              "bwd TF/s", "/cublas");
  const Device dev = Device::kCuda;
  for (int64_t s : opt.s)
    for (int64_t d : opt.d)
      for (bool causal : {false, true}) {
        const int64_t h = 16;
        const size_t n = size_t(s) * h * d;
        DeviceBuffer q(dev, n * 2), k(dev, n * 2), v(dev, n * 2), o(dev, n * 2), g(dev, n * 2), lse(dev, h * s * 4),
            delta(dev, h * s * 4), dq(dev, n * 4), dk(dev, n * 4), dv(dev, n * 4);
        for (auto* b : {&q, &k, &v, &g}) {
          auto x = ToHalf(DType::kBF16, Random(n, uint64_t(b->get()) % 1000));
          if (!CopyToDevice(dev, b->get(), x.data(), n * 2).ok()) std::abort();
        }
        AttentionParams p;
        p.device = dev;
        p.dtype = DType::kBF16;
        p.o_dtype = DType::kBF16;  // the cuda attention writes o in its dtype
        p.sq = p.sk = s;
        p.hq = p.hkv = h;
        p.d = d;
        p.causal = causal;
        p.q = Dense3(q.get(), h, d);
        p.k = Dense3(k.get(), h, d);
        p.v = Dense3(v.get(), h, d);
        p.o = Dense3(o.get(), h, d);
        p.lse = lse.as<float>();
        p.dout = Dense3(g.get(), h, d);
        p.delta = delta.as<float>();
        p.dq = Dense3(dq.get(), h, d);
        p.dk = Dense3(dk.get(), h, d);
        p.dv = Dense3(dv.get(), h, d);
        const double flops = AttentionForwardFlops(s, s, h, d, causal);
        const int inner = s <= 2048 ? 20 : (s <= 8192 ? 5 : 1);
        const double tf = GpuSeconds(opt.reps, inner, [&] {
          if (!AttentionForward(p).ok()) std::abort();
        });
        if (!AttentionBackwardPrep(p).ok()) std::abort();
        const double tb = GpuSeconds(opt.reps, inner, [&] {
          if (!AttentionBackward(p).ok()) std::abort();
        });
        const double ff = flops / tf / 1e12, fb = 2.5 * flops / tb / 1e12;
        std::printf("%-6ld %-4ld %-3ld %-6s | %10.1f %7.2f | %10.1f %7.2f\n", long(s), long(d), long(h),
                    causal ? "yes" : "no", ff, ff / ceiling, fb, fb / ceiling);
        if (json)
          std::fprintf(json,
                       "{\"s\": %ld, \"d\": %ld, \"h\": %ld, \"causal\": %s, \"fwd_tflops\": %.3f, "
                       "\"bwd_tflops\": %.3f, \"cublas_tflops\": %.3f}\n",
                       long(s), long(d), long(h), causal ? "true" : "false", ff, fb, ceiling);
        std::fflush(stdout);
      }
  if (json) std::fclose(json);
}
#endif

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--quick") {
      opt.s = {512, 1024};
      opt.d = {64, 128};
      opt.reps = 1;
    } else if (a == "--s") {
      opt.s = ParseList(next());
    } else if (a == "--d") {
      opt.d = ParseList(next());
    } else if (a == "--reps") {
      opt.reps = std::max(1, std::atoi(next()));
    } else if (a == "--threads") {
      opt.threads = std::atoi(next());
    } else if (a == "--naive-max-s") {
      opt.naive_max_s = std::atoll(next());
    } else if (a == "--cuda-only") {
      opt.cuda_only = opt.cuda = true;
    } else if (a == "--cuda") {
      opt.cuda = true;
    } else if (a == "--json") {
      opt.json = next();
    } else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  if (!opt.cuda_only) BenchCpu(opt);
  if (opt.cuda) {
#ifdef RW_HAVE_CUDA
    BenchCuda(opt);
#else
    std::printf("cuda: this build has no CUDA backend; GPU rows skipped\n");
#endif
  }
  return 0;
}
