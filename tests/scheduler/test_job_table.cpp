// The job table: the state machine refuses illegal transitions and changes nothing; every transition is in
// the store before it returns (a table rebuilt from the store after a "crash" sees it, events in order);
// priority then FIFO; idempotent submission; the states and counts a scheduler reads, the creation hook.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <thread>
#include <vector>

#include "scheduler/job_table.h"

namespace rw::scheduler {
namespace {

namespace fs = std::filesystem;

TEST(JobTable, TransitionsFollowTheStateMachineAndSurviveARestart) {
  const fs::path dir = fs::temp_directory_path() / ("rw_jobs_" + std::to_string(getpid()));
  fs::remove_all(dir);
  std::string id;
  {
    std::unique_ptr<storage::StateStore> store;
    ASSERT_TRUE(storage::OpenRocksStore(dir.string(), "c1", &store).ok());
    std::unique_ptr<JobTable> t;
    ASSERT_TRUE(JobTable::Open(store.get(), &t).ok());
    JobRecord r;
    ASSERT_TRUE(t->Submit("tiny", "name: tiny", 0, "", &r).ok());
    id = r.id;
    EXPECT_EQ(r.state, JobState::kQueued);
    ASSERT_TRUE(t->Transition(id, JobState::kRunning, "placed on 2 devices").ok());
    ASSERT_TRUE(t->Transition(id, JobState::kPreempted, "SIGTERM").ok());
    auto st = t->Transition(id, JobState::kSucceeded, "impossible");
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message().find("cannot go from PREEMPTED to SUCCEEDED"), std::string::npos) << st.message();
    ASSERT_TRUE(t->Transition(id, JobState::kQueued, "requeued").ok());
    // The process "crashes" here: nothing but the store survives.
  }
  std::unique_ptr<storage::StateStore> store;
  ASSERT_TRUE(storage::OpenRocksStore(dir.string(), "c1", &store).ok());
  std::unique_ptr<JobTable> t;
  ASSERT_TRUE(JobTable::Open(store.get(), &t).ok());
  JobRecord r;
  ASSERT_TRUE(t->Get(id, &r).ok());
  EXPECT_EQ(r.state, JobState::kQueued);
  EXPECT_EQ(r.message, "requeued");
  std::vector<JobEvent> ev;
  ASSERT_TRUE(t->Events(id, &ev).ok());
  std::vector<std::string> path;
  for (const auto& e : ev) path.push_back(e.to);
  EXPECT_EQ(path, (std::vector<std::string>{"QUEUED", "RUNNING", "PREEMPTED", "QUEUED"}));
  // Ids and event numbers continue after the restart instead of reusing old ones.
  JobRecord r2;
  ASSERT_TRUE(t->Submit("second", "name: second", 0, "", &r2).ok());
  EXPECT_NE(r2.id, id);
  ASSERT_TRUE(t->Transition(r2.id, JobState::kCancelled, "user").ok());
  ASSERT_TRUE(t->Events(r2.id, &ev).ok());
  EXPECT_EQ(ev.size(), 2u);
  EXPECT_GT(ev[0].seq, 4);
  t.reset();
  store.reset();
  fs::remove_all(dir);
}

TEST(JobTable, HigherPriorityFirstThenFifoAndIdempotentSubmission) {
  auto store = storage::MakeMemoryStore();
  std::unique_ptr<JobTable> t;
  ASSERT_TRUE(JobTable::Open(store.get(), &t).ok());
  JobRecord a, b, c, again;
  ASSERT_TRUE(t->Submit("a", "", 0, "", &a).ok());
  ASSERT_TRUE(t->Submit("b", "", 5, "key-b", &b).ok());
  ASSERT_TRUE(t->Submit("c", "", 5, "", &c).ok());
  ASSERT_TRUE(t->Submit("b-retry", "", 5, "key-b", &again).ok());
  EXPECT_EQ(again.id, b.id) << "a retried submission returns the first job";
  EXPECT_EQ(t->List().size(), 3u);
  auto ids = [&] {
    std::vector<std::string> out;
    for (const auto& q : t->Queue()) out.push_back(q.id);
    return out;
  };
  EXPECT_EQ(ids(), (std::vector<std::string>{b.id, c.id, a.id}));
  ASSERT_TRUE(t->Transition(b.id, JobState::kRunning, "").ok());
  EXPECT_EQ(ids(), (std::vector<std::string>{c.id, a.id}));
  ASSERT_TRUE(t->Transition(c.id, JobState::kRunning, "").ok());
  EXPECT_EQ(ids(), (std::vector<std::string>{a.id}));
  auto st = t->Transition("job-999999", JobState::kRunning, "");
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("no such job"), std::string::npos);
}

