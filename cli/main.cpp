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
  CLI11_PARSE(app, argc, argv);
  if (*train) {
    if (describe) {
      std::printf("%s", rw::runtime::DescribeSettings().c_str());
      return 0;
    }
    if (job_path.empty()) {
      std::fprintf(stderr, "ringworld train: a job file is required (e.g. configs/tiny-cpu.yaml)\n");
      return 2;
    }
    return rw::cli::Train(job_path, overrides);
  }
  return 0;
}
