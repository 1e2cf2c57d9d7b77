// The daemon's REST API, on a real daemon (RocksDB state, HTTP on loopback) in this process: a table of bad
// requests, each with its status code, its message naming the field, and nothing stored changed; the token
// file; idempotent submission; path confinement (.., absolute paths, symlinks); the body limit; a job
// parsed at submission and at start, not on every scheduling tick; metrics that `promtool check metrics`
// accepts.
#include <gtest/gtest.h>
#include <httplib.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include <caf/openssl/all.hpp>

#include "actors/channel_auth.h"
#include "actors/device_host.h"
#include "scheduler/api_client.h"
#include "scheduler/daemon.h"

namespace rw::scheduler {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const char* kJob = R"(name: api-test
model: {vocab_size: 259, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
        num_attention_heads: 2, num_key_value_heads: 1}
data: {task: copy}
ring: {devices: 2, min_devices: 1}
stages:
  - {seq_len: 64, rope_theta: 10000, steps: 3, batch: 1}
checkpoint: {dir: ck/a}
output_dir: out/a
)";

class Api : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("rw_api_" + std::to_string(getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_ / "data");
    fs::create_directories(root_ / "ckroot");
    fs::create_directories(root_ / "outside");
    fs::create_symlink(root_ / "outside", root_ / "ckroot" / "escape");
    opt_.state_dir = (root_ / "state").string();
    opt_.listen = "127.0.0.1:0";
    opt_.data_root = (root_ / "data").string();
    opt_.checkpoint_root = (root_ / "ckroot").string();
    opt_.max_body_bytes = 64 * 1024;
    StartDaemon();
  }
  void TearDown() override {
    StopDaemon();
    fs::remove_all(root_);
  }
  void StartDaemon() {
    std::unique_ptr<Daemon> d;
    const auto st = Daemon::Open(opt_, &d);
    ASSERT_TRUE(st.ok()) << st.message();
    daemon_ = std::move(d);
    stop_ = false;
    thread_ = std::thread([this] { daemon_->Run(stop_); });
    client_ = std::make_unique<httplib::Client>("127.0.0.1", daemon_->port());
    client_->set_connection_timeout(5);
    for (int i = 0; i < 100; ++i) {
      if (auto r = client_->Get("/healthz"); r && r->status == 200) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    std::ifstream(opt_.state_dir + "/token") >> token_;
  }
  void StopDaemon() {
    if (!daemon_) return;
    stop_ = true;
    thread_.join();
    daemon_.reset();
  }
  httplib::Headers Auth(const std::string& token) const { return {{"Authorization", "Bearer " + token}}; }
  httplib::Result Post(const std::string& path, const std::string& body, const std::string& type = "application/json",
                       httplib::Headers h = {}) {
    if (h.empty()) h = Auth(token_);
    return client_->Post(path, h, body, type);
  }
  httplib::Result Submit(json body, httplib::Headers h = {}) { return Post("/v1/jobs", body.dump(), "application/json", h); }
  // What the daemon has stored, as seen through the API: jobs and every job's events ("waiting", what the
  // scheduler last said, is not stored).
  std::string Snapshot() {
    auto r = client_->Get("/v1/jobs");
    EXPECT_TRUE(r && r->status == 200);
    json jobs = json::parse(r->body)["jobs"];
    for (auto& j : jobs) j.erase("waiting");
    std::string out = jobs.dump();
    for (const auto& j : jobs) out += client_->Get("/v1/jobs/" + j["id"].get<std::string>() + "/events")->body;
    return out;
  }

  fs::path root_;
  DaemonOptions opt_;
  std::unique_ptr<Daemon> daemon_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::unique_ptr<httplib::Client> client_;
  std::string token_;
};

