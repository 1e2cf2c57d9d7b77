// The daemon's checkpoint records choose the checkpoint a job's next ring resumes from: a newer one that
// fails verification loses its record (an event, a metric) when an older one verifies; when every recorded
// checkpoint fails, ResumeStep is an error and every record stays (the daemon fails the job, "cannot resume",
// instead of a ring from step 0 overwriting the run). Real RocksDB, real checkpoints with bytes flipped.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <vector>

#include "runtime/checkpoint.h"
#include "scheduler/checkpoint_records.h"

namespace rw::scheduler {
namespace {

namespace fs = std::filesystem;

void FlipByte(const fs::path& p, int64_t at) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(at);
  char c = 0;
  f.get(c);
  f.seekp(at);
  f.put(char(c ^ 0x10));
}

std::vector<std::string> Records(storage::StateStore* store) {
  std::vector<std::pair<std::string, std::string>> rows;
  EXPECT_TRUE(store->GetAll(storage::Table::kCheckpoints, &rows).ok());
  std::vector<std::string> keys;
  for (const auto& r : rows) keys.push_back(r.first);
  return keys;
}

TEST(CheckpointRecords, ACorruptNewestFallsBackAndAllCorruptIsAnErrorThatKeepsTheRecords) {
  const fs::path root = fs::temp_directory_path() / ("rw_ckrec_" + std::to_string(getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  std::unique_ptr<storage::StateStore> store;
  const Status opened = storage::OpenRocksStore((root / "state").string(), "c1", &store);
  ASSERT_TRUE(opened.ok()) << opened.message();
  std::unique_ptr<JobTable> jobs;
  ASSERT_TRUE(JobTable::Open(store.get(), &jobs).ok());
  JobRecord job;
  ASSERT_TRUE(jobs->Submit("tiny", "name: tiny", 0, "", &job).ok());
  DaemonMetrics metrics;
  JobLog log((root / "logs").string(), jobs.get());
  CheckpointRecords records(store.get(), jobs.get(), &metrics, &log);

  runtime::ModelConfig c;
  c.vocab_size = 64, c.hidden_size = 16, c.intermediate_size = 32, c.num_hidden_layers = 1;
  c.num_attention_heads = 2, c.num_key_value_heads = 1;
  const runtime::ParamTable t(c);
  std::vector<float> p(t.total());
  const std::string dir = (root / "ck").string();
  for (int64_t step : {2, 4, 6}) {
    for (size_t i = 0; i < p.size(); ++i) p[i] = 0.01f * float(i % 97) - 0.3f + float(step);
    runtime::CheckpointInfo info;
    int64_t bytes = 0;
    ASSERT_TRUE(runtime::SaveCheckpoint(dir, c, t, p.data(), nullptr, nullptr,
                                        runtime::TrainerState{step, 0, step, 1, "c"}, runtime::SaveOptions{5},
                                        &info.path, &bytes)
                    .ok());
    info.step = step;
    info.bytes = bytes;
    records.Record(job.id, info);
  }
  ASSERT_EQ(Records(store.get()).size(), 3u);
  int64_t step = -1;
  std::string path;
  ASSERT_TRUE(records.ResumeStep(job.id, &step, &path).ok());
  EXPECT_EQ(step, 6);

  // The newest two corrupt: the job resumes from step 2, and their records go with an event and a metric.
  FlipByte(fs::path(dir) / "step-6" / "model.safetensors", 1000);
  FlipByte(fs::path(dir) / "step-4" / "model.safetensors", 1500);
  Status st = records.ResumeStep(job.id, &step, &path);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(step, 2);
  EXPECT_EQ(path, (fs::path(dir) / "step-2").string());
  EXPECT_EQ(Records(store.get()), std::vector<std::string>{CheckpointRecords::Key(job.id, 2)});
  EXPECT_NE(metrics.Serialize().find("ringworld_checkpoint_fallbacks_total{job_id=\"" + job.id + "\"} 2"),
            std::string::npos)
      << metrics.Serialize();
  bool noted = false;
  std::vector<JobEvent> events;
  ASSERT_TRUE(jobs->Events(job.id, &events).ok());
  for (const auto& e : events)
    noted = noted || e.message.find("checkpoint of step 6 is unusable") != std::string::npos;
  EXPECT_TRUE(noted);

  // Every recorded checkpoint corrupt: an error naming the file, and the record stays for a repair.
  FlipByte(fs::path(dir) / "step-2" / "model.safetensors", 2000);
  st = records.ResumeStep(job.id, &step, &path);
  ASSERT_FALSE(st.ok());
  std::printf("  %s\n", st.message().c_str());
  EXPECT_NE(st.message().find("every checkpoint of the run (1, newest step 2) fails verification"),
            std::string::npos)
      << st.message();
  EXPECT_NE(st.message().find("step-2/model.safetensors: CRC32C mismatch"), std::string::npos) << st.message();
  EXPECT_EQ(Records(store.get()), std::vector<std::string>{CheckpointRecords::Key(job.id, 2)});
  EXPECT_TRUE(fs::exists(fs::path(dir) / "step-2"));

  // Repaired, it resumes.
  FlipByte(fs::path(dir) / "step-2" / "model.safetensors", 2000);
  ASSERT_TRUE(records.ResumeStep(job.id, &step, &path).ok());
  EXPECT_EQ(step, 2);
  store.reset();
  fs::remove_all(root);
}

}  // namespace
}  // namespace rw::scheduler
