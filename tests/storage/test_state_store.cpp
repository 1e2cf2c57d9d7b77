// The state store: one typed suite over the in-memory and the RocksDB implementation; RocksDB persists
// across reopen, refuses another cluster's or a newer schema's directory without changing it.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

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

}  // namespace
}  // namespace rw::storage
