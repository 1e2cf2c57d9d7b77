#include "runtime/media.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/imgutils.h>
#include <libavutil/log.h>
#include <libswscale/swscale.h>
}

namespace rw::runtime {
namespace {

std::string AvError(int err) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {};
  av_strerror(err, buf, sizeof(buf));
  return buf;
}

struct FormatCloser {
  void operator()(AVFormatContext* f) const { avformat_close_input(&f); }
};
struct CodecCloser {
  void operator()(AVCodecContext* c) const { avcodec_free_context(&c); }
};
struct FrameCloser {
  void operator()(AVFrame* f) const { av_frame_free(&f); }
};
struct PacketCloser {
  void operator()(AVPacket* p) const { av_packet_free(&p); }
};
struct SwsCloser {
  void operator()(SwsContext* s) const { sws_freeContext(s); }
};
using Format = std::unique_ptr<AVFormatContext, FormatCloser>;
using Codec = std::unique_ptr<AVCodecContext, CodecCloser>;
using Frame = std::unique_ptr<AVFrame, FrameCloser>;
using Packet = std::unique_ptr<AVPacket, PacketCloser>;

// FFmpeg's own messages stay quiet: errors reach the user through our Status, naming the file.
void Quiet() {
  static const bool once = [] {
    av_log_set_level(AV_LOG_FATAL);
    return true;
  }();
  (void)once;
}

Status Open(const std::string& path, Format* fmt, int* stream) {
  Quiet();
  AVFormatContext* f = nullptr;
  int rc = avformat_open_input(&f, path.c_str(), nullptr, nullptr);
  RW_REQUIRE(rc >= 0, path << ": cannot open as an image or video: " << AvError(rc));
  fmt->reset(f);
  rc = avformat_find_stream_info(f, nullptr);
  RW_REQUIRE(rc >= 0, path << ": cannot read its streams: " << AvError(rc));
  rc = av_find_best_stream(f, AVMEDIA_TYPE_VIDEO, -1, -1, nullptr, 0);
  RW_REQUIRE(rc >= 0, path << ": holds no image or video stream");
  *stream = rc;
  const AVCodecParameters* par = f->streams[rc]->codecpar;
  RW_REQUIRE(par->width > 0 && par->height > 0 && par->width <= 16384 && par->height <= 16384,
             path << ": a frame of " << par->width << "x" << par->height << " is not an image size this reads");
  return Status::Ok();
}

// Frame k of the decoded stream into out (size x size x 3 in [-1, 1]): shorter side to `size` (bicubic),
// the centre cut out, as LWM's _process_frame does with PIL.
Status Convert(const std::string& path, const AVFrame* fr, int64_t size, SwsContext** sws, std::vector<uint8_t>* rgb,
               float* out) {
  const int w = fr->width, h = fr->height;
  RW_REQUIRE(w > 0 && h > 0, path << ": a frame without a size");
  int nw, nh;
  if (w < h) {
    nw = int(size);
    nh = int(double(size) * double(h) / double(w));
  } else {
    nh = int(size);
    nw = int(double(size) * double(w) / double(h));
  }
  nw = std::max<int>(nw, int(size));
  nh = std::max<int>(nh, int(size));
  // A sliver (16384 x 1) would resize to millions of pixels along its long side before the crop.
  RW_REQUIRE(std::max(nw, nh) <= 64 * size, path << ": a " << w << "x" << h << " frame is too far from square (its "
                                                 "sides differ more than 64 times) to cut a " << size << "x" << size
                                                 << " centre from");
  *sws = sws_getCachedContext(*sws, w, h, AVPixelFormat(fr->format), nw, nh, AV_PIX_FMT_RGB24,
                              SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT, nullptr, nullptr, nullptr);
  RW_REQUIRE(*sws, path << ": cannot convert its pixel format " << fr->format << " to RGB");
  rgb->resize(size_t(nw) * size_t(nh) * 3);
  uint8_t* dst[4] = {rgb->data(), nullptr, nullptr, nullptr};
  int stride[4] = {nw * 3, 0, 0, 0};
  const int rows = sws_scale(*sws, fr->data, fr->linesize, 0, h, dst, stride);
  RW_REQUIRE(rows == nh, path << ": scaling a frame gave " << rows << " rows of " << nh);
  const int64_t left = (nw - size) / 2, top = (nh - size) / 2;
  for (int64_t i = 0; i < size; ++i) {
    const uint8_t* src = rgb->data() + ((top + i) * nw + left) * 3;
    for (int64_t j = 0; j < size * 3; ++j) out[i * size * 3 + j] = float(src[j]) / 127.5f - 1.f;
  }
  return Status::Ok();
}

}  // namespace

