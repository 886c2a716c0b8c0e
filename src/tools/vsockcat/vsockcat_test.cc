// The vsockcat binary as users run it, against the real vsockd and a virtual guest (the
// vguest CLI, or the vguest library in-process): connect and listen over the hybrid socket,
// --forward between TCP loopback / Unix sockets and vsockd with many concurrent
// checksummed connections and half-close, --exec, --keep-open, usage and connection
// errors. Only hybrid, Unix and TCP (127.0.0.1) sockets: never AF_VSOCK.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "base/unix_socket.h"
#include "tests/integration/echo_server.h"
#include "tests/integration/guest_util.h"
#include "tests/integration/harness.h"
#include "vguest/guest.h"

namespace vsockd::testing {
namespace {

using namespace std::chrono_literals;

// Shell command prefix: vsockcat under no_vsock_guard; VsockcatPath() for argv.
std::string Vsockcat() { return GuardedCommand("src/tools/vsockcat/vsockcat"); }
std::string VsockcatPath() { return BuiltBinary("src/tools/vsockcat/vsockcat"); }
std::string Vguest() { return BuiltBinary("src/vguest/vguest"); }

// A TCP port on 127.0.0.1 that was free a moment ago.
uint16_t FreeTcpPort() {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return 0;
  socklen_t len = sizeof a;
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

Result<Fd> ConnectTcp(uint16_t port) {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    return ErrnoError("connect 127.0.0.1:{}", port);
  }
  return fd;
}

// Sends `data` (then SHUT_WR) from one thread while reading to EOF on this one; returns
// what came back.
std::vector<uint8_t> Exchange(int fd, const std::vector<uint8_t>& data) {
  std::thread writer([&] {
    EXPECT_TRUE(WriteAll(fd, data.data(), data.size()).ok());
    EXPECT_EQ(::shutdown(fd, SHUT_WR), 0);
  });
  std::vector<uint8_t> got;
  uint8_t buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) got.insert(got.end(), buf, buf + n);
  writer.join();
  return got;
}

// A blocking TCP echo server on 127.0.0.1 (a thread per connection); on EOF it finishes
// echoing and shuts down its write side.
class TcpEcho {
 public:
  TcpEcho() {
    listener_.Reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(listener_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    socklen_t len = sizeof a;
    ::getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    ::listen(listener_.get(), 128);
    acceptor_ = std::thread([this] {
      while (true) {
        int c = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0 || stop_) {
          if (c >= 0) ::close(c);
          return;
        }
        ++accepted_;
        std::lock_guard lock(mu_);
        workers_.emplace_back([c] {
          char buf[65536];
          ssize_t n;
          while ((n = ::read(c, buf, sizeof buf)) > 0) {
            if (!WriteAll(c, buf, static_cast<size_t>(n)).ok()) break;
          }
          ::shutdown(c, SHUT_WR);
          ::close(c);
        });
      }
    });
  }
  ~TcpEcho() {
    stop_ = true;
    ::shutdown(listener_.get(), SHUT_RDWR);
    acceptor_.join();
    std::lock_guard lock(mu_);
    for (auto& t : workers_) t.join();
  }
  uint16_t port() const { return port_; }
  int accepted() const { return accepted_; }

 private:
  Fd listener_;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  std::thread acceptor_;
  std::mutex mu_;
  std::vector<std::thread> workers_;
};

// ---- usage and connection errors (no daemon needed) ----------------------------------

TEST(VsockcatUsageTest, HelpAndVersion) {
  auto r = RunCommand(Vsockcat() + " --help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (const char* word : {"--listen", "--keep-open", "--exec", "--forward", "--wait",
                           "--max-connections", "hvsock://", "vsock://", "tcp-listen:", "unix:"}) {
    EXPECT_NE(r.output.find(word), std::string::npos) << word << "\n" << r.output;
  }
  r = RunCommand(Vsockcat() + " --version");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("vsockcat "), std::string::npos) << r.output;
}

