// vsock::Device: SEQPACKET (VIRTIO_VSOCK_F_SEQPACKET): message boundaries both ways, EOM/EOR,
// credit, half-close, type mismatches, host-started connects. Fixture:
// vsock/testing/device_fixture.h.
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

class SeqpacketTest : public DeviceTest {
 protected:
  void SetUp() override {
    DeviceOptions o;
    o.buf_alloc = 64 * 1024;
    Make(o, FakeGuestOptions{});
    Ack();
  }
  void Ack() {
    device_->SetAckedFeatures((1ull << virtio::VIRTIO_F_VERSION_1) |
                              (1ull << VIRTIO_VSOCK_F_SEQPACKET));
  }
  PacketHeader SeqHeader(uint16_t op, uint32_t len = 0, uint32_t flags = 0,
                         uint32_t buf_alloc = 256 * 1024, uint32_t fwd_cnt = 0) {
    auto h = guest_->Header(op, kGuestPort, kHostPort, len, buf_alloc, fwd_cnt);
    h.type = VIRTIO_VSOCK_TYPE_SEQPACKET;
    h.flags = flags;
    return h;
  }
  Fd ConnectSeq(uint32_t guest_buf_alloc = 256 * 1024) {
    EXPECT_TRUE(guest_->Send(SeqHeader(VIRTIO_VSOCK_OP_REQUEST, 0, 0, guest_buf_alloc)).ok());
    auto resp = NextRx();
    EXPECT_TRUE(resp.has_value());
    if (!resp) return Fd();
    EXPECT_EQ(resp->hdr.op, VIRTIO_VSOCK_OP_RESPONSE) << DescribeHeader(resp->hdr);
    EXPECT_EQ(resp->hdr.type, VIRTIO_VSOCK_TYPE_SEQPACKET);
    Fd peer = backend_->TakePeer(kHostPort);
    EXPECT_TRUE(peer.valid());
    int type = 0;
    socklen_t len = sizeof type;
    EXPECT_EQ(::getsockopt(peer.get(), SOL_SOCKET, SO_TYPE, &type, &len), 0);
    EXPECT_EQ(type, SOCK_SEQPACKET);
    if (peer.valid()) {
      EXPECT_TRUE(SetNonBlocking(peer.get()).ok());
    }
    return peer;
  }
  // Sends `msg` as fragments of `frag` bytes, EOM (and EOR if asked) on the last, each
  // fragment in its own tx batch.
  void SendMessage(const std::vector<uint8_t>& msg, size_t frag, bool eor = false,
                   uint32_t fwd_cnt = 0) {
    for (size_t off = 0; off < msg.size(); off += frag) {
      size_t n = std::min(frag, msg.size() - off);
      bool last = off + n == msg.size();
      uint32_t flags = last ? (VIRTIO_VSOCK_SEQ_EOM | (eor ? VIRTIO_VSOCK_SEQ_EOR : 0)) : 0;
      auto h = SeqHeader(VIRTIO_VSOCK_OP_RW, static_cast<uint32_t>(n), flags, 256 * 1024, fwd_cnt);
      ASSERT_TRUE(guest_->Send(h, std::span<const uint8_t>(msg.data() + off, n)).ok());
      Pump();
      guest_->ReapTx();
    }
  }
  // One host message (non-blocking recv), or nullopt.
  std::optional<std::vector<uint8_t>> HostRecv(int fd) {
    std::vector<uint8_t> buf(512 * 1024);
    ssize_t n = ::recv(fd, buf.data(), buf.size(), MSG_DONTWAIT);
    if (n < 0) return std::nullopt;
    buf.resize(static_cast<size_t>(n));
    return buf;
  }
  // Collects guest rx RW packets until one with EOM; returns the message and the packets.
  std::vector<uint8_t> GuestMessage(std::vector<PacketHeader>* headers = nullptr) {
    std::vector<uint8_t> msg;
    for (;;) {
      auto p = NextRx();
      if (!p) {
        ADD_FAILURE() << "no EOM";
        return msg;
      }
      if (p->hdr.op != VIRTIO_VSOCK_OP_RW) {
        ADD_FAILURE() << "unexpected " << DescribeHeader(p->hdr);
        return msg;
      }
      EXPECT_EQ(p->hdr.type, VIRTIO_VSOCK_TYPE_SEQPACKET);
      EXPECT_EQ(p->hdr.flags & VIRTIO_VSOCK_SEQ_EOR, 0u);  // AF_UNIX cannot tell us about EOR
      if (headers != nullptr) headers->push_back(p->hdr);
      msg.insert(msg.end(), p->payload.begin(), p->payload.end());
      if (p->hdr.flags & VIRTIO_VSOCK_SEQ_EOM) return msg;
    }
  }
};

