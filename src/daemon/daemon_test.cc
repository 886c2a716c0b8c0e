// In-process tests of the daemon's wiring: sockets, the hybrid handshake with no guest
// attached, signals, and cleanup. The data path is covered by tests/integration.
#include "daemon/daemon.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>

#include <cstdlib>
#include <string>
#include <thread>

#include "base/unix_socket.h"
#include "host/connect_command.h"

namespace vsockd::daemon {
namespace {

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "vsockd_daemon_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    options_.socket_path = dir_ + "/vhost.sock";
    options_.uds_path = dir_ + "/vm.vsock";
    options_.connect_timeout = std::chrono::milliseconds(50);
  }
  void TearDown() override {
    std::string cmd = "rm -rf '" + dir_ + "'";
    (void)std::system(cmd.c_str());
  }
  bool Exists(const std::string& path) {
    struct stat st;
    return ::lstat(path.c_str(), &st) == 0;
  }
  // Blocking client with a receive timeout, so a broken daemon fails the test, not hangs it.
  Fd HybridClient() {
    auto fd = ConnectUnix(options_.uds_path);
    EXPECT_TRUE(fd.ok()) << fd.error().ToString();
    if (!fd.ok()) return Fd();
    timeval tv{10, 0};
    ::setsockopt(fd->get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return std::move(*fd);
  }
  static std::string ReadAll(const Fd& fd) {
    std::string out;
    char buf[256];
    ssize_t n;
    while ((n = ::recv(fd.get(), buf, sizeof buf, 0)) > 0) out.append(buf, n);
    return out;
  }

  std::string dir_;
  Options options_;
};

TEST_F(DaemonTest, ServesBothSocketsAndRemovesThemOnExit) {
  auto d = Daemon::Create(options_);
  ASSERT_TRUE(d.ok()) << d.error().ToString();
  EXPECT_TRUE(Exists(options_.socket_path));
  EXPECT_TRUE(Exists(options_.uds_path));
  std::thread runner([&] { (*d)->Run(); });

  // The vhost-user socket accepts a frontend.
  auto frontend = ConnectUnix(options_.socket_path);
  EXPECT_TRUE(frontend.ok());
  // No guest driver is running: a host -> guest connect gets an ERR line, not a hang.
  Fd client = HybridClient();
  ASSERT_TRUE(client.valid());
  ASSERT_EQ(::send(client.get(), "CONNECT 1024\n", 13, MSG_NOSIGNAL), 13);
  std::string reply = ReadAll(client);
  EXPECT_EQ(reply.rfind("ERR ", 0), 0u) << reply;
  EXPECT_FALSE(host::ContainsOk(reply)) << reply;

  (*d)->Stop();
  runner.join();
  d->reset();
  EXPECT_FALSE(Exists(options_.socket_path));
  EXPECT_FALSE(Exists(options_.uds_path));
}

TEST_F(DaemonTest, RunDirAloneServesCidSocketAndCreatesTheDirectory) {
  options_.uds_path.clear();
  options_.run_dir = dir_ + "/run/nested";
  options_.guest_cid = 42;
  auto d = Daemon::Create(options_);
  ASSERT_TRUE(d.ok()) << d.error().ToString();
  std::string cid_path = options_.run_dir + "/cid_42";
  EXPECT_TRUE(Exists(cid_path));
  std::thread runner([&] { (*d)->Run(); });
  // Same CONNECT/OK protocol as the hybrid socket: no guest here, so an ERR line.
  auto client = ConnectUnix(cid_path);
  ASSERT_TRUE(client.ok()) << client.error().ToString();
  timeval tv{10, 0};
  ::setsockopt(client->get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ASSERT_EQ(::send(client->get(), "CONNECT 1024\n", 13, MSG_NOSIGNAL), 13);
  std::string reply = ReadAll(*client);
  EXPECT_EQ(reply.rfind("ERR ", 0), 0u) << reply;
  (*d)->Stop();
  runner.join();
  d->reset();
  EXPECT_FALSE(Exists(cid_path));
}

TEST_F(DaemonTest, RunDirThatCannotBeCreatedFails) {
  std::string file = dir_ + "/a-file";
  ASSERT_TRUE(ListenUnix(file).ok());  // a socket file where the directory should go
  options_.run_dir = file + "/run";
  auto d = Daemon::Create(options_);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.error().ToString().find("--run-dir"), std::string::npos) << d.error().ToString();
}

TEST_F(DaemonTest, RejectsReservedCid) {
  options_.guest_cid = 2;
  auto d = Daemon::Create(options_);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.error().context, "guest CID 2 is reserved (VMADDR_CID_HOST); use 3..4294967294");
  EXPECT_FALSE(Exists(options_.socket_path));
}

TEST_F(DaemonTest, UnusableSocketPathFailsAndCleansUp) {
  options_.socket_path = dir_ + "/missing-dir/vhost.sock";
  auto d = Daemon::Create(options_);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.error().context.find("--socket"), std::string::npos) << d.error().ToString();
  EXPECT_FALSE(Exists(options_.uds_path));  // the hybrid socket it had created is gone
}

TEST_F(DaemonTest, SigtermStopsTheLoop) {
  auto d = Daemon::Create(options_, /*handle_signals=*/true);
  ASSERT_TRUE(d.ok()) << d.error().ToString();
  // Blocked by Create in this thread: stays pending until the loop reads the signalfd.
  ASSERT_EQ(::raise(SIGTERM), 0);
  (*d)->Run();  // returns only because of the signal
  EXPECT_TRUE((*d)->loop()->stopped());
  d->reset();
  EXPECT_FALSE(Exists(options_.socket_path));
}

}  // namespace
}  // namespace vsockd::daemon
