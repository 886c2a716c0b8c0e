#include "vsock/connection.h"

#include <gtest/gtest.h>

#include <cstring>

namespace vsockd::vsock {
namespace {

ConnectionInfo Info() { return ConnectionInfo{3, 1025, 2, 9999}; }

PacketHeader Credit(uint32_t buf_alloc, uint32_t fwd_cnt) {
  PacketHeader h;
  h.buf_alloc = buf_alloc;
  h.fwd_cnt = fwd_cnt;
  return h;
}

TEST(ConnectionTest, PeerFreeFollowsEveryPacket) {
  Connection c(Info(), ConnState::kEstablished, 65536);
  EXPECT_EQ(c.PeerFree(), 0u);  // nothing heard from the guest yet
  c.UpdatePeerCredit(Credit(1000, 0));
  EXPECT_EQ(c.PeerFree(), 1000u);
  c.OnSentToGuest(600);
  EXPECT_EQ(c.PeerFree(), 400u);
  c.UpdatePeerCredit(Credit(1000, 500));
  EXPECT_EQ(c.PeerFree(), 900u);
}

TEST(ConnectionTest, PeerFreeWrapsAndClampsWhenBufAllocShrinks) {
  Connection c(Info(), ConnState::kEstablished, 65536);
  // Counters near the u32 wrap.
  c.UpdatePeerCredit(Credit(4096, 0xFFFFFF00u));
  c.OnSentToGuest(0xFFFFFF00u);  // tx_cnt == peer_fwd_cnt: nothing in flight
  EXPECT_EQ(c.PeerFree(), 4096u);
  c.OnSentToGuest(0x200);  // tx_cnt wrapped past 0
  EXPECT_EQ(c.PeerFree(), 4096u - 0x200);
  // The guest shrinks buf_alloc below what is in flight: clamp at 0, not a huge credit.
  c.UpdatePeerCredit(Credit(0x100, 0xFFFFFF00u));
  EXPECT_EQ(c.PeerFree(), 0u);
}

TEST(ConnectionTest, GuestCreditIsWhatWeAdvertised) {
  Connection c(Info(), ConnState::kEstablished, 1000);
  PacketHeader resp = c.MakeHeader(VIRTIO_VSOCK_OP_RESPONSE, 0, 0);
  EXPECT_EQ(resp.buf_alloc, 1000u);
  EXPECT_EQ(resp.fwd_cnt, 0u);
  EXPECT_EQ(resp.src_cid, 2u);
  EXPECT_EQ(resp.dst_cid, 3u);
  EXPECT_EQ(resp.src_port, 9999u);
  EXPECT_EQ(resp.dst_port, 1025u);
  EXPECT_EQ(resp.type, VIRTIO_VSOCK_TYPE_STREAM);
  EXPECT_TRUE(c.GuestMaySend(1000));
  EXPECT_FALSE(c.GuestMaySend(1001));
  c.OnReceivedFromGuest(700);
  EXPECT_TRUE(c.GuestMaySend(300));
  EXPECT_FALSE(c.GuestMaySend(301));
  // Forwarding alone does not give the guest more credit: it has not been told yet.
  c.OnForwardedToHost(700);
  EXPECT_FALSE(c.GuestMaySend(301));
  PacketHeader upd = c.MakeHeader(VIRTIO_VSOCK_OP_CREDIT_UPDATE, 0, 0);
  EXPECT_EQ(upd.fwd_cnt, 700u);
  EXPECT_EQ(c.last_fwd_cnt_sent(), 700u);
  EXPECT_TRUE(c.GuestMaySend(1000));
}

TEST(ConnectionTest, CreditUpdateThreshold) {
  Connection c(Info(), ConnState::kEstablished, 1000);
  c.OnReceivedFromGuest(400);
  c.OnForwardedToHost(400);
  EXPECT_FALSE(c.NeedsCreditUpdate());  // guest still sees 600 >= 500
  c.OnReceivedFromGuest(200);
  EXPECT_TRUE(c.NeedsCreditUpdate());  // sees 400 < 500 and the real free space is 800
  EXPECT_EQ(c.GuestViewFree(), 400u);
  EXPECT_EQ(c.ActualFree(), 800u);
  Connection slow(Info(), ConnState::kEstablished, 1000);
  slow.OnReceivedFromGuest(600);  // nothing forwarded: the guest's view is the truth
  EXPECT_FALSE(slow.NeedsCreditUpdate());
  slow.OnForwardedToHost(600);
  EXPECT_TRUE(slow.NeedsCreditUpdate());       // sees 400, real 1000
  slow.MakeHeader(VIRTIO_VSOCK_OP_RW, 0, 10);  // any packet carries fwd_cnt
  EXPECT_FALSE(slow.NeedsCreditUpdate());
}

TEST(ConnectionTest, ShutdownBitsAreSticky) {
  Connection c(Info(), ConnState::kEstablished, 1000);
  EXPECT_EQ(c.AddPeerShutdown(VIRTIO_VSOCK_SHUTDOWN_SEND | 0x100), VIRTIO_VSOCK_SHUTDOWN_SEND);
  EXPECT_TRUE(c.guest_sends_no_more());
  EXPECT_FALSE(c.guest_receives_no_more());
  EXPECT_EQ(c.AddPeerShutdown(0), 0u);
  EXPECT_TRUE(c.guest_sends_no_more());
  EXPECT_EQ(c.AddPeerShutdown(VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND),
            VIRTIO_VSOCK_SHUTDOWN_RCV);
  EXPECT_TRUE(c.guest_fully_shut());
}

TEST(ConnectionTest, WantsRxNeedsCreditForDataButNotForControl) {
  Connection c(Info(), ConnState::kEstablished, 1000);
  EXPECT_FALSE(c.WantsRx());
  c.prefix = "abc";
  EXPECT_FALSE(c.WantsRx());  // no credit yet
  c.UpdatePeerCredit(Credit(10, 0));
  EXPECT_TRUE(c.WantsRx());
  c.prefix_off = 3;
  EXPECT_FALSE(c.WantsRx());
  c.UpdatePeerCredit(Credit(0, 0));
  c.pending_ctrl = Connection::kCtrlCreditReply;
  EXPECT_TRUE(c.WantsRx());
}

TEST(ByteQueueTest, AppendConsumeCompact) {
  ByteQueue q;
  std::string all;
  for (int i = 0; i < 100; ++i) {
    std::string s(37, static_cast<char>('a' + i % 26));
    q.Append(s.data(), s.size());
    all += s;
    q.Consume(20);
    all.erase(0, 20);
    ASSERT_EQ(q.size(), all.size());
    ASSERT_EQ(std::memcmp(q.data(), all.data(), all.size()), 0);
  }
  q.Consume(q.size());
  EXPECT_TRUE(q.empty());
}

}  // namespace
}  // namespace vsockd::vsock
