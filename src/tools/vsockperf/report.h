// vsockperf's output: iperf-style human lines and the JSON document.
//
// Role: client.cc and server.cc format every figure through these helpers, so the human and
// JSON outputs agree. Units as iperf: byte counts in powers of 1024 ("3.21 GBytes"), rates in
// powers of 1000 ("27.6 Gbits/sec"), three significant digits. Threading: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace vsockd::vsockperf {

// "3.21 GBytes", "512 KBytes", "64.0 Bytes".
std::string FormatBytes(double bytes);
// "27.6 Gbits/sec".
std::string FormatRate(double bits_per_second);
// "[  1]   0.00-1.00   sec  3.21 GBytes  27.6 Gbits/sec" (+ "  suffix" when not empty).
// id < 0 prints "[SUM]".
std::string IntervalLine(int id, double start, double end, uint64_t bytes,
                         std::string_view suffix = {});

// Parses "65536", "64K", "64M", "1G" (powers of 1024, as iperf). false on anything else or
// on overflow.
bool ParseSize(std::string_view text, uint64_t* out);

struct Percentiles {
  double min_us = 0, p50_us = 0, p99_us = 0, max_us = 0, mean_us = 0;
  uint64_t count = 0;
};
// Of `samples_us` (reordered). All zero for an empty set.
Percentiles ComputePercentiles(std::vector<double>& samples_us);

// A JSON number that is always valid JSON (no inf/nan): finite values with enough digits.
std::string JsonNumber(double v);
// A JSON string literal with escapes.
std::string JsonString(std::string_view s);

}  // namespace vsockd::vsockperf
