#include "host/sibling_router.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "vsock/packet.h"

namespace vsockd::host {
namespace {

// A target "device": answers every sibling connect from its own loop thread with `accept`.
class FakeSibling : public SiblingConnector {
 public:
  Result<uint64_t> ConnectToGuestFrom(uint64_t peer_cid, uint32_t peer_port, uint32_t guest_port,
                                      uint16_t type, GuestConnector::Done done) override {
    last_peer_cid = peer_cid;
    last_peer_port = peer_port;
    last_guest_port = guest_port;
    last_type = type;
    // As vsock::Device when its guest did not negotiate VIRTIO_VSOCK_F_SEQPACKET.
    if (type == vsock::VIRTIO_VSOCK_TYPE_SEQPACKET && !seqpacket) {
      return MakeError(EPROTONOSUPPORT, "seqpacket not negotiated");
    }
    if (hold) {
      // A guest that has not answered yet: the connect stays pending until cancelled.
      held_done = std::move(done);
      ++connects;
      return uint64_t{7};
    }
    if (accept) {
      auto stream = done(peer_port);
      if (stream) stream_fd = std::move(stream->fd);
      // Set after stream_fd: `done` already posted the result to the caller's loop, so a
      // test that reads stream_fd waits for this first (WaitStored).
      stored = true;
    } else {
      done(MakeError(ECONNREFUSED, "refused"));
    }
    return uint64_t{1};
  }
  void CancelConnectToGuest(uint64_t id) override { cancelled_id = id; }

  bool accept = true;
  bool hold = false;
  GuestConnector::Done held_done;
  std::atomic<int> connects{0};
  std::atomic<uint64_t> cancelled_id{0};
  bool seqpacket = true;
  uint16_t last_type = 0xffff;
  uint64_t last_peer_cid = 0;
  uint32_t last_peer_port = 0;
  uint32_t last_guest_port = 0;
  Fd stream_fd;
  std::atomic<bool> stored{false};

  // Polls `done` (set on B's thread) every millisecond for up to ~2 s; its last value.
  template <typename F>
  static bool Poll(F done) {
    for (int i = 0; i < 2000 && !done(); ++i) usleep(1000);
    return done();
  }
  // The id CancelConnectToGuest got, once it was called (0: not within ~2 s).
  uint64_t WaitCancelled() {
    Poll([&] { return cancelled_id.load() != 0; });
    return cancelled_id.load();
  }
  // Whether ConnectToGuestFrom has been called (within ~2 s).
  bool WaitConnects() {
    return Poll([&] { return connects.load() != 0; });
  }
  bool WaitStored() {
    return Poll([&] { return stored.load(); });
  }
};

class SiblingRouterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    a_loop_ = std::move(EventLoop::Create()).value();
    b_loop_ = std::move(EventLoop::Create()).value();
    b_thread_ = std::thread([this] { b_loop_->Run(); });
  }
  void TearDown() override {
    b_loop_->Stop();
    b_thread_.join();
  }

  // CID 3 on loop A and CID 4 on loop B, in one group.
  void RegisterPair() {
    ASSERT_TRUE(router_.Register(3, {"default"}, a_loop_.get(), &a_).ok());
    ASSERT_TRUE(router_.Register(4, {"default"}, b_loop_.get(), &b_).ok());
  }

  // Starts a connect from CID 3 port 1000 to CID `to` port 2000 on loop A; its outcome goes
  // to *result.
  std::unique_ptr<vsock::PendingConnect> StartConnect(
      std::optional<Result<vsock::HostStream>>* result, uint64_t to = 4,
      std::chrono::milliseconds timeout = std::chrono::milliseconds(5000),
      uint16_t type = vsock::VIRTIO_VSOCK_TYPE_STREAM) {
    vsock::ConnectionInfo info{3, 1000, to, 2000, type};
    return router_.Connect(a_loop_.get(), info, timeout,
                           [result](Result<vsock::HostStream> r) { *result = std::move(r); });
  }
  // Runs loop A until *result is set (or ~10 s).
  void RunAUntil(const std::optional<Result<vsock::HostStream>>& result) {
    for (int i = 0; i < 1000 && !result; ++i) a_loop_->RunOnce(10);
  }

  // Connects from CID 3 port 1000 to CID `to` port 2000 on loop A; runs A until done.
  Result<vsock::HostStream> Connect(uint64_t to, uint16_t type = vsock::VIRTIO_VSOCK_TYPE_STREAM) {
    std::optional<Result<vsock::HostStream>> result;
    auto op = StartConnect(&result, to, std::chrono::milliseconds(5000), type);
    RunAUntil(result);
    if (!result) return MakeError(EINTR, "no answer");
    return std::move(*result);
  }

