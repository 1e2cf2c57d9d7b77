// The worker's side of the daemon's protocol, over HTTP: register the device host (POST /v1/workers),
// heartbeat every heartbeat_s (saying when it drains), register again when the daemon restarts or forgets
// it, and leave once drained. The devices themselves (CAF) are the caller's: it hands in how to abort them.
#pragma once

#include <atomic>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "scheduler/api_client.h"

namespace rw::scheduler {

struct WorkerAgentOptions {
  ApiClientOptions api;
  std::string name;      // for the log
  double grace_s = 30;   // after a stop request: time for the ring to checkpoint and release the devices
};

struct WorkerAgentResult {
  int code = 0;                  // 0: left; 2: the daemon refused the registration (wrong token, bad fields)
  bool registered_once = false;  // the daemon knew this worker at some point
  std::string reason;            // code 2: the daemon's answer (status and error)
};

// Runs until `stop` is set and the devices are released (or the grace period is over), or until the
// registration is refused. `hello` is the registration body ({name, host, port, pid, kind, devices}).
// `abort_devices(why)` is called when the daemon is lost: the ring it drove has no driver any more.
WorkerAgentResult RunWorkerAgent(const WorkerAgentOptions& o, const nlohmann::json& hello,
                                 const std::atomic<bool>& stop,
                                 const std::function<void(const std::string&)>& abort_devices);

}  // namespace rw::scheduler
