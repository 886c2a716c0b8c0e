// vsock::Device: features and config, connection set-up and teardown both ways (REQUEST,
// RESPONSE, RST, SHUTDOWN, timeouts), addressing (CIDs, siblings), malformed chains, driver
// reset and frontend loss, policy and budgets, the connection listing. Data and credit:
// device_data_test.cc; SEQPACKET: device_seqpacket_test.cc. Fixture:
// vsock/testing/device_fixture.h.
#include "vsock/device.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "vsock/admission.h"
#include "vsock/testing/device_fixture.h"

namespace vsockd::vsock {
namespace {

using testing::Bytes;
using testing::DeviceTest;
using testing::FakeGuestOptions;
using testing::kGuestPort;
using testing::kHostPort;
using testing::ReadAvailable;
using testing::RxPacket;

TEST_F(DeviceTest, FeaturesAndConfig) {
  uint64_t f = device_->DeviceFeatures();
  EXPECT_TRUE(f & (1ull << virtio::VIRTIO_F_VERSION_1));
  EXPECT_TRUE(f & (1ull << virtio::VIRTIO_RING_F_EVENT_IDX));
  EXPECT_TRUE(f & (1ull << virtio::VIRTIO_RING_F_INDIRECT_DESC));
  EXPECT_TRUE(f & (1ull << VIRTIO_VSOCK_F_SEQPACKET));
  uint8_t cfg[8];
  ASSERT_TRUE(device_->ReadConfig(0, cfg));
  uint64_t cid;
  std::memcpy(&cid, cfg, 8);
  EXPECT_EQ(le64toh(cid), 3u);
  EXPECT_FALSE(device_->ReadConfig(4, std::span<uint8_t>(cfg, 8)));
  EXPECT_TRUE(device_->ReadConfig(4, std::span<uint8_t>(cfg, 4)));
  EXPECT_EQ(device_->guest_cid(), 3u);

  DeviceOptions o;
  o.offer_event_idx = false;
  o.offer_indirect = false;
  o.offer_seqpacket = false;
  Device d(loop_.get(), backend_.get(), o);
  EXPECT_EQ(d.DeviceFeatures(), 1ull << virtio::VIRTIO_F_VERSION_1);
}

TEST_F(DeviceTest, GuestConnectGetsResponse) {
  ASSERT_TRUE(guest_->Send(guest_->Header(VIRTIO_VSOCK_OP_REQUEST, kGuestPort, kHostPort)).ok());
  auto resp = NextRx();
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->hdr.op, VIRTIO_VSOCK_OP_RESPONSE);
  EXPECT_EQ(resp->hdr.src_cid, VMADDR_CID_HOST);
  EXPECT_EQ(resp->hdr.src_port, kHostPort);
  EXPECT_EQ(resp->hdr.dst_cid, 3u);
  EXPECT_EQ(resp->hdr.dst_port, kGuestPort);
  EXPECT_EQ(resp->hdr.type, VIRTIO_VSOCK_TYPE_STREAM);
  EXPECT_EQ(resp->hdr.buf_alloc, dopts_.buf_alloc);
  EXPECT_EQ(resp->hdr.fwd_cnt, 0u);
  EXPECT_EQ(resp->used_len, kHeaderSize);
  EXPECT_EQ(device_->stats().connections_opened, 1u);
  EXPECT_EQ(device_->stats().connections_active, 1u);
  EXPECT_EQ(backend_->connect_calls(), 1u);
}

TEST_F(DeviceTest, HalfCloseGuestToHost) {
  Fd peer = Connect();
  SendRw(Bytes("last words"), 0, false);
  auto sh = guest_->Header(VIRTIO_VSOCK_OP_SHUTDOWN, kGuestPort, kHostPort);
  sh.flags = VIRTIO_VSOCK_SHUTDOWN_SEND;
  ASSERT_TRUE(guest_->Send(sh).ok());
  std::vector<uint8_t> got;
  bool eof = false;
  ASSERT_TRUE(RunUntil([&] {
    ReadAvailable(peer.get(), &got, &eof);
    return eof;
  }));
  EXPECT_EQ(std::string(got.begin(), got.end()), "last words");
  // The other direction still works.
  ASSERT_EQ(::write(peer.get(), "reply", 5), 5);
  auto data = ReceiveRw(5);
  EXPECT_EQ(std::string(data.begin(), data.end()), "reply");
  // Both bits, nothing pending: RST, freed.
  sh.flags = VIRTIO_VSOCK_SHUTDOWN_SEND | VIRTIO_VSOCK_SHUTDOWN_RCV;
  ASSERT_TRUE(guest_->Send(sh).ok());
  auto rst = NextRx();
  ASSERT_TRUE(rst);
  EXPECT_EQ(rst->hdr.op, VIRTIO_VSOCK_OP_RST);
  EXPECT_EQ(device_->stats().connections_active, 0u);
}

TEST_F(DeviceTest, HalfCloseHostToGuest) {
  Fd peer = Connect();
  ASSERT_EQ(::write(peer.get(), "bye", 3), 3);
  ASSERT_EQ(::shutdown(peer.get(), SHUT_WR), 0);
  std::vector<RxPacket> others;
  auto data = ReceiveRw(3, &others);
  EXPECT_EQ(std::string(data.begin(), data.end()), "bye");
  RunUntil([&] {
    while (!guest_->rx_packets().empty()) {
      others.push_back(std::move(guest_->rx_packets().front()));
      guest_->rx_packets().pop_front();
    }
    return !others.empty();
  });
  ASSERT_EQ(others.size(), 1u);
  EXPECT_EQ(others[0].hdr.op, VIRTIO_VSOCK_OP_SHUTDOWN);
  EXPECT_EQ(others[0].hdr.flags, VIRTIO_VSOCK_SHUTDOWN_SEND);
  // The guest keeps sending.
  SendRw(Bytes("still here"));
  std::vector<uint8_t> got;
  ASSERT_TRUE(RunUntil([&] {
    ReadAvailable(peer.get(), &got);
    return got.size() >= 10;
  }));
  EXPECT_EQ(std::string(got.begin(), got.end()), "still here");
  EXPECT_EQ(device_->stats().connections_active, 1u);
  // Now the host closes fully: SHUTDOWN(RCV|SEND), then the guest's RST frees it.
  peer.Reset();
  auto sh = NextRx();
  ASSERT_TRUE(sh);
  EXPECT_EQ(sh->hdr.op, VIRTIO_VSOCK_OP_SHUTDOWN);
  EXPECT_EQ(sh->hdr.flags, VIRTIO_VSOCK_SHUTDOWN_SEND | VIRTIO_VSOCK_SHUTDOWN_RCV);
  ASSERT_TRUE(guest_->Send(guest_->Header(VIRTIO_VSOCK_OP_RST, kGuestPort, kHostPort)).ok());
  Pump();
  EXPECT_EQ(device_->stats().connections_active, 0u);
  guest_->CollectRx();
  EXPECT_TRUE(guest_->rx_packets().empty());  // RST is never answered
}

// The guest's shutdown(SHUT_RD) reaches an AF_UNIX peer as shutdown(SHUT_RD): its sends fail
// with EPIPE (vsock_test "SOCK_STREAM SHUT_RD"); the other direction keeps working.
TEST_F(DeviceTest, GuestShutRdMakesTheHostPeersSendsFail) {
  Fd peer = Connect();
  auto sh = guest_->Header(VIRTIO_VSOCK_OP_SHUTDOWN, kGuestPort, kHostPort);
  sh.flags = VIRTIO_VSOCK_SHUTDOWN_RCV;
  ASSERT_TRUE(guest_->Send(sh).ok());
  Pump();
  errno = 0;
  EXPECT_EQ(::send(peer.get(), "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT), -1);
  EXPECT_EQ(errno, EPIPE);
  SendRw(Bytes("still sending"));
  std::vector<uint8_t> got;
  ASSERT_TRUE(RunUntil([&] {
    ReadAvailable(peer.get(), &got);
    return got.size() >= 13;
  }));
  EXPECT_EQ(std::string(got.begin(), got.end()), "still sending");
  EXPECT_EQ(device_->stats().connections_active, 1u);
}

// A host peer's shutdown(SHUT_RD) reaches the guest as SHUTDOWN(RCV) before the guest sends
// (the zero-length probe on the wakeup), and data the guest sent anyway is consumed (credit
// moves on), never an RST.
TEST_F(DeviceTest, HostShutRdReachesTheGuestAsShutdownRcv) {
  Fd peer = Connect();
  ASSERT_EQ(::shutdown(peer.get(), SHUT_RD), 0);
  auto sh = NextRx();
  ASSERT_TRUE(sh);
  EXPECT_EQ(sh->hdr.op, VIRTIO_VSOCK_OP_SHUTDOWN);
  EXPECT_EQ(sh->hdr.flags, VIRTIO_VSOCK_SHUTDOWN_RCV);
  SendRw(Bytes("nobody reads this"));
  Pump();
  EXPECT_EQ(device_->stats().connections_active, 1u);
  EXPECT_EQ(device_->stats().buffered_bytes, 0u);
  // Host -> guest still flows.
  ASSERT_EQ(::write(peer.get(), "reply", 5), 5);
  auto data = ReceiveRw(5);
  EXPECT_EQ(std::string(data.begin(), data.end()), "reply");
}

// A keeper learns of every connection opened and freed; after a restart, the connections the
// previous process had open get an RST each (reason "restarted"), those open now do not.
TEST_F(DeviceTest, ConnectionObserverAndResetAfterRestart) {
  std::vector<std::pair<uint32_t, bool>> seen;
  device_->SetConnectionObserver(
      [&](const ConnectionInfo& info, bool opened) { seen.emplace_back(info.guest_port, opened); });
  Fd peer = Connect();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], std::make_pair(kGuestPort, true));
  ASSERT_TRUE(guest_->Send(guest_->Header(VIRTIO_VSOCK_OP_RST, kGuestPort, kHostPort)).ok());
  Pump();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[1], std::make_pair(kGuestPort, false));

