// The state store: one typed suite over the in-memory and the RocksDB implementation; RocksDB persists
// across reopen, refuses another cluster's or a newer schema's directory without changing it.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "storage/state_store.h"

namespace rw::storage {
namespace {

namespace fs = std::filesystem;

fs::path FreshDir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("rw_state_" + std::to_string(getpid()) + "_" + name);
  fs::remove_all(p);
  return p;
}

struct MemoryFactory {
  std::unique_ptr<StateStore> Make(const std::string&) { return MakeMemoryStore(); }
};
struct RocksFactory {
  std::unique_ptr<StateStore> Make(const std::string& name) {
    std::unique_ptr<StateStore> s;
    const auto st = OpenRocksStore(FreshDir(name).string(), "test-cluster", &s);
    EXPECT_TRUE(st.ok()) << st.message();
    return s;
  }
};

template <class F>
class StateStoreTest : public ::testing::Test {};
using Factories = ::testing::Types<MemoryFactory, RocksFactory>;
TYPED_TEST_SUITE(StateStoreTest, Factories);

TYPED_TEST(StateStoreTest, PutGetGetAllDeleteBehaveLikeAMapPerTable) {
  auto s = TypeParam().Make("crud");
  ASSERT_TRUE(s->Put(Table::kJobs, "job-2", "b").ok());
  ASSERT_TRUE(s->Put(Table::kJobs, "job-1", "a").ok());
  ASSERT_TRUE(s->Put(Table::kWorkers, "job-1", "not a job").ok());
  std::string v;
  bool found = false;
  ASSERT_TRUE(s->Get(Table::kJobs, "job-1", &v, &found).ok());
  EXPECT_TRUE(found);
  EXPECT_EQ(v, "a");
  std::vector<std::pair<std::string, std::string>> all;
  ASSERT_TRUE(s->GetAll(Table::kJobs, &all).ok());
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].first, "job-1");  // key order
  EXPECT_EQ(all[1].second, "b");
  ASSERT_TRUE(s->Delete(Table::kJobs, "job-1").ok());
  ASSERT_TRUE(s->Get(Table::kJobs, "job-1", &v, &found).ok());
  EXPECT_FALSE(found);
  ASSERT_TRUE(s->Get(Table::kWorkers, "job-1", &v, &found).ok());
  EXPECT_TRUE(found) << "tables are separate";
}

TYPED_TEST(StateStoreTest, ABatchAppliesAllItsChanges) {
  auto s = TypeParam().Make("batch");
  ASSERT_TRUE(s->Put(Table::kJobs, "j", "queued").ok());
  Batch b;
  b.Put(Table::kJobs, "j", "running");
  b.Put(Table::kJobEvents, "j/0001", "QUEUED->RUNNING");
  b.Delete(Table::kWorkers, "gone");
  ASSERT_TRUE(s->Write(b).ok());
  std::string v;
  bool found = false;
  ASSERT_TRUE(s->Get(Table::kJobs, "j", &v, &found).ok());
  EXPECT_EQ(v, "running");
  ASSERT_TRUE(s->Get(Table::kJobEvents, "j/0001", &v, &found).ok());
  EXPECT_TRUE(found);
}

TEST(RocksStateStore, ChangesSurviveReopeningAndOnlyTheOwningClusterMayOpen) {
  const auto dir = FreshDir("reopen");
  {
    std::unique_ptr<StateStore> s;
    ASSERT_TRUE(OpenRocksStore(dir.string(), "alpha", &s).ok());
    ASSERT_TRUE(s->Put(Table::kJobs, "job-7", "{\"state\": \"RUNNING\"}").ok());
  }
  {
    std::unique_ptr<StateStore> s;
    ASSERT_TRUE(OpenRocksStore(dir.string(), "alpha", &s).ok());
    std::string v;
    bool found = false;
    ASSERT_TRUE(s->Get(Table::kJobs, "job-7", &v, &found).ok());
    EXPECT_TRUE(found);
    EXPECT_EQ(v, "{\"state\": \"RUNNING\"}");
  }
  std::unique_ptr<StateStore> other;
  auto st = OpenRocksStore(dir.string(), "beta", &other);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("belongs to cluster 'alpha'"), std::string::npos) << st.message();
  st = OpenRocksStore(dir.string(), "alpha", &other, /*schema_version=*/0);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("newer than this daemon's 0"), std::string::npos) << st.message();
  // Refusals changed nothing: the owner still opens it and finds its data.
  std::unique_ptr<StateStore> s;
  ASSERT_TRUE(OpenRocksStore(dir.string(), "alpha", &s).ok());
  std::string v;
  bool found = false;
  ASSERT_TRUE(s->Get(Table::kMeta, "cluster_id", &v, &found).ok());
  EXPECT_EQ(v, "alpha");
  s.reset();
  fs::remove_all(dir);
}

