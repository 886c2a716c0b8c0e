// vsockcat --seqpacket and unix-seqpacket: over the hybrid SEQPACKET convention against fake
// peers played by the test (vsockd's "<uds>.seqpacket" side answering "OK n\n", and a guest
// stand-in connecting to "<uds>_PORT.seqpacket"). Only Unix sockets: never AF_VSOCK.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "tests/integration/harness.h"

namespace vsockd::testing {
namespace {

using namespace std::chrono_literals;

// Shell command prefix: vsockcat under no_vsock_guard; VsockcatPath() for argv.
std::string Vsockcat() { return GuardedCommand("src/tools/vsockcat/vsockcat"); }
std::string VsockcatPath() { return BuiltBinary("src/tools/vsockcat/vsockcat"); }

sockaddr_un UnixAddr(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  return a;
}

std::string Recv(int fd) {
  std::string buf(1 << 17, '\0');
  ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
  buf.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return buf;
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(VsockcatSeqpacketTest, ConnectSendsEachReadAsOneMessage) {
  TempDir dir;
  const std::string uds = dir.File("vm.vsock");
  int l = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un a = UnixAddr(uds + ".seqpacket");
  ASSERT_EQ(::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(l, 4), 0);
  std::string command, message, after;
  std::thread fake([&] {
    int c = ::accept(l, nullptr, nullptr);
    if (c < 0) return;
    command = Recv(c);
    ::send(c, "OK 1025\n", 8, 0);
    message = Recv(c);  // stdin's bytes, one message
    after = Recv(c);    // then the end (stdin's EOF -> shutdown)
    ::send(c, "first", 5, 0);
    ::send(c, "second", 6, 0);
    ::close(c);
  });
  auto r = RunCommand("printf 'hello seqpacket' | " + Vsockcat() + " --seqpacket hvsock://" + uds +
                      ":5000");
  fake.join();
  ::close(l);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(command, "CONNECT 5000\n");
  EXPECT_EQ(message, "hello seqpacket");
  EXPECT_EQ(after, "");  // EOF, not a second message
  EXPECT_NE(r.output.find("firstsecond"), std::string::npos) << r.output;
}

TEST(VsockcatSeqpacketTest, ListenAcceptsAGuestSeqpacketConnect) {
  TempDir dir;
  const std::string uds = dir.File("vm.vsock");
  const std::string out = dir.File("out.txt");
  Subprocess cat;
  ASSERT_TRUE(cat.Start({"/bin/sh", "-c",
                         "printf 'reply' | " + Vsockcat() + " --seqpacket -l hvsock://" + uds +
                             ":7000 > " + out},
                        dir.File("cat.log"))
                  .ok());
  const std::string path = uds + "_7000.seqpacket";
  ASSERT_TRUE(WaitFor([&] { return UnixListening(path); }, 20s)) << cat.Log();
  EXPECT_FALSE(PathExists(uds + "_7000"));  // not the stream name
  int g = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un a = UnixAddr(path);
  ASSERT_EQ(::connect(g, reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << std::strerror(errno);
  ASSERT_EQ(::send(g, "m1", 2, 0), 2);
  ASSERT_EQ(::send(g, "m2", 2, 0), 2);
  EXPECT_EQ(Recv(g), "reply");  // stdin as one message
  ::shutdown(g, SHUT_WR);
  EXPECT_EQ(Recv(g), "");  // then vsockcat's EOF
  ::close(g);
  ASSERT_TRUE(WaitFor([&] { return !cat.Running(); }, 20s)) << cat.Log();
  EXPECT_EQ(Slurp(out), "m1m2");
}

TEST(VsockcatSeqpacketTest, ForwardKeepsBoundariesBetweenUnixSeqpacketAndHybrid) {
  TempDir dir;
  const std::string uds = dir.File("vm.vsock");
  const std::string front = dir.File("front.sock");
  // vsockd's stand-in: OK, then echo every message with a '!' appended.
  int l = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un a = UnixAddr(uds + ".seqpacket");
  ASSERT_EQ(::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(l, 4), 0);
  std::thread fake([&] {
    int c = ::accept(l, nullptr, nullptr);
    if (c < 0) return;
    Recv(c);
    ::send(c, "OK 1\n", 5, 0);
    while (true) {
      std::string m = Recv(c);
      if (m.empty()) break;
      m += "!";
      ::send(c, m.data(), m.size(), 0);
    }
    ::close(c);
  });
  Subprocess fwd;
  ASSERT_TRUE(fwd.Start(Guarded({VsockcatPath(), "--seqpacket", "--forward",
                                 "unix-seqpacket:" + front, "hvsock://" + uds + ":5000"}),
                        dir.File("fwd.log"))
                  .ok());
  ASSERT_TRUE(WaitFor([&] { return UnixListening(front); }, 20s)) << fwd.Log();
  int c = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un fa = UnixAddr(front);
  ASSERT_EQ(::connect(c, reinterpret_cast<sockaddr*>(&fa), sizeof fa), 0);
  timeval tv{20, 0};
  ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  for (const std::string m : {"a", "bb", "ccc"}) {
    ASSERT_EQ(::send(c, m.data(), m.size(), 0), static_cast<ssize_t>(m.size()));
    EXPECT_EQ(Recv(c), m + "!");
  }
  ::close(c);
  fake.join();
  ::close(l);
}

}  // namespace
}  // namespace vsockd::testing
