// The commands of `ringworld` that run in this process, one function each (main.cpp parses the arguments):
// train.cpp (train, device-host), plan.cpp, export.cpp, vqgan.cpp, eval.cpp, generate.cpp, needle.cpp, data_prepare.cpp. The cluster's
// commands (daemon, worker, the API clients) are in cluster.h.
//
// `ringworld train` is the embedded mode: one process holds the device actors of the ring (in-process
// transport), forms the ring by messages, and drives the same per-rank training loop a daemon's workers
// run; it prints progress and writes metrics.jsonl.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rw::cli {

// processes: each device in its own process (`ringworld device-host`), the ring over UCX.
int Train(const std::string& job_path, std::vector<std::string> overrides, bool processes = false);
// Hosts n device actors for another process, published on 127.0.0.1; writes the port to port_file.
int DeviceHost(int n, const std::string& port_file);
int Eval(const std::string& checkpoint, const std::string& data, int ring, const std::string& layout, int64_t seq_len);
// Generation with the prompt prefilled over a ring of `ring` devices in this process.
// The prompt is text (`prompt`) or ids (`prompt_ids`, non-empty); every generated id is printed (pieces of
// the checkpoint's tokenizer, or <id>).
int Generate(const std::string& checkpoint, const std::string& prompt, const std::vector<int32_t>& prompt_ids,
             int64_t max_tokens, double temperature, int64_t top_k, double top_p, uint64_t seed, int ring = 1,
             const std::string& layout = "zigzag");
// Vision generation (runtime/vision_generate.h): the prompt's text, then `frames` frames of the VQGAN's codes
// (one for --image), generated over a ring of `ring` device actors in this process, decoded and written as a
// PNG or an mp4.
int GenerateVision(const std::string& checkpoint, const std::string& prompt, const std::string& vqgan,
                   const std::string& image, const std::string& video, int64_t frames, double cfg_scale, double fps,
                   double temperature, int64_t top_k, double top_p, uint64_t seed, int ring = 1,
                   const std::string& layout = "zigzag");
// Needle retrieval over a ring of `ring` devices in this process; writes OUTPUT/needle.json and needle.png.
int Needle(const std::string& checkpoint, const std::vector<int64_t>& lengths, const std::vector<double>& depths,
           int64_t trials, int ring, const std::string& layout, const std::string& output, uint64_t seed);
// The per-device memory of each stage of a job (runtime/memory_plan.h); exit 1 when a stage does not fit in
// device_memory ("80GiB"; empty: no budget), 2 on a bad job or option.
int Plan(const std::string& job_path, const std::vector<std::string>& overrides, int64_t devices,
         const std::string& device_memory, int64_t threads, const std::string& device);
// A checkpoint of ours (a step-N directory, or a checkpoint.dir: its newest that verifies) as a plain
// Hugging Face directory: safetensors of at most max_shard_size each (+ index), config, tokenizer.
int Export(const std::string& checkpoint, const std::string& to, const std::string& dtype,
           const std::string& max_shard_size);
// A VQGAN (runtime/vqgan.h) on one file: an image or video's frames to codes, printed (or written to
// `output`) as the {"vision": [[codes], ...]} record data prepare reads; and such a record decoded to a PNG
// (one frame) or a video (.mp4) at `fps`.
int VqganEncode(const std::string& vqgan_dir, const std::string& input, int64_t max_frames, double fps,
                const std::string& output);
int VqganDecode(const std::string& vqgan_dir, const std::string& codes_path, const std::string& output, double fps);
int DataPrepare(const std::vector<std::string>& inputs, const std::string& output, const std::string& tokenizer,
                int64_t vision_codes, bool skip_bad, int64_t vocab_size, const std::string& vqgan = "",
                const std::string& vision_layout = "appended");

}  // namespace rw::cli
