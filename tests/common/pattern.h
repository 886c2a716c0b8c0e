// The data pattern and checksum every data test uses, on the host and inside the test guest:
// PatternBytes(len, seed) (deterministic pseudo-random bytes, different at every offset so
// lost, duplicated or reordered bytes are detected) and a 64-bit FNV-1a checksum, plus
// streaming forms of both so a 256 MiB transfer never needs 256 MiB of memory.
//
// Callers: the integration harness (tests/integration/harness.h includes this), the tools'
// tests, the benchmark, and the guest programs (tests/guest/), which are linked statically
// into the test guest: so header-only, standard library only.
// Threading: plain values; one object per thread.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace vsockd::testing {

inline constexpr uint64_t kFnv1aInit = 0xcbf29ce484222325ull;

// 64-bit FNV-1a of `data`, continuing from `h` (chain calls to hash a stream in pieces).
inline uint64_t Fnv1a(std::span<const uint8_t> data, uint64_t h = kFnv1aInit) {
  for (uint8_t b : data) {
    h ^= b;
    h *= 0x100000001b3ull;
  }
  return h;
}

// The pattern as a stream: Fill() produces the next bytes of the sequence, so
// PatternBytes(n, s) == the concatenation of any sequence of Fill() calls on
// PatternStream(s) whose sizes add up to n.
class PatternStream {
 public:
  explicit PatternStream(uint64_t seed) : x_(seed * 0x9E3779B97F4A7C15ull + 1) {}

  void Fill(std::span<uint8_t> out) {
    uint64_t x = x_;
    for (uint8_t& b : out) {
      // xorshift64*: cheap, and different for every offset so reordering is detected.
      x ^= x >> 12;
      x ^= x << 25;
      x ^= x >> 27;
      b = static_cast<uint8_t>((x * 0x2545F4914F6CDD1Dull) >> 56);
    }
    x_ = x;
    offset_ += out.size();
  }
  // Bytes produced so far.
  uint64_t offset() const { return offset_; }

 private:
  uint64_t x_;
  uint64_t offset_ = 0;
};

// Deterministic pseudo-random bytes: the first `len` bytes of PatternStream(seed).
inline std::vector<uint8_t> PatternBytes(size_t len, uint64_t seed) {
  std::vector<uint8_t> out(len);
  PatternStream(seed).Fill(out);
  return out;
}

// FNV-1a over a stream that arrives in pieces, with a byte count.
class Fnv1aStream {
 public:
  void Update(std::span<const uint8_t> data) {
    hash_ = Fnv1a(data, hash_);
    count_ += data.size();
  }
  uint64_t hash() const { return hash_; }
  uint64_t count() const { return count_; }

 private:
  uint64_t hash_ = kFnv1aInit;
  uint64_t count_ = 0;
};

// Checks that a stream arriving in pieces is exactly PatternStream(seed), byte for byte,
// and remembers where it first differed.
class PatternVerifier {
 public:
  explicit PatternVerifier(uint64_t seed) : expected_(seed) {}

  // Compares the next bytes; false (and mismatch_offset() set) at the first difference.
  // After a mismatch every later call returns false.
  bool Check(std::span<const uint8_t> data) {
    if (mismatched_) return false;
    uint8_t want[4096];
    size_t done = 0;
    while (done < data.size()) {
      size_t n = std::min(sizeof want, data.size() - done);
      expected_.Fill({want, n});
      for (size_t i = 0; i < n; ++i) {
        if (data[done + i] != want[i]) {
          mismatched_ = true;
          mismatch_offset_ = checked_ + done + i;
          mismatch_got_ = data[done + i];
          mismatch_want_ = want[i];
          return false;
        }
      }
      done += n;
    }
    checked_ += data.size();
    return true;
  }
  // Bytes that matched so far.
  uint64_t checked() const { return checked_; }
  bool mismatched() const { return mismatched_; }
  uint64_t mismatch_offset() const { return mismatch_offset_; }
  uint8_t mismatch_got() const { return mismatch_got_; }
  uint8_t mismatch_want() const { return mismatch_want_; }

 private:
  PatternStream expected_;
  uint64_t checked_ = 0;
  bool mismatched_ = false;
  uint64_t mismatch_offset_ = 0;
  uint8_t mismatch_got_ = 0, mismatch_want_ = 0;
};

}  // namespace vsockd::testing
