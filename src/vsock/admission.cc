#include "vsock/admission.h"

#include <algorithm>

#include "vsock/packet.h"

namespace vsockd::vsock {

const char* RefusalKey(Refusal r) {
  switch (r) {
    case Refusal::kNone:
      return "none";
    case Refusal::kConnections:
      return "max-connections";
    case Refusal::kHostFds:
      return "max-host-fds";
    case Refusal::kConnectRate:
      return "connect-rate";
    case Refusal::kHostPort:
      return "allow-host-ports";
    case Refusal::kGuestPort:
      return "allow-guest-ports";
    case Refusal::kSibling:
      return "allow-siblings";
    case Refusal::kCount:
      break;
  }
  return "?";
}

bool IsPolicyRefusal(Refusal r) {
  return r == Refusal::kHostPort || r == Refusal::kGuestPort || r == Refusal::kSibling;
}

Admission::Admission(VmBudget budget, AccessPolicy policy, uint32_t buf_alloc)
    : budget_(budget), policy_(std::move(policy)), buf_alloc_(buf_alloc) {
  tokens_ = budget_.connect_burst;
}

void Admission::Update(VmBudget budget, AccessPolicy policy) {
  budget_ = budget;
  policy_ = std::move(policy);
  tokens_ = std::min<double>(tokens_, budget_.connect_burst);
}

Refusal Admission::Count(Refusal r) {
  if (r != Refusal::kNone) ++refused_[static_cast<size_t>(r)];
  return r;
}

Refusal Admission::CheckBudgets(const Usage& use, Clock::time_point now) {
  if (use.connections >= budget_.max_connections) return Refusal::kConnections;
  if (use.host_fds >= budget_.max_host_fds) return Refusal::kHostFds;
  if (budget_.connect_rate != 0) {
    if (refilled_ != Clock::time_point{}) {
      const double seconds = std::chrono::duration<double>(now - refilled_).count();
      tokens_ = std::min<double>(budget_.connect_burst, tokens_ + seconds * budget_.connect_rate);
    }
    refilled_ = now;
    if (tokens_ < 1) return Refusal::kConnectRate;
    tokens_ -= 1;
  }
  return Refusal::kNone;
}

Refusal Admission::AdmitFromGuest(uint64_t peer_cid, uint32_t peer_port, const Usage& use,
                                  Clock::time_point now) {
  if (peer_cid == VMADDR_CID_HOST) {
    if (!policy_.AllowsHostPort(peer_port)) return Count(Refusal::kHostPort);
  } else if (!policy_.AllowsSibling(peer_cid, peer_port)) {
    return Count(Refusal::kSibling);
  }
  return Count(CheckBudgets(use, now));
}

Refusal Admission::AdmitToGuest(uint32_t guest_port, bool from_sibling, const Usage& use,
                                Clock::time_point now) {
  if (!from_sibling && !policy_.AllowsGuestPort(guest_port)) return Count(Refusal::kGuestPort);
  return Count(CheckBudgets(use, now));
}

uint64_t Admission::Reserve(size_t connections) const {
  const uint64_t slots =
      budget_.max_connections > connections ? budget_.max_connections - connections : 0;
  return slots * kMinBufAlloc;
}

uint32_t Admission::OpenBufAlloc(size_t connections_before) {
  // What the budget leaves once every other free slot keeps its reserve (this slot's own
  // reserve is part of it).
  const uint64_t used = committed_ + Reserve(connections_before + 1);
  const uint64_t room = budget_.max_buffered_bytes > used ? budget_.max_buffered_bytes - used : 0;
  const uint64_t b = std::max<uint64_t>(kMinBufAlloc, std::min<uint64_t>(buf_alloc_, room));
  committed_ += b;
  return static_cast<uint32_t>(b);
}

uint32_t Admission::BufAlloc(uint32_t current, uint32_t returned, size_t connections) {
  const uint64_t budget = budget_.max_buffered_bytes;
  const uint64_t others = committed_ - current;
  const uint64_t reserve = Reserve(connections);
  // Above 3/4 of the budget, connections move toward a fair share of it; below, they grow
  // toward the configured size, but only up to that mark (so they do not swing back and forth).
  const uint64_t mark = budget / 4 * 3;
  uint64_t target;
  if (committed_ + reserve > mark && connections > 0) {
    const uint64_t share = budget > reserve ? (budget - reserve) / connections : 0;
    target = std::clamp<uint64_t>(share, kMinBufAlloc, buf_alloc_);
  } else {
    const uint64_t room = mark > others + reserve ? mark - others - reserve : 0;
    target = std::min<uint64_t>(buf_alloc_, std::max<uint64_t>(current, room));
  }
  // Never beyond the budget (with every free slot's reserve kept)...
  const uint64_t cap = budget > others + reserve ? budget - others - reserve : 0;
  target = std::min(target, std::max<uint64_t>(cap, kMinBufAlloc));
  // ...and never taking back more than this header returns.
  const uint64_t floor = current > returned ? current - returned : 0;
  const uint64_t next = std::max(target, floor);
  committed_ = others + next;
  return static_cast<uint32_t>(next);
}

}  // namespace vsockd::vsock
