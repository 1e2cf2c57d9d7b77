#include "storage/state_store.h"

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include <map>
#include <mutex>

namespace rw::storage {

const char* TableName(Table t) {
  switch (t) {
    case Table::kMeta: return "meta";
    case Table::kJobs: return "jobs";
    case Table::kJobEvents: return "job_events";
    case Table::kWorkers: return "workers";
    case Table::kCheckpoints: return "checkpoints";
  }
  return "unknown";
}

namespace {

constexpr Table kTables[] = {Table::kMeta, Table::kJobs, Table::kJobEvents, Table::kWorkers, Table::kCheckpoints};

class MemoryStore final : public StateStore {
 public:
  Status Put(Table t, const std::string& k, const std::string& v) override {
    std::lock_guard<std::mutex> lock(mu_);
    tables_[int(t)][k] = v;
    return Status::Ok();
  }
  Status Get(Table t, const std::string& k, std::string* v, bool* found) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto& tab = tables_[int(t)];
    auto it = tab.find(k);
    *found = it != tab.end();
    if (*found) *v = it->second;
    return Status::Ok();
  }
  Status GetAll(Table t, std::vector<std::pair<std::string, std::string>>* out) override {
    std::lock_guard<std::mutex> lock(mu_);
    out->assign(tables_[int(t)].begin(), tables_[int(t)].end());
    return Status::Ok();
  }
  Status Delete(Table t, const std::string& k) override {
    std::lock_guard<std::mutex> lock(mu_);
    tables_[int(t)].erase(k);
    return Status::Ok();
  }
  Status Write(const Batch& b) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& op : b.ops) {
      if (op.erase)
        tables_[int(op.table)].erase(op.key);
      else
        tables_[int(op.table)][op.key] = op.value;
    }
    return Status::Ok();
  }

 private:
  std::mutex mu_;
  std::map<std::string, std::string> tables_[5];
};

Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return Status::Ok();
  return Status::Error("state store: " + what + ": " + s.ToString());
}

class RocksStore final : public StateStore {
 public:
  RocksStore(rocksdb::DB* db, std::vector<rocksdb::ColumnFamilyHandle*> handles) : db_(db), cf_(std::move(handles)) {
    sync_.sync = true;  // every change is on disk before the call returns
  }
  ~RocksStore() override {
    for (auto* h : cf_) db_->DestroyColumnFamilyHandle(h);
    delete db_;
  }
  Status Put(Table t, const std::string& k, const std::string& v) override {
    return FromRocks(db_->Put(sync_, cf_[int(t)], k, v), std::string("put ") + TableName(t) + "/" + k);
  }
  Status Get(Table t, const std::string& k, std::string* v, bool* found) override {
    std::string tmp;
    const auto s = db_->Get(rocksdb::ReadOptions(), cf_[int(t)], k, &tmp);
    *found = s.ok();
    if (s.IsNotFound()) return Status::Ok();
    if (s.ok()) *v = std::move(tmp);
    return FromRocks(s, std::string("get ") + TableName(t) + "/" + k);
  }
  Status GetAll(Table t, std::vector<std::pair<std::string, std::string>>* out) override {
    out->clear();
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf_[int(t)]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) out->emplace_back(it->key().ToString(), it->value().ToString());
    return FromRocks(it->status(), std::string("scan ") + TableName(t));
  }
  Status Delete(Table t, const std::string& k) override {
    return FromRocks(db_->Delete(sync_, cf_[int(t)], k), std::string("delete ") + TableName(t) + "/" + k);
  }
  Status Write(const Batch& b) override {
    rocksdb::WriteBatch wb;
    for (const auto& op : b.ops) {
      if (op.erase)
        wb.Delete(cf_[int(op.table)], op.key);
      else
        wb.Put(cf_[int(op.table)], op.key, op.value);
    }
    return FromRocks(db_->Write(sync_, &wb), "write batch");
  }

 private:
  rocksdb::DB* db_;
  std::vector<rocksdb::ColumnFamilyHandle*> cf_;
  rocksdb::WriteOptions sync_;
};

}  // namespace

std::unique_ptr<StateStore> MakeMemoryStore() { return std::make_unique<MemoryStore>(); }

Status OpenRocksStore(const std::string& dir, const std::string& cluster_id, std::unique_ptr<StateStore>* out,
                      int schema_version) {
  RW_REQUIRE(!cluster_id.empty(), "cluster_id: must not be empty");
  rocksdb::Options opt;
  opt.create_if_missing = true;
  opt.create_missing_column_families = true;
  // Every change is synced before it is acknowledged, so a record in the log that fails its checksum is
  // damage, not a crash mid-write: refuse to open (RocksDB's default, point-in-time recovery, would drop it
  // and everything after it in silence). Only an incomplete last record, one never acknowledged, is dropped.
  opt.wal_recovery_mode = rocksdb::WALRecoveryMode::kTolerateCorruptedTailRecords;
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {{rocksdb::kDefaultColumnFamilyName, {}}};
  for (Table t : kTables) cfs.push_back({TableName(t), {}});
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  const rocksdb::Status opened = rocksdb::DB::Open(opt, dir, cfs, &handles, &db);
  RW_REQUIRE(!opened.IsCorruption(), "state store: " << dir << " is corrupt (" << opened.ToString()
                                         << "): refusing to start rather than lose acknowledged changes; restore it "
                                            "from a backup, or move it aside to start empty");
  RW_RETURN_IF_ERROR(FromRocks(opened, "open " + dir));
  db->DestroyColumnFamilyHandle(handles[0]);  // the default family is unused
  handles.erase(handles.begin());
  auto store = std::make_unique<RocksStore>(db, handles);
  // Whose store is this, and which schema wrote it? A new store is stamped; a foreign one is refused.
  std::string stamped, version;
  bool has_id = false, has_version = false;
  RW_RETURN_IF_ERROR(store->Get(Table::kMeta, "cluster_id", &stamped, &has_id));
  RW_RETURN_IF_ERROR(store->Get(Table::kMeta, "schema_version", &version, &has_version));
  if (!has_id) {
    Batch b;
    b.Put(Table::kMeta, "cluster_id", cluster_id);
    b.Put(Table::kMeta, "schema_version", std::to_string(schema_version));
    RW_RETURN_IF_ERROR(store->Write(b));
  } else {
    RW_REQUIRE(stamped == cluster_id, "--state: " << dir << " belongs to cluster '" << stamped << "', not '"
                                                 << cluster_id << "'");
    const int v = has_version ? std::atoi(version.c_str()) : 0;
    RW_REQUIRE(v <= schema_version, "--state: " << dir << " was written by schema version " << v
                                               << ", newer than this daemon's " << schema_version);
  }
  *out = std::move(store);
  return Status::Ok();
}

}  // namespace rw::storage