TEST_F(SeqpacketTest, RefusedWithoutTheFeature) {
  device_->SetAckedFeatures(1ull << virtio::VIRTIO_F_VERSION_1);
  EXPECT_FALSE(device_->seqpacket_negotiated());
  ASSERT_TRUE(guest_->Send(SeqHeader(VIRTIO_VSOCK_OP_REQUEST)).ok());
  auto rst = NextRx();
  ASSERT_TRUE(rst);
  EXPECT_EQ(rst->hdr.op, VIRTIO_VSOCK_OP_RST);
  EXPECT_EQ(rst->hdr.type, VIRTIO_VSOCK_TYPE_SEQPACKET);  // the type is echoed
  EXPECT_EQ(backend_->connect_calls(), 0u);
  // Host -> guest is refused up front too.
  auto id = device_->ConnectToGuest(
      5000, [](const Result<uint32_t>&) -> std::optional<HostStream> { return std::nullopt; },
      VIRTIO_VSOCK_TYPE_SEQPACKET);
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.error().code, EPROTONOSUPPORT);
  // And when we do not offer it, acking it changes nothing.
  DeviceOptions o;
  o.offer_seqpacket = false;
  Make(o, FakeGuestOptions{});
  Ack();
  EXPECT_FALSE(device_->seqpacket_negotiated());
  ASSERT_TRUE(guest_->Send(SeqHeader(VIRTIO_VSOCK_OP_REQUEST)).ok());
  rst = NextRx();
  ASSERT_TRUE(rst);
  EXPECT_EQ(rst->hdr.op, VIRTIO_VSOCK_OP_RST);
}

TEST_F(SeqpacketTest, GuestMessagesReachTheHostWhole) {
  Fd peer = ConnectSeq();
  ASSERT_TRUE(peer.valid());
  EXPECT_EQ(backend_->infos().back().type, VIRTIO_VSOCK_TYPE_SEQPACKET);
  auto m1 = RandomBytes(10000, 1);
  // The first fragments alone reach nobody: the message is not complete.
  auto h = SeqHeader(VIRTIO_VSOCK_OP_RW, 4096);
  ASSERT_TRUE(guest_->Send(h, std::span<const uint8_t>(m1.data(), 4096)).ok());
  Pump();
  EXPECT_FALSE(HostRecv(peer.get()).has_value());
  h = SeqHeader(VIRTIO_VSOCK_OP_RW, 10000 - 4096, VIRTIO_VSOCK_SEQ_EOM | VIRTIO_VSOCK_SEQ_EOR);
  ASSERT_TRUE(guest_->Send(h, std::span<const uint8_t>(m1.data() + 4096, 10000 - 4096)).ok());
  std::optional<std::vector<uint8_t>> got;
  ASSERT_TRUE(RunUntil([&] { return (got = HostRecv(peer.get())).has_value(); }));
  EXPECT_EQ(*got, m1);
  // Several messages in one batch stay separate; sizes 1 .. 64 KiB.
  std::vector<std::vector<uint8_t>> msgs;
  for (size_t size : {1, 2, 100, 4095, 4096, 4097, 30000}) {
    msgs.push_back(RandomBytes(size, static_cast<uint32_t>(size)));
  }
  uint32_t sent = 10000;
  for (const auto& m : msgs) {
    for (size_t off = 0; off < m.size(); off += 4096) {
      size_t n = std::min<size_t>(4096, m.size() - off);
      auto hh = SeqHeader(VIRTIO_VSOCK_OP_RW, static_cast<uint32_t>(n),
                          off + n == m.size() ? VIRTIO_VSOCK_SEQ_EOM : 0);
      ASSERT_TRUE(
          guest_->Send(hh, std::span<const uint8_t>(m.data() + off, n), /*kick=*/false).ok());
      sent += static_cast<uint32_t>(n);
    }
  }
  guest_->KickTx(true);
  for (const auto& m : msgs) {
    ASSERT_TRUE(RunUntil([&] { return (got = HostRecv(peer.get())).has_value(); }));
    EXPECT_EQ(*got, m) << "size " << m.size();
  }
  EXPECT_EQ(device_->stats().buffered_bytes, 0u);
  EXPECT_EQ(device_->stats().connections_active, 1u);
}

