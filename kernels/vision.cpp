// Entry points of the VQGAN's ops: validate once, then call the device's backend table.
#include "kernels/vision.h"

#include <limits>

#include "kernels/backend.h"

namespace rw::kernels {
namespace {

#define RW_NONNULL(ptr) RW_REQUIRE((ptr) != nullptr, #ptr ": null pointer")

Status Table(const Exec& ex, Op op, const Backend** b) {
  RW_REQUIRE(ex.num_threads >= 0, "num_threads: must be >= 0, got " << ex.num_threads);
  RW_RETURN_IF_ERROR(Dispatch(ex.device, op, DType::kF32, b));
  return Status::Ok();
}

// Every extent positive and every product of them (the tensors' element counts) far from overflowing.
Status CheckExtents(std::initializer_list<std::pair<const char*, int64_t>> dims) {
  double elements = 1;
  for (const auto& [name, v] : dims) {
    RW_REQUIRE(v >= 1, name << ": must be >= 1, got " << v);
    elements *= double(v);
  }
  RW_REQUIRE(elements < 9e15, "the tensor's extents multiply to " << elements << " elements");
  return Status::Ok();
}

}  // namespace

Conv2dShape Conv2dShape::Same(int64_t n, int64_t h, int64_t w, int64_t cin, int64_t cout, int64_t k) {
  Conv2dShape s;
  s.n = n, s.h = h, s.w = w, s.cin = cin, s.cout = cout, s.kh = k, s.kw = k, s.stride = 1;
  s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = (k - 1) / 2;
  return s;
}

Status Conv2dForward(const Exec& ex, const Conv2dShape& s, const float* x, const float* w, const float* bias,
                     float* y) {
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(Table(ex, Op::kConv2dForward, &b));
  RW_RETURN_IF_ERROR(CheckExtents({{"n", s.n}, {"h", s.h}, {"w", s.w}, {"cin", s.cin}}));
  RW_RETURN_IF_ERROR(CheckExtents({{"kh", s.kh}, {"kw", s.kw}, {"cin", s.cin}, {"cout", s.cout}}));
  RW_REQUIRE(s.stride >= 1, "stride: must be >= 1, got " << s.stride);
  for (const auto& [name, p] : {std::pair<const char*, int64_t>{"pad_top", s.pad_top}, {"pad_left", s.pad_left},
                                {"pad_bottom", s.pad_bottom}, {"pad_right", s.pad_right}})
    RW_REQUIRE(p >= 0 && p < (s.stride == 1 ? s.kh + s.kw : 2 * (s.kh + s.kw)), name << ": " << p << " is not a padding "
                                                                                       "of a " << s.kh << "x" << s.kw << " kernel");
  RW_REQUIRE(s.h + s.pad_top + s.pad_bottom >= s.kh && s.w + s.pad_left + s.pad_right >= s.kw,
             "kh, kw: the " << s.kh << "x" << s.kw << " kernel is larger than the padded " << s.h << "x" << s.w
                            << " input");
  RW_NONNULL(x);
  RW_NONNULL(w);
  RW_NONNULL(y);
  RW_REQUIRE(b->conv2d_forward, "device: the " << b->name << " backend has no conv2d_forward");
  return b->conv2d_forward(ex, s, x, w, bias, y);
}

Status GroupNormForward(const Exec& ex, int64_t n, int64_t pixels, int64_t c, int64_t groups, float eps,
                        const float* x, const float* scale, const float* bias, bool silu, float* y) {
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(Table(ex, Op::kGroupNormForward, &b));
  RW_RETURN_IF_ERROR(CheckExtents({{"n", n}, {"pixels", pixels}, {"c", c}}));
  RW_REQUIRE(groups >= 1 && c % groups == 0, "groups: " << groups << " does not divide the " << c << " channels");
  RW_REQUIRE(eps > 0 && eps < 1, "eps: must be in (0, 1), got " << eps);
  RW_NONNULL(x);
  RW_NONNULL(scale);
  RW_NONNULL(bias);
  RW_NONNULL(y);
  RW_REQUIRE(b->group_norm_forward, "device: the " << b->name << " backend has no group_norm_forward");
  return b->group_norm_forward(ex, n, pixels, c, groups, eps, x, scale, bias, silu, y);
}

Status UpsampleNearest2x(const Exec& ex, int64_t n, int64_t h, int64_t w, int64_t c, const float* x, float* y) {
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(Table(ex, Op::kUpsampleNearest, &b));
  RW_RETURN_IF_ERROR(CheckExtents({{"n", n}, {"h", 2 * h}, {"w", 2 * w}, {"c", c}}));
  RW_NONNULL(x);
  RW_NONNULL(y);
  RW_REQUIRE(b->upsample_nearest2x, "device: the " << b->name << " backend has no upsample_nearest2x");
  return b->upsample_nearest2x(ex, n, h, w, c, x, y);
}

Status NearestCode(const Exec& ex, int64_t n, int64_t d, int64_t k, const float* z, const float* codebook,
                   int32_t* index) {
  const Backend* b = nullptr;
  RW_RETURN_IF_ERROR(Table(ex, Op::kNearestCode, &b));
  RW_RETURN_IF_ERROR(CheckExtents({{"n", n}, {"d", d}}));
  RW_RETURN_IF_ERROR(CheckExtents({{"k", k}, {"d", d}}));
  RW_REQUIRE(k <= std::numeric_limits<int32_t>::max(), "k: " << k << " codes do not fit an int32 index");
  RW_NONNULL(z);
  RW_NONNULL(codebook);
  RW_NONNULL(index);
  RW_REQUIRE(b->nearest_code, "device: the " << b->name << " backend has no nearest_code");
  return b->nearest_code(ex, n, d, k, z, codebook, index);
}

}  // namespace rw::kernels
