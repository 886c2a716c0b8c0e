// Socket activation: the socket texts, systemd's LISTEN_* variables, matching passed sockets
// to VMs, and a daemon serving a vhost-user frontend on an inherited socket it never removes.
#include "daemon/inherited_sockets.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "base/unix_socket.h"
#include "daemon/daemon.h"

namespace vsockd::daemon {
namespace {

TEST(ParseSocketSpecTest, PathFdAndSystemdName) {
  auto path = ParseSocketSpec("/run/vsockd/vm3.vhost");
  ASSERT_TRUE(path.ok());
  EXPECT_EQ(path->kind, SocketSpec::Kind::kPath);
  EXPECT_EQ(path->path, "/run/vsockd/vm3.vhost");

  auto fd = ParseSocketSpec("fd:7");
  ASSERT_TRUE(fd.ok());
  EXPECT_EQ(fd->kind, SocketSpec::Kind::kFd);
  EXPECT_EQ(fd->fd, 7);

  auto named = ParseSocketSpec("systemd:vm3");
  ASSERT_TRUE(named.ok());
  EXPECT_EQ(named->kind, SocketSpec::Kind::kSystemdName);
  EXPECT_EQ(named->name, "vm3");

  // A file named like the fd form is reachable as a relative path.
  auto dot = ParseSocketSpec("./fd:3");
  ASSERT_TRUE(dot.ok());
  EXPECT_EQ(dot->kind, SocketSpec::Kind::kPath);
}

TEST(ParseSocketSpecTest, MalformedFormsAreErrors) {
  for (const char* bad : {"", "fd:", "fd:x", "fd:-1", "fd:3x", "fd:99999999999",
                          "systemd:", "systemd:a:b", "systemd:a b"}) {
    auto spec = ParseSocketSpec(bad);
    EXPECT_FALSE(spec.ok()) << bad;
  }
  auto spec = ParseSocketSpec("fd:x");
  ASSERT_FALSE(spec.ok());
  EXPECT_NE(spec.error().context.find("./fd:"), std::string::npos) << spec.error().context;
}

TEST(ParseSocketSpecTest, FlagsAndVmKeysTakeTheForms) {
  const char* fd_argv[] = {"vsockd", "--socket", "fd:3", "--uds-path", "/tmp/x.vsock"};
  ParseOutcome fd = ParseCommandLine(5, fd_argv);
  EXPECT_TRUE(fd.run) << fd.output;
  EXPECT_EQ(fd.options.vms.at(0).socket_path, "fd:3");

  const char* bad_argv[] = {"vsockd", "--socket", "fd:three", "--uds-path", "/tmp/x.vsock"};
  ParseOutcome bad = ParseCommandLine(5, bad_argv);
  EXPECT_FALSE(bad.run);
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.output.find("fd:N"), std::string::npos) << bad.output;

  auto vm = ParseVmSpec("guest-cid=5,socket=systemd:vm5,uds-path=/tmp/vm5.vsock", VmOptions{});
  ASSERT_TRUE(vm.ok()) << vm.error().ToString();
  EXPECT_EQ(vm->socket_path, "systemd:vm5");
  EXPECT_FALSE(ParseVmSpec("guest-cid=5,socket=systemd:,uds-path=/tmp/v", VmOptions{}).ok());

  const char* help_argv[] = {"vsockd", "--help"};
  ParseOutcome help = ParseCommandLine(2, help_argv);
  EXPECT_NE(help.output.find("systemd:NAME"), std::string::npos) << help.output;
}

class InheritedSocketsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "vsockd_inherit_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::string cmd = "rm -rf '" + dir_ + "'";
    (void)std::system(cmd.c_str());
  }
  // A listening socket at dir_/name moved to descriptor `at` (systemd numbers them from 3;
  // the test process uses high numbers instead).
  int ListenAt(const std::string& name, int at) {
    auto fd = ListenUnix(dir_ + "/" + name, 4, /*nonblocking=*/false);
    EXPECT_TRUE(fd.ok());
    if (!fd.ok()) return -1;
    EXPECT_EQ(::dup2(fd->get(), at), at);
    return at;
  }
  static bool IsOpen(int fd) { return ::fcntl(fd, F_GETFD) >= 0; }

  std::string dir_;
};

