// ringworld: the command line. Subcommands arrive with their issues; `train` runs a job embedded.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "cli/train.h"
#include "runtime/job_config.h"

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
  int host_devices = 1;
  std::string port_file;
  auto* host = app.add_subcommand("device-host", "(internal) host device actors for a train --processes run");
  host->add_option("n", host_devices, "devices")->required();
  host->add_option("port_file", port_file, "where to write the published port")->required();
  host->group("");  // hidden from --help
  std::string checkpoint, data, layout = "zigzag";
  int ring = 1;
  int64_t seq_len = 1024;
  auto* eval = app.add_subcommand("eval", "mean loss and perplexity of a checkpoint on a prepared dataset");
  eval->add_option("--checkpoint", checkpoint, "checkpoint directory (ours or a Hugging Face LLaMA)")->required();
  eval->add_option("--data", data, "dataset directory made by ringworld data prepare")->required();
  eval->add_option("--ring", ring, "devices in the ring (in this process)");
  eval->add_option("--layout", layout, "contiguous | zigzag | striped");
  eval->add_option("--seq-len", seq_len, "tokens per sequence");
  std::string gen_ckpt, prompt;
  int64_t max_tokens = 64, top_k = 0;
  double temperature = 0, top_p = 1.0;
  uint64_t gen_seed = 1;
  auto* gen = app.add_subcommand("generate", "continue a prompt (byte tokenizer), greedy or sampled");
  gen->add_option("--checkpoint", gen_ckpt, "checkpoint directory")->required();
  gen->add_option("--prompt", prompt, "text to continue")->required();
  gen->add_option("--max-tokens", max_tokens, "tokens to generate (stops at EOS)");
  gen->add_option("--temperature", temperature, "0: greedy");
  gen->add_option("--top-k", top_k, "keep the k most likely tokens (0: all)");
  gen->add_option("--top-p", top_p, "nucleus sampling mass");
  gen->add_option("--seed", gen_seed, "sampling seed");
  std::vector<std::string> inputs;
  std::string output, tokenizer = "bytes";
  bool skip_bad = false;
  auto* data_cmd = app.add_subcommand("data", "datasets");
  data_cmd->require_subcommand(1);
  auto* prepare = data_cmd->add_subcommand("prepare", "turn text and JSONL files into a token dataset");
  prepare->add_option("--input", inputs, "text (.txt: one document) or JSONL (.jsonl: one per line) files")->required();
  prepare->add_option("--output", output, "dataset directory to create")->required();
  prepare->add_option("--tokenizer", tokenizer, "bytes");
  prepare->add_flag("--skip-bad", skip_bad, "count and skip bad records instead of failing");
  CLI11_PARSE(app, argc, argv);
  if (*host) return rw::cli::DeviceHost(host_devices, port_file);
  if (*gen) return rw::cli::Generate(gen_ckpt, prompt, max_tokens, temperature, top_k, top_p, gen_seed);
  if (*eval) return rw::cli::Eval(checkpoint, data, ring, layout, seq_len);
  if (*prepare) return rw::cli::DataPrepare(inputs, output, tokenizer, skip_bad);
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
