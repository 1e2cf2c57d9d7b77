#include "runtime/dataset.h"

#include "runtime/media.h"
#include "runtime/vqgan.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <limits>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/json_fields.h"
#include "runtime/rng.h"
#include "runtime/tokenizer.h"

namespace rw::runtime {
namespace {

namespace fs = std::filesystem;

struct Writer {
  std::ofstream tokens, modality;
  std::vector<uint64_t> index{0};
  std::vector<int32_t> doc;
  std::vector<uint8_t> mod;
  void Add() {
    tokens.write(reinterpret_cast<const char*>(doc.data()), std::streamsize(doc.size() * 4));
    modality.write(reinterpret_cast<const char*>(mod.data()), std::streamsize(mod.size()));
    index.push_back(index.back() + doc.size());
  }
};

// Image and video records: the VQGAN that encodes their frames, and the directory their paths are relative to.
struct MediaContext {
  const Vqgan* vqgan = nullptr;
  fs::path base;
};

// The frames of an "image" or "video" record, read and encoded to codes.
Status MediaCodes(const nlohmann::json& j, const MediaContext& media, std::vector<std::vector<int64_t>>* frames) {
  RW_REQUIRE(media.vqgan, "\"image\" and \"video\" records need --vqgan DIR (the VQGAN that encodes their frames)");
  const bool video = j.contains("video");
  const auto& name = j[video ? "video" : "image"];
  RW_REQUIRE(name.is_string() && !name.get<std::string>().empty(),
             "\"" << (video ? "video" : "image") << "\" must be the path of a file");
  FrameSelection sel;
  for (const char* key : {"max_frames", "fps"})
    RW_REQUIRE(video || !j.contains(key), "\"" << key << "\": only a video record picks frames");
  if (j.contains("max_frames")) {
    RW_REQUIRE(j["max_frames"].is_number_integer() && j["max_frames"].get<int64_t>() >= 1 &&
                   j["max_frames"].get<int64_t>() <= 100000,
               "\"max_frames\" must be an integer in [1, 100000]");
    sel.max_frames = j["max_frames"].get<int64_t>();
  }
  if (j.contains("fps")) {
    RW_REQUIRE(j["fps"].is_number() && j["fps"].get<double>() > 0 && j["fps"].get<double>() <= 1000,
               "\"fps\" must be a number in (0, 1000]");
    sel.fps = j["fps"].get<double>();
  }
  const fs::path rel(name.get<std::string>());
  const std::string path = (rel.is_absolute() ? rel : media.base / rel).string();
  MediaFrames m;
  RW_RETURN_IF_ERROR(ReadMediaFrames(path, media.vqgan->config().resolution, sel, &m));
  std::vector<int32_t> codes;
  RW_RETURN_IF_ERROR(media.vqgan->Encode(m.count, m.pixels.data(), &codes));
  const int64_t per = media.vqgan->config().codes_per_frame();
  frames->clear();
  for (int64_t f = 0; f < m.count; ++f) frames->emplace_back(codes.begin() + f * per, codes.begin() + (f + 1) * per);
  return Status::Ok();
}

// Parses one JSONL record into w.doc / w.mod; the error names what is wrong (the caller adds file:line and
// checks the ids against the vocabulary).
Status ParseRecord(const std::string& line, const Tokenizer& tok, const VisionVocab& vision,
                   const MediaContext& media, Writer& w) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const std::exception&) {
    return Status::Error("not a JSON object");
  }
  RW_REQUIRE(j.is_object(), "not a JSON object");
  w.doc.clear();
  w.mod.clear();
  if (j.contains("tokens")) {
    RW_REQUIRE(j["tokens"].is_array(), "\"tokens\" must be a list of token ids");
    for (const auto& t : j["tokens"]) {
      RW_REQUIRE(t.is_number_integer(), "\"tokens\" holds a non-integer");
      const int64_t id = t.get<int64_t>();
      RW_REQUIRE(id >= 0 && id <= INT32_MAX, "token id " << id << " is not an id (0 to 2^31 - 1)");  // vocab: CheckVocab
      w.doc.push_back(int32_t(id));
    }
  } else if (j.contains("vision") || j.contains("image") || j.contains("video")) {
    const int kinds = int(j.contains("vision")) + int(j.contains("image")) + int(j.contains("video"));
    RW_REQUIRE(kinds == 1, "a record holds one of \"vision\", \"image\" and \"video\"");
    RW_REQUIRE(vision.codes > 0, "\"vision\": needs --vision-codes N (the VQGAN codebook size; LWM: 8192)");
    RW_REQUIRE(!j.contains("modality"), "\"modality\": a vision record's modality follows from its frames");
    std::vector<std::vector<int64_t>> frames;
    if (j.contains("vision")) {
      RW_REQUIRE(j["vision"].is_array(), "\"vision\" must be a list of frames (lists of codes)");
      for (const auto& f : j["vision"]) {
        RW_REQUIRE(f.is_array(), "\"vision\" must be a list of frames (lists of codes)");
        frames.emplace_back();
        for (const auto& c : f) {
          RW_REQUIRE(c.is_number_integer(), "\"vision\"[" << frames.size() - 1 << "] holds a non-integer");
          frames.back().push_back(c.get<int64_t>());
        }
      }
    } else {
      RW_RETURN_IF_ERROR(MediaCodes(j, media, &frames));
    }
    std::vector<int32_t> vis, text;
    std::vector<uint8_t> vis_mod;
    RW_RETURN_IF_ERROR(vision.Encode(frames, &vis, &vis_mod));
    if (j.contains("text")) {
      RW_REQUIRE(j["text"].is_string(), "\"text\" must be a string");
      text = tok.Encode(j["text"].get<std::string>());
    }
    const std::string order = j.value("order", std::string("vision_text"));
    RW_REQUIRE(order == "vision_text" || order == "text_vision",
               "\"order\": '" << order << "' is not vision_text or text_vision");
    if (tok.bos() >= 0) w.doc.push_back(tok.bos()), w.mod.push_back(0);
    const std::vector<uint8_t> text_mod(text.size(), 0);
    auto add = [&](const std::vector<int32_t>& ids, const std::vector<uint8_t>& m) {
      w.doc.insert(w.doc.end(), ids.begin(), ids.end());
      w.mod.insert(w.mod.end(), m.begin(), m.end());
    };
    if (order == "vision_text") add(vis, vis_mod), add(text, text_mod);
    else add(text, text_mod), add(vis, vis_mod);
    if (tok.eos() >= 0) w.doc.push_back(tok.eos()), w.mod.push_back(0);
    return Status::Ok();
  } else if (j.contains("text")) {
    RW_REQUIRE(j["text"].is_string(), "\"text\" must be a string");
    RW_REQUIRE(tok.name() != kNoTokenizer, "\"text\": this dataset has no tokenizer (--vocab-size without "
                                           "--tokenizer: pre-tokenized \"tokens\" only)");
    w.doc = tok.EncodeDocument(j["text"].get<std::string>());
  } else {
    return Status::Error("a record needs \"text\", \"tokens\" or \"vision\"");
  }
  RW_REQUIRE(w.doc.size() >= 2, "a document needs at least 2 tokens");
  w.mod.assign(w.doc.size(), 0);
  if (j.contains("modality")) {
    auto code = [](const nlohmann::json& m, uint8_t* out) {
      if (m == "text" || m == 0) return (*out = 0, true);
      if (m == "vision" || m == 1) return (*out = 1, true);
      return false;
    };
    const auto& m = j["modality"];
    if (m.is_array()) {
      RW_REQUIRE(m.size() == w.doc.size(), "\"modality\" has " << m.size() << " entries for " << w.doc.size() << " tokens");
      for (size_t i = 0; i < m.size(); ++i) RW_REQUIRE(code(m[i], &w.mod[i]), "\"modality\"[" << i << "] is not text or vision");
    } else {
      uint8_t c = 0;
      RW_REQUIRE(code(m, &c), "\"modality\" is not text or vision");
      w.mod.assign(w.doc.size(), c);
    }
  }
  return Status::Ok();
}