std::vector<int64_t> UniformFrames(int64_t total, int64_t max_frames) {
  std::vector<int64_t> out;
  if (total <= 0) return out;
  if (max_frames <= 0 || total <= max_frames) {
    for (int64_t i = 0; i < total; ++i) out.push_back(i);
    return out;
  }
  // numpy.linspace(0, total - 1, max_frames, dtype=int): start + k * step, truncated.
  const double step = max_frames > 1 ? double(total - 1) / double(max_frames - 1) : 0.0;
  for (int64_t k = 0; k < max_frames; ++k) out.push_back(k + 1 == max_frames && max_frames > 1 ? total - 1 : int64_t(double(k) * step));
  return out;
}

Status ReadMediaFrames(const std::string& path, int64_t size, const FrameSelection& sel, MediaFrames* out) {
  RW_REQUIRE(size >= 1 && size <= 8192, "frame size: must be in [1, 8192], got " << size);
  RW_REQUIRE(sel.max_frames >= 0 && sel.max_frames <= 1000000, path << ": max_frames: must be in [0, 10^6]");
  RW_REQUIRE(sel.fps >= 0 && sel.fps <= 1000, path << ": fps: must be in [0, 1000]");
  MediaFrames m;
  m.size = size;
  int stream = -1;
  Packet pkt(av_packet_alloc());
  Frame fr(av_frame_alloc());
  RW_REQUIRE(pkt && fr, path << ": out of memory");
  std::vector<int64_t> want;  // source indices (uniform selection); empty with fps
  if (sel.fps <= 0) {
    Format f;
    RW_RETURN_IF_ERROR(Open(path, &f, &stream));
    int64_t packets = 0;
    while (av_read_frame(f.get(), pkt.get()) >= 0) {
      packets += pkt->stream_index == stream;
      av_packet_unref(pkt.get());
    }
    RW_REQUIRE(packets > 0, path << ": holds no frame");
    m.source_frames = packets;
    want = UniformFrames(packets, sel.max_frames);
    RW_REQUIRE(int64_t(want.size()) <= sel.limit,
               path << ": " << want.size() << " frames would be read, more than " << sel.limit
                    << " (pick fewer with max_frames or fps)");
  }
  Format f;
  RW_RETURN_IF_ERROR(Open(path, &f, &stream));
  AVStream* st = f->streams[stream];
  const AVCodec* codec = avcodec_find_decoder(st->codecpar->codec_id);
  RW_REQUIRE(codec, path << ": no decoder for its codec (" << avcodec_get_name(st->codecpar->codec_id) << ")");
  Codec dec(avcodec_alloc_context3(codec));
  RW_REQUIRE(dec, path << ": out of memory");
  int rc = avcodec_parameters_to_context(dec.get(), st->codecpar);
  RW_REQUIRE(rc >= 0, path << ": " << AvError(rc));
  dec->thread_count = 1;
  rc = avcodec_open2(dec.get(), codec, nullptr);
  RW_REQUIRE(rc >= 0, path << ": cannot open its " << codec->name << " decoder: " << AvError(rc));
  SwsContext* sws_raw = nullptr;  // (sws_getCachedContext replaces it as frame sizes change; freed below)
  std::vector<uint8_t> rgb;
  int64_t index = 0;  // decoded frames so far
  size_t next = 0;    // the next wanted index (uniform)
  double next_time = -1;
  const double tb = av_q2d(st->time_base);
  const int64_t frame_floats = size * size * 3;
  auto take = [&](const AVFrame* frame) -> Status {
    bool keep;
    if (sel.fps > 0) {
      const int64_t ts = frame->best_effort_timestamp != AV_NOPTS_VALUE ? frame->best_effort_timestamp : frame->pts;
      const double t = ts != AV_NOPTS_VALUE ? double(ts) * tb : double(index) / 25.0;
      if (next_time < 0) next_time = t;
      keep = t + 1e-9 >= next_time && (sel.max_frames <= 0 || m.count < sel.max_frames);
      if (keep) next_time += 1.0 / sel.fps;
    } else {
      keep = next < want.size() && want[next] == index;
      if (keep) ++next;
    }
    if (keep) {
      RW_REQUIRE(m.count < sel.limit, path << ": more than " << sel.limit << " frames would be read at " << sel.fps
                                           << " a second (pick fewer with max_frames or a lower fps)");
      m.pixels.resize(size_t((m.count + 1) * frame_floats));
      RW_RETURN_IF_ERROR(Convert(path, frame, size, &sws_raw, &rgb, m.pixels.data() + m.count * frame_floats));
      m.picked.push_back(index);
      ++m.count;
    }
    ++index;
    return Status::Ok();
  };
  auto drain = [&]() -> Status {
    for (;;) {
      const int r = avcodec_receive_frame(dec.get(), fr.get());
      if (r == AVERROR(EAGAIN) || r == AVERROR_EOF) return Status::Ok();
      RW_REQUIRE(r >= 0, path << ": frame " << index << " cannot be decoded: " << AvError(r));
      const Status s = take(fr.get());
      av_frame_unref(fr.get());
      RW_RETURN_IF_ERROR(s);
    }
  };
  Status result = Status::Ok();
  while (result.ok() && av_read_frame(f.get(), pkt.get()) >= 0) {
    if (pkt->stream_index == stream) {
      rc = avcodec_send_packet(dec.get(), pkt.get());
      if (rc < 0 && rc != AVERROR(EAGAIN))
        result = Status::Error(path + ": frame " + std::to_string(index) + " cannot be decoded: " + AvError(rc));
      else
        result = drain();
    }
    av_packet_unref(pkt.get());
    if (sel.fps <= 0 && next >= want.size()) break;  // every wanted frame taken
  }
  if (result.ok()) {
    avcodec_send_packet(dec.get(), nullptr);  // flush
    result = drain();
  }
  sws_freeContext(sws_raw);
  RW_RETURN_IF_ERROR(result);
  RW_REQUIRE(m.count > 0, path << ": no frame could be decoded");
  if (sel.fps > 0) m.source_frames = index;
  *out = std::move(m);
  return Status::Ok();
}