TEST(VsockcatUsageTest, UsageErrorsExitWith2AndSayWhy) {
  struct Case {
    std::string args, expect;
  };
  const std::vector<Case> cases = {
      {"", "address"},
      {"--no-such-flag x", "no-such-flag"},
      {"vsock://3:abc", "abc"},
      {"tcp:nohostport", "tcp:nohostport"},
      {"tcp:127.0.0.1:70000", "70000"},
      {"--forward tcp-listen:1234", "two addresses"},
      {"a b c", "too many"},
      {"-k tcp:127.0.0.1:1", "-l"},
      {"--exec cat --forward tcp-listen:1 tcp:127.0.0.1:2", "--exec"},
      {"--forward tcp-listen:1 tcp-listen:2", "connect"},
      {"-l tcp-connect:127.0.0.1:80", "listening"},
      {"-w -3 tcp:127.0.0.1:1", "-w"},
  };
  for (const Case& c : cases) {
    auto r = RunCommand(Vsockcat() + " " + c.args + " </dev/null");
    EXPECT_EQ(r.exit_code, 2) << c.args << ": " << r.output;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << c.args << ": " << r.output;
  }
}

TEST(VsockcatUsageTest, ConnectionErrorsExitWith1AndSayWhy) {
  TempDir dir;
  uint16_t port = FreeTcpPort();
  auto r = RunCommand(Vsockcat() + " tcp:127.0.0.1:" + std::to_string(port) + " </dev/null");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("refused"), std::string::npos) << r.output;
  r = RunCommand(Vsockcat() + " hvsock://" + dir.File("nope") + ":5000 </dev/null");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("no vsockd hybrid socket at " + dir.File("nope")), std::string::npos)
      << r.output;
  // A hybrid socket that never answers the CONNECT: -w bounds the wait.
  auto silent = ListenUnix(dir.File("silent"));
  ASSERT_TRUE(silent.ok());
  r = RunCommand(Vsockcat() + " -w 0.5 hvsock://" + dir.File("silent") + ":5000 </dev/null");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("did not answer the CONNECT in time"), std::string::npos) << r.output;
  // Listening where a listener already is.
  TcpEcho busy;
  r = RunCommand(Vsockcat() + " -l tcp:127.0.0.1:" + std::to_string(busy.port()) + " </dev/null");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("in use"), std::string::npos) << r.output;
}

// ---- with vsockd and the vguest CLI -----------------------------------------------------

class VsockcatCliGuestTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(daemon_.Start().ok()) << daemon_.Log(); }
  std::string Hybrid(uint32_t port) const {
    return "hvsock://" + daemon_.uds_path() + ":" + std::to_string(port);
  }
  TempDir dir_;
  Daemon daemon_{dir_, 3};
};

TEST_F(VsockcatCliGuestTest, ConnectToAGuestListenerBothWays) {
  std::string guest_out = dir_.File("guest-out.txt");
  Subprocess guest;
  ASSERT_TRUE(guest
                  .Start({"/bin/sh", "-c",
                          "echo from-guest | " + Vguest() + " --socket " + daemon_.socket_path() +
                              " listen 5000 > " + guest_out},
                         dir_.File("vguest.log"))
                  .ok());
  // Until the guest listens, vsockcat reports the refusal with exit status 1.
  RunResult r;
  ASSERT_TRUE(WaitFor([&] {
    r = RunCommand("echo from-host | " + Vsockcat() + " " + Hybrid(5000));
    if (r.exit_code != 0) {
      EXPECT_EQ(r.exit_code, 1) << r.output;
      EXPECT_NE(r.output.find("the guest refused the connection (no listener on port 5000)"),
                std::string::npos)
          << r.output;
    }
    return r.exit_code == 0;
  })) << r.output;
  EXPECT_EQ(r.output, "from-guest\n");
  ASSERT_TRUE(WaitFor([&] { return !guest.Running(); })) << guest.Log();
  EXPECT_EQ(ReadFile(guest_out), "from-host\n");
}