  SiblingRouter router_;
  std::unique_ptr<EventLoop> a_loop_, b_loop_;
  std::thread b_thread_;
  FakeSibling a_, b_;
};

TEST_F(SiblingRouterTest, GroupsDecideWhoMayConnect) {
  ASSERT_TRUE(router_.Register(3, {"g1", "g2"}, a_loop_.get(), &a_).ok());
  ASSERT_TRUE(router_.Register(4, {"g2"}, b_loop_.get(), &b_).ok());
  ASSERT_TRUE(router_.Register(5, {"g3"}, b_loop_.get(), &b_).ok());
  EXPECT_TRUE(router_.MayConnect(3, 4));
  EXPECT_TRUE(router_.MayConnect(4, 3));
  EXPECT_FALSE(router_.MayConnect(3, 5));
  EXPECT_FALSE(router_.MayConnect(3, 3));
  EXPECT_FALSE(router_.MayConnect(3, 99));
  auto again = router_.Register(4, {"x"}, b_loop_.get(), &b_);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, EEXIST);
  EXPECT_FALSE(router_.Register(6, {}, b_loop_.get(), &b_).ok());
}

TEST_F(SiblingRouterTest, AcceptedConnectBridgesBothEnds) {
  RegisterPair();
  auto r = Connect(4);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(b_.last_peer_cid, 3u);
  EXPECT_EQ(b_.last_peer_port, 1000u);
  EXPECT_EQ(b_.last_guest_port, 2000u);
  ASSERT_TRUE(b_.WaitStored());
  ASSERT_TRUE(b_.stream_fd.valid());
  ASSERT_EQ(::write(r->fd.get(), "ping", 4), 4);
  char buf[8] = {};
  for (int i = 0; i < 1000; ++i) {
    ssize_t n = ::recv(b_.stream_fd.get(), buf, sizeof buf, MSG_DONTWAIT);
    if (n == 4) break;
    usleep(1000);
  }
  EXPECT_EQ(std::string(buf, 4), "ping");
  EXPECT_EQ(router_.routed(), 1u);
}

int SocketType(int fd) {
  int type = -1;
  socklen_t len = sizeof type;
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) return -1;
  return type;
}

// Receives one record from a non-blocking socket, waiting up to ~1 s for it.
std::string RecvRecord(int fd, int* flags) {
  std::vector<char> buf(1 << 20);
  for (int i = 0; i < 1000; ++i) {
    iovec v{buf.data(), buf.size()};
    msghdr msg{};
    msg.msg_iov = &v;
    msg.msg_iovlen = 1;
    ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT);
    if (n >= 0) {
      *flags = msg.msg_flags;
      return std::string(buf.data(), static_cast<size_t>(n));
    }
    usleep(1000);
  }
  *flags = -1;
  return "<nothing>";
}

TEST_F(SiblingRouterTest, StreamConnectBridgesWithAStreamSocketpair) {
  RegisterPair();
  auto r = Connect(4, vsock::VIRTIO_VSOCK_TYPE_STREAM);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(b_.last_type, vsock::VIRTIO_VSOCK_TYPE_STREAM);
  EXPECT_EQ(SocketType(r->fd.get()), SOCK_STREAM);
  ASSERT_TRUE(b_.WaitStored());
  EXPECT_EQ(SocketType(b_.stream_fd.get()), SOCK_STREAM);
}

TEST_F(SiblingRouterTest, SeqpacketConnectKeepsMessageBoundariesBothWays) {
  RegisterPair();
  auto r = Connect(4, vsock::VIRTIO_VSOCK_TYPE_SEQPACKET);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(b_.last_type, vsock::VIRTIO_VSOCK_TYPE_SEQPACKET)
      << "the target device must be asked for a SEQPACKET connection";
  EXPECT_EQ(b_.last_peer_cid, 3u);
  EXPECT_EQ(b_.last_guest_port, 2000u);
  ASSERT_TRUE(b_.WaitStored());
  ASSERT_TRUE(b_.stream_fd.valid());
  ASSERT_EQ(SocketType(r->fd.get()), SOCK_SEQPACKET);
  ASSERT_EQ(SocketType(b_.stream_fd.get()), SOCK_SEQPACKET);
  // Messages of different sizes, sent back to back, arrive one record each (a stream
  // socketpair would merge them), both ways.
  const std::vector<std::string> msgs = {"a", std::string(4097, 'b'), "ccc",
                                         std::string(70000, 'd')};
  for (auto [from, to] :
       {std::pair{r->fd.get(), b_.stream_fd.get()}, std::pair{b_.stream_fd.get(), r->fd.get()}}) {
    int sndbuf = 1 << 20;
    ASSERT_EQ(::setsockopt(from, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf), 0);
    for (const auto& m : msgs) {
      ASSERT_EQ(::send(from, m.data(), m.size(), MSG_NOSIGNAL), static_cast<ssize_t>(m.size()));
    }
    for (const auto& m : msgs) {
      int flags = 0;
      std::string got = RecvRecord(to, &flags);
      EXPECT_EQ(got.size(), m.size());
      EXPECT_EQ(got, m);
      EXPECT_EQ(flags & MSG_TRUNC, 0);
    }
  }
}

