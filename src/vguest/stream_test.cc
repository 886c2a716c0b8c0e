// Unit tests of the guest-side connection logic (state machine and credit), without rings:
// a fake StreamHost records what the Stream sends.
#include "vguest/stream.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

namespace vsockd::vguest {
namespace {

using namespace vsockd::vsock;  // NOLINT(google-build-using-namespace)

struct Sent {
  PacketHeader hdr;
  std::string payload;
};

class FakeHost : public StreamHost {
 public:
  uint64_t local_cid() const override { return 3; }
  void SendControl(const PacketHeader& hdr) override { sent.push_back({hdr, ""}); }
  size_t TxRoom() override { return tx_room; }
  void SendData(const PacketHeader& hdr, std::span<const uint8_t> payload) override {
    EXPECT_LE(payload.size(), tx_room);
    EXPECT_EQ(hdr.len, payload.size());
    sent.push_back({hdr, record_payload ? std::string(payload.begin(), payload.end()) : ""});
  }
  void WaitForTxRoom(Stream* s) override { tx_waiters.push_back(s); }
  uint64_t AddTimer(std::chrono::milliseconds, std::function<void()> cb) override {
    timers[next_timer] = std::move(cb);
    return next_timer++;
  }
  void CancelTimer(uint64_t id) override { timers.erase(id); }
  void ConnectionEnded(Stream*) override { ++ended; }
  void Release(Stream*) override { ++released; }
  void CountDeviceBug(DeviceBug bug) override { ++bugs[bug]; }

  void FireAllTimers() {
    auto copy = std::move(timers);
    timers.clear();
    for (auto& [id, cb] : copy) cb();
  }
  std::vector<uint16_t> Ops() const {
    std::vector<uint16_t> ops;
    for (const auto& s : sent) ops.push_back(s.hdr.op);
    return ops;
  }

  std::vector<Sent> sent;
  size_t tx_room = 1 << 20;
  bool record_payload = true;
  std::vector<Stream*> tx_waiters;
  std::map<uint64_t, std::function<void()>> timers;
  uint64_t next_timer = 1;
  int ended = 0;
  int released = 0;
  std::map<DeviceBug, int> bugs;
};

PacketHeader FromPeer(uint16_t op, uint32_t len = 0, uint32_t flags = 0,
                      uint32_t buf_alloc = 256 * 1024, uint32_t fwd_cnt = 0) {
  PacketHeader h;
  h.src_cid = 2;
  h.dst_cid = 3;
  h.src_port = 9999;
  h.dst_port = 1024;
  h.len = len;
  h.type = VIRTIO_VSOCK_TYPE_STREAM;
  h.op = op;
  h.flags = flags;
  h.buf_alloc = buf_alloc;
  h.fwd_cnt = fwd_cnt;
  return h;
}

StreamConfig Config(uint32_t buf_alloc = 256 * 1024) {
  StreamConfig c;
  c.local_port = 1024;
  c.peer_cid = 2;
  c.peer_port = 9999;
  c.buf_alloc = buf_alloc;
  return c;
}

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

class StreamTest : public ::testing::Test {
 protected:
  // A connected stream whose peer advertised `peer_buf` bytes of buffer.
  std::unique_ptr<Stream> Connected(uint32_t peer_buf = 256 * 1024, uint32_t buf = 256 * 1024) {
    auto s = std::make_unique<Stream>(&host_, Config(buf));
    Status result = MakeError(EINVAL, "not called");
    s->StartConnect([&](Stream*, const Status& st) { result = st; });
    s->OnPacket(FromPeer(VIRTIO_VSOCK_OP_RESPONSE, 0, 0, peer_buf), {});
    EXPECT_TRUE(result.ok());
    host_.sent.clear();
    return s;
  }
  FakeHost host_;
};

TEST_F(StreamTest, ConnectSendsRequestWithOurCreditAndCompletesOnResponse) {
  Stream s(&host_, Config(128 * 1024));
  int calls = 0;
  Status result;
  s.StartConnect([&](Stream* st, const Status& r) {
    EXPECT_EQ(st, &s);
    ++calls;
    result = r;
  });
  ASSERT_EQ(host_.sent.size(), 1u);
  const PacketHeader& req = host_.sent[0].hdr;
  EXPECT_EQ(req.op, VIRTIO_VSOCK_OP_REQUEST);
  EXPECT_EQ(req.src_cid, 3u);
  EXPECT_EQ(req.dst_cid, 2u);
  EXPECT_EQ(req.src_port, 1024u);
  EXPECT_EQ(req.dst_port, 9999u);
  EXPECT_EQ(req.type, VIRTIO_VSOCK_TYPE_STREAM);
  EXPECT_EQ(req.buf_alloc, 128u * 1024);
  EXPECT_EQ(req.fwd_cnt, 0u);
  EXPECT_EQ(host_.timers.size(), 1u);

  s.OnPacket(FromPeer(VIRTIO_VSOCK_OP_RESPONSE, 0, 0, 5000), {});
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(result.ok());
  EXPECT_EQ(s.state(), Stream::State::kEstablished);
  EXPECT_EQ(s.peer_credit(), 5000u);
  EXPECT_TRUE(host_.timers.empty());  // connect timer cancelled
}

TEST_F(StreamTest, ConnectRefusedByRstReportsConnResetAndSendsNothing) {
  Stream s(&host_, Config());
  Status result;
  s.StartConnect([&](Stream*, const Status& r) { result = r; });
  host_.sent.clear();
  s.OnPacket(FromPeer(VIRTIO_VSOCK_OP_RST), {});
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().code, ECONNRESET);
  EXPECT_TRUE(host_.sent.empty());  // never answer an RST
  EXPECT_EQ(host_.ended, 1);
  EXPECT_EQ(s.state(), Stream::State::kClosed);
}

TEST_F(StreamTest, ConnectTimeoutReportsEtimedout) {
  Stream s(&host_, Config());
  Status result;
  s.StartConnect([&](Stream*, const Status& r) { result = r; });
  host_.sent.clear();
  host_.FireAllTimers();
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().code, ETIMEDOUT);
  EXPECT_TRUE(host_.sent.empty());
}