TEST_F(InheritedSocketsTest, NotActivatedIsAnEmptyPool) {
  auto none = InheritedSockets::FromValues("", "", "", ::getpid());
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->size(), 0u);
  // LISTEN_PID of another process (a parent's leftover): not ours.
  auto other = InheritedSockets::FromValues(std::to_string(::getpid() + 1), "2", "", ::getpid());
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->size(), 0u);
}

TEST_F(InheritedSocketsTest, MalformedVariablesAreErrors) {
  const std::string self = std::to_string(::getpid());
  EXPECT_FALSE(InheritedSockets::FromValues("12x", "1", "", ::getpid()).ok());
  EXPECT_FALSE(InheritedSockets::FromValues(self, "one", "", ::getpid()).ok());
  EXPECT_FALSE(InheritedSockets::FromValues(self, "-1", "", ::getpid()).ok());
  const int a = ListenAt("a.sock", 300);
  const int b = ListenAt("b.sock", 301);
  // Two descriptors, one name.
  auto names = InheritedSockets::FromValues(self, "2", "only", ::getpid(), a);
  ASSERT_FALSE(names.ok());
  EXPECT_NE(names.error().context.find("LISTEN_FDNAMES"), std::string::npos);
  ::close(a);
  ::close(b);
  // A descriptor that is not open.
  auto closed = InheritedSockets::FromValues(self, "1", "", ::getpid(), 302);
  ASSERT_FALSE(closed.ok());
  EXPECT_NE(closed.error().context.find("302"), std::string::npos);
}

TEST_F(InheritedSocketsTest, MatchesByPathAndByNameAndReportsTheRest) {
  const int first = ListenAt("vm3.vhost", 310);
  ListenAt("vm4.vhost", 311);
  ListenAt("spare.vhost", 312);
  auto pool = InheritedSockets::FromValues(std::to_string(::getpid()), "3", "vm3:vm4:spare",
                                           ::getpid(), first);
  ASSERT_TRUE(pool.ok()) << pool.error().ToString();
  ASSERT_EQ(pool->size(), 3u);
  EXPECT_TRUE(::fcntl(first, F_GETFD) & FD_CLOEXEC);

  auto by_path = pool->Find(*ParseSocketSpec(dir_ + "/vm3.vhost"));
  ASSERT_TRUE(by_path.ok()) << by_path.error().ToString();
  ASSERT_TRUE(by_path->valid());
  EXPECT_NE(by_path->get(), first) << "a duplicate: the pool keeps its own";
  EXPECT_EQ(UnixSocketName(by_path->get()), dir_ + "/vm3.vhost");

  auto by_name = pool->Find(*ParseSocketSpec("systemd:vm4"));
  ASSERT_TRUE(by_name.ok()) << by_name.error().ToString();
  EXPECT_EQ(UnixSocketName(by_name->get()), dir_ + "/vm4.vhost");

  // A path nobody passed: the caller listens on it itself.
  auto own = pool->Find(*ParseSocketSpec(dir_ + "/vm5.vhost"));
  ASSERT_TRUE(own.ok());
  EXPECT_FALSE(own->valid());

  auto missing = pool->Find(*ParseSocketSpec("systemd:vm9"));
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().context.find("'spare'"), std::string::npos) << missing.error().context;

  auto unused = pool->Unused();
  ASSERT_EQ(unused.size(), 1u);
  EXPECT_NE(unused[0].find("spare"), std::string::npos) << unused[0];

  // The same socket again (a VM restarted by a reload): another duplicate.
  auto again = pool->Find(*ParseSocketSpec("systemd:vm4"));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->valid());
}

TEST_F(InheritedSocketsTest, OneNameForSeveralSocketsIsAmbiguous) {
  const int first = ListenAt("x.vhost", 320);
  ListenAt("y.vhost", 321);
  auto pool = InheritedSockets::FromValues(std::to_string(::getpid()), "2",
                                           "vsockd.socket:vsockd.socket", ::getpid(), first);
  ASSERT_TRUE(pool.ok());
  auto both = pool->Find(*ParseSocketSpec("systemd:vsockd.socket"));
  ASSERT_FALSE(both.ok());
  EXPECT_NE(both.error().context.find("FileDescriptorName="), std::string::npos);
  // By path each one is still found.
  auto x = pool->Find(*ParseSocketSpec(dir_ + "/y.vhost"));
  ASSERT_TRUE(x.ok());
  EXPECT_TRUE(x->valid());
}