TEST_F(SiblingRouterTest, SeqpacketToAGuestWithoutItIsRefused) {
  RegisterPair();
  b_.seqpacket = false;
  auto r = Connect(4, vsock::VIRTIO_VSOCK_TYPE_SEQPACKET);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, EPROTONOSUPPORT);
  EXPECT_FALSE(b_.stream_fd.valid());
  // Streams still go through.
  auto s = Connect(4, vsock::VIRTIO_VSOCK_TYPE_STREAM);
  EXPECT_TRUE(s.ok());
}

TEST_F(SiblingRouterTest, GroupsApplyToSeqpacketToo) {
  ASSERT_TRUE(router_.Register(3, {"a"}, a_loop_.get(), &a_).ok());
  ASSERT_TRUE(router_.Register(5, {"b"}, b_loop_.get(), &b_).ok());
  auto r = Connect(5, vsock::VIRTIO_VSOCK_TYPE_SEQPACKET);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ECONNREFUSED);
  EXPECT_EQ(b_.last_type, 0xffff) << "a refused connect never reaches the target";
  EXPECT_EQ(router_.refused(), 1u);
}

TEST_F(SiblingRouterTest, RefusalsFailTheConnect) {
  ASSERT_TRUE(router_.Register(3, {"a"}, a_loop_.get(), &a_).ok());
  ASSERT_TRUE(router_.Register(4, {"a"}, b_loop_.get(), &b_).ok());
  ASSERT_TRUE(router_.Register(5, {"b"}, b_loop_.get(), &b_).ok());
  auto other_group = Connect(5);
  ASSERT_FALSE(other_group.ok());
  EXPECT_EQ(other_group.error().code, ECONNREFUSED);
  auto unknown = Connect(77);
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().code, ECONNREFUSED);
  EXPECT_EQ(router_.refused(), 2u);
  b_.accept = false;  // the target guest answers RST
  auto rst = Connect(4);
  ASSERT_FALSE(rst.ok());
  EXPECT_EQ(rst.error().code, ECONNREFUSED);
}

TEST_F(SiblingRouterTest, CancelledConnectNeverCallsBack) {
  RegisterPair();
  std::optional<Result<vsock::HostStream>> result;
  auto op = StartConnect(&result, 4, std::chrono::milliseconds(50));
  op.reset();
  for (int i = 0; i < 20; ++i) a_loop_->RunOnce(10);
  EXPECT_FALSE(result.has_value());
}

TEST_F(SiblingRouterTest, CallerGivingUpCancelsTheTargetsPendingConnect) {
  RegisterPair();
  b_.hold = true;
  std::optional<Result<vsock::HostStream>> result;
  auto op = StartConnect(&result);
  ASSERT_TRUE(b_.WaitConnects());
  ASSERT_EQ(b_.connects.load(), 1);
  EXPECT_EQ(b_.cancelled_id.load(), 0u);
  // Guest A reset its connect: B's device must drop the half-open connect it holds.
  op.reset();
  EXPECT_EQ(b_.WaitCancelled(), 7u);
  for (int i = 0; i < 5; ++i) a_loop_->RunOnce(10);
  EXPECT_FALSE(result.has_value());
}

TEST_F(SiblingRouterTest, CallerTimeoutCancelsTheTargetsPendingConnect) {
  RegisterPair();
  b_.hold = true;
  std::optional<Result<vsock::HostStream>> result;
  auto op = StartConnect(&result, 4, std::chrono::milliseconds(50));
  RunAUntil(result);
  ASSERT_TRUE(result);
  ASSERT_FALSE(result->ok());
  EXPECT_EQ(result->error().code, ETIMEDOUT);
  op.reset();  // the device resets guest A and drops the PendingConnect
  EXPECT_EQ(b_.WaitCancelled(), 7u);
}

TEST_F(SiblingRouterTest, AnsweredConnectIsNotCancelled) {
  RegisterPair();
  std::optional<Result<vsock::HostStream>> result;
  auto op = StartConnect(&result);
  RunAUntil(result);
  ASSERT_TRUE(result && result->ok());
  op.reset();  // the device drops its PendingConnect once answered
  std::promise<void> drained;
  b_loop_->Post([&] { drained.set_value(); });
  drained.get_future().wait();
  EXPECT_EQ(b_.cancelled_id.load(), 0u);
}

}  // namespace
}  // namespace vsockd::host
