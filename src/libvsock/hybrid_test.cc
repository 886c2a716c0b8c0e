// libvsock against the real vsockd and a virtual guest (vguest): host -> guest connects
// through the hybrid handshake (blocking and poll-driven), refusals, timeouts, malformed
// replies (from fake hybrid servers), and the host-side Listener receiving a guest -> host
// connection. Only Unix sockets are created here: never AF_VSOCK.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <thread>

#include "tests/integration/guest_util.h"
#include "tests/integration/harness.h"
#include "vguest/guest.h"
#include "vsock/vsock.h"

namespace vsock {
namespace {

using namespace std::chrono_literals;
using vsockd::testing::BuiltBinary;
using vsockd::testing::Daemon;
using vsockd::testing::LoopThread;
using vsockd::testing::StreamEcho;
using vsockd::testing::Subprocess;
using vsockd::testing::TempDir;
using vsockd::testing::WaitFor;

// Reads until the end of the stream.
std::string ReadToEnd(Stream& s) {
  std::string out;
  char buf[4096];
  std::error_code ec;
  while (size_t n = s.read_some(buf, sizeof buf, ec)) out.append(buf, n);
  EXPECT_FALSE(ec) << ec.message();
  return out;
}

// vsockd plus a virtual guest with an echo service on guest port 5000.
class HybridTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(daemon_.Start().ok()) << daemon_.Log();
    vsockd::vguest::GuestOptions options;
    options.socket_path = daemon_.socket_path();
    auto guest = loop_.Call([&] { return vsockd::vguest::Guest::Attach(loop_.loop(), options); });
    ASSERT_TRUE(guest.ok()) << guest.error().ToString() << "\n" << daemon_.Log();
    guest_ = std::move(*guest);
    auto st = loop_.Call([&] {
      return guest_->Listen(kEchoPort, [this](vsockd::vguest::Stream* s) {
        echoes_.push_back(std::make_unique<StreamEcho>(s));
      });
    });
    ASSERT_TRUE(st.ok()) << st.error().ToString();
  }
  void TearDown() override {
    loop_.Call([&] {
      echoes_.clear();
      guest_.reset();
      return 0;
    });
  }

  Address Hybrid(uint32_t port) const { return Address::hybrid(daemon_.uds_path(), port); }

  static constexpr uint32_t kEchoPort = 5000;
  TempDir dir_;
  Daemon daemon_{dir_, 3};
  LoopThread loop_;
  std::unique_ptr<vsockd::vguest::Guest> guest_;
  std::vector<std::unique_ptr<StreamEcho>> echoes_;  // loop thread only
};

TEST_F(HybridTest, ConnectToAGuestEcho) {
  std::error_code ec;
  std::string why;
  auto addr = Address::parse("hvsock://" + daemon_.uds_path() + ":5000", ec, &why);
  ASSERT_TRUE(addr.has_value()) << why;
  Stream s = connect(*addr, 5s, ec, &why);
  ASSERT_FALSE(ec) << why << "\n" << daemon_.Log();
  ASSERT_TRUE(s.is_open());
  EXPECT_FALSE(s.nonblocking());
  EXPECT_EQ(s.peer_address(), *addr);
  std::string data(300000, 'x');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>('a' + i % 23);
  std::thread writer([&] {
    std::error_code wec;
    EXPECT_EQ(s.write_all(data, wec), data.size());
    EXPECT_FALSE(wec) << wec.message();
    s.shutdown(Shutdown::write, wec);
    EXPECT_FALSE(wec) << wec.message();
  });
  std::string got = ReadToEnd(s);
  writer.join();
  EXPECT_EQ(got.size(), data.size());
  EXPECT_TRUE(got == data);
}

