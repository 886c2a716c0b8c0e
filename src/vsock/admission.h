// Admission: the one place where a VM's budgets and access policy (vsock/limits.h) are
// enforced: whether a new connection may open, and how much credit (buf_alloc) each
// connection is given.
//
// Role: vsock::Device asks it before every connection it opens (a guest REQUEST, a host
// CONNECT, a sibling's connect) and before every header it sends the guest (BufAlloc). It
// keeps the counters of refusals, and the token bucket of the connect rate.
//
// Credit and the buffered-bytes budget. vsockd buffers a connection's guest data only within
// the buf_alloc it advertised, so the sum of the advertised buf_allocs bounds what a VM can
// make vsockd hold. Admission keeps that sum (`committed`) within max_buffered_bytes:
//  - every connection slot not yet used keeps kMinBufAlloc in reserve, so a new connection
//    always gets at least that much (the configuration checks max_buffered_bytes >=
//    max_connections * kMinBufAlloc);
//  - a new connection gets the configured buf_alloc while the budget has room, else what is
//    left (at least kMinBufAlloc), and grows back to the configured size as its data flows;
//  - once the VM holds more than 3/4 of its budget, connections are brought toward a fair
//    share (budget / connections) as they move data; below that mark they grow back toward
//    the configured size, up to the mark;
//  - credit is never taken back faster than the guest's data is forwarded: the new buf_alloc
//    is at least the old one minus the bytes this header returns, so the guest's view of its
//    credit never goes below zero (Linux before 6.x computes it in u32 and would wrap).
// A connection that goes idle keeps its credit until it moves data again.
// Callers: vsock::Device. Threading: the device's loop thread.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>

#include "vsock/limits.h"

namespace vsockd::vsock {

inline constexpr uint32_t kMinBufAlloc = 4096;

enum class Refusal : uint8_t {
  kNone = 0,
  kConnections,  // max_connections
  kHostFds,      // max_host_fds
  kConnectRate,  // connect_rate / connect_burst
  kHostPort,     // policy: allow-host-ports
  kGuestPort,    // policy: allow-guest-ports
  kSibling,      // policy: allow-siblings
  kCount,
};
// "max-connections", "allow-host-ports", ... (the config key that refused).
const char* RefusalKey(Refusal r);
bool IsPolicyRefusal(Refusal r);

class Admission {
 public:
  using Clock = std::chrono::steady_clock;

  Admission(VmBudget budget, AccessPolicy policy, uint32_t buf_alloc);
  // New budgets and policy (a reload); they apply to connections opened from now on.
  void Update(VmBudget budget, AccessPolicy policy);

  struct Usage {
    size_t connections = 0;  // open, being set up, closing
    size_t host_fds = 0;     // host sockets held and connects in progress
  };
  // A connection the guest asks for, to (peer_cid, peer_port): the host (CID 2) or a sibling.
  Refusal AdmitFromGuest(uint64_t peer_cid, uint32_t peer_port, const Usage& use,
                         Clock::time_point now);
  // A connection to guest_port that the host (hybrid CONNECT, run dir) or a sibling
  // (from_sibling: the caller's policy was checked on its side) asks for.
  Refusal AdmitToGuest(uint32_t guest_port, bool from_sibling, const Usage& use,
                       Clock::time_point now);

  // Credit. Opened/Closed keep `committed` (the sum of buf_allocs) in step.
  uint32_t OpenBufAlloc(size_t connections_before);
  void Closed(uint32_t buf_alloc) { committed_ -= buf_alloc; }
  // The buf_alloc for the next header of a connection that has `current` and whose header
  // returns `returned` bytes of credit (fwd_cnt - the fwd_cnt last sent).
  uint32_t BufAlloc(uint32_t current, uint32_t returned, size_t connections);
  // Bytes held outside any connection's credit (a vanished guest's data, lingering).
  void Hold(uint64_t bytes) { committed_ += bytes; }
  void Release(uint64_t bytes) { committed_ -= bytes; }

  uint64_t committed() const { return committed_; }
  uint64_t refused(Refusal r) const { return refused_[static_cast<size_t>(r)]; }
  const VmBudget& budget() const { return budget_; }
  const AccessPolicy& policy() const { return policy_; }

 private:
  Refusal Count(Refusal r);
  Refusal CheckBudgets(const Usage& use, Clock::time_point now);
  uint64_t Reserve(size_t connections) const;

  VmBudget budget_;
  AccessPolicy policy_;
  uint32_t buf_alloc_;  // the configured per-connection buf_alloc (--tx-buffer-size)
  uint64_t committed_ = 0;
  double tokens_ = 0;
  Clock::time_point refilled_{};
  std::array<uint64_t, static_cast<size_t>(Refusal::kCount)> refused_{};
};

}  // namespace vsockd::vsock
