// Prepared datasets: records become documents (text with BOS/EOS, tokens verbatim, modality kept), bad
// records are named by file:line and change nothing on disk, packing covers every token once, training
// batches do not depend on the ring, and eval over rings of 1, 2, 4 gives the same loss.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "ring_harness.h"
#include "runtime/checkpoint.h"
#include "runtime/dataset.h"
#include "runtime/trainer.h"

namespace rw::runtime {
namespace {

namespace fs = std::filesystem;
using test::RunRanks;

struct Tmp {
  fs::path p;
  Tmp() : p(fs::temp_directory_path() / ("rw_ds_" + std::to_string(getpid()) + "_" + std::to_string(rand()))) {
    fs::create_directories(p);
  }
  ~Tmp() { fs::remove_all(p); }
  std::string File(const std::string& name, const std::string& text) const {
    std::ofstream(p / name) << text;
    return (p / name).string();
  }
};

TEST(Dataset, RecordsBecomeDocumentsWithModality) {
  Tmp t;
  const auto a = t.File("a.jsonl",
                        "{\"text\": \"hi\"}\n\n{\"tokens\": [5, 6, 7], \"modality\": \"vision\"}\n"
                        "{\"text\": \"ab\", \"modality\": [\"text\", \"vision\", \"vision\", \"text\"]}\n");
  const auto b = t.File("b.txt", "xyz");
  PrepareReport rep;
  auto st = PrepareDataset({{a, b}, (t.p / "ds").string(), "bytes", false}, &rep);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(rep.documents, 4);
  Dataset d;
  ASSERT_TRUE(Dataset::Open((t.p / "ds").string(), &d).ok());
  ASSERT_EQ(d.documents(), 4);
  EXPECT_EQ(d.doc_len(0), 4);  // BOS h i EOS
  EXPECT_EQ(d.doc_tokens(0)[0], ByteTokenizer::kBos);
  EXPECT_EQ(d.doc_tokens(0)[1], int32_t('h'));
  EXPECT_EQ(std::vector<int32_t>(d.doc_tokens(1), d.doc_tokens(1) + 3), (std::vector<int32_t>{5, 6, 7}));
  EXPECT_EQ(d.doc_modality(1)[2], 1);
  EXPECT_EQ(std::vector<uint8_t>(d.doc_modality(2), d.doc_modality(2) + 4), (std::vector<uint8_t>{0, 1, 1, 0}));
  EXPECT_EQ(d.doc_len(3), 5);
}

TEST(Dataset, BadRecordsAreNamedByFileAndLineAndLeaveNothingBehind) {
  Tmp t;
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"{\"text\": 5}", "\"text\" must be a string"},
      {"not json", "not a JSON object"},
      {"{\"tokens\": [1, 999]}", "token id 999 is outside the vocabulary"},
      {"{\"tokens\": [1, 2], \"modality\": [\"text\"]}", "\"modality\" has 1 entries for 2 tokens"},
      {"{\"other\": 1}", "a record needs \"text\" or \"tokens\""},
      {"{\"text\": \"x\", \"modality\": \"audio\"}", "\"modality\" is not text or vision"},
  };
  for (const auto& [line, want] : bad) {
    const auto f = t.File("bad.jsonl", "{\"text\": \"fine\"}\n" + line + "\n");
    const auto out = (t.p / "out").string();
    auto st = PrepareDataset({{f}, out, "bytes", false}, nullptr);
    ASSERT_FALSE(st.ok()) << line;
    EXPECT_NE(st.message().find("bad.jsonl:2: " + want), std::string::npos) << st.message();
    EXPECT_FALSE(fs::exists(out)) << "a failed prepare must leave no output";
    PrepareReport rep;
    ASSERT_TRUE(PrepareDataset({{f}, out, "bytes", true}, &rep).ok());
    EXPECT_EQ(rep.skipped, 1);
    EXPECT_EQ(rep.documents, 1);
    fs::remove_all(out);
  }
  auto st = PrepareDataset({{(t.p / "missing.jsonl").string()}, (t.p / "o").string(), "bytes", false}, nullptr);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("missing.jsonl"), std::string::npos);
}

TEST(Dataset, PackAllCoversEveryTokenOnceAndNoTargetCrossesADocument) {
  Tmp t;
  std::string lines;
  for (int i = 0; i < 30; ++i) lines += "{\"text\": \"" + std::string(size_t(3 + (i * 7) % 40), char('a' + i % 26)) + "\"}\n";
  ASSERT_TRUE(PrepareDataset({{t.File("x.jsonl", lines)}, (t.p / "ds").string(), "bytes", false}, nullptr).ok());
  Dataset d;
  ASSERT_TRUE(Dataset::Open((t.p / "ds").string(), &d).ok());
  const auto seqs = d.PackAll(32);
  int64_t real = 0, targets = 0;
  for (const auto& s : seqs)
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      if (s.segments[i] >= 0) ++real;
      if (s.targets[i] >= 0) {
        ++targets;
        ASSERT_LT(i + 1, s.tokens.size());
        EXPECT_EQ(s.segments[i + 1], s.segments[i]) << "target crosses a document boundary";
        EXPECT_EQ(s.targets[i], s.tokens[i + 1]);
      }
    }
  EXPECT_EQ(real, d.tokens());
  std::printf("  %lld tokens in %zu sequences of 32, %lld predicted\n", (long long)real, seqs.size(), (long long)targets);
}

TEST(Dataset, EvalOverRingsOfOneTwoFourGivesTheSameLoss) {
  Tmp t;
  std::string lines;
  for (int i = 0; i < 20; ++i) lines += "{\"text\": \"the quick brown fox " + std::to_string(i) + "\"}\n";
  ASSERT_TRUE(PrepareDataset({{t.File("e.jsonl", lines)}, (t.p / "ds").string(), "bytes", false}, nullptr).ok());
  ModelConfig c;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  const ParamTable tb(c);
  std::vector<float> p(tb.total());
  InitParameters(c, tb, 4, p.data());
  ASSERT_TRUE(SaveCheckpoint((t.p / "ck").string(), c, tb, p.data(), nullptr, nullptr, TrainerState{1, 0, 1, 1, "e"},
                             1, nullptr).ok());
  std::vector<double> losses;
  for (int R : {1, 2, 4}) {
    auto fabric = InprocFabric::Create(R);
    std::vector<EvalResult> res(R);
    auto st = RunRanks(fabric, [&](int r, Transport& tr) {
      return EvalRank(tr, (t.p / "ck" / "step-1").string(), (t.p / "ds").string(), 64, "zigzag", 1, &res[r]);
    });
    for (auto& s : st) ASSERT_TRUE(s.ok()) << s.message();
    std::printf("  R=%d loss %.7f perplexity %.4f over %lld tokens\n", R, res[0].loss, res[0].perplexity,
                (long long)res[0].tokens);
    losses.push_back(res[0].loss);
    EXPECT_GT(res[0].tokens, 0);
  }
  EXPECT_NEAR(losses[1], losses[0], 1e-5 * losses[0]);
  EXPECT_NEAR(losses[2], losses[0], 1e-5 * losses[0]);
  EXPECT_NEAR(losses[0], std::log(259.0), 0.2);  // an untrained model is close to uniform
}

}  // namespace
}  // namespace rw::runtime