TEST_F(HybridTest, RefusedPortIsConnectionRefused) {
  std::error_code ec;
  std::string why;
  Stream s = connect(Hybrid(1234), 5s, ec, &why);
  EXPECT_FALSE(s.is_open());
  EXPECT_EQ(ec, errc::handshake_refused) << ec.message() << ": " << why;
  EXPECT_EQ(ec, std::errc::connection_refused);
  EXPECT_NE(ec.message().find("refused"), std::string::npos);
  // The reason carries vsockd's ERR text and names the address.
  EXPECT_NE(why.find("refused by vsockd"), std::string::npos) << why;
  EXPECT_NE(why.find("1234"), std::string::npos) << why;
  EXPECT_NE(why.find(Hybrid(1234).to_string()), std::string::npos) << why;
}

TEST_F(HybridTest, MissingHybridSocketIsASystemError) {
  std::error_code ec;
  std::string why;
  Stream s = connect(Address::hybrid(dir_.File("nope"), 5000), 5s, ec, &why);
  EXPECT_FALSE(s.is_open());
  EXPECT_EQ(ec, std::errc::no_such_file_or_directory) << ec.message();
  EXPECT_EQ(&ec.category(), &std::system_category());
  EXPECT_NE(why.find("nope"), std::string::npos) << why;
}

// The Connector driven by poll(), as an event loop would.
TEST_F(HybridTest, NonBlockingConnectorWithPoll) {
  Connector c;
  std::error_code ec;
  c.start(Hybrid(kEchoPort), ec);
  ASSERT_FALSE(ec) << c.reason();
  const int fd = c.native_handle();
  ASSERT_GE(fd, 0);
  while (!ec && !c.done()) {
    EXPECT_EQ(c.native_handle(), fd);  // one fd from start to end
    short events = c.events();
    ASSERT_TRUE(events == POLLIN || events == POLLOUT) << events;
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, 10000);
    ASSERT_EQ(r, 1) << "no progress: " << c.reason();
    c.step(ec);
  }
  ASSERT_FALSE(ec) << c.reason();
  Stream s = c.take_stream();
  EXPECT_EQ(s.native_handle(), fd);
  EXPECT_TRUE(s.nonblocking());
  EXPECT_EQ(c.native_handle(), -1);
  // Non-blocking stream: nothing to read yet.
  char buf[16];
  s.read_some(buf, sizeof buf, ec);
  EXPECT_EQ(ec, std::errc::operation_would_block);
  s.set_nonblocking(false, ec);
  ASSERT_FALSE(ec);
  s.write_all("ping", ec);
  ASSERT_FALSE(ec);
  EXPECT_EQ(s.read(buf, 4, ec), 4u);
  EXPECT_EQ(std::string(buf, 4), "ping");
}

TEST_F(HybridTest, NonBlockingConnectorReportsARefusal) {
  Connector c;
  std::error_code ec;
  c.start(Hybrid(4321), ec);
  while (!ec && !c.done()) {
    pollfd p{c.native_handle(), c.events(), 0};
    ASSERT_EQ(::poll(&p, 1, 10000), 1);
    c.step(ec);
  }
  EXPECT_EQ(ec, errc::handshake_refused);
  EXPECT_NE(c.reason().find("4321"), std::string::npos) << c.reason();
  EXPECT_EQ(c.native_handle(), -1);
  EXPECT_FALSE(c.take_stream().is_open());
}

// --- fake hybrid servers: replies vsockd never sends ------------------------------------

// Accepts one connection on `path`, reads the CONNECT line, then runs `reply`.
class FakeHybrid {
 public:
  FakeHybrid(const std::string& path, std::function<void(Stream&)> reply) {
    std::error_code ec;
    listener_ = listen(Address::unix_socket(path), ec);
    EXPECT_FALSE(ec) << ec.message();
    thread_ = std::thread([this, reply = std::move(reply)] {
      std::error_code aec;
      Stream s = listener_.accept(20s, aec);
      if (aec) return;
      std::string line;
      char c;
      while (s.read_some(&c, 1, aec) == 1 && c != '\n') line.push_back(c);
      {
        std::lock_guard<std::mutex> lock(mu_);
        command_ = line;
        has_command_ = true;
      }
      reply(s);
    });
  }
  ~FakeHybrid() { thread_.join(); }
  std::string command() {
    thread_.join();
    thread_ = std::thread([] {});
    return command_;
  }
  bool has_command() {
    std::lock_guard<std::mutex> lock(mu_);
    return has_command_;
  }