struct MediaWriter::Impl {
  std::filesystem::path final_path, tmp;
  int64_t size = 0, written = 0;
  bool png = false, failed = false, closed = false;
  std::vector<uint8_t> rgb;
  // PNG: the one frame, encoded on Close. Video: the container, the encoder and the converter.
  std::unique_ptr<AVFormatContext, void (*)(AVFormatContext*)> oc{nullptr, [](AVFormatContext* c) {
                                                                      if (c->pb) avio_closep(&c->pb);
                                                                      avformat_free_context(c);
                                                                    }};
  Codec enc;
  AVStream* st = nullptr;
  std::unique_ptr<SwsContext, SwsCloser> sws;
  Frame fr;
  Packet pkt;

  Status Fail(const std::string& why) {
    failed = true;
    oc.reset();
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    return Status::Error(final_path.string() + ": " + why);
  }
  void ToRgb(const float* p) {
    for (size_t i = 0; i < rgb.size(); ++i)
      rgb[i] = uint8_t(std::clamp(std::lround((double(p[i]) + 1.0) * 127.5), 0L, 255L));
  }
  // Sends a frame (null: the flush) and writes every packet the encoder has ready.
  bool Send(AVFrame* frame) {
    if (avcodec_send_frame(enc.get(), frame) < 0) return false;
    for (;;) {
      const int r = avcodec_receive_packet(enc.get(), pkt.get());
      if (r == AVERROR(EAGAIN) || r == AVERROR_EOF) return true;
      if (r < 0) return false;
      if (pkt->duration <= 0) pkt->duration = 1;  // one frame: else the container ends at the last frame's start
      av_packet_rescale_ts(pkt.get(), enc->time_base, st->time_base);
      pkt->stream_index = st->index;
      if (av_interleaved_write_frame(oc.get(), pkt.get()) < 0) return false;
    }
  }
};

MediaWriter::MediaWriter() : impl_(std::make_unique<Impl>()) {}

