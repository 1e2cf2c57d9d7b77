// The daemon's REST API (cpp-httplib): the routes, the parsing of submissions and worker requests (errors
// name the field and change nothing stored), the bearer token, JSON replies. What a request changes is the
// job table's, the registry's (daemon_workers.cpp) or a runner's; the handlers wake the scheduling loop.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <caf/openssl/all.hpp>

#include "runtime/private_file.h"
#include "scheduler/api_requests.h"
#include "scheduler/daemon_impl.h"
#include "scheduler/paths.h"

namespace rw::scheduler {
namespace {

using json = nlohmann::json;
using storage::Table;

bool SameSecret(const std::string& a, const std::string& b) {  // constant time for equal lengths
  if (a.size() != b.size()) return false;
  unsigned char d = 0;
  for (size_t i = 0; i < a.size(); ++i) d |= static_cast<unsigned char>(a[i] ^ b[i]);
  return d == 0;
}

void Reply(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(2) + "\n", "application/json");
}

void Error(httplib::Response& res, int status, const std::string& message) {
  res.status = status;
  res.set_content(json{{"error", message}}.dump() + "\n", "application/json");
}

json JobJson(const JobRecord& r) {
  return json{{"id", r.id},
              {"name", r.name},
              {"state", JobStateName(r.state)},
              {"priority", r.priority},
              {"message", r.message},
              {"checkpoint_dir", r.checkpoint_dir},
              {"checkpoint_step", r.checkpoint_step},
              {"total_steps", r.total_steps},
              {"epoch", r.epoch}};
}

}  // namespace

std::string RandomHex(size_t bytes) {
  std::ifstream f("/dev/urandom", std::ios::binary);
  std::string raw(bytes, '\0');
  f.read(raw.data(), std::streamsize(bytes));
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : raw) {
    out += hex[c >> 4];
    out += hex[c & 15];
  }
  return out;
}

// $RINGWORLD_TOKEN, when set at first start, becomes the token (a cluster manager's shared secret). A token
// file that is there but not a token (too short, not one line of printable characters) is refused, not
// replaced: an operator may have put a secret there that the workers and clients already use.
Status LoadOrCreateToken(const std::string& dir, std::string* token) {
  const std::string path = dir + "/token";
  std::error_code ec;
  if (std::filesystem::exists(path, ec)) {
    std::ifstream in(path);
    std::string line, rest;
    std::getline(in, line);
    const bool one_line = !std::getline(in, rest) || rest.find_first_not_of(" \t\r\n") == std::string::npos;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.pop_back();
    const bool printable = std::all_of(line.begin(), line.end(), [](char c) { return c > ' ' && c < 127; });
    RW_REQUIRE(in.eof() || in.good(), path << ": cannot read it");
    RW_REQUIRE(one_line && printable && line.size() >= 32,
               path << ": not a token (one line of at least 32 printable characters, it has "
                           << line.size() << "); fix it, or remove it to have a new one made");
    *token = line;
    return Status::Ok();
  }
  const char* given = std::getenv("RINGWORLD_TOKEN");
  if (given && *given) RW_REQUIRE(std::strlen(given) >= 32, "RINGWORLD_TOKEN: at least 32 characters");
  *token = given && *given ? std::string(given) : RandomHex(32);
  RW_RETURN_IF_ERROR(runtime::WritePrivateFile(path, *token + "\n"));
  return Status::Ok();
}

std::map<std::string, std::string> DaemonImpl::WaitingReasons() {
  std::lock_guard<std::mutex> lock(mu_);
  return waiting_;
}

std::string DaemonImpl::WaitingReason(const std::string& job) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto it = waiting_.find(job);
  return it == waiting_.end() ? "" : it->second;
}

namespace {
// A job's record as the API shows it: a queued job says why it waits ("waiting") when the scheduler said so.
json WithWaiting(json j, const JobRecord& r, const std::string& why) {
  if (r.state == JobState::kQueued && !why.empty()) j["waiting"] = why;
  return j;
}
}  // namespace

bool DaemonImpl::Authorized(const httplib::Request& req) const {
  const std::string h = req.get_header_value("Authorization");
  return h.rfind("Bearer ", 0) == 0 && SameSecret(h.substr(7), token_);
}