  Fd open_now = Connect(kGuestPort + 1);
  std::vector<ConnectionInfo> before = {
      {3, kGuestPort + 1, VMADDR_CID_HOST, kHostPort, VIRTIO_VSOCK_TYPE_STREAM},  // open now
      {3, 7000, VMADDR_CID_HOST, 123456, VIRTIO_VSOCK_TYPE_STREAM},
      {3, 7001, 4, 5000, VIRTIO_VSOCK_TYPE_SEQPACKET}};
  device_->ResetGuestConnections(before);
  std::vector<RxPacket> rsts;
  ASSERT_TRUE(RunUntil([&] {
    guest_->CollectRx();
    while (!guest_->rx_packets().empty()) {
      rsts.push_back(std::move(guest_->rx_packets().front()));
      guest_->rx_packets().pop_front();
    }
    return rsts.size() >= 2;
  }));
  ASSERT_EQ(rsts.size(), 2u);
  EXPECT_EQ(rsts[0].hdr.op, VIRTIO_VSOCK_OP_RST);
  EXPECT_EQ(rsts[0].hdr.dst_port, 7000u);
  EXPECT_EQ(rsts[0].hdr.src_port, 123456u);
  EXPECT_EQ(rsts[0].hdr.src_cid, VMADDR_CID_HOST);
  EXPECT_EQ(rsts[1].hdr.op, VIRTIO_VSOCK_OP_RST);
  EXPECT_EQ(rsts[1].hdr.src_cid, 4u);
  EXPECT_EQ(rsts[1].hdr.type, VIRTIO_VSOCK_TYPE_SEQPACKET);
  EXPECT_EQ(device_->stats().rst_by_reason[static_cast<size_t>(RstReason::kRestarted)], 2u);
  EXPECT_EQ(device_->stats().connections_active, 1u);
  device_->SetConnectionObserver(nullptr);
}

