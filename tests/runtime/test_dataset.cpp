// Prepared datasets: records become documents (text with BOS/EOS, tokens verbatim, modality kept), bad
// records are named by file:line and change nothing on disk, packing covers every token once, training
// batches do not depend on the ring, and eval over rings of 1, 2, 4 gives the same loss.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "ring_harness.h"
#include <nlohmann/json.hpp>

#include "runtime/checkpoint.h"
#include "runtime/layout.h"
#include "runtime/safetensors.h"
#include "runtime/dataset.h"
#include "runtime/tokenizer.h"
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
  auto st = PrepareDataset({{a, b}, (t.p / "ds").string(), "bytes", 0, false}, &rep);
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

// A SentencePiece model (fixture made by tests/fixtures/make_spm_fixture.py with Python's sentencepiece):
// our tokenizer gives Python's ids, adds the model's BOS/EOS to documents, and data prepare records the
// model's vocabulary.
TEST(Dataset, SentencePieceTokenizerMatchesPythonsIds) {
  const std::string model = std::string(RW_FIXTURES) + "/spm_tiny/tiny.model";
  std::unique_ptr<Tokenizer> tok;
  ASSERT_TRUE(MakeTokenizer(model, &tok).ok());
  std::ifstream f(std::string(RW_FIXTURES) + "/spm_tiny/expected.json");
  const auto want = nlohmann::json::parse(f);
  EXPECT_EQ(tok->vocab_size(), want["vocab_size"].get<int64_t>());
  EXPECT_EQ(tok->bos(), want["bos"].get<int32_t>());
  EXPECT_EQ(tok->eos(), want["eos"].get<int32_t>());
  for (const auto& c : want["cases"]) {
    const std::string text = c["text"];
    const auto ids = tok->Encode(text);
    EXPECT_EQ(ids, c["ids"].get<std::vector<int32_t>>()) << text;
    EXPECT_EQ(tok->Decode(ids), text);
    const auto doc = tok->EncodeDocument(text);
    ASSERT_EQ(doc.size(), ids.size() + 2);
    EXPECT_EQ(doc.front(), tok->bos());
    EXPECT_EQ(doc.back(), tok->eos());
  }
  Tmp t;
  const auto in = t.File("s.jsonl", "{\"text\": \"ring attention of a million tokens\"}\n");
  ASSERT_TRUE(PrepareDataset({{in}, (t.p / "ds").string(), model, 0, false}, nullptr).ok());
  Dataset d;
  ASSERT_TRUE(Dataset::Open((t.p / "ds").string(), &d).ok());
  EXPECT_EQ(d.vocab_size(), 320);
  EXPECT_EQ(d.doc_len(0), int64_t(want["cases"][0]["ids"].size()) + 2);
  std::unique_ptr<Tokenizer> none;
  const auto st = MakeTokenizer((t.p / "nope.model").string(), &none);
  EXPECT_NE(st.message().find("--tokenizer: '"), std::string::npos) << st.message();
  const auto bad = MakeTokenizer(in, &none);
  EXPECT_NE(bad.message().find("is not a SentencePiece model"), std::string::npos) << bad.message();
}

// LWM vision records: the codes of each frame after the text vocabulary, wrapped as
// <vision> f0 <eof> f1 <eov> </vision>, marked vision; the caption before or after; bad codes are named.
TEST(Dataset, VisionRecordsAreWrappedAsInLWM) {
  Tmp t;
  const auto in = t.File("v.jsonl",
                         "{\"vision\": [[0, 5, 15], [7, 1]], \"text\": \"ab\"}\n"
                         "{\"vision\": [[3]], \"text\": \"c\", \"order\": \"text_vision\"}\n");
  ASSERT_TRUE(PrepareDataset({{in}, (t.p / "ds").string(), "bytes", 16, false}, nullptr).ok());
  Dataset d;
  ASSERT_TRUE(Dataset::Open((t.p / "ds").string(), &d).ok());
  const VisionVocab v = VisionVocab::Appended(ByteTokenizer::kVocab, 16);
  EXPECT_EQ(d.vocab_size(), ByteTokenizer::kVocab + 16 + 4);
  const int32_t begin = v.Begin().at(0), end = v.End().at(0);
  const std::vector<int32_t> want0 = {ByteTokenizer::kBos, begin, v.Code(0), v.Code(5), v.Code(15), v.eof(),
                                      v.Code(7), v.Code(1), v.eov(), end, 'a', 'b', ByteTokenizer::kEos};
  EXPECT_EQ(std::vector<int32_t>(d.doc_tokens(0), d.doc_tokens(0) + d.doc_len(0)), want0);
  EXPECT_EQ(std::vector<uint8_t>(d.doc_modality(0), d.doc_modality(0) + d.doc_len(0)),
            (std::vector<uint8_t>{0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0}));
  const std::vector<int32_t> want1 = {ByteTokenizer::kBos, 'c', begin, v.Code(3), v.eov(), end,
                                      ByteTokenizer::kEos};
  EXPECT_EQ(std::vector<int32_t>(d.doc_tokens(1), d.doc_tokens(1) + d.doc_len(1)), want1);
  struct Bad {
    const char* record;
    int64_t codes;
    const char* needle;
  };
  for (const Bad& b : {Bad{"{\"vision\": [[1, 16]]}", 16, "\"vision\"[0][1]: code 16 outside the codebook of 16"},
                       Bad{"{\"vision\": [[1]]}", 0, "\"vision\": needs --vision-codes"},
                       Bad{"{\"vision\": [[]]}", 16, "\"vision\"[0]: an empty frame"},
                       Bad{"{\"vision\": [[1]], \"order\": \"up\"}", 16, "\"order\": 'up'"},
                       Bad{"{\"vision\": [[1]], \"modality\": \"text\"}", 16, "\"modality\": a vision record"}}) {
    const auto f = t.File("bad.jsonl", std::string("{\"text\": \"ok\"}\n") + b.record + "\n");
    const std::string out = (t.p / "bad").string();
    const auto st = PrepareDataset({{f}, out, "bytes", b.codes, false}, nullptr);
    EXPECT_NE(st.message().find(std::string("bad.jsonl:2: ") + b.needle), std::string::npos) << st.message();
    EXPECT_FALSE(fs::exists(out)) << "a failed prepare left " << out;
  }
}

