// vsockd restarted under a running real guest (`vsockd --keep-sessions`, issue 13): the
// worker SIGKILLed in the middle of a guest -> host transfer, and an upgrade (SIGUSR2 to the
// keeper) under the same traffic. QEMU keeps its vhost-user connection (the keeper holds it);
// the guest's connection that was open fails promptly (its socat exits with an error instead
// of hanging), the host peer sees EOF, and new connections work both ways at once, with a
// 16 MiB transfer checked end to end (a ring resumed at a wrong index would lose or repeat
// data, or wedge the guest's driver). Runs on whichever QEMU and guest kernel the VM tests are
// given (scripts/test.sh: QEMU 7.2 + Linux 6.1, then QEMU 10.0 + Linux 6.12).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <iostream>
#include <string>
#include <thread>

#include "base/unix_socket.h"
#include "tests/integration/echo_server.h"
#include "tests/integration/harness.h"
#include "tests/vm/vm.h"
#include "tests/vm/vm_fixture.h"

namespace vsockd::vmtest {
namespace {

using vsockd::testing::EchoServer;
using vsockd::testing::FirstChildOf;
using vsockd::testing::HybridConnect;
using vsockd::testing::ReadToEof;
using vsockd::testing::SetSocketTimeouts;
using vsockd::testing::WaitFor;
using Clock = std::chrono::steady_clock;

constexpr uint32_t kSinkPort = 7000;
constexpr uint32_t kEchoPort = 7001;
constexpr uint32_t kGuestEchoPort = 7002;

// A host service that accepts one connection and counts what it reads until EOF.
class Sink {
 public:
  explicit Sink(const std::string& path) {
    auto fd = ListenUnix(path, 4, /*nonblocking=*/false);
    if (fd.ok()) listener_ = std::move(*fd);
    thread_ = std::thread([this] {
      int c = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) return;
      Fd conn(c);
      SetSocketTimeouts(c, std::chrono::seconds(120));
      std::vector<uint8_t> buf(1 << 16);
      for (;;) {
        ssize_t n = ::read(c, buf.data(), buf.size());
        if (n <= 0) break;
        received_ += static_cast<uint64_t>(n);
      }
      eof_ = true;
    });
  }
  ~Sink() {
    ::shutdown(listener_.get(), SHUT_RDWR);
    thread_.join();
  }
  bool ok() const { return listener_.valid(); }
  uint64_t received() const { return received_.load(); }
  bool eof() const { return eof_.load(); }

 private:
  Fd listener_;
  std::atomic<uint64_t> received_{0};
  std::atomic<bool> eof_{false};
  std::thread thread_;
};

class VmRestartTest : public VmFixture<VmRestartTest> {
 public:
  static std::vector<std::string> DaemonArgs() { return {"--keep-sessions"}; }

 protected:
  // `sig` SIGKILL goes to the worker, SIGUSR2 to the keeper.
  void RestartMidTransfer(int sig) {
    const std::string what = sig == SIGKILL ? "SIGKILL of the worker" : "upgrade (SIGUSR2)";
    Sink sink(HostPath(kSinkPort));
    ASSERT_TRUE(sink.ok());
    const std::string log = "/tmp/restart-transfer.log";
    ASSERT_TRUE(vm().Spawn("head -c 1073741824 /dev/zero | socat -u - VSOCK-CONNECT:2:" +
                               std::to_string(kSinkPort) + "; echo TRANSFER-EXIT $?",
                           log)
                    .ok());
    ASSERT_TRUE(WaitFor([&] { return sink.received() > (4u << 20); }, std::chrono::seconds(60)))
        << "the transfer did not start; vsockd log:\n"
        << DaemonLog();

    const pid_t keeper = daemon().pid();
    const pid_t old_worker = FirstChildOf(keeper);
    ASSERT_GT(old_worker, 0);
    const uint64_t before = sink.received();
    const auto start = Clock::now();
    ASSERT_EQ(::kill(sig == SIGKILL ? old_worker : keeper, sig), 0);

    // The host peer sees EOF; the guest's socat fails instead of hanging.
    ASSERT_TRUE(WaitFor([&] { return sink.eof(); }, std::chrono::seconds(30)))
        << "the host peer saw no EOF";
    const long long eof_ms = MsSince(start);
    ASSERT_TRUE(WaitGuestLog(log, "TRANSFER-EXIT", std::chrono::seconds(30)));
    const long long guest_error_ms = MsSince(start);
    std::string exit_line = GuestOk("grep TRANSFER-EXIT " + log);
    EXPECT_NE(exit_line, "TRANSFER-EXIT 0") << "the interrupted transfer claims success";
    EXPECT_GT(sink.received(), before - 1);  // what arrived before the restart stays counted

    // The same QEMU, the same session: a new connection each way works at once.
    ASSERT_TRUE(WaitFor([&] {
      pid_t w = FirstChildOf(keeper);
      return w > 0 && w != old_worker && vsockd::testing::UnixListening(daemon().uds_path());
    }));
    EchoServer echo(HostPath(kEchoPort));
    ASSERT_TRUE(echo.ok());
    EXPECT_EQ(GuestOk("echo hello-after-restart | socat -t 5 - VSOCK-CONNECT:2:" +
                      std::to_string(kEchoPort)),
              "hello-after-restart");
    const long long first_new_ms = MsSince(start);
    GuestOk("socat VSOCK-LISTEN:" + std::to_string(kGuestEchoPort) +
            ",reuseaddr EXEC:cat >/dev/null 2>&1 &");
    ASSERT_TRUE(WaitFor(
        [&] {
          std::string reply;
          auto fd = HybridConnect(daemon().uds_path(), kGuestEchoPort, &reply);
          if (!fd.ok()) return false;
          SetSocketTimeouts(fd->get(), std::chrono::seconds(30));
          if (::write(fd->get(), "ping\n", 5) != 5) return false;
          ::shutdown(fd->get(), SHUT_WR);
          return ReadToEof(fd->get()) == "ping\n";
        },
        std::chrono::seconds(30)))
        << "host -> guest after the restart; vsockd log:\n"
        << DaemonLog();

    // 16 MiB guest -> host, checked: the rings carry data exactly after the resume.
    Sink check(HostPath(kSinkPort + 10));
    ASSERT_TRUE(check.ok());
    GuestOk("head -c 16777216 /dev/urandom > /tmp/f && socat -u /tmp/f VSOCK-CONNECT:2:" +
            std::to_string(kSinkPort + 10));
    ASSERT_TRUE(WaitFor([&] { return check.eof(); }, std::chrono::seconds(60)));
    EXPECT_EQ(check.received(), 16777216u);
    std::cout << "[ vm ] " << what << " mid-transfer (" << (before >> 20)
              << " MiB sent): host peer EOF after " << eof_ms << " ms, the guest's socat failed "
              << "(seen by a 0.1 s poll) after " << guest_error_ms
              << " ms, first new guest -> host connection after " << first_new_ms << " ms\n";
    EXPECT_NE(DaemonLog().find("vhost-user session resumed after the restart"), std::string::npos)
        << DaemonLog();
  }
};

TEST_F(VmRestartTest, WorkerKilledMidTransfer) { RestartMidTransfer(SIGKILL); }

TEST_F(VmRestartTest, UpgradeUnderTraffic) { RestartMidTransfer(SIGUSR2); }

}  // namespace
}  // namespace vsockd::vmtest
