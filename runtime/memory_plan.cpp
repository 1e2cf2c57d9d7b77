#include "runtime/memory_plan.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "kernels/backend.h"
#include "kernels/layers.h"
#include "runtime/layout.h"
#include "runtime/trainer.h"

namespace rw::runtime {
namespace {

int64_t Up64(int64_t x) { return (x + 63) / 64 * 64; }

struct Shape {
  int64_t E, F, V, L, H, HKV, D, HQ, HK;
  int64_t softmax;  // the widest softmax: V, or the larger of the text and vision vocabularies
  bool two_heads;   // a vision vocabulary: the loss head gathers each vocabulary's rows
};

Shape ShapeOf(const ModelConfig& m) {
  const int64_t D = m.head_dim();
  return {m.hidden_size,         m.intermediate_size, m.total_vocab(), m.num_hidden_layers, m.num_attention_heads,
          m.num_key_value_heads, D, m.num_attention_heads * D, m.num_key_value_heads * D,
          std::max(m.vocab_size, m.vision_vocab_size), m.vision_vocab_size > 0};
}

// Bytes a token holds in one layer's kept activations (LayerActs in runtime/model.cpp): x_in, rstd1, attn,
// lse, x_mid, rstd2 in fp32; h1, q, k, v, h2 in the activation dtype (b bytes).
int64_t LayerBytesPerToken(const Shape& s, int64_t b) {
  return 4 * (2 * s.E + s.HQ + s.H + 2) + b * (2 * s.E + s.HQ + 2 * s.HK);
}

}  // namespace

WorkspaceBytes ModelWorkspaceBytes(const ModelConfig& m, int64_t S, bool bf16, bool remat) {
  const Shape s = ShapeOf(m);
  const int64_t b = bf16 ? 2 : 4;
  WorkspaceBytes w;
  const int64_t layer = LayerBytesPerToken(s, b) * S;
  // Kept: every layer whole; under remat each layer's input, one layer recomputed in `scratch` and the
  // input it is recomputed from (x_again).
  w.activations = remat ? s.L * 4 * s.E * S + layer + 4 * s.E * S : s.L * layer;
  // x, o, dhf, dx, dh, tmp (fp32, S x E); rstd, loss; dq, dk, dv (fp32); hf and the attention's dout in the
  // activation dtype; under bf16 the fp32 rotation buffer of q/k before they are rounded.
  w.workspace = S * (4 * 6 * s.E + 4 * 2 + 4 * (s.HQ + 2 * s.HK) + b * (s.E + s.HQ) + (bf16 ? 4 * s.HQ : 0));
  // Two heads: one vocabulary's rows gathered (at most S): hf's rows, their dh, target, weight, row.
  if (s.two_heads) w.workspace += S * (b * s.E + 4 * s.E + 12);
  // RingBuffers: two K/V blocks [meta | K | V | index | segment] (64-byte aligned parts), the forward's
  // partial (O, lse), the backward's delta and its two outgoing and one incoming dK|dV (fp32).
  const int64_t kv = S * s.HK;
  const int64_t block = 64 + 2 * Up64(kv * b) + Up64(8 * S) + Up64(4 * S);
  w.ring = 2 * block + 4 * S * s.HQ + 4 * S * s.H + 4 * S * s.H + 3 * 2 * kv * 4;
  return w;
}

RankMemory RankMemoryOf(const JobConfig& job, int64_t S, int64_t ring, int64_t fsdp, int64_t threads, int64_t batch,
                        kernels::Device device) {
  const ModelConfig& m = job.model;
  const Shape s = ShapeOf(m);
  const bool bf16 = job.precision == "bf16";
  const int64_t b = bf16 ? 2 : 4;
  const ParamTable table(m);
  const int64_t P = int64_t(table.total());
  RankMemory r;
  if (fsdp <= 1) {
    r.weights = 4 * P + (bf16 ? 2 * P : 0);
    r.gradients = 4 * P;
    r.optimizer = job.optimizer.shard && ring > 1 ? 8 * (P / ring + 1) : 8 * P;  // optimizer.shard: its chunk
    r.comm = ring > 1 ? 4 * (P / ring + 1) : 0;
    r.snapshot = job.checkpoint.dir.empty() ? 0 : 12 * P;
  } else {
    // ZeRO-3 over fsdp (runtime/fsdp.h): 1/fsdp of every unit's master weights, gradients and moments; two
    // units gathered whole in fp32 (and their bf16 copies: the one in use, the next in flight), two whole
    // fp32 unit gradients (one computing, one in its reduce-scatter); the reduce-scatter's receive chunk, and
    // the replica ring's (`ring` ranks hold the same shard) all-reduce chunk. A checkpoint is sharded: each
    // writer copies its shard (weights and moments) for its background write.
    const int64_t layer = 2 * s.E + 2 * s.E * s.HQ + 2 * s.E * s.HK + 3 * s.E * s.F;  // a layer's parameters
    const int64_t head = s.V * s.E + s.E;
    const int64_t unit = std::max(layer, head);
    const int64_t shard = P / fsdp + int64_t(table.Units().size());  // each unit's chunk, rounded up
    r.weights = 4 * shard + 2 * (4 * unit + (bf16 ? 2 * unit : 0));
    r.gradients = 4 * shard + 2 * 4 * unit;
    r.optimizer = 8 * shard;
    r.comm = 4 * (unit / fsdp + 1) + (ring > 1 ? 4 * (shard / ring + 1) : 0);
    r.snapshot = job.checkpoint.dir.empty() ? 0 : 12 * shard;
  }
  const WorkspaceBytes none = ModelWorkspaceBytes(m, S, bf16, false), layer = ModelWorkspaceBytes(m, S, bf16, true);
  r.activations_no_remat = none.activations;
  r.activations_remat = layer.activations;
  r.remat = job.remat == "layer";
  r.workspace = (job.remat == "layer" ? layer : none).workspace;
  r.ring = none.ring;
  // Kernel scratch, per rank: what the device's backend says its kernels hold for these shapes.
  kernels::StepShape k;
  k.tokens = S, k.hidden = s.E, k.ffn = s.F, k.vocab = s.softmax, k.heads = s.H, k.kv_heads = s.HKV;
  k.head_dim = s.D, k.threads = threads, k.dtype = bf16 ? kernels::DType::kBF16 : kernels::DType::kF32;
  r.kernels = kernels::KernelScratchBytes(device, k);
  // The step's sequences (33 bytes a row each, all of the step's at once), the RankBatch each is moved
  // into (32 bytes a row) and the rank's layout indices.
  r.data = S * (33 * batch + 32 + 8);
  return r;
}

RankMemory RankMemoryOnMesh(const JobConfig& job, int64_t seq_len, const Mesh& mesh, int64_t threads, int64_t batch,
                            kernels::Device device) {
  // Under fsdp the replica ring (dp x sp ranks holding the same shard) is the all-reduce's.
  return mesh.fsdp > 1 ? RankMemoryOf(job, seq_len / mesh.sp, mesh.dp * mesh.sp, mesh.fsdp, threads, batch, device)
                       : RankMemoryOf(job, seq_len / mesh.sp, mesh.world(), 1, threads, batch, device);
}

Status PlanMemory(const JobConfig& job, const MemoryPlanOptions& opt, MemoryPlan* out) {
  RW_RETURN_IF_ERROR(job.model.Validate());
  RW_REQUIRE(job.precision == "fp32" || job.precision == "bf16",
             "precision: fp32 or bf16, got '" << job.precision << "'");
  RW_REQUIRE(job.remat == "none" || job.remat == "layer", "remat: none or layer, got '" << job.remat << "'");
  RW_REQUIRE(!job.stages.empty(), "stages: the job has none");
  RW_REQUIRE(opt.devices >= 0, "--devices: must be >= 0, got " << opt.devices);
  RW_REQUIRE(opt.device_memory >= 0, "--device-memory: must be >= 0, got " << opt.device_memory);
  RW_REQUIRE(opt.max_devices >= 1, "max_devices: must be >= 1, got " << opt.max_devices);
  RW_REQUIRE(opt.device == "cpu" || opt.device == "cuda", "--device: cpu or cuda, got '" << opt.device << "'");
  const bool on_device = opt.device == "cpu";
  const kernels::Device device = on_device ? kernels::Device::kCpu : kernels::Device::kCuda;
  MemoryPlan plan;
  plan.parameters = double(ParamTable(job.model).total());
  plan.precision = job.precision;
  plan.remat = job.remat;
  // A mesh search ignores ring.min_devices (it asks what the model needs, not what the job allows).
  JobConfig any = job;
  any.ring.min_devices = 1;
  JobConfig ring_only = any;  // the mesh search's sp rings: whether the layout splits a sequence over them
  ring_only.mesh = MeshConfig{};
  for (size_t i = 0; i < job.stages.size(); ++i) {
    StagePlan sp;
    sp.stage = int64_t(i);
    sp.seq_len = job.stages[i].seq_len;
    RW_REQUIRE(sp.seq_len >= 2, "stages[" << i << "].seq_len: must be >= 2, got " << sp.seq_len);
    RW_REQUIRE(job.stages[i].batch >= 1, "stages[" << i << "].batch: must be >= 1, got " << job.stages[i].batch);
    RW_REQUIRE(job.stage_devices(i) >= 1, "stages[" << i << "].devices: must be >= 1, got " << job.stage_devices(i));
    int64_t R = job.stage_devices(i);
    if (opt.devices > 0 && R > opt.devices) {  // the largest valid ring the devices allow
      R = 0;
      for (int64_t r = opt.devices; r >= 1 && R == 0; --r)
        if (any.CheckStageRing(i, r).ok()) R = r;
      RW_REQUIRE(R > 0, "stages[" << i << "]: no ring of at most " << opt.devices << " devices splits seq_len "
                                  << sp.seq_len << " (ring.layout = " << job.ring.layout << ")");
    } else {
      Status st = any.CheckStageRing(i, R);
      RW_REQUIRE(st.ok(), st.message());
    }
    sp.devices = R;
    RW_RETURN_IF_ERROR(any.StageMesh(i, R, &sp.mesh));
    sp.rows = sp.seq_len / sp.mesh.sp;
    auto threads_for = [&](int64_t ring) { return opt.threads > 0 ? opt.threads : int64_t(RankThreads(job, ring)); };
    const int64_t batch = job.stages[i].batch;
    sp.rank = RankMemoryOnMesh(job, sp.seq_len, sp.mesh, threads_for(R), batch, device);
    sp.rank.snapshot_on_device = on_device;
    if (opt.device_memory > 0 && sp.rank.total() > opt.device_memory) {
      sp.fits = false;
      // The fewest devices n = fsdp * sp whose rank fits; among meshes of n devices, the least memory.
      for (int64_t n = 1; n <= opt.max_devices && sp.fit_sp == 0; ++n) {
        int64_t best = -1;
        for (int64_t ring = 1; ring <= n; ++ring) {
          if (n % ring != 0 || !ring_only.CheckStageRing(i, ring).ok()) continue;
          RankMemory rm = RankMemoryOf(job, sp.seq_len / ring, ring, n / ring, threads_for(ring), batch, device);
          rm.snapshot_on_device = on_device;
          if (rm.total() <= opt.device_memory && (best < 0 || rm.total() < best)) {
            best = rm.total();
            sp.fit_fsdp = n / ring;
            sp.fit_sp = ring;
            sp.fit_rank = rm;
          }
        }
      }
    }
    plan.stages.push_back(sp);
  }
  *out = std::move(plan);
  return Status::Ok();
}

bool ParseByteSize(const std::string& text, int64_t* bytes) {
  size_t end = 0;
  double v = 0;
  try {
    v = std::stod(text, &end);
  } catch (...) {
    return false;
  }
  std::string unit = text.substr(end);
  unit.erase(std::remove_if(unit.begin(), unit.end(), [](unsigned char c) { return std::isspace(c); }), unit.end());
  std::transform(unit.begin(), unit.end(), unit.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  static const std::pair<const char*, double> kUnits[] = {
      {"", 1},           {"b", 1},       {"k", 1e3},     {"kb", 1e3},    {"m", 1e6},         {"mb", 1e6},
      {"g", 1e9},        {"gb", 1e9},    {"t", 1e12},    {"tb", 1e12},   {"kib", 1024.0},    {"mib", 1048576.0},
      {"gib", 1073741824.0}, {"tib", 1099511627776.0}};
  for (const auto& [name, mul] : kUnits)
    if (unit == name) {
      const double b = v * mul;
      if (!std::isfinite(b) || b < 1 || b > 9e18) return false;
      *bytes = int64_t(b);
      return true;
    }
  return false;
}

std::string FormatBytes(double b) {
  static const char* kUnit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  while (std::fabs(b) >= 1024 && u < 5) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.2f %s", b, kUnit[u]);
  return buf;
}

std::string FormatMemoryPlan(const MemoryPlan& plan, const MemoryPlanOptions& opt) {
  std::ostringstream os;
  char line[512];
  auto gib = [](int64_t b) { return double(b) / double(int64_t(1) << 30); };
  std::snprintf(line, sizeof(line),
                "%.3g parameters, precision %s, remat %s, %s devices; GiB a device (rank 0, the largest):\n",
                plan.parameters, plan.precision.c_str(), plan.remat.c_str(), opt.device.c_str());
  os << line;
  std::snprintf(line, sizeof(line), "%-5s %9s %5s %8s | %8s %8s %8s %8s %9s %9s %8s %8s %6s %9s | %8s %s\n", "stage",
                "seq_len", "devs", "rows", "weights", "grads", "optim", "acts", "acts alt", "workspace", "ring buf",
                "kernels", "other", "snapshot", "total", opt.device_memory > 0 ? "fits" : "");
  os << line;
  for (const auto& s : plan.stages) {
    const RankMemory& r = s.rank;
    const int64_t alt = plan.remat == "layer" ? r.activations_no_remat : r.activations_remat;
    std::snprintf(line, sizeof(line),
                  "%-5lld %9lld %5lld %8lld | %8.2f %8.2f %8.2f %8.2f %9.2f %9.2f %8.2f %8.2f %6.2f %8.2f%s | %8.2f %s\n",
                  (long long)s.stage, (long long)s.seq_len, (long long)s.devices, (long long)s.rows, gib(r.weights),
                  gib(r.gradients), gib(r.optimizer), gib(r.activations()), gib(alt), gib(r.workspace), gib(r.ring),
                  gib(r.kernels), gib(r.data + r.comm), gib(r.snapshot), r.snapshot_on_device ? " " : "*",
                  gib(r.total()), opt.device_memory > 0 ? (s.fits ? "yes" : "NO") : "");
    os << line;
  }
  for (const auto& s : plan.stages)
    if (s.mesh.data_groups() > 1) {
      os << "mesh (dp x fsdp x sp) of each stage:";
      for (const auto& t : plan.stages) os << " " << t.stage << ": " << t.mesh.ToString() << (&t == &plan.stages.back() ? "" : ";");
      os << ".\n";
      break;
    }
  os << "acts alt: the activations under remat " << (plan.remat == "layer" ? "none" : "layer")
     << "; other: the rows of the step's sequences and the all-reduce's chunk; snapshot: rank 0's copy for a "
        "checkpoint write"
     << (opt.device == "cpu" ? "" : " (*: host memory, not in the total)") << ".\n";
  if (opt.device_memory > 0) {
    os << "budget: " << FormatBytes(double(opt.device_memory)) << " a device.\n";
    for (const auto& s : plan.stages) {
      if (s.fits) continue;
      if (s.fit_sp == 0) {
        os << "stage " << s.stage << " does not fit on any mesh of up to " << opt.max_devices << " devices.\n";
        continue;
      }
      std::snprintf(line, sizeof(line),
                    "stage %lld does not fit (%.2f GiB > %.2f GiB); the smallest mesh that does: dp 1, fsdp %lld, "
                    "sp %lld (%lld devices, %.2f GiB a device)%s\n",
                    (long long)s.stage, gib(s.rank.total()), gib(opt.device_memory), (long long)s.fit_fsdp,
                    (long long)s.fit_sp, (long long)(s.fit_fsdp * s.fit_sp), gib(s.fit_rank.total()),
                    s.fit_fsdp > 1 ? ": weights sharded over fsdp (ZeRO-3): set mesh.fsdp" : "");
      os << line;
    }
  }
  os << "Not counted: the process's code, libraries and thread stacks (about 0.15-0.25 GiB of a CPU process), "
        "oneDNN's own scratch";
  for (const auto& s : plan.stages)
    if (s.mesh.fsdp > 1) {
      os << "; with the weights sharded, an init_from reads the whole model into host memory (4 bytes a "
            "parameter) before each rank keeps its shard";
      break;
    }
  os << ".\n";
  return os.str();
}

}  // namespace rw::runtime
