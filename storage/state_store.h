// The daemon's state behind a small interface (after Ray's GCS StoreClient): a few tables of key -> value,
// each change written with sync before it returns, so a caller may acknowledge once it has returned.
// Two implementations run through one typed test suite: in memory (tests, embedded runs) and RocksDB
// (one column family per table). The RocksDB store belongs to one cluster and one schema version: opening
// another cluster's directory, or one written by a newer schema, is refused and changes nothing.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/status.h"

namespace rw::storage {

using ::rw::Status;

enum class Table { kMeta, kJobs, kJobEvents, kWorkers, kCheckpoints };
const char* TableName(Table t);

// Changes applied together or not at all.
struct Batch {
  struct Op {
    Table table;
    std::string key;
    std::string value;
    bool erase = false;
  };
  std::vector<Op> ops;
  void Put(Table t, std::string k, std::string v) { ops.push_back({t, std::move(k), std::move(v), false}); }
  void Delete(Table t, std::string k) { ops.push_back({t, std::move(k), {}, true}); }
};

class StateStore {
 public:
  virtual ~StateStore() = default;
  virtual Status Put(Table t, const std::string& key, const std::string& value) = 0;
  // *found says whether the key exists; value is left alone when it does not.
  virtual Status Get(Table t, const std::string& key, std::string* value, bool* found) = 0;
  // Every (key, value) of the table in key order.
  virtual Status GetAll(Table t, std::vector<std::pair<std::string, std::string>>* out) = 0;
  virtual Status Delete(Table t, const std::string& key) = 0;
  virtual Status Write(const Batch& batch) = 0;
};

std::unique_ptr<StateStore> MakeMemoryStore();

constexpr int kSchemaVersion = 1;

// Opens (creating when empty) the RocksDB store in `dir` for `cluster_id`.
Status OpenRocksStore(const std::string& dir, const std::string& cluster_id, std::unique_ptr<StateStore>* out,
                      int schema_version = kSchemaVersion);

}  // namespace rw::storage
