// libvsock SEQPACKET over the hybrid convention and plain Unix sockets, against a fake vsockd
// side played by the test (AF_UNIX SOCK_SEQPACKET listeners on "<uds>.seqpacket" and a guest
// stand-in connecting to "<uds>_PORT.seqpacket"). Never AF_VSOCK (the AF_VSOCK cases run
// inside the test guest: tests/guest/libvsock_guest_test.cc).
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "tests/integration/harness.h"
#include "vsock/vsock.h"

namespace vsock {
namespace {

using namespace std::chrono_literals;
using vsockd::testing::TempDir;

int ListenSeqpacket(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << std::strerror(errno);
  EXPECT_EQ(::listen(fd, 8), 0);
  return fd;
}

int ConnectSeqpacket(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << std::strerror(errno);
  return fd;
}

std::string RecvMessage(int fd) {
  std::string buf(1 << 17, '\0');
  ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
  buf.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return buf;
}

// vsockd's host -> guest SEQPACKET side: accepts one client on "<uds>.seqpacket", checks the
// CONNECT message, answers `reply` (if not empty) and then echoes every message.
class FakeVsockd {
 public:
  FakeVsockd(const std::string& uds, std::string reply, bool echo = true)
      : listener_(ListenSeqpacket(uds + ".seqpacket")) {
    thread_ = std::thread([this, reply = std::move(reply), echo] {
      int c = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) return;
      command_ = RecvMessage(c);
      if (!reply.empty()) ::send(c, reply.data(), reply.size(), MSG_NOSIGNAL);
      while (echo) {
        std::string m(1 << 17, '\0');
        ssize_t n = ::recv(c, m.data(), m.size(), 0);
        if (n <= 0) break;
        ::send(c, m.data(), static_cast<size_t>(n), MSG_NOSIGNAL);
      }
      ::close(c);
    });
  }
  ~FakeVsockd() {
    Join();
    ::close(listener_);
  }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }
  const std::string& command() const { return command_; }  // after Join()

 private:
  int listener_;
  std::thread thread_;
  std::string command_;
};

TEST(SeqpacketPaths, HybridNames) {
  Address a = Address::hybrid("/run/vm.vsock", 5000);
  EXPECT_EQ(a.hybrid_listen_path(SocketType::seqpacket), "/run/vm.vsock_5000.seqpacket");
  EXPECT_EQ(a.hybrid_listen_path(SocketType::stream), "/run/vm.vsock_5000");
  EXPECT_EQ(a.hybrid_connect_path(SocketType::seqpacket), "/run/vm.vsock.seqpacket");
  EXPECT_EQ(a.hybrid_connect_path(SocketType::stream), "/run/vm.vsock");
}

TEST(SeqpacketHybrid, ConnectKeepsMessageBoundariesAndReportsTruncation) {
  TempDir dir;
  const std::string uds = dir.File("vm.vsock");
  FakeVsockd fake(uds, "OK 1234\n");
  std::error_code ec;
  std::string why;
  SeqpacketSocket s = connect_seqpacket(Address::hybrid(uds, 5000), 5s, ec, &why);
  ASSERT_FALSE(ec) << why;
  EXPECT_EQ(s.peer_address(), Address::hybrid(uds, 5000));
  int type = 0;
  socklen_t tl = sizeof type;
  ASSERT_EQ(::getsockopt(s.native_handle(), SOL_SOCKET, SO_TYPE, &type, &tl), 0);
  EXPECT_EQ(type, SOCK_SEQPACKET);
  s.set_read_timeout(10s, ec);

  // Three messages sent back to back come back as three messages.
  const std::string msgs[] = {"a", std::string(5000, 'b'), "third\nwith newline"};
  for (const auto& m : msgs) {
    EXPECT_EQ(s.send(m, ec), m.size());
    ASSERT_FALSE(ec) << ec.message();
  }
  for (const auto& m : msgs) {
    Message info;
    std::string got = s.receive(1 << 16, ec, &info);
    ASSERT_FALSE(ec) << ec.message();
    EXPECT_EQ(got, m);
    EXPECT_FALSE(info.truncated);
    EXPECT_EQ(info.full_size, m.size());
    EXPECT_FALSE(info.end_of_stream);
  }

  // A buffer too small: the start of the message, MSG_TRUNC, the real size; the rest of that
  // message is gone and the next message is whole.
  ASSERT_EQ(s.send(std::string(100, 'x'), true, ec), 100u);
  ASSERT_EQ(s.send("next", ec), 4u);
  char small[10];
  Message m = s.receive(small, sizeof small, ec);
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_TRUE(m.truncated);
  EXPECT_EQ(m.size, 10u);
  EXPECT_EQ(m.full_size, 100u);
  EXPECT_EQ(std::string(small, 10), std::string(10, 'x'));
  EXPECT_EQ(s.receive(100, ec), "next");

  // Half-close: the fake closes after our EOF, we see the end.
  s.shutdown(Shutdown::write, ec);
  ASSERT_FALSE(ec);
  char buf[16];
  m = s.receive(buf, sizeof buf, ec);
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_TRUE(m.end_of_stream);
  fake.Join();
  EXPECT_EQ(fake.command(), "CONNECT 5000\n");
}