// LWM's layout (lwm/data.py): <vision> and </vision> are the tokenizer's text, marked text; each frame's
// codes and its end-of-frame (codes) / end-of-vision (codes + 1) marker are marked vision, in the second
// vocabulary that starts after the text ids. meta.json says so, and a model reads the dataset only with the
// text vocabulary exactly and a vision vocabulary of at least codes + 2.
TEST(Dataset, TheLwmLayoutWritesLwmsIdsAndTagsAsText) {
  Tmp t;
  const auto in = t.File("v.jsonl", "{\"vision\": [[0, 5, 15], [7, 1]], \"text\": \"ab\"}\n");
  PrepareOptions opt{{in}, (t.p / "ds").string(), "bytes", 16, false};
  opt.vision_layout = "lwm";
  ASSERT_TRUE(PrepareDataset(opt, nullptr).ok());
  Dataset d;
  ASSERT_TRUE(Dataset::Open((t.p / "ds").string(), &d).ok());
  EXPECT_EQ(d.vision_layout(), VisionLayout::kLwm);
  EXPECT_EQ(d.text_vocab_size(), ByteTokenizer::kVocab);
  EXPECT_EQ(d.vision_vocab_min(), 18);
  EXPECT_EQ(d.vocab_size(), ByteTokenizer::kVocab + 18);
  const int32_t V = ByteTokenizer::kVocab;
  std::vector<int32_t> want = {ByteTokenizer::kBos};
  std::vector<uint8_t> mod = {0};
  for (char ch : std::string("<vision>")) want.push_back(uint8_t(ch)), mod.push_back(0);
  for (int32_t id : {V + 0, V + 5, V + 15, V + 16, V + 7, V + 1, V + 17}) want.push_back(id), mod.push_back(1);
  for (char ch : std::string("</vision>")) want.push_back(uint8_t(ch)), mod.push_back(0);
  for (int32_t id : {int32_t('a'), int32_t('b'), ByteTokenizer::kEos}) want.push_back(id), mod.push_back(0);
  EXPECT_EQ(std::vector<int32_t>(d.doc_tokens(0), d.doc_tokens(0) + d.doc_len(0)), want);
  EXPECT_EQ(std::vector<uint8_t>(d.doc_modality(0), d.doc_modality(0) + d.doc_len(0)), mod);
  ModelConfig m;
  m.vocab_size = V;
  m.vision_vocab_size = 18;
  EXPECT_TRUE(CheckModelReads(d, m, "data.path").ok());
  for (const auto& [text, vision] : {std::pair<int64_t, int64_t>{V, 17}, {V + 18, 0}, {V + 1, 18}}) {
    m.vocab_size = text;
    m.vision_vocab_size = vision;
    const Status st = CheckModelReads(d, m, "data.path");
    EXPECT_NE(st.message().find("data.path: the dataset lays vision out as LWM does"), std::string::npos)
        << text << " " << vision << ": " << st.message();
  }
  // The appended layout's dataset is one vocabulary: a model's text vocabulary must hold it.
  PrepareOptions app{{in}, (t.p / "app").string(), "bytes", 16, false};
  ASSERT_TRUE(PrepareDataset(app, nullptr).ok());
  Dataset a;
  ASSERT_TRUE(Dataset::Open((t.p / "app").string(), &a).ok());
  m.vocab_size = V + 16 + 4;
  m.vision_vocab_size = 0;
  EXPECT_TRUE(CheckModelReads(a, m, "data.path").ok());
  m.vocab_size = V;
  m.vision_vocab_size = 8448;
  EXPECT_NE(CheckModelReads(a, m, "data.path").message().find("exceeds model.vocab_size"), std::string::npos);
  // Bad options name themselves and leave nothing.
  opt.output = (t.p / "bad").string();
  opt.vision_layout = "sideways";
  EXPECT_NE(PrepareDataset(opt, nullptr).message().find("--vision-layout: 'sideways' is not a vision layout"),
            std::string::npos);
  opt.vision_layout = "lwm";
  opt.vision_codes = 0;
  EXPECT_NE(PrepareDataset(opt, nullptr).message().find("--vision-layout: lwm lays out vision codes"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(t.p / "bad"));
}

TEST(Dataset, BadRecordsAreNamedByFileAndLineAndLeaveNothingBehind) {
  Tmp t;
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"{\"text\": 5}", "\"text\" must be a string"},
      {"not json", "not a JSON object"},
      {"{\"tokens\": [1, 999]}", "token 1 has id 999, outside the vocabulary of 259"},
      {"{\"tokens\": [1, -3]}", "token id -3 is not an id"},
      {"{\"tokens\": [1, 2], \"modality\": [\"text\"]}", "\"modality\" has 1 entries for 2 tokens"},
      {"{\"other\": 1}", "a record needs \"text\", \"tokens\" or \"vision\""},
      {"{\"text\": \"x\", \"modality\": \"audio\"}", "\"modality\" is not text or vision"},
  };
  for (const auto& [line, want] : bad) {
    const auto f = t.File("bad.jsonl", "{\"text\": \"fine\"}\n" + line + "\n");
    const auto out = (t.p / "out").string();
    auto st = PrepareDataset({{f}, out, "bytes", 0, false}, nullptr);
    ASSERT_FALSE(st.ok()) << line;
    EXPECT_NE(st.message().find("bad.jsonl:2: " + want), std::string::npos) << st.message();
    EXPECT_FALSE(fs::exists(out)) << "a failed prepare must leave no output";
    PrepareReport rep;
    ASSERT_TRUE(PrepareDataset({{f}, out, "bytes", 0, true}, &rep).ok());
    EXPECT_EQ(rep.skipped, 1);
    EXPECT_EQ(rep.documents, 1);
    fs::remove_all(out);
  }
  auto st = PrepareDataset({{(t.p / "missing.jsonl").string()}, (t.p / "o").string(), "bytes", 0, false}, nullptr);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("missing.jsonl"), std::string::npos);
}

