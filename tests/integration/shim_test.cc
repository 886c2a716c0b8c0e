// Unmodified AF_VSOCK host programs through the LD_PRELOAD shim (libvsock_preload.so) and a
// vsockd started with --run-dir, with vguest as the guest: the seed programs
// (tests/seed/vsock_server.py, vsock_client.py) in both directions, a C probe for the
// shim's corner cases (tests/guard/vsock_probe.cc), and the guard itself.
//
// HARD RULE: no real AF_VSOCK socket may be created on this machine. Every host program here
// that could create one runs under no_vsock_guard (seccomp: socket(AF_VSOCK) -> EACCES), and
// python3 is only ever started under it.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "tests/integration/harness.h"

namespace vsockd::testing {
namespace {

using namespace std::chrono_literals;

std::string Guard() { return GuardBinary(); }
std::string Probe() { return BuiltBinary("tests/guard/vsock_probe"); }
std::string Shim() { return ShimLibrary(); }
std::string Vguest() { return BuiltBinary("src/vguest/vguest"); }
std::string Seed(const std::string& name) { return SeedProgram(name); }

class GuardTest : public ::testing::Test {};

TEST_F(GuardTest, SocketAfVsockIsDeniedWithoutTheShim) {
  // The filter answers EACCES before the kernel creates anything.
  auto r = RunCommand(
      Guard() + " python3 -c 'import socket; socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)'");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("PermissionError"), std::string::npos) << r.output;
  r = RunCommand(Guard() + " python3 -c 'import socket; socket.socketpair(socket.AF_VSOCK)'");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("PermissionError"), std::string::npos) << r.output;
}

TEST_F(GuardTest, OtherSocketsStillWork) {
  auto r = RunCommand(Guard() +
                      " python3 -c 'import socket; a, b = socket.socketpair(); a.send(b\"x\"); "
                      "print(b.recv(1), int(socket.socket(socket.AF_INET).family))'");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("b'x' 2"), std::string::npos) << r.output;
}

TEST_F(GuardTest, MissingCommandIsReported) {
  auto r = RunCommand(Guard() + " no-such-command-xyz");
  EXPECT_EQ(r.exit_code, 127) << r.output;
  r = RunCommand(Guard());
  EXPECT_EQ(r.exit_code, 2) << r.output;
}

class ShimTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(PathExists(Shim())) << Shim();
    ASSERT_TRUE(PathExists(Seed("vsock_server.py"))) << Seed("vsock_server.py");
    ASSERT_TRUE(daemon_.Start().ok()) << daemon_.Log();
    ASSERT_TRUE(WaitFor([&] { return PathExists(run_dir_ + "/cid_3"); })) << daemon_.Log();
  }

  TempDir dir_;
  std::string run_dir_ = dir_.File("run");
  Daemon daemon_{dir_, 3, {"--run-dir", run_dir_}};
};

TEST_F(ShimTest, SeedServerOnTheHostHearsTheGuest) {
  Subprocess server;
  std::vector<std::string> argv = Shimmed(run_dir_);
  argv.push_back("python3");
  argv.push_back(Seed("vsock_server.py"));
  ASSERT_TRUE(server.Start(argv, dir_.File("server.log")).ok());
  ASSERT_TRUE(WaitFor([&] { return UnixListening(run_dir_ + "/host_9999"); }, 20s)) << server.Log();
  // Listening now; a failed guest connect is still retried rather than trusted once.
  RunResult guest;
  ASSERT_TRUE(WaitFor(
      [&] {
        guest = RunCommand("printf 'Hello, world!' | " + Vguest() + " --socket " +
                           daemon_.socket_path() + " connect 9999");
        return guest.exit_code == 0;
      },
      20s))
      << guest.output << "\n"
      << server.Log();
  ASSERT_TRUE(WaitFor([&] { return !server.Running(); }, 20s)) << server.Log();
  std::string log = server.Log();
  EXPECT_NE(log.find("Connection opened by cid=3 port="), std::string::npos) << log;
  EXPECT_NE(log.find("Received bytes: b'Hello, world!'"), std::string::npos) << log;
  EXPECT_EQ(log.find("Traceback"), std::string::npos) << log;
  EXPECT_FALSE(PathExists(run_dir_ + "/host_9999")) << "the listener file goes with the server";
}

