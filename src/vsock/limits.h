// Per-VM budgets and access policy: what one guest may take from vsockd and whom it may reach.
//
// Role: plain values that the daemon fills from `--vm key=value` / the YAML config
// (daemon/options.cc) and that vsock::Device enforces in one place (the guest is untrusted:
// a guest over budget or against policy loses the connection it asked for, with RST, never
// the device or the other VMs). PortSet is the allow-list type of every policy entry.
// Callers: daemon options (parsing, validation), vsock::Device (enforcement), host backends
// (refusing a host -> guest CONNECT with an ERR line). Threading: immutable values; copy them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace vsockd::vsock {

// A set of 32-bit ports: "any", "none", or a union of inclusive ranges.
// Text form (the config's): "any" | "none" | items joined by ',' or '+', each "P" or "A-B"
// (decimal, A <= B), e.g. "22,1024-2047". A YAML list of such items means the same.
class PortSet {
 public:
  PortSet() = default;  // any
  static PortSet Any() { return PortSet(); }
  static PortSet None();
  // Parses the text form; EINVAL naming the bad item otherwise.
  static Result<PortSet> Parse(std::string_view text);
  // Adds [first, last] (merged with overlapping or adjacent ranges). Turns "any" into a list.
  void AddRange(uint32_t first, uint32_t last);

  bool Contains(uint32_t port) const;
  bool is_any() const { return any_; }
  bool is_none() const { return !any_ && ranges_.empty(); }
  // "any", "none" or the canonical list ("22,1024-2047"); Parse(ToString()) round-trips.
  std::string ToString() const;

  struct Range {
    uint32_t first = 0;
    uint32_t last = 0;
  };
  const std::vector<Range>& ranges() const { return ranges_; }

  friend bool operator==(const PortSet& a, const PortSet& b);

 private:
  bool any_ = true;
  std::vector<Range> ranges_;  // sorted, disjoint, non-adjacent; meaningful when !any_
};

// Which sibling VM ports a guest may reach: a CID (or every sibling) and its ports.
// Text form: "CID:PORTS" or "*:PORTS" or "CID" (every port), e.g. "4:1000-2000".
struct SiblingRule {
  static constexpr uint64_t kAnyCid = UINT64_MAX;
  uint64_t cid = kAnyCid;
  PortSet ports;

  static Result<SiblingRule> Parse(std::string_view text);
  std::string ToString() const;
  friend bool operator==(const SiblingRule& a, const SiblingRule& b) = default;
};

// Whom a guest may reach, and which of its ports host programs may reach. The defaults are
// vsockd's behaviour without a policy: everything (siblings still need a shared group, which
// the daemon's router checks; this policy narrows it further).
struct AccessPolicy {
  // guest -> host: host ports (dst_cid 2) this guest may connect to.
  PortSet host_ports;
  // host -> guest: guest ports that host programs may reach through the hybrid socket
  // ("CONNECT P") and the run directory.
  PortSet guest_ports;
  // guest -> sibling VM: allowed when any rule matches (cid and port). Default: one rule
  // "*:any" (every sibling the groups allow).
  std::vector<SiblingRule> siblings{SiblingRule{}};

  bool AllowsHostPort(uint32_t port) const { return host_ports.Contains(port); }
  bool AllowsGuestPort(uint32_t port) const { return guest_ports.Contains(port); }
  bool AllowsSibling(uint64_t cid, uint32_t port) const;
  friend bool operator==(const AccessPolicy& a, const AccessPolicy& b) = default;
};

// What one VM may take from vsockd. Every limit is per VM (one guest cannot use up another's
// share); 0 means "no limit" only where the comment says so.
struct VmBudget {
  // Connections (open, being set up or lingering) in both directions. A REQUEST beyond it
  // gets RST; a host CONNECT beyond it gets "ERR ...".
  uint32_t max_connections = 4096;
  // Guest bytes waiting in vsockd for slow host readers, summed over the VM's connections.
  // Credit keeps it: when the VM nears it, new and refreshed credit advertises a smaller
  // buf_alloc, so the guest may not send more than fits.
  uint64_t max_buffered_bytes = 32ull << 20;
  // Host file descriptors held for the VM's connections (host sockets and connects in
  // progress). The daemon lowers it to the VM's share of RLIMIT_NOFILE (see
  // docs/SECURITY.md); a connect beyond it gets RST.
  uint32_t max_host_fds = 4096;
  // New connections per second (either direction), as a token bucket of `connect_burst`
  // tokens refilled at `connect_rate` a second. 0 rate: no limit.
  uint32_t connect_rate = 2000;
  uint32_t connect_burst = 4000;
  friend bool operator==(const VmBudget& a, const VmBudget& b) = default;
};

}  // namespace vsockd::vsock
