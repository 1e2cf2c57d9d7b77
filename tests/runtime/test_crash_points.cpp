// The checkpoint commit killed (SIGKILL, as kill -9) at each of its named crash points in turn, in a child
// process, for a whole checkpoint and for a sharded one (shard files, then the commit): what is left is the old checkpoint or the new one, never a mix; every step-* directory verifies
// and loads bit for bit as it was saved; the temporary directory is collected by the next save. Both a new
// step and a step that exists from an earlier run (exchanged atomically) are swept. Every declared
// checkpoint.* point must kill the child: a point the path no longer reaches fails the test.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <vector>

#include "runtime/checkpoint.h"
#include "runtime/crash_point.h"
#include "runtime/tokenizer.h"

namespace rw::runtime {
namespace {

namespace fs = std::filesystem;

struct Saved {
  std::vector<float> p, m, v;
};

Saved Make(const ParamTable& t, float base) {
  Saved s{std::vector<float>(t.total()), std::vector<float>(t.total()), std::vector<float>(t.total())};
  for (int64_t i = 0; i < t.total(); ++i) {
    s.p[i] = base + 0.001f * float(i % 1009);
    s.m[i] = base * 0.5f - 0.002f * float(i % 211);
    s.v[i] = base * 0.25f + 0.003f * float(i % 97);
  }
  return s;
}

// Which of `candidates` the checkpoint directory holds, bit for bit (-1: none).
int Matches(const std::string& path, const ParamTable& t, const std::vector<const Saved*>& candidates) {
  Saved got{std::vector<float>(t.total()), std::vector<float>(t.total()), std::vector<float>(t.total())};
  TrainerState st;
  if (!LoadCheckpoint(path, t, got.p.data(), got.m.data(), got.v.data(), &st).ok()) return -1;
  for (size_t k = 0; k < candidates.size(); ++k)
    if (got.p == candidates[k]->p && got.m == candidates[k]->m && got.v == candidates[k]->v) return int(k);
  return -1;
}

int Leftovers(const fs::path& dir) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir)) n += e.path().filename().string().rfind(".tmp-", 0) == 0;
  return n;
}

