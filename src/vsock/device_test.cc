#include "vsock/device.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "base/event_loop.h"
#include "vsock/admission.h"
#include "vsock/testing/fake_guest.h"
#include "vsock/testing/fake_host_backend.h"

namespace vsockd::vsock {
namespace {

using testing::FakeGuest;
using testing::FakeGuestOptions;
using testing::FakeHostBackend;
using testing::RxLayout;
using testing::RxPacket;

constexpr uint32_t kGuestPort = 1025;
constexpr uint32_t kHostPort = 9999;

std::vector<uint8_t> Bytes(const std::string& s) {
  return std::vector<uint8_t>(s.begin(), s.end());
}

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// Reads whatever is available from a non-blocking fd. Returns -1 on EOF seen, else bytes read.
ssize_t ReadAvailable(int fd, std::vector<uint8_t>* out, bool* eof = nullptr) {
  uint8_t buf[65536];
  ssize_t total = 0;
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      out->insert(out->end(), buf, buf + n);
      total += n;
      continue;
    }
    if (n == 0 && eof != nullptr) *eof = true;
    return total;
  }
}

class DeviceTest : public ::testing::Test {
 protected:
  void SetUp() override { Make(DeviceOptions{}, FakeGuestOptions{}); }

  void TearDown() override {
    if (!guest_) return;
    Pump();
    guest_->CollectRx();
    guest_->ReapTx();
    // Invariants of every test: tx chains come back with used len 0; rx used lengths are
    // exactly 44 + hdr.len; no rx chain is held or lost (popped == used).
    EXPECT_EQ(guest_->tx_used_nonzero(), 0u);
    EXPECT_EQ(guest_->bad_rx_used_len(), 0u);
    if (!stopped_) {
      EXPECT_EQ(guest_->rx_queue().last_avail_idx(),
                static_cast<uint16_t>(guest_->rx_used_total()));
    }
  }

  void Make(const DeviceOptions& dopts, FakeGuestOptions gopts, size_t rx_buffers = 64) {
    guest_.reset();
    device_.reset();
    backend_.reset();
    loop_ = std::move(EventLoop::Create()).value();
    backend_ = std::make_unique<FakeHostBackend>(loop_.get());
    dopts_ = dopts;
    device_ = std::make_unique<Device>(loop_.get(), backend_.get(), dopts);
    auto g = FakeGuest::Create(device_.get(), gopts);
    ASSERT_TRUE(g.ok()) << g.error().ToString();
    guest_ = std::move(g).value();
    guest_->Start();
    guest_->PostRx(rx_buffers);
    Pump();
  }

  void Pump(int rounds = 4) {
    for (int i = 0; i < rounds; ++i) loop_->RunOnce(0);
  }

  // Runs the loop (and the guest's reaping) until pred() holds; bounded, no timing asserts.
  template <typename Pred>
  bool RunUntil(Pred pred, int max_rounds = 3000) {
    for (int i = 0; i < max_rounds; ++i) {
      guest_->CollectRx();
      guest_->ReapTx();
      if (pred()) return true;
      loop_->RunOnce(2);
    }
    guest_->CollectRx();
    return pred();
  }

  // Next rx packet, running the loop a bounded while for it.
  std::optional<RxPacket> NextRx() {
    RunUntil([&] { return !guest_->rx_packets().empty(); });
    return guest_->PopRx();
  }

  // Starts a host -> guest connect to guest port 5000 whose callback stores what it got in
  // *result and attaches no host stream.
  Result<uint64_t> ConnectToGuestRecording(std::optional<Result<uint32_t>>* result) {
    return device_->ConnectToGuest(
        5000, [result](const Result<uint32_t>& r) -> std::optional<HostStream> {
          *result = r;
          return std::nullopt;
        });
  }

  // A host -> guest connect to guest port 5000 that the guest answers with an RST of
  // `rst_type`; what the connect's callback got (nullopt: it was not called).
  std::optional<Result<uint32_t>> ConnectToGuestAnsweredByRst(uint16_t rst_type) {
    std::optional<Result<uint32_t>> result;
    auto id = ConnectToGuestRecording(&result);
    EXPECT_TRUE(id.ok());
    auto req = NextRx();
    EXPECT_TRUE(req);
    if (!id.ok() || !req) return result;
    auto rst = guest_->Header(VIRTIO_VSOCK_OP_RST, 5000, req->hdr.src_port);
    rst.type = rst_type;
    EXPECT_TRUE(guest_->Send(rst).ok());
    Pump();
    return result;
  }