TEST_F(VsockcatCliGuestTest, ListenReceivesWhatAGuestSends) {
  std::string out = dir_.File("out.txt"), rc = dir_.File("rc.txt");
  Subprocess cat;
  ASSERT_TRUE(cat.Start({"/bin/sh", "-c",
                         Vsockcat() + " -v -l " + Hybrid(9999) + " > " + out + "; echo $? > " + rc},
                        dir_.File("vsockcat.log"))
                  .ok());
  ASSERT_TRUE(WaitFor([&] { return cat.Log().find("listening on") != std::string::npos; }))
      << cat.Log();
  EXPECT_TRUE(PathExists(daemon_.uds_path() + "_9999"));
  auto data = PatternBytes(2 << 20, 5);
  std::string in = dir_.File("in.bin");
  std::ofstream(in, std::ios::binary)
      .write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  auto r = RunCommand(Vguest() + " --socket " + daemon_.socket_path() + " connect 9999 < " + in);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(WaitFor([&] { return PathExists(rc) && !ReadFile(rc).empty(); })) << cat.Log();
  EXPECT_EQ(ReadFile(rc), "0\n") << cat.Log();
  std::string got = ReadFile(out);
  EXPECT_EQ(got.size(), data.size());
  EXPECT_EQ(Fnv1a({reinterpret_cast<const uint8_t*>(got.data()), got.size()}), Fnv1a(data));
  // One connection without -k: the listening socket file is gone.
  EXPECT_FALSE(PathExists(daemon_.uds_path() + "_9999"));
}

// ---- with vsockd and an in-process guest ------------------------------------------------

// vsockd plus one in-process guest (vsockd takes one frontend at a time) with an echo on
// guest port 5000; the guest also makes guest -> host connections for the tests.
class VsockcatGuestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(daemon_.Start().ok()) << daemon_.Log();
    vguest::GuestOptions options;
    options.socket_path = daemon_.socket_path();
    auto guest = loop_.Call([&] { return vguest::Guest::Attach(loop_.loop(), options); });
    ASSERT_TRUE(guest.ok()) << guest.error().ToString() << "\n" << daemon_.Log();
    guest_ = std::move(*guest);
    auto st = loop_.Call([&] {
      return guest_->Listen(kEchoPort, [this](vguest::Stream* s) {
        echoes_.push_back(std::make_unique<StreamEcho>(s));
      });
    });
    ASSERT_TRUE(st.ok()) << st.error().ToString();
  }
  void TearDown() override {
    for (auto& p : procs_) p->Stop();
    loop_.Call([&] {
      drivers_.clear();
      echoes_.clear();
      guest_.reset();
      return 0;
    });
  }

  std::string Hybrid(uint32_t port) const {
    return "hvsock://" + daemon_.uds_path() + ":" + std::to_string(port);
  }

  // Starts vsockcat -v with `args` and waits until it listens.
  Subprocess* StartVsockcat(const std::vector<std::string>& args) {
    std::vector<std::string> argv = Guarded({VsockcatPath(), "-v"});
    argv.insert(argv.end(), args.begin(), args.end());
    auto p = std::make_unique<Subprocess>();
    std::string log = dir_.File("vsockcat" + std::to_string(procs_.size()) + ".log");
    EXPECT_TRUE(p->Start(argv, log).ok());
    Subprocess* raw = p.get();
    procs_.push_back(std::move(p));
    EXPECT_TRUE(WaitFor([&] { return raw->Log().find("listening on") != std::string::npos; }))
        << raw->Log();
    return raw;
  }

  // Guest -> host port `port`: `count` connections, each sending its own pattern and
  // half-closing; returns their observers (the data coming back is hashed).
  std::vector<std::shared_ptr<StreamObserver>> GuestConnects(uint32_t port, int count,
                                                             size_t bytes) {
    std::vector<std::shared_ptr<StreamObserver>> obs(static_cast<size_t>(count));
    for (auto& o : obs) o = std::make_shared<StreamObserver>();
    loop_.Call([&] {
      for (int i = 0; i < count; ++i) {
        auto data = PatternBytes(bytes, 100 + static_cast<uint64_t>(i));
        auto o = obs[static_cast<size_t>(i)];
        guest_->Connect(port, [this, o, data](vguest::Stream* s, const Status& st) {
          if (!st.ok()) {
            o->closed_code = st.error().code;
            o->closed = true;
            return;
          }
          drivers_.push_back(std::make_unique<StreamDriver>(s, o, data, true));
          drivers_.back()->Start();
        });
      }
      return 0;
    });
    return obs;
  }

  static constexpr uint32_t kEchoPort = 5000;
  TempDir dir_;
  Daemon daemon_{dir_, 3};
  LoopThread loop_;
  std::unique_ptr<vguest::Guest> guest_;
  std::vector<std::unique_ptr<StreamEcho>> echoes_;     // loop thread only
  std::vector<std::unique_ptr<StreamDriver>> drivers_;  // loop thread only
  std::vector<std::unique_ptr<Subprocess>> procs_;
};

