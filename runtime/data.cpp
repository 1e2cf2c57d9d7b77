#include "runtime/rng.h"

#include <algorithm>
#include <fstream>
#include "runtime/data.h"

#include <cmath>

namespace rw::runtime {
namespace {


// A counter-based stream: document j of sequence i of step k is the same wherever it is made.
struct Stream {
  uint64_t state;
  uint64_t Next() { return state = Mix(state); }
  int64_t Uniform(int64_t lo, int64_t hi) { return lo + int64_t(Next() % uint64_t(hi - lo + 1)); }
};

std::vector<int32_t> CopyDocument(const DataConfig& d, Stream& s) {
  const int64_t n = s.Uniform(d.min_len, d.max_len);
  std::string text;
  for (int64_t i = 0; i < n; ++i) text += char('a' + s.Uniform(0, 25));
  return ByteTokenizer::Encode(text + "|" + text);
}

const char* const kCities[] = {"Chicago", "Yangon", "Antananarivo", "Colombo", "Almaty", "Sydney", "Lima",
                               "Mumbai", "Cairo", "Oslo", "Quito", "Dakar", "Hanoi", "Tbilisi", "Lagos", "Porto"};
const char* const kFiller[] = {"The grass is green. ", "The sky is blue. ", "The sun is yellow. ", "Here we go. ",
                               "There and back again. "};

}  // namespace

NeedleDocument MakeNeedle(uint64_t seed, int64_t length, double depth) {
  Stream s{Mix(seed)};
  const std::string city = kCities[s.Uniform(0, 15)];
  std::string digits;
  for (int i = 0; i < 7; ++i) digits += char('0' + s.Uniform(0, 9));
  const std::string needle = "The special magic " + city + " number is: " + digits + ". ";
  const std::string question = "What is the special magic " + city + " number? The special magic " + city +
                               " number is: ";
  // Haystack bytes so that BOS + haystack-with-needle + question + answer fills `length` tokens.
  const int64_t fixed = 1 + int64_t(needle.size() + question.size() + digits.size());
  std::string hay;
  while (int64_t(hay.size()) < std::max<int64_t>(0, length - fixed)) hay += kFiller[s.Uniform(0, 4)];
  hay.resize(size_t(std::max<int64_t>(0, length - fixed)));
  const size_t at = size_t(std::clamp(depth, 0.0, 1.0) * double(hay.size()));
  return {hay.substr(0, at) + needle + hay.substr(at) + question, digits};
}

std::vector<int32_t> ByteTokenizer::Encode(const std::string& text) {
  std::vector<int32_t> ids{kBos};
  for (unsigned char ch : text) ids.push_back(int32_t(ch));
  ids.push_back(kEos);
  return ids;
}

std::string ByteTokenizer::Decode(const std::vector<int32_t>& ids) {
  std::string out;
  for (int32_t id : ids)
    if (id >= 0 && id < 256) out += char(id);
  return out;
}

Status DataConfig::Validate() const {
  RW_REQUIRE(source == "synthetic" || source == "files", "data.source: '" << source << "' is not synthetic or files");
  if (source == "files") {
    RW_REQUIRE(!path.empty(), "data.path: a dataset directory is required with data.source: files");
    std::ifstream meta(path + "/meta.json");
    RW_REQUIRE(meta.good(), "data.path: " << path << " is not a prepared dataset (run ringworld data prepare)");
    return Status::Ok();
  }
  RW_REQUIRE(task == "copy" || task == "needle", "data.task: '" << task << "' is not a synthetic task (copy, needle)");
  RW_REQUIRE(min_len >= 1 && max_len >= min_len,
             "data.min_len/max_len: need 1 <= min_len <= max_len, got " << min_len << ", " << max_len);
  RW_REQUIRE(std::isfinite(answer_weight) && answer_weight > 0 && answer_weight <= 1000,
             "data.answer_weight: must be in (0, 1000], got " << answer_weight);
  return Status::Ok();
}

std::vector<PackedSequence> GlobalBatch(const DataConfig& d, uint64_t seed, int64_t step, int64_t seq_len,
                                        int64_t batch) {
  std::vector<PackedSequence> out(batch);
  for (int64_t b = 0; b < batch; ++b) {
    Stream s{Mix(seed ^ Mix(uint64_t(step) * 0x100000001b3ull + uint64_t(b)))};
    PackedSequence& p = out[b];
    int32_t doc = 0;
    while (int64_t(p.tokens.size()) < seq_len) {
      std::vector<int32_t> ids;
      int64_t answer_from = 0, answer_to = 0;  // positions whose targets are the answer's digits
      if (d.task == "needle") {  // a haystack length and a depth drawn per document
        const NeedleDocument n = MakeNeedle(s.Next(), s.Uniform(d.min_len, d.max_len), double(s.Uniform(0, 1000)) / 1000);
        ids = ByteTokenizer::Encode(n.prompt + n.answer);
        answer_from = int64_t(n.prompt.size());  // ids[0] is BOS: position i predicts ids[i + 1]
        answer_to = answer_from + int64_t(n.answer.size());
      } else {
        ids = CopyDocument(d, s);
      }
      const int64_t room = seq_len - int64_t(p.tokens.size());
      const int64_t take = std::min<int64_t>(room, int64_t(ids.size()));
      if (take < 2) break;  // a document needs at least one (token, target) pair
      for (int64_t i = 0; i < take; ++i) {
        p.tokens.push_back(ids[i]);
        p.segments.push_back(doc);
        p.positions.push_back(i);
        const bool has_next = i + 1 < take;
        p.targets.push_back(has_next ? ids[i + 1] : -1);
        const bool answer = i >= answer_from && i < answer_to;
        p.weights.push_back(has_next ? (answer ? float(d.answer_weight) : 1.f) : 0.f);
        p.modality.push_back(0);
      }
      ++doc;
    }
    while (int64_t(p.tokens.size()) < seq_len) {  // padding
      p.tokens.push_back(ByteTokenizer::kPad);
      p.segments.push_back(-1);
      p.positions.push_back(0);
      p.targets.push_back(-1);
      p.weights.push_back(0.f);
      p.modality.push_back(0);
    }
  }
  return out;
}

ShardBatch ShardOf(const PackedSequence& seq, const Layout& layout, int rank) {
  ShardBatch b;
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

Status ApplyLossWeighting(const LossConfig& c, std::vector<PackedSequence>& batch, double* scale) {
  double n[2] = {0, 0};
  for (const auto& p : batch)
    for (size_t i = 0; i < p.weights.size(); ++i) n[p.modality[i] ? 1 : 0] += p.weights[i];
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


}  // namespace rw::runtime