  // Guest connects kGuestPort -> kHostPort; returns the host peer (non-blocking).
  Fd Connect(uint32_t guest_port = kGuestPort, uint32_t host_port = kHostPort,
             uint32_t guest_buf_alloc = 256 * 1024) {
    EXPECT_TRUE(guest_
                    ->Send(guest_->Header(VIRTIO_VSOCK_OP_REQUEST, guest_port, host_port, 0,
                                          guest_buf_alloc))
                    .ok());
    auto resp = NextRx();
    EXPECT_TRUE(resp.has_value());
    if (!resp) return Fd();
    EXPECT_EQ(resp->hdr.op, VIRTIO_VSOCK_OP_RESPONSE) << DescribeHeader(resp->hdr);
    Fd peer = backend_->TakePeer(host_port);
    EXPECT_TRUE(peer.valid());
    if (peer.valid()) {
      EXPECT_TRUE(SetNonBlocking(peer.get()).ok());
    }
    return peer;
  }

  void SendRw(const std::vector<uint8_t>& data, uint32_t fwd_cnt = 0, bool kick = true,
              uint32_t guest_port = kGuestPort, uint32_t buf_alloc = 256 * 1024) {
    auto h = guest_->Header(VIRTIO_VSOCK_OP_RW, guest_port, kHostPort,
                            static_cast<uint32_t>(data.size()), buf_alloc, fwd_cnt);
    ASSERT_TRUE(guest_->Send(h, data, kick).ok());
  }

  // Collects RW payload for the connection until `want` bytes arrived (bounded).
  std::vector<uint8_t> ReceiveRw(size_t want, std::vector<RxPacket>* others = nullptr) {
    std::vector<uint8_t> got;
    RunUntil([&] {
      while (!guest_->rx_packets().empty()) {
        RxPacket p = std::move(guest_->rx_packets().front());
        guest_->rx_packets().pop_front();
        if (p.hdr.op == VIRTIO_VSOCK_OP_RW) {
          got.insert(got.end(), p.payload.begin(), p.payload.end());
        } else if (others != nullptr) {
          others->push_back(std::move(p));
        }
      }
      return got.size() >= want;
    });
    return got;
  }

  // A connection whose host peer does not read: buf_alloc 64 KiB, a 4 KiB device socket
  // buffer, and the guest spends its whole credit (16 x 4 KiB of RandomBytes(seed + i), one
  // kick), so the device holds most of it. Returns the host peer; `sent` gets the bytes.
  Fd ConnectAndOverrunSlowHost(uint32_t seed, std::vector<uint8_t>* sent) {
    DeviceOptions o;
    o.buf_alloc = 64 * 1024;
    Make(o, FakeGuestOptions{});
    backend_->set_device_sndbuf(4096);
    Fd peer = Connect();
    for (uint32_t i = 0; i < 16; ++i) {
      auto chunk = RandomBytes(4096, seed + i);
      sent->insert(sent->end(), chunk.begin(), chunk.end());
      SendRw(chunk, 0, /*kick=*/i == 15);
    }
    Pump(10);
    return peer;
  }

  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<FakeHostBackend> backend_;
  std::unique_ptr<Device> device_;
  std::unique_ptr<FakeGuest> guest_;
  DeviceOptions dopts_;
  bool stopped_ = false;
};

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
}

TEST_F(DeviceTest, RefusedHostConnectGetsRst) {
  backend_->Refuse(kHostPort);
  ASSERT_TRUE(guest_->Send(guest_->Header(VIRTIO_VSOCK_OP_REQUEST, kGuestPort, kHostPort)).ok());
  auto p = NextRx();
  ASSERT_TRUE(p);
  EXPECT_EQ(p->hdr.op, VIRTIO_VSOCK_OP_RST);
  EXPECT_EQ(device_->stats().connections_active, 0u);
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

TEST_F(DeviceTest, PrefixBytesGoFirst) {
  backend_->set_prefix("PRE:");
  Fd peer = Connect();
  ASSERT_EQ(::write(peer.get(), "data", 4), 4);
  auto got = ReceiveRw(8);
  EXPECT_EQ(std::string(got.begin(), got.end()), "PRE:data");
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

}  // namespace
}  // namespace vsockd::vsock
