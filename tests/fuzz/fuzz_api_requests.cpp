// The REST API's request bodies: the first byte picks the route (a JSON submission, a YAML one with
// ?priority=, a worker registration, a heartbeat), the rest is the body. A submission that parses goes
// on to the job-file fields, as the daemon takes it.
#include <cstddef>
#include <cstdint>

#include "runtime/job_config.h"
#include "scheduler/api_requests.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  using namespace rw::scheduler;
  switch (data[0] % 4) {
    case 0:
    case 1: {
      Submission s;
      const std::string priority = body.substr(0, body.find('\n'));
      const bool json = data[0] % 4 == 0;
      if (ParseSubmission(json ? "application/json" : "application/yaml", json ? body : body.substr(priority.size()),
                          json ? nullptr : &priority, &s)
              .ok()) {
        rw::runtime::JobConfig job;
        (void)rw::runtime::ParseJobFields(s.spec, "job", s.overrides, &job);
      }
      break;
    }
    case 2: {
      Registration r;
      (void)ParseRegistration(body, &r);
      break;
    }
    case 3: {
      HeartbeatBody h;
      (void)ParseHeartbeat(body, &h);
      break;
    }
  }
  return 0;
}