TEST_F(DeviceTest, HostCloseThenCloseTimeoutSendsRst) {
  DeviceOptions o;
  o.close_timeout = std::chrono::milliseconds(20);
  Make(o, FakeGuestOptions{});
  Fd peer = Connect();
  ASSERT_EQ(::write(peer.get(), "data", 4), 4);
  peer.Reset();
  std::vector<RxPacket> others;
  auto data = ReceiveRw(4, &others);
  EXPECT_EQ(std::string(data.begin(), data.end()), "data");
  ASSERT_TRUE(RunUntil([&] {
    while (!guest_->rx_packets().empty()) {
      others.push_back(std::move(guest_->rx_packets().front()));
      guest_->rx_packets().pop_front();
    }
    return others.size() >= 2;
  }));
  EXPECT_EQ(others[0].hdr.op, VIRTIO_VSOCK_OP_SHUTDOWN);
  EXPECT_EQ(others[0].hdr.flags, VIRTIO_VSOCK_SHUTDOWN_SEND | VIRTIO_VSOCK_SHUTDOWN_RCV);
  EXPECT_EQ(others[1].hdr.op, VIRTIO_VSOCK_OP_RST);
  EXPECT_EQ(device_->stats().connections_active, 0u);
}

// The host closed (we sent SHUTDOWN both ways and wait for the guest's RST); the guest
// closes at the same time and sends its own SHUTDOWN of both directions: we answer with RST
// at once instead of leaving the guest socket to linger until our close timeout.
TEST_F(DeviceTest, GuestShutdownWhileClosingGetsRstAtOnce) {
  DeviceOptions o;
  o.close_timeout = std::chrono::seconds(60);  // the RST must not come from the timer
  Make(o, FakeGuestOptions{});
  Fd peer = Connect();
  peer.Reset();
  std::vector<RxPacket> got;
  auto drain = [&] {
    while (!guest_->rx_packets().empty()) {
      got.push_back(std::move(guest_->rx_packets().front()));
      guest_->rx_packets().pop_front();
    }
  };
  ASSERT_TRUE(RunUntil([&] {
    drain();
    return !got.empty();
  }));
  EXPECT_EQ(got[0].hdr.op, VIRTIO_VSOCK_OP_SHUTDOWN);
  got.clear();
  auto h = guest_->Header(VIRTIO_VSOCK_OP_SHUTDOWN, kGuestPort, kHostPort);
  h.flags = VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND;
  ASSERT_TRUE(guest_->Send(h).ok());
  ASSERT_TRUE(RunUntil([&] {
    drain();
    return !got.empty();
  }));
  EXPECT_EQ(got[0].hdr.op, VIRTIO_VSOCK_OP_RST);
  EXPECT_EQ(device_->stats().connections_active, 0u);
}

TEST_F(DeviceTest, GuestRstClosesHostImmediately) {
  Fd peer = Connect();
  ASSERT_TRUE(guest_->Send(guest_->Header(VIRTIO_VSOCK_OP_RST, kGuestPort, kHostPort)).ok());
  Pump();
  EXPECT_EQ(device_->stats().connections_active, 0u);
  std::vector<uint8_t> got;
  bool eof = false;
  ReadAvailable(peer.get(), &got, &eof);
  EXPECT_TRUE(eof);
  // The port pair can be reused at once.
  Fd again = Connect();
  EXPECT_TRUE(again.valid());
}

TEST_F(DeviceTest, RstForUnknownConnectionButNotForRst) {
  SendRw(Bytes("who?"));
  auto p = NextRx();
  ASSERT_TRUE(p);
  EXPECT_EQ(p->hdr.op, VIRTIO_VSOCK_OP_RST);
  EXPECT_EQ(p->hdr.src_port, kHostPort);
  EXPECT_EQ(p->hdr.dst_port, kGuestPort);
  EXPECT_EQ(p->hdr.dst_cid, 3u);
  EXPECT_EQ(p->hdr.src_cid, VMADDR_CID_HOST);
  ASSERT_TRUE(guest_->Send(guest_->Header(VIRTIO_VSOCK_OP_RST, kGuestPort, kHostPort)).ok());
  Pump(10);
  guest_->CollectRx();
  EXPECT_TRUE(guest_->rx_packets().empty());
  EXPECT_EQ(device_->stats().rst_sent, 1u);
  EXPECT_EQ(device_->stats().rst_by_reason[static_cast<size_t>(RstReason::kUnknownConnection)], 1u);
}

TEST_F(DeviceTest, RefusedHostConnectGetsRst) {
  backend_->Refuse(kHostPort);
  ASSERT_TRUE(guest_->Send(guest_->Header(VIRTIO_VSOCK_OP_REQUEST, kGuestPort, kHostPort)).ok());
  auto p = NextRx();
  ASSERT_TRUE(p);
  EXPECT_EQ(p->hdr.op, VIRTIO_VSOCK_OP_RST);
  EXPECT_EQ(device_->stats().connections_active, 0u);
  EXPECT_EQ(device_->stats().rst_by_reason[static_cast<size_t>(RstReason::kRefused)], 1u);
}

TEST_F(DeviceTest, RstWhileHostConnectPendingCancelsIt) {
  backend_->set_hold(true);
  ASSERT_TRUE(guest_->Send(guest_->Header(VIRTIO_VSOCK_OP_REQUEST, kGuestPort, kHostPort)).ok());
  Pump();
  EXPECT_EQ(device_->stats().connections_active, 1u);
  ASSERT_TRUE(guest_->Send(guest_->Header(VIRTIO_VSOCK_OP_RST, kGuestPort, kHostPort)).ok());
  Pump();
  EXPECT_EQ(device_->stats().connections_active, 0u);
  EXPECT_EQ(backend_->cancelled(), 1u);
  backend_->ReleaseHeld();
  Pump();
  guest_->CollectRx();
  EXPECT_TRUE(guest_->rx_packets().empty());
}

