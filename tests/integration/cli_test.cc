// The programs as a user runs them: vsockd's flags and errors, and the vguest CLI relaying
// stdin/stdout through a running vsockd.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "tests/integration/echo_server.h"
#include "tests/integration/harness.h"

namespace vsockd::testing {
namespace {

using namespace std::chrono_literals;

std::string Vsockd() { return BuiltBinary("src/daemon/vsockd"); }
std::string Vguest() { return BuiltBinary("src/vguest/vguest"); }

TEST(VsockdCliTest, HelpDescribesTheFlags) {
  auto r = RunCommand(Vsockd() + " --help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (const char* flag : {"--socket", "--guest-cid", "--uds-path", "--tx-buffer-size"}) {
    EXPECT_NE(r.output.find(flag), std::string::npos) << flag << "\n" << r.output;
  }
}

TEST(VsockdCliTest, ReservedCidsAreRefusedClearly) {
  TempDir dir;
  for (const char* cid : {"0", "1", "2", "4294967295", "4294967296"}) {
    auto r = RunCommand(Vsockd() + " --socket " + dir.File("s") + " --uds-path " + dir.File("u") +
                        " --guest-cid " + cid);
    EXPECT_EQ(r.exit_code, 2) << cid << ": " << r.output;
    EXPECT_NE(r.output.find("3..4294967294"), std::string::npos) << cid << ": " << r.output;
  }
}

TEST(VsockdCliTest, UnknownFlagAndMissingSocketAreErrors) {
  auto r = RunCommand(Vsockd() + " --no-such-flag");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("no-such-flag"), std::string::npos) << r.output;
  r = RunCommand(Vsockd() + " --guest-cid 3");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--socket"), std::string::npos) << r.output;
}

class VguestCliTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(daemon_.Start().ok()) << daemon_.Log(); }
  TempDir dir_;
  Daemon daemon_{dir_, 7};
};

TEST_F(VguestCliTest, InfoPrintsTheCid) {
  auto r = RunCommand(Vguest() + " --socket " + daemon_.socket_path() + " info");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find('7'), std::string::npos) << r.output;
}

TEST_F(VguestCliTest, ConnectRelaysStdinAndStdout) {
  EchoServer echo(daemon_.uds_path() + "_9999");
  ASSERT_TRUE(echo.ok());
  auto data = PatternBytes(3 << 20, 11);
  std::string in = dir_.File("in.bin"), out = dir_.File("out.bin");
  std::ofstream(in, std::ios::binary)
      .write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  auto r = RunCommand(Vguest() + " --socket " + daemon_.socket_path() + " connect 9999 < " + in +
                      " > " + out);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::ifstream f(out, std::ios::binary);
  std::vector<uint8_t> got((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_EQ(got.size(), data.size());
  EXPECT_EQ(Fnv1a(got), Fnv1a(data));
}

TEST_F(VguestCliTest, ConnectToAPortNobodyServesFails) {
  auto r =
      RunCommand("echo hi | " + Vguest() + " --socket " + daemon_.socket_path() + " connect 1234");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_FALSE(r.output.empty());
}

TEST_F(VguestCliTest, ListenAcceptsAHostConnection) {
  std::string out = dir_.File("guest-out.txt");
  Subprocess guest;
  ASSERT_TRUE(guest
                  .Start({"/bin/sh", "-c",
                          "echo from-guest | " + Vguest() + " --socket " + daemon_.socket_path() +
                              " listen 5000 > " + out},
                         dir_.File("vguest.log"))
                  .ok());
  Result<Fd> fd = MakeError(EAGAIN, "not tried");
  // The guest may not be listening yet: the hybrid reply then says it refused.
  ASSERT_TRUE(WaitFor([&] {
    fd = HybridConnect(daemon_.uds_path(), 5000);
    return fd.ok();
  }));
  ASSERT_TRUE(WriteAll(fd->get(), "from-host\n", 10).ok());
  ::shutdown(fd->get(), SHUT_WR);
  std::string got;
  char buf[256];
  ssize_t n;
  while ((n = ::read(fd->get(), buf, sizeof buf)) > 0) got.append(buf, static_cast<size_t>(n));
  EXPECT_EQ(got, "from-guest\n");
  ASSERT_TRUE(WaitFor([&] { return !guest.Running(); }, 10s)) << guest.Log();
  std::ifstream f(out);
  std::stringstream ss;
  ss << f.rdbuf();
  EXPECT_EQ(ss.str(), "from-host\n");
}

}  // namespace
}  // namespace vsockd::testing
