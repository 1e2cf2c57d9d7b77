// `ringworld daemon | worker` and the API client commands (submit, jobs, status, cancel, resume, logs,
// workers).
#include "cli/cluster.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <httplib.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "actors/channel_auth.h"
#include "actors/device_host.h"
#include "cli/signals.h"
#include "scheduler/api_client.h"
#include "scheduler/daemon.h"
#include "scheduler/worker_agent.h"

namespace rw::cli {
namespace {

using json = nlohmann::json;

// The API client the commands share (scheduler/api_client.h).
scheduler::ApiClient Client(const ClientOptions& o) { return scheduler::ApiClient({o.daemon, o.token_file, o.ca_cert}); }

void PrintJobs(const json& jobs) {
  std::printf("%-12s %-20s %-10s %8s %12s  %s\n", "ID", "NAME", "STATE", "PRIORITY", "CHECKPOINT", "MESSAGE");
  for (const auto& j : jobs) {
    const std::string ck = std::to_string(j.value("checkpoint_step", 0)) + "/" + std::to_string(j.value("total_steps", 0));
    std::printf("%-12s %-20s %-10s %8lld %12s  %s\n", j.value("id", "").c_str(), j.value("name", "").substr(0, 20).c_str(),
                j.value("state", "").c_str(), (long long)j.value("priority", 0), ck.c_str(),
                j.contains("waiting") ? ("waiting: " + j.value("waiting", "")).c_str() : j.value("message", "").c_str());
  }
}

int64_t MemoryBytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  while (f >> key >> kb) {
    if (key == "MemTotal:") return kb * 1024;
    f.ignore(256, '\n');
  }
  return 0;
}

// A worker killed by SIGKILL leaves its channel directory (key material derived from the cluster token) in
// the temporary directory. Each worker removes, at start, those of ours whose process (named in the
// directory's name) is gone.
void CollectStaleChannelDirs() {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path tmp = fs::temp_directory_path(ec);
  if (ec) return;
  const std::string prefix = "ringworld-worker-";
  for (fs::directory_iterator it(tmp, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind(prefix, 0) != 0) continue;
    char* rest = nullptr;
    const long pid = std::strtol(name.c_str() + prefix.size(), &rest, 10);
    if (pid <= 0 || !rest || *rest != '-') continue;  // not of this scheme (or an older one's: left alone)
    struct stat st {};
    if (::lstat(it->path().c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != ::geteuid()) continue;
    if (::kill(pid_t(pid), 0) == 0 || errno != ESRCH) continue;  // alive (or not ours to ask about)
    std::error_code rm;
    if (fs::remove_all(it->path(), rm) > 0)
      std::fprintf(stderr, "ringworld worker: removed %s (its worker, pid %ld, is gone)\n", it->path().c_str(), pid);
  }
}

}  // namespace

int RunDaemon(const scheduler::DaemonOptions& options) {
  InstallStopSignals();
  std::unique_ptr<scheduler::Daemon> d;
  const kernels::Status st = scheduler::Daemon::Open(options, &d);
  if (!st.ok()) {
    std::fprintf(stderr, "ringworld daemon: %s\n", st.message().c_str());
    return 2;
  }
  const int code = d->Run(StopRequested());
  std::fprintf(stderr, "ringworld daemon: stopped%s\n", code == kExitPreempted ? " (jobs preempted)" : "");
  return code;
}

int RunWorker(const WorkerOptions& o) {
  int n = 0;
  if (o.devices.rfind("cpu:", 0) == 0) n = std::atoi(o.devices.c_str() + 4);
  if (o.devices.rfind("cuda:", 0) == 0) {
    std::fprintf(stderr, "ringworld worker: --devices %s: CUDA device actors are not available yet (rings run on host "
                         "memory; GPU rings need the NCCL transport)\n", o.devices.c_str());
    return 2;
  }
  if (n < 1 || n > 1024) {
    std::fprintf(stderr, "ringworld worker: --devices: expected cpu:N (1..1024) or cuda:all, got '%s'\n", o.devices.c_str());
    return 2;
  }
  std::string dhost;
  int dport = 0;
  if (!scheduler::SplitHostPort(o.daemon, &dhost, &dport)) {
    std::fprintf(stderr, "ringworld worker: --daemon: expected HOST:PORT, got '%s'\n", o.daemon.c_str());
    return 2;
  }
  // The devices are published over the authenticated channel: only a holder of the cluster's token (its
  // daemon) can reach them. The credentials live in a private directory for this process's life.
  scheduler::ApiClientOptions api;
  api.daemon = o.daemon;
  api.token_file = o.token_file;
  const std::string token = scheduler::ReadToken(api);
  if (token.size() < 32) {
    std::fprintf(stderr, "ringworld worker: no cluster token (--token-file, $RINGWORLD_TOKEN_FILE, $RINGWORLD_TOKEN or "
                         "ringworld-state/token): the devices are published for the daemon that holds it only\n");
    return 2;
  }
  CollectStaleChannelDirs();
  std::string channel_dir =
      (std::filesystem::temp_directory_path() / ("ringworld-worker-" + std::to_string(::getpid()) + "-XXXXXX")).string();
  if (!mkdtemp(channel_dir.data())) {
    std::fprintf(stderr, "ringworld worker: cannot make a private directory for the channel's credentials\n");
    return 2;
  }
  struct RemoveDir {
    std::string dir;
    void Now() {
      std::error_code ec;
      if (!dir.empty()) std::filesystem::remove_all(dir, ec);
      dir.clear();
    }
    ~RemoveDir() { Now(); }
  } remove_dir{channel_dir};
  actors::ChannelCredentials channel;
  if (const Status st = actors::WriteChannelCredentials(token, channel_dir, &channel); !st.ok()) {
    std::fprintf(stderr, "ringworld worker: %s\n", st.message().c_str());
    return 2;
  }
  InstallStopSignals();
  std::unique_ptr<actors::PublishedDevices> published;
  if (const Status st = actors::PublishedDevices::Start(n, o.listen, channel, &published); !st.ok()) {
    std::fprintf(stderr, "ringworld worker: %s\n", st.message().c_str());
    return 2;
  }
  const unsigned port = published->port();
  char hostname[256] = "worker";
  gethostname(hostname, sizeof(hostname) - 1);
  const std::string name = o.name.empty() ? std::string(hostname) + "-" + std::to_string(getpid()) : o.name;
  json devices = json::array();
  for (int i = 0; i < n; ++i) devices.push_back(json{{"kind", "cpu"}, {"index", i}, {"memory_bytes", MemoryBytes() / n}});
  const json hello{{"name", name}, {"host", o.listen}, {"port", port}, {"pid", int64_t(getpid())}, {"kind", "cpu"},
                   {"devices", devices}};
  auto abort_devices = [&](const std::string& why) { published->AbortRings(why); };
  std::fprintf(stderr, "ringworld worker %s: %d cpu devices on %s:%u, daemon %s\n", name.c_str(), n, o.listen.c_str(),
               port, o.daemon.c_str());
  // The daemon's protocol (HTTP) is the scheduler's; the devices (CAF) are ours.
  const scheduler::WorkerAgentResult agent =
      scheduler::RunWorkerAgent({{o.daemon, o.token_file, o.ca_cert}, name, o.grace_s}, hello, StopRequested(), abort_devices);
  published->Quit();
  if (agent.code != 0) {  // refused: exit now with the reason (returning would wait on the published host)
    std::fprintf(stderr, "ringworld worker %s: the daemon refused the registration (%s); exiting\n", name.c_str(),
                 agent.reason.c_str());
    remove_dir.Now();  // _exit runs no destructor
    _exit(agent.code);
  }
  std::fprintf(stderr, "ringworld worker %s: stopped\n", name.c_str());
  remove_dir.Now();  // _exit runs no destructor
  _exit(StopRequested() && agent.registered_once ? kExitPreempted : 0);  // CAF's middleman threads need no goodbye
}

int Submit(const ClientOptions& o, const std::string& job_path, const std::vector<std::string>& overrides,
           int64_t priority, const std::string& idempotency_key) {
  std::ifstream f(job_path);
  if (!f) {
    std::fprintf(stderr, "ringworld submit: %s: cannot open the job file\n", job_path.c_str());
    return 2;
  }
  std::stringstream ss;
  ss << f.rdbuf();
  scheduler::ApiClient c = Client(o);
  json reply;
  httplib::Headers h;
  if (!idempotency_key.empty()) h.emplace("Idempotency-Key", idempotency_key);
  const int status = c.Call("POST", "/v1/jobs", json{{"job", ss.str()}, {"priority", priority}, {"set", overrides}}.dump(),
                            "application/json", &reply, h);
  if (status != 200 && status != 201) return status == 0 ? 3 : 1;
  if (o.json_output)
    std::printf("%s\n", reply.dump(2).c_str());
  else
    std::printf("%s %s (%s)\n", reply.value("id", "").c_str(), status == 201 ? "submitted" : "already submitted",
                reply.value("state", "").c_str());
  return 0;
}

int Jobs(const ClientOptions& o) {
  scheduler::ApiClient c = Client(o);
  json reply;
  const int status = c.Call("GET", "/v1/jobs", "", "", &reply);
  if (status != 200) return status == 0 ? 3 : 1;
  if (o.json_output)
    std::printf("%s\n", reply.dump(2).c_str());
  else
    PrintJobs(reply["jobs"]);
  return 0;
}

int JobStatus(const ClientOptions& o, const std::string& id) {
  scheduler::ApiClient c = Client(o);
  json job, events;
  int status = c.Call("GET", "/v1/jobs/" + id, "", "", &job);
  if (status != 200) return status == 0 ? 3 : 1;
  status = c.Call("GET", "/v1/jobs/" + id + "/events", "", "", &events);
  if (status != 200) return status == 0 ? 3 : 1;
  if (o.json_output) {
    job["events"] = events["events"];
    std::printf("%s\n", job.dump(2).c_str());
    return 0;
  }
  PrintJobs(json::array({job}));
  std::printf("\ncheckpoints: %s (newest recorded: step %lld)\nevents:\n", job.value("checkpoint_dir", "").c_str(),
              (long long)job.value("checkpoint_step", 0));
  for (const auto& e : events["events"]) {
    const std::string from = e.value("from", ""), to = e.value("to", "");
    std::printf("  %4lld  %-22s %s\n", (long long)e.value("seq", 0),
                from == to ? "" : ((from.empty() ? "" : from + " -> ") + to).c_str(), e.value("message", "").c_str());
  }
  return 0;
}

int Change(const ClientOptions& o, const std::string& id, const std::string& verb) {
  scheduler::ApiClient c = Client(o);
  json reply;
  const int status = c.Call("POST", "/v1/jobs/" + id + "/" + verb, "{}", "application/json", &reply);
  if (status != 200) return status == 0 ? 3 : 1;
  if (o.json_output)
    std::printf("%s\n", reply.dump(2).c_str());
  else
    std::printf("%s %s\n", id.c_str(), reply.value("state", "").c_str());
  return 0;
}

int Logs(const ClientOptions& o, const std::string& id, bool follow) {
  scheduler::ApiClient c = Client(o);
  long long offset = 0;
  for (;;) {
    json unused;
    const int status = c.Call("GET", "/v1/jobs/" + id + "/logs?offset=" + std::to_string(offset), "", "", &unused);
    if (status != 200) return status == 0 ? 3 : 1;
    std::fwrite(c.raw().data(), 1, c.raw().size(), stdout);
    std::fflush(stdout);
    auto it = c.headers().find("X-Next-Offset");
    if (it != c.headers().end()) offset = std::atoll(it->second.c_str());
    auto st = c.headers().find("X-Job-State");
    const std::string state = st == c.headers().end() ? "" : st->second;
    const bool live = state == "QUEUED" || state == "RUNNING" || state == "PREEMPTED";
    if (!follow || (!live && c.raw().empty())) return 0;
    if (c.raw().empty()) std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
}

int Workers(const ClientOptions& o) {
  scheduler::ApiClient c = Client(o);
  json reply;
  const int status = c.Call("GET", "/v1/workers", "", "", &reply);
  if (status != 200) return status == 0 ? 3 : 1;
  if (o.json_output) {
    std::printf("%s\n", reply.dump(2).c_str());
    return 0;
  }
  std::printf("%-24s %-9s %-6s %7s %5s  %s\n", "ID", "STATE", "KIND", "DEVICES", "USED", "HOST");
  for (const auto& w : reply["workers"])
    std::printf("%-24s %-9s %-6s %7d %5d  %s%s\n", w.value("id", "").c_str(), w.value("state", "").c_str(),
                w.value("kind", "").c_str(), w.value("devices", 0), w.value("used", 0), w.value("host", "").c_str(),
                w.value("lost_reason", "").empty() ? "" : ("  (" + w.value("lost_reason", "") + ")").c_str());
  return 0;
}

}  // namespace rw::cli
