// Frames from image and video files (FFmpeg's libavformat, libavcodec and libswscale), as LWM prepares them
// for its VQGAN: each frame's shorter side resized to `size` (bicubic), the centre size x size cut out, RGB
// scaled to [-1, 1]. A video's frames are all of them up to max_frames, else max_frames picked uniformly
// from the first to the last (LWM's linspace over the frame indices), or one frame every 1/fps seconds.
// Images (PNG, JPEG, anything FFmpeg reads) are a video of one frame.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/common.h"

namespace rw::runtime {

using kernels::Status;

struct FrameSelection {
  int64_t max_frames = 0;  // > 0: at most this many, spread uniformly (LWM's rule)
  double fps = 0;          // > 0: one frame every 1/fps seconds of the video's time (then capped by max_frames)
  // The most frames one read holds (each 0.75 MiB at 256 x 256): a selection that picks more is refused,
  // naming max_frames and fps, rather than filling the host's memory. 4096 frames of 257 tokens fill a
  // million-token context.
  int64_t limit = 4096;
};

struct MediaFrames {
  int64_t size = 0;                // frames are size x size
  int64_t count = 0;               // frames read
  int64_t source_frames = 0;       // frames the file holds (counted)
  std::vector<int64_t> picked;     // the source index of each frame read
  std::vector<float> pixels;       // count x (size, size, 3), NHWC, in [-1, 1]
};

// Errors name the file and what is wrong with it (no video stream, an undecodable frame, ...).
Status ReadMediaFrames(const std::string& path, int64_t size, const FrameSelection& sel, MediaFrames* out);

// The source indices LWM keeps of `total` frames under max_frames: all, or linspace(0, total - 1, max_frames)
// truncated to integers.
std::vector<int64_t> UniformFrames(int64_t total, int64_t max_frames);

// Frames written one at a time (a video's memory is one frame's, however long it is): Open, Add each frame
// (size, size, 3) in [-1, 1], Close. A PNG holds one frame; a video (mp4: H.264 where the build's
// libavcodec has it, else MPEG-4 Part 2) any number, at `fps`. The file is written under a temporary name
// and renamed into place by Close; a writer destroyed before Close (or after an error) leaves nothing.
class MediaWriter {
 public:
  static Status Open(const std::string& path, int64_t size, double fps, std::unique_ptr<MediaWriter>* out);
  ~MediaWriter();
  MediaWriter(const MediaWriter&) = delete;
  MediaWriter& operator=(const MediaWriter&) = delete;
  Status Add(const float* pixels);
  Status Close();
  int64_t frames() const;  // added so far

 private:
  MediaWriter();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Writes frames (count x (size, size, 3) in [-1, 1]) as a PNG (count 1) or a video (mp4: H.264 where the
// build's libavcodec has it, else MPEG-4 Part 2) at `fps`. The file is written under a temporary name and
// renamed into place.
Status WriteMediaFrames(const std::string& path, int64_t size, int64_t count, const float* pixels, double fps);

}  // namespace rw::runtime
