#include "tools/vsockperf/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace vsockd::vsockperf {
namespace {

// Three significant digits, as iperf's unit_snprintf.
std::string ThreeDigits(double v) {
  if (v < 9.995) return fmt::format("{:.2f}", v);
  if (v < 99.95) return fmt::format("{:.1f}", v);
  return fmt::format("{:.0f}", v);
}

}  // namespace

std::string FormatBytes(double bytes) {
  static const char* const kUnits[] = {"Bytes", "KBytes", "MBytes", "GBytes", "TBytes"};
  int u = 0;
  while (bytes >= 1024.0 * 0.9995 && u < 4) {
    bytes /= 1024.0;
    ++u;
  }
  return ThreeDigits(bytes) + " " + kUnits[u];
}

std::string FormatRate(double bps) {
  static const char* const kUnits[] = {"bits/sec", "Kbits/sec", "Mbits/sec", "Gbits/sec",
                                       "Tbits/sec"};
  int u = 0;
  while (bps >= 1000.0 * 0.9995 && u < 4) {
    bps /= 1000.0;
    ++u;
  }
  return ThreeDigits(bps) + " " + kUnits[u];
}

std::string IntervalLine(int id, double start, double end, uint64_t bytes,
                         std::string_view suffix) {
  std::string tag = id < 0 ? "[SUM]" : fmt::format("[{:3d}]", id);
  double secs = end - start;
  double bps = secs > 0 ? static_cast<double>(bytes) * 8.0 / secs : 0;
  std::string line = fmt::format("{} {:6.2f}-{:<6.2f} sec  {:>12}  {:>15}", tag, start, end,
                                 FormatBytes(static_cast<double>(bytes)), FormatRate(bps));
  if (!suffix.empty()) line += fmt::format("  {}", suffix);
  return line;
}

bool ParseSize(std::string_view text, uint64_t* out) {
  if (text.empty()) return false;
  uint64_t mult = 1;
  char last = text.back();
  if (last == 'k' || last == 'K') mult = 1ull << 10;
  if (last == 'm' || last == 'M') mult = 1ull << 20;
  if (last == 'g' || last == 'G') mult = 1ull << 30;
  if (last == 't' || last == 'T') mult = 1ull << 40;
  if (mult != 1) text.remove_suffix(1);
  if (text.empty()) return false;
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    if (v > (UINT64_MAX - 9) / 10) return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (v > UINT64_MAX / mult) return false;
  *out = v * mult;
  return true;
}

Percentiles ComputePercentiles(std::vector<double>& s) {
  Percentiles p;
  if (s.empty()) return p;
  std::sort(s.begin(), s.end());
  p.count = s.size();
  p.min_us = s.front();
  p.p50_us = s[s.size() / 2];
  p.p99_us = s[std::min(s.size() - 1, s.size() * 99 / 100)];
  p.max_us = s.back();
  p.mean_us = std::accumulate(s.begin(), s.end(), 0.0) / static_cast<double>(s.size());
  return p;
}

std::string JsonNumber(double v) {
  if (!std::isfinite(v)) return "0";
  return fmt::format("{}", v);
}

std::string JsonString(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(static_cast<unsigned char>(c)));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

}  // namespace vsockd::vsockperf
