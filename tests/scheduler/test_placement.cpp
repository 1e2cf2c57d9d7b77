// The daemon's placement and preemption choices (scheduler/placement.h), case by case over described
// clusters: a ring on the one worker that fits it best, else over the fewest workers; ties by worker id;
// lost and draining workers offer nothing; too few devices is an error that places nothing; the victim is
// the lowest-priority running job below the waiting one, ties to the earliest; one preemption at a time;
// and a job that no ring of the free devices can run (PlanRing over the job parsed once) waits and
// preempts, where one that may shrink runs smaller.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "actors/job_driver.h"
#include "runtime/job_config.h"
#include "scheduler/placement.h"

namespace rw::scheduler {
namespace {

// A worker of `n` devices, the first `used` of them held by job "other".
WorkerDevices W(const std::string& id, int n, int used = 0, bool usable = true) {
  WorkerDevices w{id, usable, std::vector<std::string>(size_t(n))};
  for (int i = 0; i < used; ++i) w.used_by[size_t(i)] = "other";
  return w;
}

std::vector<Slot> Place(const std::vector<WorkerDevices>& workers, int devices) {
  std::vector<Slot> slots;
  const Status st = PlaceRing(workers, devices, &slots);
  EXPECT_TRUE(st.ok()) << st.message();
  return slots;
}

std::vector<Slot> On(const std::string& worker, std::vector<int> indices) {
  std::vector<Slot> out;
  for (int i : indices) out.push_back({worker, i});
  return out;
}

std::vector<Slot> Concat(std::vector<Slot> a, const std::vector<Slot>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(PlaceRing, ARingThatFitsOneWorkerGoesToTheTightestFit) {
  // Free: w1 2, w2 4, w3 3 (of 5, the first 2 held).
  const std::vector<WorkerDevices> cluster = {W("w1", 2), W("w2", 4), W("w3", 5, 2)};
  EXPECT_EQ(Place(cluster, 2), On("w1", {0, 1}));
  EXPECT_EQ(Place(cluster, 3), On("w3", {2, 3, 4}));  // the free devices, in index order
  EXPECT_EQ(Place(cluster, 4), On("w2", {0, 1, 2, 3}));
  EXPECT_EQ(Place(cluster, 1), On("w1", {0}));
}

TEST(PlaceRing, ARingLargerThanAnyWorkerSpansTheLargestFirst) {
  const std::vector<WorkerDevices> cluster = {W("w1", 2), W("w2", 4), W("w3", 5, 2)};
  // 6: w2's 4, then 2 of w3's 3 (ranks 0-3 on w2, 4-5 on w3).
  EXPECT_EQ(Place(cluster, 6), Concat(On("w2", {0, 1, 2, 3}), On("w3", {2, 3})));
  // 9: every free device.
  EXPECT_EQ(Place(cluster, 9), Concat(Concat(On("w2", {0, 1, 2, 3}), On("w3", {2, 3, 4})), On("w1", {0, 1})));
}

TEST(PlaceRing, TiesGoToTheSmallerWorkerId) {
  // Listed out of order: the choice does not depend on the order of the description.
  const std::vector<WorkerDevices> cluster = {W("wb", 2), W("wa", 2), W("wc", 3)};
  EXPECT_EQ(Place(cluster, 2), On("wa", {0, 1}));
  EXPECT_EQ(Place(cluster, 3), On("wc", {0, 1, 2}));
  EXPECT_EQ(Place(cluster, 5), Concat(On("wc", {0, 1, 2}), On("wa", {0, 1})));
  EXPECT_EQ(Place(cluster, 6), Concat(Concat(On("wc", {0, 1, 2}), On("wa", {0, 1})), On("wb", {0})));
}

TEST(PlaceRing, LostAndDrainingWorkersOfferNothing) {
  const std::vector<WorkerDevices> cluster = {W("big", 8, 0, /*usable=*/false), W("w1", 2), W("w2", 2)};
  EXPECT_EQ(CountFree(cluster), 4);
  EXPECT_EQ(Place(cluster, 4), Concat(On("w1", {0, 1}), On("w2", {0, 1})));
  std::vector<Slot> slots;
  EXPECT_FALSE(PlaceRing(cluster, 5, &slots).ok());
}

TEST(PlaceRing, TooFewFreeDevicesIsAnErrorThatPlacesNothing) {
  const std::vector<WorkerDevices> cluster = {W("w1", 2, 1), W("w2", 2)};
  std::vector<Slot> slots = {{"stale", 7}};
  const Status st = PlaceRing(cluster, 4, &slots);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("a ring of 4 devices, 3 free"), std::string::npos) << st.message();
  EXPECT_TRUE(slots.empty());
  EXPECT_FALSE(PlaceRing({}, 1, &slots).ok());
  EXPECT_FALSE(PlaceRing(cluster, 0, &slots).ok());
}

TEST(PlaceRing, AJobCountsTheDevicesItHoldsItselfAsItsOwn) {
  std::vector<WorkerDevices> cluster = {W("w1", 4), W("w2", 2)};
  cluster[0].used_by = {"job-1", "job-1", "job-2", ""};
  EXPECT_EQ(CountFree(cluster), 3);
  EXPECT_EQ(CountFree(cluster, "job-1"), 5);
  EXPECT_EQ(CountFree(cluster, "job-2"), 4);
  // Placement itself only takes free devices: a job gives its own back before it re-forms its ring.
  EXPECT_EQ(Place(cluster, 3), Concat(On("w2", {0, 1}), On("w1", {3})));
}

// The victim for a waiting job of priority `p` that fits in any number of devices (as ChooseVictim was).
std::string VictimFor(const std::vector<RunningJob>& running, int64_t p) {
  return ChoosePreemption(running, {p, 0}, 0, [](int) { return true; }).victim;
}

TEST(ChoosePreemption, TheLowestPriorityBelowTheWaitingJob) {
  const std::vector<RunningJob> running = {
      {"job-000001", 5}, {"job-000002", 1}, {"job-000003", 3}, {"job-000004", 10}};
  EXPECT_EQ(VictimFor(running, 20), "job-000002");
  EXPECT_EQ(VictimFor(running, 4), "job-000002");
  EXPECT_EQ(VictimFor(running, 2), "job-000002");
  // Equal priority is not below: a job is never preempted for its equal (unless it was backfilled past it).
  EXPECT_EQ(VictimFor(running, 1), "");
  EXPECT_EQ(VictimFor(running, -5), "");
  EXPECT_EQ(VictimFor({}, 100), "");
}

TEST(ChoosePreemption, TiesGoToTheEarliestSubmitted) {
  const std::vector<RunningJob> running = {{"job-000007", 0}, {"job-000003", 0}, {"job-000005", 0}};
  EXPECT_EQ(VictimFor(running, 1), "job-000003");
}

TEST(ChoosePreemption, OnePreemptionAtATimeAndOnlyOfRunningJobs) {
  std::vector<RunningJob> running = {{"job-000001", 0}, {"job-000002", 1}};
  running[0].running = false;  // cancelled, its driver not stopped yet: stopping it frees nothing sooner
  EXPECT_EQ(VictimFor(running, 5), "job-000002");
  running[0].running = true;
  running[1].preempting = true;  // already asked to stop: wait for its devices before asking another
  const Preemption p = ChoosePreemption(running, {5, 0}, 0, [](int) { return true; });
  EXPECT_EQ(p.victim, "");
  EXPECT_TRUE(p.pending) << "a preemption under way keeps the free devices for the waiting job";
}

// A waiting job that needs 4 devices, 1 free: preempting is worth it only when the victims free enough.
TEST(ChoosePreemption, OnlyWhenTheVictimsFreeEnoughForTheWaitingJob) {
  auto needs4 = [](int available) { return available >= 4; };
  RunningJob low{"job-000001", 0}, mid{"job-000002", 1}, high{"job-000003", 9};
  low.devices = 1;
  mid.devices = 2;
  high.devices = 4;
  // 1 free + low (1) + mid (2) = 4: low goes first (the lowest priority), then mid.
  Preemption p = ChoosePreemption({high, mid, low}, {5, 10}, 1, needs4);
  EXPECT_EQ(p.victim, "job-000001");
  EXPECT_TRUE(p.pending);
  // Without mid, low's one device would not let it run: nobody is preempted, and later jobs may backfill.
  p = ChoosePreemption({high, low}, {5, 10}, 1, needs4);
  EXPECT_EQ(p.victim, "");
  EXPECT_FALSE(p.pending);
  // A job that fits in no ring the cluster could give (needs more devices than all of them) preempts nobody.
  p = ChoosePreemption({high, mid, low}, {50, 10}, 1, [](int available) { return available >= 64; });
  EXPECT_EQ(p.victim, "");
  EXPECT_FALSE(p.pending);
}

// A job backfilled past the waiting one (same priority, submitted later) gives its devices back; one of the
// same priority submitted earlier, or not backfilled, does not.
TEST(ChoosePreemption, ABackfilledJobOfTheSamePriorityYieldsToTheJobItJumped) {
  RunningJob jumped{"job-000009", 3}, earlier{"job-000002", 3}, plain{"job-000011", 3};
  jumped.backfilled = true;
  jumped.submitted_seq = 9;
  earlier.backfilled = true;
  earlier.submitted_seq = 2;
  plain.submitted_seq = 11;
  const auto any = [](int) { return true; };
  EXPECT_EQ(ChoosePreemption({plain, earlier, jumped}, {3, 5}, 0, any).victim, "job-000009");
  EXPECT_EQ(ChoosePreemption({plain, earlier}, {3, 5}, 0, any).victim, "");
}

// A job of `devices` that may shrink to `min_devices`, parsed and validated once as the daemon does.
runtime::JobConfig Job(int devices, int min_devices) {
  const std::string yaml = R"(name: placement-test
model: {vocab_size: 259, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
        num_attention_heads: 2, num_key_value_heads: 1}
data: {task: copy}
stages:
  - {seq_len: 64, rope_theta: 10000, steps: 3, batch: 1}
checkpoint: {dir: ck}
)";
  runtime::JobConfig job;
  const Status st = runtime::ParseJobConfig(yaml, "job", {"ring.devices=" + std::to_string(devices),
                                                          "ring.min_devices=" + std::to_string(min_devices)}, &job);
  EXPECT_TRUE(st.ok()) << st.message();
  return job;
}

TEST(Schedule, AJobThatNoRingOfTheFreeDevicesRunsWaitsAndPreemptsTheLowest) {
  // Two workers of 2; a priority-1 job holds w2. A priority-5 job wants a ring of 4, no smaller.
  std::vector<WorkerDevices> cluster = {W("w1", 2), W("w2", 2)};
  cluster[1].used_by = {"job-000001", "job-000001"};
  actors::RingPlan plan;
  const Status st = actors::PlanRing(Job(4, 4), 0, CountFree(cluster), &plan);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("no valid ring"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("2 available"), std::string::npos) << st.message();
  EXPECT_EQ(VictimFor({{"job-000001", 1}}, 5), "job-000001");
  // Its devices back, the ring of 4 spans both workers.
  cluster[1].used_by = {"", ""};
  ASSERT_TRUE(actors::PlanRing(Job(4, 4), 0, CountFree(cluster), &plan).ok());
  EXPECT_EQ(plan.devices, 4);
  EXPECT_EQ(Place(cluster, plan.devices), Concat(On("w1", {0, 1}), On("w2", {0, 1})));
}

TEST(Schedule, AJobThatMayShrinkRunsOnTheLargestValidRingOfTheFreeDevices) {
  const std::vector<WorkerDevices> cluster = {W("w1", 2), W("w2", 2, 1)};  // 3 free
  actors::RingPlan plan;
  ASSERT_TRUE(actors::PlanRing(Job(4, 2), 0, CountFree(cluster), &plan).ok());
  // 3 does not split seq_len 64 under zigzag (2 x 3 chunks): 2 does, on one worker.
  EXPECT_EQ(plan.devices, 2);
  EXPECT_EQ(plan.wanted, 4);
  EXPECT_EQ(plan.stage_devices, (std::vector<int64_t>{2}));
  EXPECT_EQ(Place(cluster, plan.devices), On("w1", {0, 1}));
  // A job whose steps are all done needs no ring.
  ASSERT_TRUE(actors::PlanRing(Job(4, 2), 3, CountFree(cluster), &plan).ok());
  EXPECT_EQ(plan.devices, 0);
}

}  // namespace
}  // namespace rw::scheduler
