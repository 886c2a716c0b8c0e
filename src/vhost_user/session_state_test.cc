#include "vhost_user/session_state.h"

#include <gtest/gtest.h>

namespace vsockd::vhost_user {
namespace {

SessionState Sample() {
  SessionState s;
  s.acked_features = 0x1'0000'0003ull;
  s.features_set = true;
  s.protocol_features = 0x203;
  s.regions = {{0, 1 << 20, 0x7f0000000000ull, 0}, {1 << 20, 4096, 0x7f0000100000ull, 8192}};
  SessionState::Ring r0;
  r0.num = 256;
  r0.addr_set = true;
  r0.addr = {0, 0, 0x7f0000001000ull, 0x7f0000003000ull, 0x7f0000002000ull, 0x3000};
  r0.base = 77;
  r0.enable = 1;
  r0.running = true;
  r0.kick = 2;
  r0.call = 3;
  SessionState::Ring r1;
  r1.num = 128;
  r1.enable = 2;
  r1.err = 4;
  s.rings = {r0, r1};
  return s;
}

TEST(SessionStateTest, RoundTrip) {
  SessionState s = Sample();
  EXPECT_EQ(s.fd_count(), 5u);
  auto bytes = s.Encode();
  auto d = SessionState::Decode(bytes, 5);
  ASSERT_TRUE(d.ok()) << d.error().ToString();
  EXPECT_EQ(d->acked_features, s.acked_features);
  EXPECT_TRUE(d->features_set);
  EXPECT_EQ(d->protocol_features, s.protocol_features);
  ASSERT_EQ(d->regions.size(), 2u);
  EXPECT_EQ(d->regions[1].guest_phys_addr, 1u << 20);
  EXPECT_EQ(d->regions[1].mmap_offset, 8192u);
  ASSERT_EQ(d->rings.size(), 2u);
  EXPECT_EQ(d->rings[0].num, 256u);
  EXPECT_TRUE(d->rings[0].addr_set);
  const uint64_t used = d->rings[0].addr.used_user_addr;  // a packed member: no reference
  EXPECT_EQ(used, 0x7f0000003000ull);
  EXPECT_EQ(d->rings[0].base, 77);
  EXPECT_EQ(d->rings[0].enable, 1);
  EXPECT_TRUE(d->rings[0].running);
  EXPECT_EQ(d->rings[0].kick, 2);
  EXPECT_EQ(d->rings[0].call, 3);
  EXPECT_EQ(d->rings[0].err, SessionState::kNoFd);
  EXPECT_EQ(d->rings[1].enable, 2);
  EXPECT_FALSE(d->rings[1].running);
  EXPECT_EQ(d->rings[1].kick, SessionState::kNoFd);
  EXPECT_EQ(d->rings[1].err, 4);
  EXPECT_EQ(d->Encode(), bytes);
}

TEST(SessionStateTest, EveryTruncationAndTrailingBytesRefused) {
  auto bytes = Sample().Encode();
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_FALSE(SessionState::Decode(std::span(bytes.data(), n), 5).ok()) << n;
  }
  bytes.push_back(0);
  EXPECT_FALSE(SessionState::Decode(bytes, 5).ok());
}

TEST(SessionStateTest, DescriptorIndicesChecked) {
  auto bytes = Sample().Encode();
  // Fewer descriptors than the state names.
  EXPECT_FALSE(SessionState::Decode(bytes, 4).ok());
  EXPECT_FALSE(SessionState::Decode(bytes, 1).ok());  // not even the memory files
  // A ring naming a memory file, or two rings sharing a descriptor.
  SessionState s = Sample();
  s.rings[1].err = 1;
  EXPECT_FALSE(SessionState::Decode(s.Encode(), 5).ok());
  s = Sample();
  s.rings[1].err = 2;
  EXPECT_FALSE(SessionState::Decode(s.Encode(), 5).ok());
}

TEST(SessionStateTest, BadHeaderAndFlagsRefused) {
  auto bytes = Sample().Encode();
  auto bad = bytes;
  bad[0] ^= 1;  // magic
  EXPECT_FALSE(SessionState::Decode(bad, 5).ok());
  bad = bytes;
  bad[4] = 2;  // version
  EXPECT_FALSE(SessionState::Decode(bad, 5).ok());
  bad = bytes;
  bad[16] = 2;  // features_set is 0 or 1
  EXPECT_FALSE(SessionState::Decode(bad, 5).ok());
  SessionState s = Sample();
  s.rings[0].enable = 3;
  EXPECT_FALSE(SessionState::Decode(s.Encode(), 5).ok());
  s = Sample();
  s.regions.resize(9);  // more than one SET_MEM_TABLE carries
  EXPECT_FALSE(SessionState::Decode(s.Encode(), 20).ok());
}

}  // namespace
}  // namespace vsockd::vhost_user
