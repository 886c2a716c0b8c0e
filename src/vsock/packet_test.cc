#include "vsock/packet.h"

#include <gtest/gtest.h>

#include <cstring>

namespace vsockd::vsock {
namespace {

TEST(PacketTest, EncodeDecodeRoundTripIsLittleEndianAndPacked) {
  PacketHeader h;
  h.src_cid = 3;
  h.dst_cid = 2;
  h.src_port = 0x11223344;
  h.dst_port = 1234;
  h.len = 4096;
  h.type = VIRTIO_VSOCK_TYPE_STREAM;
  h.op = VIRTIO_VSOCK_OP_RW;
  h.flags = VIRTIO_VSOCK_SHUTDOWN_SEND;
  h.buf_alloc = 262144;
  h.fwd_cnt = 0xdeadbeef;
  uint8_t raw[kHeaderSize];
  std::memset(raw, 0xaa, sizeof raw);
  EncodeHeader(h, raw);
  // Field offsets from the spec table.
  EXPECT_EQ(raw[0], 3);
  EXPECT_EQ(raw[8], 2);
  EXPECT_EQ(raw[16], 0x44);
  EXPECT_EQ(raw[19], 0x11);
  EXPECT_EQ(raw[24], 0x00);
  EXPECT_EQ(raw[25], 0x10);
  EXPECT_EQ(raw[28], 1);
  EXPECT_EQ(raw[30], 5);
  EXPECT_EQ(raw[32], 2);
  EXPECT_EQ(raw[40], 0xef);
  EXPECT_EQ(raw[43], 0xde);
  PacketHeader d = DecodeHeader(raw);
  EXPECT_EQ(d.src_cid, h.src_cid);
  EXPECT_EQ(d.dst_cid, h.dst_cid);
  EXPECT_EQ(d.src_port, h.src_port);
  EXPECT_EQ(d.dst_port, h.dst_port);
  EXPECT_EQ(d.len, h.len);
  EXPECT_EQ(d.type, h.type);
  EXPECT_EQ(d.op, h.op);
  EXPECT_EQ(d.flags, h.flags);
  EXPECT_EQ(d.buf_alloc, h.buf_alloc);
  EXPECT_EQ(d.fwd_cnt, h.fwd_cnt);
}

TEST(PacketTest, NamesAndDescriptions) {
  EXPECT_STREQ(OpName(VIRTIO_VSOCK_OP_CREDIT_REQUEST), "CREDIT_REQUEST");
  EXPECT_STREQ(OpName(99), "UNKNOWN");
  PacketHeader h;
  h.op = VIRTIO_VSOCK_OP_RST;
  h.src_cid = 3;
  h.src_port = 7;
  EXPECT_NE(DescribeHeader(h).find("RST"), std::string::npos);
  EXPECT_NE(DescribeHeader(h).find("3:7"), std::string::npos);
}

TEST(PacketTest, GuestCidValidity) {
  EXPECT_FALSE(IsValidGuestCid(0));
  EXPECT_FALSE(IsValidGuestCid(1));
  EXPECT_FALSE(IsValidGuestCid(2));
  EXPECT_TRUE(IsValidGuestCid(3));
  EXPECT_TRUE(IsValidGuestCid(0xFFFFFFFE));
  EXPECT_FALSE(IsValidGuestCid(0xFFFFFFFF));
  EXPECT_FALSE(IsValidGuestCid(1ull << 32));
}

TEST(PacketTest, PeerCreditWrapsAndClamps) {
  EXPECT_EQ(PeerCredit(1000, 300, 100), 800u);
  // Free-running counters that wrapped past 2^32 still give the right in-flight count.
  EXPECT_EQ(PeerCredit(1000, 50, 0xFFFFFF00u), 1000u - 306u);
  // The peer shrank buf_alloc below what is in flight: no credit, not a huge u32.
  EXPECT_EQ(PeerCredit(100, 500, 0), 0u);
}

TEST(PacketTest, RstReplySwapsAddressesAndEchoesType) {
  PacketHeader h;
  h.src_cid = 3;
  h.src_port = 1025;
  h.dst_cid = 2;
  h.dst_port = 9999;
  h.type = VIRTIO_VSOCK_TYPE_STREAM;
  h.op = VIRTIO_VSOCK_OP_RW;
  h.len = 5;
  PacketHeader r = MakeRstReply(h);
  EXPECT_EQ(r.op, VIRTIO_VSOCK_OP_RST);
  EXPECT_EQ(r.src_cid, 2u);
  EXPECT_EQ(r.src_port, 9999u);
  EXPECT_EQ(r.dst_cid, 3u);
  EXPECT_EQ(r.dst_port, 1025u);
  EXPECT_EQ(r.type, VIRTIO_VSOCK_TYPE_STREAM);
  EXPECT_EQ(r.len, 0u);
}

}  // namespace
}  // namespace vsockd::vsock