TEST_F(StreamTest, UnexpectedOpWhileConnectingIsEprotoAndRst) {
  Stream s(&host_, Config());
  Status result;
  s.StartConnect([&](Stream*, const Status& r) { result = r; });
  host_.sent.clear();
  s.OnPacket(FromPeer(VIRTIO_VSOCK_OP_RW, 3), Bytes("abc"));
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().code, EPROTO);
  EXPECT_EQ(host_.Ops(), std::vector<uint16_t>{VIRTIO_VSOCK_OP_RST});
  EXPECT_EQ(host_.bugs[StreamHost::DeviceBug::kUnexpectedOp], 1);
}

TEST_F(StreamTest, AcceptAnswersResponseWithPeerCredit) {
  Stream s(&host_, Config());
  s.Accept(FromPeer(VIRTIO_VSOCK_OP_REQUEST, 0, 0, 7000, 0));
  EXPECT_EQ(host_.Ops(), std::vector<uint16_t>{VIRTIO_VSOCK_OP_RESPONSE});
  EXPECT_EQ(s.state(), Stream::State::kEstablished);
  EXPECT_EQ(s.peer_credit(), 7000u);
}

TEST_F(StreamTest, WriteIsBoundedByPeerCreditAndSplitAt64KiB) {
  auto s = Connected(/*peer_buf=*/100000);
  std::string data(200000, 'x');
  size_t n = s->Write(data.data(), data.size());
  EXPECT_EQ(n, 100000u);
  ASSERT_EQ(host_.sent.size(), 2u);
  EXPECT_EQ(host_.sent[0].hdr.len, 65536u);
  EXPECT_EQ(host_.sent[1].hdr.len, 100000u - 65536u);
  EXPECT_EQ(s->peer_credit(), 0u);
  EXPECT_EQ(s->Write(data.data(), 10), 0u);

  // The peer consumed 50000 bytes: on_writable fires, and that much fits again.
  int writable = 0;
  s->on_writable = [&] { ++writable; };
  s->OnPacket(FromPeer(VIRTIO_VSOCK_OP_CREDIT_UPDATE, 0, 0, 100000, 50000), {});
  EXPECT_EQ(writable, 1);
  EXPECT_EQ(s->peer_credit(), 50000u);
  host_.sent.clear();
  EXPECT_EQ(s->Write(data.data(), data.size()), 50000u);
}