TEST_F(SeqpacketTest, GuestMessagesWaitInTheBufferWhileTheHostIsFull) {
  // Messages go to the host straight from guest memory; when the host socket is full, the
  // rest of the batch is copied before its chains go back, and follows in order later.
  Fd peer = ConnectSeq();
  std::vector<std::vector<uint8_t>> msgs;
  uint32_t sent = 0;
  auto send_batch = [&](int count) {
    for (int i = 0; i < count; ++i) {
      msgs.push_back(RandomBytes(3000, static_cast<uint32_t>(100 + msgs.size())));
      auto h = SeqHeader(VIRTIO_VSOCK_OP_RW, 3000, VIRTIO_VSOCK_SEQ_EOM);
      ASSERT_TRUE(guest_->Send(h, msgs.back(), /*kick=*/false).ok());
      sent += 3000;
    }
    guest_->KickTx(true);
    Pump();
  };
  // The host reads nothing until a batch had to be buffered.
  while (device_->stats().buffered_bytes == 0 && msgs.size() < 400) send_batch(8);
  ASSERT_GT(device_->stats().buffered_bytes, 0u) << "the host socket never filled";
  EXPECT_LE(device_->stats().buffered_bytes, 8u * 3000);
  // A batch while the host is still full is buffered whole (within the guest's credit).
  const uint64_t before = device_->stats().buffered_bytes;
  send_batch(4);
  EXPECT_EQ(device_->stats().buffered_bytes, before + 4 * 3000);
  for (size_t i = 0; i < msgs.size(); ++i) {
    std::optional<std::vector<uint8_t>> got;
    ASSERT_TRUE(RunUntil([&] { return (got = HostRecv(peer.get())).has_value(); })) << i;
    ASSERT_EQ(*got, msgs[i]) << "message " << i;
  }
  EXPECT_EQ(device_->stats().buffered_bytes, 0u);
  EXPECT_EQ(device_->stats().connections_active, 1u);
  EXPECT_FALSE(HostRecv(peer.get()).has_value());
}

TEST_F(SeqpacketTest, GuestMessageOfExactlyBufAlloc) {
  Fd peer = ConnectSeq();
  auto m = RandomBytes(64 * 1024, 7);  // == the device's buf_alloc
  SendMessage(m, 4096);
  std::optional<std::vector<uint8_t>> got;
  ASSERT_TRUE(RunUntil([&] { return (got = HostRecv(peer.get())).has_value(); }));
  EXPECT_EQ(*got, m);
  EXPECT_EQ(device_->stats().connections_active, 1u);
}

