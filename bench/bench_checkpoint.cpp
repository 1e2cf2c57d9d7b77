// Checkpoint writes against the disk: the rate of SaveCheckpoint (safetensors + config + trainer state +
// CRC32C MANIFEST, fsync, rename, parent fsync) over the rate of a plain write + fsync + rename of the same
// bytes on the same file system, measured in the same run (the ceiling); and what an asynchronous
// checkpoint costs the training loop (the snapshot copy at the step boundary) against a synchronous write;
// and a sharded checkpoint (fsdp 4: four writers, one thread each as four ranks would, each its shard file,
// then the commit under one MANIFEST) over the same ceiling. Medians of --repeats runs.   rw_bench_checkpoint [--quick] [--dir DIR] [--repeats N]
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "runtime/checkpoint.h"

using namespace rw::runtime;
namespace fs = std::filesystem;

namespace {

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The ceiling: the same bytes in one file, written, fsynced, renamed, parent fsynced.
double PlainWrite(const fs::path& dir, const std::vector<const float*>& bufs, size_t n) {
  const double t0 = Now();
  const fs::path tmp = dir / "plain.tmp", fin = dir / "plain.bin";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  for (const float* b : bufs) {
    const char* p = reinterpret_cast<const char*>(b);
    size_t left = n * sizeof(float);
    while (left > 0) {
      const ssize_t w = ::write(fd, p, std::min<size_t>(left, 64 << 20));
      if (w <= 0) break;
      p += w;
      left -= size_t(w);
    }
  }
  ::fsync(fd);
  ::close(fd);
  fs::rename(tmp, fin);
  const int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  ::fsync(d);
  ::close(d);
  return Now() - t0;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  int repeats = 5;
  std::string dir = (fs::temp_directory_path() / ("rw_bench_ckpt_" + std::to_string(getpid()))).string();
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--dir") && i + 1 < argc) dir = argv[++i];
    else if (!std::strcmp(argv[i], "--repeats") && i + 1 < argc) repeats = std::atoi(argv[++i]);
  }
  if (quick) repeats = 1;
  ModelConfig c;
  c.vocab_size = quick ? 259 : 32000;
  c.hidden_size = quick ? 64 : 512;
  c.intermediate_size = quick ? 128 : 1408;
  c.num_hidden_layers = quick ? 2 : 8;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 4;
  const ParamTable t(c);
  const size_t n = t.total();
  std::vector<float> p(n), m(n), v(n), sp(n), sm(n), sv(n);
  for (size_t i = 0; i < n; ++i) p[i] = float(i % 1000) * 1e-3f, m[i] = p[i] * 0.5f, v[i] = p[i] * p[i];
  fs::create_directories(dir);
  std::vector<double> plain, save, snap, sharded;
  int64_t bytes = 0;
  for (int r = 0; r < repeats; ++r) {
    // Alternate which goes first, and start each from no file of its own (deletes are not timed).
    auto run_plain = [&] {
      fs::remove(fs::path(dir) / "plain.bin");
      ::sync();
      plain.push_back(PlainWrite(dir, {p.data(), m.data(), v.data()}, n));
    };
    if (r % 2 == 0) run_plain();
    fs::remove_all(fs::path(dir) / "ck");
    ::sync();
    const double t0 = Now();
    std::string path;
    const auto st = SaveCheckpoint((fs::path(dir) / "ck").string(), c, t, p.data(), m.data(), v.data(),
                                   TrainerState{r + 1, 0, r + 1, 1, "bench"}, SaveOptions{1}, &path, &bytes);
    save.push_back(Now() - t0);
    if (!st.ok()) {
      std::fprintf(stderr, "rw_bench_checkpoint: %s\n", st.message().c_str());
      return 1;
    }
    if (r % 2 == 1) run_plain();
    {  // sharded 4 ways: the writers in parallel, then rank 0's commit
      fs::remove_all(fs::path(dir) / "sk");
      ::sync();
      const double ts = Now();
      constexpr int F = 4;
      std::vector<ShardFile> files(F);
      std::vector<Status> status(F, Status::Ok());
      std::vector<std::thread> writers;
      for (int k = 0; k < F; ++k)
        writers.emplace_back([&, k] {
          const size_t lo = n * size_t(k) / F, hi = n * size_t(k + 1) / F;
          status[size_t(k)] = WriteCheckpointShard((fs::path(dir) / "sk").string(), r + 1, k, F, n,
                                                   {{lo, hi - lo, p.data() + lo, m.data() + lo, v.data() + lo}},
                                                   &files[size_t(k)]);
        });
      for (auto& w : writers) w.join();
      Status st2 = Status::Ok();
      for (const auto& s : status)
        if (!s.ok()) st2 = s;
      if (st2.ok())
        st2 = CommitShardedCheckpoint((fs::path(dir) / "sk").string(), c, files, TrainerState{r + 1, 0, r + 1, 1, "bench"},
                                      SaveOptions{1}, &path);
      sharded.push_back(Now() - ts);
      if (!st2.ok()) {
        std::fprintf(stderr, "rw_bench_checkpoint: sharded: %s\n", st2.message().c_str());
        return 1;
      }
    }
    const double t1 = Now();  // what an asynchronous checkpoint stalls the step for: the snapshot copy
    std::memcpy(sp.data(), p.data(), n * 4);
    std::memcpy(sm.data(), m.data(), n * 4);
    std::memcpy(sv.data(), v.data(), n * 4);
    snap.push_back(Now() - t1);
  }
  fs::remove_all(dir);
  const double mb = double(bytes) / 1e6, plain_mb = double(3 * n * 4) / 1e6;
  const double rate_plain = plain_mb / Median(plain), rate_save = mb / Median(save);
  std::printf("checkpoint of %.1fM parameters (%.1f MB with optimizer moments), %d repeats, medians\n", double(n) / 1e6, mb,
              repeats);
  std::printf("  plain write+fsync+rename (ceiling) %8.1f MB/s  %7.3f s\n", rate_plain, Median(plain));
  std::printf("  SaveCheckpoint (CRC32C, MANIFEST)  %8.1f MB/s  %7.3f s   ratio to ceiling %.2f\n", rate_save,
              Median(save), rate_save / rate_plain);
  std::printf("  sharded, 4 writers + commit       %8.1f MB/s  %7.3f s   ratio to ceiling %.2f\n",
              plain_mb / Median(sharded), Median(sharded), plain_mb / Median(sharded) / rate_plain);
  std::printf("  training stall: async snapshot %.3f s vs sync write %.3f s (%.1fx less)\n", Median(snap), Median(save),
              Median(save) / std::max(1e-9, Median(snap)));
  return 0;
}