TEST_F(InheritedSocketsTest, FdFormTakesOnlyAListeningUnixStreamSocket) {
  InheritedSockets pool;
  // A pipe: refused, and left open for its owner.
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  auto pipe_fd = pool.Find(*ParseSocketSpec("fd:" + std::to_string(p[0])));
  ASSERT_FALSE(pipe_fd.ok());
  EXPECT_EQ(pipe_fd.error().code, ENOTSOCK);
  EXPECT_TRUE(IsOpen(p[0]));
  ::close(p[0]);
  ::close(p[1]);
  // A datagram socket and a socket that does not listen.
  int dgram = ::socket(AF_UNIX, SOCK_DGRAM, 0);
  auto d = pool.Find(*ParseSocketSpec("fd:" + std::to_string(dgram)));
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.error().context.find("SOCK_STREAM"), std::string::npos) << d.error().context;
  ::close(dgram);
  int quiet = ::socket(AF_UNIX, SOCK_STREAM, 0);
  auto q = pool.Find(*ParseSocketSpec("fd:" + std::to_string(quiet)));
  ASSERT_FALSE(q.ok());
  EXPECT_NE(q.error().context.find("not listening"), std::string::npos) << q.error().context;
  ::close(quiet);
  // Closed.
  auto closed = pool.Find(*ParseSocketSpec("fd:333"));
  ASSERT_FALSE(closed.ok());
  EXPECT_EQ(closed.error().code, EBADF);
  // A listening one: adopted (the pool owns it from here on).
  const int listening = ListenAt("fd.vhost", 330);
  auto ok = pool.Find(*ParseSocketSpec("fd:330"));
  ASSERT_TRUE(ok.ok()) << ok.error().ToString();
  EXPECT_EQ(UnixSocketName(ok->get()), dir_ + "/fd.vhost");
  EXPECT_TRUE(IsOpen(listening));
}

// GET_FEATURES (1) as a frontend sends it, and the reply's payload (the device features).
Result<uint64_t> GetFeatures(int fd) {
  const uint32_t request[3] = {1, 0x1, 0};
  VSOCKD_RETURN_IF_ERROR(WriteAll(fd, request, sizeof request));
  uint32_t header[3];
  VSOCKD_RETURN_IF_ERROR(ReadExact(fd, header, sizeof header));
  if (header[0] != 1 || header[2] != 8) return MakeError(EPROTO, "unexpected reply");
  uint64_t features = 0;
  VSOCKD_RETURN_IF_ERROR(ReadExact(fd, &features, sizeof features));
  return features;
}

TEST_F(InheritedSocketsTest, DaemonServesAnInheritedSocketAndLeavesItsFile) {
  const std::string path = dir_ + "/vhost.sock";
  auto listener = ListenUnix(path, 4, /*nonblocking=*/false);
  ASSERT_TRUE(listener.ok());
  // A frontend that connects before the daemon exists (QEMU started first): queued.
  auto frontend = ConnectUnix(path);
  ASSERT_TRUE(frontend.ok());
  timeval tv{10, 0};
  ::setsockopt(frontend->get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

  Options options;
  options.socket_path = "fd:" + std::to_string(listener->Release());
  options.uds_path = dir_ + "/vm.vsock";
  {
    auto daemon = Daemon::Create(options);
    ASSERT_TRUE(daemon.ok()) << daemon.error().ToString();
    std::thread runner([&] { (*daemon)->Run(); });
    auto features = GetFeatures(frontend->get());
    (*daemon)->Stop();
    runner.join();
    ASSERT_TRUE(features.ok()) << features.error().ToString();
    EXPECT_TRUE(*features & (1ull << 32)) << "VIRTIO_F_VERSION_1";
  }
  struct stat st;
  EXPECT_EQ(::lstat(path.c_str(), &st), 0) << "the inherited socket's file is not vsockd's";
  EXPECT_NE(::lstat(options.uds_path.c_str(), &st), 0) << "its own sockets are removed";
}

TEST_F(InheritedSocketsTest, DaemonRefusesAnFdThatIsNotAListeningSocket) {
  Options options;
  options.socket_path = "fd:999";
  options.uds_path = dir_ + "/vm.vsock";
  auto daemon = Daemon::Create(options);
  ASSERT_FALSE(daemon.ok());
  EXPECT_NE(daemon.error().context.find("fd:999"), std::string::npos) << daemon.error().ToString();
}

}  // namespace
}  // namespace vsockd::daemon
