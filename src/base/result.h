// Error and Result<T>: the project's error type, used instead of exceptions.
//
// Role: every fallible function in every layer returns Status (Result<void>) or Result<T>.
// An Error carries an errno-style code (so callers can branch on ECONNREFUSED, ETIMEDOUT...)
// and a human-readable context built by the layer that failed ("connect /run/x_52: ...").
// Callers: everyone. Threading: plain values, no shared state.
//
// We do not use std::expected: the project builds as C++20 because clang-14 (libFuzzer) and
// clang-tidy-14 cannot parse libstdc++ 12's C++23 <expected>.
#pragma once

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

namespace vsockd {

struct Error {
  int code = 0;         // errno value (EINVAL, ECONNREFUSED, ...); never 0 for a real error
  std::string context;  // what was being done, for a person to read

  std::string ToString() const {
    if (code == 0) return context;
    return fmt::format("{}: {}", context, std::strerror(code));
  }
};

// Builds an Error with a formatted context.
template <typename... Args>
Error MakeError(int code, fmt::format_string<Args...> fmt_str, Args&&... args) {
  return Error{code, fmt::format(fmt_str, std::forward<Args>(args)...)};
}

// Builds an Error from the current errno (read before formatting, which may clobber it).
template <typename... Args>
Error ErrnoError(fmt::format_string<Args...> fmt_str, Args&&... args) {
  int saved = errno;
  return Error{saved, fmt::format(fmt_str, std::forward<Args>(args)...)};
}

template <typename T>
class [[nodiscard]] Result {
 public:
  // Implicit on purpose: `return value;` and `return MakeError(...);` both read naturally.
  Result(T value) : v_(std::move(value)) {}      // NOLINT(google-explicit-constructor)
  Result(Error error) : v_(std::move(error)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const { return std::get<1>(v_); }
  Error&& take_error() { return std::get<1>(std::move(v_)); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), failed_(true) {}  // NOLINT

  bool ok() const { return !failed_; }
  explicit operator bool() const { return ok(); }
  const Error& error() const { return error_; }
  Error&& take_error() { return std::move(error_); }

 private:
  Error error_;
  bool failed_ = false;
};

using Status = Result<void>;

inline Status OkStatus() { return Status(); }

}  // namespace vsockd

// Propagates an error from an expression that yields a Status/Result.
#define VSOCKD_RETURN_IF_ERROR(expr)      \
  do {                                    \
    auto vsockd_status_ = (expr);         \
    if (!vsockd_status_.ok()) {           \
      return vsockd_status_.take_error(); \
    }                                     \
  } while (0)