// Host TCP port -> guest port 5000 (echo): 24 concurrent clients, a few MiB each, every echo
// checked; each client half-closes and then sees the echo end with EOF.
TEST_F(VsockcatGuestTest, ForwardTcpToGuestManyConcurrentClients) {
  const uint16_t port = FreeTcpPort();
  Subprocess* fwd = StartVsockcat(
      {"--forward", "tcp-listen:127.0.0.1:" + std::to_string(port), Hybrid(kEchoPort)});
  constexpr int kClients = 24;
  constexpr size_t kBytes = 3 << 20;
  std::vector<std::thread> clients;
  std::atomic<int> good{0};
  clients.reserve(kClients);
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      auto fd = ConnectTcp(port);
      ASSERT_TRUE(fd.ok()) << fd.error().ToString();
      auto data = PatternBytes(kBytes, static_cast<uint64_t>(i) + 1);
      auto got = Exchange(fd->get(), data);  // returns at EOF: half-close came back
      EXPECT_EQ(got.size(), data.size()) << "client " << i;
      EXPECT_EQ(Fnv1a(got), Fnv1a(data)) << "client " << i;
      if (got == data) ++good;
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(good.load(), kClients) << fwd->Log() << daemon_.Log();
  EXPECT_TRUE(fwd->Running()) << fwd->Log();
  // The forwarder keeps serving afterwards.
  auto fd = ConnectTcp(port);
  ASSERT_TRUE(fd.ok());
  auto small = PatternBytes(1000, 77);
  EXPECT_EQ(Exchange(fd->get(), small), small);
  EXPECT_EQ(fwd->Stop(), 0) << fwd->Log();
}

// Guest -> host port 7000 -> a TCP echo on the host.
TEST_F(VsockcatGuestTest, ForwardGuestConnectionsToTcp) {
  TcpEcho echo;
  Subprocess* fwd =
      StartVsockcat({"--forward", Hybrid(7000), "tcp:127.0.0.1:" + std::to_string(echo.port())});
  EXPECT_TRUE(PathExists(daemon_.uds_path() + "_7000"));
  constexpr int kConns = 8;
  constexpr size_t kBytes = 1 << 20;
  auto obs = GuestConnects(7000, kConns, kBytes);
  ASSERT_TRUE(WaitFor(
      [&] {
        for (auto& o : obs) {
          if (!o->eof && !o->closed) return false;
        }
        return true;
      },
      60s));
  for (int i = 0; i < kConns; ++i) {
    auto& o = obs[static_cast<size_t>(i)];
    EXPECT_TRUE(o->eof) << i << " closed with " << o->closed_code;
    EXPECT_EQ(o->received.load(), kBytes) << i;
    EXPECT_EQ(o->hash.load(), Fnv1a(PatternBytes(kBytes, 100 + static_cast<uint64_t>(i)))) << i;
  }
  EXPECT_EQ(echo.accepted(), kConns);
  // -v names the calling guest (vsockd's caller name on the hybrid socket).
  EXPECT_NE(fwd->Log().find("connection from guest vsock://3:"), std::string::npos) << fwd->Log();
}