TEST_F(StreamTest, CreditClampsWhenPeerShrinksBuffer) {
  auto s = Connected(/*peer_buf=*/10000);
  std::string data(8000, 'x');
  EXPECT_EQ(s->Write(data.data(), data.size()), 8000u);
  // The peer shrinks buf_alloc below what is in flight: credit is 0, not ~4 GiB.
  s->OnPacket(FromPeer(VIRTIO_VSOCK_OP_CREDIT_UPDATE, 0, 0, 4000, 0), {});
  EXPECT_EQ(s->peer_credit(), 0u);
  EXPECT_EQ(s->Write(data.data(), 1), 0u);
}

TEST_F(StreamTest, CreditArithmeticWrapsAroundU32) {
  auto s = Connected(/*peer_buf=*/65536);
  host_.record_payload = false;
  // Drive tx_cnt close to 2^32 in steps the peer acknowledges.
  std::string chunk(65536, 'x');
  uint32_t acked = 0;
  for (int i = 0; i < 65537; ++i) {  // 65537 * 64 KiB crosses 2^32
    ASSERT_EQ(s->Write(chunk.data(), chunk.size()), chunk.size()) << i;
    acked += 65536;
    s->OnPacket(FromPeer(VIRTIO_VSOCK_OP_CREDIT_UPDATE, 0, 0, 65536, acked), {});
    host_.sent.clear();
  }
  EXPECT_LT(s->tx_cnt(), 65536u * 2);  // wrapped
  EXPECT_EQ(s->peer_credit(), 65536u);
}

TEST_F(StreamTest, TxRoomLimitsWritesAndOnTxRoomWakesWriter) {
  auto s = Connected();
  host_.tx_room = 1000;
  int writable = 0;
  s->on_writable = [&] { ++writable; };
  std::string data(5000, 'y');
  // FakeHost does not shrink tx_room by itself: emulate "full after one packet".
  size_t n = s->Write(data.data(), 1000);
  EXPECT_EQ(n, 1000u);
  host_.tx_room = 0;
  EXPECT_EQ(s->Write(data.data(), data.size()), 0u);
  ASSERT_EQ(host_.tx_waiters.size(), 1u);
  EXPECT_EQ(writable, 0);
  host_.tx_room = 4096;
  s->OnTxRoom();
  EXPECT_EQ(writable, 1);
}

TEST_F(StreamTest, ReceivedDataIsDeliveredAndCreditReturnedPastThreshold) {
  auto s = Connected(256 * 1024, /*buf=*/256 * 1024);
  std::string got;
  s->on_data = [&](std::span<const uint8_t> d) { got.append(d.begin(), d.end()); };
  std::string payload(4096, 'z');
  // 192 KiB consumed: the peer still sees 64 KiB, no update yet.
  for (int i = 0; i < 48; ++i) {
    s->OnPacket(FromPeer(VIRTIO_VSOCK_OP_RW, 4096), Bytes(payload));
  }
  EXPECT_EQ(got.size(), 48u * 4096);
  EXPECT_TRUE(host_.sent.empty());
  // One more 4 KiB packet: the peer's view drops below 64 KiB -> CREDIT_UPDATE.
  s->OnPacket(FromPeer(VIRTIO_VSOCK_OP_RW, 4096), Bytes(payload));
  ASSERT_EQ(host_.Ops(), std::vector<uint16_t>{VIRTIO_VSOCK_OP_CREDIT_UPDATE});
  EXPECT_EQ(host_.sent[0].hdr.fwd_cnt, 49u * 4096);
  EXPECT_EQ(host_.sent[0].hdr.buf_alloc, 256u * 1024);
  EXPECT_TRUE(host_.bugs.empty());
}