// A dataset whose every token id is unique (its offset in the dataset, plus 1), so that a target names the
// position it came from: documents of the given lengths, pre-tokenized, with --vocab-size.
std::string UniqueIdDataset(const Tmp& t, const std::vector<int64_t>& lengths, const std::string& name) {
  std::string lines;
  int64_t id = 1;
  for (int64_t n : lengths) {
    lines += "{\"tokens\": [";
    for (int64_t i = 0; i < n; ++i) lines += (i ? "," : "") + std::to_string(id++);
    lines += "]}\n";
  }
  const std::string dir = (t.p / name).string();
  PrepareOptions opt{{t.File(name + ".jsonl", lines)}, dir, "", 0, false, id};  // tokenizer: none
  EXPECT_TRUE(PrepareDataset(opt, nullptr).ok());
  return dir;
}

// Counts, over the sequences, how often each id is a target (weight 1), and checks each position: its input
// is the token before its target in the same document (ids are offsets), its segment and position follow
// the window it is in, and no window is longer than the sequence.
void CountTargets(const std::vector<PackedSequence>& seqs, int64_t seq_len, std::vector<int>& seen) {
  for (const auto& s : seqs) {
    ASSERT_EQ(int64_t(s.tokens.size()), seq_len);
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      if (s.segments[i] < 0) {
        EXPECT_EQ(s.weights[i], 0.f);
        EXPECT_EQ(s.targets[i], -1);
        continue;
      }
      EXPECT_EQ(s.weights[i], 1.f) << "every position of a window has a target";
      ASSERT_GT(s.targets[i], 0);
      ASSERT_LT(size_t(s.targets[i]), seen.size());
      ++seen[size_t(s.targets[i])];
      EXPECT_EQ(s.tokens[i], s.targets[i] - 1) << "a target is the next token of the same document";
      const bool first = i == 0 || s.segments[i - 1] != s.segments[i];
      EXPECT_EQ(s.positions[i], first ? 0 : s.positions[i - 1] + 1);
    }
  }
}

// Eval packing, for every document length mod L (and L itself small and large): terminates (it once looped
// forever on a one-token last piece), and every (input, target) pair of the dataset is scored exactly once.
// A prepared dataset whose files were damaged or forged is refused at open with the file and the field,
// before any token is read: an offset past the end (it used to SIGBUS), offsets that go down (they
// silently changed the token count), a first offset not 0, token ids outside the vocabulary, a modality
// byte that is neither text nor vision, negative or float counts in meta.json.
TEST(Dataset, DamagedIndexTokensAndMetaAreRefusedAtOpen) {
  Tmp t;
  const auto f = t.File("d.jsonl", "{\"text\": \"abcdef\"}\n{\"text\": \"ghij\"}\n{\"text\": \"klmnopq\"}\n");
  const std::string good = (t.p / "good").string();
  ASSERT_TRUE(PrepareDataset({{f}, good, "bytes", 0, false}, nullptr).ok());
  Dataset ok;
  ASSERT_TRUE(Dataset::Open(good, &ok).ok());
  ASSERT_EQ(ok.documents(), 3);
  auto read = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const std::string index = read(fs::path(good) / "index.bin");
  auto with_offset = [&](int k, uint64_t v) {
    std::string s = index;
    std::memcpy(s.data() + 8 * k, &v, 8);
    return s;
  };
  int32_t big_id = 1 << 20;
  std::string tokens = read(fs::path(good) / "tokens.bin");
  std::string bad_tokens = tokens;
  std::memcpy(bad_tokens.data() + 4 * 5, &big_id, 4);
  std::string bad_modality = read(fs::path(good) / "modality.bin");
  bad_modality[3] = 7;
  std::string meta = read(fs::path(good) / "meta.json");
  const auto docs = meta.find("\"documents\":");
  ASSERT_NE(docs, std::string::npos) << meta;
  std::string bad_meta = meta;
  bad_meta.insert(meta.find_first_of("0123456789", docs), "-");
  // A float count (1e30 as a document count was undefined behaviour in the conversion; found by fuzz_dataset).
  std::string float_meta = meta;
  const size_t digits = meta.find_first_of("0123456789", docs);
  float_meta.replace(digits, meta.find_first_not_of("0123456789", digits) - digits, "1e30");
  struct Case {
    const char* what;
    const char* file;
    std::string bytes;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {"an offset far past the end", "index.bin", with_offset(1, uint64_t(1) << 40), "index.bin: offset 1 is"},
      {"offsets that go down", "index.bin", with_offset(2, 1), "index.bin: offset 2 is 1 after"},
      {"a first offset not 0", "index.bin", with_offset(0, 2), "index.bin: the first offset is 2"},
      {"a token id past the vocabulary", "tokens.bin", bad_tokens, "tokens.bin: token 5 has id 1048576"},
      {"a modality byte of 7", "modality.bin", bad_modality, "modality.bin: token 3 has modality 7"},
      {"a negative document count", "meta.json", bad_meta, "meta.json: documents: must be within [0, "},
      {"a document count of 1e30", "meta.json", float_meta, "meta.json: documents: expected an integer, got 1e+30"},
  };
  for (const auto& c : cases) {
    const fs::path dir = t.p / "bad";
    fs::remove_all(dir);
    fs::copy(good, dir);
    std::ofstream(dir / c.file, std::ios::binary | std::ios::trunc) << c.bytes;
    Dataset d;
    const Status st = Dataset::Open(dir.string(), &d);
    ASSERT_FALSE(st.ok()) << c.what;
    std::printf("  %-32s %s\n", c.what, st.message().c_str());
    EXPECT_NE(st.message().find(c.needle), std::string::npos) << c.what << ": " << st.message();
  }
}

