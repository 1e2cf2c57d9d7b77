// The REST API's request bodies, parsed: pure functions of the untrusted bytes (no daemon state, no file
// opened), so the handlers and the fuzzer (tests/fuzz/fuzz_api_requests.cpp) share one parser. Each error
// names the field, for a 400.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/status.h"

namespace rw::scheduler {

using kernels::Status;

// JSON bodies nested deeper than this are refused before parsing (a job file needs 4 levels): deeper ones
// cost the parser memory and time out of proportion to their size.
constexpr int kMaxJsonDepth = 32;

// An untrusted body as JSON: the nesting bound first, then nlohmann.
Status ParseBody(const std::string& body, nlohmann::json* out);

// POST /v1/jobs: a JSON object {job, priority, set} (application/json), or the job file itself (any other
// type) with ?priority=. `priority_param` is null when the query has none.
struct Submission {
  std::string spec;                    // the job file's text
  std::vector<std::string> overrides;  // --set key=value
  int64_t priority = 0;
};
Status ParseSubmission(const std::string& content_type, const std::string& body, const std::string* priority_param,
                       Submission* out);

// POST /v1/workers.
struct Registration {
  std::string name, host, kind = "cpu";
  int port = 0;
  int64_t pid = 0;
  std::vector<int64_t> memory;  // per device
};
Status ParseRegistration(const std::string& body, Registration* out);

// POST /v1/workers/ID/heartbeat.
struct HeartbeatBody {
  std::string instance;
  bool draining = false, leaving = false;
};
Status ParseHeartbeat(const std::string& body, HeartbeatBody* out);

}  // namespace rw::scheduler