TEST_F(DeviceTest, SpoofedSrcCidDroppedSilently) {
  auto h = guest_->Header(VIRTIO_VSOCK_OP_REQUEST, kGuestPort, kHostPort);
  h.src_cid = 4;
  ASSERT_TRUE(guest_->Send(h).ok());
  Pump(10);
  guest_->CollectRx();
  EXPECT_TRUE(guest_->rx_packets().empty());
  EXPECT_EQ(guest_->ReapTx(), 1u);
  EXPECT_EQ(device_->stats().dropped_packets, 1u);
  EXPECT_EQ(backend_->connect_calls(), 0u);
}

// The device no longer assumes the peer is the host: a REQUEST to another CID goes to the
// backend (which routes siblings or refuses), keyed apart from the same ports on CID 2.
TEST_F(DeviceTest, OtherDstCidGoesToTheBackend) {
  auto h = guest_->Header(VIRTIO_VSOCK_OP_REQUEST, kGuestPort, kHostPort);
  h.dst_cid = 7;
  ASSERT_TRUE(guest_->Send(h).ok());
  auto p = NextRx();
  ASSERT_TRUE(p);
  EXPECT_EQ(p->hdr.op, VIRTIO_VSOCK_OP_RESPONSE) << DescribeHeader(p->hdr);
  EXPECT_EQ(p->hdr.src_cid, 7u);
  EXPECT_EQ(p->hdr.src_port, kHostPort);
  ASSERT_EQ(backend_->infos().size(), 1u);
  EXPECT_EQ(backend_->infos()[0].host_cid, 7u);
  EXPECT_EQ(backend_->infos()[0].host_port, kHostPort);
  EXPECT_EQ(backend_->infos()[0].guest_cid, 3u);
  EXPECT_EQ(backend_->infos()[0].guest_port, kGuestPort);
}

TEST_F(DeviceTest, BackendRefusingAnotherCidGetsRst) {
  backend_->Refuse(kHostPort);
  auto h = guest_->Header(VIRTIO_VSOCK_OP_REQUEST, kGuestPort, kHostPort);
  h.dst_cid = 7;
  ASSERT_TRUE(guest_->Send(h).ok());
  auto p = NextRx();
  ASSERT_TRUE(p);
  EXPECT_EQ(p->hdr.op, VIRTIO_VSOCK_OP_RST);
  EXPECT_EQ(p->hdr.src_cid, 7u);
  EXPECT_EQ(p->hdr.dst_port, kGuestPort);
  EXPECT_EQ(backend_->connect_calls(), 1u);
  EXPECT_EQ(device_->stats().connections_active, 0u);
}

TEST_F(DeviceTest, ImpossibleDstCidsGetRstWithoutTheBackend) {
  // 0 (hypervisor), 1 (local), our own CID, VMADDR_CID_ANY, above 32 bits.
  for (uint64_t cid : {0ull, 1ull, 3ull, 0xFFFFFFFFull, 1ull << 32}) {
    auto h = guest_->Header(VIRTIO_VSOCK_OP_REQUEST, kGuestPort, kHostPort);
    h.dst_cid = cid;
    ASSERT_TRUE(guest_->Send(h).ok());
    auto p = NextRx();
    ASSERT_TRUE(p) << cid;
    EXPECT_EQ(p->hdr.op, VIRTIO_VSOCK_OP_RST) << cid;
    EXPECT_EQ(p->hdr.src_cid, cid);
  }
  EXPECT_EQ(backend_->connect_calls(), 0u);
}

TEST_F(DeviceTest, SamePortsToDifferentPeerCidsAreDistinctConnections) {
  Fd host_peer = Connect();  // kGuestPort -> 2:kHostPort
  ASSERT_TRUE(host_peer.valid());
  auto h = guest_->Header(VIRTIO_VSOCK_OP_REQUEST, kGuestPort, kHostPort);
  h.dst_cid = 9;
  ASSERT_TRUE(guest_->Send(h).ok());
  auto resp = NextRx();
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->hdr.op, VIRTIO_VSOCK_OP_RESPONSE);
  EXPECT_EQ(resp->hdr.src_cid, 9u);
  Fd sibling_peer = backend_->TakePeer(kHostPort);
  ASSERT_TRUE(sibling_peer.valid());
  ASSERT_TRUE(SetNonBlocking(sibling_peer.get()).ok());
  EXPECT_EQ(device_->stats().connections_active, 2u);

  auto rw = guest_->Header(VIRTIO_VSOCK_OP_RW, kGuestPort, kHostPort, 3);
  rw.dst_cid = 9;
  ASSERT_TRUE(guest_->Send(rw, Bytes("sib")).ok());
  SendRw(Bytes("host"));
  std::vector<uint8_t> at_host, at_sibling;
  ASSERT_TRUE(RunUntil([&] {
    ReadAvailable(host_peer.get(), &at_host);
    ReadAvailable(sibling_peer.get(), &at_sibling);
    return at_host.size() >= 4 && at_sibling.size() >= 3;
  }));
  EXPECT_EQ(std::string(at_host.begin(), at_host.end()), "host");
  EXPECT_EQ(std::string(at_sibling.begin(), at_sibling.end()), "sib");

  // Data from the sibling's stream reaches the guest from CID 9.
  ASSERT_EQ(::write(sibling_peer.get(), "xy", 2), 2);
  auto p = NextRx();
  ASSERT_TRUE(p);
  EXPECT_EQ(p->hdr.op, VIRTIO_VSOCK_OP_RW);
  EXPECT_EQ(p->hdr.src_cid, 9u);
  EXPECT_EQ(p->hdr.len, 2u);

  // An RST for the sibling connection leaves the host one alone.
  auto rst = guest_->Header(VIRTIO_VSOCK_OP_RST, kGuestPort, kHostPort);
  rst.dst_cid = 9;
  ASSERT_TRUE(guest_->Send(rst).ok());
  Pump();
  EXPECT_EQ(device_->stats().connections_active, 1u);
}