TEST(Dataset, PackAllScoresEveryPairOnceForEveryLengthModL) {
  Tmp t;
  std::vector<int64_t> lengths;
  for (int64_t n = 2; n <= 3 * 16 + 3; ++n) lengths.push_back(n);
  const std::string dir = UniqueIdDataset(t, lengths, "mod");
  Dataset d;
  ASSERT_TRUE(Dataset::Open(dir, &d).ok());
  for (int64_t L : {1, 2, 3, 5, 7, 16, 17, 48, 49, 50, 64}) {
    const auto seqs = d.PackAll(L);
    std::vector<int> seen(size_t(d.tokens()) + 1, 0);
    CountTargets(seqs, L, seen);
    int64_t first_of_doc = 1, wrong = 0;
    for (size_t k = 0; k < lengths.size(); ++k) {
      for (int64_t j = 0; j < lengths[k]; ++j) wrong += seen[size_t(first_of_doc + j)] != (j == 0 ? 0 : 1);
      first_of_doc += lengths[k];
    }
    EXPECT_EQ(wrong, 0) << "L = " << L << ": targets not scored exactly once";
    std::printf("  L=%lld: %zu sequences, %lld pairs, each once\n", (long long)L, seqs.size(),
                (long long)(d.tokens() - d.documents()));
  }
}

// Training reads windows in shuffled epochs: one epoch over long books and short documents trains each
// token position exactly once (counted by id), whole books included; the next epoch is another order.
TEST(Dataset, OneEpochOfShuffledWindowsTrainsEveryTokenPositionOnce) {
  Tmp t;
  const int64_t L = 16;
  const std::vector<int64_t> lengths = {10 * L + 5, 3, L + 1, 2, L, 7 * L + 1, L + 2, 5, 2 * L + 1, 11, 40 * L};
  const std::string dir = UniqueIdDataset(t, lengths, "books");
  Dataset d;
  ASSERT_TRUE(Dataset::Open(dir, &d).ok());
  const WindowIndex w(d, L);
  int64_t pairs = 0;
  for (int64_t n : lengths) pairs += n - 1;
  int64_t in_windows = 0;
  for (int64_t i = 0; i < w.size(); ++i) in_windows += w[i].inputs;
  EXPECT_EQ(in_windows, pairs);
  // Sequence by sequence (batch 1) over the stream, counting only the windows of epoch 0.
  DataCursor c{7, 0, 0};
  std::vector<int> seen(size_t(d.tokens()) + 1, 0);
  int64_t sequences = 0;
  while (c.next < w.size()) {
    const int64_t before = c.next;
    auto seq = NextBatch(w, 1, &c);
    ++sequences;
    // Positions of the windows read past the epoch's end do not count.
    int64_t keep = 0;
    for (int64_t k = before; k < std::min(c.next, w.size()); ++k) keep += w[ShuffledWindow(w, 7, 0, k)].inputs;
    for (size_t i = size_t(keep); i < seq[0].tokens.size(); ++i) seq[0].segments[i] = -1, seq[0].weights[i] = 0, seq[0].targets[i] = -1;
    CountTargets(seq, L, seen);
  }
  int64_t first_of_doc = 1, wrong = 0;
  for (int64_t n : lengths) {
    for (int64_t j = 0; j < n; ++j) wrong += seen[size_t(first_of_doc + j)] != (j == 0 ? 0 : 1);
    first_of_doc += n;
  }
  EXPECT_EQ(wrong, 0) << "token positions not trained exactly once in the epoch";
  std::printf("  %lld windows of L=%lld from %zu documents (books of %lld and %lld tokens): %lld sequences, %lld pairs each once\n",
              (long long)w.size(), (long long)L, lengths.size(), (long long)(40 * L), (long long)(10 * L + 5),
              (long long)sequences, (long long)pairs);
  // Each epoch is a permutation of the windows; epochs, stages and seeds give other orders.
  auto order = [&](uint64_t seed, int64_t stage, int64_t epoch) {
    std::vector<int64_t> o;
    for (int64_t k = 0; k < w.size(); ++k) o.push_back(ShuffledWindow(w, seed, stage, epoch * w.size() + k));
    return o;
  };
  const auto e0 = order(7, 0, 0);
  auto sorted = e0;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t k = 0; k < w.size(); ++k) ASSERT_EQ(sorted[size_t(k)], k);
  EXPECT_NE(order(7, 0, 1), e0);
  EXPECT_NE(order(7, 1, 0), e0);
  EXPECT_NE(order(8, 0, 0), e0);
}

// A checkpoint that did not record the loader's cursor finds it by replaying its stage: SkipBatches
// advances exactly as NextBatch does.
TEST(Dataset, SkippingBatchesAdvancesTheCursorAsReadingThem) {
  Tmp t;
  const std::string dir = UniqueIdDataset(t, {70, 3, 9, 33, 2, 17, 5, 64, 11, 4, 40}, "skip");
  Dataset d;
  ASSERT_TRUE(Dataset::Open(dir, &d).ok());
  const WindowIndex w(d, 16);
  for (int64_t batch : {1, 3}) {
    DataCursor read{5, 1, 0}, skipped{5, 1, 0};
    for (int k = 0; k < 9; ++k) NextBatch(w, batch, &read);
    SkipBatches(w, batch, 9, &skipped);
    EXPECT_EQ(skipped.next, read.next) << "batch " << batch;
    EXPECT_GT(read.next, 9 * batch) << "some sequences pack more than one window";
    EXPECT_EQ(NextBatch(w, batch, &skipped)[0].tokens, NextBatch(w, batch, &read)[0].tokens);
  }
}