 private:
  Listener listener_;
  std::mutex mu_;
  std::string command_;
  bool has_command_ = false;
  std::thread thread_;
};

TEST(HybridFakeTest, PayloadBehindTheOkLineIsKept) {
  TempDir dir;
  FakeHybrid fake(dir.File("h"), [](Stream& s) {
    std::error_code ec;
    s.write_all("OK 1073741824\nfirst bytes", ec);  // one segment: reply + payload
    s.shutdown(Shutdown::write, ec);
    char c;
    s.read_some(&c, 1, ec);  // wait for the client to finish
  });
  std::error_code ec;
  std::string why;
  Stream s = connect(Address::hybrid(dir.File("h"), 77), 5s, ec, &why);
  ASSERT_FALSE(ec) << why;
  EXPECT_EQ(ReadToEnd(s), "first bytes");
  s.close();
  EXPECT_EQ(fake.command(), "CONNECT 77");
}

TEST(HybridFakeTest, ErrLineIsRefusedWithItsReason) {
  TempDir dir;
  FakeHybrid fake(dir.File("h"), [](Stream& s) {
    std::error_code ec;
    s.write_all("ERR port 5 is closed for you\n", ec);
  });
  std::error_code ec;
  std::string why;
  Stream s = connect(Address::hybrid(dir.File("h"), 5), 5s, ec, &why);
  EXPECT_EQ(ec, errc::handshake_refused);
  EXPECT_EQ(ec, std::errc::connection_refused);
  EXPECT_NE(why.find("port 5 is closed for you"), std::string::npos) << why;
}

TEST(HybridFakeTest, CloseWithoutReplyIsRefused) {
  TempDir dir;
  FakeHybrid fake(dir.File("h"), [](Stream& s) { s.close(); });  // Firecracker's way
  std::error_code ec;
  std::string why;
  Stream s = connect(Address::hybrid(dir.File("h"), 6), 5s, ec, &why);
  EXPECT_EQ(ec, errc::handshake_refused);
  EXPECT_NE(why.find("without a reply"), std::string::npos) << why;
}

TEST(HybridFakeTest, GarbageReplyIsBadHandshakeReply) {
  TempDir dir;
  FakeHybrid fake(dir.File("h"), [](Stream& s) {
    std::error_code ec;
    s.write_all("HELLO\x01\n", ec);
  });
  std::error_code ec;
  std::string why;
  Stream s = connect(Address::hybrid(dir.File("h"), 7), 5s, ec, &why);
  EXPECT_EQ(ec, errc::bad_handshake_reply);
  EXPECT_EQ(ec, std::errc::protocol_error);
  EXPECT_NE(why.find("'HELLO?'"), std::string::npos) << why;
}

TEST(HybridFakeTest, EndlessReplyLineIsBadHandshakeReply) {
  TempDir dir;
  FakeHybrid fake(dir.File("h"), [](Stream& s) {
    std::error_code ec;
    s.write_all(std::string(4096, 'O'), ec);
    char c;
    s.read_some(&c, 1, ec);
  });
  std::error_code ec;
  std::string why;
  Stream s = connect(Address::hybrid(dir.File("h"), 7), 5s, ec, &why);
  EXPECT_EQ(ec, errc::bad_handshake_reply);
  EXPECT_NE(why.find("longer than"), std::string::npos) << why;
}

