// Real-guest traffic tests (issue 5): the test guest (Debian kernel under QEMU/TCG) talks
// through the real vsockd to host programs, with guestcheck (tests/guest/guestcheck.cc) on
// both sides: in the guest over kernel AF_VSOCK, on the host over vsockd's hybrid sockets
// (hvsock://<uds-path>:PORT, under no_vsock_guard). Every data byte is the shared pattern,
// checked by count and FNV-1a or byte for byte.
//
// Covered: 200 concurrent guest connections to a host echo service; 256 MiB each way;
// half-close both ways; refused connects both ways (the guest gets ECONNRESET promptly, the
// host an "ERR ..." line); a host peer SIGKILLed mid-transfer (the guest sees an error,
// vsockd keeps serving).
//
// One VM per suite (tests/vm/vm_fixture.h). Threading: the test thread (plus a writer
// thread in one test).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
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
using ::testing::Not;
using ::testing::StartsWith;
using vsockd::testing::BuiltBinary;
using vsockd::testing::EchoServer;
using vsockd::testing::Fnv1a;
using vsockd::testing::GuardBinary;
using vsockd::testing::HybridConnect;
using vsockd::testing::PatternBytes;
using vsockd::testing::ReadToEof;
using vsockd::testing::SetSocketTimeouts;
using vsockd::testing::Subprocess;
using vsockd::testing::WaitFor;
using Clock = std::chrono::steady_clock;

constexpr auto kCmd = std::chrono::seconds(120);
// 256 MiB through TCG on a shared machine: minutes, not seconds.
constexpr auto kBig = std::chrono::minutes(10);
constexpr uint64_t kBigBytes = 256ull << 20;

// The value of `key=` in a guestcheck line ("" if absent): "ok sent=5 ms=3", "sent" -> "5".
std::string Field(const std::string& text, const std::string& key) {
  std::string needle = key + "=";
  size_t at = 0;
  while ((at = text.find(needle, at)) != std::string::npos) {
    if (at == 0 || text[at - 1] == ' ' || text[at - 1] == '\n') {
      size_t start = at + needle.size();
      size_t end = text.find_first_of(" \n", start);
      return text.substr(start, end == std::string::npos ? std::string::npos : end - start);
    }
    at += needle.size();
  }
  return "";
}

// The first line of `text` starting with `prefix` ("" if none).
std::string LineStarting(const std::string& text, const std::string& prefix) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(prefix, 0) == 0) return line;
  }
  return "";
}

// The FNV-1a of PatternBytes(n, seed) without holding n bytes, as guestcheck prints it.
std::string PatternFnv(uint64_t n, uint64_t seed) {
  vsockd::testing::PatternStream stream(seed);
  vsockd::testing::Fnv1aStream fnv;
  std::vector<uint8_t> buf(1 << 20);
  while (n > 0) {
    size_t k = std::min<uint64_t>(n, buf.size());
    stream.Fill({buf.data(), k});
    fnv.Update({buf.data(), k});
    n -= k;
  }
  char out[32];
  std::snprintf(out, sizeof out, "0x%016llx", static_cast<unsigned long long>(fnv.hash()));
  return out;
}

double MBps(uint64_t bytes, long long ms) {
  return ms <= 0 ? 0.0 : static_cast<double>(bytes) / (1 << 20) / (static_cast<double>(ms) / 1000);
}

