// SEQPACKET through the real vsockd: a virtual guest's SEQPACKET sockets (vguest) <-> host
// AF_UNIX SOCK_SEQPACKET peers, with the naming of src/host/unix_backend.h:
// guest -> host port P: "<uds>_P.seqpacket"; host -> guest: "<uds>.seqpacket" with the
// messages "CONNECT P\n" / "OK n\n". Message boundaries must survive both ways.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <future>
#include <mutex>
#include <random>

#include "base/unix_socket.h"
#include "tests/integration/harness.h"
#include "vguest/guest.h"
#include "vsock/packet.h"

namespace vsockd::testing {
namespace {

using namespace std::chrono_literals;
using vsock::VIRTIO_VSOCK_TYPE_SEQPACKET;
using vsock::VIRTIO_VSOCK_TYPE_STREAM;

std::vector<uint8_t> Message(size_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(size);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// Sizes 1 B .. 64 KiB + more; all below the default buf_alloc (256 KiB) on both sides.
std::vector<size_t> Sizes() {
  return {1, 2, 17, 100, 4095, 4096, 4097, 8192, 20000, 65535, 65536, 65537, 70000, 131072, 3};
}

// Guest side: sends messages one after another (waiting on on_writable) and keeps what
// arrives, message by message.
struct GuestPeer {
  vguest::Stream* stream = nullptr;
  std::vector<std::vector<uint8_t>> to_send;
  size_t next = 0;
  std::mutex mu;
  std::vector<std::vector<uint8_t>> received;
  std::atomic<bool> eof{false};
  std::atomic<bool> echo{false};

  void Install(vguest::Stream* s) {
    stream = s;
    s->on_message = [this](std::span<const uint8_t> m, uint32_t) {
      {
        std::lock_guard<std::mutex> lock(mu);
        received.emplace_back(m.begin(), m.end());
      }
      if (echo) {
        to_send.emplace_back(m.begin(), m.end());
        SendMore();
      }
    };
    s->on_writable = [this] { SendMore(); };
    s->on_eof = [this] { eof = true; };
  }
  void SendMore() {
    while (next < to_send.size()) {
      if (!stream->WriteMessage(to_send[next]).ok()) return;  // EAGAIN: on_writable resumes
      ++next;
    }
  }
  size_t count() {
    std::lock_guard<std::mutex> lock(mu);
    return received.size();
  }
};

class SeqpacketTest : public ::testing::Test {
 protected:
  void SetUp() override {
    daemon_ = std::make_unique<Daemon>(dir_, 3);
    ASSERT_TRUE(daemon_->Start().ok()) << daemon_->Log();
    vguest::GuestOptions options;
    options.socket_path = daemon_->socket_path();
    auto guest = loop_.Call([&] { return vguest::Guest::Attach(loop_.loop(), options); });
    ASSERT_TRUE(guest.ok()) << guest.error().ToString() << "\n" << daemon_->Log();
    guest_ = std::move(*guest);
    ASSERT_TRUE(guest_->seqpacket_negotiated());
  }
  void TearDown() override {
    loop_.Call([&] {
      guest_.reset();
      return 0;
    });
    if (daemon_ && daemon_->Running()) {
      int status = daemon_->Stop();
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << daemon_->Log();
    }
  }

  vguest::Stream* Connect(uint32_t port, uint16_t type, Status* result) {
    std::promise<std::pair<vguest::Stream*, Status>> done;
    loop_.Call([&] {
      guest_->Connect(
          port,
          [&](vguest::Stream* s, const Status& st) {
            done.set_value({s, st});
          },
          vsock::VMADDR_CID_HOST, type);
      return 0;
    });
    auto f = done.get_future();
    if (f.wait_for(10s) != std::future_status::ready) {
      ADD_FAILURE() << "connect never completed";
      return nullptr;
    }
    auto [s, st] = f.get();
    *result = st;
    return st.ok() ? s : nullptr;
  }

  // Host side of a SEQPACKET host -> guest connect; returns the socket after "OK".
  Result<Fd> HostConnect(uint32_t port, std::string* reply, const std::string& first = "") {
    auto fd = ConnectUnix(daemon_->uds_path() + ".seqpacket", false, SOCK_SEQPACKET);
    if (!fd.ok()) return fd.take_error();
    std::string cmd = first.empty() ? "CONNECT " + std::to_string(port) + "\n" : first;
    if (::send(fd->get(), cmd.data(), cmd.size(), 0) != static_cast<ssize_t>(cmd.size())) {
      return ErrnoError("send");
    }
    char buf[256];
    ssize_t n = ::recv(fd->get(), buf, sizeof buf, 0);
    if (n < 0) return ErrnoError("recv");
    reply->assign(buf, static_cast<size_t>(n));
    if (reply->rfind("OK ", 0) != 0) return MakeError(ECONNREFUSED, "{}", *reply);
    return fd;
  }

  TempDir dir_;
  std::unique_ptr<Daemon> daemon_;
  LoopThread loop_;
  std::unique_ptr<vguest::Guest> guest_;
};

// One host message (blocking recv, bounded by SO_RCVTIMEO).
std::vector<uint8_t> HostRecv(int fd) {
  std::vector<uint8_t> buf(512 * 1024);
  ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
  buf.resize(n < 0 ? 0 : static_cast<size_t>(n));
  return buf;
}

void SetTimeouts(int fd) {
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int sndbuf = 1 << 20;  // room for the 128 KiB messages (the kernel caps at wmem_max)
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
}

TEST_F(SeqpacketTest, GuestToHostKeepsBoundariesBothWaysAndCoexistsWithStream) {
  const uint32_t port = 5000;
  auto seq_listener =
      ListenUnix(daemon_->uds_path() + "_5000.seqpacket", 16, false, SOCK_SEQPACKET);
  ASSERT_TRUE(seq_listener.ok()) << seq_listener.error().ToString();
  auto stream_listener = ListenUnix(daemon_->uds_path() + "_5000", 16, false, SOCK_STREAM);
  ASSERT_TRUE(stream_listener.ok());

  auto peer = std::make_shared<GuestPeer>();
  for (size_t i = 0; i < Sizes().size(); ++i) peer->to_send.push_back(Message(Sizes()[i], i));
  Status st;
  vguest::Stream* s = Connect(port, VIRTIO_VSOCK_TYPE_SEQPACKET, &st);
  ASSERT_NE(s, nullptr) << (st.ok() ? "" : st.error().ToString()) << daemon_->Log();
  Fd host(::accept4(seq_listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(host.valid());
  SetTimeouts(host.get());
  loop_.Call([&] {
    peer->Install(s);
    peer->SendMore();
    return 0;
  });
  // Host: every message arrives whole and is echoed back as one message.
  for (size_t i = 0; i < Sizes().size(); ++i) {
    auto m = HostRecv(host.get());
    ASSERT_EQ(m.size(), Sizes()[i]) << "message " << i;
    EXPECT_EQ(m, peer->to_send[i]) << "message " << i;
    ASSERT_EQ(::send(host.get(), m.data(), m.size(), 0), static_cast<ssize_t>(m.size()))
        << std::strerror(errno);
  }
  ASSERT_TRUE(WaitFor([&] { return peer->count() == Sizes().size(); })) << peer->count();
  {
    std::lock_guard<std::mutex> lock(peer->mu);
    for (size_t i = 0; i < Sizes().size(); ++i) EXPECT_EQ(peer->received[i], peer->to_send[i]);
  }

  // The stream service on the same port is a different socket file: still a byte stream.
  vguest::Stream* bs = Connect(port, VIRTIO_VSOCK_TYPE_STREAM, &st);
  ASSERT_NE(bs, nullptr) << (st.ok() ? "" : st.error().ToString());
  Fd bhost(::accept4(stream_listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(bhost.valid());
  SetTimeouts(bhost.get());
  EXPECT_EQ(loop_.Call([&] { return bs->Write("abc", 3); }), 3u);
  EXPECT_EQ(loop_.Call([&] { return bs->Write("def", 3); }), 3u);
  std::string got;
  while (got.size() < 6) {
    char buf[16];
    ssize_t n = ::recv(bhost.get(), buf, sizeof buf, 0);
    ASSERT_GT(n, 0);
    got.append(buf, static_cast<size_t>(n));
  }
  EXPECT_EQ(got, "abcdef");

  // Half-close: the host's shutdown reaches the guest as EOF after the messages before it.
  ASSERT_EQ(::send(host.get(), "last", 4, 0), 4);
  ASSERT_EQ(::shutdown(host.get(), SHUT_WR), 0);
  ASSERT_TRUE(WaitFor([&] { return peer->eof.load(); }));
  EXPECT_EQ(peer->count(), Sizes().size() + 1);
  // The guest can still send; then its close reaches the host as EOF.
  loop_.Call([&] {
    EXPECT_TRUE(s->WriteMessage(std::vector<uint8_t>{'z'}).ok());
    s->Shutdown(false, true);
    return 0;
  });
  EXPECT_EQ(HostRecv(host.get()), std::vector<uint8_t>{'z'});
  EXPECT_TRUE(HostRecv(host.get()).empty());  // EOF
}

TEST_F(SeqpacketTest, HostToGuestKeepsBoundaries) {
  const uint32_t port = 6000;
  auto peer = std::make_shared<GuestPeer>();
  peer->echo = true;
  ASSERT_TRUE(loop_
                  .Call([&] {
                    return guest_->Listen(
                        port, [peer](vguest::Stream* s) { peer->Install(s); },
                        VIRTIO_VSOCK_TYPE_SEQPACKET);
                  })
                  .ok());
  std::string reply;
  auto host = HostConnect(port, &reply);
  ASSERT_TRUE(host.ok()) << host.error().ToString() << daemon_->Log();
  EXPECT_EQ(reply.back(), '\n');
  SetTimeouts(host->get());
  for (size_t i = 0; i < Sizes().size(); ++i) {
    auto m = Message(Sizes()[i], 100 + i);
    ASSERT_EQ(::send(host->get(), m.data(), m.size(), 0), static_cast<ssize_t>(m.size()));
    auto back = HostRecv(host->get());
    ASSERT_EQ(back.size(), m.size()) << "message " << i;
    EXPECT_EQ(back, m);
  }
  // Pipelined: many small messages at once stay separate.
  for (int i = 0; i < 200; ++i) {
    std::string m = "msg" + std::to_string(i);
    ASSERT_EQ(::send(host->get(), m.data(), m.size(), 0), static_cast<ssize_t>(m.size()));
  }
  for (int i = 0; i < 200; ++i) {
    auto back = HostRecv(host->get());
    EXPECT_EQ(std::string(back.begin(), back.end()), "msg" + std::to_string(i));
  }
}

TEST_F(SeqpacketTest, Refusals) {
  // Guest -> host: only a stream service on the port: a SEQPACKET connect is reset.
  auto stream_listener = ListenUnix(daemon_->uds_path() + "_5001", 16, false, SOCK_STREAM);
  ASSERT_TRUE(stream_listener.ok());
  Status st;
  EXPECT_EQ(Connect(5001, VIRTIO_VSOCK_TYPE_SEQPACKET, &st), nullptr);
  EXPECT_EQ(st.error().code, ECONNRESET);

  // Host -> guest: the guest listens for streams only on 6001: ERR.
  ASSERT_TRUE(loop_.Call([&] { return guest_->Listen(6001, [](vguest::Stream*) {}); }).ok());
  std::string reply;
  auto host = HostConnect(6001, &reply);
  EXPECT_FALSE(host.ok());
  EXPECT_EQ(reply.rfind("ERR ", 0), 0u) << reply;
  // A first message that is not exactly one command line: ERR.
  ASSERT_TRUE(loop_
                  .Call([&] {
                    return guest_->Listen(
                        6002, [](vguest::Stream*) {}, VIRTIO_VSOCK_TYPE_SEQPACKET);
                  })
                  .ok());
  host = HostConnect(6002, &reply, "CONNECT 6002\nextra");
  EXPECT_FALSE(host.ok());
  EXPECT_EQ(reply.rfind("ERR ", 0), 0u) << reply;
  host = HostConnect(6002, &reply, "CONNECT 60");
  EXPECT_FALSE(host.ok());
  EXPECT_EQ(reply.rfind("ERR ", 0), 0u) << reply;
  // And the right one works.
  host = HostConnect(6002, &reply);
  EXPECT_TRUE(host.ok()) << reply;
}

}  // namespace
}  // namespace vsockd::testing
