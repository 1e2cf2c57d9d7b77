// The daemon's worker registry: the workers known from the state store, heartbeats and lost workers, and
// which job holds which device (placement itself is placement.h's). Every function named ...Locked runs
// under mu_; store writes of worker rows wait until it is released (PersistWorkers).
#include <cstdio>

#include "scheduler/daemon_impl.h"

namespace rw::scheduler {

using json = nlohmann::json;
using storage::Table;

Status DaemonImpl::LoadKnownWorkers() {
  std::vector<std::pair<std::string, std::string>> rows;
  RW_RETURN_IF_ERROR(store_->GetAll(Table::kWorkers, &rows));
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, value] : rows) {  // listed as lost until they register again
    Worker w;
    w.id = id;
    try {
      const auto j = json::parse(value);
      w.name = j.value("name", id);
      w.host = j.value("host", "");
      w.memory = j.value("memory", std::vector<int64_t>{});
    } catch (const std::exception&) {
    }
    w.lost_reason = "daemon restarted; not registered since";
    workers_[id] = std::move(w);
  }
  // After a restart, give the known workers a heartbeat period to register again before placing jobs, so
  // rings are not formed small only to grow a moment later.
  if (!rows.empty())
    settle_until_ = Clock::now() + std::chrono::milliseconds(int64_t(opt_.worker_timeout_s * 1000));
  return Status::Ok();
}

void DaemonImpl::CheckHeartbeats() {
  std::vector<std::pair<std::string, std::string>> rows;
  {
    std::lock_guard<std::mutex> lock(mu_);
    int alive = 0, lost = 0;
    const auto now = Clock::now();
    for (auto& [id, w] : workers_) {
      if (w.alive && now - w.last_seen > std::chrono::duration<double>(opt_.worker_timeout_s)) {
        char why[96];
        std::snprintf(why, sizeof(why), "no heartbeat for %.1f s", opt_.worker_timeout_s);
        rows.push_back({id, MarkLostLocked(w, why)});
        metrics_.HeartbeatMissed(id);
      }
      (w.alive ? alive : lost)++;
    }
    metrics_.WorkersByState(alive, lost);
  }
  PersistWorkers(rows);
}

std::string DaemonImpl::MarkLostLocked(Worker& w, const std::string& why) {
  if (!w.alive) return "";
  w.alive = false;
  w.lost_reason = why;
  std::fprintf(stderr, "ringworld daemon: worker %s lost: %s\n", w.id.c_str(), why.c_str());
  Wake();
  return WorkerJson(w).dump();
}

// The rows are what a restarted daemon lists until the worker registers again (its name, host and
// devices; the state it reads as lost): two writes of one worker landing out of order lose nothing.
void DaemonImpl::PersistWorkers(const std::vector<std::pair<std::string, std::string>>& rows) {
  for (const auto& [id, row] : rows) {
    if (row.empty()) continue;
    const Status st = store_->Put(Table::kWorkers, id, row);
    if (!st.ok()) std::fprintf(stderr, "ringworld daemon: worker %s: %s\n", id.c_str(), st.message().c_str());
  }
}

std::vector<WorkerDevices> DaemonImpl::DevicesLocked() const {
  std::vector<WorkerDevices> out;
  out.reserve(workers_.size());
  for (const auto& [id, w] : workers_) out.push_back({id, w.alive && !w.draining, w.used_by});
  return out;
}

int DaemonImpl::FreeLocked(const std::string& job) const { return CountFree(DevicesLocked(), job); }

Status DaemonImpl::PlaceLocked(const std::string& job, int devices, std::vector<Slot>* slots) {
  RW_RETURN_IF_ERROR(PlaceRing(DevicesLocked(), devices, slots));
  for (const auto& s : *slots) workers_.at(s.worker).used_by.at(s.index) = job;
  return Status::Ok();
}

void DaemonImpl::ReleaseLocked(const std::string& job) {
  for (auto& [id, w] : workers_)
    for (auto& u : w.used_by)
      if (u == job) u.clear();
}

json DaemonImpl::WorkerJson(const Worker& w) const {
  int used = 0;
  for (const auto& u : w.used_by) used += !u.empty();
  return json{{"id", w.id},         {"name", w.name},   {"host", w.host},       {"kind", w.kind},
              {"devices", int(w.memory.size())},       {"used", used},         {"memory", w.memory},
              {"state", w.alive ? (w.draining ? "draining" : "alive") : "lost"},
              {"lost_reason", w.lost_reason},          {"pid", w.pid}};
}

}  // namespace rw::scheduler