// Host-side guestcheck, under no_vsock_guard (hybrid addresses only; the guard makes an
// AF_VSOCK socket fail instead of reaching this machine's vsock).
std::vector<std::string> HostGuestcheck(std::vector<std::string> args) {
  std::vector<std::string> argv = {GuardBinary(), BuiltBinary("tests/guest/guestcheck")};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

struct HostRun {
  int status = -1;  // wait status; -1: killed on timeout
  std::string output;
};

// Runs a host program to completion (output to `log_path`), killing it after `timeout`.
HostRun RunHost(const std::vector<std::string>& argv, const std::string& log_path,
                std::chrono::milliseconds timeout) {
  HostRun r;
  Subprocess proc;
  Status started = proc.Start(argv, log_path);
  if (!started.ok()) {
    r.output = started.error().ToString();
    return r;
  }
  r.status = proc.Wait(timeout);
  r.output = proc.Log();
  return r;
}

bool ExitedOk(int status) { return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0; }

class VmTrafficTest : public VmFixture<VmTrafficTest> {
 protected:
  std::string GuestCat(const std::string& path) { return Diag("cat " + path); }
  std::string Hvsock(uint32_t port) {
    return "hvsock://" + daemon().uds_path() + ":" + std::to_string(port);
  }
};

// 1. 200 guest connections open at once to a host echo service, each checked byte for byte.
TEST_F(VmTrafficTest, TwoHundredConcurrentGuestConnectionsEchoExactly) {
  constexpr uint32_t kPort = 6100;
  EchoServer echo(HostPath(kPort));
  ASSERT_TRUE(echo.ok());
  auto start = Clock::now();
  auto r = vm().Run("guestcheck echo-many vsock://2:6100 --conns 200 --bytes 64K", kBig);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  long long ms = MsSince(start);
  EXPECT_EQ(r->exit_status, 0) << r->output << "\nvsockd log:\n" << DaemonLog();
  EXPECT_THAT(r->output, HasSubstr("ok conns=200 bytes=65536")) << r->output;
  EXPECT_EQ(echo.accepted(), 200);
  // guestcheck's barrier: no byte moves before all 200 connects finished, so the host saw
  // all of them open at once.
  EXPECT_EQ(echo.peak_open(), 200);
  EXPECT_TRUE(WaitFor([&] { return echo.open_now() == 0; }, std::chrono::seconds(30)))
      << echo.open_now() << " host connections still open";
  std::cout << "[ vm ] 200 x 64 KiB echoed in " << ms
            << " ms (guestcheck: " << Field(r->output, "ms") << " ms)\n";
  EXPECT_TRUE(daemon().Running()) << DaemonLog();
}

// 2. 256 MiB each way, checksummed on both ends.
TEST_F(VmTrafficTest, Transfers256MiBEachWayWithChecksums) {
  const std::string want_fnv = PatternFnv(kBigBytes, 1);

  // Guest -> host: a host sink on <uds-path>_6200 verifies the pattern.
  Subprocess sink;
  ASSERT_TRUE(sink.Start(HostGuestcheck({"serve", "--listen", Hvsock(6200), "--mode", "sink",
                                         "--bytes", "256M", "--verify"}),
                         dir().File("sink6200.log"))
                  .ok());
  ASSERT_TRUE(WaitFor([&] { return sink.Log().find("listening") != std::string::npos; },
                      std::chrono::seconds(30)))
      << sink.Log();
  auto start = Clock::now();
  auto sent = vm().Run("guestcheck send vsock://2:6200 --bytes 256M --expect none", kBig);
  ASSERT_TRUE(sent.ok()) << sent.error().ToString();
  long long up_ms = MsSince(start);
  EXPECT_EQ(sent->exit_status, 0) << sent->output << "\nhost:\n"
                                  << sink.Log() << "\nvsockd log:\n"
                                  << DaemonLog();
  std::string ok_line = LineStarting(sent->output, "ok ");
  EXPECT_EQ(Field(ok_line, "sent"), std::to_string(kBigBytes)) << sent->output;
  EXPECT_EQ(Field(ok_line, "sent_fnv"), want_fnv) << sent->output;
  EXPECT_EQ(Field(ok_line, "received"), "0") << sent->output;
  ASSERT_TRUE(WaitFor([&] { return !sink.Running(); }, std::chrono::seconds(60))) << sink.Log();
  std::string host_log = sink.Log();
  std::string got = LineStarting(host_log, "received ");
  EXPECT_EQ(Field(got, "bytes"), std::to_string(kBigBytes)) << host_log;
  EXPECT_EQ(Field(got, "fnv"), want_fnv) << host_log;
  // The peer the host saw is the guest (CID 3).
  EXPECT_THAT(Field(got, "peer"), StartsWith("vsock://3:")) << host_log;
  EXPECT_THAT(host_log, HasSubstr("ok conns=1")) << host_log;
  std::cout << "[ vm ] 256 MiB guest -> host in " << up_ms << " ms (" << MBps(kBigBytes, up_ms)
            << " MB/s; guest ms=" << Field(ok_line, "ms") << ")\n";

  // Host -> guest: a guest sink on port 6201 verifies the pattern.
  ASSERT_TRUE(vm().Spawn("guestcheck serve --port 6201 --mode sink --bytes 256M --verify",
                         "/tmp/sink6201.log")
                  .ok());
  ASSERT_TRUE(WaitGuestLog("/tmp/sink6201.log", "listening"));
  start = Clock::now();
  HostRun up =
      RunHost(HostGuestcheck({"send", Hvsock(6201), "--bytes", "256M", "--expect", "none"}),
              dir().File("send6201.log"), kBig);
  long long down_ms = MsSince(start);
  EXPECT_TRUE(ExitedOk(up.status)) << up.status << ": " << up.output << "\nvsockd log:\n"
                                   << DaemonLog();
  std::string host_ok = LineStarting(up.output, "ok ");
  EXPECT_EQ(Field(host_ok, "sent"), std::to_string(kBigBytes)) << up.output;
  EXPECT_EQ(Field(host_ok, "sent_fnv"), want_fnv) << up.output;
  ASSERT_TRUE(WaitGuestLog("/tmp/sink6201.log", "ok conns=1"));
  std::string guest_log = GuestCat("/tmp/sink6201.log");
  std::string guest_got = LineStarting(guest_log, "received ");
  EXPECT_EQ(Field(guest_got, "bytes"), std::to_string(kBigBytes)) << guest_log;
  EXPECT_EQ(Field(guest_got, "fnv"), want_fnv) << guest_log;
  // The guest sees the host as CID 2.
  EXPECT_THAT(Field(guest_got, "peer"), StartsWith("vsock://2:")) << guest_log;
  std::cout << "[ vm ] 256 MiB host -> guest in " << down_ms << " ms (" << MBps(kBigBytes, down_ms)
            << " MB/s; host ms=" << Field(host_ok, "ms") << ")\n";
  EXPECT_TRUE(daemon().Running()) << DaemonLog();
}

// 3. Half-close both ways: the side that shut down its write side still reads everything.
TEST_F(VmTrafficTest, HalfCloseKeepsTheOtherDirectionBothWays) {
  // Guest -> host echo: the guest shuts down its write side, then reads the whole echo.
  EchoServer echo(HostPath(6300));
  ASSERT_TRUE(echo.ok());
  auto r = vm().Run("guestcheck send vsock://2:6300 --bytes 1M --expect echo", kCmd);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->exit_status, 0) << r->output << "\nvsockd log:\n" << DaemonLog();
  std::string line = LineStarting(r->output, "ok ");
  EXPECT_EQ(Field(line, "sent"), "1048576") << r->output;
  EXPECT_EQ(Field(line, "received"), "1048576") << r->output;
  EXPECT_EQ(Field(line, "received_fnv"), Field(line, "sent_fnv")) << r->output;
  EXPECT_EQ(Field(line, "sent_fnv"), PatternFnv(1 << 20, 1)) << r->output;
  EXPECT_EQ(echo.accepted(), 1);

  // Host -> guest echo, twice: host guestcheck, then by hand (shutdown(SHUT_WR), read to EOF).
  ASSERT_TRUE(
      vm().Spawn("guestcheck serve --port 6301 --mode echo --count 2", "/tmp/echo6301.log").ok());
  ASSERT_TRUE(WaitGuestLog("/tmp/echo6301.log", "listening"));
  HostRun h = RunHost(HostGuestcheck({"send", Hvsock(6301), "--bytes", "1M", "--expect", "echo"}),
                      dir().File("send6301.log"), kCmd);
  EXPECT_TRUE(ExitedOk(h.status)) << h.status << ": " << h.output << "\nvsockd log:\n"
                                  << DaemonLog();
  std::string host_ok = LineStarting(h.output, "ok ");
  EXPECT_EQ(Field(host_ok, "received"), "1048576") << h.output;
  EXPECT_EQ(Field(host_ok, "received_fnv"), PatternFnv(1 << 20, 1)) << h.output;

  std::string reply;
  auto conn = HybridConnect(daemon().uds_path(), 6301, &reply);
  ASSERT_TRUE(conn.ok()) << conn.error().ToString() << "\n" << GuestCat("/tmp/echo6301.log");
  SetSocketTimeouts(conn->get(), std::chrono::seconds(120));
  const auto data = PatternBytes(1 << 20, 42);
  Status wrote;
  std::thread writer([&] {
    wrote = WriteAll(conn->get(), data.data(), data.size());
    ::shutdown(conn->get(), SHUT_WR);
  });
  int err = 0;
  std::string back = ReadToEof(conn->get(), &err);
  writer.join();
  ASSERT_TRUE(wrote.ok()) << wrote.error().ToString();
  EXPECT_EQ(err, 0) << "the read ended with " << strerror(err) << ", not EOF";
  ASSERT_EQ(back.size(), data.size()) << DaemonLog();
  EXPECT_EQ(Fnv1a({reinterpret_cast<const uint8_t*>(back.data()), back.size()}), Fnv1a(data));
  conn->Reset();
  ASSERT_TRUE(WaitGuestLog("/tmp/echo6301.log", "ok conns=2"));
  std::string guest_log = GuestCat("/tmp/echo6301.log");
  EXPECT_THAT(guest_log, HasSubstr("echoed bytes=1048576 conn=0")) << guest_log;
  EXPECT_THAT(guest_log, HasSubstr("echoed bytes=1048576 conn=1")) << guest_log;
}

