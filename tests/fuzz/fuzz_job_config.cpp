// The job-file parser on untrusted text: the fields only (ParseJobFields opens no file, as the daemon
// calls it before it confines a job's paths). Lines before a line "---set---" are --set overrides.
#include <cstddef>
#include <cstdint>

#include "runtime/job_config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto parts = rw::fuzz::Split(data, size, "\n---set---\n", 2);
  std::vector<std::string> overrides;
  std::string yaml = parts[0];
  if (!parts[1].empty()) {  // overrides first, then the job
    yaml = parts[1];
    size_t at = 0;
    while (at <= parts[0].size()) {
      const size_t nl = parts[0].find('\n', at);
      overrides.push_back(parts[0].substr(at, nl == std::string::npos ? std::string::npos : nl - at));
      if (nl == std::string::npos) break;
      at = nl + 1;
    }
  }
  rw::runtime::JobConfig job;
  (void)rw::runtime::ParseJobFields(yaml, "fuzz.yaml", overrides, &job);
  return 0;
}