TEST_F(StreamTest, CreditRequestIsAnswered) {
  auto s = Connected();
  s->OnPacket(FromPeer(VIRTIO_VSOCK_OP_CREDIT_REQUEST), {});
  EXPECT_EQ(host_.Ops(), std::vector<uint16_t>{VIRTIO_VSOCK_OP_CREDIT_UPDATE});
}

TEST_F(StreamTest, PausedReadingKeepsDataAndWithholdsCredit) {
  auto s = Connected(256 * 1024, /*buf=*/16384);
  std::string got;
  s->on_data = [&](std::span<const uint8_t> d) { got.append(d.begin(), d.end()); };
  s->PauseReading();
  std::string a(4096, 'a'), b(4096, 'b');
  for (int i = 0; i < 2; ++i) {
    s->OnPacket(FromPeer(VIRTIO_VSOCK_OP_RW, 4096), Bytes(a));
    s->OnPacket(FromPeer(VIRTIO_VSOCK_OP_RW, 4096), Bytes(b));
  }
  EXPECT_TRUE(got.empty());
  EXPECT_EQ(s->buffered_rx_bytes(), 16384u);
  EXPECT_EQ(s->fwd_cnt(), 0u);
  EXPECT_TRUE(host_.sent.empty());
  EXPECT_TRUE(host_.bugs.empty());

  // Beyond buf_alloc: a device bug; dropped like 6.1 does.
  s->OnPacket(FromPeer(VIRTIO_VSOCK_OP_RW, 4096), Bytes(a));
  EXPECT_EQ(s->buffered_rx_bytes(), 16384u);
  EXPECT_EQ(host_.bugs[StreamHost::DeviceBug::kOverrunDrop], 1);
  EXPECT_EQ(host_.bugs[StreamHost::DeviceBug::kCreditViolation], 1);

  s->ResumeReading();
  EXPECT_EQ(got, a + b + a + b);
  EXPECT_EQ(s->fwd_cnt(), 16384u);
  // The whole buffer was unannounced: credit goes back.
  EXPECT_EQ(host_.Ops(), std::vector<uint16_t>{VIRTIO_VSOCK_OP_CREDIT_UPDATE});
  EXPECT_EQ(host_.sent.back().hdr.fwd_cnt, 16384u);
}

TEST_F(StreamTest, PauseInsideCallbackStopsDeliveryUntilResume) {
  auto s = Connected();
  std::string got;
  s->on_data = [&](std::span<const uint8_t> d) {
    got.append(d.begin(), d.end());
    s->PauseReading();
  };
  s->OnPacket(FromPeer(VIRTIO_VSOCK_OP_RW, 1), Bytes("1"));
  s->OnPacket(FromPeer(VIRTIO_VSOCK_OP_RW, 1), Bytes("2"));
  s->OnPacket(FromPeer(VIRTIO_VSOCK_OP_RW, 1), Bytes("3"));
  EXPECT_EQ(got, "1");
  s->ResumeReading();
  EXPECT_EQ(got, "12");
  s->ResumeReading();
  EXPECT_EQ(got, "123");
}

TEST_F(StreamTest, EofComesAfterQueuedDataAndHalfCloseKeepsOtherDirection) {
  auto s = Connected();
  std::string got;
  bool eof = false;
  s->on_data = [&](std::span<const uint8_t> d) {
    EXPECT_FALSE(eof);
    got.append(d.begin(), d.end());
  };
  s->on_eof = [&] { eof = true; };
  s->PauseReading();
  s->OnPacket(FromPeer(VIRTIO_VSOCK_OP_RW, 5), Bytes("hello"));
  s->OnPacket(FromPeer(VIRTIO_VSOCK_OP_SHUTDOWN, 0, VIRTIO_VSOCK_SHUTDOWN_SEND), {});
  EXPECT_FALSE(eof);
  s->ResumeReading();
  EXPECT_EQ(got, "hello");
  EXPECT_TRUE(eof);
  // Half-close: we may still send.
  EXPECT_EQ(s->Write("back", 4), 4u);
  EXPECT_EQ(s->state(), Stream::State::kEstablished);
}