// unix -> guest echo, and guest -> host port 7001 -> a Unix echo service.
TEST_F(VsockcatGuestTest, ForwardBetweenUnixAndVsock) {
  std::string front = dir_.File("front.sock");
  StartVsockcat({"--forward", "unix-listen:" + front, Hybrid(kEchoPort)});
  for (int i = 0; i < 3; ++i) {
    auto fd = ConnectUnix(front);
    ASSERT_TRUE(fd.ok()) << fd.error().ToString();
    auto data = PatternBytes(512 << 10, 40 + static_cast<uint64_t>(i));
    EXPECT_EQ(Fnv1a(Exchange(fd->get(), data)), Fnv1a(data));
  }

  EchoServer unix_echo(dir_.File("echo.sock"));
  ASSERT_TRUE(unix_echo.ok());
  StartVsockcat({"--forward", Hybrid(7001), "unix:" + dir_.File("echo.sock")});
  auto obs = GuestConnects(7001, 4, 256 << 10);
  ASSERT_TRUE(WaitFor([&] {
    for (auto& o : obs) {
      if (!o->eof && !o->closed) return false;
    }
    return true;
  }));
  for (size_t i = 0; i < obs.size(); ++i) {
    EXPECT_TRUE(obs[i]->eof) << i;
    EXPECT_EQ(obs[i]->hash.load(), Fnv1a(PatternBytes(256 << 10, 100 + i))) << i;
  }
}

// When TO refuses, the accepted connection is closed and the forwarder goes on.
TEST_F(VsockcatGuestTest, ForwardToARefusingGuestPortClosesTheClient) {
  const uint16_t port = FreeTcpPort();
  Subprocess* fwd =
      StartVsockcat({"--forward", "tcp-listen:127.0.0.1:" + std::to_string(port), Hybrid(4321)});
  auto fd = ConnectTcp(port);
  ASSERT_TRUE(fd.ok());
  char c;
  EXPECT_LE(::read(fd->get(), &c, 1), 0);  // closed without data
  ASSERT_TRUE(WaitFor([&] {
    return fwd->Log().find("no listener on port 4321") != std::string::npos;
  })) << fwd->Log();
  EXPECT_TRUE(fwd->Running());
}

// -l -k --exec: every guest connection to host port 7002 gets its own `tr a-z A-Z`.
TEST_F(VsockcatGuestTest, ExecPerConnectionWithKeepOpen) {
  StartVsockcat({"-l", "-k", "--exec", "tr a-z A-Z", Hybrid(7002)});
  std::vector<std::shared_ptr<StreamObserver>> obs(3);
  for (auto& o : obs) o = std::make_shared<StreamObserver>();
  loop_.Call([&] {
    for (size_t i = 0; i < obs.size(); ++i) {
      auto o = obs[i];
      o->keep_data = true;
      std::string text = "hello number " + std::to_string(i) + "\n";
      std::vector<uint8_t> data(text.begin(), text.end());
      guest_->Connect(7002, [this, o, data](vguest::Stream* s, const Status& st) {
        if (!st.ok()) {
          o->closed = true;
          return;
        }
        drivers_.push_back(std::make_unique<StreamDriver>(s, o, data, true));
        drivers_.back()->Start();
      });
    }
    return 0;
  });
  ASSERT_TRUE(WaitFor([&] {
    for (auto& o : obs) {
      if (!o->eof && !o->closed) return false;
    }
    return true;
  }));
  for (size_t i = 0; i < obs.size(); ++i) {
    ASSERT_TRUE(obs[i]->eof) << i;
    std::string got =
        loop_.Call([&] { return std::string(obs[i]->data.begin(), obs[i]->data.end()); });
    EXPECT_EQ(got, "HELLO NUMBER " + std::to_string(i) + "\n");
  }
}