MediaWriter::~MediaWriter() {
  if (!impl_->closed && !impl_->tmp.empty()) {  // never finished: nothing of it stays
    impl_->oc.reset();
    std::error_code ec;
    std::filesystem::remove(impl_->tmp, ec);
  }
}

Status MediaWriter::Open(const std::string& path, int64_t size, double fps, std::unique_ptr<MediaWriter>* out) {
  Quiet();
  RW_REQUIRE(size >= 2 && size % 2 == 0 && size <= 8192, path << ": frame size must be even, in [2, 8192]");
  RW_REQUIRE(fps > 0 && fps <= 1000, path << ": fps must be in (0, 1000]");
  namespace fs = std::filesystem;
  std::unique_ptr<MediaWriter> w(new MediaWriter());
  Impl& m = *w->impl_;
  m.final_path = path;
  m.size = size;
  const std::string ext = m.final_path.extension().string();
  m.png = ext == ".png";
  m.tmp = m.final_path.parent_path() / (".tmp-" + m.final_path.stem().string() + "-" + std::to_string(::getpid()) + ext);
  m.rgb.resize(size_t(size * size * 3));
  m.fr.reset(av_frame_alloc());
  m.pkt.reset(av_packet_alloc());
  if (!m.fr || !m.pkt) return m.Fail("out of memory");
  if (m.png) {
    *out = std::move(w);
    return Status::Ok();
  }
  AVFormatContext* oc_raw = nullptr;
  int rc = avformat_alloc_output_context2(&oc_raw, nullptr, nullptr, m.tmp.c_str());
  if (rc < 0 || !oc_raw) return m.Fail("no container format for the extension '" + ext + "' (.mp4, .mkv, ...)");
  m.oc.reset(oc_raw);
  const AVCodec* codec = avcodec_find_encoder_by_name("libx264");
  if (!codec) codec = avcodec_find_encoder(AV_CODEC_ID_MPEG4);
  if (!codec) return m.Fail("this FFmpeg has neither an H.264 nor an MPEG-4 encoder");
  m.st = avformat_new_stream(m.oc.get(), nullptr);
  m.enc.reset(avcodec_alloc_context3(codec));
  if (!m.st || !m.enc) return m.Fail("out of memory");
  AVCodecContext* enc = m.enc.get();
  enc->width = int(size), enc->height = int(size), enc->pix_fmt = AV_PIX_FMT_YUV420P;
  const AVRational rate = av_d2q(fps, 1000);
  enc->time_base = av_inv_q(rate);
  enc->framerate = rate;
  enc->gop_size = 12;
  enc->max_b_frames = 0;  // no reordering: every frame of a short clip is shown (mp4 edit lists drop B-frame lead-ins)
  enc->thread_count = 1;
  if (codec->id == AV_CODEC_ID_MPEG4) enc->bit_rate = 4000000;
  if (m.oc->oformat->flags & AVFMT_GLOBALHEADER) enc->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
  AVDictionary* opts = nullptr;
  if (codec->id == AV_CODEC_ID_H264) av_dict_set(&opts, "crf", "18", 0);
  rc = avcodec_open2(enc, codec, &opts);
  av_dict_free(&opts);
  if (rc < 0) return m.Fail("cannot open the " + std::string(codec->name) + " encoder: " + AvError(rc));
  avcodec_parameters_from_context(m.st->codecpar, enc);
  m.st->time_base = enc->time_base;
  if (avio_open(&m.oc->pb, m.tmp.c_str(), AVIO_FLAG_WRITE) < 0) return m.Fail("cannot create " + m.tmp.string());
  if (avformat_write_header(m.oc.get(), nullptr) < 0) return m.Fail("cannot write the container's header");
  m.sws.reset(sws_getContext(int(size), int(size), AV_PIX_FMT_RGB24, int(size), int(size), AV_PIX_FMT_YUV420P,
                             SWS_BICUBIC, nullptr, nullptr, nullptr));
  m.fr->format = AV_PIX_FMT_YUV420P, m.fr->width = int(size), m.fr->height = int(size);
  if (!m.sws || av_frame_get_buffer(m.fr.get(), 0) < 0) return m.Fail("out of memory");
  *out = std::move(w);
  return Status::Ok();
}