TEST_F(StreamTest, PeerShutdownBothIsAnsweredWithRstAndFinishesCleanly) {
  auto s = Connected();
  bool eof = false;
  Status closed = MakeError(EINVAL, "not called");
  s->on_eof = [&] { eof = true; };
  s->on_closed = [&](const Status& st) { closed = st; };
  s->OnPacket(
      FromPeer(VIRTIO_VSOCK_OP_SHUTDOWN, 0, VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND),
      {});
  EXPECT_TRUE(eof);
  EXPECT_TRUE(closed.ok());
  EXPECT_EQ(host_.Ops(), std::vector<uint16_t>{VIRTIO_VSOCK_OP_RST});
  EXPECT_EQ(s->state(), Stream::State::kClosed);
  EXPECT_EQ(host_.ended, 1);
}

TEST_F(StreamTest, ShutdownBitsAreStickyAndSentOnce) {
  auto s = Connected();
  s->Shutdown(false, true);
  s->Shutdown(false, true);
  s->Shutdown(true, true);
  ASSERT_EQ(host_.Ops(),
            (std::vector<uint16_t>{VIRTIO_VSOCK_OP_SHUTDOWN, VIRTIO_VSOCK_OP_SHUTDOWN}));
  EXPECT_EQ(host_.sent[0].hdr.flags, VIRTIO_VSOCK_SHUTDOWN_SEND);
  EXPECT_EQ(host_.sent[1].hdr.flags, VIRTIO_VSOCK_SHUTDOWN_RCV);
  EXPECT_EQ(s->Write("x", 1), 0u);  // no more sending after SHUTDOWN(SEND)
}

TEST_F(StreamTest, PeerResetReportsConnReset) {
  auto s = Connected();
  Status closed;
  s->on_closed = [&](const Status& st) { closed = st; };
  s->OnPacket(FromPeer(VIRTIO_VSOCK_OP_RST), {});
  ASSERT_FALSE(closed.ok());
  EXPECT_EQ(closed.error().code, ECONNRESET);
  EXPECT_TRUE(host_.sent.empty());
}

TEST_F(StreamTest, CloseSendsShutdownThenLingersUntilRst) {
  auto s = Connected();
  int callbacks = 0;
  s->on_closed = [&](const Status&) { ++callbacks; };
  s->on_data = [&](std::span<const uint8_t>) { ++callbacks; };
  s->Close();
  ASSERT_EQ(host_.Ops(), std::vector<uint16_t>{VIRTIO_VSOCK_OP_SHUTDOWN});
  EXPECT_EQ(host_.sent[0].hdr.flags, VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND);
  EXPECT_EQ(s->state(), Stream::State::kClosing);
  EXPECT_EQ(host_.released, 0);
  s->OnPacket(FromPeer(VIRTIO_VSOCK_OP_RW, 3), Bytes("abc"));  // discarded
  s->OnPacket(FromPeer(VIRTIO_VSOCK_OP_RST), {});
  EXPECT_EQ(s->state(), Stream::State::kClosed);
  EXPECT_EQ(host_.released, 1);
  EXPECT_EQ(callbacks, 0);
  EXPECT_EQ(host_.sent.size(), 1u);
}

TEST_F(StreamTest, CloseTimeoutSendsRst) {
  auto s = Connected();
  s->Close();
  host_.sent.clear();
  host_.FireAllTimers();
  EXPECT_EQ(host_.Ops(), std::vector<uint16_t>{VIRTIO_VSOCK_OP_RST});
  EXPECT_EQ(host_.released, 1);
}

TEST_F(StreamTest, CloseWhileConnectingSendsNothingAndSkipsCallback) {
  Stream s(&host_, Config());
  bool called = false;
  s.StartConnect([&](Stream*, const Status&) { called = true; });
  host_.sent.clear();
  s.Close();
  EXPECT_TRUE(host_.sent.empty());
  EXPECT_EQ(host_.released, 1);
  EXPECT_FALSE(called);
  EXPECT_TRUE(host_.timers.empty());
}