// A mesh's data group reads its share of the batch: sequences [first, last) of NextBatch equal those of the
// whole batch (tokens, targets, weights, positions, segments), and the cursor moves as for the whole batch.
TEST(Dataset, AShareOfABatchEqualsThoseSequencesOfTheWhole) {
  Tmp t;
  const std::string dir = UniqueIdDataset(t, {70, 3, 9, 33, 2, 17, 5, 64, 11, 4, 40}, "share");
  Dataset d;
  ASSERT_TRUE(Dataset::Open(dir, &d).ok());
  const WindowIndex w(d, 16);
  const int64_t batch = 5;
  for (const auto& [first, last] : {std::pair<int64_t, int64_t>{0, 2}, {2, 5}, {1, 4}, {4, 5}, {3, 3}}) {
    DataCursor whole_c{9, 0, 0}, share_c{9, 0, 0};
    for (int k = 0; k < 4; ++k) {  // through an epoch's end (11 documents, 19 windows of 16)
      const auto whole = NextBatch(w, batch, &whole_c);
      const auto share = NextBatch(w, batch, &share_c, nullptr, first, last);
      ASSERT_EQ(int64_t(share.size()), last - first);
      for (int64_t b = first; b < last; ++b) {
        const auto& a = whole[size_t(b)];
        const auto& s2 = share[size_t(b - first)];
        EXPECT_EQ(a.tokens, s2.tokens) << "batch " << k << " sequence " << b;
        EXPECT_EQ(a.targets, s2.targets);
        EXPECT_EQ(a.weights, s2.weights);
        EXPECT_EQ(a.positions, s2.positions);
        EXPECT_EQ(a.segments, s2.segments);
      }
      EXPECT_EQ(share_c.next, whole_c.next) << "[" << first << ", " << last << ") batch " << k;
    }
  }
}

// The keyed permutation is one for every size (cycle walking at sizes that are not powers of 4).
TEST(Dataset, ShuffledWindowsArePermutationsAtEverySize) {
  Tmp t;
  for (int64_t docs : {1, 2, 3, 4, 5, 15, 16, 17, 63, 64, 65, 200}) {
    const std::string dir = UniqueIdDataset(t, std::vector<int64_t>(size_t(docs), 3), "p" + std::to_string(docs));
    Dataset d;
    ASSERT_TRUE(Dataset::Open(dir, &d).ok());
    const WindowIndex w(d, 4);
    ASSERT_EQ(w.size(), docs);
    std::vector<int> hit(size_t(docs), 0);
    for (int64_t k = 0; k < docs; ++k) ++hit[size_t(ShuffledWindow(w, 3, 0, 5 * docs + k))];
    for (int64_t k = 0; k < docs; ++k) EXPECT_EQ(hit[size_t(k)], 1) << docs << " windows, window " << k;
  }
}