TEST_F(SeqpacketTest, GuestMessageBeyondBufAllocResets) {
  Fd peer = ConnectSeq();
  // A message can only be assembled within our buffer: a guest that keeps sending past its
  // credit (no EOM in 64 KiB) is reset like any credit violation.
  auto m = RandomBytes(64 * 1024 + 4096, 8);
  for (size_t off = 0; off < m.size(); off += 4096) {
    auto h = SeqHeader(VIRTIO_VSOCK_OP_RW, 4096, off + 4096 == m.size() ? VIRTIO_VSOCK_SEQ_EOM : 0);
    ASSERT_TRUE(guest_->Send(h, std::span<const uint8_t>(m.data() + off, 4096), false).ok());
  }
  guest_->KickTx(true);
  bool rst = false;
  ASSERT_TRUE(RunUntil([&] {
    while (auto p = guest_->PopRx()) rst |= p->hdr.op == VIRTIO_VSOCK_OP_RST;
    return rst;
  }));
  // The incomplete message never reached the host: it sees the close only.
  auto got = HostRecv(peer.get());
  ASSERT_TRUE(got.has_value());
  EXPECT_TRUE(got->empty());
  EXPECT_EQ(device_->stats().connections_active, 0u);
}

TEST_F(SeqpacketTest, HostMessagesReachTheGuestWithEomOnTheLastFragment) {
  Fd peer = ConnectSeq();
  auto big = RandomBytes(10000, 3);
  ASSERT_EQ(::send(peer.get(), big.data(), big.size(), 0), 10000);
  ASSERT_EQ(::send(peer.get(), "hello", 5, 0), 5);
  ASSERT_EQ(::send(peer.get(), "", 0, 0), 0);  // vsock has no empty message: dropped
  ASSERT_EQ(::send(peer.get(), "x", 1, 0), 1);
  std::vector<PacketHeader> hs;
  EXPECT_EQ(GuestMessage(&hs), big);
  ASSERT_EQ(hs.size(), 3u);  // 4096 + 4096 + 1808: split across rx buffers
  EXPECT_EQ(hs[0].flags, 0u);
  EXPECT_EQ(hs[1].flags, 0u);
  EXPECT_EQ(hs[2].flags, VIRTIO_VSOCK_SEQ_EOM);
  EXPECT_EQ(hs[0].len, 4096u);
  hs.clear();
  EXPECT_EQ(GuestMessage(&hs), Bytes("hello"));
  EXPECT_EQ(hs.size(), 1u);
  EXPECT_EQ(GuestMessage(), Bytes("x"));
}

TEST_F(SeqpacketTest, HostToGuestHonoursCredit) {
  Fd peer = ConnectSeq(/*guest_buf_alloc=*/8192);
  auto m1 = RandomBytes(8192, 4);  // exactly the guest's buf_alloc
  auto m2 = RandomBytes(3000, 5);
  ASSERT_EQ(::send(peer.get(), m1.data(), m1.size(), 0), 8192);
  ASSERT_EQ(::send(peer.get(), m2.data(), m2.size(), 0), 3000);
  EXPECT_EQ(GuestMessage(), m1);
  // No credit left: nothing more comes.
  Pump(20);
  guest_->CollectRx();
  EXPECT_TRUE(guest_->rx_packets().empty());
  EXPECT_EQ(device_->stats().rx_bytes, 8192u);
  // The guest consumed the message: its credit update releases the next one.
  ASSERT_TRUE(guest_->Send(SeqHeader(VIRTIO_VSOCK_OP_CREDIT_UPDATE, 0, 0, 8192, 8192)).ok());
  EXPECT_EQ(GuestMessage(), m2);
  // A message larger than the guest's buffer cannot be delivered: reset.
  auto m3 = RandomBytes(8193, 6);
  ASSERT_EQ(::send(peer.get(), m3.data(), m3.size(), 0), 8193);
  ASSERT_TRUE(guest_->Send(SeqHeader(VIRTIO_VSOCK_OP_CREDIT_UPDATE, 0, 0, 8192, 11192)).ok());
  auto rst = NextRx();
  ASSERT_TRUE(rst);
  EXPECT_EQ(rst->hdr.op, VIRTIO_VSOCK_OP_RST);
  EXPECT_EQ(device_->stats().connections_active, 0u);
  char c;
  ASSERT_TRUE(RunUntil([&] { return ::recv(peer.get(), &c, 1, MSG_DONTWAIT) == 0; }));
}

