// Real-guest lifecycle tests (issue 5): what the host ends of vsock connections see when the
// guest's virtio-vsock driver restarts (vsockd keeps running and must drop exactly the lost
// connections: it infers a driver reset from rings restarting at new addresses or index 0),
// and when QEMU exits (power-off or crash) and a new QEMU attaches to the same vsockd.
//
// One VM per suite (tests/vm/vm_fixture.h); vsockd runs with --log-level debug so its
// driver-reset line can be checked. Threading: the test thread.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "base/unix_socket.h"
#include "tests/integration/echo_server.h"
#include "tests/integration/harness.h"
#include "tests/vm/vm.h"
#include "tests/vm/vm_fixture.h"

namespace vsockd::vmtest {
namespace {

using ::testing::HasSubstr;
using vsockd::testing::EchoServer;
using vsockd::testing::Fnv1a;
using vsockd::testing::PatternBytes;
using vsockd::testing::ReadToEof;
using vsockd::testing::SetSocketTimeouts;
using Clock = std::chrono::steady_clock;

constexpr auto kCmd = std::chrono::seconds(120);

// How a host end of a connection ended.
struct HostEnd {
  bool ended = false;    // EOF or an error within the wait
  int err = 0;           // errno of the failed read (0: EOF)
  size_t received = 0;   // bytes read before the end
  Clock::time_point at;  // when the end was seen
};

// Reads (discarding) from `fd` until EOF, an error, or `timeout`.
HostEnd WaitForEnd(int fd, std::chrono::milliseconds timeout) {
  HostEnd end;
  const auto deadline = Clock::now() + timeout;
  char buf[65536];
  while (Clock::now() < deadline) {
    pollfd p = {fd, POLLIN, 0};
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    int n = ::poll(&p, 1, static_cast<int>(std::max<long long>(left, 1)));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) continue;
    ssize_t r = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (r > 0) {
      end.received += static_cast<size_t>(r);
      continue;
    }
    end.ended = true;
    end.err = r < 0 ? errno : 0;
    end.at = Clock::now();
    return end;
  }
  return end;
}

std::string Describe(const HostEnd& e) {
  if (!e.ended) return "still open";
  return e.err == 0 ? "EOF" : std::string("error ") + strerror(e.err);
}

// Accepts one connection on a non-blocking listener within `timeout`.
Result<Fd> AcceptWithin(int listener, std::chrono::milliseconds timeout) {
  pollfd p = {listener, POLLIN, 0};
  int n = ::poll(&p, 1, static_cast<int>(timeout.count()));
  if (n <= 0) return MakeError(ETIMEDOUT, "no connection on the host listener");
  int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) return ErrnoError("accept");
  return Fd(fd);
}

class VmLifecycleTest : public VmFixture<VmLifecycleTest> {
 public:
  static std::vector<std::string> DaemonArgs() { return {"--log-level", "debug"}; }

 protected:
  // Traffic both ways on fresh connections: a guest -> host echo round trip through an
  // EchoServer, and a host -> guest echo round trip through a guest `guestcheck serve`.
  void CheckTrafficBothWays(uint32_t host_port, uint32_t guest_port) {
    EchoServer echo(HostPath(host_port));
    ASSERT_TRUE(echo.ok());
    auto r = vm().Run(
        "guestcheck send vsock://2:" + std::to_string(host_port) + " --bytes 256K --expect echo",
        kCmd);
    ASSERT_TRUE(r.ok()) << r.error().ToString();
    EXPECT_EQ(r->exit_status, 0) << r->output << "\nvsockd log:\n" << DaemonLog();
    EXPECT_THAT(r->output, HasSubstr("received=262144")) << r->output;
    EXPECT_EQ(echo.accepted(), 1);

    const std::string log = "/tmp/echo" + std::to_string(guest_port) + ".log";
    ASSERT_TRUE(
        vm().Spawn("guestcheck serve --port " + std::to_string(guest_port) + " --mode echo", log)
            .ok());
    ASSERT_TRUE(WaitGuestLog(log, "listening"));
    auto conn = ConnectToGuest(guest_port);
    ASSERT_TRUE(conn.ok()) << conn.error().ToString() << "\nvsockd log:\n" << DaemonLog();
    SetSocketTimeouts(conn->get(), std::chrono::seconds(60));
    const auto data = PatternBytes(64 * 1024, 9);
    ASSERT_TRUE(WriteAll(conn->get(), data.data(), data.size()).ok());
    ::shutdown(conn->get(), SHUT_WR);
    std::string back = ReadToEof(conn->get());
    ASSERT_EQ(back.size(), data.size()) << DaemonLog();
    EXPECT_EQ(Fnv1a({reinterpret_cast<const uint8_t*>(back.data()), back.size()}), Fnv1a(data));
    EXPECT_TRUE(WaitGuestLog(log, "ok conns=1"));
  }