// The handshake cannot finish inside start(): the reply comes only once we allow it, so the
// Connector must wait for POLLIN and finish in step().
TEST(HybridFakeTest, ConnectorWaitsForTheReplyInItsPollLoop) {
  TempDir dir;
  std::atomic<bool> release{false};
  FakeHybrid fake(dir.File("h"), [&](Stream& s) {
    WaitFor([&] { return release.load(); }, 30s);
    std::error_code ec;
    s.write_all("OK 5\n", ec);
  });
  Connector c;
  std::error_code ec;
  c.start(Address::hybrid(dir.File("h"), 9), ec);
  ASSERT_FALSE(ec) << c.reason();
  EXPECT_FALSE(c.done());
  EXPECT_EQ(c.timeout_error(), errc::handshake_timeout);
  ASSERT_TRUE(WaitFor([&] { return fake.has_command(); }));
  EXPECT_EQ(c.events(), POLLIN);  // the command went out; waiting for the reply
  pollfd p{c.native_handle(), c.events(), 0};
  EXPECT_EQ(::poll(&p, 1, 0), 0);
  c.step(ec);  // spurious: harmless
  EXPECT_FALSE(ec);
  EXPECT_FALSE(c.done());
  release = true;
  ASSERT_EQ(::poll(&p, 1, 10000), 1);
  c.step(ec);
  ASSERT_FALSE(ec) << c.reason();
  ASSERT_TRUE(c.done());
  EXPECT_TRUE(c.take_stream().is_open());
}

TEST(HybridFakeTest, SilentServerIsHandshakeTimeout) {
  TempDir dir;
  std::atomic<bool> release{false};
  FakeHybrid fake(dir.File("h"), [&](Stream&) {
    WaitFor([&] { return release.load(); }, 30s);  // accepts and never answers
  });
  std::error_code ec;
  std::string why;
  Stream s = connect(Address::hybrid(dir.File("h"), 8), 200ms, ec, &why);
  release = true;
  EXPECT_FALSE(s.is_open());
  EXPECT_EQ(ec, errc::handshake_timeout) << ec.message();
  EXPECT_EQ(ec, std::errc::timed_out);
  EXPECT_NE(why.find("no hybrid handshake reply within 200 ms"), std::string::npos) << why;
  EXPECT_EQ(fake.command(), "CONNECT 8");
}

// A guest -> host connection (the vguest CLI) reaches Listener(hvsock://UDS:9999), which
// listens on UDS_9999.
TEST(HybridListenerTest, AcceptsAGuestConnection) {
  TempDir dir_;
  Daemon daemon_{dir_, 3};  // no in-process guest: vsockd serves one frontend at a time
  ASSERT_TRUE(daemon_.Start().ok()) << daemon_.Log();
  auto Hybrid = [&](uint32_t port) { return Address::hybrid(daemon_.uds_path(), port); };
  std::error_code ec;
  Listener l = listen(Hybrid(9999), ec);
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_EQ(l.local_address(), Hybrid(9999));
  struct stat st;
  ASSERT_EQ(::stat((daemon_.uds_path() + "_9999").c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));

  std::string out = dir_.File("guest-out.txt");
  Subprocess guest;
  ASSERT_TRUE(guest
                  .Start({"/bin/sh", "-c",
                          "echo from-guest | " + BuiltBinary("src/vguest/vguest") + " --socket " +
                              daemon_.socket_path() + " connect 9999 > " + out},
                         dir_.File("vguest.log"))
                  .ok());
  Stream s = l.accept(20s, ec);
  ASSERT_FALSE(ec) << ec.message() << "\n" << guest.Log();
  EXPECT_EQ(s.local_address(), Hybrid(9999));
  // vsockd names the calling guest: CID 3 and the guest's ephemeral port (>= 1024).
  ASSERT_TRUE(s.peer_address().is_vsock()) << s.peer_address().to_string();
  EXPECT_EQ(s.peer_address().cid(), 3u) << s.peer_address().to_string();
  EXPECT_GE(s.peer_address().port(), 1024u) << s.peer_address().to_string();
  EXPECT_NE(s.peer_address().port(), port_any);
  EXPECT_EQ(ReadToEnd(s), "from-guest\n");
  s.write_all("from-host\n", ec);
  ASSERT_FALSE(ec);
  s.shutdown(Shutdown::write, ec);
  ASSERT_FALSE(ec);
  ASSERT_TRUE(WaitFor([&] { return !guest.Running(); }, 20s)) << guest.Log();
  std::ifstream f(out);
  std::stringstream ss;
  ss << f.rdbuf();
  EXPECT_EQ(ss.str(), "from-host\n") << guest.Log();
  l.close();
  EXPECT_NE(::stat((daemon_.uds_path() + "_9999").c_str(), &st), 0);  // removed on close
}