TEST_F(Api, TheTokenFileIsPrivateAndEveryChangeNeedsIt) {
  struct stat s {};
  ASSERT_EQ(stat((opt_.state_dir + "/token").c_str(), &s), 0);
  EXPECT_EQ(s.st_mode & 0777, 0600u);
  EXPECT_EQ(token_.size(), 64u);
  // The state directory, its database and its logs are the daemon user's alone.
  for (const std::string d : {"", "/db", "/logs"}) {
    ASSERT_EQ(stat((opt_.state_dir + d).c_str(), &s), 0) << d;
    EXPECT_EQ(s.st_mode & 0777, 0700u) << opt_.state_dir + d;
  }
  auto r = client_->Get("/healthz");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  const std::string before = Snapshot();
  for (const auto& headers : {httplib::Headers{}, Auth("not-the-token"), Auth(token_ + "x")}) {
    r = client_->Post("/v1/jobs", headers, json{{"job", kJob}}.dump(), "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 401) << r->body;
  }
  EXPECT_EQ(Snapshot(), before);
}

TEST_F(Api, BadRequestsGetTheirStatusAndNameTheFieldAndChangeNothing) {
  auto ok = Submit(json{{"job", kJob}, {"priority", 3}});
  ASSERT_TRUE(ok);
  ASSERT_EQ(ok->status, 201) << ok->body;
  const std::string id = json::parse(ok->body)["id"];
  const std::string before = Snapshot();
  auto job_with = [](const std::string& from, const std::string& to) {
    std::string j = kJob;
    j.replace(j.find(from), from.size(), to);
    return j;
  };
  struct Case {
    const char* what;
    std::function<httplib::Result()> call;
    int status;
    std::string needle;  // the message names the field
  };
  const std::string big(70 * 1024, 'x');
  std::string deep = "{\"job\": ";  // 10,000 nested objects in 60 KB: quadratic to pretty-print
  for (int i = 0; i < 10000; ++i) deep += "{\"a\":";
  deep += "1" + std::string(10000, '}') + "}";
  std::vector<Case> cases = {
      {"body not JSON", [&] { return Post("/v1/jobs", "{not json"); }, 400, "body: not JSON"},
      {"body not an object", [&] { return Post("/v1/jobs", "[1, 2]"); }, 400, "body: expected a JSON object"},
      {"unknown field", [&] { return Submit(json{{"job", kJob}, {"priorty", 1}}); }, 400, "priorty: unknown field"},
      {"priority not an integer", [&] { return Submit(json{{"job", kJob}, {"priority", "high"}}); }, 400, "priority:"},
      {"no job", [&] { return Submit(json{{"priority", 1}}); }, 400, "job: missing"},
      {"priority 2^64-1 (was stored as -1)", [&] {
         return Post("/v1/jobs", json{{"job", kJob}}.dump().insert(1, "\"priority\": 18446744073709551615, "));
       }, 400, "priority: must be within [-1000000, 1000000]"},
      {"priority 10^7", [&] { return Submit(json{{"job", kJob}, {"priority", 10000000}}); }, 400, "priority: must be"},
      {"set not a list", [&] { return Submit(json{{"job", kJob}, {"set", "a=b"}}); }, 400, "set: expected a list"},
      {"unknown job key", [&] { return Submit(json{{"job", job_with("hidden_size", "hiden_size")}}); }, 400,
       "model.hiden_size: unknown key"},
      {"wrong type", [&] { return Submit(json{{"job", job_with("steps: 3", "steps: three")}}); }, 400, "steps"},
      {"impossible seq_len", [&] { return Submit(json{{"job", job_with("seq_len: 64", "seq_len: 63")}}); }, 400,
       "seq_len"},
      {"YAML that is not a job", [&] { return Post("/v1/jobs", "- a\n- b\n", "application/yaml"); }, 400,
       "a job file is a mapping"},
      {"no checkpoint.dir", [&] { return Submit(json{{"job", job_with("checkpoint: {dir: ck/a}", "seed: 2")}}); }, 400,
       "checkpoint.dir: a daemon job needs one"},
      {"checkpoint.dir with ..", [&] { return Submit(json{{"job", job_with("dir: ck/a", "dir: ../x")}}); }, 400,
       "checkpoint.dir: '../x' contains '..'"},
      {"checkpoint.dir absolute outside", [&] { return Submit(json{{"job", job_with("dir: ck/a", "dir: /tmp/x")}}); },
       400, "outside"},
      {"checkpoint.dir through a symlink out", [&] {
         return Submit(json{{"job", job_with("dir: ck/a", "dir: escape/ck")}});
       }, 400, "checkpoint.dir: 'escape/ck' resolves to"},
      {"output_dir outside", [&] { return Submit(json{{"job", job_with("output_dir: out/a", "output_dir: /etc")}}); },
       400, "output_dir:"},
      {"data.path outside", [&] {
         return Submit(json{{"job", job_with("data: {task: copy}", "data: {source: files, path: /etc}")}});
       }, 400, "data.path:"},
      {"data.path missing", [&] {
         return Submit(json{{"job", job_with("data: {task: copy}", "data: {source: files, path: nothing-here}")}});
       }, 400, "data.path"},
      {"data.tokenizer outside", [&] {
         return Submit(json{{"job", kJob},
                            {"set", {"data.tokenizer=" + std::string(RW_CONFIGS) + "/needle-tokenizer.model"}}});
       }, 400, "data.tokenizer:"},
      {"transport is the daemon's", [&] { return Submit(json{{"job", kJob}, {"set", {"ring.transport=ucx"}}}); }, 400,
       "ring.transport"},
      {"checkpoint.dir of a live job", [&] { return Submit(json{{"job", kJob}}); }, 409, "belongs to " + id},
      {"the same with a trailing slash", [&] { return Submit(json{{"job", job_with("dir: ck/a", "dir: ck/a/")}}); },
       409, "belongs to " + id},
      {"the same spelt ck//a/.", [&] { return Submit(json{{"job", job_with("dir: ck/a", "dir: ck//a/.")}}); }, 409,
       "belongs to " + id},
      {"body nested 10,000 deep", [&] { return Post("/v1/jobs", deep); }, 400, "body: nested deeper than 32 levels"},
      {"worker body nested deep", [&] { return Post("/v1/workers", std::string(5000, '[') + std::string(5000, ']')); },
       400, "body: nested deeper"},
      {"brackets inside strings are not nesting", [&] {
         return Submit(json{{"job", job_with("name: api-test", "name: \"" + std::string(100, '[') + "\"")}});
       }, 409, "belongs to " + id},  // parsed, so it reaches the ownership check
      {"body too large", [&] { return Post("/v1/jobs", json{{"job", big}}.dump()); }, 413, "too large"},
      {"unknown job", [&] { return client_->Get("/v1/jobs/job-999999"); }, 404, "no such job"},
      {"cancel an unknown job", [&] { return Post("/v1/jobs/job-999999/cancel", "{}"); }, 404, "no such job"},
      {"resume a queued job", [&] { return Post("/v1/jobs/" + id + "/resume", "{}"); }, 409, "is QUEUED: cannot resume"},
      {"events of an unknown job", [&] { return client_->Get("/v1/jobs/nope/events"); }, 404, "no such job"},
      {"worker without fields", [&] { return Post("/v1/workers", "{}"); }, 400, "body: expected {name, host, port"},
      {"worker with a bad name", [&] {
         return Post("/v1/workers", json{{"name", "a b"}, {"host", "127.0.0.1"}, {"port", 1}, {"devices", {{{"memory_bytes", 1}}}}}.dump());
       }, 400, "name:"},
      {"worker nobody listens for", [&] {
         return Post("/v1/workers", json{{"name", "w"}, {"host", "127.0.0.1"}, {"port", 1}, {"devices", {{{"memory_bytes", 1}}}}}.dump());
       }, 400, "port: cannot reach"},
      {"heartbeat of an unknown worker", [&] { return Post("/v1/workers/w9/heartbeat", json{{"instance", "x"}}.dump()); },
       409, "register again"},
      {"no such route", [&] { return client_->Get("/v2/jobs"); }, 404, "no such resource"},
  };
  for (const auto& c : cases) {
    auto r = c.call();
    ASSERT_TRUE(r) << c.what;
    EXPECT_EQ(r->status, c.status) << c.what << ": " << r->body;
    EXPECT_NE(r->body.find(c.needle), std::string::npos) << c.what << ": " << r->body;
    std::printf("  %-40s %d %s", c.what, r->status, r->body.substr(0, 140).c_str());
    if (r->body.size() > 140 || r->body.empty() || r->body.back() != '\n') std::printf("\n");
    EXPECT_EQ(Snapshot(), before) << c.what << " changed the stored state";
  }
  // init_from outside --data-root is refused before its config.json is opened: nothing of it comes back.
  const std::filesystem::path outside = std::filesystem::temp_directory_path() / ("rw_api_outside_" + std::to_string(getpid()));
  std::filesystem::create_directories(outside);
  std::ofstream(outside / "config.json") << "{\"model_type\": \"secret-of-another-user\"}";
  auto r = Submit(json{{"job", kJob}, {"set", {"init_from=" + outside.string()}}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400) << r->body;
  EXPECT_NE(r->body.find("init_from:"), std::string::npos) << r->body;
  EXPECT_EQ(r->body.find("secret-of-another-user"), std::string::npos) << "read before confinement: " << r->body;
  std::printf("  %-40s %d %s", "init_from outside the data root", r->status, r->body.substr(0, 140).c_str());
  EXPECT_EQ(Snapshot(), before);
  std::filesystem::remove_all(outside);
}

// A token file that is not a token is refused with its name, not replaced; a state directory others could
// read is made private at start.
TEST_F(Api, AShortTokenFileIsRefusedAndKeptAndAWideStateDirectoryIsMadePrivate) {
  StopDaemon();
  const std::string path = opt_.state_dir + "/token";
  for (const std::string& bad : std::vector<std::string>{"short-secret\n", "", std::string(40, 'a') + "\nsecond line\n", "tab\tin " + std::string(40, 'a')}) {
    std::ofstream(path, std::ios::trunc) << bad;
    std::unique_ptr<Daemon> d;
    const auto st = Daemon::Open(opt_, &d);
    ASSERT_FALSE(st.ok());
    std::printf("  %s\n", st.message().c_str());
    EXPECT_NE(st.message().find(path + ": not a token"), std::string::npos) << st.message();
    std::ifstream in(path);
    EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), bad) << "the token file was changed";
  }
  std::ofstream(path, std::ios::trunc) << token_ << "\n";
  chmod(opt_.state_dir.c_str(), 0755);
  StartDaemon();
  struct stat s {};
  ASSERT_EQ(stat(opt_.state_dir.c_str(), &s), 0);
  EXPECT_EQ(s.st_mode & 0777, 0700u);
  auto r = Submit(json{{"job", kJob}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 201) << "the kept token still works: " << r->body;
}

// The API's listening socket takes a burst of connects (cpp-httplib's own backlog is 5), read by `ss`.
TEST_F(Api, TheApiListensWithARealBacklog) {
  if (std::system("command -v ss > /dev/null 2>&1") != 0) GTEST_SKIP() << "no ss (iproute2) on this machine";
  const std::string cmd = "ss -Hltn 'sport = :" + std::to_string(daemon_->port()) + "'";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  char line[512] = {0};
  ASSERT_NE(fgets(line, sizeof(line), p), nullptr) << cmd << " printed nothing";
  pclose(p);
  char state[32];
  long recv_q = 0, send_q = 0;
  ASSERT_EQ(std::sscanf(line, "%31s %ld %ld", state, &recv_q, &send_q), 3) << line;
  std::printf("  %s", line);
  EXPECT_GE(send_q, 128) << "the listen backlog (ss's Send-Q of a listening socket)";
}

// The process's resident memory (the daemon and the test's clients share it).
double RssMb() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::atof(line.c_str() + 6) / 1024.0;
  return 0;
}

double Quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(q * double(v.size())))];
}

// 64 concurrent clients on loopback for a bounded time (8 s; 60 s with RW_LONG_TESTS=1) submit, poll, list
// and cancel jobs: every request is answered, none with a server error; latency quantiles and the
// process's memory before and after are printed (docs/RELIABILITY.md).
TEST_F(Api, SixtyFourClientsUnderLoadGetNoServerErrors) {
  const char* long_env = std::getenv("RW_LONG_TESTS");
  const double seconds = long_env && std::string(long_env) == "1" ? 60 : 8;
  const int clients = 64;
  const double rss_before = RssMb();
  std::atomic<bool> done{false};
  std::mutex mu;
  std::vector<double> latencies;
  std::map<int, int64_t> statuses;
  int64_t unanswered = 0;
  std::vector<std::thread> threads;
  const auto t0 = std::chrono::steady_clock::now();
  for (int c = 0; c < clients; ++c)
    threads.emplace_back([&, c] {
      httplib::Client cl("127.0.0.1", daemon_->port());
      cl.set_connection_timeout(10);
      cl.set_read_timeout(30);
      std::vector<double> mine;
      std::map<int, int64_t> st;
      int64_t lost = 0;
      auto timed = [&](auto&& call) {
        const auto a = std::chrono::steady_clock::now();
        httplib::Result r = call();
        mine.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
        if (!r) ++lost;
        else ++st[r->status];
        return r;
      };
      for (int n = 0; !done.load(); ++n) {
        std::string job = kJob;
        job.replace(job.find("ck/a"), 4, "ck/load-" + std::to_string(c) + "-" + std::to_string(n));
        auto r = timed([&] { return cl.Post("/v1/jobs", Auth(token_), json{{"job", job}}.dump(), "application/json"); });
        if (!r || r->status != 201) continue;
        const std::string id = json::parse(r->body)["id"];
        timed([&] { return cl.Get("/v1/jobs/" + id); });
        if (n % 4 == 0) timed([&] { return cl.Get("/v1/jobs"); });
        timed([&] { return cl.Get("/v1/jobs/" + id + "/events"); });
        timed([&] { return cl.Post("/v1/jobs/" + id + "/cancel", Auth(token_), "{}", "application/json"); });
      }
      std::lock_guard<std::mutex> lock(mu);
      latencies.insert(latencies.end(), mine.begin(), mine.end());
      for (const auto& [k, v] : st) statuses[k] += v;
      unanswered += lost;
    });
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  done = true;
  for (auto& t : threads) t.join();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double rss_after = RssMb();
  int64_t server_errors = 0, total = 0;
  std::string counts;
  for (const auto& [k, v] : statuses) {
    total += v;
    if (k >= 500) server_errors += v;
    counts += " " + std::to_string(k) + "x" + std::to_string(v);
  }
  std::printf("  %d clients, %.1f s: %lld requests (%.0f/s), statuses%s, unanswered %lld; latency p50 %.1f ms, "
              "p99 %.1f ms, max %.1f ms; RSS %.0f MB -> %.0f MB\n",
              clients, wall, (long long)total, double(total) / wall, counts.c_str(), (long long)unanswered,
              1e3 * Quantile(latencies, 0.5), 1e3 * Quantile(latencies, 0.99), 1e3 * Quantile(latencies, 1.0),
              rss_before, rss_after);
  EXPECT_EQ(unanswered, 0);
  EXPECT_EQ(server_errors, 0);
  EXPECT_GT(statuses[201], clients);  // every client got through more than once
  EXPECT_EQ(statuses[200] + statuses[201], total) << "every request answered 200 or 201";
}