TEST_F(DeviceTest, ConnectToGuestFromUsesThePeerAddress) {
  std::optional<Result<uint32_t>> result;
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
  Fd mine(sv[0]);
  Fd theirs(sv[1]);
  auto id = device_->ConnectToGuestFrom(
      9, 4321, 5000, [&](const Result<uint32_t>& r) -> std::optional<HostStream> {
        result = r;
        if (!r.ok()) return std::nullopt;
        return HostStream{std::move(theirs), {}};
      });
  ASSERT_TRUE(id.ok()) << id.error().ToString();
  auto req = NextRx();
  ASSERT_TRUE(req);
  EXPECT_EQ(req->hdr.op, VIRTIO_VSOCK_OP_REQUEST);
  EXPECT_EQ(req->hdr.src_cid, 9u);
  EXPECT_EQ(req->hdr.src_port, 4321u);
  EXPECT_EQ(req->hdr.dst_port, 5000u);
  // The same peer address again while it exists: refused.
  auto dup = device_->ConnectToGuestFrom(
      9, 4321, 5000, [](const Result<uint32_t>&) -> std::optional<HostStream> { return {}; });
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(dup.error().code, EADDRINUSE);
  auto resp = guest_->Header(VIRTIO_VSOCK_OP_RESPONSE, 5000, 4321);
  resp.dst_cid = 9;
  ASSERT_TRUE(guest_->Send(resp).ok());
  Pump();
  ASSERT_TRUE(result.has_value());
  ASSERT_TRUE(result->ok());
  EXPECT_EQ(result->value(), 4321u);
  auto h = guest_->Header(VIRTIO_VSOCK_OP_RW, 5000, 4321, 2);
  h.dst_cid = 9;
  ASSERT_TRUE(guest_->Send(h, Bytes("hi")).ok());
  std::vector<uint8_t> got;
  ASSERT_TRUE(RunUntil([&] {
    ReadAvailable(mine.get(), &got);
    return got.size() >= 2;
  }));
  EXPECT_EQ(std::string(got.begin(), got.end()), "hi");
  // A RESPONSE that names the host instead of CID 9 is not this connection.
  EXPECT_EQ(device_->stats().connections_active, 1u);
}

TEST_F(DeviceTest, ConnectToGuestFromRejectsImpossiblePeers) {
  auto none = [](const Result<uint32_t>&) -> std::optional<HostStream> { return {}; };
  for (uint64_t cid : {0ull, 1ull, 2ull, 3ull, 0xFFFFFFFFull, 1ull << 32}) {
    auto r = device_->ConnectToGuestFrom(cid, 1, 5000, none);
    ASSERT_FALSE(r.ok()) << cid;
    EXPECT_EQ(r.error().code, EINVAL) << cid;
  }
  EXPECT_EQ(device_->stats().connections_active, 0u);
}

TEST_F(DeviceTest, BadTypeGetsRstWithTypeEchoed) {
  auto h = guest_->Header(VIRTIO_VSOCK_OP_REQUEST, kGuestPort, kHostPort);
  h.type = VIRTIO_VSOCK_TYPE_SEQPACKET;
  ASSERT_TRUE(guest_->Send(h).ok());
  auto p = NextRx();
  ASSERT_TRUE(p);
  EXPECT_EQ(p->hdr.op, VIRTIO_VSOCK_OP_RST);
  EXPECT_EQ(p->hdr.type, VIRTIO_VSOCK_TYPE_SEQPACKET);
  auto u = guest_->Header(99, kGuestPort, kHostPort);  // unknown op
  ASSERT_TRUE(guest_->Send(u).ok());
  p = NextRx();
  ASSERT_TRUE(p);
  EXPECT_EQ(p->hdr.op, VIRTIO_VSOCK_OP_RST);
}

TEST_F(DeviceTest, MalformedChainsDroppedAndReturned) {
  uint8_t raw[kHeaderSize];
  // len larger than the bytes present.
  EncodeHeader(guest_->Header(VIRTIO_VSOCK_OP_RW, kGuestPort, kHostPort, 100), raw);
  std::vector<uint8_t> hdr(raw, raw + kHeaderSize);
  ASSERT_TRUE(guest_->SendChain({hdr, std::vector<uint8_t>(50, 1)}, {}).ok());
  // A short header.
  ASSERT_TRUE(guest_->SendChain({std::vector<uint8_t>(20, 0)}, {}).ok());
  // Writable descriptors in a tx chain.
  EncodeHeader(guest_->Header(VIRTIO_VSOCK_OP_REQUEST, kGuestPort, kHostPort), raw);
  ASSERT_TRUE(guest_->SendChain({std::vector<uint8_t>(raw, raw + kHeaderSize)}, {64}).ok());
  // len above 64 KiB.
  EncodeHeader(guest_->Header(VIRTIO_VSOCK_OP_RW, kGuestPort, kHostPort, 65537), raw);
  ASSERT_TRUE(
      guest_
          ->SendChain({std::vector<uint8_t>(raw, raw + kHeaderSize), std::vector<uint8_t>(65537)},
                      {})
          .ok());
  Pump(10);
  guest_->ReapTx();
  EXPECT_EQ(guest_->tx_returned(), 4u);
  guest_->CollectRx();
  EXPECT_TRUE(guest_->rx_packets().empty());
  EXPECT_EQ(device_->stats().dropped_packets, 4u);
}