// Every file of `dir` with the hash of its bytes: what "unchanged" means for a store that was refused
// (RocksDB's own diagnostic logs, LOG and LOG.old.*, aside: they are not state).
std::map<std::string, size_t> Contents(const fs::path& dir) {
  std::map<std::string, size_t> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (!e.is_regular_file() || name.rfind("LOG", 0) == 0) continue;
    std::ifstream f(e.path(), std::ios::binary);
    out[name] = std::hash<std::string>()(std::string(std::istreambuf_iterator<char>(f), {}));
  }
  return out;
}

// A bit flipped in the write-ahead log, in the middle of it or in its last record: the store refuses to open,
// naming the corruption and what to do, and changes no file; RocksDB's default (point-in-time recovery)
// opened silently without the records from the flip on: acknowledged jobs gone, a SUCCEEDED job rolled back.
TEST(RocksStateStore, ABitFlipInTheWriteAheadLogIsRefusedNotSilentlyDropped) {
  for (const double where : {0.5, 0.98}) {
    const auto dir = FreshDir("walflip");
    {
      std::unique_ptr<StateStore> s;
      ASSERT_TRUE(OpenRocksStore(dir.string(), "alpha", &s).ok());
      for (int i = 0; i < 40; ++i)
        ASSERT_TRUE(s->Put(Table::kJobs, "job-" + std::to_string(100 + i), std::string(200, char('a' + i % 26))).ok());
    }
    fs::path wal;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".log" && (wal.empty() || e.path() > wal)) wal = e.path();
    ASSERT_FALSE(wal.empty()) << "no write-ahead log in " << dir;
    const auto size = fs::file_size(wal);
    ASSERT_GT(size, 4000u) << "the records are not in the log";
    {
      std::fstream f(wal, std::ios::in | std::ios::out | std::ios::binary);
      const auto at = std::streamoff(double(size) * where);
      f.seekg(at);
      char c = 0;
      f.read(&c, 1);
      c ^= 0x10;
      f.seekp(at);
      f.write(&c, 1);
    }
    const auto before = Contents(dir);
    std::unique_ptr<StateStore> s;
    const Status st = OpenRocksStore(dir.string(), "alpha", &s);
    ASSERT_FALSE(st.ok()) << "opened with a corrupt log (flip at " << where << " of " << size << " bytes)";
    std::printf("  flip at %.0f%% of the log: %s\n", where * 100, st.message().c_str());
    EXPECT_NE(st.message().find("is corrupt"), std::string::npos) << st.message();
    EXPECT_NE(st.message().find(dir.string()), std::string::npos) << st.message();
    EXPECT_EQ(Contents(dir), before) << "a refused open changed the store";
    fs::remove_all(dir);
  }
}

// A log cut inside its last record (a crash while a change that was never acknowledged was written) still
// opens, with every earlier record.
TEST(RocksStateStore, ALogCutInsideItsLastRecordOpensWithTheEarlierRecords) {
  const auto dir = FreshDir("waltorn");
  {
    std::unique_ptr<StateStore> s;
    ASSERT_TRUE(OpenRocksStore(dir.string(), "alpha", &s).ok());
    for (int i = 0; i < 10; ++i) ASSERT_TRUE(s->Put(Table::kJobs, "job-" + std::to_string(100 + i), std::string(300, 'x')).ok());
  }
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".log" && fs::file_size(e.path()) > 3000) fs::resize_file(e.path(), fs::file_size(e.path()) - 100);
  std::unique_ptr<StateStore> s;
  const Status st = OpenRocksStore(dir.string(), "alpha", &s);
  ASSERT_TRUE(st.ok()) << st.message();
  std::vector<std::pair<std::string, std::string>> all;
  ASSERT_TRUE(s->GetAll(Table::kJobs, &all).ok());
  EXPECT_EQ(all.size(), 9u) << "the cut record is dropped, the nine before it kept";
  s.reset();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace rw::storage
