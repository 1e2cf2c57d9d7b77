// ringworld plan JOB.yaml [--devices N] [--device-memory 80GiB]: the bytes each device needs, stage by
// stage, before anything runs (runtime/memory_plan.h says what is counted).
#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "runtime/checkpoint.h"
#include "runtime/memory_plan.h"

namespace rw::cli {

int Plan(const std::string& job_path, const std::vector<std::string>& overrides, int64_t devices,
         const std::string& device_memory, int64_t threads, const std::string& device) {
  using namespace rw::runtime;
  std::ifstream f(job_path);
  if (!f.good()) {
    std::fprintf(stderr, "ringworld plan: %s: cannot open the job file\n", job_path.c_str());
    return 2;
  }
  std::stringstream text;
  text << f.rdbuf();
  // The settings as written: the plan reads the model, precision, remat, ring and stages, and needs none of
  // the job's files (its data and init_from may live on the cluster, not here).
  JobConfig job;
  Status st = ParseJobFields(text.str(), job_path, overrides, &job);
  if (!st.ok()) {
    std::fprintf(stderr, "ringworld plan: %s\n", st.message().c_str());
    return 2;
  }
  if (!job.init_from.empty()) {
    ModelConfig theirs;
    if (ReadHfConfig(job.init_from + "/config.json", &theirs).ok()) {
      theirs.max_position_embeddings = job.model.max_position_embeddings;  // context extension may raise it
      job.model = theirs;
      std::printf("model: from %s/config.json\n", job.init_from.c_str());
    } else {
      std::printf("model: as %s writes it (init_from %s is not readable here)\n", job_path.c_str(),
                  job.init_from.c_str());
    }
  }
  MemoryPlanOptions opt;
  opt.devices = devices;
  opt.threads = threads;
  opt.device = device;
  if (!device_memory.empty() && !ParseByteSize(device_memory, &opt.device_memory)) {
    std::fprintf(stderr, "ringworld plan: --device-memory: '%s' is not a size (e.g. 80GiB, 512MiB, 96GB)\n",
                 device_memory.c_str());
    return 2;
  }
  MemoryPlan plan;
  st = PlanMemory(job, opt, &plan);
  if (!st.ok()) {
    std::fprintf(stderr, "ringworld plan: %s: %s\n", job_path.c_str(), st.message().c_str());
    return 2;
  }
  std::printf("%s: %s", job_path.c_str(), FormatMemoryPlan(plan, opt).c_str());
  for (const auto& s : plan.stages)
    if (!s.fits) return 1;
  return 0;
}

}  // namespace rw::cli