// Parses a submission into a job record: the job file (YAML or JSON), its overrides, its paths confined to
// the roots and resolved; *config gets the job parsed and validated with them (what the scheduler keeps).
// The error names the field; nothing is stored on error.
Status DaemonImpl::ParseSubmission(const httplib::Request& req, JobRecord* rec, std::string* key,
                                   runtime::JobConfig* config) {
  Submission sub;
  const std::string param = req.get_param_value("priority");
  RW_RETURN_IF_ERROR(scheduler::ParseSubmission(req.get_header_value("Content-Type"), req.body,
                                                req.has_param("priority") ? &param : nullptr, &sub));
  const std::string& spec = sub.spec;
  std::vector<std::string>& overrides = sub.overrides;
  const int64_t priority = sub.priority;
  runtime::JobConfig job;
  // The fields only: no file of the job is opened before its paths are confined below.
  RW_RETURN_IF_ERROR(runtime::ParseJobFields(spec, "job", overrides, &job));
  // Confine and resolve every path of the job.
  std::string resolved;
  RW_REQUIRE(!job.checkpoint.dir.empty(), "checkpoint.dir: a daemon job needs one (preemption and elastic "
                                          "rings resume from it)");
  RW_RETURN_IF_ERROR(ConfinePath("checkpoint.dir", job.checkpoint.dir, opt_.checkpoint_root, &resolved));
  overrides.push_back("checkpoint.dir=" + resolved);
  rec->checkpoint_dir = resolved;
  RW_RETURN_IF_ERROR(ConfinePath("output_dir", job.output_dir, opt_.checkpoint_root, &resolved));
  overrides.push_back("output_dir=" + resolved);
  if (job.data.source == "files") {
    RW_RETURN_IF_ERROR(ConfinePath("data.path", job.data.path, opt_.data_root, &resolved));
    overrides.push_back("data.path=" + resolved);
  }
  if (job.data.tokenizer != "bytes") {
    RW_RETURN_IF_ERROR(ConfinePath("data.tokenizer", job.data.tokenizer, opt_.data_root, &resolved));
    overrides.push_back("data.tokenizer=" + resolved);
  }
  if (!job.init_from.empty()) {
    RW_RETURN_IF_ERROR(ConfinePath("init_from", job.init_from, opt_.data_root, &resolved));
    overrides.push_back("init_from=" + resolved);
  }
  RW_RETURN_IF_ERROR(runtime::ParseJobConfig(spec, "job", overrides, &job));  // missing files, now resolved
  rec->name = job.name;
  rec->spec = spec;
  rec->priority = priority;
  rec->overrides = overrides;
  rec->total_steps = job.total_steps();
  *key = req.get_header_value("Idempotency-Key");
  RW_REQUIRE(key->size() <= 200, "Idempotency-Key: longer than 200 characters");
  *config = std::move(job);
  return Status::Ok();
}