TEST(SeqpacketHybrid, ErrReplyIsRefusedWithItsReason) {
  TempDir dir;
  const std::string uds = dir.File("vm.vsock");
  FakeVsockd fake(uds, "ERR connection refused by guest\n", false);
  std::error_code ec;
  std::string why;
  SeqpacketSocket s = connect_seqpacket(Address::hybrid(uds, 6000), 5s, ec, &why);
  EXPECT_FALSE(s.is_open());
  EXPECT_EQ(ec, errc::handshake_refused);
  EXPECT_EQ(ec, std::errc::connection_refused);
  EXPECT_NE(why.find("connection refused by guest"), std::string::npos) << why;
}

TEST(SeqpacketHybrid, ReplyWithoutNewlineIsABadReply) {
  TempDir dir;
  const std::string uds = dir.File("vm.vsock");
  FakeVsockd fake(uds, "OK 1", false);
  std::error_code ec;
  std::string why;
  SeqpacketSocket s = connect_seqpacket(Address::hybrid(uds, 6000), 5s, ec, &why);
  EXPECT_EQ(ec, errc::bad_handshake_reply) << why;
}

TEST(SeqpacketHybrid, CloseWithoutReplyIsRefused) {
  TempDir dir;
  const std::string uds = dir.File("vm.vsock");
  FakeVsockd fake(uds, "", false);
  std::error_code ec;
  SeqpacketSocket s = connect_seqpacket(Address::hybrid(uds, 6000), 5s, ec);
  EXPECT_EQ(ec, errc::handshake_refused);
}

TEST(SeqpacketHybrid, StreamConnectDoesNotUseTheSeqpacketSocket) {
  TempDir dir;
  const std::string uds = dir.File("vm.vsock");
  FakeVsockd fake(uds, "OK 1\n", false);
  std::error_code ec;
  Stream s = connect(Address::hybrid(uds, 6000), 1s, ec);
  EXPECT_EQ(ec, std::errc::no_such_file_or_directory);  // no "<uds>" stream socket here
  SeqpacketSocket q = connect_seqpacket(Address::hybrid(uds, 6000), 5s, ec);  // ends the fake
  EXPECT_FALSE(ec) << ec.message();
}

TEST(SeqpacketHybrid, NonBlockingConnectorDoesTheHandshake) {
  TempDir dir;
  const std::string uds = dir.File("vm.vsock");
  FakeVsockd fake(uds, "OK 77\n");
  std::error_code ec;
  Connector c;
  c.start(Address::hybrid(uds, 5001), SocketType::seqpacket, ec);
  for (int i = 0; i < 100 && !ec && !c.done(); ++i) {
    pollfd p{c.native_handle(), c.events(), 0};
    ::poll(&p, 1, 5000);
    c.step(ec);
  }
  ASSERT_FALSE(ec) << c.reason();
  ASSERT_TRUE(c.done());
  SeqpacketSocket s(c.take_stream());
  EXPECT_TRUE(s.nonblocking());
  s.set_nonblocking(false, ec);
  ASSERT_EQ(s.send("ping", ec), 4u);
  EXPECT_EQ(s.receive(64, ec), "ping");
  s.close();
  fake.Join();
  EXPECT_EQ(fake.command(), "CONNECT 5001\n");
}

