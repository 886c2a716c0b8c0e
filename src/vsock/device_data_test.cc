// vsock::Device: data both ways, rx buffer layouts, credit (never exceeded, proactive
// updates, CREDIT_REQUEST), a slow host reader, batching of tx writes and rx reads, the bounded
// reply queue. Fixture: vsock/testing/device_fixture.h.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "vsock/device.h"
#include "vsock/testing/device_fixture.h"

namespace vsockd::vsock {
namespace {

using testing::Bytes;
using testing::DeviceTest;
using testing::FakeGuestOptions;
using testing::kGuestPort;
using testing::kHostPort;
using testing::RandomBytes;
using testing::ReadAvailable;
using testing::RxLayout;
using testing::RxPacket;

TEST_F(DeviceTest, DataBothWays) {
  Fd peer = Connect();
  SendRw(Bytes("hello host"));
  std::vector<uint8_t> got;
  ASSERT_TRUE(RunUntil([&] { return ReadAvailable(peer.get(), &got) >= 0 && got.size() >= 10; }));
  EXPECT_EQ(std::string(got.begin(), got.end()), "hello host");
  EXPECT_EQ(guest_->tx_outstanding(), 0u);

  ASSERT_EQ(::write(peer.get(), "hello guest", 11), 11);
  auto pkt = NextRx();
  ASSERT_TRUE(pkt);
  EXPECT_EQ(pkt->hdr.op, VIRTIO_VSOCK_OP_RW);
  EXPECT_EQ(pkt->hdr.len, 11u);
  EXPECT_EQ(pkt->used_len, kHeaderSize + 11);
  EXPECT_EQ(std::string(pkt->payload.begin(), pkt->payload.end()), "hello guest");
  EXPECT_EQ(pkt->hdr.src_port, kHostPort);
  EXPECT_EQ(pkt->hdr.dst_port, kGuestPort);
  EXPECT_EQ(device_->stats().tx_bytes, 10u);
  EXPECT_EQ(device_->stats().rx_bytes, 11u);
}

class DeviceLayoutTest : public DeviceTest, public ::testing::WithParamInterface<RxLayout> {};

TEST_P(DeviceLayoutTest, LargeTransferSplitAcrossRxBuffers) {
  FakeGuestOptions g;
  g.rx_layout = GetParam();
  g.tx_indirect = GetParam() == RxLayout::kIndirect;
  Make(DeviceOptions{}, g);
  Fd peer = Connect();
  const std::vector<uint8_t> data = RandomBytes(200 * 1024, 1);
  size_t off = 0;
  std::vector<uint8_t> got;
  uint32_t fwd = 0;
  size_t full_packets = 0;
  ASSERT_TRUE(RunUntil([&] {
    if (off < data.size()) {
      ssize_t n = ::write(peer.get(), data.data() + off, data.size() - off);
      if (n > 0) off += static_cast<size_t>(n);
    }
    while (!guest_->rx_packets().empty()) {
      RxPacket p = std::move(guest_->rx_packets().front());
      guest_->rx_packets().pop_front();
      EXPECT_EQ(p.hdr.op, VIRTIO_VSOCK_OP_RW);
      EXPECT_LE(p.hdr.len, kLinuxRxBufSize);
      EXPECT_EQ(p.used_len, kHeaderSize + p.hdr.len);
      if (p.hdr.len == kLinuxRxBufSize) ++full_packets;
      got.insert(got.end(), p.payload.begin(), p.payload.end());
      fwd += p.hdr.len;
    }
    // The guest application consumes and the guest tells the device now and then.
    if (fwd > 0 && got.size() % (64 * 1024) < 4096) {
      (void)guest_->Send(
          guest_->Header(VIRTIO_VSOCK_OP_CREDIT_UPDATE, kGuestPort, kHostPort, 0, 256 * 1024, fwd));
    }
    return got.size() >= data.size();
  }));
  EXPECT_TRUE(got == data);
  EXPECT_GT(full_packets, 40u);
  // Guest -> host the other way, in 64 KiB packets.
  const std::vector<uint8_t> up = RandomBytes(100 * 1024, 2);
  for (size_t o = 0; o < up.size(); o += 50000) {
    SendRw(std::vector<uint8_t>(up.begin() + o, up.begin() + std::min(up.size(), o + 50000)));
  }
  std::vector<uint8_t> host_got;
  ASSERT_TRUE(RunUntil([&] {
    ReadAvailable(peer.get(), &host_got);
    return host_got.size() >= up.size();
  }));
  EXPECT_TRUE(host_got == up);
}

INSTANTIATE_TEST_SUITE_P(Layouts, DeviceLayoutTest,
                         ::testing::Values(RxLayout::kSplit, RxLayout::kCombined,
                                           RxLayout::kIndirect));

TEST_F(DeviceTest, CreditNeverExceeded) {
  constexpr uint32_t kGuestBuf = 64 * 1024;
  Fd peer = Connect(kGuestPort, kHostPort, kGuestBuf);
  const std::vector<uint8_t> data = RandomBytes(1024 * 1024, 3);
  size_t off = 0;
  std::vector<uint8_t> got;
  auto pump = [&] {
    if (off < data.size()) {
      ssize_t n = ::write(peer.get(), data.data() + off, data.size() - off);
      if (n > 0) off += static_cast<size_t>(n);
    }
    while (!guest_->rx_packets().empty()) {
      RxPacket p = std::move(guest_->rx_packets().front());
      guest_->rx_packets().pop_front();
      got.insert(got.end(), p.payload.begin(), p.payload.end());
    }
  };
  ASSERT_TRUE(RunUntil([&] {
    pump();
    return got.size() >= kGuestBuf;
  }));
  // Give the device every chance to overrun: host data is waiting, rx buffers are posted.
  for (int i = 0; i < 50; ++i) {
    loop_->RunOnce(1);
    guest_->CollectRx();
    pump();
  }
  EXPECT_EQ(got.size(), kGuestBuf);
  EXPECT_EQ(device_->stats().rx_bytes, kGuestBuf);
  EXPECT_EQ(device_->stats().credit_stalls, 1u) << "counted once per stall, not per wakeup";
  // The guest application read it all: credit returns, exactly one more window flows.
  ASSERT_TRUE(guest_
                  ->Send(guest_->Header(VIRTIO_VSOCK_OP_CREDIT_UPDATE, kGuestPort, kHostPort, 0,
                                        kGuestBuf, kGuestBuf))
                  .ok());
  ASSERT_TRUE(RunUntil([&] {
    pump();
    return got.size() >= 2 * kGuestBuf;
  }));
  for (int i = 0; i < 20; ++i) {
    loop_->RunOnce(1);
    guest_->CollectRx();
    pump();
  }
  EXPECT_EQ(got.size(), 2 * kGuestBuf);
  EXPECT_TRUE(std::equal(got.begin(), got.end(), data.begin()));
  EXPECT_EQ(device_->stats().credit_stalls, 2u) << "the second window stalled again";
}

TEST_F(DeviceTest, ProactiveCreditUpdate) {
  DeviceOptions o;
  o.buf_alloc = 64 * 1024;
  Make(o, FakeGuestOptions{});
  Fd peer = Connect();
  // 40 KiB: past half of buf_alloc; the host reads everything at once.
  for (int i = 0; i < 10; ++i) SendRw(RandomBytes(4096, 10 + i));
  std::vector<uint8_t> host_got;
  std::vector<RxPacket> others;
  ASSERT_TRUE(RunUntil([&] {
    ReadAvailable(peer.get(), &host_got);
    while (!guest_->rx_packets().empty()) {
      others.push_back(std::move(guest_->rx_packets().front()));
      guest_->rx_packets().pop_front();
    }
    return host_got.size() == 40960 && !others.empty();
  }));
  Pump(10);
  guest_->CollectRx();
  while (!guest_->rx_packets().empty()) {
    others.push_back(std::move(guest_->rx_packets().front()));
    guest_->rx_packets().pop_front();
  }
  ASSERT_EQ(others.size(), 1u);  // one update, no storm
  EXPECT_EQ(others[0].hdr.op, VIRTIO_VSOCK_OP_CREDIT_UPDATE);
  EXPECT_GE(others[0].hdr.fwd_cnt, 32u * 1024);
  EXPECT_EQ(others[0].hdr.buf_alloc, 64u * 1024);
}

TEST_F(DeviceTest, CreditRequestAnswered) {
  Fd peer = Connect();
  ASSERT_TRUE(
      guest_->Send(guest_->Header(VIRTIO_VSOCK_OP_CREDIT_REQUEST, kGuestPort, kHostPort)).ok());
  auto p = NextRx();
  ASSERT_TRUE(p);
  EXPECT_EQ(p->hdr.op, VIRTIO_VSOCK_OP_CREDIT_UPDATE);
  EXPECT_EQ(p->hdr.buf_alloc, dopts_.buf_alloc);
}

TEST_F(DeviceTest, SlowHostReaderIsBoundedAndLosesNothing) {
  // The guest uses its whole credit while the host does not read.
  std::vector<uint8_t> sent;
  Fd peer = ConnectAndOverrunSlowHost(100, &sent);
  guest_->ReapTx();
  EXPECT_EQ(guest_->tx_outstanding(), 0u);  // chains returned even though data is buffered
  EXPECT_GT(device_->stats().buffered_bytes, 0u);
  EXPECT_LE(device_->stats().buffered_bytes, 64u * 1024);
  // Now the host reads: everything arrives in order, and credit comes back to the guest.
  std::vector<uint8_t> host_got;
  ASSERT_TRUE(RunUntil([&] {
    ReadAvailable(peer.get(), &host_got);
    return host_got.size() >= sent.size();
  }));
  EXPECT_TRUE(host_got == sent);
  EXPECT_EQ(device_->stats().buffered_bytes, 0u);
  std::vector<RxPacket> others;
  RunUntil([&] {
    guest_->CollectRx();
    while (!guest_->rx_packets().empty()) {
      others.push_back(std::move(guest_->rx_packets().front()));
      guest_->rx_packets().pop_front();
    }
    return !others.empty();
  });
  ASSERT_FALSE(others.empty());
  EXPECT_EQ(others.back().hdr.op, VIRTIO_VSOCK_OP_CREDIT_UPDATE);
  EXPECT_GE(others.back().hdr.fwd_cnt, 32u * 1024);
  EXPECT_LE(others.back().hdr.fwd_cnt, 64u * 1024);
}

TEST_F(DeviceTest, GuestExceedingCreditIsReset) {
  DeviceOptions o;
  o.buf_alloc = 8192;
  Make(o, FakeGuestOptions{});
  Fd peer = Connect();
  SendRw(RandomBytes(8192, 5), 0, false);
  SendRw(RandomBytes(1, 6));  // one byte beyond what we advertised
  auto p = NextRx();
  ASSERT_TRUE(p);
  EXPECT_EQ(p->hdr.op, VIRTIO_VSOCK_OP_RST);
  EXPECT_EQ(device_->stats().connections_active, 0u);
  EXPECT_EQ(device_->stats().buffered_bytes, 0u);
}

TEST_F(DeviceTest, PrefixBytesGoFirst) {
  backend_->set_prefix("PRE:");
  Fd peer = Connect();
  ASSERT_EQ(::write(peer.get(), "data", 4), 4);
  auto got = ReceiveRw(8);
  EXPECT_EQ(std::string(got.begin(), got.end()), "PRE:data");
}

TEST_F(DeviceTest, TxCoalescedIntoOneWrite) {
  backend_->set_socket_type(SOCK_SEQPACKET);  // one device write == one record
  Fd peer = Connect();
  for (int i = 0; i < 5; ++i) SendRw(Bytes("part" + std::to_string(i)), 0, /*kick=*/false);
  guest_->KickTx(/*force=*/true);
  Pump();
  char buf[256];
  ssize_t n = ::recv(peer.get(), buf, sizeof buf, 0);
  ASSERT_EQ(n, 25);
  EXPECT_EQ(std::string(buf, 25), "part0part1part2part3part4");
}

TEST_F(DeviceTest, RxFilledByOneReadAcrossBuffers) {
  backend_->set_socket_type(SOCK_SEQPACKET);  // a record read in pieces would lose its tail
  Fd peer = Connect();
  const std::vector<uint8_t> rec = RandomBytes(16384, 9);
  ASSERT_EQ(::send(peer.get(), rec.data(), rec.size(), 0), 16384);
  std::vector<RxPacket> others;
  auto got = ReceiveRw(rec.size(), &others);
  EXPECT_TRUE(got == rec);
  EXPECT_EQ(device_->stats().rx_packets, 1u + 4u);  // RESPONSE + four full 4 KiB buffers
}

TEST_F(DeviceTest, RepliesBoundedUntilRxDrains) {
  FakeGuestOptions g;
  g.queue_size = 16;
  Make(DeviceOptions{}, g, /*rx_buffers=*/0);
  // 16 packets for unknown connections: 16 RSTs queued, the reply budget (16) is full.
  for (int i = 0; i < 16; ++i) {
    ASSERT_TRUE(
        guest_->Send(guest_->Header(VIRTIO_VSOCK_OP_RW, 100 + i, kHostPort, 1), Bytes("z")).ok());
  }
  Pump();
  guest_->ReapTx();
  EXPECT_EQ(guest_->tx_returned(), 16u);
  // More tx is not processed while replies cannot go out.
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(
        guest_->Send(guest_->Header(VIRTIO_VSOCK_OP_RW, 200 + i, kHostPort, 1), Bytes("z"), false)
            .ok());
  }
  guest_->KickTx(/*force=*/true);
  Pump();
  guest_->ReapTx();
  EXPECT_EQ(guest_->tx_returned(), 16u);
  // rx buffers arrive: RSTs drain and tx resumes.
  ASSERT_TRUE(RunUntil([&] {
    if (guest_->rx_posted() < 8) guest_->PostRx(8);
    return guest_->tx_returned() == 20 && guest_->rx_used_total() == 20;
  }));
  EXPECT_EQ(device_->stats().rst_sent, 20u);
}

// ---------------------------------------------------------------------------------------
// SEQPACKET
// ---------------------------------------------------------------------------------------

}  // namespace
}  // namespace vsockd::vsock
