#include "vsock/connection.h"

#include <cstring>

namespace vsockd::vsock {

void ByteQueue::Append(const void* p, size_t n) {
  if (n == 0) return;
  if (head_ == data_.size()) {
    data_.clear();
    head_ = 0;
  } else if (head_ > 0 && head_ >= data_.size() / 2) {
    // Compact when the consumed prefix is at least half: each byte moves O(1) times.
    data_.erase(data_.begin(), data_.begin() + static_cast<ptrdiff_t>(head_));
    head_ = 0;
  }
  const auto* b = static_cast<const uint8_t*>(p);
  data_.insert(data_.end(), b, b + n);
}

void ByteQueue::Consume(size_t n) {
  head_ += std::min(n, size());
  if (head_ == data_.size()) {
    data_.clear();
    head_ = 0;
  }
}

const char* ConnStateName(ConnState state) {
  switch (state) {
    case ConnState::kConnectingHost:
      return "connecting-host";
    case ConnState::kConnectingGuest:
      return "connecting-guest";
    case ConnState::kEstablished:
      return "established";
    case ConnState::kClosing:
      return "closing";
  }
  return "?";
}

}  // namespace vsockd::vsock
