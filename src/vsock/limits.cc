// PortSet, SiblingRule and AccessPolicy: parsing, matching, canonical text (limits.h).
#include "vsock/limits.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>

namespace vsockd::vsock {
namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

Result<uint32_t> ParsePort(std::string_view text, std::string_view item) {
  text = Trim(text);
  uint64_t value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end || value > UINT32_MAX) {
    return MakeError(EINVAL, "bad port '{}' in '{}' (a decimal number up to 4294967295)", text,
                     item);
  }
  return static_cast<uint32_t>(value);
}

}  // namespace

PortSet PortSet::None() {
  PortSet set;
  set.any_ = false;
  return set;
}

void PortSet::AddRange(uint32_t first, uint32_t last) {
  if (any_) {
    any_ = false;
    ranges_.clear();
  }
  if (first > last) std::swap(first, last);
  // ranges_ stays sorted, disjoint and non-adjacent, so the ranges [first, last] overlaps or
  // touches are consecutive: from the first one that does not end before first - 1, while they
  // start at or below last + 1 (computed in 64 bits: the ends may be the maximum port). One
  // binary search and one splice, not a sort per item: a list of n items parses in O(n log n)
  // plus the moves, where sorting every time made long lists quadratic.
  auto lo = std::lower_bound(ranges_.begin(), ranges_.end(), first, [](const Range& r, uint32_t f) {
    return static_cast<uint64_t>(r.last) + 1 < f;
  });
  auto hi = lo;
  while (hi != ranges_.end() && hi->first <= static_cast<uint64_t>(last) + 1) {
    first = std::min(first, hi->first);
    last = std::max(last, hi->last);
    ++hi;
  }
  if (lo == hi) {
    ranges_.insert(lo, Range{first, last});
  } else {
    *lo = Range{first, last};
    ranges_.erase(lo + 1, hi);
  }
}

Result<PortSet> PortSet::Parse(std::string_view text) {
  std::string_view all = Trim(text);
  if (all == "any" || all == "*") return PortSet::Any();
  if (all == "none") return PortSet::None();
  if (all.empty()) {
    return MakeError(EINVAL, "empty port list (use 'none' to allow no port, 'any' for all)");
  }
  PortSet set = PortSet::None();
  size_t pos = 0;
  while (pos <= all.size()) {
    size_t next = all.find_first_of(",+", pos);
    std::string_view item =
        Trim(all.substr(pos, next == std::string_view::npos ? next : next - pos));
    if (item.empty()) return MakeError(EINVAL, "empty item in port list '{}'", all);
    size_t dash = item.find('-');
    if (dash == std::string_view::npos) {
      auto port = ParsePort(item, item);
      if (!port) return port.take_error();
      set.AddRange(*port, *port);
    } else {
      auto first = ParsePort(item.substr(0, dash), item);
      if (!first) return first.take_error();
      auto last = ParsePort(item.substr(dash + 1), item);
      if (!last) return last.take_error();
      if (*first > *last) return MakeError(EINVAL, "port range '{}' ends before it starts", item);
      set.AddRange(*first, *last);
    }
    if (next == std::string_view::npos) break;
    pos = next + 1;
  }
  return set;
}

bool PortSet::Contains(uint32_t port) const {
  if (any_) return true;
  // ranges_ is sorted and disjoint: the candidate is the last range starting at or below port.
  auto it = std::upper_bound(ranges_.begin(), ranges_.end(), port,
                             [](uint32_t p, const Range& r) { return p < r.first; });
  if (it == ranges_.begin()) return false;
  --it;
  return port <= it->last;
}

std::string PortSet::ToString() const {
  if (any_) return "any";
  if (ranges_.empty()) return "none";
  std::string out;
  for (const Range& r : ranges_) {
    if (!out.empty()) out += ',';
    out += r.first == r.last ? fmt::format("{}", r.first) : fmt::format("{}-{}", r.first, r.last);
  }
  return out;
}

bool operator==(const PortSet& a, const PortSet& b) {
  if (a.any_ != b.any_) return false;
  if (a.any_) return true;
  return std::equal(a.ranges_.begin(), a.ranges_.end(), b.ranges_.begin(), b.ranges_.end(),
                    [](const PortSet::Range& x, const PortSet::Range& y) {
                      return x.first == y.first && x.last == y.last;
                    });
}

Result<SiblingRule> SiblingRule::Parse(std::string_view text) {
  std::string_view all = Trim(text);
  size_t colon = all.find(':');
  std::string_view cid_text = Trim(all.substr(0, colon));
  SiblingRule rule;
  if (cid_text != "*" && cid_text != "any") {
    uint64_t cid = 0;
    const char* end = cid_text.data() + cid_text.size();
    auto [ptr, ec] = std::from_chars(cid_text.data(), end, cid);
    // 3 is the lowest guest CID; sockaddr_vm holds 32 bits and 0xFFFFFFFF is VMADDR_CID_ANY.
    if (cid_text.empty() || ec != std::errc() || ptr != end || cid < 3 || cid >= UINT32_MAX) {
      return MakeError(EINVAL, "bad sibling CID '{}' in '{}' (3..4294967294 or '*')", cid_text,
                       all);
    }
    rule.cid = cid;
  }
  if (colon != std::string_view::npos) {
    // Ports after the colon use ',' only if the caller did not split on it; '+' always works.
    auto ports = PortSet::Parse(all.substr(colon + 1));
    if (!ports) return MakeError(EINVAL, "sibling rule '{}': {}", all, ports.error().context);
    rule.ports = std::move(*ports);
  }
  return rule;
}

std::string SiblingRule::ToString() const {
  std::string cid_text = cid == kAnyCid ? "*" : fmt::format("{}", cid);
  return fmt::format("{}:{}", cid_text, ports.ToString());
}

bool AccessPolicy::AllowsSibling(uint64_t cid, uint32_t port) const {
  return std::any_of(siblings.begin(), siblings.end(), [&](const SiblingRule& rule) {
    return (rule.cid == SiblingRule::kAnyCid || rule.cid == cid) && rule.ports.Contains(port);
  });
}

}  // namespace vsockd::vsock
