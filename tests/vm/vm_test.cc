// Real-guest tests: the test guest (scripts/build-guest.sh) boots under QEMU (TCG) with
// vhost-user-vsock-pci attached to the real vsockd, and kernel AF_VSOCK sockets inside the
// guest (socat) talk to host programs over vsockd's hybrid Unix sockets. Nothing AF_VSOCK
// runs on the host.
//
// One VM per test suite (tests/vm/vm_fixture.h).
#include "tests/vm/vm.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <thread>

#include "base/unix_socket.h"
#include "tests/integration/echo_server.h"
#include "tests/integration/harness.h"
#include "tests/vm/vm_fixture.h"

namespace vsockd::vmtest {
namespace {

using ::testing::HasSubstr;
using vsockd::testing::EchoServer;
using vsockd::testing::Fnv1a;
using vsockd::testing::PatternBytes;
using vsockd::testing::ReadToEof;
using vsockd::testing::SetSocketTimeouts;

constexpr auto kCmd = std::chrono::seconds(60);

class VmTest : public VmFixture<VmTest> {};

TEST_F(VmTest, RunsCommandsInTheGuest) {
  auto hi = vm().Run("echo hi", kCmd);
  ASSERT_TRUE(hi.ok()) << hi.error().ToString();
  EXPECT_EQ(hi->exit_status, 0);
  EXPECT_EQ(hi->output, "hi");
  auto f = vm().Run("false", kCmd);
  ASSERT_TRUE(f.ok()) << f.error().ToString();
  EXPECT_EQ(f->exit_status, 1);
  EXPECT_EQ(f->output, "");
  // Quoting survives the serial console and busybox sh.
  auto q = vm().Run(R"(printf '%s|' "a  b" 'c"d' "it's"; exit 5)", kCmd);
  ASSERT_TRUE(q.ok()) << q.error().ToString();
  EXPECT_EQ(q->exit_status, 5);
  EXPECT_EQ(q->output, "a  b|c\"d|it's|");
  // The guest is the one we asked for: its vsock device exists, and reads CID 3 from vsockd.
  auto dev = vm().RunOk("test -c /dev/vsock && echo yes", kCmd);
  ASSERT_TRUE(dev.ok()) << dev.error().ToString();
  EXPECT_EQ(*dev, "yes");
  // IOCTL_VM_SOCKETS_GET_LOCAL_CID (0x7b9) on /dev/vsock: the CID vsockd's GET_CONFIG gave.
  auto cid = vm().RunOk(
      "python3 -c \"import fcntl, struct; f = open('/dev/vsock', 'rb'); "
      "print(struct.unpack('I', fcntl.ioctl(f, 0x7b9, bytes(4)))[0])\"",
      kCmd);
  ASSERT_TRUE(cid.ok()) << cid.error().ToString();
  EXPECT_EQ(*cid, std::to_string(kGuestCid));

  // Round-trip latency of a trivial command (reported, not asserted).
  auto start = std::chrono::steady_clock::now();
  constexpr int kRuns = 10;
  for (int i = 0; i < kRuns; ++i) ASSERT_TRUE(vm().RunOk("true", kCmd).ok());
  auto per = std::chrono::duration_cast<std::chrono::microseconds>(
                 std::chrono::steady_clock::now() - start) /
             kRuns;
  std::cout << "[ vm ] `true` round trip: " << per.count() / 1000.0 << " ms\n";
}

TEST_F(VmTest, GuestConnectsToAHostService) {
  // Guest -> host port 5000 reaches <uds-path>_5000 (the hybrid convention).
  EchoServer echo(HostPath(5000));
  ASSERT_TRUE(echo.ok());
  auto line = vm().Run("echo hello-from-guest | socat -t 30 - VSOCK-CONNECT:2:5000", kCmd);
  ASSERT_TRUE(line.ok()) << line.error().ToString();
  EXPECT_EQ(line->exit_status, 0) << line->output << "\n" << DaemonLog();
  EXPECT_EQ(line->output, "hello-from-guest");
  EXPECT_EQ(echo.accepted(), 1);

  // 1 MiB through the host echo and back, compared in the guest.
  auto made = vm().RunOk("head -c 1048576 /dev/urandom > /tmp/in && wc -c < /tmp/in", kCmd);
  ASSERT_TRUE(made.ok()) << made.error().ToString();
  EXPECT_EQ(*made, "1048576");
  auto moved = vm().RunOk("socat -t 30 - VSOCK-CONNECT:2:5000 < /tmp/in > /tmp/out", kCmd);
  ASSERT_TRUE(moved.ok()) << moved.error().ToString() << "\n" << DaemonLog();
  auto sums = vm().RunOk("md5sum < /tmp/in; md5sum < /tmp/out; wc -c < /tmp/out", kCmd);
  ASSERT_TRUE(sums.ok()) << sums.error().ToString();
  size_t nl = sums->find('\n');
  ASSERT_NE(nl, std::string::npos) << *sums;
  std::string in_sum = sums->substr(0, nl);
  EXPECT_EQ(*sums, in_sum + "\n" + in_sum + "\n1048576");
  EXPECT_EQ(echo.accepted(), 2);

  // Nobody listens on port 5999: the guest's connect fails, and the guest goes on.
  auto refused = vm().Run("echo x | socat -t 5 - VSOCK-CONNECT:2:5999", kCmd);
  ASSERT_TRUE(refused.ok()) << refused.error().ToString();
  EXPECT_NE(refused->exit_status, 0) << refused->output;
}

TEST_F(VmTest, HostConnectsToAGuestListener) {
  // Guest port 5002 echoes (socat + cat); the host reaches it with CONNECT 5002 on uds-path.
  ASSERT_TRUE(vm().Spawn("socat -t 30 VSOCK-LISTEN:5002 EXEC:cat", "/tmp/listen5002.log").ok());
  std::string reply;
  // The listener needs a moment to come up: each early try gets "ERR ..." (guest reset).
  auto connected = ConnectToGuest(5002, std::chrono::seconds(60), &reply);
  ASSERT_TRUE(connected.ok()) << connected.error().ToString() << "\n"
                              << Diag("cat /tmp/listen5002.log") << "\n"
                              << DaemonLog();
  EXPECT_THAT(reply, ::testing::StartsWith("OK "));
  Fd conn = std::move(*connected);
  SetSocketTimeouts(conn.get(), std::chrono::seconds(60));

  // 512 KiB both ways at once (a writer thread, so neither side waits for the other).
  const auto data = PatternBytes(512 * 1024, 7);
  Status wrote;
  std::thread writer([&] {
    wrote = WriteAll(conn.get(), data.data(), data.size());
    ::shutdown(conn.get(), SHUT_WR);
  });
  std::string back = ReadToEof(conn.get());
  writer.join();
  ASSERT_TRUE(wrote.ok()) << wrote.error().ToString();
  ASSERT_EQ(back.size(), data.size()) << DaemonLog();
  EXPECT_EQ(Fnv1a({reinterpret_cast<const uint8_t*>(back.data()), back.size()}), Fnv1a(data));
  conn.Reset();

  // Distinct data each way, checked on both sides: the guest answers with a line and keeps
  // what it received.
  ASSERT_TRUE(vm().RunOk("printf '#!/bin/sh\\necho from-guest\\ncat > /tmp/got\\n' > /tmp/s.sh "
                         "&& chmod +x /tmp/s.sh",
                         kCmd)
                  .ok());
  ASSERT_TRUE(
      vm().Spawn("socat -t 30 VSOCK-LISTEN:5003 EXEC:/tmp/s.sh", "/tmp/listen5003.log").ok());
  connected = ConnectToGuest(5003);
  ASSERT_TRUE(connected.ok()) << connected.error().ToString() << "\n" << DaemonLog();
  conn = std::move(*connected);
  SetSocketTimeouts(conn.get(), std::chrono::seconds(60));
  const std::string to_guest = "to-guest over hybrid\n";
  ASSERT_TRUE(WriteAll(conn.get(), to_guest.data(), to_guest.size()).ok());
  ::shutdown(conn.get(), SHUT_WR);
  EXPECT_EQ(ReadToEof(conn.get()), "from-guest\n");
  conn.Reset();
  // socat has exited once the host saw EOF, so /tmp/got is complete.
  auto got = vm().RunOk("cat /tmp/got", kCmd);
  ASSERT_TRUE(got.ok()) << got.error().ToString();
  EXPECT_EQ(*got, "to-guest over hybrid");
}

TEST_F(VmTest, TimeoutKillsQemuAndVsockdServesTheNextVm) {
  pid_t qemu = vm().pid();
  auto r = vm().Run("echo waiting; sleep 600", std::chrono::seconds(3));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ETIMEDOUT);
  EXPECT_THAT(r.error().ToString(), HasSubstr("waiting"));
  EXPECT_FALSE(vm().Running());
  // Killed and reaped: the pid is gone, not even a zombie.
  EXPECT_EQ(::kill(qemu, 0), -1);
  EXPECT_EQ(errno, ESRCH);
  // vsockd outlives its frontend and serves the next QEMU.
  EXPECT_TRUE(daemon().Running()) << DaemonLog();
  ASSERT_NO_FATAL_FAILURE(EnsureVm());
  EXPECT_NE(vm().pid(), qemu);
  EchoServer echo(HostPath(5010));
  ASSERT_TRUE(echo.ok());
  auto line = vm().Run("echo again | socat -t 30 - VSOCK-CONNECT:2:5010", kCmd);
  ASSERT_TRUE(line.ok()) << line.error().ToString();
  EXPECT_EQ(line->exit_status, 0) << line->output << "\n" << DaemonLog();
  EXPECT_EQ(line->output, "again");
}

}  // namespace
}  // namespace vsockd::vmtest
