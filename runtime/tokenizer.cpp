#include "runtime/tokenizer.h"

#include <sentencepiece_processor.h>

#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>


namespace rw::runtime {
namespace {

class Bytes final : public Tokenizer {
 public:
  std::vector<int32_t> Encode(const std::string& text) const override {
    std::vector<int32_t> ids;
    for (unsigned char ch : text) ids.push_back(int32_t(ch));
    return ids;
  }
  std::string Decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    for (int32_t id : ids)
      if (id >= 0 && id < 256) out += char(id);
    return out;
  }
  int32_t bos() const override { return ByteTokenizer::kBos; }
  int32_t eos() const override { return ByteTokenizer::kEos; }
  int32_t unk() const override { return -1; }
  std::string Piece(int32_t id) const override {
    if (id == ByteTokenizer::kBos) return "<s>";
    if (id == ByteTokenizer::kEos) return "</s>";
    return id >= 0 && id < 256 ? std::string(1, char(id)) : "";
  }
  int64_t vocab_size() const override { return ByteTokenizer::kVocab; }
  std::string name() const override { return "bytes"; }
  std::string Serialized() const override { return {}; }
};

class Ids final : public Tokenizer {
 public:
  explicit Ids(int64_t vocab) : vocab_(vocab) {}
  std::vector<int32_t> Encode(const std::string&) const override { return {}; }
  std::string Decode(const std::vector<int32_t>&) const override { return {}; }
  int32_t bos() const override { return -1; }
  int32_t eos() const override { return -1; }
  int32_t unk() const override { return -1; }
  std::string Piece(int32_t) const override { return {}; }
  int64_t vocab_size() const override { return vocab_; }
  std::string name() const override { return kNoTokenizer; }
  std::string Serialized() const override { return {}; }

 private:
  int64_t vocab_;
};

class SentencePiece final : public Tokenizer {
 public:
  explicit SentencePiece(std::string path) : path_(std::move(path)) {}
  // The special ids are read once, here, under one lock for the process: the first look-up of each
  // initializes a default string shared by every model in libsentencepiece (protobuf's lazy defaults),
  // which ranks loading their tokenizers in parallel threads would otherwise do at once (CI's TSan stage
  // saw it in eos_id()). After Load nothing here touches those defaults.
  Status Load(const std::string& field) {
    static std::mutex load_mu;
    std::lock_guard<std::mutex> lock(load_mu);
    const auto st = sp_.Load(path_);
    RW_REQUIRE(st.ok(), field << ": " << path_ << " is not a SentencePiece model: " << st.ToString());
    bos_ = sp_.bos_id();
    eos_ = sp_.eos_id();
    unk_ = sp_.unk_id();
    return Status::Ok();
  }
  std::vector<int32_t> Encode(const std::string& text) const override {
    std::vector<int> ids;
    sp_.Encode(text, &ids).IgnoreError();
    return std::vector<int32_t>(ids.begin(), ids.end());
  }
  std::string Decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    sp_.Decode(std::vector<int>(ids.begin(), ids.end()), &out).IgnoreError();
    return out;
  }
  int32_t bos() const override { return bos_; }
  int32_t eos() const override { return eos_; }
  int32_t unk() const override { return unk_; }
  std::string Piece(int32_t id) const override { return id >= 0 && id < vocab_size() ? sp_.IdToPiece(id) : ""; }
  int64_t vocab_size() const override { return sp_.GetPieceSize(); }
  std::string name() const override { return path_; }
  std::string Serialized() const override { return sp_.serialized_model_proto(); }

 private:
  std::string path_;
  sentencepiece::SentencePieceProcessor sp_;
  int32_t bos_ = -1, eos_ = -1, unk_ = -1;  // read in Load
};

}  // namespace

std::vector<int32_t> Tokenizer::EncodeDocument(const std::string& text) const {
  std::vector<int32_t> ids;
  if (bos() >= 0) ids.push_back(bos());
  const auto body = Encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  if (eos() >= 0) ids.push_back(eos());
  return ids;
}

std::string Tokenizer::Render(const std::vector<int32_t>& ids) const {
  std::string out;
  std::vector<int32_t> run;
  for (int32_t id : ids) {
    const bool text = id != bos() && id != eos() && !Piece(id).empty();
    if (text) {
      run.push_back(id);
      continue;
    }
    out += Decode(run) + "<" + std::to_string(id) + ">";
    run.clear();
  }
  return out + Decode(run);
}