// Every id below the dataset's vocabulary (a text record's tokenizer, or vision ids, may exceed --vocab-size).
Status CheckVocab(const std::vector<int32_t>& ids, int64_t vocab) {
  for (size_t i = 0; i < ids.size(); ++i)
    RW_REQUIRE(ids[i] < vocab, "token " << i << " has id " << ids[i] << ", outside the vocabulary of " << vocab
                                        << " (--vocab-size)");
  return Status::Ok();
}

void* MapFile(const std::string& path, size_t* bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return nullptr;
  struct stat sb {};
  ::fstat(fd, &sb);
  *bytes = size_t(sb.st_size);
  void* p = *bytes ? ::mmap(nullptr, *bytes, PROT_READ, MAP_PRIVATE, fd, 0) : nullptr;
  ::close(fd);
  return p == MAP_FAILED ? nullptr : p;
}

}  // namespace

Status PrepareDataset(const PrepareOptions& opt, PrepareReport* report) {
  RW_REQUIRE(!opt.inputs.empty(), "--input: at least one file is required");
  RW_REQUIRE(!opt.output.empty(), "--output: a directory is required");
  RW_REQUIRE(opt.vocab_size >= 0 && opt.vocab_size <= (int64_t(1) << 31),
             "--vocab-size: must be in [1, 2^31], got " << opt.vocab_size);
  const std::string spec = !opt.tokenizer.empty() ? opt.tokenizer : opt.vocab_size > 0 ? kNoTokenizer : "bytes";
  std::unique_ptr<Tokenizer> tok;
  if (spec == kNoTokenizer) {
    RW_REQUIRE(opt.vocab_size > 0, "--tokenizer none: pre-tokenized ids need --vocab-size N");
    RW_REQUIRE(opt.vision_codes == 0, "--vision-codes: vision ids follow a text vocabulary; give --tokenizer");
    tok = IdsTokenizer(opt.vocab_size);
  } else {
    RW_RETURN_IF_ERROR(MakeTokenizer(spec, &tok));
  }
  RW_REQUIRE(opt.vision_codes >= 0 && opt.vision_codes <= (1 << 20),
             "--vision-codes: must be in [0, 2^20], got " << opt.vision_codes);
  // A VQGAN: its codebook is the vision vocabulary.
  std::unique_ptr<Vqgan> vqgan;
  int64_t vision_codes = opt.vision_codes;
  if (!opt.vqgan.empty()) {
    const Status st = Vqgan::Load(opt.vqgan, kernels::Exec{kernels::Device::kCpu, opt.vqgan_threads}, &vqgan);
    RW_REQUIRE(st.ok(), "--vqgan: " << st.message());
    RW_REQUIRE(opt.vision_codes == 0 || opt.vision_codes == vqgan->config().num_embeddings,
               "--vision-codes: " << opt.vision_codes << " differs from the VQGAN's codebook of "
                                  << vqgan->config().num_embeddings);
    vision_codes = vqgan->config().num_embeddings;
  }
  VisionLayout layout;
  {
    const Status st = ParseVisionLayout(opt.vision_layout, &layout);
    RW_REQUIRE(st.ok(), "--vision-layout: " << st.message());
  }
  RW_REQUIRE(layout == VisionLayout::kAppended || vision_codes > 0,
             "--vision-layout: lwm lays out vision codes; give --vqgan or --vision-codes");
  RW_REQUIRE(layout == VisionLayout::kAppended || opt.vocab_size == 0,
             "--vocab-size: the lwm layout's ids follow from the tokenizer and the codes");
  VisionVocab vision = VisionVocab::Appended(tok->vocab_size(), vision_codes);
  if (layout == VisionLayout::kLwm) vision = VisionVocab::Lwm(*tok, vision_codes);
  const int64_t vocab = opt.vocab_size > 0 ? opt.vocab_size : vision_codes > 0 ? vision.total() : tok->vocab_size();
  const fs::path out(opt.output), tmp = out.string() + ".tmp-" + std::to_string(::getpid());
  std::error_code ec;
  RW_REQUIRE(!fs::exists(out / "meta.json"), "--output: " << opt.output << " already holds a dataset");
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  RW_REQUIRE(!ec, "--output: cannot create " << tmp.string() << ": " << ec.message());
  Writer w;
  w.tokens.open(tmp / "tokens.bin", std::ios::binary);
  w.modality.open(tmp / "modality.bin", std::ios::binary);
  PrepareReport rep;
  auto fail = [&](Status st) {
    fs::remove_all(tmp, ec);
    return st;
  };
  for (const auto& in : opt.inputs) {
    std::ifstream f(in, std::ios::binary);
    if (!f) return fail(Status::Error("--input: cannot read " + in));
    const bool jsonl = fs::path(in).extension() == ".jsonl";
    if (!jsonl && tok->name() == kNoTokenizer)
      return fail(Status::Error("--input: " + in + " is text, and this dataset has no tokenizer (--vocab-size "
                                "without --tokenizer: pre-tokenized ids only)"));
    if (!jsonl) {  // a text file is one document
      std::stringstream ss;
      ss << f.rdbuf();
      w.doc = tok->EncodeDocument(ss.str());
      if (Status st = CheckVocab(w.doc, vocab); !st.ok()) return fail(Status::Error(in + ": " + st.message()));
      w.mod.assign(w.doc.size(), 0);
      w.Add();
      ++rep.documents;
      rep.tokens += int64_t(w.doc.size());
      continue;
    }
    std::string line;
    for (int64_t lineno = 1; std::getline(f, line); ++lineno) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      Status st = ParseRecord(line, *tok, vision, MediaContext{vqgan.get(), fs::path(in).parent_path()}, w);
      if (st.ok()) st = CheckVocab(w.doc, vocab);
      if (!st.ok()) {
        if (opt.skip_bad) {
          ++rep.skipped;
          continue;
        }
        return fail(Status::Error(in + ":" + std::to_string(lineno) + ": " + st.message() +
                                  " (--skip-bad counts and skips such records)"));
      }
      w.Add();
      ++rep.documents;
      rep.tokens += int64_t(w.doc.size());
    }
  }
  if (rep.documents == 0) return fail(Status::Error("--input: no document in the inputs"));
  w.tokens.close();
  w.modality.close();
  {
    std::ofstream f(tmp / "index.bin", std::ios::binary);
    f.write(reinterpret_cast<const char*>(w.index.data()), std::streamsize(w.index.size() * 8));
  }
  nlohmann::ordered_json meta = {{"format", "ringworld-tokens-v1"}, {"documents", rep.documents},
                                 {"tokens", rep.tokens},            {"tokenizer", tok->name()},
                                 {"vocab_size", vocab},             {"text_vocab_size", tok->vocab_size()},
                                 {"vision_codes", vision_codes}, {"sources", opt.inputs},
                                 {"skipped", rep.skipped}};
  if (vqgan) meta["vqgan"] = opt.vqgan;
  if (vision_codes > 0) {
    meta["vision_layout"] = VisionLayoutName(layout);
    meta["vision_tokens"] = {{"first_code", vision.Code(0)}, {"vision", vision.Begin()}, {"/vision", vision.End()},
                             {"eof", vision.eof()}, {"eov", vision.eov()}};
    if (layout == VisionLayout::kLwm) meta["vision_vocab_size_min"] = vision.min_vision_vocab();
  }
  std::ofstream(tmp / "meta.json") << meta.dump(2) << "\n";
  if (const std::string model = tok->Serialized(); !model.empty())  // the dataset keeps its tokenizer
    std::ofstream(tmp / kTokenizerFile, std::ios::binary) << model;
  fs::remove_all(out, ec);  // an empty leftover directory
  fs::rename(tmp, out, ec);
  if (ec) return fail(Status::Error("--output: cannot rename into " + opt.output + ": " + ec.message()));
  if (report) *report = rep;
  return Status::Ok();
}

