#include "runtime/data.h"

#include <algorithm>
#include <cmath>
#include <fstream>

#include "runtime/rng.h"

namespace rw::runtime {
namespace {


// A counter-based stream: document j of sequence i of step k is the same wherever it is made.
struct Stream {
  uint64_t state;
  uint64_t Next() { return state = Mix(state); }
  int64_t Uniform(int64_t lo, int64_t hi) { return lo + int64_t(Next() % uint64_t(hi - lo + 1)); }
};

std::vector<int32_t> CopyDocument(const DataConfig& d, const Tokenizer& tok, Stream& s) {
  const int64_t n = s.Uniform(d.min_len, d.max_len);
  std::string text;
  for (int64_t i = 0; i < n; ++i) text += char('a' + s.Uniform(0, 25));
  return tok.EncodeDocument(text + "|" + text);
}

const char* const kCities[] = {"Chicago", "Yangon", "Antananarivo", "Colombo", "Almaty", "Sydney", "Lima",
                               "Mumbai", "Cairo", "Oslo", "Quito", "Dakar", "Hanoi", "Tbilisi", "Lagos", "Porto"};
const char* const kFiller[] = {"The grass is green. ", "The sky is blue. ", "The sun is yellow. ", "Here we go. ",
                               "There and back again. "};

}  // namespace

NeedleDocument MakeNeedle(const Tokenizer& tok, uint64_t seed, int64_t length, double depth) {
  Stream s{Mix(seed)};
  const std::string city = kCities[s.Uniform(0, 15)];
  NeedleDocument d;
  for (int i = 0; i < 7; ++i) d.digits += char('0' + s.Uniform(0, 9));
  // Each piece is encoded on its own; a SentencePiece model drops the trailing spaces and puts its
  // word-start mark on the next piece, so the concatenation is how the whole text would encode.
  const std::vector<int32_t> needle = tok.Encode("The special magic " + city + " number is: " + d.digits + ". ");
  const std::vector<int32_t> question =
      tok.Encode("What is the special magic " + city + " number? The special magic " + city + " number is: ");
  d.answer = tok.Encode(d.digits);
  const int64_t fixed = int64_t(tok.bos() >= 0) + int64_t(needle.size() + question.size() + d.answer.size());
  const int64_t room = std::max<int64_t>(0, length - fixed);
  std::vector<int32_t> filler[5];  // each sentence encoded once, not once per use
  for (int i = 0; i < 5; ++i) filler[i] = tok.Encode(kFiller[i]);
  std::vector<int32_t> hay;
  while (int64_t(hay.size()) < room) {
    const std::vector<int32_t>& sentence = filler[s.Uniform(0, 4)];
    hay.insert(hay.end(), sentence.begin(), sentence.end());
  }
  hay.resize(size_t(room));
  const auto at = hay.begin() + std::ptrdiff_t(std::clamp(depth, 0.0, 1.0) * double(hay.size()));
  if (tok.bos() >= 0) d.prompt.push_back(tok.bos());
  d.prompt.insert(d.prompt.end(), hay.begin(), at);
  d.prompt.insert(d.prompt.end(), needle.begin(), needle.end());
  d.prompt.insert(d.prompt.end(), at, hay.end());
  d.prompt.insert(d.prompt.end(), question.begin(), question.end());
  return d;
}

Status DataConfig::Validate(int64_t* vocab) const {
  if (vocab) *vocab = 0;
  RW_REQUIRE(source == "synthetic" || source == "files", "data.source: '" << source << "' is not synthetic or files");
  if (source == "files") {
    RW_REQUIRE(!path.empty(), "data.path: a dataset directory is required with data.source: files");
    std::ifstream meta(path + "/meta.json");
    RW_REQUIRE(meta.good(), "data.path: " << path << " is not a prepared dataset (run ringworld data prepare)");
    RW_REQUIRE(tokenizer == "bytes", "data.tokenizer: only for synthetic data (a prepared dataset keeps its own)");
    return Status::Ok();
  }
  RW_REQUIRE(task == "copy" || task == "needle", "data.task: '" << task << "' is not a synthetic task (copy, needle)");
  std::unique_ptr<Tokenizer> tok;
  RW_RETURN_IF_ERROR(MakeTokenizer(tokenizer, &tok, "data.tokenizer"));
  if (vocab) *vocab = tok->vocab_size();
  RW_REQUIRE(min_len >= 1 && max_len >= min_len,
             "data.min_len/max_len: need 1 <= min_len <= max_len, got " << min_len << ", " << max_len);
  // A synthetic document is made whole before it is packed: 16 Mi tokens is 16 times the longest sequence
  // we train on, and a bound on what one job file can make a device allocate.
  constexpr int64_t kMaxDocument = int64_t(1) << 24;
  RW_REQUIRE(max_len <= kMaxDocument, "data.max_len: must be at most " << kMaxDocument << ", got " << max_len);
  RW_REQUIRE(std::isfinite(answer_weight) && answer_weight > 0 && answer_weight <= 1000,
             "data.answer_weight: must be in (0, 1000], got " << answer_weight);
  return Status::Ok();
}

void PackedSequence::Row(int32_t token, int32_t target, int32_t segment, int64_t position, float weight,
                         uint8_t mod) {
  index.push_back(length_);
  tokens.push_back(token);
  targets.push_back(target);
  segments.push_back(segment);
  positions.push_back(position);
  weights.push_back(weight);
  modality.push_back(mod);
}

bool PackedSequence::NextRow(int64_t end) {
  if (!keep_) return length_ < end;
  if (next_keep_ >= keep_->size() || (*keep_)[next_keep_] >= end) {
    length_ = std::max(length_, end);  // the rest up to end belongs to other ranks
    return false;
  }
  length_ = std::max(length_, (*keep_)[next_keep_++]);
  return true;
}

void PackedSequence::AppendWindow(const int32_t* ids, const uint8_t* mod, int64_t inputs, int32_t doc) {
  const int64_t start = length_, end = length_ + inputs;
  for (; NextRow(end); ++length_) {
    const int64_t i = length_ - start;
    Row(ids[i], ids[i + 1], doc, i, 1.f, mod ? mod[i + 1] : 0);
  }
}

void PackedSequence::SetWeights(int64_t from, int64_t to, float w) {
  auto it = std::lower_bound(index.begin(), index.end(), from);
  for (; it != index.end() && *it < to; ++it) weights[size_t(it - index.begin())] = w;
}

void PackedSequence::PadTo(int64_t seq_len) {
  for (; NextRow(seq_len); ++length_) Row(0, -1, -1, 0, 0.f, 0);
}

RankBatch PackedSequence::Rows() && {
  RankBatch b;
  b.tokens = std::move(tokens);
  b.targets = std::move(targets);
  b.weights = std::move(weights);
  b.positions = std::move(positions);
  b.segments = std::move(segments);
  b.index = std::move(index);
  return b;
}

std::vector<PackedSequence> GlobalBatch(const DataConfig& d, const Tokenizer& tok, uint64_t seed, int64_t step,
                                        int64_t seq_len, int64_t batch, const std::vector<int64_t>* keep,
                                        int64_t first, int64_t last) {
  last = last < 0 ? batch : std::min(last, batch);
  first = std::clamp<int64_t>(first, 0, last);
  std::vector<PackedSequence> out(size_t(last - first), PackedSequence{keep});
  for (int64_t b = first; b < last; ++b) {
    Stream s{Mix(seed ^ Mix(uint64_t(step) * 0x100000001b3ull + uint64_t(b)))};
    PackedSequence& p = out[size_t(b - first)];
    int32_t doc = 0;
    while (p.length() < seq_len) {
      std::vector<int32_t> ids;
      int64_t answer_from = 0, answer_to = 0;  // positions whose targets are the answer's tokens
      if (d.task == "needle") {  // a length (no longer than the stage's sequences) and a depth per document
        const uint64_t doc_seed = s.Next();
        const int64_t hi = std::min(d.max_len, seq_len);
        const int64_t length = s.Uniform(std::min(d.min_len, hi), hi);
        const NeedleDocument n = MakeNeedle(tok, doc_seed, length, double(s.Uniform(0, 1000)) / 1000);
        ids = n.prompt;
        ids.insert(ids.end(), n.answer.begin(), n.answer.end());
        if (tok.eos() >= 0) ids.push_back(tok.eos());
        answer_from = int64_t(n.prompt.size()) - 1;  // position i predicts ids[i + 1]
        answer_to = answer_from + int64_t(n.answer.size());
      } else {
        ids = CopyDocument(d, tok, s);
      }
      const int64_t start = p.length();
      const int64_t take = std::min<int64_t>(seq_len - start, int64_t(ids.size()) - 1);  // positions
      if (take < 1) break;
      p.AppendWindow(ids.data(), nullptr, take, doc++);
      if (answer_to > answer_from)
        p.SetWeights(start + answer_from, start + std::min(answer_to, take), float(d.answer_weight));
    }
    p.PadTo(seq_len);
  }
  return out;
}

RankBatch ShardOf(const PackedSequence& seq, const Layout& layout, int rank) {
  RankBatch b;
  for (int64_t g : layout.GlobalIndices(rank)) {
    b.index.push_back(g);
    b.tokens.push_back(seq.tokens[g]);
    b.targets.push_back(seq.targets[g]);
    b.weights.push_back(seq.weights[g]);
    b.positions.push_back(seq.positions[g]);
    b.segments.push_back(seq.segments[g]);
  }
  return b;
}

Status LossConfig::Validate() const {
  RW_REQUIRE(weighting == "per_token" || weighting == "per_modality",
             "loss.weighting: '" << weighting << "' is not per_token or per_modality");
  RW_REQUIRE(text_weight >= 0 && vision_weight >= 0 && text_weight + vision_weight > 0,
             "loss.text_weight/vision_weight: must be >= 0 and not both 0, got " << text_weight << ", " << vision_weight);
  return Status::Ok();
}

void WeightSums(const std::vector<PackedSequence>& batch, double sums[2]) {
  sums[0] = sums[1] = 0;
  for (const auto& p : batch)
    for (size_t i = 0; i < p.weights.size(); ++i) sums[p.modality[i] ? 1 : 0] += p.weights[i];
}

Status ApplyLossWeighting(const LossConfig& c, const double global_sums[2], std::vector<PackedSequence>& batch,
                          double* scale) {
  const double* n = global_sums;
  RW_REQUIRE(n[0] + n[1] > 0, "data: a global batch with no token to predict");
  if (c.weighting == "per_token") {
    *scale = 1.0 / (n[0] + n[1]);
    return Status::Ok();
  }
  const double w[2] = {n[0] > 0 ? c.text_weight : 0.0, n[1] > 0 ? c.vision_weight : 0.0};
  const double norm = w[0] + w[1];
  RW_REQUIRE(norm > 0, "loss: the batch holds only a modality whose weight is 0");
  for (auto& p : batch)
    for (size_t i = 0; i < p.weights.size(); ++i)
      if (p.weights[i] > 0) {
        const int m = p.modality[i] ? 1 : 0;
        p.weights[i] = float(w[m] / norm / n[m]);
      }
  *scale = 1.0;
  return Status::Ok();
}

Status ApplyLossWeighting(const LossConfig& c, std::vector<PackedSequence>& batch, double* scale) {
  double n[2];
  WeightSums(batch, n);
  return ApplyLossWeighting(c, n, batch, scale);
}


}  // namespace rw::runtime
