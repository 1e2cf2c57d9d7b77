// ringworld: the command line. Subcommands arrive with their issues; `train` runs a job embedded.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "cli/cluster.h"
#include "cli/commands.h"
#include "runtime/job_config.h"

// The most devices a ring of eval, generate or needle runs in this one process.
constexpr int kMaxLocalRing = 256;

int main(int argc, char** argv) {
  CLI::App app{"RingWorld: Blockwise RingAttention training"};
  app.require_subcommand(1);
  std::string job_path;
  std::vector<std::string> overrides;
  bool describe = false;
  auto* train = app.add_subcommand("train", "run a job embedded: its ring of devices in this process");
  train->add_option("job", job_path, "job file (YAML), e.g. configs/tiny-cpu.yaml");
  train->add_option("--set", overrides, "override a setting: key=value (stages as stages.N.key)");
  train->add_flag("--help-config", describe, "list every setting of a job file");
  bool processes = false;
  train->add_flag("--processes", processes, "each device in its own process, the ring over UCX");
  std::string plan_job, plan_memory, plan_device = "cpu";
  std::vector<std::string> plan_overrides;
  int64_t plan_devices = 0, plan_threads = 0;
  auto* plan = app.add_subcommand("plan", "bytes per device of each stage of a job, and whether it fits");
  plan->add_option("job", plan_job, "job file (YAML)")->required();
  plan->add_option("--set", plan_overrides, "override a setting: key=value (stages as stages.N.key)");
  plan->add_option("--devices", plan_devices, "devices the job gets (stages asking more shrink their ring)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  plan->add_option("--device-memory", plan_memory, "memory of one device, e.g. 80GiB: say whether each stage fits, "
                                                   "and if not the smallest mesh that does");
  plan->add_option("--device", plan_device, "cpu | cuda: on cuda the checkpoint snapshot is host memory, apart")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  plan->add_option("--threads", plan_threads, "kernel threads per rank (default: as the trainer picks)")
      ->check(CLI::Range(int64_t(1), int64_t(4096)));
  int host_devices = 1;
  std::string port_file;
  auto* host = app.add_subcommand("device-host", "(internal) host device actors for a train --processes run");
  host->add_option("n", host_devices, "devices")->required();
  host->add_option("port_file", port_file, "where to write the published port")->required();
  host->group("");  // hidden from --help
  std::string export_ckpt, export_to, export_dtype = "float32", export_shard = "5GB";
  auto* exp = app.add_subcommand("export", "a checkpoint as a plain Hugging Face directory (transformers loads it)");
  exp->add_option("--checkpoint", export_ckpt, "a checkpoint (step-N directory, whole or sharded) or a "
                                                "checkpoint.dir (its newest that verifies)")->required();
  exp->add_option("--to", export_to, "the Hugging Face directory to write (must not exist, or be empty)")->required();
  exp->add_option("--dtype", export_dtype, "float32 | bfloat16 | float16 (the weights as written)");
  exp->add_option("--max-shard-size", export_shard, "the most bytes of one safetensors file, e.g. 5GB, 2GiB");
  std::string checkpoint, data, layout = "zigzag";
  int ring = 1;
  int64_t seq_len = 1024;
  auto* eval = app.add_subcommand("eval", "mean loss and perplexity of a checkpoint on a prepared dataset");
  eval->add_option("--checkpoint", checkpoint, "checkpoint directory (ours or a Hugging Face LLaMA)")->required();
  eval->add_option("--data", data, "dataset directory made by ringworld data prepare")->required();
  eval->add_option("--ring", ring, "devices in the ring (in this process)")->check(CLI::Range(1, kMaxLocalRing));
  eval->add_option("--layout", layout, "contiguous | zigzag | striped");
  eval->add_option("--seq-len", seq_len, "tokens per sequence")->check(CLI::Range(int64_t(2), int64_t(1) << 24));
  std::string gen_ckpt, prompt;
  int64_t max_tokens = 64, top_k = 0;
  double temperature = 0, top_p = 1.0;
  uint64_t gen_seed = 1;
  std::vector<int32_t> prompt_ids;
  auto* gen = app.add_subcommand("generate", "continue a prompt with the checkpoint's tokenizer, greedy or sampled");
  gen->add_option("--checkpoint", gen_ckpt, "checkpoint directory")->required();
  auto* prompt_opt = gen->add_option("--prompt", prompt, "text to continue (encoded by the checkpoint's tokenizer, BOS first)");
  gen->add_option("--prompt-ids", prompt_ids, "token ids to continue, as they are (e.g. 1,17,9: a model trained on "
                                              "pre-tokenized data)")
      ->delimiter(',')
      ->excludes(prompt_opt);
  gen->add_option("--max-tokens", max_tokens, "tokens to generate (stops at EOS)")->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  gen->add_option("--temperature", temperature, "0: greedy")->check(CLI::Range(0.0, 100.0));
  gen->add_option("--top-k", top_k, "keep the k most likely tokens (0: all)")->check(CLI::NonNegativeNumber);
  gen->add_option("--top-p", top_p, "nucleus sampling mass")->check(CLI::Range(1e-6, 1.0));
  gen->add_option("--seed", gen_seed, "sampling seed");
  int gen_ring = 1;
  std::string gen_layout = "zigzag";
  gen->add_option("--ring", gen_ring, "devices in the ring the prompt is prefilled over (in this process)")
      ->check(CLI::Range(1, kMaxLocalRing));
  gen->add_option("--layout", gen_layout, "contiguous | zigzag | striped");
  std::string gen_vqgan, gen_image, gen_video;
  int64_t gen_frames = 4;
  double gen_cfg = 1.0, gen_fps = 4;
  gen->add_option("--vqgan", gen_vqgan, "generate vision: the VQGAN whose codes the model was trained on (decodes them)");
  auto* gen_image_opt = gen->add_option("--image", gen_image, "with --vqgan: write one generated frame here (PNG)");
  auto* gen_video_opt = gen->add_option("--video", gen_video, "with --vqgan: write the generated frames here (.mp4)");
  gen_image_opt->excludes(gen_video_opt);
  gen->add_option("--frames", gen_frames, "with --video: frames to generate")->check(CLI::Range(int64_t(1), int64_t(4096)));
  gen->add_option("--cfg-scale", gen_cfg, "classifier-free guidance (1: none; LWM uses larger values)")
      ->check(CLI::Range(0.0, 100.0));
  gen->add_option("--fps", gen_fps, "with --video: frames a second")->check(CLI::Range(0.01, 1000.0));
  std::string needle_ckpt, needle_out = "needle", needle_layout = "zigzag";
  std::vector<int64_t> needle_lengths;
  std::vector<double> needle_depths = {0, 0.25, 0.5, 0.75, 1};
  int64_t needle_trials = 4;
  int needle_ring = 2;
  uint64_t needle_seed = 1;
  auto* needle = app.add_subcommand("needle", "needle retrieval by context length x depth (JSON + PNG heatmap)");
  needle->add_option("--checkpoint", needle_ckpt, "checkpoint directory")->required();
  needle->add_option("--lengths", needle_lengths, "context lengths in tokens, e.g. 256,512,1024")->required()->delimiter(',');
  needle->add_option("--depths", needle_depths, "needle depths in [0, 1]")->delimiter(',');
  needle->add_option("--trials", needle_trials, "documents per cell")->check(CLI::Range(int64_t(1), int64_t(100000)));
  needle->add_option("--ring", needle_ring, "devices in the ring (in this process)")->check(CLI::Range(1, kMaxLocalRing));
  needle->add_option("--layout", needle_layout, "contiguous | zigzag | striped");
  needle->add_option("--output", needle_out, "directory for needle.json and needle.png");
  needle->add_option("--seed", needle_seed, "seed of the documents");
  std::vector<std::string> inputs;
  std::string output, tokenizer;
  bool skip_bad = false;
  auto* data_cmd = app.add_subcommand("data", "datasets");
  data_cmd->require_subcommand(1);
  auto* prepare = data_cmd->add_subcommand("prepare", "turn text and JSONL files into a token dataset");
  prepare->add_option("--input", inputs, "text (.txt: one document) or JSONL (.jsonl: one per line) files")->required();
  prepare->add_option("--output", output, "dataset directory to create")->required();
  prepare->add_option("--tokenizer", tokenizer,
                      "bytes | PATH of a SentencePiece .model (e.g. LLaMA's tokenizer.model) | none (pre-tokenized "
                      "ids; the default with --vocab-size)");
  int64_t vision_codes = 0;
  prepare->add_option("--vision-codes", vision_codes,
                      "VQGAN codebook size for {\"vision\": [[codes], ...]} records (LWM: 8192); vision ids follow the text vocabulary");
  prepare->add_flag("--skip-bad", skip_bad, "count and skip bad records instead of failing");
  int64_t vocab_size = 0;
  prepare->add_option("--vocab-size", vocab_size,
                      "the vocabulary of pre-tokenized {\"tokens\": [ids]} records (default: the tokenizer's); "
                      "every id must be below it, and a model trains on the dataset when its vocabulary is at least this");
  std::string vqgan;
  prepare->add_option("--vqgan", vqgan,
                      "a VQGAN directory (config.json + model.safetensors; ops/convert_lwm_vqgan.py makes one of LWM's): "
                      "{\"image\": PATH} and {\"video\": PATH, \"max_frames\": N, \"fps\": F} records are read and "
                      "encoded to codes; its codebook is the vision vocabulary");
  std::string vision_layout = "appended";
  prepare->add_option("--vision-layout", vision_layout,
                      "appended: vision ids after the text ones with four marker ids, one vocabulary; lwm: LWM's ids "
                      "(codes, end of frame 8192, end of vision 8193 in a second vocabulary; <vision> and </vision> "
                      "as text), for a model with model.vision_vocab_size (docs/ARCHITECTURE.md, Token layout)")
      ->check(CLI::IsMember({"appended", "lwm"}));
  std::string vq_dir, vq_in, vq_out, vq_codes;
  int64_t vq_max_frames = 0;
  double vq_fps = 0, vq_out_fps = 8;
  auto* vq = app.add_subcommand("vqgan", "a VQGAN on one file: frames to codes, codes to frames");
  vq->require_subcommand(1);
  auto* vq_enc = vq->add_subcommand("encode", "an image or video to codes ({\"vision\": [[codes], ...]} JSON)");
  vq_enc->add_option("--vqgan", vq_dir, "VQGAN directory (config.json + model.safetensors)")->required();
  vq_enc->add_option("--input", vq_in, "an image (PNG, JPEG, ...) or a video file")->required();
  vq_enc->add_option("--max-frames", vq_max_frames, "at most this many frames, picked uniformly (LWM's rule)")
      ->check(CLI::Range(int64_t(0), int64_t(100000)));
  vq_enc->add_option("--fps", vq_fps, "one frame every 1/fps seconds")->check(CLI::Range(0.0, 1000.0));
  vq_enc->add_option("--output", vq_out, "write the JSON here (default: print it)");
  auto* vq_dec = vq->add_subcommand("decode", "codes ({\"vision\": [[codes], ...]} JSON) to a PNG or a video");
  vq_dec->add_option("--vqgan", vq_dir, "VQGAN directory (config.json + model.safetensors)")->required();
  vq_dec->add_option("--codes", vq_codes, "a JSON file {\"vision\": [[codes of a frame], ...]}")->required();
  vq_dec->add_option("--output", vq_out, "OUT.png (one frame) or OUT.mp4")->required();
  vq_dec->add_option("--fps", vq_out_fps, "frames a second of the video")->check(CLI::Range(0.01, 1000.0));
  // The cluster: daemon, workers, and the API clients.
  rw::scheduler::DaemonOptions dopt;
  auto* daemon = app.add_subcommand("daemon", "run the scheduler daemon (REST API, queue, workers, checkpoints)");
  daemon->add_option("--state", dopt.state_dir, "state directory (RocksDB, API token, job logs)");
  daemon->add_option("--listen", dopt.listen, "API address HOST:PORT (port 0: any, written to STATE/api.addr)");
  daemon->add_option("--data-root", dopt.data_root, "jobs' data.path and init_from must lie inside");
  daemon->add_option("--checkpoint-root", dopt.checkpoint_root, "jobs' checkpoint.dir and output_dir must lie inside");
  daemon->add_option("--cluster-id", dopt.cluster_id, "the cluster this state directory belongs to");
  daemon->add_option("--max-body", dopt.max_body_bytes, "largest request body in bytes");
  daemon->add_option("--worker-timeout", dopt.worker_timeout_s, "seconds without a heartbeat before a worker is lost");
  daemon->add_option("--grace", dopt.grace_s, "SIGTERM: seconds for running jobs to checkpoint");
  daemon->add_option("--tls-cert", dopt.tls_cert, "serve the API over HTTPS with this PEM certificate (with --tls-key)");
  daemon->add_option("--tls-key", dopt.tls_key, "the PEM private key of --tls-cert");
  daemon->add_option("--api-threads", dopt.api_threads, "the API's threads");
  daemon->add_option("--api-max-queued", dopt.api_max_queued,
                     "connections waiting for an API thread beyond which requests get 503 with Retry-After");
  daemon->add_option("--api-request-deadline", dopt.api_request_deadline_s,
                     "seconds a connection has to deliver a whole request before it is cut");
  rw::cli::WorkerOptions wopt;
  auto* worker = app.add_subcommand("worker", "host devices for the daemon's rings");
  worker->add_option("--daemon", wopt.daemon, "the daemon's API address HOST:PORT")->required();
  worker->add_option("--devices", wopt.devices, "cpu:N | cuda:all");
  worker->add_option("--name", wopt.name, "worker id (default: hostname-pid)");
  worker->add_option("--listen", wopt.listen, "address the device host is published on");
  worker->add_option("--token-file", wopt.token_file, "the daemon's API token file (or $RINGWORLD_TOKEN)");
  worker->add_option("--ca-cert", wopt.ca_cert, "CA file for an https:// daemon (or $RINGWORLD_CA_CERT)");
  worker->add_option("--grace", wopt.grace_s, "SIGTERM: seconds for the ring to checkpoint");
  rw::cli::ClientOptions copt;
  auto client = [&](CLI::App* c) {
    c->add_option("--daemon", copt.daemon, "the daemon's API address HOST:PORT (or $RINGWORLD_DAEMON)");
    c->add_option("--token-file", copt.token_file, "API token file (or $RINGWORLD_TOKEN)");
    c->add_option("--ca-cert", copt.ca_cert, "CA file for an https:// daemon (or $RINGWORLD_CA_CERT)");
    c->add_flag("--json", copt.json_output, "print the API's JSON");
    return c;
  };
  std::string submit_path, job_id, idem;
  int64_t priority = 0;
  std::vector<std::string> submit_set;
  bool follow = false;
  auto* submit = client(app.add_subcommand("submit", "submit a job file to the daemon"));
  submit->add_option("job", submit_path, "job file (YAML)")->required();
  submit->add_option("--set", submit_set, "override a setting: key=value");
  submit->add_option("--priority", priority, "higher runs first and may preempt lower");
  submit->add_option("--idempotency-key", idem, "makes a retried submission safe");
  auto* jobs = client(app.add_subcommand("jobs", "list jobs"));
  auto* status = client(app.add_subcommand("status", "a job's state, progress and events"));
  status->add_option("id", job_id, "job id")->required();
  auto* cancel = client(app.add_subcommand("cancel", "cancel a job"));
  cancel->add_option("id", job_id, "job id")->required();
  auto* resume = client(app.add_subcommand("resume", "requeue a preempted or failed job (from its last checkpoint)"));
  resume->add_option("id", job_id, "job id")->required();
  auto* logs = client(app.add_subcommand("logs", "a job's log: events and steps"));
  logs->add_option("id", job_id, "job id")->required();
  logs->add_flag("-f,--follow", follow, "keep printing until the job ends");
  auto* workers = client(app.add_subcommand("workers", "list workers"));
  CLI11_PARSE(app, argc, argv);
  if (*daemon) return rw::cli::RunDaemon(dopt);
  if (*worker) return rw::cli::RunWorker(wopt);
  if (*submit) return rw::cli::Submit(copt, submit_path, submit_set, priority, idem);
  if (*jobs) return rw::cli::Jobs(copt);
  if (*status) return rw::cli::JobStatus(copt, job_id);
  if (*cancel) return rw::cli::Change(copt, job_id, "cancel");
  if (*resume) return rw::cli::Change(copt, job_id, "resume");
  if (*logs) return rw::cli::Logs(copt, job_id, follow);
  if (*workers) return rw::cli::Workers(copt);
  if (*host) return rw::cli::DeviceHost(host_devices, port_file);
  if (*gen)
    return !gen_vqgan.empty() || !gen_image.empty() || !gen_video.empty()
               ? rw::cli::GenerateVision(gen_ckpt, prompt, gen_vqgan, gen_image, gen_video, gen_frames, gen_cfg, gen_fps,
                                         temperature, top_k, top_p, gen_seed, gen_ring, gen_layout)
               : rw::cli::Generate(gen_ckpt, prompt, prompt_ids, max_tokens, temperature, top_k, top_p, gen_seed,
                                   gen_ring, gen_layout);
  if (*needle)
    return rw::cli::Needle(needle_ckpt, needle_lengths, needle_depths, needle_trials, needle_ring, needle_layout,
                           needle_out, needle_seed);
  if (*plan) return rw::cli::Plan(plan_job, plan_overrides, plan_devices, plan_memory, plan_threads,
                                  plan_device);
  if (*vq_enc) return rw::cli::VqganEncode(vq_dir, vq_in, vq_max_frames, vq_fps, vq_out);
  if (*vq_dec) return rw::cli::VqganDecode(vq_dir, vq_codes, vq_out, vq_out_fps);
  if (*exp) return rw::cli::Export(export_ckpt, export_to, export_dtype, export_shard);
  if (*eval) return rw::cli::Eval(checkpoint, data, ring, layout, seq_len);
  if (*prepare) return rw::cli::DataPrepare(inputs, output, tokenizer, vision_codes, skip_bad, vocab_size, vqgan,
                                              vision_layout);
  if (*train) {
    if (describe) {
      std::printf("%s", rw::runtime::DescribeSettings().c_str());
      return 0;
    }
    if (job_path.empty()) {
      std::fprintf(stderr, "ringworld train: a job file is required (e.g. configs/tiny-cpu.yaml)\n");
      return 2;
    }
    return rw::cli::Train(job_path, overrides, processes);
  }
  return 0;
}