Status Dataset::Open(const std::string& dir, Dataset* out) {
  Dataset d;
  std::ifstream mf(fs::path(dir) / "meta.json");
  RW_REQUIRE(mf.good(), "data: " << dir << " is not a prepared dataset (no meta.json; run ringworld data prepare)");
  try {
    const auto meta = nlohmann::json::parse(mf);
    RW_REQUIRE(meta.at("format") == "ringworld-tokens-v1", "data: " << dir << "/meta.json: unknown format");
    const std::string where = "data: " + dir + "/meta.json: ";
    RW_RETURN_IF_ERROR(JsonInteger(meta.at("documents"), where + "documents", 0, (int64_t(1) << 40) - 1, &d.n_docs_));
    RW_RETURN_IF_ERROR(JsonInteger(meta.at("tokens"), where + "tokens", 0, (int64_t(1) << 44) - 1, &d.n_tokens_));
    RW_RETURN_IF_ERROR(JsonInteger(meta.at("vocab_size"), where + "vocab_size", 1, int64_t(1) << 31, &d.vocab_));
    d.text_vocab_ = d.vocab_;
    if (meta.contains("text_vocab_size"))
      RW_RETURN_IF_ERROR(JsonInteger(meta.at("text_vocab_size"), where + "text_vocab_size", 1, d.vocab_, &d.text_vocab_));
    if (meta.contains("vision_layout")) {
      RW_REQUIRE(meta.at("vision_layout").is_string(), where << "vision_layout: expected appended or lwm");
      const Status st = ParseVisionLayout(meta.at("vision_layout").get<std::string>(), &d.layout_);
      RW_REQUIRE(st.ok(), where << "vision_layout: " << st.message());
    }
    if (d.layout_ == VisionLayout::kLwm)
      RW_RETURN_IF_ERROR(JsonInteger(meta.at("vision_vocab_size_min"), where + "vision_vocab_size_min", 1,
                                     d.vocab_ - d.text_vocab_, &d.vision_vocab_min_));
  } catch (const nlohmann::json::exception& e) {
    return Status::Error("data: " + dir + "/meta.json: " + e.what());
  }
  d.map_ = MapFile((fs::path(dir) / "tokens.bin").string(), &d.map_bytes_);
  d.mod_map_ = MapFile((fs::path(dir) / "modality.bin").string(), &d.mod_bytes_);
  d.idx_map_ = MapFile((fs::path(dir) / "index.bin").string(), &d.idx_bytes_);
  RW_REQUIRE(d.map_ && d.mod_map_ && d.idx_map_, "data: " << dir << ": cannot map its files");
  RW_REQUIRE(d.map_bytes_ == size_t(d.n_tokens_) * 4 && d.mod_bytes_ == size_t(d.n_tokens_) &&
                 d.idx_bytes_ == size_t(d.n_docs_ + 1) * 8,
             "data: " << dir << ": file sizes disagree with meta.json (truncated?)");
  d.tokens_ = static_cast<const int32_t*>(d.map_);
  d.modality_ = static_cast<const uint8_t*>(d.mod_map_);
  d.index_ = static_cast<const uint64_t*>(d.idx_map_);
  // Every offset is read before any token is: the first 0, never decreasing, the last the token count. An
  // offset past the end would read outside tokens.bin (SIGBUS); a decreasing one changes the token count.
  RW_REQUIRE(d.index_[0] == 0, "data: " << dir << "/index.bin: the first offset is " << d.index_[0] << ", not 0");
  for (int64_t i = 0; i < d.n_docs_; ++i)
    RW_REQUIRE(d.index_[i + 1] >= d.index_[i] && d.index_[i + 1] <= uint64_t(d.n_tokens_),
               "data: " << dir << "/index.bin: offset " << i + 1 << " is " << d.index_[i + 1] << " after "
                        << d.index_[i] << " (offsets rise from 0 to the token count, " << d.n_tokens_ << ")");
  RW_REQUIRE(d.index_[d.n_docs_] == uint64_t(d.n_tokens_), "data: " << dir << "/index.bin: last offset is wrong");
  // Token ids and modality bytes in range: an id past the vocabulary would index outside the embedding.
  for (int64_t i = 0; i < d.n_tokens_; ++i) {
    RW_REQUIRE(d.tokens_[i] >= 0 && d.tokens_[i] < d.vocab_, "data: " << dir << "/tokens.bin: token " << i << " has id "
                                                                      << d.tokens_[i] << ", outside the vocabulary of "
                                                                      << d.vocab_);
    RW_REQUIRE(d.modality_[i] <= 1, "data: " << dir << "/modality.bin: token " << i << " has modality "
                                             << int(d.modality_[i]) << " (0 text, 1 vision)");
  }
  *out = std::move(d);
  return Status::Ok();
}