TEST_F(StreamTest, CloseFromInsideDataCallbackStopsDelivery) {
  auto s = Connected();
  int calls = 0;
  s->on_data = [&](std::span<const uint8_t>) {
    ++calls;
    s->Close();
  };
  s->PauseReading();
  s->OnPacket(FromPeer(VIRTIO_VSOCK_OP_RW, 1), Bytes("1"));
  s->OnPacket(FromPeer(VIRTIO_VSOCK_OP_RW, 1), Bytes("2"));
  s->ResumeReading();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(s->state(), Stream::State::kClosing);
}

TEST_F(StreamTest, EveryPacketCarriesCurrentFwdCnt) {
  auto s = Connected();
  s->on_data = [](std::span<const uint8_t>) {};
  s->OnPacket(FromPeer(VIRTIO_VSOCK_OP_RW, 3), Bytes("abc"));
  EXPECT_EQ(s->Write("x", 1), 1u);
  ASSERT_EQ(host_.sent.size(), 1u);
  EXPECT_EQ(host_.sent[0].hdr.fwd_cnt, 3u);
  EXPECT_EQ(host_.sent[0].hdr.op, VIRTIO_VSOCK_OP_RW);
  EXPECT_EQ(host_.sent[0].payload, "x");
}

TEST_F(StreamTest, LocalResetReportsGivenError) {
  auto s = Connected();
  Status closed;
  s->on_closed = [&](const Status& st) { closed = st; };
  s->ResetLocally(MakeError(ECONNRESET, "driver reset"));
  ASSERT_FALSE(closed.ok());
  EXPECT_EQ(closed.error().code, ECONNRESET);
  EXPECT_TRUE(host_.sent.empty());
}

// SEQPACKET: a SHUTDOWN(SEND) asked for while a message is still going out (credit ran
// short) waits for that message's EOM; nothing is sent after the SHUTDOWN.
TEST_F(StreamTest, SeqpacketShutdownWaitsForTheOutgoingMessage) {
  StreamConfig c = Config();
  c.type = VIRTIO_VSOCK_TYPE_SEQPACKET;
  Stream s(&host_, c);
  s.StartConnect([](Stream*, const Status&) {});
  auto resp = FromPeer(VIRTIO_VSOCK_OP_RESPONSE, 0, 0, 8192);
  resp.type = VIRTIO_VSOCK_TYPE_SEQPACKET;
  s.OnPacket(resp, {});
  host_.sent.clear();
  // 4000 bytes of the 8192 credit go to a first message; the second (6000) stops half-way.
  ASSERT_TRUE(s.WriteMessage(Bytes(std::string(4000, 'a'))).ok());
  host_.sent.clear();
  ASSERT_TRUE(s.WriteMessage(Bytes(std::string(6000, 'm'))).ok());
  ASSERT_GT(s.message_backlog(), 0u);
  s.Shutdown(false, true);
  ASSERT_EQ(host_.Ops(), std::vector<uint16_t>{VIRTIO_VSOCK_OP_RW});  // held back
  EXPECT_FALSE(s.WriteMessage(Bytes("x")).ok());                      // no new message
  auto credit = FromPeer(VIRTIO_VSOCK_OP_CREDIT_UPDATE, 0, 0, 8192);
  credit.type = VIRTIO_VSOCK_TYPE_SEQPACKET;
  credit.fwd_cnt = 4000 + 4192;
  s.OnPacket(credit, {});
  ASSERT_EQ(host_.Ops(), (std::vector<uint16_t>{VIRTIO_VSOCK_OP_RW, VIRTIO_VSOCK_OP_RW,
                                                VIRTIO_VSOCK_OP_SHUTDOWN}));
  EXPECT_EQ(host_.sent[1].hdr.flags & VIRTIO_VSOCK_SEQ_EOM, VIRTIO_VSOCK_SEQ_EOM);
  EXPECT_EQ(host_.sent[2].hdr.flags, VIRTIO_VSOCK_SHUTDOWN_SEND);
}

}  // namespace
}  // namespace vsockd::vguest