// 4. A guest connect to a host port nobody serves fails promptly with ECONNRESET.
TEST_F(VmTrafficTest, GuestConnectToAnUnservedHostPortIsResetPromptly) {
  // python3 straight on the kernel socket (no library between).
  auto py = vm().Run(
      "python3 -c 'exec(\"import socket,time\\ns=socket.socket(socket.AF_VSOCK,socket.SOCK_STREAM)"
      "\\nt=time.monotonic()\\ntry:\\n  s.connect((2,6400))\\n  r=\\\"connected\\\"\\n"
      "except OSError as e:\\n  r=type(e).__name__\\nprint(r, int((time.monotonic()-t)*1000))\")'",
      kCmd);
  ASSERT_TRUE(py.ok()) << py.error().ToString();
  ASSERT_EQ(py->exit_status, 0) << py->output;
  std::istringstream words(py->output);
  std::string what;
  long long ms = -1;
  words >> what >> ms;
  EXPECT_EQ(what, "ConnectionResetError") << py->output;
  ASSERT_GE(ms, 0) << py->output;
  std::cout << "[ vm ] python connect to an unserved host port failed after " << ms << " ms\n";
  // "Promptly": well under the 2 s connect timeout the guest would otherwise wait... not a
  // speed test, only a bound far above any plausible TCG latency.
  EXPECT_LT(ms, 5000) << py->output;

  auto gc = vm().Run("guestcheck expect-refused vsock://2:6400 --errno ECONNRESET", kCmd);
  ASSERT_TRUE(gc.ok()) << gc.error().ToString();
  EXPECT_EQ(gc->exit_status, 0) << gc->output;
  EXPECT_THAT(gc->output, HasSubstr("ok refused errno=")) << gc->output;
  std::cout << "[ vm ] guestcheck expect-refused: " << Field(gc->output, "ms") << " ms\n";
  EXPECT_TRUE(daemon().Running()) << DaemonLog();
}