void DaemonImpl::Routes() {
  http_->set_payload_max_length(opt_.max_body_bytes);
  http_->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    guard_->RequestRead(req);
    // Overload: more connections wait for a thread than allowed. Answered at once (the health and metrics
    // endpoints still answer, so an overloaded daemon is not taken for a dead one).
    if (guard_->Overloaded() && req.path != "/healthz" && req.path != "/metrics") {
      metrics_.ApiShed();
      res.set_header("Retry-After", "1");
      Error(res, 503, "the daemon is busy (" + std::to_string(guard_->queued()) + " connections wait): retry");
      return httplib::Server::HandlerResponse::Handled;
    }
    if (req.method != "GET" && req.method != "HEAD" && !Authorized(req)) {
      Error(res, 401, "a bearer token is required (Authorization: Bearer <the token in " + opt_.state_dir + "/token>)");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // A handler that throws is a defect (bad input gets a 400 naming its field): answered 500 with what was
  // thrown, and said on the daemon's stderr, instead of a bare "error".
  http_->set_exception_handler([](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
    const std::string what = ExceptionMessage(ep);
    std::fprintf(stderr, "ringworld daemon: %s %s: internal error: %s\n", req.method.c_str(), req.path.c_str(),
                 what.c_str());
    Error(res, 500, "internal error: " + what);
  });
  http_->set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return;
    const char* what = res.status == 413 ? "request body too large" : res.status == 404 ? "no such resource" : "error";
    Error(res, res.status, what);
  });
  http_->Get("/healthz", [this](const httplib::Request&, httplib::Response& res) {
    Reply(res, 200, json{{"ok", true}, {"cluster", opt_.cluster_id}, {"instance", instance_}});
  });
  http_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_.Serialize(), "text/plain; version=0.0.4");
  });
  http_->Post("/v1/jobs", [this](const httplib::Request& req, httplib::Response& res) {
    if (shutting_down_) return Error(res, 503, "the daemon is shutting down");
    JobRecord rec;
    std::string key;
    runtime::JobConfig config;
    Status st = ParseSubmission(req, &rec, &key, &config);
    if (!st.ok()) return Error(res, 400, st.message());
    JobRecord out;
    bool created = false;
    // Its configuration is kept before the scheduler can see the job: it plans with this one.
    bool conflict = false;
    st = jobs_->Submit(rec, key, &out, &created, [&](const JobRecord& made) {
      configs_.Put(made.id, JobConfigs::Parsed(std::move(config), made.overrides));
    }, &conflict);
    if (!st.ok()) return Error(res, conflict ? 409 : 500, st.message());
    if (created) {
      log_->Log(out.id, "QUEUED: submitted (priority " + std::to_string(out.priority) + ")");
      Wake();
    }
    Reply(res, created ? 201 : 200, JobJson(out));
  });
  http_->Get("/v1/jobs", [this](const httplib::Request&, httplib::Response& res) {
    json list = json::array();
    const auto records = jobs_->List();
    const auto waiting = WaitingReasons();  // mu_ after the table's (the order of daemon_impl.h), held briefly
    for (const auto& r : records) {
      const auto it = waiting.find(r.id);
      list.push_back(WithWaiting(JobJson(r), r, it == waiting.end() ? "" : it->second));
    }
    Reply(res, 200, json{{"jobs", list}});
  });
  http_->Get(R"(/v1/jobs/([A-Za-z0-9_-]+))", [this](const httplib::Request& req, httplib::Response& res) {
    JobRecord r;
    if (!jobs_->Get(req.matches[1], &r).ok()) return Error(res, 404, "job " + std::string(req.matches[1]) + ": no such job");
    json j = WithWaiting(JobJson(r), r, WaitingReason(r.id));
    j["spec"] = r.spec;
    j["overrides"] = r.overrides;
    Reply(res, 200, j);
  });
  auto change = [this](const char* verb, JobState to, std::vector<JobState> from) {
    return [this, verb, to, from](const httplib::Request& req, httplib::Response& res) {
      JobRecord r;
      const std::string id = req.matches[1];
      if (!jobs_->Get(id, &r).ok()) return Error(res, 404, "job " + id + ": no such job");
      if (std::find(from.begin(), from.end(), r.state) == from.end())
        return Error(res, 409, "job " + id + " is " + JobStateName(r.state) + ": cannot " + verb);
      // A job going back to the queue has its configuration parsed before the scheduler can see it (a
      // failed job's was dropped when it failed); here, in the request's thread, not the scheduler's.
      if (to == JobState::kQueued && !configs_.Get(id)) configs_.Put(id, JobConfigs::Parse(r));
      const Status st = jobs_->Transition(id, to, std::string(verb) + " (API)");
      if (!st.ok()) {
        ForgetIfEnded(id);
        return Error(res, 409, st.message());
      }
      ForgetIfEnded(id);
      log_->Log(id, std::string(JobStateName(to)) + ": " + verb + " (API)");
      Wake();
      if (!jobs_->Get(id, &r).ok()) r.state = to;  // jobs are never removed: it is there
      Reply(res, 200, JobJson(r));
    };
  };
  http_->Post(R"(/v1/jobs/([A-Za-z0-9_-]+)/cancel)",
             change("cancel", JobState::kCancelled, {JobState::kQueued, JobState::kRunning, JobState::kPreempted}));
  http_->Post(R"(/v1/jobs/([A-Za-z0-9_-]+)/resume)",
             change("resume", JobState::kQueued, {JobState::kPreempted, JobState::kFailed}));
  http_->Get(R"(/v1/jobs/([A-Za-z0-9_-]+)/events)", [this](const httplib::Request& req, httplib::Response& res) {
    JobRecord r;
    const std::string id = req.matches[1];
    if (!jobs_->Get(id, &r).ok()) return Error(res, 404, "job " + id + ": no such job");
    std::vector<JobEvent> events;
    const Status st = jobs_->Events(id, &events);
    if (!st.ok()) return Error(res, 500, st.message());
    json list = json::array();
    for (const auto& e : events) list.push_back(json{{"seq", e.seq}, {"from", e.from}, {"to", e.to}, {"message", e.message}});
    Reply(res, 200, json{{"job", id}, {"events", list}});
  });
  http_->Get(R"(/v1/jobs/([A-Za-z0-9_-]+)/logs)", [this](const httplib::Request& req, httplib::Response& res) {
    JobState state;
    const std::string id = req.matches[1];
    if (!jobs_->StateOf(id, &state)) return Error(res, 404, "job " + id + ": no such job");
    const long long offset = req.has_param("offset") ? std::atoll(req.get_param_value("offset").c_str()) : 0;
    long long next = 0;
    std::string text = log_->Read(id, offset, 1 << 20, &next);
    res.set_header("X-Next-Offset", std::to_string(next));
    res.set_header("X-Job-State", JobStateName(state));
    res.set_content(text, "text/plain");
  });
  http_->Get("/v1/workers", [this](const httplib::Request&, httplib::Response& res) {
    std::lock_guard<std::mutex> lock(mu_);
    json list = json::array();
    for (const auto& [id, w] : workers_) list.push_back(WorkerJson(w));
    Reply(res, 200, json{{"workers", list}});
  });
  http_->Post("/v1/workers", [this](const httplib::Request& req, httplib::Response& res) { Register(req, res); });
  http_->Post(R"(/v1/workers/([A-Za-z0-9_.-]+)/heartbeat)",
             [this](const httplib::Request& req, httplib::Response& res) { Heartbeat(req, res); });
}