TEST_F(DeviceTest, HeaderSpanningDescriptorsIsParsed) {
  uint8_t raw[kHeaderSize];
  EncodeHeader(guest_->Header(VIRTIO_VSOCK_OP_REQUEST, kGuestPort, kHostPort), raw);
  ASSERT_TRUE(guest_
                  ->SendChain({std::vector<uint8_t>(raw, raw + 10),
                               std::vector<uint8_t>(raw + 10, raw + 30),
                               std::vector<uint8_t>(raw + 30, raw + kHeaderSize)},
                              {})
                  .ok());
  auto p = NextRx();
  ASSERT_TRUE(p);
  EXPECT_EQ(p->hdr.op, VIRTIO_VSOCK_OP_RESPONSE);
  Fd peer = backend_->TakePeer(kHostPort);
  ASSERT_TRUE(peer.valid());
  ASSERT_TRUE(SetNonBlocking(peer.get()).ok());
  // RW whose header and payload share descriptors in odd places.
  EncodeHeader(guest_->Header(VIRTIO_VSOCK_OP_RW, kGuestPort, kHostPort, 6), raw);
  std::vector<uint8_t> a(raw, raw + 40);
  std::vector<uint8_t> b(raw + 40, raw + kHeaderSize);
  b.insert(b.end(), {'a', 'b'});
  ASSERT_TRUE(guest_->SendChain({a, b, Bytes("cdef")}, {}).ok());
  std::vector<uint8_t> got;
  ASSERT_TRUE(RunUntil([&] {
    ReadAvailable(peer.get(), &got);
    return got.size() >= 6;
  }));
  EXPECT_EQ(std::string(got.begin(), got.end()), "abcdef");
}

TEST_F(DeviceTest, DuplicateRequestResetsAndLimitRefuses) {
  DeviceOptions o;
  o.budget.max_connections = 1;
  Make(o, FakeGuestOptions{});
  Fd peer = Connect();
  // A second connection is beyond the limit.
  ASSERT_TRUE(guest_->Send(guest_->Header(VIRTIO_VSOCK_OP_REQUEST, 2000, kHostPort)).ok());
  auto p = NextRx();
  ASSERT_TRUE(p);
  EXPECT_EQ(p->hdr.op, VIRTIO_VSOCK_OP_RST);
  EXPECT_EQ(p->hdr.dst_port, 2000u);
  // REQUEST for the existing connection: RST, connection gone, host sees EOF.
  ASSERT_TRUE(guest_->Send(guest_->Header(VIRTIO_VSOCK_OP_REQUEST, kGuestPort, kHostPort)).ok());
  p = NextRx();
  ASSERT_TRUE(p);
  EXPECT_EQ(p->hdr.op, VIRTIO_VSOCK_OP_RST);
  EXPECT_EQ(device_->stats().connections_active, 0u);
  std::vector<uint8_t> got;
  bool eof = false;
  ReadAvailable(peer.get(), &got, &eof);
  EXPECT_TRUE(eof);
}

TEST_F(DeviceTest, ConnectToGuestAccepted) {
  std::optional<Result<uint32_t>> result;
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
  Fd mine(sv[0]);
  Fd theirs(sv[1]);
  auto id =
      device_->ConnectToGuest(5000, [&](const Result<uint32_t>& r) -> std::optional<HostStream> {
        result = r;
        if (!r.ok()) return std::nullopt;
        return HostStream{std::move(theirs), "early"};
      });
  ASSERT_TRUE(id.ok());
  auto req = NextRx();
  ASSERT_TRUE(req);
  EXPECT_EQ(req->hdr.op, VIRTIO_VSOCK_OP_REQUEST);
  EXPECT_EQ(req->hdr.dst_port, 5000u);
  EXPECT_GE(req->hdr.src_port, 1u << 30);
  EXPECT_LT(req->hdr.src_port, 1u << 31);
  EXPECT_EQ(req->hdr.buf_alloc, dopts_.buf_alloc);
  auto resp = guest_->Header(VIRTIO_VSOCK_OP_RESPONSE, 5000, req->hdr.src_port);
  ASSERT_TRUE(guest_->Send(resp).ok());
  Pump();
  ASSERT_TRUE(result.has_value());
  ASSERT_TRUE(result->ok());
  EXPECT_EQ(result->value(), req->hdr.src_port);
  auto got = ReceiveRw(5);
  EXPECT_EQ(std::string(got.begin(), got.end()), "early");
  auto h = guest_->Header(VIRTIO_VSOCK_OP_RW, 5000, req->hdr.src_port, 2);
  ASSERT_TRUE(guest_->Send(h, Bytes("hi")).ok());
  std::vector<uint8_t> host_got;
  ASSERT_TRUE(RunUntil([&] {
    ReadAvailable(mine.get(), &host_got);
    return host_got.size() >= 2;
  }));
  EXPECT_EQ(std::string(host_got.begin(), host_got.end()), "hi");
}

TEST_F(DeviceTest, ConnectToGuestRefused) {
  std::optional<Result<uint32_t>> result = ConnectToGuestAnsweredByRst(VIRTIO_VSOCK_TYPE_STREAM);
  ASSERT_TRUE(result.has_value());
  ASSERT_FALSE(result->ok());
  EXPECT_EQ(result->error().code, ECONNREFUSED);
  EXPECT_EQ(device_->stats().connections_active, 0u);
  guest_->CollectRx();
  EXPECT_TRUE(guest_->rx_packets().empty());
}

TEST_F(DeviceTest, ConnectToGuestWaitsForRxBuffers) {
  Make(DeviceOptions{}, FakeGuestOptions{}, /*rx_buffers=*/0);
  auto id = device_->ConnectToGuest(
      5000, [&](const Result<uint32_t>&) -> std::optional<HostStream> { return std::nullopt; });
  ASSERT_TRUE(id.ok());
  Pump();
  EXPECT_EQ(device_->stats().rx_packets, 0u);
  // No rx buffer yet: the REQUEST waits, then goes out when the driver posts buffers.
  guest_->PostRx(4);
  auto req = NextRx();
  ASSERT_TRUE(req);
  EXPECT_EQ(req->hdr.op, VIRTIO_VSOCK_OP_REQUEST);
  EXPECT_EQ(req->hdr.dst_port, 5000u);
}