TEST(SeqpacketHybrid, ListenerServesTheGuestToHostPath) {
  TempDir dir;
  const std::string uds = dir.File("vm.vsock");
  const Address addr = Address::hybrid(uds, 7000);
  std::error_code ec;
  Listener l = listen(addr, SocketType::seqpacket, ec);
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_EQ(l.type(), SocketType::seqpacket);
  struct stat st;
  ASSERT_EQ(::stat((uds + "_7000.seqpacket").c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_NE(::stat((uds + "_7000").c_str(), &st), 0);  // not the stream path

  // vsockd's stand-in: connects like vsockd does for a guest and sends two messages.
  int guest = ConnectSeqpacket(uds + "_7000.seqpacket");
  ASSERT_EQ(::send(guest, "one", 3, 0), 3);
  ASSERT_EQ(::send(guest, "two!", 4, 0), 4);
  SeqpacketSocket s = l.accept_seqpacket(5s, ec);
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_EQ(s.local_address(), addr);
  EXPECT_EQ(s.receive(64, ec), "one");
  EXPECT_EQ(s.receive(64, ec), "two!");
  ASSERT_EQ(s.send("reply", ec), 5u);
  EXPECT_EQ(RecvMessage(guest), "reply");
  ::close(guest);
  Message m;
  s.receive(64, ec, &m);
  EXPECT_TRUE(m.end_of_stream);

  l.close();
  EXPECT_NE(::stat((uds + "_7000.seqpacket").c_str(), &st), 0);  // removed on close
}

TEST(SeqpacketHybrid, ListenerReplacesAStaleSeqpacketFile) {
  TempDir dir;
  const std::string uds = dir.File("vm.vsock");
  ::close(ListenSeqpacket(uds + "_7001.seqpacket"));  // leaves a stale file
  std::error_code ec;
  Listener l = listen(Address::hybrid(uds, 7001), SocketType::seqpacket, ec);
  ASSERT_FALSE(ec) << ec.message();
  // A live one is not replaced.
  Listener l2 = listen(Address::hybrid(uds, 7001), SocketType::seqpacket, ec);
  EXPECT_EQ(ec, std::errc::address_in_use);
}

TEST(SeqpacketUnix, PlainUnixSeqpacketBothWays) {
  TempDir dir;
  const Address addr = Address::unix_socket(dir.File("plain.sock"));
  std::error_code ec;
  Listener l = listen(addr, SocketType::seqpacket, ec);
  ASSERT_FALSE(ec) << ec.message();
  SeqpacketSocket c = connect_seqpacket(addr, 5s, ec);
  ASSERT_FALSE(ec) << ec.message();
  SeqpacketSocket s = l.accept_seqpacket(5s, ec);
  ASSERT_FALSE(ec) << ec.message();
  ASSERT_EQ(c.send("x", ec), 1u);
  ASSERT_EQ(c.send("yy", ec), 2u);
  EXPECT_EQ(s.receive(8, ec), "x");
  EXPECT_EQ(s.receive(8, ec), "yy");
  // Too large for the socket at all: EMSGSIZE, nothing sent.
  std::string huge(16 << 20, 'h');
  EXPECT_EQ(c.send(huge, ec), 0u);
  EXPECT_EQ(ec, std::errc::message_size);
  // Non-blocking receive with nothing there.
  s.set_nonblocking(true, ec);
  char b[4];
  s.receive(b, sizeof b, ec);
  EXPECT_EQ(ec, std::errc::operation_would_block);
}

}  // namespace
}  // namespace vsock