// --- Stream and Listener basics over plain Unix sockets ---------------------------------

TEST(UnixStreamTest, ListenerTimeoutsNonBlockingAndStaleFiles) {
  TempDir dir;
  Address addr = Address::unix_socket(dir.File("u"));
  std::error_code ec;
  Listener l = listen(addr, ec);
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_EQ(l.local_address(), addr);
  Stream none = l.accept(-5ms, ec);  // negative: just a look
  EXPECT_EQ(ec, std::errc::timed_out);
  none = l.accept(50ms, ec);
  EXPECT_EQ(ec, std::errc::timed_out);
  EXPECT_FALSE(none.is_open());
  l.set_nonblocking(true, ec);
  ASSERT_FALSE(ec);
  l.accept(ec);
  EXPECT_EQ(ec, std::errc::operation_would_block);
  Stream c = connect(addr, std::chrono::milliseconds::max(), ec);  // "no limit"
  ASSERT_FALSE(ec);
  pollfd p{l.native_handle(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1);
  Stream s = l.accept(ec);
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_FALSE(s.nonblocking());
  EXPECT_EQ(c.peer_address(), addr);

  // Read timeout: nothing comes.
  s.set_read_timeout(50ms, ec);
  ASSERT_FALSE(ec);
  char buf[8];
  EXPECT_EQ(s.read_some(buf, sizeof buf, ec), 0u);
  EXPECT_EQ(ec, std::errc::timed_out);
  // Half-close: the peer reads what was sent, then the end of the stream.
  c.write_all("abc", ec);
  c.shutdown(Shutdown::write, ec);
  ASSERT_FALSE(ec);
  EXPECT_EQ(s.read(buf, sizeof buf, ec), 3u);
  EXPECT_FALSE(ec);
  // Writing to a closed peer fails with EPIPE instead of killing us with SIGPIPE.
  s.close();
  std::string big(1 << 20, 'z');
  c.write_all(big, ec);
  EXPECT_TRUE(ec == std::errc::broken_pipe || ec == std::errc::connection_reset) << ec.message();

  // A live listener keeps its path (checked last: the liveness probe is a connection).
  Listener second = listen(addr, ec);
  EXPECT_EQ(ec, std::errc::address_in_use);
  EXPECT_FALSE(second.is_open());
}

TEST(UnixStreamTest, StaleSocketFileIsReplaced) {
  TempDir dir;
  Address addr = Address::unix_socket(dir.File("stale"));
  sockaddr_storage ss;
  std::error_code ec;
  socklen_t len = addr.to_sockaddr(ss, ec);
  ASSERT_FALSE(ec);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&ss), len), 0);
  ::close(fd);  // leaves the socket file behind, with nobody listening
  Listener l = listen(addr, ec);
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_TRUE(l.is_open());
}

TEST(UnixStreamTest, ConnectToAnyIsAnAddressError) {
  std::error_code ec;
  std::string why;
  Stream s = connect(Address::vsock(3, port_any), 1s, ec, &why);  // fails before socket()
  EXPECT_EQ(ec, errc::invalid_address);
  EXPECT_NE(why.find("'any'"), std::string::npos) << why;
  s = connect(Address::vsock(cid_any, 5), 1s, ec, &why);
  EXPECT_EQ(ec, errc::invalid_address);
  Listener l = listen(Address::hybrid("/nonexistent-dir/x", port_any), ec);
  EXPECT_EQ(ec, errc::invalid_address);
}

}  // namespace
}  // namespace vsock
