// The cluster commands: `ringworld daemon`, `ringworld worker`, and the API clients (submit, jobs, status,
// cancel, resume, logs, workers). Clients find the daemon in --daemon, $RINGWORLD_DAEMON or 127.0.0.1:8470,
// and the token in $RINGWORLD_TOKEN, --token-file, $RINGWORLD_TOKEN_FILE or ringworld-state/token.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "scheduler/daemon.h"

namespace rw::cli {

struct ClientOptions {
  std::string daemon;      // HOST:PORT
  std::string token_file;
  std::string ca_cert;  // an https:// daemon's CA (or $RINGWORLD_CA_CERT)
  bool json_output = false;
};

struct WorkerOptions {
  std::string daemon = "127.0.0.1:8470";  // the daemon's API address
  std::string devices = "cpu:1";          // cpu:N | cuda:all
  std::string name;                       // default: hostname-pid
  std::string listen = "127.0.0.1";       // where the device host is published (CAF middleman)
  std::string token_file;
  std::string ca_cert;                    // an https:// daemon's CA (or $RINGWORLD_CA_CERT)
  double grace_s = 30;                    // SIGTERM: time for the ring to checkpoint and release us
};

int RunDaemon(const scheduler::DaemonOptions& options);
int RunWorker(const WorkerOptions& options);
int Submit(const ClientOptions& o, const std::string& job_path, const std::vector<std::string>& overrides,
           int64_t priority, const std::string& idempotency_key);
int Jobs(const ClientOptions& o);
int JobStatus(const ClientOptions& o, const std::string& id);
int Change(const ClientOptions& o, const std::string& id, const std::string& verb);  // cancel | resume
int Logs(const ClientOptions& o, const std::string& id, bool follow);
int Workers(const ClientOptions& o);

}  // namespace rw::cli