void Dataset::Reset() {
  if (map_) ::munmap(map_, map_bytes_);
  if (mod_map_) ::munmap(mod_map_, mod_bytes_);
  if (idx_map_) ::munmap(idx_map_, idx_bytes_);
  map_ = mod_map_ = idx_map_ = nullptr;
}

Dataset::~Dataset() { Reset(); }
Dataset::Dataset(Dataset&& o) noexcept { *this = std::move(o); }
Dataset& Dataset::operator=(Dataset&& o) noexcept {
  if (this != &o) {
    Reset();
    std::swap(map_, o.map_);
    std::swap(map_bytes_, o.map_bytes_);
    std::swap(mod_map_, o.mod_map_);
    std::swap(mod_bytes_, o.mod_bytes_);
    std::swap(idx_map_, o.idx_map_);
    std::swap(idx_bytes_, o.idx_bytes_);
    tokens_ = o.tokens_;
    modality_ = o.modality_;
    index_ = o.index_;
    n_docs_ = o.n_docs_;
    n_tokens_ = o.n_tokens_;
    vocab_ = o.vocab_;
    text_vocab_ = o.text_vocab_;
    vision_vocab_min_ = o.vision_vocab_min_;
    layout_ = o.layout_;
  }
  return *this;
}

WindowIndex::WindowIndex(const Dataset& d, int64_t seq_len) : d_(&d), seq_len_(seq_len) {
  first_.resize(size_t(d.documents()) + 1);
  first_[0] = 0;
  for (int64_t i = 0; i < d.documents(); ++i) {
    const int64_t pairs = std::max<int64_t>(0, d.doc_len(i) - 1);
    first_[size_t(i) + 1] = first_[size_t(i)] + (pairs + seq_len - 1) / seq_len;
  }
}

