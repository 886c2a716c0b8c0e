// Socket activation as systemd does it, with systemd's own systemd-socket-activate: it holds
// the vhost-user sockets, a virtual guest (the vguest CLI, standing in for QEMU) connects
// before vsockd exists, systemd-socket-activate then starts vsockd with LISTEN_FDS, and
// traffic flows. The sockets are matched to VMs by path and by FileDescriptorName
// (--fdname), and their files outlive vsockd (they are systemd's).
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "base/unix_socket.h"
#include "tests/integration/echo_server.h"
#include "tests/integration/harness.h"

namespace vsockd::testing {
namespace {

using namespace std::chrono_literals;

std::string Vsockd() { return BuiltBinary("src/daemon/vsockd"); }
std::string Vguest() { return BuiltBinary("src/vguest/vguest"); }

// systemd's tool (Debian: the systemd package, installed by scripts/install-deps.sh --test).
std::string SocketActivate() {
  for (const char* dir : {"/usr/bin", "/bin", "/usr/local/bin"}) {
    std::string path = std::string(dir) + "/systemd-socket-activate";
    if (::access(path.c_str(), X_OK) == 0) return path;
  }
  return "";
}

// Relays `size` pattern bytes through `vguest --socket SOCKET connect PORT` against an echo
// server; true when they all come back intact.
::testing::AssertionResult EchoThroughGuest(const TempDir& dir, const std::string& socket,
                                            uint32_t port, size_t size, uint8_t seed) {
  auto data = PatternBytes(size, seed);
  const std::string in = dir.File("in.bin"), out = dir.File("out.bin");
  std::ofstream(in, std::ios::binary)
      .write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  auto r = RunCommand(Vguest() + " --socket " + socket + " connect " + std::to_string(port) +
                      " < " + in + " > " + out);
  if (r.exit_code != 0) return ::testing::AssertionFailure() << "vguest: " << r.output;
  std::ifstream f(out, std::ios::binary);
  std::vector<uint8_t> got((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (got.size() != data.size() || Fnv1a(got) != Fnv1a(data)) {
    return ::testing::AssertionFailure() << "echo: " << got.size() << " of " << data.size()
                                         << " bytes, checksum " << (Fnv1a(got) == Fnv1a(data));
  }
  return ::testing::AssertionSuccess();
}

class SocketActivationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tool_ = SocketActivate();
    ASSERT_FALSE(tool_.empty())
        << "systemd-socket-activate not found: scripts/install-deps.sh --test installs systemd";
  }
  TempDir dir_;
  std::string tool_;
};

TEST_F(SocketActivationTest, GuestAttachesBeforeVsockdStartsAndCarriesTraffic) {
  const std::string vhost = dir_.File("vm5.vhost");
  const std::string uds = dir_.File("vm5.vsock");
  Subprocess activator;
  ASSERT_TRUE(activator
                  .Start({tool_, "-l", vhost, "--", Vsockd(), "--socket", vhost, "--guest-cid", "5",
                          "--uds-path", uds},
                         dir_.File("vsockd.log"))
                  .ok());
  // systemd-socket-activate listens; vsockd is started by the first connection only.
  ASSERT_TRUE(WaitFor([&] { return UnixListening(vhost); })) << activator.Log();
  EXPECT_FALSE(PathExists(uds)) << "vsockd runs before anyone connected:\n" << activator.Log();

  EchoServer echo(uds + "_9000");
  ASSERT_TRUE(echo.ok());
  // The guest (QEMU's place) connects to the socket systemd-socket-activate holds.
  EXPECT_TRUE(EchoThroughGuest(dir_, vhost, 9000, 1 << 20, 3)) << activator.Log();
  const std::string log = activator.Log();
  EXPECT_NE(log.find("inherited socket"), std::string::npos) << log;
  // The guest may go and come back: the same inherited socket serves the next frontend.
  auto info = RunCommand(Vguest() + " --socket " + vhost + " info");
  EXPECT_EQ(info.exit_code, 0) << info.output;
  EXPECT_NE(info.output.find('5'), std::string::npos) << info.output;

  EXPECT_EQ(activator.Stop(SIGTERM, 10s), 0) << activator.Log();
  EXPECT_TRUE(PathExists(vhost)) << "the activated socket's file belongs to systemd";
  EXPECT_FALSE(PathExists(uds)) << "vsockd's own hybrid socket is removed";
}

TEST_F(SocketActivationTest, SeveralVmsMatchedByPathAndByName) {
  const std::string vhost6 = dir_.File("vm6.vhost"), vhost7 = dir_.File("vm7.vhost");
  const std::string uds6 = dir_.File("vm6.vsock"), uds7 = dir_.File("vm7.vsock");
  // Two sockets named as socket units' FileDescriptorName= would: VM 6 by its path, VM 7 by
  // its name.
  Subprocess activator;
  ASSERT_TRUE(activator
                  .Start({tool_, "-l", vhost6, "-l", vhost7, "--fdname=vm6:vm7", "--", Vsockd(),
                          "--vm", "guest-cid=6,socket=" + vhost6 + ",uds-path=" + uds6, "--vm",
                          "guest-cid=7,socket=systemd:vm7,uds-path=" + uds7},
                         dir_.File("vsockd.log"))
                  .ok());
  ASSERT_TRUE(WaitFor([&] { return UnixListening(vhost6) && UnixListening(vhost7); }))
      << activator.Log();

  EchoServer echo7(uds7 + "_7000");
  EchoServer echo6(uds6 + "_6000");
  ASSERT_TRUE(echo6.ok() && echo7.ok());
  EXPECT_TRUE(EchoThroughGuest(dir_, vhost7, 7000, 256 << 10, 7)) << activator.Log();
  EXPECT_TRUE(EchoThroughGuest(dir_, vhost6, 6000, 256 << 10, 6)) << activator.Log();
  // Host -> guest as well, on VM 7: the hybrid socket vsockd made.
  Subprocess guest;
  ASSERT_TRUE(guest
                  .Start({"/bin/sh", "-c",
                          "echo from-guest | " + Vguest() + " --socket " + vhost7 +
                              " listen 5000 > " + dir_.File("guest-out.txt")},
                         dir_.File("vguest.log"))
                  .ok());
  Result<Fd> fd = MakeError(EAGAIN, "not tried");
  ASSERT_TRUE(WaitFor([&] {
    fd = HybridConnect(uds7, 5000);
    return fd.ok();
  })) << guest.Log();
  ASSERT_TRUE(WriteAll(fd->get(), "from-host\n", 10).ok());
  ::shutdown(fd->get(), SHUT_WR);
  EXPECT_EQ(ReadToEof(fd->get()), "from-guest\n");
  ASSERT_TRUE(WaitFor([&] { return !guest.Running(); }, 10s)) << guest.Log();
  EXPECT_EQ(ReadFile(dir_.File("guest-out.txt")), "from-host\n");

  EXPECT_EQ(activator.Stop(SIGTERM, 10s), 0) << activator.Log();
  EXPECT_TRUE(PathExists(vhost6));
  EXPECT_TRUE(PathExists(vhost7));
}

TEST_F(SocketActivationTest, ANameNobodyPassedStopsVsockdWithTheReason) {
  const std::string vhost = dir_.File("vm8.vhost");
  Subprocess activator;
  ASSERT_TRUE(activator
                  .Start({tool_, "-l", vhost, "--fdname=other", "--", Vsockd(), "--socket",
                          "systemd:vm8", "--uds-path", dir_.File("vm8.vsock")},
                         dir_.File("vsockd.log"))
                  .ok());
  ASSERT_TRUE(WaitFor([&] { return UnixListening(vhost); })) << activator.Log();
  // A connection makes systemd-socket-activate start vsockd, which refuses to start.
  auto frontend = ConnectUnix(vhost);
  ASSERT_TRUE(frontend.ok());
  const int status = activator.Wait(10s);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status << "\n" << activator.Log();
  const std::string log = activator.Log();
  EXPECT_NE(log.find("systemd:vm8"), std::string::npos) << log;
  EXPECT_NE(log.find("'other'"), std::string::npos) << log;
}

}  // namespace
}  // namespace vsockd::testing