TEST_F(DeviceTest, ConnectToGuestTimesOut) {
  DeviceOptions o;
  o.connect_timeout = std::chrono::milliseconds(10);
  Make(o, FakeGuestOptions{});
  std::optional<Result<uint32_t>> result;
  auto id = ConnectToGuestRecording(&result);
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(RunUntil([&] { return result.has_value(); }));
  ASSERT_FALSE(result->ok());
  EXPECT_EQ(result->error().code, ETIMEDOUT);
  EXPECT_EQ(device_->stats().connections_active, 0u);
  // A late answer finds no connection and is reset.
  guest_->rx_packets().clear();
  ASSERT_TRUE(guest_->Send(guest_->Header(VIRTIO_VSOCK_OP_RESPONSE, 5000, 1u << 30)).ok());
  auto p = NextRx();
  ASSERT_TRUE(p);
  EXPECT_EQ(p->hdr.op, VIRTIO_VSOCK_OP_RST);
}

TEST_F(DeviceTest, CancelConnectToGuest) {
  bool called = false;
  auto id =
      device_->ConnectToGuest(5000, [&](const Result<uint32_t>&) -> std::optional<HostStream> {
        called = true;
        return std::nullopt;
      });
  ASSERT_TRUE(id.ok());
  auto req = NextRx();
  ASSERT_TRUE(req);
  device_->CancelConnectToGuest(*id);
  auto rst = NextRx();  // the REQUEST was out: the guest is told
  ASSERT_TRUE(rst);
  EXPECT_EQ(rst->hdr.op, VIRTIO_VSOCK_OP_RST);
  EXPECT_FALSE(called);
  EXPECT_EQ(device_->stats().connections_active, 0u);
}

TEST_F(DeviceTest, DriverResetResetsConnections) {
  Fd peer = Connect();
  std::optional<Result<uint32_t>> result;
  ASSERT_TRUE(device_
                  ->ConnectToGuest(6000,
                                   [&](const Result<uint32_t>& r) -> std::optional<HostStream> {
                                     result = r;
                                     return std::nullopt;
                                   })
                  .ok());
  Pump();
  guest_->Stop();
  ASSERT_TRUE(guest_->ResetRings().ok());
  guest_->Start(/*driver_reset=*/true);
  EXPECT_EQ(device_->stats().connections_active, 0u);
  std::vector<uint8_t> got;
  bool eof = false;
  ReadAvailable(peer.get(), &got, &eof);
  EXPECT_TRUE(eof);
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(result->error().code, ECONNRESET);
  // The device works on the new rings.
  guest_->PostRx(16);
  Fd again = Connect();
  EXPECT_TRUE(again.valid());
}

TEST_F(DeviceTest, FrontendGoneResetsConnections) {
  Fd peer = Connect();
  SendRw(Bytes("x"));
  Pump();
  device_->FrontendGone();
  stopped_ = true;
  EXPECT_EQ(device_->stats().connections_active, 0u);
  std::vector<uint8_t> got;
  bool eof = false;
  ReadAvailable(peer.get(), &got, &eof);
  EXPECT_TRUE(eof);
  EXPECT_EQ(std::string(got.begin(), got.end()), "x");
}

// Bytes the device accepted (the guest spent credit on them) but the host socket had no
// room for still reach the host peer after the guest vanishes, then EOF.
TEST_F(DeviceTest, FrontendGoneStillDeliversBufferedBytes) {
  std::vector<uint8_t> sent;
  Fd peer = ConnectAndOverrunSlowHost(300, &sent);
  ASSERT_GT(device_->stats().buffered_bytes, 0u);
  device_->FrontendGone();
  stopped_ = true;
  EXPECT_EQ(device_->stats().connections_active, 0u);
  std::vector<uint8_t> got;
  bool eof = false;
  ASSERT_TRUE(RunUntil([&] {
    ReadAvailable(peer.get(), &got, &eof);
    return eof;
  }));
  EXPECT_EQ(got.size(), sent.size());
  EXPECT_TRUE(got == sent);
}

TEST_F(DeviceTest, QueueStopHoldsNoChainsAndConnectionsSurvive) {
  Fd peer = Connect();
  ASSERT_EQ(::write(peer.get(), "abc", 3), 3);
  guest_->Stop();
  Pump();
  // Nothing popped and held: every popped rx chain was used.
  guest_->CollectRx();
  EXPECT_EQ(guest_->rx_queue().last_avail_idx(), static_cast<uint16_t>(guest_->rx_used_total()));
  guest_->Start(/*driver_reset=*/false);
  auto got = ReceiveRw(3);
  EXPECT_EQ(std::string(got.begin(), got.end()), "abc");
  EXPECT_EQ(device_->stats().connections_active, 1u);
}

TEST_F(DeviceTest, PolicyRefusesAHostPortOutsideTheListWithRst) {
  DeviceOptions o;
  o.policy.host_ports = *PortSet::Parse("22");
  Make(o, FakeGuestOptions{});
  ASSERT_TRUE(guest_->Send(guest_->Header(VIRTIO_VSOCK_OP_REQUEST, kGuestPort, kHostPort)).ok());
  auto p = NextRx();
  ASSERT_TRUE(p);
  EXPECT_EQ(p->hdr.op, VIRTIO_VSOCK_OP_RST);
  EXPECT_EQ(device_->stats().refused_allow_host_ports, 1u);
  EXPECT_FALSE(backend_->TakePeer(kHostPort).valid()) << "the host was never asked";
  Fd peer = Connect(kGuestPort, 22);  // an allowed port works
  EXPECT_TRUE(peer.valid());
}