  // A guest -> host connection held open by `guestcheck hold` in the guest, whose host end
  // the test accepted on HostPath(port). `listener` keeps the host socket path alive.
  void OpenGuestToHost(uint32_t port, Fd* listener, Fd* host_end) {
    auto l = ListenUnix(HostPath(port));
    ASSERT_TRUE(l.ok()) << l.error().ToString();
    *listener = std::move(*l);
    const std::string log = "/tmp/hold" + std::to_string(port) + ".log";
    ASSERT_TRUE(
        vm().Spawn("guestcheck hold vsock://2:" + std::to_string(port) + " --expect any", log)
            .ok());
    auto a = AcceptWithin(listener->get(), std::chrono::seconds(60));
    ASSERT_TRUE(a.ok()) << a.error().ToString() << "\n" << Diag("cat " + log);
    *host_end = std::move(*a);
    ASSERT_TRUE(WaitGuestLog(log, "connected"));
    // The connection carries data before the event.
    const std::string hello = "hello\n";
    ASSERT_TRUE(WriteAll(host_end->get(), hello.data(), hello.size()).ok());
  }
};

// 7. The guest restarts its virtio-vsock driver while vsockd runs: the host ends of the
// connections the guest lost see EOF promptly, and new connections work both ways.
TEST_F(VmLifecycleTest, GuestDriverRestartDropsConnectionsAndTrafficResumes) {
  // The modules the restart touches are where /init loaded them from.
  auto mods = vm().RunOk(
      "cd /lib/modules/$(uname -r) && ls vmw_vsock_virtio_transport.ko && "
      "cat /sys/module/vmw_vsock_virtio_transport/refcnt",
      kCmd);
  ASSERT_TRUE(mods.ok()) << mods.error().ToString();

  Fd listener, g2h;
  ASSERT_NO_FATAL_FAILURE(OpenGuestToHost(7100, &listener, &g2h));
  ASSERT_TRUE(vm().Spawn("guestcheck serve --port 7101 --mode hold", "/tmp/hold7101.log").ok());
  ASSERT_TRUE(WaitGuestLog("/tmp/hold7101.log", "listening"));
  auto h2g = ConnectToGuest(7101);
  ASSERT_TRUE(h2g.ok()) << h2g.error().ToString() << "\n" << DaemonLog();
  const std::string hello = "to-guest\n";
  ASSERT_TRUE(WriteAll(h2g->get(), hello.data(), hello.size()).ok());
  // Nothing ended yet.
  EXPECT_FALSE(WaitForEnd(g2h.get(), std::chrono::milliseconds(200)).ended);
  EXPECT_FALSE(WaitForEnd(h2g->get(), std::chrono::milliseconds(200)).ended);

  // With connections open the transport module is in use (each connected socket holds a
  // reference), so `rmmod` must fail; the driver is restarted through sysfs instead
  // (unbind + bind: virtio_vsock_remove resets every connected socket and the device, the
  // probe allocates new rings), which is the same device-side event as a module reload.
  auto rm = vm().Run("rmmod vmw_vsock_virtio_transport", kCmd);
  ASSERT_TRUE(rm.ok()) << rm.error().ToString();
  std::cout << "[ vm ] rmmod with connections open: exit " << rm->exit_status << " (" << rm->output
            << ")\n";
  Clock::time_point restarted;
  if (rm->exit_status == 0) {
    // Unloaded after all (a kernel that does not pin the module): load it again.
    auto ins = vm().RunOk("insmod /lib/modules/$(uname -r)/vmw_vsock_virtio_transport.ko", kCmd);
    restarted = Clock::now();
    ASSERT_TRUE(ins.ok()) << ins.error().ToString();
  } else {
    auto rebind = vm().RunOk(
        "d=/sys/bus/virtio/drivers/vmw_vsock_virtio_transport; dev=$(ls $d | grep '^virtio'); "
        "echo $dev > $d/unbind && echo $dev > $d/bind && echo $dev",
        kCmd);
    restarted = Clock::now();
    ASSERT_TRUE(rebind.ok()) << rebind.error().ToString();
    std::cout << "[ vm ] rebound the virtio-vsock driver to " << *rebind << "\n";
  }
  ASSERT_TRUE(vm().WaitForVsockDevice().ok());

  HostEnd g2h_end = WaitForEnd(g2h.get(), std::chrono::seconds(30));
  HostEnd h2g_end = WaitForEnd(h2g->get(), std::chrono::seconds(30));
  auto since = [&](const HostEnd& e) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(e.at - restarted).count();
  };
  std::cout << "[ vm ] after the driver restart: guest->host end " << Describe(g2h_end) << " ("
            << (g2h_end.ended ? since(g2h_end) : -1) << " ms), host->guest end "
            << Describe(h2g_end) << " (" << (h2g_end.ended ? since(h2g_end) : -1) << " ms)\n";
  ASSERT_TRUE(g2h_end.ended) << "the guest -> host connection's host end stayed open\n"
                             << DaemonLog();
  ASSERT_TRUE(h2g_end.ended) << "the host -> guest connection's host end stayed open\n"
                             << DaemonLog();
  EXPECT_TRUE(g2h_end.err == 0 || g2h_end.err == ECONNRESET) << Describe(g2h_end);
  EXPECT_TRUE(h2g_end.err == 0 || h2g_end.err == ECONNRESET) << Describe(h2g_end);
  // "Promptly": a bound far above any TCG latency (the guest itself notices at once).
  EXPECT_LT(since(g2h_end), 10000);
  EXPECT_LT(since(h2g_end), 10000);
  std::string guest_logs = Diag("cat /tmp/hold7100.log /tmp/hold7101.log");
  std::cout << "[ vm ] guest side:\n" << guest_logs << "\n";

  std::string log = DaemonLog();
  EXPECT_THAT(log, HasSubstr("guest driver reset")) << log;
  EXPECT_TRUE(daemon().Running()) << log;

  ASSERT_NO_FATAL_FAILURE(CheckTrafficBothWays(7102, 7103));

  // The module reload itself, once no socket pins the module: the sockets the traffic
  // check just closed hold it until their close handshake ends (or the kernel's 8 s close
  // timeout), so rmmod is retried for up to 30 s; how long that took is reported.
  auto refs = Diag("cat /sys/module/vmw_vsock_virtio_transport/refcnt");
  auto unload_start = Clock::now();
  auto reload = vm().Run(
      "i=0; until rmmod vmw_vsock_virtio_transport 2>/dev/null; do i=$((i+1)); "
      "if [ $i -gt 300 ]; then cat /sys/module/vmw_vsock_virtio_transport/refcnt; exit 1; fi; "
      "sleep 0.1; done; insmod /lib/modules/$(uname -r)/vmw_vsock_virtio_transport.ko",
      kCmd);
  ASSERT_TRUE(reload.ok()) << reload.error().ToString();
  std::cout << "[ vm ] module references after the traffic check: " << refs
            << "; rmmod + insmod done after " << MsSince(unload_start) << " ms\n";
  ASSERT_EQ(reload->exit_status, 0) << reload->output;
  ASSERT_TRUE(vm().WaitForVsockDevice().ok());
  ASSERT_NO_FATAL_FAILURE(CheckTrafficBothWays(7104, 7105));
  EXPECT_TRUE(daemon().Running()) << DaemonLog();
}