// What the scheduler reads on its ticks (states, ids by state, counts) and the hook a submission keeps its
// parsed configuration with: run once, for a new job only, with the record as stored.
TEST(JobTable, StatesCountsAndTheCreationHook) {
  auto store = storage::MakeMemoryStore();
  std::unique_ptr<JobTable> t;
  ASSERT_TRUE(JobTable::Open(store.get(), &t).ok());
  JobRecord fields, a, b, again;
  fields.name = "a";
  std::vector<std::string> hooked;  // the hook may not call the table: its lock is held
  auto hook = [&](const JobRecord& r) { hooked.push_back(r.id + " " + JobStateName(r.state) + " " + r.name); };
  bool created = false;
  ASSERT_TRUE(t->Submit(fields, "key-a", &a, &created, hook).ok());
  EXPECT_TRUE(created);
  ASSERT_TRUE(t->Submit(fields, "key-a", &again, &created, hook).ok());
  EXPECT_FALSE(created);
  EXPECT_EQ(again.id, a.id);
  EXPECT_EQ(hooked, (std::vector<std::string>{a.id + " QUEUED a"})) << "the hook runs for a new job only";
  ASSERT_TRUE(t->Submit("b", "", 0, "", &b).ok());
  ASSERT_TRUE(t->Transition(b.id, JobState::kRunning, "").ok());
  JobState s;
  ASSERT_TRUE(t->StateOf(b.id, &s));
  EXPECT_EQ(s, JobState::kRunning);
  EXPECT_FALSE(t->StateOf("job-999999", &s));
  EXPECT_EQ(t->IdsIn(JobState::kQueued), std::vector<std::string>{a.id});
  EXPECT_EQ(t->IdsIn(JobState::kRunning), std::vector<std::string>{b.id});
  EXPECT_TRUE(t->IdsIn(JobState::kPreempted).empty());
  const std::map<std::string, int> counts = t->CountByState();
  EXPECT_EQ(counts, (std::map<std::string, int>{{"QUEUED", 1}, {"RUNNING", 1}, {"SUCCEEDED", 0}, {"FAILED", 0},
                                               {"CANCELLED", 0}, {"PREEMPTED", 0}}));
}

// A live job owns its checkpoint directory: concurrent submissions naming it make one job, however the
// directory is spelt in older records; a FAILED job resumed after another took the directory is refused.
TEST(JobTable, ALiveJobOwnsItsCheckpointDirectoryUnderOneLock) {
  auto store = storage::MakeMemoryStore();
  std::unique_ptr<JobTable> t;
  ASSERT_TRUE(JobTable::Open(store.get(), &t).ok());
  JobRecord fields;
  fields.name = "a";
  fields.spec = "name: a";
  fields.checkpoint_dir = "/ck/a";
  std::atomic<int> made{0}, refused{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i)
    threads.emplace_back([&] {
      JobRecord out;
      bool created = false, conflict = false;
      const Status st = t->Submit(fields, "", &out, &created, {}, &conflict);
      if (st.ok() && created) ++made;
      if (!st.ok() && conflict && st.message().find("belongs to job-000001") != std::string::npos) ++refused;
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(made.load(), 1);
  EXPECT_EQ(refused.load(), 7);
  EXPECT_EQ(t->List().size(), 1u);

  // The first job fails; a second takes the directory (written with a trailing '/', as older records may be).
  ASSERT_TRUE(t->Transition("job-000001", JobState::kRunning, "placed").ok());
  ASSERT_TRUE(t->Transition("job-000001", JobState::kFailed, "device lost").ok());
  fields.checkpoint_dir = "/ck/a/";
  JobRecord second;
  bool created = false, conflict = false;
  ASSERT_TRUE(t->Submit(fields, "", &second, &created, {}, &conflict).ok());
  ASSERT_TRUE(created);
  const Status st = t->Transition("job-000001", JobState::kQueued, "resume (API)");
  ASSERT_FALSE(st.ok());
  std::printf("  resume of the failed job: %s\n", st.message().c_str());
  EXPECT_NE(st.message().find("belongs to " + second.id + " (QUEUED)"), std::string::npos) << st.message();
  JobState s;
  ASSERT_TRUE(t->StateOf("job-000001", &s));
  EXPECT_EQ(s, JobState::kFailed);  // unchanged
  // Once the second has ended, the first may come back.
  ASSERT_TRUE(t->Transition(second.id, JobState::kCancelled, "cancel (API)").ok());
  EXPECT_TRUE(t->Transition("job-000001", JobState::kQueued, "resume (API)").ok());
}

}  // namespace
}  // namespace rw::scheduler