WindowIndex::Window WindowIndex::operator[](int64_t w) const {
  // The last document whose first window is at or before w (documents without a pair have no window).
  const auto it = std::upper_bound(first_.begin(), first_.end(), w) - 1;
  Window out;
  out.doc = int64_t(it - first_.begin());
  const int64_t k = w - *it;
  out.start = k * seq_len_;
  out.inputs = std::min(seq_len_, d_->doc_len(out.doc) - 1 - out.start);
  return out;
}

namespace {

// A keyed permutation of [0, n): a 4-round Feistel network on the smallest even number of bits that holds
// n, cycle-walked back into range (at most 4 n / n tries expected). O(1) memory for any number of windows.
int64_t Permute(uint64_t key, int64_t n, int64_t x) {
  if (n <= 1) return 0;
  int bits = 2;
  while ((int64_t(1) << bits) < n) bits += 2;
  const int half = bits / 2;
  const uint64_t mask = (uint64_t(1) << half) - 1;
  uint64_t v = uint64_t(x);
  do {
    uint64_t l = v >> half, r = v & mask;
    for (uint64_t round = 0; round < 4; ++round) {
      const uint64_t f = Mix(key ^ Mix(round * 0x9e3779b97f4a7c15ull ^ r)) & mask;
      const uint64_t t = l ^ f;
      l = r;
      r = t;
    }
    v = (l << half) | r;
  } while (v >= uint64_t(n));
  return int64_t(v);
}

void Append(const Dataset& d, const WindowIndex::Window& w, int32_t segment, PackedSequence& p) {
  p.AppendWindow(d.doc_tokens(w.doc) + w.start, d.doc_modality(w.doc) + w.start, w.inputs, segment);
}

}  // namespace