// ---- TCP and Unix only (no guest needed) -------------------------------------------------

TEST(VsockcatLocalTest, ExecServesOneConnectionThenExits) {
  TempDir dir;
  const uint16_t port = FreeTcpPort();
  std::string rc = dir.File("rc");
  Subprocess p;
  ASSERT_TRUE(p.Start({"/bin/sh", "-c",
                       Vsockcat() + " -v -l -e 'tr a-z A-Z' tcp-listen:127.0.0.1:" +
                           std::to_string(port) + "; echo $? > " + rc},
                      dir.File("log"))
                  .ok());
  ASSERT_TRUE(WaitFor([&] { return p.Log().find("listening on") != std::string::npos; }));
  auto fd = ConnectTcp(port);
  ASSERT_TRUE(fd.ok());
  std::string text = "shout this\n";
  auto got = Exchange(fd->get(), std::vector<uint8_t>(text.begin(), text.end()));
  EXPECT_EQ(std::string(got.begin(), got.end()), "SHOUT THIS\n");
  ASSERT_TRUE(WaitFor([&] { return !ReadFile(rc).empty(); })) << p.Log();
  EXPECT_EQ(ReadFile(rc), "0\n") << p.Log();
}

TEST(VsockcatLocalTest, KeepOpenServesSeveralConnectionsOneAtATime) {
  TempDir dir;
  std::string sock = dir.File("k.sock"), out = dir.File("out");
  Subprocess p;
  ASSERT_TRUE(p.Start({"/bin/sh", "-c",
                       "exec " + Vsockcat() + " -v -l -k unix:" + sock + " </dev/null > " + out},
                      dir.File("log"))
                  .ok());
  ASSERT_TRUE(WaitFor([&] { return p.Log().find("listening on") != std::string::npos; }));
  std::string expected;
  for (int i = 0; i < 4; ++i) {
    auto fd = ConnectUnix(sock);
    ASSERT_TRUE(fd.ok()) << fd.error().ToString();
    std::string line = "connection " + std::to_string(i) + "\n";
    expected += line;
    // stdin is at EOF: the server half-closes at once, so the client reads EOF and nothing.
    EXPECT_TRUE(Exchange(fd->get(), std::vector<uint8_t>(line.begin(), line.end())).empty());
    ASSERT_TRUE(WaitFor([&] { return ReadFile(out) == expected; })) << ReadFile(out);
  }
  EXPECT_TRUE(p.Running());
  EXPECT_EQ(p.Stop(), 0);
  EXPECT_FALSE(PathExists(sock));  // the listener removes its socket file
}

TEST(VsockcatLocalTest, ConnectRelaysAFileBothWaysWithHalfClose) {
  TempDir dir;
  EchoServer echo(dir.File("echo.sock"));
  ASSERT_TRUE(echo.ok());
  auto data = PatternBytes(4 << 20, 9);
  std::string in = dir.File("in.bin"), out = dir.File("out.bin");
  std::ofstream(in, std::ios::binary)
      .write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  // stdin is a regular file (epoll cannot watch it), stdout a pipe through cat.
  auto r =
      RunCommand(Vsockcat() + " unix:" + dir.File("echo.sock") + " < " + in + " | cat > " + out);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::string got = ReadFile(out);
  EXPECT_EQ(got.size(), data.size());
  EXPECT_EQ(Fnv1a({reinterpret_cast<const uint8_t*>(got.data()), got.size()}), Fnv1a(data));
  // socat's spelling with stdio as an address.
  r = RunCommand("echo socat-style | " + Vsockcat() + " - unix-connect:" + dir.File("echo.sock"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "socat-style\n");
}

}  // namespace
}  // namespace vsockd::testing