TEST_F(ShimTest, SeedClientOnTheHostReachesAGuestServer) {
  // The seed client with the guest's CID instead of VMADDR_CID_HOST (the only change).
  std::string client = ReadFile(Seed("vsock_client.py"));
  const std::string from = "CID = socket.VMADDR_CID_HOST";
  size_t at = client.find(from);
  ASSERT_NE(at, std::string::npos) << client;
  client.replace(at, from.size(), "CID = 3");
  std::string client_path = dir_.File("vsock_client_to_guest.py");
  std::ofstream(client_path) << client;

  std::string out = dir_.File("guest-out.txt");
  Subprocess guest;
  ASSERT_TRUE(
      guest
          .Start({"/bin/sh", "-c",
                  Vguest() + " --socket " + daemon_.socket_path() + " listen 9999 > " + out},
                 dir_.File("vguest.log"))
          .ok());
  std::vector<std::string> argv = Shimmed(run_dir_);
  argv.push_back("python3");
  argv.push_back(client_path);
  RunResult r;
  // Until the guest listens, the client's connect fails (ECONNRESET, as with AF_VSOCK).
  ASSERT_TRUE(WaitFor(
      [&] {
        r = RunCommand(ShellLine(argv));
        return r.exit_code == 0;
      },
      30s))
      << r.output << "\n"
      << guest.Log();
  ASSERT_TRUE(WaitFor([&] { return !guest.Running(); }, 20s)) << guest.Log();
  EXPECT_EQ(ReadFile(out), "Hello, world!");
}

TEST_F(ShimTest, ProbeAsAHostServer) {
  Subprocess probe;
  std::vector<std::string> argv = Shimmed(run_dir_);
  argv.push_back(Probe());
  argv.push_back("server");
  argv.push_back("7000");
  ASSERT_TRUE(probe.Start(argv, dir_.File("probe.log")).ok());
  ASSERT_TRUE(WaitFor([&] { return probe.Log().find("READY") != std::string::npos; }, 20s))
      << probe.Log();
  auto guest = RunCommand("printf hello-from-guest | " + Vguest() + " --socket " +
                          daemon_.socket_path() + " connect 7000");
  EXPECT_EQ(guest.exit_code, 0) << guest.output;
  EXPECT_NE(guest.output.find("bye"), std::string::npos) << guest.output;
  ASSERT_TRUE(WaitFor([&] { return !probe.Running(); }, 20s)) << probe.Log();
  std::string log = probe.Log();
  EXPECT_EQ(log.find("FAIL"), std::string::npos) << log;
  EXPECT_NE(log.find("PEER 3 "), std::string::npos) << log;
  EXPECT_NE(log.find("GOT hello-from-guest"), std::string::npos) << log;
  EXPECT_NE(log.find("ok listener file removed on close"), std::string::npos) << log;
}

TEST_F(ShimTest, ProbeAsAHostClient) {
  std::string out = dir_.File("guest-out.txt");
  Subprocess guest;
  ASSERT_TRUE(guest
                  .Start({"/bin/sh", "-c",
                          "echo from-guest | " + Vguest() + " --socket " + daemon_.socket_path() +
                              " listen 7100 > " + out},
                         dir_.File("vguest.log"))
                  .ok());
  std::vector<std::string> argv = Shimmed(run_dir_);
  argv.push_back(Probe());
  argv.push_back("client");
  argv.push_back("3");
  argv.push_back("7100");
  argv.push_back("7101");
  auto r = RunCommand(ShellLine(argv));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.find("FAIL"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("GOT from-guest"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("ok connect to a CID without VM ENODEV"), std::string::npos) << r.output;
  ASSERT_TRUE(WaitFor([&] { return !guest.Running(); }, 20s)) << guest.Log();
  EXPECT_EQ(ReadFile(out), "hello from the probe\n");
}

TEST_F(ShimTest, ProbeAgainstAFakeVsockd) {
  std::vector<std::string> argv = Shimmed(run_dir_);
  argv.push_back(Probe());
  argv.push_back("fake");
  argv.push_back("77");
  auto r = RunCommand(ShellLine(argv));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.find("FAIL"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("ok fake: first recv skips the OK line"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("ok fake: silent vsockd -> ETIMEDOUT"), std::string::npos) << r.output;
}

TEST_F(ShimTest, HostLoopbackBetweenShimmedPrograms) {
  std::vector<std::string> argv = Shimmed(run_dir_);
  argv.push_back("python3");
  argv.push_back("-c");
  argv.push_back(
      "import socket\n"
      "s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)\n"
      "s.bind((socket.VMADDR_CID_ANY, socket.VMADDR_PORT_ANY)); s.listen()\n"
      "port = s.getsockname()[1]\n"
      "c = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)\n"
      "c.connect((socket.VMADDR_CID_HOST, port)); c.sendall(b'loop')\n"
      "a, peer = s.accept()\n"
      "print('peer', peer, 'data', a.recv(4), 'name', c.getpeername() == (2, port))\n"
      "try:\n"
      "    socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).connect((2, 1))\n"
      "except ConnectionResetError:\n"
      "    print('reset')\n");
  auto r = RunCommand(ShellLine(argv));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("peer (2, 4294967295) data b'loop' name True"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("reset"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace vsockd::testing