TEST_F(DeviceTest, PolicyRefusesAGuestPortOutsideTheListWithEacces) {
  DeviceOptions o;
  o.policy.guest_ports = *PortSet::Parse("5000");
  Make(o, FakeGuestOptions{});
  auto refused = device_->ConnectToGuest(
      5001, [](const Result<uint32_t>&) -> std::optional<HostStream> { return std::nullopt; });
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, EACCES);
  EXPECT_NE(refused.error().context.find("allow-guest-ports"), std::string::npos);
  EXPECT_EQ(device_->stats().refused_allow_guest_ports, 1u);
  Pump();
  guest_->CollectRx();
  EXPECT_TRUE(guest_->rx_packets().empty()) << "the guest never sees a REQUEST";
  auto allowed = device_->ConnectToGuest(
      5000, [](const Result<uint32_t>&) -> std::optional<HostStream> { return std::nullopt; });
  EXPECT_TRUE(allowed.ok());
}

TEST_F(DeviceTest, ConnectRateRefusesTheBurstsExcessOnly) {
  DeviceOptions o;
  o.budget.connect_rate = 1;
  o.budget.connect_burst = 2;
  Make(o, FakeGuestOptions{});
  Fd a = Connect(2000);
  Fd b = Connect(2001);
  ASSERT_TRUE(a.valid() && b.valid());
  ASSERT_TRUE(guest_->Send(guest_->Header(VIRTIO_VSOCK_OP_REQUEST, 2002, kHostPort)).ok());
  auto p = NextRx();
  ASSERT_TRUE(p);
  EXPECT_EQ(p->hdr.op, VIRTIO_VSOCK_OP_RST);
  EXPECT_EQ(p->hdr.src_port, kHostPort);
  EXPECT_EQ(p->hdr.dst_port, 2002u);
  EXPECT_EQ(device_->stats().refused_connect_rate, 1u);
  // The admitted connections are not disturbed.
  ASSERT_EQ(::write(a.get(), "x", 1), 1);
  auto got = ReceiveRw(1);
  EXPECT_EQ(std::string(got.begin(), got.end()), "x");
}

TEST_F(DeviceTest, AdvertisedCreditStaysWithinTheBufferedBudget) {
  DeviceOptions o;
  o.buf_alloc = 64 * 1024;
  o.budget.max_connections = 4;
  o.budget.max_buffered_bytes = 64 * 1024;
  Make(o, FakeGuestOptions{});
  // The first connection may take the budget less the three free slots' reserve.
  ASSERT_TRUE(guest_->Send(guest_->Header(VIRTIO_VSOCK_OP_REQUEST, 2000, kHostPort)).ok());
  auto resp = NextRx();
  ASSERT_TRUE(resp);
  ASSERT_EQ(resp->hdr.op, VIRTIO_VSOCK_OP_RESPONSE);
  EXPECT_EQ(resp->hdr.buf_alloc, 64u * 1024 - 3 * kMinBufAlloc);
  Fd first = backend_->TakePeer(kHostPort);
  // The next ones get what is left: the reserved minimum.
  ASSERT_TRUE(guest_->Send(guest_->Header(VIRTIO_VSOCK_OP_REQUEST, 2001, kHostPort)).ok());
  resp = NextRx();
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->hdr.buf_alloc, kMinBufAlloc);
  EXPECT_EQ(device_->stats().credit_committed, 64u * 1024 - 2 * kMinBufAlloc);
  EXPECT_LE(device_->stats().credit_committed + 2 * kMinBufAlloc, o.budget.max_buffered_bytes);
}

TEST_F(DeviceTest, ConnectionsListsEachConnectionWithItsCounters) {
  EXPECT_TRUE(device_->Connections().empty());
  Fd peer = Connect(2000);
  SendRw(Bytes("hello"), 0, true, 2000);
  std::vector<uint8_t> got;
  ASSERT_TRUE(RunUntil([&] {
    ReadAvailable(peer.get(), &got);
    return got.size() == 5;
  }));
  ASSERT_EQ(::write(peer.get(), "abc", 3), 3);
  ASSERT_EQ(ReceiveRw(3).size(), 3u);
  std::optional<Result<uint32_t>> result;
  ASSERT_TRUE(ConnectToGuestRecording(&result).ok());  // guest port 5000, not answered yet
  Pump();

  auto list = device_->Connections();
  ASSERT_EQ(list.size(), 2u);
  const auto& c = list[0];  // sorted by guest port
  EXPECT_EQ(c.info.guest_port, 2000u);
  EXPECT_EQ(c.info.host_cid, VMADDR_CID_HOST);
  EXPECT_EQ(c.info.host_port, kHostPort);
  EXPECT_FALSE(c.host_initiated);
  EXPECT_STREQ(c.state, "established");
  EXPECT_EQ(c.bytes_from_guest, 5u);
  EXPECT_EQ(c.bytes_to_guest, 3u);
  EXPECT_EQ(c.buffered, 0u);
  EXPECT_EQ(c.buf_alloc, dopts_.buf_alloc);
  EXPECT_EQ(c.peer_buf_alloc, 256u * 1024);
  EXPECT_EQ(c.peer_credit, 256u * 1024 - 3);
  EXPECT_GE(c.age_seconds, 0.0);
  EXPECT_EQ(list[1].info.guest_port, 5000u);
  EXPECT_TRUE(list[1].host_initiated);
  EXPECT_STREQ(list[1].state, "connecting-guest");

  // A guest SHUTDOWN(SEND) shows; an RST removes the connection from the list.
  auto shut = guest_->Header(VIRTIO_VSOCK_OP_SHUTDOWN, 2000, kHostPort);
  shut.flags = VIRTIO_VSOCK_SHUTDOWN_SEND;
  ASSERT_TRUE(guest_->Send(shut).ok());
  Pump();
  EXPECT_EQ(device_->Connections()[0].guest_shutdown, VIRTIO_VSOCK_SHUTDOWN_SEND);
  ASSERT_TRUE(guest_->Send(guest_->Header(VIRTIO_VSOCK_OP_RST, 2000, kHostPort)).ok());
  Pump();
  list = device_->Connections();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].info.guest_port, 5000u);
}

}  // namespace
}  // namespace vsockd::vsock