TEST(CrashPoints, ACheckpointKilledAtEachStepOfItsCommitIsTheOldOneOrTheNewOne) {
  ModelConfig c;
  c.vocab_size = 320;  // the SentencePiece fixture's, so the tokenizer files are written too
  c.hidden_size = 32, c.intermediate_size = 64, c.num_hidden_layers = 2, c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  const ParamTable t(c);
  std::unique_ptr<Tokenizer> tok;
  ASSERT_TRUE(MakeTokenizer(std::string(RW_FIXTURES) + "/spm_tiny/tiny.model", &tok).ok());
  SaveOptions opt{5};
  opt.tokenizer = tok.get();
  const Saved a = Make(t, 1.0f), b = Make(t, 2.0f), nw = Make(t, 3.0f);
  const fs::path root = fs::temp_directory_path() / ("rw_crash_" + std::to_string(getpid()));
  // Whole (SaveCheckpoint), or sharded 3 ways as three ranks of an fsdp ring write it (each its shard
  // file, then rank 0 commits them): the pieces cut tensors at uneven places.
  bool sharded = false;
  auto save = [&](const fs::path& dir, int64_t step, const Saved& s) -> Status {
    const TrainerState state{step, 0, step, 1, "crash"};
    if (!sharded) return SaveCheckpoint(dir.string(), c, t, s.p.data(), s.m.data(), s.v.data(), state, opt, nullptr);
    const size_t n = t.total(), cut[4] = {0, n / 3 + 7, 2 * n / 3 - 5, n};
    std::vector<ShardFile> files(3);
    for (int k = 0; k < 3; ++k) {
      // Shard k holds two pieces: [cut[k], mid) and [mid, cut[k+1]).
      const size_t mid = (cut[k] + cut[k + 1]) / 2;
      std::vector<ShardPiece> pieces = {
          {cut[k], mid - cut[k], s.p.data() + cut[k], s.m.data() + cut[k], s.v.data() + cut[k]},
          {mid, cut[k + 1] - mid, s.p.data() + mid, s.m.data() + mid, s.v.data() + mid}};
      RW_RETURN_IF_ERROR(WriteCheckpointShard(dir.string(), step, k, 3, n, pieces, &files[size_t(k)]));
    }
    return CommitShardedCheckpoint(dir.string(), c, files, state, opt, nullptr);
  };
  int exercised = 0;
  std::map<std::string, int> outcomes;  // "point, scenario" -> the resumed step's content
  for (const auto& point : CrashPoints())
  for (int layout = 0; layout < 2; ++layout) {
    const std::string name = point.name;
    sharded = layout == 1;
    const bool common = name.rfind("checkpoint.", 0) == 0 && name != "checkpoint.model_written" &&
                        name != "checkpoint.optimizer_written";
    if (sharded ? !(common || name.rfind("sharded_checkpoint.", 0) == 0) : name.rfind("checkpoint.", 0) != 0) continue;
    // Scenario 0: step-2 (a) exists, step 4 (nw) is being written. Scenario 1: step-2 (a) and step-4 (b)
    // exist, step 4 (nw) is written again (a run that resumed from step 2 reached it once more).
    for (int scenario = 0; scenario < 2; ++scenario) {
      const fs::path dir = root / (name + "." + std::to_string(scenario) + (sharded ? ".sharded" : ""));
      fs::remove_all(dir);
      ASSERT_TRUE(save(dir, 2, a).ok());
      if (scenario == 1) ASSERT_TRUE(save(dir, 4, b).ok());
      EXPECT_EXIT(
          {
            ::setenv("RINGWORLD_CRASH_AT", name.c_str(), 1);
            const Status st = save(dir, 4, nw);
            std::fprintf(stderr, "not killed: %s\n", st.ok() ? "saved" : st.message().c_str());
            std::_Exit(0);
          },
          ::testing::KilledBySignal(SIGKILL), "killed at " + name)
          << name << " was not reached";
      // Every step-* directory is whole, and the newest is the old checkpoint or the new one.
      for (const auto& [step, path] : ListCheckpoints(dir.string()))
        EXPECT_TRUE(VerifyCheckpoint(path).ok()) << name << ": " << path << " is not whole";
      int64_t step = 0;
      std::string path;
      const Status found = FindResumeCheckpoint(dir.string(), -1, &step, &path, nullptr);
      ASSERT_TRUE(found.ok()) << name << ": " << found.message();
      // 0: the old checkpoint (step 2 holding a, or step 4 holding b), 1: the new one (step 4 holding nw).
      int which = -1;
      if (scenario == 0 && step == 2) which = Matches(path, t, {&a}) == 0 ? 0 : -1;
      if (scenario == 0 && step == 4) which = Matches(path, t, {&nw}) == 0 ? 1 : -1;
      if (scenario == 1 && step == 4) which = Matches(path, t, {&b, &nw});
      EXPECT_GE(which, 0) << name << " scenario " << scenario << ": step " << step << " is neither old nor new";
      outcomes[name + (sharded ? " sharded" : "") + (scenario ? " (same step)" : "")] = which;
      // The checkpoint after it commits, and the leftovers go.
      ASSERT_TRUE(save(dir, 6, nw).ok());
      EXPECT_EQ(Leftovers(dir), 0) << name;
      ++exercised;
    }
  }
  std::printf("  %d crash points x scenarios exercised:\n", exercised);
  for (const auto& [k, which] : outcomes) std::printf("    %-45s -> %s\n", k.c_str(), which == 1 ? "new" : "old");
  // The commit point is the rename: before it the old checkpoint stands, from it the new one.
  EXPECT_EQ(outcomes["checkpoint.tmp_synced"], 0);
  EXPECT_EQ(outcomes["checkpoint.renamed"], 1);
  EXPECT_EQ(outcomes["checkpoint.renamed (same step)"], 1);
  EXPECT_EQ(outcomes["checkpoint.manifest_written (same step)"], 0);
  EXPECT_EQ(outcomes["checkpoint.tmp_synced sharded"], 0);
  EXPECT_EQ(outcomes["sharded_checkpoint.shards_moved sharded (same step)"], 0);
  EXPECT_EQ(outcomes["checkpoint.renamed sharded (same step)"], 1);
  EXPECT_EQ(exercised, 2 * 11 + 2 * 11);  // 11 points whole; 9 shared and 2 of its own sharded
  fs::remove_all(root);
}

TEST(CrashPoints, APointKillsOnlyWhenNamedAtItsNthReachAndAnUndeclaredOneAborts) {
  ::unsetenv("RINGWORLD_CRASH_AT");
  CrashPoint("checkpoint.renamed");  // not named: returns
  ::setenv("RINGWORLD_CRASH_AT", "checkpoint.renamed:2", 1);
  CrashPoint("checkpoint.renamed");  // the first reach of a point named for its second: returns
  CrashPoint("jobs.submit.after_write");
  EXPECT_EXIT(CrashPoint("checkpoint.renamed"), ::testing::KilledBySignal(SIGKILL), "killed at checkpoint.renamed");
  EXPECT_DEATH(CrashPoint("checkpoint.no_such_point"), "not declared");
  ::unsetenv("RINGWORLD_CRASH_AT");
}

}  // namespace
}  // namespace rw::runtime
