// ByteWriter / ByteReader: unsigned integers as little-endian bytes, for the small binary
// formats vsockd passes between its own processes (the vhost-user session state, the session
// keeper's link). Not for guest wire formats: those have their own structs (vsock/packet.h,
// vhost_user/protocol.h).
//
// ByteReader never reads past its input: Get() fails instead (and the caller refuses the
// whole message). Get() stores through memcpy, so the destination may be a member of a packed
// struct. Callers: vhost_user/session_state.cc, daemon/session_keeper.cc. Threading: values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

namespace vsockd {

class ByteWriter {
 public:
  template <typename T>
  void Put(T v) {
    static_assert(std::is_unsigned_v<T>);
    for (size_t i = 0; i < sizeof(T); ++i)
      out_.push_back(static_cast<uint8_t>(uint64_t{v} >> (8 * i)));
  }
  void Append(std::span<const uint8_t> bytes) {
    out_.insert(out_.end(), bytes.begin(), bytes.end());
  }
  std::vector<uint8_t>& bytes() { return out_; }
  std::vector<uint8_t> Take() { return std::move(out_); }

 private:
  std::vector<uint8_t> out_;
};

class ByteReader {
 public:
  explicit ByteReader(std::span<const uint8_t> in) : in_(in) {}
  template <typename T>
  bool Get(T* v) {
    static_assert(std::is_unsigned_v<T>);
    if (in_.size() - pos_ < sizeof(T)) return false;
    uint64_t x = 0;
    for (size_t i = 0; i < sizeof(T); ++i) x |= uint64_t{in_[pos_ + i]} << (8 * i);
    pos_ += sizeof(T);
    const T value = static_cast<T>(x);
    std::memcpy(v, &value, sizeof(T));
    return true;
  }
  // What is left after the values read so far.
  std::span<const uint8_t> rest() const { return in_.subspan(pos_); }
  bool done() const { return pos_ == in_.size(); }

 private:
  std::span<const uint8_t> in_;
  size_t pos_ = 0;
};

}  // namespace vsockd
