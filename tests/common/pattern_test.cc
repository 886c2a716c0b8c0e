// tests/common/pattern.h: the streaming forms produce exactly the bytes and checksums of the
// one-shot forms (which every data test relies on), and the verifier finds the first
// wrong byte.
#include "tests/common/pattern.h"

#include <gtest/gtest.h>

#include <numeric>
#include <vector>

namespace vsockd::testing {
namespace {

// The reference implementation the integration harness had before the move: the bytes
// must not change (tests and the guest programs compare checksums across versions).
std::vector<uint8_t> Reference(size_t len, uint64_t seed) {
  std::vector<uint8_t> out(len);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < len; ++i) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    out[i] = static_cast<uint8_t>((x * 0x2545F4914F6CDD1Dull) >> 56);
  }
  return out;
}

TEST(PatternTest, SameBytesAsBefore) {
  for (uint64_t seed : {0ull, 1ull, 2ull, 77ull, 0xFFFFFFFFFFFFFFFFull}) {
    EXPECT_EQ(PatternBytes(10000, seed), Reference(10000, seed)) << seed;
  }
  EXPECT_TRUE(PatternBytes(0, 5).empty());
}

TEST(PatternTest, KnownValues) {
  // Pinned so an accidental change of the generator or the hash is caught even if both
  // the reference above and the header were changed together.
  EXPECT_EQ(Fnv1a({}), 0xcbf29ce484222325ull);
  const uint8_t a[] = {'a'};
  EXPECT_EQ(Fnv1a(a), 0xaf63dc4c8601ec8cull);  // the published FNV-1a 64 of "a"
  const uint8_t foobar[] = {'f', 'o', 'o', 'b', 'a', 'r'};
  EXPECT_EQ(Fnv1a(foobar), 0x85944171f73967e8ull);
  EXPECT_EQ(Fnv1a(PatternBytes(1 << 20, 1)), Fnv1a(Reference(1 << 20, 1)));
}

TEST(PatternTest, SeedsDiffer) {
  EXPECT_NE(PatternBytes(64, 1), PatternBytes(64, 2));
  EXPECT_NE(Fnv1a(PatternBytes(4096, 100)), Fnv1a(PatternBytes(4096, 101)));
}

TEST(PatternTest, StreamFillOfAnySizesConcatenates) {
  const size_t kTotal = 300000;
  const auto want = PatternBytes(kTotal, 42);
  // Chunk sizes that are 0, 1, odd, larger than a page, and one huge last piece.
  const size_t sizes[] = {0, 1, 2, 3, 7, 4095, 4096, 4097, 1, 65536, 12345, 0, 99999};
  PatternStream ps(42);
  std::vector<uint8_t> got;
  for (size_t n : sizes) {
    std::vector<uint8_t> piece(n);
    ps.Fill(piece);
    got.insert(got.end(), piece.begin(), piece.end());
  }
  std::vector<uint8_t> rest(kTotal - got.size());
  ps.Fill(rest);
  got.insert(got.end(), rest.begin(), rest.end());
  EXPECT_EQ(ps.offset(), kTotal);
  EXPECT_EQ(got, want);
}

TEST(PatternTest, Fnv1aStreamMatchesOneShot) {
  const auto data = PatternBytes(100000, 9);
  Fnv1aStream h;
  size_t off = 0, step = 1;
  while (off < data.size()) {
    size_t n = std::min(step, data.size() - off);
    h.Update({data.data() + off, n});
    off += n;
    step = step * 3 + 1;
  }
  EXPECT_EQ(h.count(), data.size());
  EXPECT_EQ(h.hash(), Fnv1a(data));
  // Chaining the one-shot form is the same thing.
  EXPECT_EQ(Fnv1a({data.data() + 500, data.size() - 500}, Fnv1a({data.data(), 500})), Fnv1a(data));
}

TEST(PatternTest, VerifierAcceptsThePatternInPieces) {
  const auto data = PatternBytes(50000, 3);
  PatternVerifier v(3);
  EXPECT_TRUE(v.Check({data.data(), 1}));
  EXPECT_TRUE(v.Check({data.data() + 1, 9000}));
  EXPECT_TRUE(v.Check({data.data() + 9001, data.size() - 9001}));
  EXPECT_FALSE(v.mismatched());
  EXPECT_EQ(v.checked(), data.size());
}

TEST(PatternTest, VerifierFindsTheFirstWrongByte) {
  auto data = PatternBytes(20000, 3);
  data[12345] ^= 0x10;
  data[15000] ^= 0x01;
  PatternVerifier v(3);
  EXPECT_TRUE(v.Check({data.data(), 10000}));
  EXPECT_FALSE(v.Check({data.data() + 10000, 10000}));
  EXPECT_TRUE(v.mismatched());
  EXPECT_EQ(v.mismatch_offset(), 12345u);
  EXPECT_EQ(v.mismatch_got(), data[12345]);
  EXPECT_EQ(v.mismatch_want(), static_cast<uint8_t>(data[12345] ^ 0x10));
  EXPECT_EQ(v.checked(), 10000u);
  // Sticky.
  EXPECT_FALSE(v.Check({data.data(), 0}));
}

TEST(PatternTest, VerifierRejectsAnotherSeedAndShiftedData) {
  const auto other = PatternBytes(1000, 4);
  PatternVerifier a(3);
  EXPECT_FALSE(a.Check(other));
  const auto data = PatternBytes(1000, 3);
  PatternVerifier b(3);
  EXPECT_FALSE(b.Check({data.data() + 1, 999}));  // one byte lost at the start
}

}  // namespace
}  // namespace vsockd::testing