TEST_F(SeqpacketTest, HalfClose) {
  Fd peer = ConnectSeq();
  SendMessage(Bytes("whole"), 4096);
  // A message without its EOM when the guest stops sending is dropped.
  auto h = SeqHeader(VIRTIO_VSOCK_OP_RW, 4);
  ASSERT_TRUE(guest_->Send(h, Bytes("part")).ok());
  ASSERT_TRUE(
      guest_->Send(SeqHeader(VIRTIO_VSOCK_OP_SHUTDOWN, 0, VIRTIO_VSOCK_SHUTDOWN_SEND)).ok());
  std::optional<std::vector<uint8_t>> got;
  ASSERT_TRUE(RunUntil([&] { return (got = HostRecv(peer.get())).has_value(); }));
  EXPECT_EQ(*got, Bytes("whole"));
  ASSERT_TRUE(RunUntil([&] {
    got = HostRecv(peer.get());
    return got.has_value();
  }));
  EXPECT_TRUE(got->empty());  // EOF (shutdown(SHUT_WR)), not "part"
  EXPECT_EQ(device_->stats().buffered_bytes, 0u);
  // The host still sends; then its shutdown reaches the guest after the message.
  ASSERT_EQ(::send(peer.get(), "reply", 5, 0), 5);
  ASSERT_EQ(::shutdown(peer.get(), SHUT_WR), 0);
  EXPECT_EQ(GuestMessage(), Bytes("reply"));
  auto sd = NextRx();
  ASSERT_TRUE(sd);
  EXPECT_EQ(sd->hdr.op, VIRTIO_VSOCK_OP_SHUTDOWN);
  EXPECT_EQ(sd->hdr.flags & VIRTIO_VSOCK_SHUTDOWN_SEND, VIRTIO_VSOCK_SHUTDOWN_SEND);
}

TEST_F(SeqpacketTest, TypeMismatchResets) {
  Fd peer = ConnectSeq();
  auto h = guest_->Header(VIRTIO_VSOCK_OP_RW, kGuestPort, kHostPort, 2);  // type STREAM
  ASSERT_TRUE(guest_->Send(h, Bytes("hi")).ok());
  auto rst = NextRx();
  ASSERT_TRUE(rst);
  EXPECT_EQ(rst->hdr.op, VIRTIO_VSOCK_OP_RST);
  EXPECT_EQ(device_->stats().connections_active, 0u);
}

TEST_F(SeqpacketTest, ConnectToGuest) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0, sv), 0);
  Fd mine(sv[0]);
  Fd theirs(sv[1]);
  std::optional<Result<uint32_t>> result;
  auto id = device_->ConnectToGuest(
      5000,
      [&](const Result<uint32_t>& r) -> std::optional<HostStream> {
        result = r;
        if (!r.ok()) return std::nullopt;
        return HostStream{std::move(theirs), {}};
      },
      VIRTIO_VSOCK_TYPE_SEQPACKET);
  ASSERT_TRUE(id.ok());
  auto req = NextRx();
  ASSERT_TRUE(req);
  EXPECT_EQ(req->hdr.op, VIRTIO_VSOCK_OP_REQUEST);
  EXPECT_EQ(req->hdr.type, VIRTIO_VSOCK_TYPE_SEQPACKET);
  auto resp = guest_->Header(VIRTIO_VSOCK_OP_RESPONSE, 5000, req->hdr.src_port);
  resp.type = VIRTIO_VSOCK_TYPE_SEQPACKET;
  ASSERT_TRUE(guest_->Send(resp).ok());
  Pump();
  ASSERT_TRUE(result && result->ok());
  auto h = guest_->Header(VIRTIO_VSOCK_OP_RW, 5000, req->hdr.src_port, 3);
  h.type = VIRTIO_VSOCK_TYPE_SEQPACKET;
  h.flags = VIRTIO_VSOCK_SEQ_EOM;
  ASSERT_TRUE(guest_->Send(h, Bytes("abc")).ok());
  std::optional<std::vector<uint8_t>> got;
  ASSERT_TRUE(RunUntil([&] { return (got = HostRecv(mine.get())).has_value(); }));
  EXPECT_EQ(*got, Bytes("abc"));
  ASSERT_EQ(::send(mine.get(), "de", 2, 0), 2);
  auto p = NextRx();
  ASSERT_TRUE(p);
  EXPECT_EQ(p->hdr.type, VIRTIO_VSOCK_TYPE_SEQPACKET);
  EXPECT_EQ(p->hdr.flags, VIRTIO_VSOCK_SEQ_EOM);
  EXPECT_EQ(p->payload, Bytes("de"));
}