// Clients that send a request one byte at a time hold no thread for longer than the request deadline:
// their connections are cut (the API answers again within it). With the threads held, connections beyond
// --api-max-queued waiting for one get 503 with Retry-After at once when they are reached, never a hang.
TEST_F(Api, SlowClientsAreCutAndConnectionsBeyondTheQueueGet503WithRetryAfter) {
  StopDaemon();
  opt_.api_threads = 4;
  opt_.api_max_queued = 2;
  opt_.api_request_deadline_s = 1.5;
  StartDaemon();
  const int port = daemon_->port();
  const int slow = 6;
  std::vector<double> cut_after(slow, -1);
  std::vector<std::thread> threads;
  const auto t0 = std::chrono::steady_clock::now();
  auto since = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  for (int i = 0; i < slow; ++i)
    threads.emplace_back([&, i] {
      const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(uint16_t(port));
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return;
      const std::string request = "GET /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Padding: " + std::string(200, 'a');
      timeval tv{0, 300000};
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      for (size_t k = 0; k < request.size() && since() < 10; ++k) {  // one byte every 300 ms
        if (::send(fd, &request[k], 1, MSG_NOSIGNAL) != 1) break;
        char c;
        const ssize_t n = ::recv(fd, &c, 1, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) break;  // closed by the server
      }
      cut_after[i] = since();
      ::close(fd);
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // Eight clients behind them, and /healthz.
  std::atomic<int> ok{0}, shed{0}, other{0}, retry_after{0};
  for (int i = 0; i < 8; ++i)
    threads.emplace_back([&] {
      httplib::Client cl("127.0.0.1", port);
      cl.set_read_timeout(10);
      auto r = cl.Get("/v1/jobs");
      if (r && r->status == 200) ++ok;
      else if (r && r->status == 503) {
        ++shed;
        retry_after += r->get_header_value("Retry-After") == "1";
      } else {
        ++other;
      }
    });
  httplib::Client health("127.0.0.1", port);
  health.set_read_timeout(10);
  const double h0 = since();
  auto h = health.Get("/healthz");
  const double health_wait = since() - h0;
  for (auto& t : threads) t.join();
  std::printf("  slow clients cut after");
  for (double t : cut_after) std::printf(" %.2f", t);
  std::printf(" s (deadline 1.5 s); behind them: %d answered 200, %d 503 (%d with Retry-After), %d other; "
              "/healthz answered in %.2f s\n", ok.load(), shed.load(), retry_after.load(), other.load(), health_wait);
  for (double t : cut_after) {
    EXPECT_GT(t, 1.0);
    EXPECT_LT(t, 3.5) << "a slow client held its connection past the deadline";
  }
  EXPECT_EQ(other.load(), 0) << "a client behind the slow ones got no answer";
  EXPECT_GE(shed.load(), 1);
  EXPECT_EQ(retry_after.load(), shed.load());
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  EXPECT_LT(health_wait, 3.5);
  auto m = client_->Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_NE(m->body.find("ringworld_api_connections_cut_total"), std::string::npos);
  EXPECT_EQ(m->body.find("ringworld_api_connections_cut_total 0"), std::string::npos) << "no cut was counted";
}

// Twelve registrations naming a port that accepts and never answers: each ends within the connect deadline
// (400, or 503 + Retry-After while others are under way) and /healthz keeps answering meanwhile.
TEST_F(Api, RegistrationsToAPortThatNeverAnswersCannotTakeTheApi) {
  StopDaemon();
  opt_.worker_connect_s = 1;
  StartDaemon();
  const int silent = socket(AF_INET, SOCK_STREAM, 0);  // listens, never accepts: the kernel completes connects
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(silent, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(listen(silent, 64), 0);
  socklen_t len = sizeof(a);
  getsockname(silent, reinterpret_cast<sockaddr*>(&a), &len);
  const int port = ntohs(a.sin_port);
  std::atomic<int> refused{0}, busy{0}, other{0};
  std::atomic<bool> done{false};
  double worst_health_s = 0;
  std::thread health([&] {
    httplib::Client c("127.0.0.1", daemon_->port());
    c.set_read_timeout(5);
    while (!done) {
      const auto t0 = std::chrono::steady_clock::now();
      auto r = c.Get("/healthz");
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (!r || r->status != 200) worst_health_s = 99;
      worst_health_s = std::max(worst_health_s, s);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> clients;
  for (int i = 0; i < 12; ++i)
    clients.emplace_back([&, i] {
      httplib::Client c("127.0.0.1", daemon_->port());
      c.set_read_timeout(10);
      const json body{{"name", "w" + std::to_string(i)}, {"host", "127.0.0.1"}, {"port", port},
                      {"devices", {{{"memory_bytes", 1}}}}};
      auto r = c.Post("/v1/workers", Auth(token_), body.dump(), "application/json");
      if (r && r->status == 400 && r->body.find("within 1 s") != std::string::npos) ++refused;
      else if (r && r->status == 503 && r->get_header_value("Retry-After") == "1") ++busy;
      else ++other;
    });
  for (auto& t : clients) t.join();
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  done = true;
  health.join();
  close(silent);
  std::printf("  12 registrations: %d refused after the deadline, %d told to retry, %d other, in %.2f s; "
              "/healthz at worst %.3f s\n", refused.load(), busy.load(), other.load(), took, worst_health_s);
  EXPECT_EQ(other.load(), 0);
  EXPECT_GE(refused.load(), 1);
  EXPECT_LT(took, 4.0);
  EXPECT_LT(worst_health_s, 1.0);
}

TEST_F(Api, SubmissionIsIdempotentAndSurvivesARestartAndCancelIsRecorded) {
  httplib::Headers h = Auth(token_);
  h.emplace("Idempotency-Key", "key-1");
  auto a = Submit(json{{"job", kJob}}, h);
  ASSERT_TRUE(a);
  ASSERT_EQ(a->status, 201) << a->body;
  auto b = Submit(json{{"job", kJob}}, h);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->status, 200) << b->body;
  const std::string id = json::parse(a->body)["id"];
  EXPECT_EQ(json::parse(b->body)["id"], id);
  // The YAML form, with a priority, and paths resolved inside the roots.
  std::string other = kJob;
  other.replace(other.find("ck/a"), 4, "ck/b");
  auto c = Post("/v1/jobs?priority=7", other, "application/yaml");
  ASSERT_TRUE(c);
  ASSERT_EQ(c->status, 201) << c->body;
  const json cj = json::parse(c->body);
  EXPECT_EQ(cj["priority"], 7);
  EXPECT_EQ(cj["checkpoint_dir"], (fs::weakly_canonical(root_ / "ckroot") / "ck" / "b").string());
  auto cancel = Post("/v1/jobs/" + cj["id"].get<std::string>() + "/cancel", "{}");
  ASSERT_TRUE(cancel);
  EXPECT_EQ(cancel->status, 200);
  EXPECT_EQ(json::parse(cancel->body)["state"], "CANCELLED");
  auto again = Post("/v1/jobs/" + cj["id"].get<std::string>() + "/cancel", "{}");
  EXPECT_EQ(again->status, 409);
  const std::string before = Snapshot();
  // Restart: everything acknowledged is there, the same key still finds the same job.
  StopDaemon();
  StartDaemon();
  EXPECT_EQ(Snapshot(), before);
  auto d = Submit(json{{"job", kJob}}, [&] {
    httplib::Headers hh = Auth(token_);
    hh.emplace("Idempotency-Key", "key-1");
    return hh;
  }());
  ASSERT_TRUE(d);
  EXPECT_EQ(d->status, 200);
  EXPECT_EQ(json::parse(d->body)["id"], id);
  auto jobs = json::parse(client_->Get("/v1/jobs")->body)["jobs"];
  EXPECT_EQ(jobs.size(), 2u);
}

// The scheduler plans with the configuration parsed at submission: the job's files are not opened again on
// its ticks (a tokenizer removed after submission goes unnoticed until the daemon starts again, whose parse
// of the live jobs says why the job waits, and retries until the file is back).
TEST_F(Api, AJobIsParsedAtSubmissionAndAtStartNotOnEveryTick) {
  fs::copy_file(std::string(RW_CONFIGS) + "/needle-tokenizer.model", root_ / "data" / "tok.model");
  auto r = Submit(json{{"job", kJob}, {"set", {"data.tokenizer=tok.model"}}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 201) << r->body;
  const std::string id = json::parse(r->body)["id"];
  fs::remove(root_ / "data" / "tok.model");
  auto log_has = [&](const std::string& needle, double seconds) {
    for (int i = 0; i < int(seconds * 50); ++i) {
      auto l = client_->Get("/v1/jobs/" + id + "/logs");
      if (l && l->body.find(needle) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  };
  // No worker: it waits for devices, said at once (the submission wakes the scheduler).
  EXPECT_TRUE(log_has("waiting: no valid ring", 2)) << client_->Get("/v1/jobs/" + id + "/logs")->body;
  EXPECT_FALSE(log_has("data.tokenizer", 0.6)) << "the job's files were opened again by the scheduler";
  StopDaemon();
  StartDaemon();
  EXPECT_TRUE(log_has("data.tokenizer", 2)) << client_->Get("/v1/jobs/" + id + "/logs")->body;
  fs::copy_file(std::string(RW_CONFIGS) + "/needle-tokenizer.model", root_ / "data" / "tok.model");
  auto waits_for_devices_again = [&] {
    auto l = client_->Get("/v1/jobs/" + id + "/logs");
    const auto last = l ? l->body.rfind("waiting: ") : std::string::npos;
    return last != std::string::npos && l->body.compare(last, 23, "waiting: no valid ring:") == 0;
  };
  bool back = false;
  for (int i = 0; i < 500 && !back; ++i) {  // parsed again within JobConfigs' retry period (5 s)
    back = waits_for_devices_again();
    if (!back) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(back) << client_->Get("/v1/jobs/" + id + "/logs")->body;
}

// --tls-cert/--tls-key serve the API over HTTPS: a client that checks the daemon's certificate against its
// CA gets answers, one that trusts another CA and one speaking plain HTTP get none; ApiClient and api.addr
// say https://.
TEST_F(Api, TheApiOverTlsAnswersOnlyClientsThatTrustItsCertificate) {
  if (std::system("command -v openssl > /dev/null 2>&1") != 0) GTEST_SKIP() << "no openssl command to make a certificate";
  const std::string d = (root_ / "tls").string();
  fs::create_directories(d);
  for (const std::string who : {"daemon", "other"}) {
    const std::string cmd = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "
                            "/CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -keyout " + d + "/" + who +
                            ".key -out " + d + "/" + who + ".pem > /dev/null 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
  StopDaemon();
  opt_.tls_cert = d + "/daemon.pem";
  opt_.tls_key = d + "/other.key";  // not its key
  std::unique_ptr<Daemon> bad;
  const Status st = Daemon::Open(opt_, &bad);
  ASSERT_FALSE(st.ok());
  std::printf("  a key that is not the certificate's: %s\n", st.message().c_str());
  EXPECT_NE(st.message().find("--tls-cert, --tls-key: cannot load"), std::string::npos) << st.message();
  opt_.tls_key = d + "/daemon.key";
  std::unique_ptr<Daemon> dm;
  ASSERT_TRUE(Daemon::Open(opt_, &dm).ok());
  std::atomic<bool> stop{false};
  std::thread run([&] { dm->Run(stop); });
  std::string addr;
  std::ifstream(opt_.state_dir + "/api.addr") >> addr;
  EXPECT_EQ(addr.rfind("https://127.0.0.1:", 0), 0u) << addr;
  std::ifstream(opt_.state_dir + "/token") >> token_;
  const std::string url = "https://127.0.0.1:" + std::to_string(dm->port());

  httplib::Client trusting(url);
  trusting.set_ca_cert_path((d + "/daemon.pem").c_str());
  trusting.enable_server_certificate_verification(true);
  for (int i = 0; i < 100 && !trusting.Get("/healthz"); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  auto ok = trusting.Get("/healthz");
  ASSERT_TRUE(ok) << httplib::to_string(ok.error());
  EXPECT_EQ(ok->status, 200);
  httplib::Client wary(url);
  wary.set_ca_cert_path((d + "/other.pem").c_str());
  wary.enable_server_certificate_verification(true);
  auto refused = wary.Get("/healthz");
  EXPECT_FALSE(refused) << "a client trusting another CA got an answer";
  std::printf("  a client that trusts another CA: %s\n", refused ? "answered" : httplib::to_string(refused.error()).c_str());
  httplib::Client plain("127.0.0.1", dm->port());
  plain.set_read_timeout(3);
  auto p = plain.Get("/healthz");
  EXPECT_TRUE(!p || p->status != 200) << "plain HTTP was answered";
  // The command-line client's path: ApiClient with an https:// address and the CA.
  scheduler::ApiClient client({addr, opt_.state_dir + "/token", d + "/daemon.pem"});
  json reply;
  EXPECT_EQ(client.Call("POST", "/v1/jobs", json{{"job", kJob}}.dump(), "application/json", &reply), 201) << client.raw();
  stop = true;
  run.join();
}

// The control channel is authenticated by the cluster's token: a worker's devices answer only the daemon
// holding it. A second daemon (its own token) cannot register this worker's port, a plain CAF connection
// gets nothing, and a device host published without the channel cannot pose as a worker.
TEST_F(Api, AWorkersDevicesAnswerOnlyTheDaemonHoldingTheClusterToken) {
  StopDaemon();
  opt_.worker_connect_s = 2;
  StartDaemon();
  actors::ChannelCredentials mine, again;
  ASSERT_TRUE(actors::WriteChannelCredentials(token_, (root_ / "worker-channel").string(), &mine).ok());
  ASSERT_TRUE(actors::WriteChannelCredentials(token_, (root_ / "worker-channel-2").string(), &again).ok());
  auto bytes = [](const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  EXPECT_EQ(bytes(mine.certificate), bytes(again.certificate)) << "one token, one certificate: nothing to hand out";
  EXPECT_EQ(bytes(mine.key), bytes(again.key));
  struct stat st {};
  ASSERT_EQ(stat(mine.key.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  actors::SystemConfig cfg;
  actors::EnableChannelAuth(cfg, mine);
  caf::actor_system sys{cfg};
  auto host = actors::SpawnHost(sys, 1);
  auto port = caf::openssl::publish(host, 0, "127.0.0.1");
  ASSERT_TRUE(port) << sys.render(port.error());
  const json hello{{"name", "w1"}, {"host", "127.0.0.1"}, {"port", *port}, {"devices", {{{"memory_bytes", 1 << 30}}}}};

  // Another daemon, another cluster, another token.
  DaemonOptions other = opt_;
  other.state_dir = (root_ / "state-other").string();
  other.cluster_id = "intruder";
  std::unique_ptr<Daemon> intruder;
  ASSERT_TRUE(Daemon::Open(other, &intruder).ok());
  std::atomic<bool> stop_other{false};
  std::thread other_thread([&] { intruder->Run(stop_other); });
  std::string other_token;
  std::ifstream(other.state_dir + "/token") >> other_token;
  ASSERT_NE(other_token, token_);
  httplib::Client oc("127.0.0.1", intruder->port());
  oc.set_read_timeout(10);
  for (int i = 0; i < 100 && !oc.Get("/healthz"); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  auto r = oc.Post("/v1/workers", Auth(other_token), hello.dump(), "application/json");
  ASSERT_TRUE(r);
  std::printf("  another cluster's daemon: %d %s", r->status, r->body.c_str());
  EXPECT_EQ(r->status, 400) << r->body;
  EXPECT_NE(r->body.find("cannot reach the worker's device host"), std::string::npos) << r->body;
  stop_other = true;
  other_thread.join();
  intruder.reset();

  // A plain CAF connection (no channel) to the worker's port gets no actor.
  {
    actors::SystemConfig plain_cfg;
    caf::actor_system plain{plain_cfg};
    caf::scoped_actor self{plain};
    std::string got = "nothing";
    self->request(plain.middleman().actor_handle(), std::chrono::seconds(2), caf::connect_atom::value,
                  std::string("127.0.0.1"), uint16_t(*port))
        .receive([&](const caf::node_id&, caf::strong_actor_ptr& p, const std::set<std::string>&) {
                   got = p ? "an actor" : "no actor";
                 },
                 [&](caf::error& e) { got = "error: " + plain.render(e); });
    std::printf("  a plain CAF connection: %s\n", got.c_str());
    EXPECT_NE(got, "an actor");
  }

  // Our daemon registers the worker of this cluster.
  r = Post("/v1/workers", hello.dump());
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 201) << r->body;

  // A device host published without the channel cannot pose as a worker.
  actors::SystemConfig plain_cfg;
  caf::actor_system plain{plain_cfg};
  auto fake = actors::SpawnHost(plain, 1);
  auto fake_port = plain.middleman().publish(fake, 0, "127.0.0.1");
  ASSERT_TRUE(fake_port);
  json fake_hello = hello;
  fake_hello["name"] = "w-fake";
  fake_hello["port"] = *fake_port;
  r = Post("/v1/workers", fake_hello.dump());
  ASSERT_TRUE(r);
  std::printf("  a host without the channel: %d %s", r->status, r->body.c_str());
  EXPECT_EQ(r->status, 400) << r->body;
  StopDaemon();
  caf::anon_send(host, actors::quit_atom::value);
  caf::anon_send(fake, actors::quit_atom::value);
}

// Backfill on a worker of 3 devices (in this process, published on the CAF middleman as a worker's are):
// C (priority 5) holds 2; A (priority 1) needs 3 and waits, saying why in the API; B (priority 1, later)
// fits in the free device and starts ahead of A instead of leaving it idle; when C ends, B's device is what
// A lacks, so B is preempted for A (a backfilled job yields to the job it jumped), A runs to SUCCEEDED, and
// B resumes after it.
TEST_F(Api, LaterJobsThatFitBackfillAndYieldToTheJobTheyJumped) {
  actors::SystemConfig cfg;
  actors::ChannelCredentials channel;  // a worker of this cluster: it holds the token
  ASSERT_TRUE(actors::WriteChannelCredentials(token_, (root_ / "worker-channel").string(), &channel).ok());
  actors::EnableChannelAuth(cfg, channel);
  caf::actor_system sys{cfg};
  auto host = actors::SpawnHost(sys, 3);
  auto port = caf::openssl::publish(host, 0, "127.0.0.1");
  ASSERT_TRUE(port) << sys.render(port.error());
  auto reg = Post("/v1/workers", json{{"name", "w1"}, {"host", "127.0.0.1"}, {"port", *port},
                                      {"devices", {{{"memory_bytes", 1 << 30}}, {{"memory_bytes", 1 << 30}},
                                                   {{"memory_bytes", 1 << 30}}}}}.dump());
  ASSERT_TRUE(reg);
  ASSERT_EQ(reg->status, 201) << reg->body;
  std::atomic<bool> beating{true};
  std::thread beat([&] {  // the worker's heartbeats
    httplib::Client c("127.0.0.1", daemon_->port());
    const std::string instance = json::parse(reg->body)["instance"];
    while (beating) {
      c.Post("/v1/workers/w1/heartbeat", Auth(token_), json{{"instance", instance}}.dump(), "application/json");
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  });
  struct Joined {
    std::atomic<bool>& flag;
    std::thread& t;
    ~Joined() {
      flag = false;
      t.join();
    }
  } joined{beating, beat};
  auto job = [](const std::string& dir, int devices, int steps) {
    std::string j = kJob;
    auto put = [&](const std::string& from, const std::string& to) { j.replace(j.find(from), from.size(), to); };
    put("ring: {devices: 2, min_devices: 1}", "ring: {devices: " + std::to_string(devices) +
                                                  ", min_devices: " + std::to_string(devices) + "}");
    put("steps: 3", "steps: " + std::to_string(steps));
    put("seq_len: 64", "seq_len: 96");  // splits into zigzag rings of 1, 2 and 3
    put("dir: ck/a", "dir: ck/" + dir);
    put("output_dir: out/a", "output_dir: out/" + dir);
    return j;
  };
  auto submit = [&](const std::string& dir, int devices, int steps, int priority) {
    auto r = Submit(json{{"job", job(dir, devices, steps)}, {"priority", priority}});
    EXPECT_TRUE(r && r->status == 201) << (r ? r->body : "no reply");
    return r ? json::parse(r->body)["id"].get<std::string>() : "";
  };
  auto get = [&](const std::string& id) { return json::parse(client_->Get("/v1/jobs/" + id)->body); };
  auto logs = [&](const std::string& id) {  // the job's log without its step lines
    std::istringstream in(client_->Get("/v1/jobs/" + id + "/logs")->body);
    std::string out, line;
    while (std::getline(in, line))
      if (line.find(" step ") == std::string::npos) out += line + "\n";
    return out;
  };
  auto wait_until = [&](const std::function<bool()>& cond, double seconds) {
    for (int i = 0; i < int(seconds * 20); ++i) {
      if (cond()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return cond();
  };
  const std::string c = submit("c", 2, 1500, 5);
  ASSERT_TRUE(wait_until([&] { return get(c)["state"] == "RUNNING"; }, 30)) << logs(c);
  const std::string a = submit("a", 3, 3, 1);
  const std::string b = submit("b", 1, 1000000, 1);
  ASSERT_TRUE(wait_until([&] { return get(b)["state"] == "RUNNING"; }, 30)) << logs(b);
  EXPECT_EQ(get(c)["state"], "RUNNING") << "C ended before B was backfilled: make C longer";
  // The log line follows the transition to RUNNING (the job table first): wait for it, briefly.
  EXPECT_TRUE(wait_until([&] { return logs(b).find("backfilled while " + a + " waits for devices") != std::string::npos; },
                         5))
      << logs(b);
  const json waiting = get(a);
  EXPECT_EQ(waiting["state"], "QUEUED");
  ASSERT_TRUE(waiting.contains("waiting")) << waiting.dump();
  std::printf("  %s waits: %s\n", a.c_str(), waiting["waiting"].get<std::string>().c_str());
  EXPECT_NE(waiting["waiting"].get<std::string>().find("wants 3 devices"), std::string::npos) << waiting.dump();
  // C ends; B's device is the one A lacks.
  ASSERT_TRUE(wait_until([&] { return get(c)["state"] == "SUCCEEDED"; }, 120)) << logs(c);
  ASSERT_TRUE(wait_until([&] { return get(a)["state"] == "SUCCEEDED"; }, 60)) << logs(a) << logs(b);
  EXPECT_NE(logs(b).find("preempting for " + a), std::string::npos) << logs(b);
  EXPECT_FALSE(get(a).contains("waiting"));
  ASSERT_TRUE(wait_until([&] { return get(b)["state"] == "RUNNING"; }, 30)) << logs(b);
  std::printf("  %s's log:\n%s", b.c_str(), logs(b).c_str());
  ASSERT_EQ(Post("/v1/jobs/" + b + "/cancel", "{}")->status, 200);
  ASSERT_TRUE(wait_until([&] { return get(b)["state"] == "CANCELLED"; }, 30));
  StopDaemon();
  caf::anon_send(host, actors::quit_atom::value);
}

TEST_F(Api, AStateDirectoryOfAnotherClusterIsRefusedAndLeftAlone) {
  ASSERT_EQ(Submit(json{{"job", kJob}})->status, 201);
  const std::string before = Snapshot();
  StopDaemon();
  DaemonOptions other = opt_;
  other.cluster_id = "another-cluster";
  std::unique_ptr<Daemon> d;
  const auto st = Daemon::Open(other, &d);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("another-cluster"), std::string::npos) << st.message();
  std::printf("  refused: %s\n", st.message().c_str());
  StartDaemon();
  EXPECT_EQ(Snapshot(), before);
}

TEST_F(Api, MetricsPassPromtool) {
  auto r = client_->Get("/metrics");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  EXPECT_NE(r->body.find("ringworld_workers{state=\"alive\"} 0"), std::string::npos) << r->body;
  for (int i = 0; i < 50 && r->body.find("ringworld_jobs{") == std::string::npos; ++i) {  // the first tick
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    r = client_->Get("/metrics");
  }
  EXPECT_NE(r->body.find("ringworld_jobs{state=\"QUEUED\"} 0"), std::string::npos) << r->body;
  if (std::system("command -v promtool > /dev/null") != 0) GTEST_SKIP() << "promtool not installed (Debian: prometheus)";
  const fs::path f = root_ / "metrics.txt";
  std::ofstream(f) << r->body;
  const std::string cmd = "promtool check metrics < " + f.string();
  EXPECT_EQ(std::system(cmd.c_str()), 0) << r->body;
}

}  // namespace
}  // namespace rw::scheduler