TEST(Dataset, EvalOverRingsOfOneTwoFourGivesTheSameLoss) {
  Tmp t;
  std::string lines;
  for (int i = 0; i < 20; ++i) lines += "{\"text\": \"the quick brown fox " + std::to_string(i) + "\"}\n";
  ASSERT_TRUE(PrepareDataset({{t.File("e.jsonl", lines)}, (t.p / "ds").string(), "bytes", 0, false}, nullptr).ok());
  ModelConfig c;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  const ParamTable tb(c);
  const std::vector<float> p = test::ScaledInit(c, 4, 1.f);
  ASSERT_TRUE(SaveCheckpoint((t.p / "ck").string(), c, tb, p.data(), nullptr, nullptr, TrainerState{1, 0, 1, 1, "e"},
                             SaveOptions{1}, nullptr).ok());
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

namespace rw::runtime {
namespace {

TEST(LossWeighting, PerModalityIsHalfTheTextMeanPlusHalfTheVisionMean) {
  // One sequence, two documents: text targets and vision targets in known places.
  PackedSequence s;
  const int L = 16;
  for (int i = 0; i < L; ++i) {
    s.tokens.push_back((i * 7) % 50);
    s.segments.push_back(i < 9 ? 0 : 1);
    s.positions.push_back(i < 9 ? i : i - 9);
    const bool has = i != 8 && i != L - 1;
    s.targets.push_back(has ? (i * 7 + 7) % 50 : -1);
    s.weights.push_back(has ? 1.f : 0.f);
    s.modality.push_back(i >= 4 && i < 8 ? 1 : (i >= 12 ? 1 : 0));
  }
  ModelConfig c;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  const ParamTable tb(c);
  const std::vector<float> p = test::ScaledInit(c, 6, 1.f);
  auto loss_with = [&](const std::vector<float>& w) {
    PackedSequence q = s;
    q.weights = w;
    Layout lay;
    EXPECT_TRUE(Layout::Make(LayoutKind::kZigzag, L, 2, &lay).ok());
    std::vector<double> part(2, 0.0);
    auto fabric = InprocFabric::Create(2);
    auto st = test::RunRanks(fabric, [&](int r, Transport& t) {
      return Forward(t, c, tb, ModelExec{}, p.data(), ShardOf(q, lay, r), &part[r]);
    });
    for (auto& x : st) EXPECT_TRUE(x.ok()) << x.message();
    return part[0] + part[1];
  };
  std::vector<float> text(L, 0.f), vision(L, 0.f);
  double nt = 0, nv = 0;
  for (int i = 0; i < L; ++i)
    if (s.weights[i] > 0) (s.modality[i] ? vision[i] : text[i]) = 1.f, (s.modality[i] ? nv : nt) += 1;
  const double by_hand = 0.5 * loss_with(text) / nt + 0.5 * loss_with(vision) / nv;
  std::vector<PackedSequence> batch = {s};
  double scale = 0;
  LossConfig lc;
  lc.weighting = "per_modality";
  ASSERT_TRUE(ApplyLossWeighting(lc, batch, &scale).ok());
  const double weighted = loss_with(batch[0].weights) * scale;
  std::printf("  text tokens %.0f, vision tokens %.0f: by hand %.9f, per_modality %.9f\n", nt, nv, by_hand, weighted);
  EXPECT_NEAR(weighted, by_hand, 1e-6 * by_hand);
  // per_token is the plain mean.
  batch = {s};
  lc.weighting = "per_token";
  ASSERT_TRUE(ApplyLossWeighting(lc, batch, &scale).ok());
  EXPECT_DOUBLE_EQ(scale, 1.0 / (nt + nv));
}

TEST(InitFrom, ShardedHuggingFaceWeightsLoadAndMismatchesAreNamed) {
  Tmp t;
  ModelConfig c;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  const ParamTable tb(c);
  const std::vector<float> p = test::ScaledInit(c, 8, 1.f);
  // Two shards and an index, as transformers writes them.
  std::vector<TensorRef> a, b;
  nlohmann::json index;
  for (size_t i = 0; i < tb.tensors().size(); ++i) {
    const auto& x = tb.tensors()[i];
    (i % 2 ? b : a).push_back({x.name, x.shape, p.data() + x.offset});
    index["weight_map"][x.name] = i % 2 ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
  }
  ASSERT_TRUE(WriteSafetensors((t.p / "model-00001-of-00002.safetensors").string(), a).ok());
  ASSERT_TRUE(WriteSafetensors((t.p / "model-00002-of-00002.safetensors").string(), b).ok());
  std::ofstream(t.p / "model.safetensors.index.json") << index.dump();
  std::vector<float> q(tb.total(), 0.f);
  auto st = LoadWeights(t.p.string(), tb, q.data());
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(q, p);
}

}  // namespace
}  // namespace rw::runtime

namespace rw::runtime {
namespace {

// The tokenizers a needle document is made in: bytes, the needle config's SentencePiece model (every word
// of the task one piece, digits split), and the fixture model (trained on other words: cities in pieces).
std::vector<std::unique_ptr<Tokenizer>> NeedleTokenizers() {
  std::vector<std::unique_ptr<Tokenizer>> out;
  for (const std::string spec : {std::string("bytes"), std::string(RW_CONFIGS) + "/needle-tokenizer.model",
                                 std::string(RW_FIXTURES) + "/spm_tiny/tiny.model"}) {
    std::unique_ptr<Tokenizer> tok;
    const Status st = MakeTokenizer(spec, &tok);
    EXPECT_TRUE(st.ok()) << st.message();
    if (tok) out.push_back(std::move(tok));
  }
  return out;
}

DataConfig NeedleData(const Tokenizer& tok, int64_t min_len, int64_t max_len, double answer_weight) {
  DataConfig d;
  d.task = "needle";
  d.tokenizer = tok.name();
  d.min_len = min_len;
  d.max_len = max_len;
  d.answer_weight = answer_weight;
  return d;
}

bool Contains(const std::vector<int32_t>& hay, const std::vector<int32_t>& needle, size_t* at = nullptr) {
  const auto it = std::search(hay.begin(), hay.end(), needle.begin(), needle.end());
  if (at) *at = size_t(it - hay.begin());
  return it != hay.end();
}

TEST(Needle, DocumentsHaveTheRequestedLengthDepthAndAnswer) {
  for (const auto& tok : NeedleTokenizers()) {
    for (int64_t length : {200, 1000, 4000})
      for (double depth : {0.0, 0.5, 1.0}) {
        const NeedleDocument n = MakeNeedle(*tok, uint64_t(length) * 7 + uint64_t(depth * 10), length, depth);
        EXPECT_EQ(int64_t(n.prompt.size() + n.answer.size()), length) << tok->name() << ": BOS + prompt + answer";
        EXPECT_EQ(n.prompt.front(), tok->bos());
        ASSERT_EQ(n.digits.size(), 7u);
        for (char ch : n.digits) EXPECT_TRUE(ch >= '0' && ch <= '9');
        EXPECT_EQ(tok->Decode(n.answer), n.digits) << tok->name();
        // The answer's tokens are those the needle has after its ":", and the question's last token is the
        // needle's token before them: retrieval is a copy of what follows the same cue.
        size_t needle = 0, question = 0;
        const auto marker = tok->Encode("The special magic");
        ASSERT_TRUE(Contains(n.prompt, marker, &needle)) << tok->name();
        const auto q = tok->Encode("What is the special magic");
        ASSERT_TRUE(Contains(n.prompt, q, &question)) << tok->name();
        size_t answer_at = 0;
        ASSERT_TRUE(Contains(std::vector<int32_t>(n.prompt.begin() + needle, n.prompt.begin() + question), n.answer,
                             &answer_at))
            << tok->name() << ": the needle holds the answer";
        EXPECT_EQ(n.prompt[needle + answer_at - 1], n.prompt.back()) << tok->name() << ": the cue before the answer";
        // Depth: the share of the haystack before the needle.
        const size_t needle_len = tok->Encode("The special magic Chicago number is: 1234567. ").size();
        const double hay = double(question) - double(tok->bos() >= 0) - double(needle_len);
        EXPECT_NEAR(double(needle) - double(tok->bos() >= 0), depth * hay, 0.02 * hay + 4)
            << tok->name() << " length " << length << " depth " << depth;
      }
    const NeedleDocument e = MakeNeedle(*tok, 1, 120, 0.5);
    std::printf("  %s: %zu + %zu tokens, e.g. ...%s\n", tok->name().c_str(), e.prompt.size(), e.answer.size(),
                tok->Decode(e.prompt).substr(0, 160).c_str());
  }
}

// data.answer_weight puts its weight on exactly the targets that are the answer's tokens of each whole
// needle document of the batch (they follow the question's last token), in every tokenizer.
TEST(Needle, AnswerWeightLandsOnTheAnswer) {
  for (const auto& tok : NeedleTokenizers()) {
    const DataConfig d = NeedleData(*tok, 80, 200, 5);
    ASSERT_TRUE(d.Validate().ok());
    const auto batch = GlobalBatch(d, *tok, 3, 7, 1024, 2);
    const int32_t cue = tok->Encode("number is: ").back();
    const size_t answer_len = tok->Encode("1234567").size();
    int answers = 0;
    for (const auto& p : batch) {
      ASSERT_EQ(p.tokens.size(), 1024u);
      std::vector<size_t> per_doc(p.tokens.size(), 0);
      int32_t docs = 0;
      for (size_t i = 0; i < p.weights.size(); ++i) {
        docs = std::max(docs, p.segments[i] + 1);
        if (p.weights[i] != 5.f) {
          EXPECT_TRUE(p.weights[i] == 1.f || p.weights[i] == 0.f);
          continue;
        }
        ++answers;
        ++per_doc[size_t(p.segments[i])];
        if (i > 0 && p.weights[i - 1] != 5.f) EXPECT_EQ(p.tokens[i], cue) << tok->name() << " position " << i;
      }
      // Whole answers in every document the sequence holds whole (the last may be cut by its end).
      for (int32_t k = 0; k + 1 < docs; ++k) EXPECT_EQ(per_doc[size_t(k)], answer_len) << tok->name() << " doc " << k;
    }
    EXPECT_GT(answers, 0);
    std::printf("  %s: %d answer targets of %zu tokens each in 2 x 1024\n", tok->name().c_str(), answers, answer_len);
  }
  DataConfig d;
  d.task = "needle";
  d.answer_weight = 0;
  EXPECT_NE(d.Validate().message().find("data.answer_weight"), std::string::npos);
  d.answer_weight = 1;
  d.tokenizer = "/no/such.model";
  EXPECT_NE(d.Validate().message().find("data.tokenizer"), std::string::npos);
}

// A data group's share of a synthetic batch (sequences [first, last)) is those sequences of the whole batch,
// element for element: a mesh's groups make only theirs.
TEST(Needle, AShareOfTheBatchIsThoseSequencesOfTheWholeBatch) {
  std::unique_ptr<Tokenizer> tok;
  ASSERT_TRUE(MakeTokenizer(std::string(RW_CONFIGS) + "/needle-tokenizer.model", &tok).ok());
  const DataConfig d = NeedleData(*tok, 60, 4000, 3);
  const auto whole = GlobalBatch(d, *tok, 5, 3, 256, 5);
  for (const auto& [first, last] : std::vector<std::pair<int64_t, int64_t>>{{0, 5}, {1, 3}, {4, 5}, {2, 2}}) {
    const auto part = GlobalBatch(d, *tok, 5, 3, 256, 5, nullptr, first, last);
    ASSERT_EQ(int64_t(part.size()), last - first);
    for (int64_t b = first; b < last; ++b) {
      EXPECT_EQ(part[size_t(b - first)].tokens, whole[size_t(b)].tokens) << "sequence " << b;
      EXPECT_EQ(part[size_t(b - first)].weights, whole[size_t(b)].weights) << "sequence " << b;
      EXPECT_EQ(part[size_t(b - first)].segments, whole[size_t(b)].segments) << "sequence " << b;
    }
  }
}

// A needle document is never longer than its sequence: lengths are capped at seq_len, so the first document
// of every sequence is whole (answer included); only the last may be cut by the sequence's end.
TEST(Needle, DocumentsFitTheirSequence) {
  std::unique_ptr<Tokenizer> tok;
  ASSERT_TRUE(MakeTokenizer(std::string(RW_CONFIGS) + "/needle-tokenizer.model", &tok).ok());
  const DataConfig d = NeedleData(*tok, 60, 4000, 3);
  for (int64_t step = 1; step <= 4; ++step)
    for (const auto& p : GlobalBatch(d, *tok, 5, step, 256, 4)) {
      std::vector<int> answer_targets(p.tokens.size(), 0);  // by document
      int docs = 0;
      for (size_t i = 0; i < p.tokens.size(); ++i) {
        if (p.segments[i] < 0) continue;
        docs = std::max(docs, p.segments[i] + 1);
        answer_targets[size_t(p.segments[i])] += p.weights[i] == 3.f;
      }
      EXPECT_EQ(answer_targets[0], int(tok->Encode("1234567").size())) << "step " << step;
      for (int k = 0; k + 1 < docs; ++k) EXPECT_GT(answer_targets[size_t(k)], 0) << "step " << step << " doc " << k;
    }
}

// Each rank builds only its rows of the global batch (issue 11, point 6): for synthetic copy and needle
// data (answer weight 0.3, not a dyadic fraction) and a prepared dataset of text and vision documents, at
// rings of 1 to 5 under every layout, a rank's rows are exactly the whole sequence's rows at its indices,
// and the loss weights made from the ranks' weight sums (added in rank order, as after the all-gather) are
// bitwise those of the whole batch: per_token and per_modality.
TEST(Batch, EachRankBuildsOnlyItsRowsAndTheirLossWeightsAreTheWholeBatchs) {
  Tmp t;
  std::string jsonl;
  for (int k = 0; k < 40; ++k) {
    std::string ids;
    for (int j = 0; j < 5 + (k * 7) % 31; ++j) ids += (j ? ", " : "") + std::to_string((k * 13 + j * 5) % 250 + 1);
    jsonl += "{\"tokens\": [" + ids + "], \"modality\": \"" + (k % 3 == 1 ? "vision" : "text") + "\"}\n";
    if (k % 4 == 0) jsonl += "{\"text\": \"document " + std::to_string(k) + " of the batch test\"}\n";
  }
  PrepareReport rep;
  ASSERT_TRUE(PrepareDataset({{t.File("b.jsonl", jsonl)}, (t.p / "ds").string(), "bytes", 0, false}, &rep).ok());
  Dataset ds;
  ASSERT_TRUE(Dataset::Open((t.p / "ds").string(), &ds).ok());
  std::unique_ptr<Tokenizer> bytes;
  ASSERT_TRUE(MakeTokenizer("bytes", &bytes).ok());
  const int64_t L = 240, B = 3;
  const WindowIndex windows(ds, L);
  DataConfig copy;
  DataConfig needle = NeedleData(*bytes, 150, 220, 0.3);
  struct Source {
    const char* name;
    std::function<std::vector<PackedSequence>(const std::vector<int64_t>*)> make;
  };
  const std::vector<Source> sources = {
      {"copy", [&](const std::vector<int64_t>* keep) { return GlobalBatch(copy, *bytes, 11, 5, L, B, keep); }},
      {"needle", [&](const std::vector<int64_t>* keep) { return GlobalBatch(needle, *bytes, 11, 5, L, B, keep); }},
      {"files", [&](const std::vector<int64_t>* keep) {
         DataCursor c{3, 0, 17};
         return NextBatch(windows, B, &c, keep);
       }},
  };
  int cases = 0;
  for (const auto& src : sources) {
    const std::vector<PackedSequence> whole = src.make(nullptr);
    double whole_sums[2];
    WeightSums(whole, whole_sums);
    EXPECT_GT(whole_sums[0], 0) << src.name;
    if (std::string(src.name) == "files") EXPECT_GT(whole_sums[1], 0) << "the dataset's vision targets";
    if (std::string(src.name) == "needle") {
      int64_t answers = 0;
      for (const auto& p : whole) answers += std::count(p.weights.begin(), p.weights.end(), 0.3f);
      EXPECT_GT(answers, 0) << "no answer target weighs 0.3";
    }
    for (const char* weighting : {"per_token", "per_modality"}) {
      LossConfig lc;
      lc.weighting = weighting;
      std::vector<PackedSequence> whole_w = whole;
      double whole_scale = 0;
      ASSERT_TRUE(ApplyLossWeighting(lc, whole_w, &whole_scale).ok());
      for (LayoutKind kind : {LayoutKind::kContiguous, LayoutKind::kZigzag, LayoutKind::kStriped})
        for (int R : {1, 2, 3, 4, 5}) {
          Layout lay;
          ASSERT_TRUE(Layout::Make(kind, L, R, &lay).ok());
          std::vector<std::vector<PackedSequence>> ranks(R);
          std::vector<double> gathered;
          for (int r = 0; r < R; ++r) {
            const std::vector<int64_t> mine = lay.GlobalIndices(r);
            ranks[r] = src.make(&mine);
            double sums[2];
            WeightSums(ranks[r], sums);
            gathered.insert(gathered.end(), sums, sums + 2);
          }
          double global[2] = {0, 0};
          for (int r = 0; r < R; ++r) global[0] += gathered[2 * r], global[1] += gathered[2 * r + 1];
          ASSERT_EQ(global[0], whole_sums[0]) << src.name << " R " << R;
          ASSERT_EQ(global[1], whole_sums[1]) << src.name << " R " << R;
          for (int r = 0; r < R; ++r) {
            double scale = 0;
            ASSERT_TRUE(ApplyLossWeighting(lc, global, ranks[r], &scale).ok());
            ASSERT_EQ(scale, whole_scale);
            for (int64_t b = 0; b < B; ++b) {
              const RankBatch want = ShardOf(whole_w[b], lay, r);
              const RankBatch got = std::move(ranks[r][b]).Rows();
              ASSERT_EQ(got.index, want.index) << src.name << " R " << R << " rank " << r;
              ASSERT_EQ(got.tokens, want.tokens) << src.name << " R " << R << " rank " << r << " seq " << b;
              ASSERT_EQ(got.targets, want.targets) << src.name << " R " << R << " rank " << r;
              ASSERT_EQ(got.positions, want.positions) << src.name << " R " << R << " rank " << r;
              ASSERT_EQ(got.segments, want.segments) << src.name << " R " << R << " rank " << r;
              ASSERT_EQ(got.weights, want.weights) << src.name << " " << weighting << " R " << R << " rank " << r;
            }
          }
          ++cases;
        }
    }
  }
  std::printf("  %d cases (3 sources x 2 weightings x layouts x rings of 1-5): rows and loss weights equal the whole batch's\n",
              cases);
  EXPECT_GE(cases, 60);
}

// The all-gather the loss weighting rides on: every rank gets every rank's block, in rank order.
TEST(Batch, AllGatherGivesEveryRankEveryBlockInRankOrder) {
  for (int R : {1, 2, 3, 5}) {
    std::vector<std::vector<double>> got(R);
    auto st = RunRanks(InprocFabric::Create(R), [&](int r, Transport& tr) {
      const double mine[2] = {r + 0.25, -1.0 * r * r};
      got[r].resize(2 * size_t(R));
      return tr.AllGather(mine, sizeof(mine), got[r].data(), MsgTag{1, 0, 1, 7, 0});
    });
    for (int r = 0; r < R; ++r) {
      ASSERT_TRUE(st[r].ok()) << st[r].message();
      for (int q = 0; q < R; ++q) {
        EXPECT_EQ(got[r][2 * q], q + 0.25) << "R " << R << " rank " << r << " block " << q;
        EXPECT_EQ(got[r][2 * q + 1], -1.0 * q * q);
      }
    }
  }
}

}  // namespace
}  // namespace rw::runtime
