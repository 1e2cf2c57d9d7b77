// The job table's writes killed (SIGKILL) at every reach of every jobs.* crash point in turn, in a child
// process that runs a job's life (submissions with idempotency keys, state changes, checkpoint records
// through CheckpointRecords, preemption, the end): after the restart, on the real RocksDB store, every
// acknowledged operation is there, the operation in flight is wholly there or wholly absent (the job's
// state, its events, its checkpoint_step and its checkpoint records agree), and a repeated submission
// finds its job. Prints the number of kills.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <vector>

#include "runtime/crash_point.h"
#include "scheduler/checkpoint_records.h"

namespace rw::scheduler {
namespace {

namespace fs = std::filesystem;

// The life the child runs, one operation after another.
struct Op {
  enum Kind { kSubmit, kTransition, kCheckpoint } kind;
  int job;           // 1 or 2
  JobState to = JobState::kQueued;
  int64_t step = 0;  // kCheckpoint
};
const std::vector<Op> kLife = {
    {Op::kSubmit, 1},
    {Op::kTransition, 1, JobState::kRunning},
    {Op::kCheckpoint, 1, {}, 2},
    {Op::kSubmit, 2},
    {Op::kTransition, 1, JobState::kPreempted},
    {Op::kTransition, 1, JobState::kQueued},
    {Op::kTransition, 1, JobState::kRunning},
    {Op::kCheckpoint, 1, {}, 4},
    {Op::kTransition, 1, JobState::kSucceeded},
    {Op::kTransition, 2, JobState::kCancelled},
};

std::string Id(int job) { return job == 1 ? "job-000001" : "job-000002"; }

// What the store must hold for a job after the first n operations.
struct Expect {
  bool exists = false;
  JobState state = JobState::kQueued;
  size_t events = 0;
  int64_t checkpoint_step = 0;
  std::set<int64_t> records;
};
Expect After(size_t n, int job) {
  Expect e;
  for (size_t i = 0; i < n; ++i) {
    const Op& op = kLife[i];
    if (op.job != job) continue;
    ++e.events;
    if (op.kind == Op::kSubmit) e.exists = true;
    if (op.kind == Op::kTransition) e.state = op.to;
    if (op.kind == Op::kCheckpoint) e.checkpoint_step = op.step, e.records.insert(op.step);
  }
  return e;
}

// The child: runs the life, appending the index of each operation acknowledged to `acks`.
[[noreturn]] void RunLife(const fs::path& root) {
  std::unique_ptr<storage::StateStore> store;
  if (!storage::OpenRocksStore((root / "state").string(), "c1", &store).ok()) std::_Exit(3);
  std::unique_ptr<JobTable> jobs;
  if (!JobTable::Open(store.get(), &jobs).ok()) std::_Exit(3);
  DaemonMetrics metrics;
  JobLog log((root / "logs").string(), jobs.get());
  CheckpointRecords records(store.get(), jobs.get(), &metrics, &log);
  const int acks = ::open((root / "acks").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  for (size_t i = 0; i < kLife.size(); ++i) {
    const Op& op = kLife[i];
    bool ok = false;
    if (op.kind == Op::kSubmit) {
      JobRecord fields, out;
      fields.name = "j" + std::to_string(op.job);
      fields.spec = "name: " + fields.name;
      fields.checkpoint_dir = (root / ("ck" + std::to_string(op.job))).string();
      bool created = false;
      ok = jobs->Submit(fields, "key-" + std::to_string(op.job), &out, &created).ok() && created &&
           out.id == Id(op.job);
    } else if (op.kind == Op::kTransition) {
      ok = jobs->Transition(Id(op.job), op.to, "life").ok();
    } else {
      runtime::CheckpointInfo info;
      info.step = op.step;
      info.path = (root / ("ck" + std::to_string(op.job)) / ("step-" + std::to_string(op.step))).string();
      records.Record(Id(op.job), info);
      JobRecord r;
      ok = jobs->Get(Id(op.job), &r).ok() && r.checkpoint_step == op.step;
    }
    if (!ok) std::_Exit(4);
    const std::string line = std::to_string(i) + "\n";
    if (::write(acks, line.data(), line.size()) != ssize_t(line.size())) std::_Exit(5);
  }
  std::_Exit(0);
}

TEST(CrashPoints, TheJobTableKilledAtEveryWriteKeepsWhatItAcknowledgedAndNoHalfOfAnOperation) {
  const fs::path base = fs::temp_directory_path() / ("rw_jobcrash_" + std::to_string(getpid()));
  fs::remove_all(base);
  int kills = 0;
  std::map<std::string, int> reaches;
  for (const auto& point : runtime::CrashPoints()) {
    const std::string name = point.name;
    if (name.rfind("jobs.", 0) != 0) continue;
    for (int nth = 1;; ++nth) {
      const fs::path root = base / (name + "." + std::to_string(nth));
      fs::create_directories(root / "ck1" / "step-2");
      fs::create_directories(root / "ck1" / "step-4");
      const std::string at = name + ":" + std::to_string(nth);
      const pid_t pid = ::fork();
      ASSERT_GE(pid, 0);
      if (pid == 0) {
        ::setenv("RINGWORLD_CRASH_AT", at.c_str(), 1);
        ::freopen("/dev/null", "w", stderr);
        RunLife(root);
      }
      int status = 0;
      ASSERT_EQ(::waitpid(pid, &status, 0), pid);
      const bool killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
      ASSERT_TRUE(killed || (WIFEXITED(status) && WEXITSTATUS(status) == 0))
          << at << ": the child ended with status " << status;
      size_t acked = 0;
      {
        std::ifstream f(root / "acks");
        for (std::string l; std::getline(f, l);) ++acked;
      }
      if (!killed) {  // every reach of the point is swept
        EXPECT_EQ(acked, kLife.size()) << at;
        EXPECT_GT(nth, 1) << name << " is never reached by a job's life";
        reaches[name] = nth - 1;
        fs::remove_all(root);
        break;
      }
      ++kills;
      // The restart: the table rebuilt from the store.
      std::unique_ptr<storage::StateStore> store;
      const Status opened = storage::OpenRocksStore((root / "state").string(), "c1", &store);
      ASSERT_TRUE(opened.ok()) << at << ": " << opened.message();
      std::unique_ptr<JobTable> jobs;
      ASSERT_TRUE(JobTable::Open(store.get(), &jobs).ok()) << at;
      std::vector<std::pair<std::string, std::string>> rows;
      ASSERT_TRUE(store->GetAll(storage::Table::kCheckpoints, &rows).ok());
      bool matched_next = false;
      for (int job : {1, 2}) {
        const Expect done = After(acked, job), next = After(std::min(acked + 1, kLife.size()), job);
        JobRecord r;
        const bool exists = jobs->Get(Id(job), &r).ok();
        std::vector<JobEvent> events;
        if (exists) ASSERT_TRUE(jobs->Events(Id(job), &events).ok());
        std::set<int64_t> recorded;
        for (const auto& [key, value] : rows)
          if (key.rfind(Id(job) + "/", 0) == 0) recorded.insert(std::stoll(key.substr(key.find('/') + 1)));
        auto is = [&](const Expect& e) {
          return exists == e.exists && (!exists || (r.state == e.state && events.size() == e.events &&
                                                    r.checkpoint_step == e.checkpoint_step)) &&
                 recorded == e.records;
        };
        EXPECT_TRUE(is(done) || is(next))
            << at << ": job " << job << " after " << acked << " acknowledged operations: exists " << exists
            << ", state " << (exists ? JobStateName(r.state) : "-") << ", " << events.size() << " events, checkpoint_step "
            << r.checkpoint_step << ", " << recorded.size() << " checkpoint records";
        if (exists && !events.empty()) EXPECT_EQ(events.back().to, JobStateName(r.state)) << at;
        matched_next = matched_next || (!is(done) && is(next));
      }
      // An acknowledged submission is found again by its key, and not made twice.
      for (int job : {1, 2}) {
        if (!After(acked, job).exists) continue;
        JobRecord fields, out;
        fields.name = "j" + std::to_string(job);
        bool created = true;
        ASSERT_TRUE(jobs->Submit(fields, "key-" + std::to_string(job), &out, &created).ok()) << at;
        EXPECT_FALSE(created) << at;
        EXPECT_EQ(out.id, Id(job)) << at;
      }
      // Killed after its write, the operation in flight is there; before it, it is not.
      const bool after_write = name.find("after_write") != std::string::npos;
      EXPECT_EQ(matched_next, after_write) << at;
      store.reset();
      fs::remove_all(root);
    }
  }
  std::printf("  %d kills at %zu crash points:", kills, reaches.size());
  for (const auto& [name, n] : reaches) std::printf(" %s x%d", name.c_str(), n);
  std::printf("\n");
  EXPECT_EQ(reaches.size(), 6u);
  fs::remove_all(base);
}

}  // namespace
}  // namespace rw::scheduler