// A worker registers: the daemon connects to its device host over the CAF middleman and takes its devices.
void DaemonImpl::Register(const httplib::Request& req, httplib::Response& res) {
  Registration reg;
  if (const Status st = ParseRegistration(req.body, &reg); !st.ok()) return Error(res, 400, st.message());
  Worker w;
  w.name = reg.name;
  w.host = reg.host;
  w.port = reg.port;
  w.pid = reg.pid;
  w.kind = reg.kind;
  w.memory = reg.memory;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = workers_.find(w.name);
    if (it != workers_.end() && it->second.alive)
      return Error(res, 409, "worker " + w.name + " is already registered and alive");
  }
  if (registering_.fetch_add(1) >= kMaxRegistering) {
    --registering_;
    res.set_header("Retry-After", "1");
    return Error(res, 503, "too many worker registrations under way: retry");
  }
  struct Done {
    std::atomic<int>& n;
    ~Done() { --n; }
  } done{registering_};
  // Over the authenticated channel (actors/channel_auth.h), each step within the deadline.
  const auto deadline_ms = std::chrono::milliseconds(int64_t(opt_.worker_connect_s * 1000));
  bool slow = false;
  const Status reached = actors::ReachDeviceHost(*sys_, w.host, uint16_t(w.port), deadline_ms, &w.devices, &slow);
  // Reached but slow to answer is transient: right after a partition heals, the daemon's old connection to
  // the worker's node can hold messages back for a while. The worker tries again (503); it exited on a 400
  // (the partition drill found it).
  if (slow) {
    res.set_header("Retry-After", "1");
    return Error(res, 503, "port: the worker's device host did not answer within " +
                               std::to_string(int(opt_.worker_connect_s)) + " s; try again");
  }
  if (!reached.ok()) return Error(res, 400, "port: " + reached.message());
  if (w.devices.size() != w.memory.size())
    return Error(res, 400, "devices: " + std::to_string(w.memory.size()) + " announced, the host has " +
                               std::to_string(w.devices.size()));
  w.id = w.name;
  w.instance = instance_;
  w.used_by.assign(w.devices.size(), "");
  w.alive = true;
  // Stored before it is used (and outside mu_: a synced write): a restarted daemon lists it.
  const Status st = store_->Put(Table::kWorkers, w.id, WorkerJson(w).dump());
  if (!st.ok()) return Error(res, 500, st.message());
  std::fprintf(stderr, "ringworld daemon: worker %s registered: %zu %s devices at %s:%d\n", w.id.c_str(),
               w.devices.size(), w.kind.c_str(), w.host.c_str(), w.port);
  metrics_.WorkerKnown(w.id);
  const json reply{{"id", w.id}, {"instance", instance_}, {"heartbeat_s", std::min(1.0, opt_.worker_timeout_s / 5)}};
  {
    std::lock_guard<std::mutex> lock(mu_);
    w.last_seen = Clock::now();
    workers_[w.id] = std::move(w);
  }
  Wake();
  Reply(res, 201, reply);
}

void DaemonImpl::Heartbeat(const httplib::Request& req, httplib::Response& res) {
  const std::string id = req.matches[1];
  HeartbeatBody hb;
  if (const Status st = ParseHeartbeat(req.body, &hb); !st.ok()) return Error(res, 400, st.message());
  const std::string& instance = hb.instance;
  const bool draining = hb.draining, leaving = hb.leaving;
  std::string left;  // the row of a worker that leaves, stored once mu_ is released
  int used = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = workers_.find(id);
    if (it == workers_.end() || !it->second.alive || it->second.instance != instance)
      return Error(res, 409, "worker " + id + " is not registered with this daemon (" + instance_ + "): register again");
    Worker& w = it->second;
    w.last_seen = Clock::now();
    if (leaving) {  // a worker that drained and exits: gone now, not after a heartbeat timeout
      left = MarkLostLocked(w, "left (drained)");
    } else {
      if (draining && !w.draining) {
        std::fprintf(stderr, "ringworld daemon: worker %s is draining\n", id.c_str());
        Wake();
      }
      w.draining = draining;
      for (const auto& u : w.used_by) used += !u.empty();
    }
  }
  PersistWorkers({{id, left}});
  if (leaving) metrics_.ForgetWorker(id);  // gone for good: its series go too (a lost worker's stay)
  Reply(res, 200, json{{"assigned", used}});
}

}  // namespace rw::scheduler
