// The programs as a user runs them: vsockd's flags and errors, and the vguest CLI relaying
// stdin/stdout through a running vsockd.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "base/unix_socket.h"
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

TEST(VsockdCliTest, BadBudgetOrPolicyInTheConfigExitsTwoNamingKeyAndLine) {
  TempDir dir;
  const std::string config = dir.File("vsockd.yaml");
  std::ofstream(config) << "vms:\n"
                           "  - guest_cid: 3\n"
                           "    socket: "
                        << dir.File("vm3.sock")
                        << "\n"
                           "    uds_path: "
                        << dir.File("vm3.vsock")
                        << "\n"
                           "    max-connections: 100\n"
                           "    allow-host-ports: [22, 1024-x]\n";
  auto r = RunCommand(Vsockd() + " --config " + config);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("allow-host-ports"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("line 6"), std::string::npos) << r.output;
  EXPECT_FALSE(UnixListening(dir.File("vm3.sock"))) << "nothing starts on a bad config";
}

TEST(VsockdCliTest, BudgetsThatExceedTheOpenFileLimitAreRefusedAtStart) {
  TempDir dir;
  // 5,000 explicit host fds cannot fit in a hard limit of 1,024.
  auto r = RunCommand("prlimit --nofile=1024:1024 " + Vsockd() + " --socket " + dir.File("s") +
                      " --uds-path " + dir.File("u") + " --max-host-fds 5000");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("open-file limit is 1024"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("max-host-fds"), std::string::npos) << r.output;
}

// The next message (or datagram) on `fd`, blocking; "" on EOF, error or timeout.
std::string RecvMessage(int fd) {
  char buf[256];
  ssize_t n = ::recv(fd, buf, sizeof buf, 0);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

// A pipe whose write end a child inherits (no O_CLOEXEC) as `fd`.
struct ReadyPipe {
  Fd read_end;
  int child_fd = -1;
  ReadyPipe() {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return;
    read_end = Fd(p[0]);
    child_fd = ::fcntl(p[1], F_DUPFD, 10);  // the dup has no FD_CLOEXEC
    ::close(p[1]);
  }
  // The parent's copy: closed once the child has it, so EOF means the child closed it.
  void CloseChildEnd() {
    if (child_fd >= 0) ::close(child_fd);
    child_fd = -1;
  }
};

// Starts `vsockd --socket SOCKET --uds-path DIR/vm.vsock --ready-fd N` with a ReadyPipe.
Status StartWithReadyFd(Subprocess* vsockd, ReadyPipe* ready, const TempDir& dir,
                        const std::string& socket) {
  if (ready->child_fd < 0) return MakeError(EMFILE, "no ready pipe");
  Status st = vsockd->Start({Vsockd(), "--socket", socket, "--uds-path", dir.File("vm.vsock"),
                             "--ready-fd", std::to_string(ready->child_fd)},
                            dir.File("vsockd.log"));
  ready->CloseChildEnd();
  return st;
}

TEST(VsockdCliTest, ReadyFdSignalsOnceEverySocketListens) {
  TempDir dir;
  ReadyPipe ready;
  Subprocess vsockd;
  ASSERT_TRUE(StartWithReadyFd(&vsockd, &ready, dir, dir.File("vhost.sock")).ok());
  auto line = ReadLine(ready.read_end.get());
  ASSERT_TRUE(line.ok()) << vsockd.Log();
  EXPECT_EQ(*line, "READY");
  // At that moment QEMU may connect: both sockets already listen.
  EXPECT_TRUE(UnixListening(dir.File("vhost.sock"))) << vsockd.Log();
  EXPECT_TRUE(UnixListening(dir.File("vm.vsock"))) << vsockd.Log();
  char c;
  EXPECT_EQ(::read(ready.read_end.get(), &c, 1), 0) << "vsockd closes the fd after the line";
  EXPECT_EQ(vsockd.Stop(SIGTERM, 10s), 0) << vsockd.Log();
}

TEST(VsockdCliTest, ReadyFdClosesWithoutTheLineWhenStartFails) {
  TempDir dir;
  ReadyPipe ready;
  Subprocess vsockd;
  ASSERT_TRUE(StartWithReadyFd(&vsockd, &ready, dir, dir.File("no-such-dir/vhost.sock")).ok());
  char buf[16];
  EXPECT_EQ(::read(ready.read_end.get(), buf, sizeof buf), 0) << vsockd.Log();
  const int status = vsockd.Wait(10s);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status << "\n" << vsockd.Log();
  // One reason, said once.
  const std::string log = vsockd.Log();
  EXPECT_NE(log.find("No such file or directory"), std::string::npos) << log;
  EXPECT_EQ(log.find("No such file or directory: No such file or directory"), std::string::npos)
      << log;
}

TEST(VsockdCliTest, NotifySocketGetsReadyThenStopping) {
  TempDir dir;
  const std::string notify = dir.File("notify");
  sockaddr_un addr;
  auto addr_len = MakeUnixAddress(notify, &addr);
  ASSERT_TRUE(addr_len.ok());
  Fd s(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(::bind(s.get(), reinterpret_cast<const sockaddr*>(&addr), *addr_len), 0);
  SetSocketTimeouts(s.get(), 10s);
  ::setenv("NOTIFY_SOCKET", notify.c_str(), 1);
  Subprocess vsockd;
  Status started = vsockd.Start(
      {Vsockd(), "--socket", dir.File("vhost.sock"), "--uds-path", dir.File("vm.vsock")},
      dir.File("vsockd.log"));
  ::unsetenv("NOTIFY_SOCKET");
  ASSERT_TRUE(started.ok());
  std::string msg = RecvMessage(s.get());
  ASSERT_FALSE(msg.empty()) << vsockd.Log();
  EXPECT_EQ(msg.rfind("READY=1\nMAINPID=", 0), 0u) << msg;
  EXPECT_NE(msg.find(std::to_string(vsockd.pid())), std::string::npos) << msg;
  EXPECT_TRUE(UnixListening(dir.File("vhost.sock"))) << vsockd.Log();
  ASSERT_EQ(::kill(vsockd.pid(), SIGTERM), 0);
  msg = RecvMessage(s.get());
  ASSERT_FALSE(msg.empty()) << vsockd.Log();
  EXPECT_EQ(msg.rfind("STOPPING=1", 0), 0u) << msg;
  EXPECT_EQ(vsockd.Wait(10s), 0) << vsockd.Log();
}

class VguestCliTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(daemon_.Start().ok()) << daemon_.Log(); }
  // Starts `INPUT_CMD | vguest --socket S ARGS > OUT` in the background.
  Status StartGuest(Subprocess* guest, const std::string& input_cmd, const std::string& args,
                    const std::string& out) {
    return guest->Start({"/bin/sh", "-c",
                         input_cmd + " | " + Vguest() + " --socket " + daemon_.socket_path() + " " +
                             args + " > " + out},
                        dir_.File("vguest.log"));
  }
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
  ASSERT_TRUE(StartGuest(&guest, "echo from-guest", "listen 5000", out).ok());
  Result<Fd> fd = MakeError(EAGAIN, "not tried");
  // The guest may not be listening yet: the hybrid reply then says it refused.
  ASSERT_TRUE(WaitFor([&] {
    fd = HybridConnect(daemon_.uds_path(), 5000);
    return fd.ok();
  }));
  ASSERT_TRUE(WriteAll(fd->get(), "from-host\n", 10).ok());
  ::shutdown(fd->get(), SHUT_WR);
  EXPECT_EQ(ReadToEof(fd->get()), "from-guest\n");
  ASSERT_TRUE(WaitFor([&] { return !guest.Running(); }, 10s)) << guest.Log();
  EXPECT_EQ(ReadFile(out), "from-host\n");
}