int64_t ShuffledWindow(const WindowIndex& w, uint64_t seed, int64_t stage, int64_t p) {
  const int64_t n = w.size();
  const int64_t epoch = p / n;
  const uint64_t key = Mix(seed ^ Mix(uint64_t(stage) * 0x100000001b3ull ^ Mix(uint64_t(epoch))));
  return Permute(key, n, p % n);
}

namespace {
// The one packing loop: one sequence takes the windows at stream positions *next, *next + 1, ...
// (window_at gives each one's index) while the next one fits and positions remain (< end); `out` (null:
// advance only) gets them.
template <class WindowAt>
void PackOne(const WindowIndex& w, const WindowAt& window_at, int64_t end, int64_t* next, PackedSequence* out) {
  int64_t used = 0;
  for (int32_t segment = 0; *next < end; ++segment) {
    const WindowIndex::Window win = w[window_at(*next)];
    if (segment > 0 && used + win.inputs > w.seq_len()) break;
    if (out) Append(w.dataset(), win, segment, *out);
    used += win.inputs;
    ++*next;
  }
}

// Training: `batch` sequences from the cursor, in the shuffled stream (which never ends); `out` gets
// sequences [first, first + out->size()) (null: none, advance only).
void Pack(const WindowIndex& w, int64_t batch, DataCursor* c, std::vector<PackedSequence>* out, int64_t first = 0) {
  if (w.size() == 0) return;
  const auto shuffled = [&](int64_t p) { return ShuffledWindow(w, c->seed, c->stage, p); };
  for (int64_t b = 0; b < batch; ++b) {
    const bool mine = out && b >= first && b - first < int64_t(out->size());
    PackOne(w, shuffled, std::numeric_limits<int64_t>::max(), &c->next, mine ? &(*out)[size_t(b - first)] : nullptr);
  }
}
}  // namespace