// The sibling bridge (HostStream::message_flags): each record carries its message's flags in
// a trailing byte, both ways, so a guest's EOR reaches the other guest.
TEST_F(SeqpacketTest, MessageFlagsTrailerCarriesEorBothWays) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0, sv), 0);
  Fd mine(sv[0]);
  Fd theirs(sv[1]);
  std::optional<Result<uint32_t>> result;
  auto id = device_->ConnectToGuestFrom(
      4, 7777, 5000,
      [&](const Result<uint32_t>& r) -> std::optional<HostStream> {
        result = r;
        if (!r.ok()) return std::nullopt;
        return HostStream{std::move(theirs), {}, /*message_flags=*/true};
      },
      VIRTIO_VSOCK_TYPE_SEQPACKET);
  ASSERT_TRUE(id.ok());
  auto req = NextRx();
  ASSERT_TRUE(req);
  EXPECT_EQ(req->hdr.src_cid, 4u);
  auto resp = guest_->Header(VIRTIO_VSOCK_OP_RESPONSE, 5000, 7777);
  resp.dst_cid = 4;
  resp.type = VIRTIO_VSOCK_TYPE_SEQPACKET;
  ASSERT_TRUE(guest_->Send(resp).ok());
  Pump();
  ASSERT_TRUE(result && result->ok());
  // Guest -> bridge: "abc" with EOR, then "de" without: records "abc" + (EOM|EOR), "de" + EOM.
  for (auto [text, flags] : {std::pair{"abc", VIRTIO_VSOCK_SEQ_EOM | VIRTIO_VSOCK_SEQ_EOR},
                             std::pair{"de", uint32_t{VIRTIO_VSOCK_SEQ_EOM}}}) {
    auto h = guest_->Header(VIRTIO_VSOCK_OP_RW, 5000, 7777, static_cast<uint32_t>(strlen(text)));
    h.dst_cid = 4;
    h.type = VIRTIO_VSOCK_TYPE_SEQPACKET;
    h.flags = flags;
    ASSERT_TRUE(guest_->Send(h, Bytes(text)).ok());
    std::optional<std::vector<uint8_t>> got;
    ASSERT_TRUE(RunUntil([&] { return (got = HostRecv(mine.get())).has_value(); }));
    auto want = Bytes(text);
    want.push_back(static_cast<uint8_t>(flags));
    EXPECT_EQ(*got, want) << text;
  }
  // Bridge -> guest: the trailer becomes the last packet's flags and is not payload; a
  // record of just a trailer (an empty message) is dropped.
  const uint8_t eor_msg[] = {'x', 'y', VIRTIO_VSOCK_SEQ_EOM | VIRTIO_VSOCK_SEQ_EOR};
  const uint8_t empty_msg[] = {VIRTIO_VSOCK_SEQ_EOM};
  const uint8_t plain_msg[] = {'z', VIRTIO_VSOCK_SEQ_EOM};
  ASSERT_EQ(::send(mine.get(), eor_msg, sizeof eor_msg, 0), 3);
  ASSERT_EQ(::send(mine.get(), empty_msg, sizeof empty_msg, 0), 1);
  ASSERT_EQ(::send(mine.get(), plain_msg, sizeof plain_msg, 0), 2);
  auto p = NextRx();
  ASSERT_TRUE(p);
  EXPECT_EQ(p->hdr.src_cid, 4u);
  EXPECT_EQ(p->hdr.flags, VIRTIO_VSOCK_SEQ_EOM | VIRTIO_VSOCK_SEQ_EOR);
  EXPECT_EQ(p->payload, Bytes("xy"));
  auto q = NextRx();
  ASSERT_TRUE(q);
  EXPECT_EQ(q->hdr.flags, VIRTIO_VSOCK_SEQ_EOM);
  EXPECT_EQ(q->payload, Bytes("z"));
  // The trailer just past the rx buffers read into (one 4 KiB buffer for the next record,
  // sized by the 1-byte message before): still flags, not payload; and a payload byte past
  // them follows in a second packet with the flags.
  for (size_t size : {4096, 4097}) {
    auto record = RandomBytes(size, static_cast<uint32_t>(size));
    record.push_back(VIRTIO_VSOCK_SEQ_EOM | VIRTIO_VSOCK_SEQ_EOR);
    ASSERT_EQ(::send(mine.get(), record.data(), record.size(), 0),
              static_cast<ssize_t>(record.size()));
    std::vector<uint8_t> payload;
    std::vector<uint32_t> flags;
    while (flags.empty() || (flags.back() & VIRTIO_VSOCK_SEQ_EOM) == 0) {
      auto r = NextRx();
      ASSERT_TRUE(r) << size;
      ASSERT_EQ(r->hdr.op, VIRTIO_VSOCK_OP_RW);
      flags.push_back(r->hdr.flags);
      payload.insert(payload.end(), r->payload.begin(), r->payload.end());
    }
    record.pop_back();
    EXPECT_EQ(payload, record) << size;
    EXPECT_EQ(flags.size(), size == 4096 ? 1u : 2u) << size;
    EXPECT_EQ(flags.back(), VIRTIO_VSOCK_SEQ_EOM | VIRTIO_VSOCK_SEQ_EOR) << size;
  }
}

