// Shared vocabulary of the kernel library: error values, element types, devices, strided views.
//
// Dimension letters used across kernels/ (fixed once, see STYLE.md):
//   S tokens per device (Sq query rows, Sk key rows), H heads (Hq query, Hkv key/value), D head dim,
//   E model width, F FFN width, V vocabulary, Bq/Bk block sizes.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <utility>

namespace rw::kernels {

// An error as a value: every public entry point returns one, naming the argument that is wrong.
class [[nodiscard]] Status {
 public:
  Status() = default;
  static Status Ok() { return Status(); }
  static Status Error(std::string msg) { return Status(std::move(msg), true); }
  bool ok() const { return !failed_; }
  const std::string& message() const { return msg_; }
  explicit operator bool() const { return ok(); }

 private:
  Status(std::string m, bool failed) : msg_(std::move(m)), failed_(failed) {}
  std::string msg_;
  bool failed_ = false;
};

// Which implementation runs an op. kRef is the spec (scalar, fp64 accumulation); kCpu is the fast CPU
// path; kCuda expects device pointers.
enum class Device : int { kRef = 0, kCpu = 1, kCuda = 2 };
const char* DeviceName(Device d);

// Element type of activations. Statistics (lse, delta), gradients of attention inputs and optimizer
// state are always fp32.
enum class DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };
const char* DTypeName(DType t);
inline int DTypeSize(DType t) { return t == DType::kF32 ? 4 : 2; }

// True when this build contains the CUDA backend and a CUDA device is present.
bool CudaAvailable();

// A (S, H, D) tensor whose last dimension is contiguous: element (s, h, d) is at
// data[s * stride_s + h * stride_h + d]. Strides count elements, not bytes.
struct View3 {
  void* data = nullptr;
  int64_t stride_s = 0;
  int64_t stride_h = 0;
  template <class T>
  T* at(int64_t s, int64_t h) const {
    return static_cast<T*>(data) + s * stride_s + h * stride_h;
  }
};

// Packs (S, H, D) contiguous strides.
inline View3 Dense3(const void* p, int64_t h, int64_t d) {
  return View3{const_cast<void*>(p), h * d, d};
}

namespace detail {
// Builds the message of a failed RW_CHECK and aborts when it goes out of scope.
class CheckFailure {
 public:
  CheckFailure(const char* cond, const char* file, int line) {
    os_ << file << ":" << line << ": check failed: " << cond << ": ";
  }
  [[noreturn]] ~CheckFailure() {
    std::fprintf(stderr, "%s\n", os_.str().c_str());
    std::abort();
  }
  template <class T>
  CheckFailure& operator<<(const T& v) {
    os_ << v;
    return *this;
  }

 private:
  std::ostringstream os_;
};
}  // namespace detail

}  // namespace rw::kernels

// Internal invariant: aborts with a message. Use at boundaries an error Status instead.
#define RW_CHECK(cond) \
  if (cond) {          \
  } else               \
    ::rw::kernels::detail::CheckFailure(#cond, __FILE__, __LINE__)

// Returns the Status from the enclosing function when it is an error.
#define RW_RETURN_IF_ERROR(expr)          \
  do {                                    \
    ::rw::kernels::Status _st = (expr);   \
    if (!_st.ok()) return _st;            \
  } while (0)

// Returns an error naming the argument when cond is false.
#define RW_REQUIRE(cond, msg)                                        \
  do {                                                               \
    if (!(cond)) {                                                   \
      std::ostringstream _os;                                        \
      _os << msg;                                                    \
      return ::rw::kernels::Status::Error(_os.str());                \
    }                                                                \
  } while (0)
