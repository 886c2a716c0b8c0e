#include "daemon/limit_keys.h"

#include <fmt/format.h>

#include <array>
#include <charconv>

#include "daemon/options.h"

namespace vsockd::daemon {

const char* const kLimitKeys =
    "max-connections, max-buffered-bytes, max-host-fds, connect-rate, connect-burst, "
    "allow-host-ports, allow-guest-ports, allow-siblings";

namespace {

// Ranges: a budget of 0 connections or fds would make a VM useless, so 0 is refused there;
// the upper bounds keep arithmetic (rates, sums over VMs) far from overflow.
constexpr uint64_t kMaxCount = 1u << 24;
constexpr uint64_t kMinBuffered = 64 * 1024;  // one 64 KiB packet must fit
constexpr uint64_t kMaxBuffered = 1ull << 40;
constexpr uint64_t kMaxRate = 10'000'000;

Result<uint64_t> ParseCount(std::string_view key, std::string_view text, uint64_t min,
                            uint64_t max) {
  uint64_t value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec == std::errc::invalid_argument || ptr != end) {
    return MakeError(EINVAL, "{}: '{}' is not a decimal number", key, text);
  }
  if (ec == std::errc::result_out_of_range || value < min || value > max) {
    return MakeError(ERANGE, "{}: {} is out of range {}..{}", key, text, min, max);
  }
  return value;
}

Result<std::vector<vsock::SiblingRule>> ParseSiblingRules(std::string_view text) {
  if (text == "any" || text == "*") return std::vector<vsock::SiblingRule>{vsock::SiblingRule{}};
  if (text == "none") return std::vector<vsock::SiblingRule>{};
  std::vector<vsock::SiblingRule> rules;
  size_t start = 0;
  for (;;) {
    size_t end = text.find(';', start);
    std::string_view item = text.substr(start, end == std::string_view::npos ? end : end - start);
    auto rule = vsock::SiblingRule::Parse(item);
    if (!rule.ok()) return MakeError(EINVAL, "allow-siblings: {}", rule.error().context);
    rules.push_back(std::move(*rule));
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return rules;
}

}  // namespace

Result<uint64_t> ParseSize(std::string_view key, std::string_view text) {
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  std::string_view number = text.substr(0, digits);
  std::string_view suffix = text.substr(digits);
  unsigned shift = 0;
  static constexpr std::array<std::pair<std::string_view, unsigned>, 9> kSuffixes{{
      {"", 0},
      {"K", 10},
      {"KiB", 10},
      {"M", 20},
      {"MiB", 20},
      {"G", 30},
      {"GiB", 30},
      {"k", 10},
      {"B", 0},
  }};
  bool known = false;
  for (const auto& [name, bits] : kSuffixes) {
    if (suffix == name) {
      shift = bits;
      known = true;
    }
  }
  if (number.empty() || !known) {
    return MakeError(EINVAL, "{}: '{}' is not a size (bytes, or a number with K, M or G)", key,
                     text);
  }
  uint64_t value = 0;
  auto [ptr, ec] = std::from_chars(number.data(), number.data() + number.size(), value);
  if (ec != std::errc() || ptr != number.data() + number.size() || value > (UINT64_MAX >> shift)) {
    return MakeError(ERANGE, "{}: {} is too large", key, text);
  }
  return value << shift;
}

bool IsLimitKey(std::string_view key) {
  static constexpr std::array<std::string_view, 8> kKeys{
      "max-connections", "max-buffered-bytes", "max-host-fds",      "connect-rate",
      "connect-burst",   "allow-host-ports",   "allow-guest-ports", "allow-siblings"};
  for (std::string_view k : kKeys) {
    if (k == key) return true;
  }
  return false;
}

Status SetLimitKey(VmOptions* vm, std::string_view key, std::string_view value) {
  vsock::VmBudget& b = vm->budget;
  vsock::AccessPolicy& p = vm->policy;
  if (key == "max-connections") {
    auto v = ParseCount(key, value, 1, kMaxCount);
    if (!v.ok()) return v.take_error();
    b.max_connections = static_cast<uint32_t>(*v);
  } else if (key == "max-buffered-bytes") {
    auto v = ParseSize(key, value);
    if (!v.ok()) return v.take_error();
    if (*v < kMinBuffered || *v > kMaxBuffered) {
      return MakeError(ERANGE, "{}: {} is out of range 64K..1024G", key, value);
    }
    b.max_buffered_bytes = *v;
  } else if (key == "max-host-fds") {
    auto v = ParseCount(key, value, 1, kMaxCount);
    if (!v.ok()) return v.take_error();
    b.max_host_fds = static_cast<uint32_t>(*v);
    vm->max_host_fds_explicit = true;
  } else if (key == "connect-rate") {
    auto v = ParseCount(key, value, 0, kMaxRate);
    if (!v.ok()) return v.take_error();
    b.connect_rate = static_cast<uint32_t>(*v);
  } else if (key == "connect-burst") {
    auto v = ParseCount(key, value, 1, kMaxRate);
    if (!v.ok()) return v.take_error();
    b.connect_burst = static_cast<uint32_t>(*v);
  } else if (key == "allow-host-ports" || key == "allow-guest-ports") {
    auto ports = vsock::PortSet::Parse(value);
    if (!ports.ok()) return MakeError(EINVAL, "{}: {}", key, ports.error().context);
    (key == "allow-host-ports" ? p.host_ports : p.guest_ports) = std::move(*ports);
  } else if (key == "allow-siblings") {
    auto rules = ParseSiblingRules(value);
    if (!rules.ok()) return rules.take_error();
    p.siblings = std::move(*rules);
  } else {
    return MakeError(EINVAL, "'{}' is not a budget or policy key ({})", key, kLimitKeys);
  }
  return OkStatus();
}

}  // namespace vsockd::daemon
