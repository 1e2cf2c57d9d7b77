// Frames from images and videos (runtime/media.h) on files the test makes with the ffmpeg command: count,
// order (LWM's uniform pick, or by fps), size and centre crop, pixel values; frames written as PNG and mp4
// read back; unreadable media named.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "runtime/dataset.h"
#include "runtime/media.h"
#include "runtime/tokenizer.h"
#include "runtime/vqgan.h"

namespace rw::runtime {
namespace {

namespace fs = std::filesystem;

struct Tmp {
  fs::path p = fs::temp_directory_path() / ("rw_media_" + std::to_string(getpid()));
  Tmp() {
    fs::remove_all(p);
    fs::create_directories(p);
  }
  ~Tmp() { fs::remove_all(p); }
};

void Ffmpeg(const std::string& args) {
  const std::string cmd = "ffmpeg -hide_banner -loglevel error -y " + args;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

double Mean(const MediaFrames& m, int64_t k, int channel = -1) {
  const int64_t n = m.size * m.size;
  double s = 0;
  int64_t c = 0;
  for (int64_t i = 0; i < n * 3; ++i)
    if (channel < 0 || i % 3 == channel) s += m.pixels[size_t(k * n * 3 + i)], ++c;
  return s / double(c);
}

// 30 frames at 10 fps, 320x240, frame N a flat grey of luma 16 + 7 N (lossless H.264, so the values survive).
std::string GreyRamp(const Tmp& t) {
  const std::string out = (t.p / "ramp.mp4").string();
  Ffmpeg("-f lavfi -i color=c=black:s=320x240:r=10:d=3 -vf \"geq=lum='16+7*N':cb=128:cr=128\" -c:v libx264 -qp 0 " +
         out);
  return out;
}

TEST(Media, AVideosFramesArePickedUniformlyAsLwmPicksThemInOrder) {
  Tmp t;
  const std::string video = GreyRamp(t);
  MediaFrames m;
  Status st = ReadMediaFrames(video, 32, FrameSelection{8, 0}, &m);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(m.source_frames, 30);
  EXPECT_EQ(m.count, 8);
  EXPECT_EQ(m.picked, UniformFrames(30, 8));
  EXPECT_EQ(m.picked, (std::vector<int64_t>{0, 4, 8, 12, 16, 20, 24, 29}));  // numpy.linspace(0, 29, 8, dtype=int)
  ASSERT_EQ(m.pixels.size(), size_t(8 * 32 * 32 * 3));
  // Luma 16 + 7 N in limited range is grey (7 N) * 255 / 219 in full range; [-1, 1] is / 127.5 - 1.
  double worst = 0;
  for (int64_t k = 0; k < m.count; ++k) {
    const double want = 7.0 * double(m.picked[size_t(k)]) * 255.0 / 219.0 / 127.5 - 1.0;
    worst = std::max(worst, std::fabs(Mean(m, k) - want));
  }
  std::printf("  8 of 30 frames picked %s...; worst frame's mean off its grey by %.4f\n", "0, 4, 8", worst);
  EXPECT_LT(worst, 0.02);
  // Every frame (max_frames 0, and max_frames above the count).
  ASSERT_TRUE(ReadMediaFrames(video, 16, FrameSelection{0, 0}, &m).ok());
  EXPECT_EQ(m.count, 30);
  ASSERT_TRUE(ReadMediaFrames(video, 16, FrameSelection{100, 0}, &m).ok());
  EXPECT_EQ(m.count, 30);
  for (int64_t k = 1; k < m.count; ++k) EXPECT_GT(Mean(m, k), Mean(m, k - 1)) << "frame " << k;
  // By time: 2 frames a second of a 10 fps video are frames 0, 5, 10, ...; capped by max_frames.
  ASSERT_TRUE(ReadMediaFrames(video, 16, FrameSelection{0, 2.0}, &m).ok());
  EXPECT_EQ(m.picked, (std::vector<int64_t>{0, 5, 10, 15, 20, 25}));
  ASSERT_TRUE(ReadMediaFrames(video, 16, FrameSelection{4, 2.0}, &m).ok());
  EXPECT_EQ(m.picked, (std::vector<int64_t>{0, 5, 10, 15}));
  // More frames than a read may hold: refused, naming the way out.
  for (const FrameSelection& too_many : {FrameSelection{0, 0, 10}, FrameSelection{0, 5.0, 10}}) {
    const Status big = ReadMediaFrames(video, 16, too_many, &m);
    ASSERT_FALSE(big.ok());
    EXPECT_NE(big.message().find("pick fewer with max_frames"), std::string::npos) << big.message();
  }
}

TEST(Media, AnImageIsOneFrameResizedAndCutToTheCentre) {
  Tmp t;
  // 64x48: the left 16 columns red, the rest blue. The shorter side (48) goes to 24 and the width to 32, of
  // which the centre 24 columns are kept: columns 4..27 of 32, so red (the first 8 of 32) covers 4 of them.
  const std::string img = (t.p / "flag.png").string();
  Ffmpeg("-f lavfi -i color=c=blue:s=64x48 -vf \"drawbox=x=0:y=0:w=16:h=48:color=red:t=fill\" -frames:v 1 " + img);
  MediaFrames m;
  Status st = ReadMediaFrames(img, 24, FrameSelection{}, &m);
  ASSERT_TRUE(st.ok()) << st.message();
  ASSERT_EQ(m.count, 1);
  EXPECT_EQ(m.source_frames, 1);
  auto px = [&](int64_t i, int64_t j, int c) { return m.pixels[size_t((i * 24 + j) * 3 + c)]; };
  EXPECT_GT(px(12, 1, 0), 0.9f);   // red at the left edge
  EXPECT_LT(px(12, 1, 2), -0.9f);
  EXPECT_LT(px(12, 12, 0), -0.9f);  // blue from the middle on
  EXPECT_GT(px(12, 12, 2), 0.9f);
  int red_columns = 0;
  for (int64_t j = 0; j < 24; ++j) red_columns += px(12, j, 0) > 0;
  EXPECT_EQ(red_columns, 4);
}

TEST(Media, FramesWrittenAsPngAndMp4ReadBack) {
  Tmp t;
  const int64_t size = 32, n = 5;
  std::vector<float> frames(size_t(n * size * size * 3));
  for (int64_t k = 0; k < n; ++k)
    for (int64_t i = 0; i < size; ++i)
      for (int64_t j = 0; j < size; ++j)
        for (int c = 0; c < 3; ++c)
          frames[size_t(((k * size + i) * size + j) * 3 + c)] =
              float(std::sin(0.2 * double(i + 2 * j + 5 * k + 3 * c)) * 0.8);
  const std::string png = (t.p / "one.png").string(), mp4 = (t.p / "five.mp4").string();
  ASSERT_TRUE(WriteMediaFrames(png, size, 1, frames.data(), 1).ok());
  Status st = WriteMediaFrames(mp4, size, n, frames.data(), 4);
  ASSERT_TRUE(st.ok()) << st.message();
  MediaFrames a, b;
  ASSERT_TRUE(ReadMediaFrames(png, size, FrameSelection{}, &a).ok());
  ASSERT_TRUE(ReadMediaFrames(mp4, size, FrameSelection{}, &b).ok());
  double png_err = 0, mp4_err = 0;
  for (int64_t i = 0; i < size * size * 3; ++i) png_err = std::max(png_err, double(std::fabs(a.pixels[size_t(i)] - frames[size_t(i)])));
  for (size_t i = 0; i < frames.size(); ++i) mp4_err += std::fabs(b.pixels[i] - frames[i]);
  mp4_err /= double(frames.size());
  std::printf("  PNG round trip: max abs diff %.4f (8-bit steps: %.4f); mp4 of %lld frames: mean abs diff %.4f\n",
              png_err, 1 / 127.5, (long long)b.count, mp4_err);
  EXPECT_LE(png_err, 0.5 / 127.5 + 1e-6);
  EXPECT_EQ(b.count, n);
  EXPECT_LT(mp4_err, 0.05);
  for (const auto& e : fs::directory_iterator(t.p)) EXPECT_NE(e.path().filename().string().rfind(".tmp-", 0), 0u);
  st = WriteMediaFrames((t.p / "two.png").string(), size, 2, frames.data(), 1);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("a PNG holds one frame"), std::string::npos) << st.message();
  // Frames one at a time: the file appears only at Close, and holds them in order; a writer dropped before
  // Close leaves nothing, not even its temporary file.
  std::unique_ptr<MediaWriter> w;
  const std::string streamed = (t.p / "streamed.mp4").string();
  ASSERT_TRUE(MediaWriter::Open(streamed, size, 4, &w).ok());
  for (int64_t k = 0; k < n; ++k) {
    ASSERT_TRUE(w->Add(frames.data() + k * size * size * 3).ok());
    EXPECT_FALSE(fs::exists(streamed)) << "frame " << k;
  }
  ASSERT_TRUE(w->Close().ok());
  MediaFrames c;
  ASSERT_TRUE(ReadMediaFrames(streamed, size, FrameSelection{}, &c).ok());
  ASSERT_EQ(c.count, n);
  EXPECT_EQ(c.pixels, b.pixels) << "streamed frames differ from the whole write's";
  ASSERT_TRUE(MediaWriter::Open((t.p / "dropped.mp4").string(), size, 4, &w).ok());
  ASSERT_TRUE(w->Add(frames.data()).ok());
  w.reset();
  ASSERT_TRUE(MediaWriter::Open((t.p / "one_more.png").string(), size, 4, &w).ok());
  ASSERT_TRUE(w->Add(frames.data()).ok());
  EXPECT_NE(w->Add(frames.data()).message().find("a PNG holds one frame"), std::string::npos);
  w.reset();
  for (const auto& e : fs::directory_iterator(t.p)) {
    const std::string name = e.path().filename().string();
    EXPECT_TRUE(name != "dropped.mp4" && name != "one_more.png" && name.rfind(".tmp-", 0) != 0) << name;
  }
}

TEST(Media, UnreadableMediaIsNamed) {
  Tmp t;
  const std::string text = (t.p / "notes.mp4").string(), cut = (t.p / "cut.mp4").string();
  std::ofstream(text) << "not a video at all\n";
  const std::string video = GreyRamp(t);
  {
    std::ifstream in(video, std::ios::binary);
    std::string head(600, '\0');
    in.read(head.data(), 600);
    std::ofstream(cut, std::ios::binary) << head;
  }
  const std::string sliver = (t.p / "sliver.png").string();  // 4000 x 2: 64000 pixels wide at size 32
  Ffmpeg("-f lavfi -i color=c=white:s=4000x2 -frames:v 1 " + sliver);
  MediaFrames m;
  for (const std::string& path : {text, cut, (t.p / "missing.mp4").string(), sliver}) {
    const Status st = ReadMediaFrames(path, 16, FrameSelection{}, &m);
    ASSERT_FALSE(st.ok()) << path;
    EXPECT_NE(st.message().find(path), std::string::npos) << st.message();
    std::printf("  %s\n", st.message().c_str());
  }
}

// `data prepare --vqgan`: JSONL records naming a video (4 of its 12 frames, LWM's pick) and an image, their
// frames encoded by the VQGAN (the tiny fixture: 32 x 32 frames, 8 x 8 codes) and laid out as vision
// records are, each frame's codes those of encoding it directly; a record naming a missing file fails
// naming the JSONL line and the file, and --skip-bad counts it instead.
TEST(Media, DataPrepareEncodesImagesAndVideosThroughTheVqgan) {
  Tmp t;
  const std::string vqgan = RW_FIXTURES "/vqgan_tiny";
  Ffmpeg("-f lavfi -i testsrc=size=96x64:rate=6:d=2 -c:v libx264 -pix_fmt yuv420p " + (t.p / "clip.mp4").string());
  Ffmpeg("-f lavfi -i testsrc=size=40x40 -frames:v 1 " + (t.p / "still.png").string());
  std::ofstream(t.p / "in.jsonl") << R"({"video": "clip.mp4", "max_frames": 4, "text": "a test pattern"})" << "\n"
                                  << R"({"image": "still.png", "text": "one frame", "order": "text_vision"})" << "\n";
  PrepareOptions opt;
  opt.inputs = {(t.p / "in.jsonl").string()};
  opt.output = (t.p / "ds").string();
  opt.vqgan = vqgan;
  PrepareReport rep;
  Status st = PrepareDataset(opt, &rep);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(rep.documents, 2);
  Dataset d;
  ASSERT_TRUE(Dataset::Open(opt.output, &d).ok());
  std::unique_ptr<Vqgan> v;
  ASSERT_TRUE(Vqgan::Load(vqgan, kernels::Exec{}, &v).ok());
  const int64_t per = v->config().codes_per_frame(), text_vocab = 259;
  const VisionVocab vision = VisionVocab::Appended(text_vocab, v->config().num_embeddings);
  EXPECT_EQ(d.vocab_size(), vision.total());
  // Document 0: BOS, <vision>, 4 frames of codes each closed by <eof> (the last by <eov>), </vision>, text, EOS.
  MediaFrames m;
  ASSERT_TRUE(ReadMediaFrames((t.p / "clip.mp4").string(), v->config().resolution, FrameSelection{4, 0}, &m).ok());
  EXPECT_EQ(m.picked, (std::vector<int64_t>{0, 3, 7, 11}));
  std::vector<int32_t> codes;
  ASSERT_TRUE(v->Encode(m.count, m.pixels.data(), &codes).ok());
  const int32_t* doc = d.doc_tokens(0);
  const uint8_t* mod = d.doc_modality(0);
  EXPECT_EQ(doc[1], vision.Begin().at(0));
  for (int64_t f = 0; f < 4; ++f) {
    for (int64_t k = 0; k < per; ++k) ASSERT_EQ(doc[2 + f * (per + 1) + k], vision.Code(codes[size_t(f * per + k)]));
    EXPECT_EQ(doc[2 + f * (per + 1) + per], f == 3 ? vision.eov() : vision.eof());
  }
  EXPECT_EQ(doc[2 + 4 * (per + 1)], vision.End().at(0));
  EXPECT_EQ(mod[2], 1);
  EXPECT_EQ(d.doc_len(0), 1 + 1 + 4 * (per + 1) + 1 + int64_t(std::string("a test pattern").size()) + 1);
  // Document 1: the text first, then one frame.
  EXPECT_EQ(d.doc_tokens(1)[1 + 9], vision.Begin().at(0));
  EXPECT_EQ(d.doc_len(1), 1 + 9 + 1 + (per + 1) + 1 + 1);
  std::printf("  2 records -> %lld tokens: a video's 4 of 12 frames and an image, %lld codes a frame\n",
              (long long)d.tokens(), (long long)per);
  // A missing file.
  std::ofstream(t.p / "bad.jsonl") << R"({"image": "still.png"})" << "\n" << R"({"video": "gone.mp4"})" << "\n";
  opt.inputs = {(t.p / "bad.jsonl").string()};
  opt.output = (t.p / "ds2").string();
  st = PrepareDataset(opt, &rep);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("bad.jsonl:2: "), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("gone.mp4"), std::string::npos) << st.message();
  EXPECT_FALSE(fs::exists(t.p / "ds2"));
  std::printf("  %s\n", st.message().c_str());
  opt.skip_bad = true;
  ASSERT_TRUE(PrepareDataset(opt, &rep).ok());
  EXPECT_EQ(rep.documents, 1);
  EXPECT_EQ(rep.skipped, 1);
  // Without a VQGAN, an image record says what it needs.
  opt.vqgan.clear();
  opt.skip_bad = false;
  opt.vision_codes = 64;
  opt.output = (t.p / "ds3").string();
  st = PrepareDataset(opt, &rep);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("need --vqgan DIR"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace rw::runtime