TEST_F(VguestCliTest, SeqpacketConnectRelaysMessages) {
  // vsockd bridges a guest SEQPACKET connect to host port P to <uds-path>_P.seqpacket.
  const std::string service = daemon_.uds_path() + "_9300.seqpacket";
  auto listener = ListenUnix(service, 4, /*nonblocking=*/false, SOCK_SEQPACKET);
  ASSERT_TRUE(listener.ok()) << listener.error().ToString();
  SetSocketTimeouts(listener->get(), 10s);  // accept() gives up rather than hang the test
  std::string out = dir_.File("guest-out.bin");
  Subprocess guest;
  ASSERT_TRUE(StartGuest(&guest, "printf hello", "connect 9300 --seqpacket", out).ok());
  Fd conn(::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(conn.valid()) << guest.Log();
  SetSocketTimeouts(conn.get(), 10s);
  ASSERT_EQ(RecvMessage(conn.get()), "hello") << guest.Log();
  // Two messages back: the guest writes each whole; then the host closes.
  ASSERT_EQ(::send(conn.get(), "one", 3, MSG_NOSIGNAL), 3);
  ASSERT_EQ(::send(conn.get(), "two!", 4, MSG_NOSIGNAL), 4);
  char buf[64];
  EXPECT_EQ(::recv(conn.get(), buf, sizeof buf, 0), 0) << "stdin EOF: the guest shuts down";
  conn.Reset();
  ASSERT_TRUE(WaitFor([&] { return !guest.Running(); }, 10s)) << guest.Log();
  EXPECT_EQ(ReadFile(out), "onetwo!") << guest.Log();
}

TEST_F(VguestCliTest, SeqpacketListenAcceptsAHostSeqpacketConnect) {
  std::string out = dir_.File("guest-out.bin");
  Subprocess guest;
  ASSERT_TRUE(StartGuest(&guest, "printf reply", "listen 5100 --seqpacket", out).ok());
  // vsockd's SEQPACKET entry: <uds-path>.seqpacket, one "CONNECT P\n" message, "OK n\n".
  // The guest may not listen yet: vsockd then answers ERR; retry.
  Fd fd;
  ASSERT_TRUE(WaitFor([&] {
    auto c = ConnectUnix(daemon_.uds_path() + ".seqpacket", /*nonblocking=*/false, SOCK_SEQPACKET);
    if (!c.ok()) return false;
    SetSocketTimeouts(c->get(), 10s);
    if (::send(c->get(), "CONNECT 5100\n", 13, MSG_NOSIGNAL) != 13) return false;
    if (RecvMessage(c->get()).rfind("OK ", 0) != 0) return false;
    fd = std::move(*c);
    return true;
  })) << guest.Log();
  ASSERT_EQ(RecvMessage(fd.get()), "reply") << guest.Log();
  ASSERT_EQ(::send(fd.get(), "m1", 2, MSG_NOSIGNAL), 2);
  ASSERT_EQ(::send(fd.get(), "m2", 2, MSG_NOSIGNAL), 2);
  ::shutdown(fd.get(), SHUT_WR);
  ASSERT_TRUE(WaitFor([&] { return !guest.Running(); }, 10s)) << guest.Log();
  EXPECT_EQ(ReadFile(out), "m1m2") << guest.Log();
}

}  // namespace
}  // namespace vsockd::testing