Status MediaWriter::Add(const float* pixels) {
  Impl& m = *impl_;
  RW_REQUIRE(!m.failed && !m.closed, m.final_path.string() << ": the writer has " << (m.closed ? "closed" : "failed"));
  RW_REQUIRE(pixels, m.final_path.string() << ": no pixels");
  if (m.png) {
    RW_REQUIRE(m.written == 0, m.final_path.string() << ": a PNG holds one frame; write frames as a video (.mp4)");
    m.ToRgb(pixels);  // encoded on Close
    ++m.written;
    return Status::Ok();
  }
  if (av_frame_make_writable(m.fr.get()) < 0) return m.Fail("out of memory");
  m.ToRgb(pixels);
  const uint8_t* src[4] = {m.rgb.data(), nullptr, nullptr, nullptr};
  const int stride[4] = {int(m.size * 3), 0, 0, 0};
  sws_scale(m.sws.get(), src, stride, 0, int(m.size), m.fr->data, m.fr->linesize);
  m.fr->pts = m.written;
  if (!m.Send(m.fr.get())) return m.Fail("encoding frame " + std::to_string(m.written) + " failed");
  ++m.written;
  return Status::Ok();
}

Status MediaWriter::Close() {
  Impl& m = *impl_;
  RW_REQUIRE(!m.failed && !m.closed, m.final_path.string() << ": the writer has " << (m.closed ? "closed" : "failed"));
  if (m.written == 0) return m.Fail("no frame to write");
  const int64_t size = m.size;
  if (m.png) {
    const AVCodec* codec = avcodec_find_encoder(AV_CODEC_ID_PNG);
    if (!codec) return m.Fail("this FFmpeg has no PNG encoder");
    Codec enc(avcodec_alloc_context3(codec));
    if (!enc) return m.Fail("out of memory");
    enc->width = int(size), enc->height = int(size), enc->pix_fmt = AV_PIX_FMT_RGB24, enc->time_base = {1, 1};
    if (avcodec_open2(enc.get(), codec, nullptr) < 0) return m.Fail("cannot open the PNG encoder");
    AVFrame* fr = m.fr.get();
    fr->format = AV_PIX_FMT_RGB24, fr->width = int(size), fr->height = int(size);
    if (av_frame_get_buffer(fr, 0) < 0) return m.Fail("out of memory");
    for (int64_t i = 0; i < size; ++i) std::copy_n(m.rgb.data() + i * size * 3, size * 3, fr->data[0] + i * fr->linesize[0]);
    if (avcodec_send_frame(enc.get(), fr) < 0 || avcodec_send_frame(enc.get(), nullptr) < 0 ||
        avcodec_receive_packet(enc.get(), m.pkt.get()) < 0)
      return m.Fail("PNG encoding failed");
    FILE* out = std::fopen(m.tmp.c_str(), "wb");
    if (!out) return m.Fail("cannot create " + m.tmp.string());
    const bool ok = std::fwrite(m.pkt->data, 1, size_t(m.pkt->size), out) == size_t(m.pkt->size) &&
                    std::fflush(out) == 0 && ::fsync(fileno(out)) == 0;
    std::fclose(out);
    if (!ok) return m.Fail("write failed");
  } else {
    if (!m.Send(nullptr)) return m.Fail("flushing the encoder failed");
    if (av_write_trailer(m.oc.get()) < 0) return m.Fail("cannot finish the container");
    avio_flush(m.oc->pb);
    m.oc.reset();  // closes the file
  }
  std::error_code ec;
  std::filesystem::rename(m.tmp, m.final_path, ec);
  if (ec) return m.Fail("cannot rename " + m.tmp.string() + ": " + ec.message());
  m.closed = true;
  return Status::Ok();
}

int64_t MediaWriter::frames() const { return impl_->written; }

Status WriteMediaFrames(const std::string& path, int64_t size, int64_t count, const float* pixels, double fps) {
  RW_REQUIRE(pixels || count == 0, path << ": no pixels");
  std::unique_ptr<MediaWriter> w;  // its checks: the size, fps, one frame a PNG, at least one frame
  RW_RETURN_IF_ERROR(MediaWriter::Open(path, size, fps, &w));
  for (int64_t k = 0; k < count; ++k) RW_RETURN_IF_ERROR(w->Add(pixels + k * size * size * 3));
  return w->Close();
}

}  // namespace rw::runtime