Status MakeTokenizer(const std::string& spec, std::unique_ptr<Tokenizer>* out, const std::string& field) {
  if (spec == "bytes") {
    *out = std::make_unique<Bytes>();
    return Status::Ok();
  }
  RW_REQUIRE(std::filesystem::is_regular_file(spec),
             field << ": '" << spec << "' is neither bytes nor a SentencePiece .model file");
  auto sp = std::make_unique<SentencePiece>(spec);
  RW_RETURN_IF_ERROR(sp->Load(field));
  *out = std::move(sp);
  return Status::Ok();
}

std::unique_ptr<Tokenizer> IdsTokenizer(int64_t vocab) { return std::make_unique<Ids>(vocab); }

Status DirectoryTokenizer(const std::string& dir, std::unique_ptr<Tokenizer>* out) {
  const std::filesystem::path d(dir);
  const std::string file = (d / kTokenizerFile).string();
  if (std::filesystem::exists(file)) return MakeTokenizer(file, out, file);
  // Pre-tokenized ids: a dataset's meta.json, or a checkpoint's config.json, says so.
  for (const auto& [name, key] : {std::pair{"meta.json", "tokenizer"}, std::pair{"config.json", "ringworld_tokenizer"}}) {
    std::ifstream f(d / name);
    if (!f) continue;
    const auto j = nlohmann::json::parse(f, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains(key) && j[key] == kNoTokenizer && j.contains("vocab_size") &&
        j["vocab_size"].is_number_integer()) {
      *out = IdsTokenizer(j["vocab_size"].get<int64_t>());
      return Status::Ok();
    }
  }
  return MakeTokenizer("bytes", out, file);
}

Status ParseVisionLayout(const std::string& name, VisionLayout* out) {
  if (name == "appended") *out = VisionLayout::kAppended;
  else if (name == "lwm") *out = VisionLayout::kLwm;
  else return Status::Error("'" + name + "' is not a vision layout (appended, lwm)");
  return Status::Ok();
}

const char* VisionLayoutName(VisionLayout l) { return l == VisionLayout::kLwm ? "lwm" : "appended"; }

VisionVocab VisionVocab::Appended(int64_t text_vocab, int64_t codes) {
  VisionVocab v;
  v.text_vocab = text_vocab;
  v.codes = codes;
  return v;
}

VisionVocab VisionVocab::Lwm(const Tokenizer& tok, int64_t codes) {
  VisionVocab v;
  v.text_vocab = tok.vocab_size();
  v.codes = codes;
  v.layout = VisionLayout::kLwm;
  v.lwm_begin = tok.Encode("<vision>");
  v.lwm_end = tok.Encode("</vision>");
  return v;
}

std::vector<int32_t> VisionVocab::Begin() const {
  if (layout == VisionLayout::kLwm) return lwm_begin;
  return {int32_t(text_vocab + codes)};
}

std::vector<int32_t> VisionVocab::End() const {
  if (layout == VisionLayout::kLwm) return lwm_end;
  return {int32_t(text_vocab + codes + 1)};
}

Status VisionVocab::Encode(const std::vector<std::vector<int64_t>>& frames, std::vector<int32_t>* out,
                           std::vector<uint8_t>* modality) const {
  RW_REQUIRE(!frames.empty(), "\"vision\": no frame");
  const uint8_t tags = layout == VisionLayout::kLwm ? 0 : 1;  // the modality of <vision> and </vision>
  auto add = [&](int32_t id, uint8_t m) {
    out->push_back(id);
    modality->push_back(m);
  };
  for (int32_t id : Begin()) add(id, tags);
  for (size_t f = 0; f < frames.size(); ++f) {
    RW_REQUIRE(!frames[f].empty(), "\"vision\"[" << f << "]: an empty frame");
    for (size_t i = 0; i < frames[f].size(); ++i) {
      const int64_t c = frames[f][i];
      RW_REQUIRE(c >= 0 && c < codes,
                 "\"vision\"[" << f << "][" << i << "]: code " << c << " outside the codebook of " << codes);
      add(Code(c), 1);
    }
    add(f + 1 < frames.size() ? eof() : eov(), 1);
  }
  for (int32_t id : End()) add(id, tags);
  return Status::Ok();
}

}  // namespace rw::runtime
