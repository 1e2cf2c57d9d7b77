// The error type of every layer: `Status` (an error as a value, naming what is wrong) and the check macros.
// Header-only (target rw_status) so that storage/, scheduler/ and every other layer can use it without
// linking the compute library.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <sstream>
#include <string>
#include <utility>

namespace rw {

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

// What a caught exception says: its what(), or "unknown exception" (for the handlers that turn one into an
// error: the daemon's HTTP handlers, the job and ring actors).
inline std::string ExceptionMessage(const std::exception_ptr& ep) {
  try {
    if (ep) std::rethrow_exception(ep);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
  }
  return "unknown exception";
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

namespace kernels {
using ::rw::Status;
}  // namespace kernels

}  // namespace rw

// Internal invariant: aborts with a message. Use at boundaries an error Status instead.
#define RW_CHECK(cond) \
  if (cond) {          \
  } else               \
    ::rw::detail::CheckFailure(#cond, __FILE__, __LINE__)

// Returns the Status from the enclosing function when it is an error.
#define RW_RETURN_IF_ERROR(expr)          \
  do {                                    \
    ::rw::Status _st = (expr);   \
    if (!_st.ok()) return _st;            \
  } while (0)

// Returns an error naming the argument when cond is false.
#define RW_REQUIRE(cond, msg)                                        \
  do {                                                               \
    if (!(cond)) {                                                   \
      std::ostringstream _os;                                        \
      _os << msg;                                                    \
      return ::rw::Status::Error(_os.str());                \
    }                                                                \
  } while (0)
