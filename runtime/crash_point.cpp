#include "runtime/crash_point.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

namespace rw::runtime {
namespace {

const std::vector<CrashPointInfo> kCrashPoints = {
    // SaveCheckpoint, in order (runtime/checkpoint.cpp).
    {"checkpoint.tmp_created", "the temporary directory .tmp-step-N-PID exists, empty"},
    {"checkpoint.model_written", "model.safetensors written and fsynced in the temporary directory"},
    {"checkpoint.optimizer_written", "optimizer.safetensors written and fsynced"},
    {"checkpoint.config_written", "config.json and generation_config.json written and fsynced"},
    {"checkpoint.trainer_state_written", "trainer_state.json written and fsynced"},
    {"checkpoint.tokenizer_written", "tokenizer.model and tokenizer_config.json written and fsynced"},
    {"checkpoint.manifest_written", "MANIFEST (sizes and CRC32C of every file) written and fsynced"},
    {"checkpoint.tmp_synced", "the temporary directory's entries fsynced"},
    {"checkpoint.renamed",
     "the temporary directory renamed to step-N (or exchanged with an earlier one of that step), not yet fsynced"},
    {"checkpoint.parent_synced", "the rename durable: the checkpoint is committed"},
    {"checkpoint.retention_done", "checkpoints beyond checkpoint.keep and leftovers removed"},
    // A sharded checkpoint (WriteCheckpointShard on each writing rank, then CommitShardedCheckpoint on rank
    // 0, which goes on as SaveCheckpoint does from checkpoint.tmp_created, without model_written and
    // optimizer_written).
    {"sharded_checkpoint.shard_written", "a rank's shard file written and fsynced as .tmp-shard-N-... in checkpoint.dir"},
    {"sharded_checkpoint.shards_moved", "every shard file renamed into the temporary directory"},
    // The job table's synced RocksDB writes (scheduler/job_table.cpp).
    {"jobs.submit.before_write", "a submission checked, nothing written: it was never acknowledged"},
    {"jobs.submit.after_write", "the job and its first event synced, the client not yet answered"},
    {"jobs.transition.before_write", "a state change checked, nothing written"},
    {"jobs.transition.after_write", "the new state and its event synced, the caller not yet told"},
    {"jobs.update.before_write", "a record change (a checkpoint record with the job's checkpoint_step) unwritten"},
    {"jobs.update.after_write", "the record change and what came with it (the checkpoint record) synced"},
};

std::mutex mu;
std::map<std::string, long> reached;  // only for the point RINGWORLD_CRASH_AT names

}  // namespace

const std::vector<CrashPointInfo>& CrashPoints() { return kCrashPoints; }

void CrashPoint(const char* name) {
  bool declared = false;  // checked on every reach, so a test of the path finds an undeclared point
  for (const auto& p : kCrashPoints) declared = declared || std::strcmp(p.name, name) == 0;
  if (!declared) {
    std::fprintf(stderr, "ringworld: crash point %s is not declared in runtime/crash_point.cpp\n", name);
    std::abort();
  }
  const char* want = std::getenv("RINGWORLD_CRASH_AT");
  if (want == nullptr || *want == '\0') return;
  const char* colon = std::strchr(want, ':');
  const size_t len = colon ? size_t(colon - want) : std::strlen(want);
  if (std::strlen(name) != len || std::strncmp(want, name, len) != 0) return;
  const long nth = colon ? std::max(1L, std::strtol(colon + 1, nullptr, 10)) : 1;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (++reached[name] != nth) return;
  }
  std::fprintf(stderr, "ringworld: RINGWORLD_CRASH_AT=%s: killed at %s\n", want, name);
  std::fflush(stderr);
  ::raise(SIGKILL);
}

}  // namespace rw::runtime