// 8. QEMU exits (power-off, then a crash): the host end of an open guest -> host connection
// sees EOF promptly, vsockd keeps running, and a new QEMU on the same vhost-user socket
// carries traffic both ways.
TEST_F(VmLifecycleTest, NewQemuAttachesAfterPoweroffAndAfterCrash) {
  for (const bool crash : {false, true}) {
    SCOPED_TRACE(crash ? "crash (SIGKILL)" : "power-off");
    const uint32_t base = crash ? 7210 : 7200;
    Fd listener, g2h;
    ASSERT_NO_FATAL_FAILURE(OpenGuestToHost(base, &listener, &g2h));
    const pid_t old_qemu = vm().pid();
    auto gone = Clock::now();
    if (crash) {
      vm().Kill();
    } else {
      Status off = vm().Poweroff();
      ASSERT_TRUE(off.ok()) << off.error().ToString();
    }
    long long exit_ms = MsSince(gone);
    HostEnd end = WaitForEnd(g2h.get(), std::chrono::seconds(30));
    ASSERT_TRUE(end.ended) << "the host end stayed open after QEMU exited\n" << DaemonLog();
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(end.at - gone).count();
    std::cout << "[ vm ] " << (crash ? "QEMU killed" : "guest powered off") << " (QEMU gone after "
              << exit_ms << " ms): host end saw " << Describe(end) << " " << ms
              << " ms after the start\n";
    EXPECT_TRUE(end.err == 0 || end.err == ECONNRESET) << Describe(end);
    EXPECT_LT(ms, exit_ms + 10000);
    EXPECT_TRUE(daemon().Running()) << DaemonLog();
    EXPECT_FALSE(vm().Running());

    DropVm();
    ASSERT_NO_FATAL_FAILURE(EnsureVm());
    EXPECT_NE(vm().pid(), old_qemu);
    ASSERT_NO_FATAL_FAILURE(CheckTrafficBothWays(base + 1, base + 2));
  }
  EXPECT_TRUE(daemon().Running()) << DaemonLog();
}

}  // namespace
}  // namespace vsockd::vmtest