TEST_F(SeqpacketTest, ConnectToGuestNeedsAMessageSocket) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
  Fd mine(sv[0]);
  Fd theirs(sv[1]);
  auto id = device_->ConnectToGuest(
      5000,
      [&](const Result<uint32_t>& r) -> std::optional<HostStream> {
        if (!r.ok()) return std::nullopt;
        return HostStream{std::move(theirs), {}};
      },
      VIRTIO_VSOCK_TYPE_SEQPACKET);
  ASSERT_TRUE(id.ok());
  auto req = NextRx();
  ASSERT_TRUE(req);
  auto resp = guest_->Header(VIRTIO_VSOCK_OP_RESPONSE, 5000, req->hdr.src_port);
  resp.type = VIRTIO_VSOCK_TYPE_SEQPACKET;
  ASSERT_TRUE(guest_->Send(resp).ok());
  auto rst = NextRx();
  ASSERT_TRUE(rst);
  EXPECT_EQ(rst->hdr.op, VIRTIO_VSOCK_OP_RST);
  EXPECT_EQ(device_->stats().connections_active, 0u);
}

// An RST whose type differs from the connection's still refuses a pending host -> guest
// connect (a stream one here, SEQPACKET negotiated): the caller learns it at once, not
// at its own timeout.
TEST_F(SeqpacketTest, ConnectToGuestRefusedByRstOfAnotherType) {
  std::optional<Result<uint32_t>> result = ConnectToGuestAnsweredByRst(VIRTIO_VSOCK_TYPE_SEQPACKET);
  ASSERT_TRUE(result.has_value());
  ASSERT_FALSE(result->ok());
  EXPECT_EQ(result->error().code, ECONNREFUSED);
  EXPECT_EQ(device_->stats().connections_active, 0u);
}

// ---- Budgets and policy (vsock/admission.h), enforced by the device -------------------

}  // namespace
}  // namespace vsockd::vsock