std::vector<PackedSequence> Dataset::PackAll(int64_t seq_len) const {
  const WindowIndex windows(*this, seq_len);
  std::vector<PackedSequence> out;
  for (int64_t next = 0; next < windows.size();) {  // every window once, in document order
    PackedSequence p;
    PackOne(windows, [](int64_t k) { return k; }, windows.size(), &next, &p);
    p.PadTo(seq_len);
    out.push_back(std::move(p));
  }
  return out;
}

std::vector<PackedSequence> NextBatch(const WindowIndex& w, int64_t batch, DataCursor* c,
                                      const std::vector<int64_t>* keep, int64_t first, int64_t last) {
  if (last < 0 || last > batch) last = batch;
  first = std::clamp<int64_t>(first, 0, last);
  std::vector<PackedSequence> out(static_cast<size_t>(last - first), PackedSequence{keep});
  Pack(w, batch, c, &out, first);  // a dataset without windows gives padding only, which the loss weighting refuses
  for (auto& p : out) p.PadTo(w.seq_len());
  return out;
}

void SkipBatches(const WindowIndex& w, int64_t batch, int64_t steps, DataCursor* c) {
  for (int64_t k = 0; k < steps; ++k) Pack(w, batch, c, nullptr);
}

Status CheckModelReads(const Dataset& d, const ModelConfig& m, const std::string& field) {
  if (d.vision_layout() == VisionLayout::kLwm) {
    RW_REQUIRE(m.vocab_size == d.text_vocab_size() && m.vision_vocab_size >= d.vision_vocab_min(),
               field << ": the dataset lays vision out as LWM does (text ids below " << d.text_vocab_size()
                     << ", a vision vocabulary of at least " << d.vision_vocab_min()
                     << "): the model needs model.vocab_size " << d.text_vocab_size()
                     << " and model.vision_vocab_size >= " << d.vision_vocab_min() << ", it has " << m.vocab_size
                     << " and " << m.vision_vocab_size);
    return Status::Ok();
  }
  RW_REQUIRE(d.vocab_size() <= m.vocab_size, field << ": the dataset's vocabulary (" << d.vocab_size()
                                                   << ") exceeds model.vocab_size " << m.vocab_size);
  return Status::Ok();
}

}  // namespace rw::runtime
