#include "base/byte_codec.h"

#include <gtest/gtest.h>

namespace vsockd {
namespace {

TEST(ByteCodecTest, LittleEndianRoundTrip) {
  ByteWriter w;
  w.Put(uint8_t{0xab});
  w.Put(uint16_t{0x1234});
  w.Put(uint32_t{0xdeadbeef});
  w.Put(uint64_t{0x0102030405060708ull});
  std::vector<uint8_t> bytes = w.Take();
  ASSERT_EQ(bytes.size(), 15u);
  EXPECT_EQ(bytes[1], 0x34);  // low byte first
  EXPECT_EQ(bytes[14], 0x01);
  ByteReader r(bytes);
  uint8_t a = 0;
  uint16_t b = 0;
  uint32_t c = 0;
  uint64_t d = 0;
  EXPECT_TRUE(r.Get(&a) && r.Get(&b) && r.Get(&c) && r.Get(&d));
  EXPECT_EQ(a, 0xab);
  EXPECT_EQ(b, 0x1234);
  EXPECT_EQ(c, 0xdeadbeefu);
  EXPECT_EQ(d, 0x0102030405060708ull);
  EXPECT_TRUE(r.done());
}

TEST(ByteCodecTest, NeverReadsPastTheEnd) {
  const std::vector<uint8_t> bytes = {1, 2, 3};
  ByteReader r(bytes);
  uint32_t v = 7;
  EXPECT_FALSE(r.Get(&v));
  EXPECT_EQ(v, 7u);
  uint16_t s = 0;
  EXPECT_TRUE(r.Get(&s));
  EXPECT_EQ(r.rest().size(), 1u);
  EXPECT_FALSE(r.Get(&s));
  EXPECT_FALSE(r.done());
}

}  // namespace
}  // namespace vsockd
