// libvsock's kernel AF_VSOCK paths, tested INSIDE the test guest (the VM tests run this
// binary there; it is never run on a build machine and not registered with CTest):
//  - over vsock_loopback (CID 1, VMADDR_CID_LOCAL): listen / accept / connect / read / write
//    / shutdown both ways, the addresses getsockname and getpeername report, the
//    non-blocking Connector driven by the caller's poll, read and accept timeouts, refused
//    connects (the kernel's reset reported as connection_refused), EPIPE after the peer
//    closed, many connections at once;
//  - against the host through vsockd: an echo service on host (CID 2) port
//    $VSOCKD_HOST_ECHO_PORT, and a refusal on $VSOCKD_HOST_CLOSED_PORT (each test is
//    skipped when its variable is unset).
// Data is the shared test pattern (tests/common/pattern.h).
#include <gtest/gtest.h>
#include <poll.h>

#include <chrono>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tests/common/pattern.h"
#include "vsock/vsock.h"

namespace vsock {
namespace {

using namespace std::chrono_literals;
using vsockd::testing::Fnv1a;
using vsockd::testing::Fnv1aStream;
using vsockd::testing::PatternBytes;

// A loopback listener on a port the kernel picks.
Listener LoopbackListener() {
  std::error_code ec;
  Listener l = listen(Address::vsock(cid_any, port_any), ec);
  EXPECT_FALSE(ec) << "listen: " << ec.message();
  EXPECT_TRUE(l.is_open());
  EXPECT_NE(l.local_address().port(), port_any);
  return l;
}

Address LoopbackTo(const Listener& l) {
  return Address::vsock(cid_local, l.local_address().port());
}

// Reads until EOF, hashing.
Fnv1aStream ReadAll(Stream& s) {
  Fnv1aStream h;
  std::vector<uint8_t> buf(64 << 10);
  std::error_code ec;
  while (size_t n = s.read_some(buf.data(), buf.size(), ec)) h.Update({buf.data(), n});
  EXPECT_FALSE(ec) << ec.message();
  return h;
}

// A connected loopback pair: client (connect) and server (accept).
struct Pair {
  Listener listener;
  Stream client, server;
};

void MakePair(Pair& p) {
  p.listener = LoopbackListener();
  std::error_code ec;
  std::string why;
  p.client = connect(LoopbackTo(p.listener), 5s, ec, &why);
  ASSERT_FALSE(ec) << why;
  p.server = p.listener.accept(10s, ec);
  ASSERT_FALSE(ec) << ec.message();
}

// ---------------------------------------------------------------------------------------
// Addresses

TEST(GuestAddressTest, ParsesGuestForms) {
  std::error_code ec;
  auto a = Address::parse("vsock://local:1234", ec);
  ASSERT_TRUE(a) << ec.message();
  EXPECT_EQ(*a, Address::vsock(cid_local, 1234));
  EXPECT_EQ(a->to_string(), "vsock://1:1234");
  auto h = Address::parse("host:1024", ec);
  ASSERT_TRUE(h);
  EXPECT_EQ(*h, Address::vsock(cid_host, 1024));
  auto any = Address::parse("5000", ec);
  ASSERT_TRUE(any);
  EXPECT_EQ(*any, Address::vsock(cid_any, 5000));
  EXPECT_EQ(any->to_string(), "vsock://any:5000");
  auto sd = Address::parse("vsock:2:99", ec);
  ASSERT_TRUE(sd);
  EXPECT_EQ(*sd, Address::vsock(2, 99));
  std::string why;
  EXPECT_FALSE(Address::parse("vsock://1:abc", ec, &why));
  EXPECT_EQ(ec, errc::invalid_address);
  EXPECT_NE(why.find("abc"), std::string::npos) << why;
}

// ---------------------------------------------------------------------------------------
// Loopback

TEST(LoopbackTest, ConnectAcceptAndAddresses) {
  Pair p;
  ASSERT_NO_FATAL_FAILURE(MakePair(p));
  const uint32_t port = p.listener.local_address().port();
  EXPECT_TRUE(p.client.peer_address().is_vsock());
  EXPECT_EQ(p.client.peer_address(), Address::vsock(cid_local, port));
  EXPECT_TRUE(p.server.local_address().is_vsock());
  EXPECT_EQ(p.server.local_address().port(), port);
  // The accepted side sees the client's (ephemeral) port, and the client's own name agrees.
  EXPECT_TRUE(p.server.peer_address().is_vsock());
  EXPECT_EQ(p.server.peer_address().port(), p.client.local_address().port());
  EXPECT_NE(p.server.peer_address().port(), port_any);
  EXPECT_FALSE(p.client.nonblocking());
  EXPECT_FALSE(p.server.nonblocking());
}

TEST(LoopbackTest, DataAndShutdownBothWays) {
  Pair p;
  ASSERT_NO_FATAL_FAILURE(MakePair(p));
  const auto up = PatternBytes(4 << 20, 21), down = PatternBytes(3 << 20, 22);
  // Client -> server while server -> client, each side half-closing after its data.
  std::thread client_writer([&] {
    std::error_code ec;
    EXPECT_EQ(p.client.write_all(up.data(), up.size(), ec), up.size());
    EXPECT_FALSE(ec) << ec.message();
    p.client.shutdown(Shutdown::write, ec);
    EXPECT_FALSE(ec) << ec.message();
  });
  std::thread server_writer([&] {
    std::error_code ec;
    EXPECT_EQ(p.server.write_all(down.data(), down.size(), ec), down.size());
    EXPECT_FALSE(ec) << ec.message();
    p.server.shutdown(Shutdown::write, ec);
    EXPECT_FALSE(ec) << ec.message();
  });
  Fnv1aStream at_server;
  std::thread server_reader([&] { at_server = ReadAll(p.server); });
  Fnv1aStream at_client = ReadAll(p.client);
  server_reader.join();
  client_writer.join();
  server_writer.join();
  EXPECT_EQ(at_server.count(), up.size());
  EXPECT_EQ(at_server.hash(), Fnv1a(up));
  EXPECT_EQ(at_client.count(), down.size());
  EXPECT_EQ(at_client.hash(), Fnv1a(down));
}

TEST(LoopbackTest, HalfCloseKeepsTheOtherDirection) {
  Pair p;
  ASSERT_NO_FATAL_FAILURE(MakePair(p));
  std::error_code ec;
  ASSERT_EQ(p.client.write_all("request", ec), 7u);
  p.client.shutdown(Shutdown::write, ec);
  ASSERT_FALSE(ec) << ec.message();
  char buf[64];
  size_t n = p.server.read(buf, sizeof buf, ec);  // up to EOF
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_EQ(std::string(buf, n), "request");
  // After the client's EOF the server can still answer.
  ASSERT_EQ(p.server.write_all("reply", ec), 5u);
  ASSERT_FALSE(ec) << ec.message();
  p.server.shutdown(Shutdown::write, ec);
  n = p.client.read(buf, sizeof buf, ec);
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_EQ(std::string(buf, n), "reply");
}

TEST(LoopbackTest, WriteAfterThePeerClosedIsEpipe) {
  Pair p;
  ASSERT_NO_FATAL_FAILURE(MakePair(p));
  p.server.close();
  char c;
  std::error_code ec;
  EXPECT_EQ(p.client.read_some(&c, 1, ec), 0u);  // EOF: the peer's shutdown arrived
  EXPECT_FALSE(ec) << ec.message();
  p.client.write_all("x", ec);  // MSG_NOSIGNAL: no SIGPIPE
  EXPECT_EQ(ec, std::errc::broken_pipe) << ec.message();
}

TEST(LoopbackTest, NonBlockingConnectorWithPoll) {
  Listener l = LoopbackListener();
  Connector c;
  std::error_code ec;
  c.start(LoopbackTo(l), ec, 5000ms);
  ASSERT_FALSE(ec) << c.reason();
  const int fd = c.native_handle();
  int rounds = 0;
  while (!ec && !c.done()) {
    ASSERT_LT(++rounds, 1000);
    ASSERT_EQ(c.native_handle(), fd);
    short events = c.events();
    ASSERT_TRUE(events == POLLIN || events == POLLOUT) << events;
    pollfd pfd{fd, events, 0};
    ASSERT_GE(::poll(&pfd, 1, 10000), 0);
    c.step(ec);
  }
  ASSERT_FALSE(ec) << c.reason();
  Stream s = c.take_stream();
  ASSERT_TRUE(s.is_open());
  EXPECT_EQ(s.native_handle(), fd);
  EXPECT_TRUE(s.nonblocking());
  // Nothing to read yet on the non-blocking stream.
  char buf[8];
  s.read_some(buf, sizeof buf, ec);
  EXPECT_EQ(ec, std::errc::operation_would_block);
  Stream server = l.accept(10s, ec);
  ASSERT_FALSE(ec) << ec.message();
  ASSERT_EQ(server.write_all("ping", ec), 4u);
  pollfd pfd{s.native_handle(), POLLIN, 0};
  ASSERT_EQ(::poll(&pfd, 1, 10000), 1);
  EXPECT_EQ(s.read_some(buf, sizeof buf, ec), 4u);
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_EQ(std::string(buf, 4), "ping");
}

TEST(LoopbackTest, ReadTimeoutFires) {
  Pair p;
  ASSERT_NO_FATAL_FAILURE(MakePair(p));
  std::error_code ec;
  p.client.set_read_timeout(200ms, ec);
  ASSERT_FALSE(ec) << ec.message();
  char c;
  EXPECT_EQ(p.client.read_some(&c, 1, ec), 0u);
  EXPECT_EQ(ec, std::errc::timed_out) << ec.message();
  // Still usable afterwards.
  ASSERT_EQ(p.server.write_all("z", ec), 1u);
  EXPECT_EQ(p.client.read_some(&c, 1, ec), 1u);
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_EQ(c, 'z');
}

TEST(LoopbackTest, AcceptTimeoutAndNonBlockingAccept) {
  Listener l = LoopbackListener();
  std::error_code ec;
  Stream s = l.accept(100ms, ec);
  EXPECT_EQ(ec, std::errc::timed_out) << ec.message();
  EXPECT_FALSE(s.is_open());
  l.set_nonblocking(true, ec);
  ASSERT_FALSE(ec) << ec.message();
  s = l.accept(ec);
  EXPECT_EQ(ec, std::errc::operation_would_block) << ec.message();
}

TEST(LoopbackTest, RefusedConnectIsConnectionRefused) {
  uint32_t port;
  {
    Listener l = LoopbackListener();
    port = l.local_address().port();
  }  // closed: nobody listens on `port` any more
  std::error_code ec;
  std::string why;
  Stream s = connect(Address::vsock(cid_local, port), 5s, ec, &why);
  EXPECT_FALSE(s.is_open());
  // Linux resets the connect; libvsock reports it as a refusal, like a refused hybrid one.
  EXPECT_EQ(ec, std::errc::connection_refused) << ec.message() << ": " << why;
  EXPECT_EQ(&ec.category(), &std::system_category());
  EXPECT_FALSE(ec.message().empty());
  EXPECT_NE(why.find("vsock://1:" + std::to_string(port)), std::string::npos) << why;
  EXPECT_NE(why.find("refused"), std::string::npos) << why;

  // The same through the Connector.
  Connector c;
  c.start(Address::vsock(cid_local, port), ec, 5000ms);
  while (!ec && !c.done()) {
    pollfd pfd{c.native_handle(), c.events(), 0};
    ASSERT_GE(::poll(&pfd, 1, 10000), 0);
    c.step(ec);
  }
  EXPECT_EQ(ec, std::errc::connection_refused) << c.reason();
  EXPECT_FALSE(c.reason().empty());
}

TEST(LoopbackTest, BadTargetsAndPortInUse) {
  std::error_code ec;
  std::string why;
  Stream s = connect(Address::vsock(cid_local, port_any), 1s, ec, &why);
  EXPECT_EQ(ec, errc::invalid_address) << why;
  s = connect(Address::vsock(cid_any, 1234), 1s, ec, &why);
  EXPECT_EQ(ec, errc::invalid_address) << why;

  Listener l = LoopbackListener();
  Listener again = listen(Address::vsock(cid_any, l.local_address().port()), ec);
  EXPECT_EQ(ec, std::errc::address_in_use) << ec.message();
  EXPECT_FALSE(again.is_open());
}

TEST(LoopbackTest, ManyConnectionsAtOnce) {
  constexpr int kConns = 64;
  constexpr size_t kBytes = 100000;
  Listener l = LoopbackListener();
  // The server echoes every connection on its own thread.
  std::thread server([&] {
    std::vector<std::thread> echoes;
    for (int i = 0; i < kConns; ++i) {
      std::error_code ec;
      Stream s = l.accept(30s, ec);
      if (ec) {
        ADD_FAILURE() << "accept " << i << ": " << ec.message();
        break;
      }
      echoes.emplace_back([s = std::move(s)]() mutable {
        std::vector<uint8_t> buf(32 << 10);
        std::error_code e;
        while (size_t n = s.read_some(buf.data(), buf.size(), e)) s.write_all(buf.data(), n, e);
        s.shutdown(Shutdown::write, e);
      });
    }
    for (auto& t : echoes) t.join();
  });
  std::vector<Stream> clients(kConns);
  for (int i = 0; i < kConns; ++i) {
    std::error_code ec;
    std::string why;
    clients[i] = connect(LoopbackTo(l), 5s, ec, &why);
    ASSERT_FALSE(ec) << i << ": " << why;
  }
  std::vector<std::thread> workers;
  workers.reserve(kConns);
  std::vector<uint64_t> got(kConns), want(kConns);
  for (int i = 0; i < kConns; ++i) {
    workers.emplace_back([&, i] {
      auto data = PatternBytes(kBytes, 500 + static_cast<uint64_t>(i));
      want[i] = Fnv1a(data);
      std::thread w([&] {
        std::error_code ec;
        clients[i].write_all(data.data(), data.size(), ec);
        EXPECT_FALSE(ec) << ec.message();
        clients[i].shutdown(Shutdown::write, ec);
      });
      Fnv1aStream h = ReadAll(clients[i]);
      w.join();
      EXPECT_EQ(h.count(), kBytes) << "connection " << i;
      got[i] = h.hash();
    });
  }
  for (auto& t : workers) t.join();
  server.join();
  for (int i = 0; i < kConns; ++i) EXPECT_EQ(got[i], want[i]) << "connection " << i;
}

// ---------------------------------------------------------------------------------------
// Loopback SEQPACKET (Linux 5.14+ vsock SOCK_SEQPACKET over vsock_loopback)

struct SeqPair {
  Listener listener;
  SeqpacketSocket client, server;
};

void MakeSeqPair(SeqPair& p) {
  std::error_code ec;
  p.listener = listen(Address::vsock(cid_any, port_any), SocketType::seqpacket, ec);
  ASSERT_FALSE(ec) << ec.message();
  ASSERT_EQ(p.listener.type(), SocketType::seqpacket);
  const uint32_t port = p.listener.local_address().port();
  p.client = connect_seqpacket(Address::vsock(cid_local, port), std::chrono::seconds(5), ec);
  ASSERT_FALSE(ec) << ec.message();
  p.server = p.listener.accept_seqpacket(std::chrono::seconds(5), ec);
  ASSERT_FALSE(ec) << ec.message();
  p.client.set_read_timeout(std::chrono::seconds(10), ec);
  p.server.set_read_timeout(std::chrono::seconds(10), ec);
}

TEST(LoopbackSeqpacketTest, MessageBoundariesBothWays) {
  SeqPair p;
  ASSERT_NO_FATAL_FAILURE(MakeSeqPair(p));
  std::error_code ec;
  const std::string msgs[] = {"a", std::string(4096, 'b'), std::string(70000, 'c'), "dd"};
  for (const auto& m : msgs) ASSERT_EQ(p.client.send(m, ec), m.size()) << ec.message();
  for (const auto& m : msgs) {
    Message info;
    EXPECT_EQ(p.server.receive(1 << 17, ec, &info), m);
    EXPECT_FALSE(info.truncated);
    EXPECT_EQ(info.full_size, m.size());
  }
  ASSERT_EQ(p.server.send("back", ec), 4u);
  EXPECT_EQ(p.client.receive(64, ec), "back");
  p.client.shutdown(Shutdown::write, ec);
  Message end;
  p.server.receive(64, ec, &end);
  EXPECT_TRUE(end.end_of_stream);
}

TEST(LoopbackSeqpacketTest, SmallBufferTruncatesAndReportsTheFullSize) {
  SeqPair p;
  ASSERT_NO_FATAL_FAILURE(MakeSeqPair(p));
  std::error_code ec;
  ASSERT_EQ(p.client.send(std::string(1000, 'x'), ec), 1000u);
  ASSERT_EQ(p.client.send("next", ec), 4u);
  char buf[10];
  Message m = p.server.receive(buf, sizeof buf, ec);
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_TRUE(m.truncated);
  EXPECT_EQ(m.size, 10u);
  EXPECT_EQ(m.full_size, 1000u);
  EXPECT_EQ(p.server.receive(64, ec), "next");  // the rest of the first one is gone
}

TEST(LoopbackSeqpacketTest, EorIsReportedOnlyWhenSent) {
  SeqPair p;
  ASSERT_NO_FATAL_FAILURE(MakeSeqPair(p));
  std::error_code ec;
  ASSERT_EQ(p.client.send("record", true, ec), 6u);
  ASSERT_EQ(p.client.send("plain", false, ec), 5u);
  Message m;
  EXPECT_EQ(p.server.receive(64, ec, &m), "record");
  EXPECT_TRUE(m.eor);
  EXPECT_EQ(p.server.receive(64, ec, &m), "plain");
  EXPECT_FALSE(m.eor);
}

// ---------------------------------------------------------------------------------------
// The host through vsockd

std::optional<uint32_t> EnvPort(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return static_cast<uint32_t>(std::strtoul(v, nullptr, 10));
}

TEST(HostTest, EchoThroughVsockd) {
  auto port = EnvPort("VSOCKD_HOST_ECHO_PORT");
  if (!port) GTEST_SKIP() << "VSOCKD_HOST_ECHO_PORT is not set";
  std::error_code ec;
  std::string why;
  auto addr = Address::parse("vsock://host:" + std::to_string(*port), ec, &why);
  ASSERT_TRUE(addr) << why;
  Stream s = connect(*addr, 10s, ec, &why);
  ASSERT_FALSE(ec) << why;
  EXPECT_EQ(s.peer_address(), Address::vsock(cid_host, *port));
  EXPECT_NE(s.local_address().port(), port_any);
  const auto data = PatternBytes(2 << 20, 31);
  std::thread writer([&] {
    std::error_code wec;
    EXPECT_EQ(s.write_all(data.data(), data.size(), wec), data.size());
    EXPECT_FALSE(wec) << wec.message();
    s.shutdown(Shutdown::write, wec);
    EXPECT_FALSE(wec) << wec.message();
  });
  Fnv1aStream h = ReadAll(s);
  writer.join();
  EXPECT_EQ(h.count(), data.size());
  EXPECT_EQ(h.hash(), Fnv1a(data));
}

TEST(HostTest, NonBlockingConnectToTheHostEcho) {
  auto port = EnvPort("VSOCKD_HOST_ECHO_PORT");
  if (!port) GTEST_SKIP() << "VSOCKD_HOST_ECHO_PORT is not set";
  Connector c;
  std::error_code ec;
  c.start(Address::vsock(cid_host, *port), ec, 10000ms);
  while (!ec && !c.done()) {
    pollfd pfd{c.native_handle(), c.events(), 0};
    ASSERT_GE(::poll(&pfd, 1, 15000), 0);
    c.step(ec);
  }
  ASSERT_FALSE(ec) << c.reason();
  Stream s = c.take_stream();
  s.set_nonblocking(false, ec);
  ASSERT_FALSE(ec);
  ASSERT_EQ(s.write_all("hello host", ec), 10u);
  s.shutdown(Shutdown::write, ec);
  char buf[32];
  size_t n = s.read(buf, sizeof buf, ec);
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_EQ(std::string(buf, n), "hello host");
}

TEST(HostTest, ClosedHostPortIsRefused) {
  auto port = EnvPort("VSOCKD_HOST_CLOSED_PORT");
  if (!port) GTEST_SKIP() << "VSOCKD_HOST_CLOSED_PORT is not set";
  std::error_code ec;
  std::string why;
  Stream s = connect(Address::vsock(cid_host, *port), 10s, ec, &why);
  EXPECT_FALSE(s.is_open());
  EXPECT_EQ(ec, std::errc::connection_refused) << ec.message() << ": " << why;
}

}  // namespace
}  // namespace vsock