// 5. A host connect to a guest port nobody serves gets a clear "ERR" refusal.
TEST_F(VmTrafficTest, HostConnectToAnUnservedGuestPortGetsAnErrLine) {
  std::string reply;
  auto start = Clock::now();
  auto conn = HybridConnect(daemon().uds_path(), 6500, &reply);
  long long ms = MsSince(start);
  ASSERT_FALSE(conn.ok()) << "connected to a guest port nobody serves; reply '" << reply << "'";
  EXPECT_THAT(reply, StartsWith("ERR ")) << conn.error().ToString();
  EXPECT_THAT(reply, HasSubstr("connection refused by guest port 6500"));
  EXPECT_THAT(reply, Not(HasSubstr("OK")));
  std::cout << "[ vm ] host connect to an unserved guest port refused after " << ms << " ms: '"
            << reply << "'\n";

  // The same through the host guestcheck (libvsock's hybrid connector).
  HostRun h = RunHost(HostGuestcheck({"expect-refused", Hvsock(6500)}),
                      dir().File("refused6500.log"), kCmd);
  EXPECT_TRUE(ExitedOk(h.status)) << h.status << ": " << h.output;
  EXPECT_THAT(h.output, HasSubstr("ok refused")) << h.output;
}

// 6. A host peer killed mid-transfer: the guest's connection ends with an error, and vsockd
// serves new connections both ways right after.
TEST_F(VmTrafficTest, HostPeerKilledMidTransferLeavesVsockdServing) {
  Subprocess sink;
  ASSERT_TRUE(sink.Start(HostGuestcheck({"serve", "--listen", Hvsock(6600), "--mode", "sink",
                                         "--progress", "1M"}),
                         dir().File("sink6600.log"))
                  .ok());
  ASSERT_TRUE(WaitFor([&] { return sink.Log().find("listening") != std::string::npos; },
                      std::chrono::seconds(30)))
      << sink.Log();
  // A long guest stream (4 GiB: far more than the test lets through) in the background.
  ASSERT_TRUE(vm().Spawn("guestcheck send vsock://2:6600 --bytes 4G --expect none; "
                         "echo exit=$?",
                         "/tmp/send6600.log")
                  .ok());
  // The host sink dies mid-transfer: once it has received 1 MiB.
  ASSERT_TRUE(WaitFor([&] { return sink.Log().find("progress") != std::string::npos; }, kCmd))
      << sink.Log();
  ASSERT_TRUE(sink.Running()) << sink.Log();
  auto killed = Clock::now();
  int status = sink.Stop(SIGKILL);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  ASSERT_TRUE(WaitGuestLog("/tmp/send6600.log", "exit=", std::chrono::seconds(60)));
  long long ms = MsSince(killed);
  std::string guest_log = GuestCat("/tmp/send6600.log");
  std::cout << "[ vm ] guest sender ended " << ms
            << " ms after the host peer was killed: " << guest_log << "\n";
  // The guest's side ends with an error: vsockd answers the dead peer with RST (the guest
  // sees ECONNRESET) or SHUTDOWN(RCV|SEND) (the guest's next write fails with EPIPE), never
  // a successful end of the stream.
  EXPECT_THAT(guest_log, HasSubstr("exit=1")) << guest_log;
  EXPECT_THAT(guest_log, Not(HasSubstr("ok sent"))) << guest_log;
  EXPECT_THAT(guest_log, ::testing::AnyOf(HasSubstr("ECONNRESET"), HasSubstr("EPIPE"),
                                          HasSubstr("reset by peer"), HasSubstr("Broken pipe")))
      << guest_log;
  EXPECT_TRUE(daemon().Running()) << DaemonLog();

  // New connections both ways right after.
  EchoServer echo(HostPath(6601));
  ASSERT_TRUE(echo.ok());
  auto r = vm().Run("guestcheck send vsock://2:6601 --bytes 256K --expect echo", kCmd);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->exit_status, 0) << r->output << "\nvsockd log:\n" << DaemonLog();
  ASSERT_TRUE(vm().Spawn("guestcheck serve --port 6602 --mode echo", "/tmp/echo6602.log").ok());
  ASSERT_TRUE(WaitGuestLog("/tmp/echo6602.log", "listening"));
  HostRun h = RunHost(HostGuestcheck({"send", Hvsock(6602), "--bytes", "256K", "--expect", "echo"}),
                      dir().File("send6602.log"), kCmd);
  EXPECT_TRUE(ExitedOk(h.status)) << h.status << ": " << h.output << "\nvsockd log:\n"
                                  << DaemonLog();
  EXPECT_EQ(Field(LineStarting(h.output, "ok "), "received"), "262144") << h.output;
}

}  // namespace
}  // namespace vsockd::vmtest
