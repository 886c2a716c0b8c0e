// Logging: one line per event on stderr, "2026-11-24T22:58:14.123Z I [tag] message".
//
// Callers: every layer and every program. Threading: safe from any thread (one write(2) per
// line, so lines from several threads never interleave).
//
// Guest-triggered messages (a malformed packet, say) must not let a hostile guest flood the
// log: wrap them in LOG_RATELIMITED, which keeps at most a burst per second per call site and
// reports how many it suppressed.
#pragma once

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <string_view>

namespace vsockd {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3, kOff = 4 };

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
// Parses "debug", "info", "warn", "error", "off". Returns false on anything else.
bool ParseLogLevel(std::string_view text, LogLevel* out);
// Program name printed in every line ("vsockd", "vguest"); default "vsockd".
void SetLogTag(std::string_view tag);

void LogLine(LogLevel level, std::string_view message);

inline bool LogEnabled(LogLevel level) { return level >= GetLogLevel(); }

// Token bucket for one call site: allows `burst` lines, refilled once a second.
class LogRateLimiter {
 public:
  explicit LogRateLimiter(int burst = 10) : burst_(burst) {}
  // True if this line may be printed; *suppressed gets how many were dropped before it.
  bool Allow(uint64_t* suppressed);

 private:
  int burst_;
  std::atomic<int64_t> window_start_ms_{0};
  std::atomic<int> used_{0};
  std::atomic<uint64_t> dropped_{0};
};

}  // namespace vsockd

#define VSOCKD_LOG(level, ...)                              \
  do {                                                      \
    if (::vsockd::LogEnabled(level)) {                      \
      ::vsockd::LogLine(level, ::fmt::format(__VA_ARGS__)); \
    }                                                       \
  } while (0)

#define LOG_DEBUG(...) VSOCKD_LOG(::vsockd::LogLevel::kDebug, __VA_ARGS__)
#define LOG_INFO(...) VSOCKD_LOG(::vsockd::LogLevel::kInfo, __VA_ARGS__)
#define LOG_WARN(...) VSOCKD_LOG(::vsockd::LogLevel::kWarn, __VA_ARGS__)
#define LOG_ERROR(...) VSOCKD_LOG(::vsockd::LogLevel::kError, __VA_ARGS__)

// For messages a guest or frontend can trigger at will.
#define LOG_RATELIMITED(level, ...)                                                         \
  do {                                                                                      \
    static ::vsockd::LogRateLimiter vsockd_limiter_;                                        \
    uint64_t vsockd_dropped_ = 0;                                                           \
    if (::vsockd::LogEnabled(level) && vsockd_limiter_.Allow(&vsockd_dropped_)) {           \
      std::string vsockd_msg_ = ::fmt::format(__VA_ARGS__);                                 \
      if (vsockd_dropped_ > 0) {                                                            \
        vsockd_msg_ += ::fmt::format(" ({} similar messages suppressed)", vsockd_dropped_); \
      }                                                                                     \
      ::vsockd::LogLine(level, vsockd_msg_);                                                \
    }                                                                                       \
  } while (0)
