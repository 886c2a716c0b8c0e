// Real-guest program tests: the project's and the seed's programs run inside the test guest
// (Debian's kernel under QEMU, TCG) against the real vsockd, with their host peers on
// vsockd's hybrid Unix sockets:
//  - the seed's vsock_client.py / vsock_server.py unmodified, guest -> host (the host server
//    under the LD_PRELOAD shim) and host -> guest (addresses swapped);
//  - libvsock's own guest test binary (loopback and host paths of the kernel AF_VSOCK code);
//  - vsockcat in the guest: connect relay, listen with half-close, TCP -> vsock forwarding;
//  - vsockperf in the guest against a host vsockperf server: throughput both ways, latency,
//    connect rate.
// Nothing AF_VSOCK runs on the host: host programs that could create one (the seed's python)
// run only under Shimmed(), i.e. under no_vsock_guard.
//
// One VM per suite (tests/vm/vm_fixture.h). Durations are printed ("[ vm ] ..."), never
// asserted.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "base/fd.h"
#include "tests/integration/echo_server.h"
#include "tests/integration/harness.h"
#include "tests/vm/vm.h"
#include "tests/vm/vm_fixture.h"

namespace vsockd::vmtest {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::Not;
using vsockd::testing::EchoServer;
using vsockd::testing::PathExists;
using vsockd::testing::PatternBytes;
using vsockd::testing::ReadFile;
using vsockd::testing::ReadToEof;
using vsockd::testing::RunCommand;
using vsockd::testing::SetSocketTimeouts;
using vsockd::testing::Shimmed;
using vsockd::testing::Subprocess;
using vsockd::testing::UnixListening;
using vsockd::testing::WaitFor;

using Clock = std::chrono::steady_clock;

constexpr auto kLong = std::chrono::seconds(600);  // big transfers under TCG

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The first word of `md5sum` output (host coreutils or guest busybox: "<hex>  -").
std::string FirstWord(const std::string& s) {
  size_t end = s.find_first_of(" \t\n");
  return s.substr(0, end);
}

// The MD5 of `bytes`, from the host's md5sum (the guest side uses busybox md5sum).
std::string HostMd5(const std::string& dir, const void* data, size_t len) {
  const std::string path = dir + "/md5-input";
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(static_cast<const char*>(data), static_cast<std::streamsize>(len));
  }
  auto r = RunCommand("md5sum < " + path);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  ::unlink(path.c_str());
  return FirstWord(r.output);
}

// Lines of `text` that contain `needle`.
std::vector<std::string> LinesWith(const std::string& text, const std::string& needle) {
  std::vector<std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find(needle) != std::string::npos) out.push_back(line);
  }
  return out;
}

// A number following `"key": ` at or after `from` in a vsockperf JSON document; nullopt if
// absent. (vsockperf's JSON is flat enough for this; its keys are fixed.)
std::optional<double> JsonField(const std::string& doc, const std::string& key, size_t from = 0) {
  const std::string k = "\"" + key + "\": ";
  size_t at = doc.find(k, from);
  if (at == std::string::npos) return std::nullopt;
  const char* p = doc.c_str() + at + k.size();
  char* end = nullptr;
  double v = std::strtod(p, &end);
  if (end == p) return std::nullopt;
  return v;
}

class VmProgramsTest : public VmFixture<VmProgramsTest> {};

// ---------------------------------------------------------------------------------------
// 1. The seed's programs, unmodified

TEST_F(VmProgramsTest, SeedClientInGuestReachesSeedServerOnHost) {
  const std::string run_dir = RunDir();
  Subprocess server;
  std::vector<std::string> argv = Shimmed(run_dir);
  argv.push_back("python3");
  argv.push_back(vsockd::testing::SeedProgram("vsock_server.py"));
  // Under sh, which reports the server's exit status in the log (Subprocess reaps it
  // without keeping the status).
  ASSERT_TRUE(
      server
          .Start({"/bin/sh", "-c", vsockd::testing::ShellLine(argv) + "; echo \"server-exit=$?\""},
                 dir().File("seed_server.log"))
          .ok());
  // The shim's listener for host port 9999 in the run dir, listening (not just bound).
  ASSERT_TRUE(WaitFor([&] { return UnixListening(run_dir + "/host_9999"); }, 60s))
      << "the host server did not listen:\n"
      << server.Log();

  auto start = Clock::now();
  auto r = vm().Run("python3 /seed/vsock_client.py", kGuestCommandTimeout);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->exit_status, 0) << r->output << "\n" << DaemonLog();
  EXPECT_EQ(r->output, "");
  ASSERT_TRUE(WaitFor([&] { return !server.Running(); }, 60s))
      << "the host server did not finish:\n"
      << server.Log();
  std::cout << "[ vm ] seed guest -> host: " << SecondsSince(start) << " s\n";
  const std::string log = server.Log();
  std::cout << log;
  EXPECT_THAT(log, HasSubstr("server-exit=0"));
  // The guest's CID (3) and some ephemeral port of its kernel.
  EXPECT_THAT(log, HasSubstr("Connection opened by cid=3 port="));
  EXPECT_THAT(log, HasSubstr("Received bytes: b'Hello, world!'"));
  EXPECT_THAT(log, Not(HasSubstr("Traceback")));
}

TEST_F(VmProgramsTest, SeedClientOnHostReachesSeedServerInGuest) {
  // The guest server listens on any CID (as a guest service does), made with sed from the
  // seed's file.
  ASSERT_TRUE(vm().RunOk("sed 's/^CID = socket.VMADDR_CID_HOST/CID = socket.VMADDR_CID_ANY/' "
                         "/seed/vsock_server.py > /tmp/vsock_server.py && "
                         "grep -c '^CID = socket.VMADDR_CID_ANY$' /tmp/vsock_server.py",
                         kGuestCommandTimeout)
                  .ok());
  ASSERT_TRUE(
      vm().Spawn("python3 -u /tmp/vsock_server.py; echo \"server-exit=$?\"", "/tmp/seed_server.log")
          .ok());

  // The host client connects to the guest's CID 3.
  std::string client = ReadFile(vsockd::testing::SeedProgram("vsock_client.py"));
  const std::string from = "CID = socket.VMADDR_CID_HOST";
  size_t at = client.find(from);
  ASSERT_NE(at, std::string::npos) << client;
  client.replace(at, from.size(), "CID = 3");
  const std::string client_path = dir().File("vsock_client_to_guest.py");
  std::ofstream(client_path) << client;
  std::vector<std::string> argv = Shimmed(RunDir());
  argv.push_back("python3");
  argv.push_back(client_path);

  // Python under TCG needs a while before it listens: retry while the connect is refused.
  auto start = Clock::now();
  vsockd::testing::RunResult r;
  int tries = 0;
  bool sent = WaitFor(
      [&] {
        ++tries;
        r = RunCommand(vsockd::testing::ShellLine(argv));
        if (r.exit_code == 0) return true;
        std::this_thread::sleep_for(200ms);
        return false;
      },
      120s);
  ASSERT_TRUE(sent) << "the host client could not reach the guest:\n"
                    << r.output << "\n"
                    << Diag("cat /tmp/seed_server.log");
  EXPECT_THAT(r.output, Not(HasSubstr("Traceback")));
  EXPECT_TRUE(WaitGuestLog("/tmp/seed_server.log", "server-exit="));
  std::string log = Diag("cat /tmp/seed_server.log");
  std::cout << "[ vm ] seed host -> guest: " << SecondsSince(start) << " s (" << tries
            << " client runs)\n"
            << log << "\n";
  EXPECT_THAT(log, HasSubstr("Connection opened by cid=2 port="));
  EXPECT_THAT(log, HasSubstr("Received bytes: b'Hello, world!'"));
  EXPECT_THAT(log, HasSubstr("server-exit=0"));
  EXPECT_THAT(log, Not(HasSubstr("Traceback")));
}

// ---------------------------------------------------------------------------------------
// 2. libvsock's AF_VSOCK paths, in the guest

TEST_F(VmProgramsTest, LibvsockGuestTestPasses) {
  constexpr uint32_t kEchoPort = 6200, kClosedPort = 6201;
  EchoServer echo(HostPath(kEchoPort));
  ASSERT_TRUE(echo.ok());
  ASSERT_FALSE(PathExists(HostPath(kClosedPort)));
  auto start = Clock::now();
  auto r = vm().Run("VSOCKD_HOST_ECHO_PORT=" + std::to_string(kEchoPort) +
                        " VSOCKD_HOST_CLOSED_PORT=" + std::to_string(kClosedPort) +
                        " /bin/libvsock_guest_test --gtest_color=no",
                    kLong);
  ASSERT_TRUE(r.ok()) << r.error().ToString() << "\n" << DaemonLog();
  std::cout << "[ vm ] libvsock_guest_test: " << SecondsSince(start) << " s\n";
  for (const auto& line : LinesWith(r->output, "[       OK ]")) std::cout << line << "\n";
  for (const auto& line : LinesWith(r->output, "[==========]")) std::cout << line << "\n";
  for (const auto& line : LinesWith(r->output, "[  PASSED  ]")) std::cout << line << "\n";
  EXPECT_EQ(r->exit_status, 0) << r->output << "\n" << DaemonLog();
  EXPECT_THAT(r->output, HasSubstr("[  PASSED  ]"));
  EXPECT_THAT(r->output, Not(HasSubstr("[  FAILED  ]"))) << r->output;
  EXPECT_THAT(r->output, Not(HasSubstr("[  SKIPPED ]"))) << r->output;
  // The host tests ran: the echo saw the two connections of EchoThroughVsockd and
  // NonBlockingConnectToTheHostEcho.
  EXPECT_THAT(r->output, HasSubstr("[       OK ] HostTest.EchoThroughVsockd"));
  EXPECT_THAT(r->output, HasSubstr("[       OK ] HostTest.NonBlockingConnectToTheHostEcho"));
  EXPECT_THAT(r->output, HasSubstr("[       OK ] HostTest.ClosedHostPortIsRefused"));
  EXPECT_EQ(echo.accepted(), 2);
}

// ---------------------------------------------------------------------------------------
// 3. vsockcat in the guest

TEST_F(VmProgramsTest, VsockcatRelaysStdioToAHostEcho) {
  constexpr uint32_t kPort = 6300;
  EchoServer echo(HostPath(kPort));
  ASSERT_TRUE(echo.ok());
  // A line.
  auto line = vm().Run("echo hello-vsockcat | vsockcat vsock://2:" + std::to_string(kPort),
                       kGuestCommandTimeout);
  ASSERT_TRUE(line.ok()) << line.error().ToString();
  EXPECT_EQ(line->exit_status, 0) << line->output << "\n" << DaemonLog();
  EXPECT_EQ(line->output, "hello-vsockcat");

  // 1 MiB of random bytes made in the guest, through the host echo and back.
  ASSERT_EQ(GuestOk("head -c 1048576 /dev/urandom > /tmp/vc_in && wc -c < /tmp/vc_in"), "1048576");
  auto start = Clock::now();
  auto moved =
      vm().Run("vsockcat -v host:" + std::to_string(kPort) + " < /tmp/vc_in > /tmp/vc_out", kLong);
  ASSERT_TRUE(moved.ok()) << moved.error().ToString();
  EXPECT_EQ(moved->exit_status, 0) << moved->output << "\n" << DaemonLog();
  std::cout << "[ vm ] vsockcat 1 MiB guest -> host echo -> guest: " << SecondsSince(start)
            << " s\n"
            << moved->output << "\n";
  const std::string sums =
      GuestOk("md5sum < /tmp/vc_in; md5sum < /tmp/vc_out; wc -c < /tmp/vc_out");
  std::istringstream in(sums);
  std::string in_sum, out_sum, size;
  std::getline(in, in_sum);
  std::getline(in, out_sum);
  std::getline(in, size);
  EXPECT_EQ(size, "1048576") << sums;
  EXPECT_EQ(FirstWord(out_sum), FirstWord(in_sum)) << sums;
  EXPECT_EQ(FirstWord(in_sum).size(), 32u) << sums;
  EXPECT_EQ(echo.accepted(), 2);
  GuestOk("rm -f /tmp/vc_in /tmp/vc_out");

  // Nobody listens on host port 6399: vsockcat reports the refusal and exits 1.
  auto refused = vm().Run("echo x | vsockcat vsock://2:6399", kGuestCommandTimeout);
  ASSERT_TRUE(refused.ok()) << refused.error().ToString();
  EXPECT_EQ(refused->exit_status, 1) << refused->output;
  EXPECT_THAT(refused->output, HasSubstr("refused")) << refused->output;
  EXPECT_EQ(echo.accepted(), 2);
}

TEST_F(VmProgramsTest, VsockcatListensInTheGuestWithHalfClose) {
  constexpr size_t kBytes = 1 << 20;
  ASSERT_EQ(
      GuestOk("head -c " + std::to_string(kBytes) + " /dev/urandom > /tmp/g2h && wc -c < /tmp/g2h"),
      std::to_string(kBytes));
  const std::string g2h_md5 = FirstWord(GuestOk("md5sum < /tmp/g2h"));
  const auto h2g = PatternBytes(kBytes, 41);
  const std::string h2g_md5 = HostMd5(dir().path(), h2g.data(), h2g.size());

  // Round 1, stdio mode, the guest closes first: vsockcat sends its stdin (the file), then
  // half-closes; the host reads all of it up to EOF, and only then sends its own data, which
  // the guest's vsockcat must still relay to its stdout.
  {
    constexpr uint32_t kPort = 6400;
    ASSERT_TRUE(vm().Spawn("vsockcat -l -v vsock://any:" + std::to_string(kPort) +
                               " < /tmp/g2h > /tmp/h2g_1; echo \"vsockcat-exit=$?\" >&2",
                           "/tmp/vsockcat_l1.log")
                    .ok());
    std::string reply;
    auto start = Clock::now();
    auto connected = ConnectToGuest(kPort, std::chrono::seconds(60), &reply);
    ASSERT_TRUE(connected.ok()) << connected.error().ToString() << "\n"
                                << Diag("cat /tmp/vsockcat_l1.log") << "\n"
                                << DaemonLog();
    Fd conn = std::move(*connected);
    EXPECT_THAT(reply, ::testing::StartsWith("OK "));
    SetSocketTimeouts(conn.get(), std::chrono::seconds(300));
    std::string from_guest = ReadToEof(conn.get());
    ASSERT_EQ(from_guest.size(), kBytes) << Diag("cat /tmp/vsockcat_l1.log");
    EXPECT_EQ(HostMd5(dir().path(), from_guest.data(), from_guest.size()), g2h_md5);
    // The guest has half-closed; its read side is still open.
    ASSERT_TRUE(WriteAll(conn.get(), h2g.data(), h2g.size()).ok());
    ::shutdown(conn.get(), SHUT_WR);
    EXPECT_TRUE(WaitGuestLog("/tmp/vsockcat_l1.log", "vsockcat-exit=", kLong));
    std::string log = Diag("cat /tmp/vsockcat_l1.log");
    conn.Reset();
    std::cout << "[ vm ] vsockcat -l, guest closes first, 1 MiB each way: " << SecondsSince(start)
              << " s\n"
              << log << "\n";
    EXPECT_THAT(log, HasSubstr("vsockcat-exit=0"));
    EXPECT_EQ(GuestOk("wc -c < /tmp/h2g_1; md5sum < /tmp/h2g_1"),
              std::to_string(kBytes) + "\n" + h2g_md5 + "  -");
  }

  // Round 2, the host closes first: -e runs a command per connection; it reads the
  // connection up to the host's EOF, and only then answers with its file.
  {
    constexpr uint32_t kPort = 6401;
    ASSERT_TRUE(vm().Spawn("vsockcat -l -v -e 'cat > /tmp/h2g_2; cat /tmp/g2h' vsock://any:" +
                               std::to_string(kPort) + "; echo \"vsockcat-exit=$?\" >&2",
                           "/tmp/vsockcat_l2.log")
                    .ok());
    auto start = Clock::now();
    auto connected = ConnectToGuest(kPort);
    ASSERT_TRUE(connected.ok()) << connected.error().ToString() << "\n"
                                << Diag("cat /tmp/vsockcat_l2.log") << "\n"
                                << DaemonLog();
    Fd conn = std::move(*connected);
    SetSocketTimeouts(conn.get(), std::chrono::seconds(300));
    ASSERT_TRUE(WriteAll(conn.get(), h2g.data(), h2g.size()).ok());
    ::shutdown(conn.get(), SHUT_WR);
    std::string from_guest = ReadToEof(conn.get());
    conn.Reset();
    ASSERT_EQ(from_guest.size(), kBytes) << Diag("cat /tmp/vsockcat_l2.log");
    EXPECT_EQ(HostMd5(dir().path(), from_guest.data(), from_guest.size()), g2h_md5);
    EXPECT_TRUE(WaitGuestLog("/tmp/vsockcat_l2.log", "vsockcat-exit=", kLong));
    std::string log = Diag("cat /tmp/vsockcat_l2.log");
    std::cout << "[ vm ] vsockcat -l -e, host closes first, 1 MiB each way: " << SecondsSince(start)
              << " s\n"
              << log << "\n";
    EXPECT_THAT(log, HasSubstr("vsockcat-exit=0"));
    EXPECT_EQ(GuestOk("wc -c < /tmp/h2g_2; md5sum < /tmp/h2g_2"),
              std::to_string(kBytes) + "\n" + h2g_md5 + "  -");
  }
  GuestOk("rm -f /tmp/g2h /tmp/h2g_1 /tmp/h2g_2");
}

TEST_F(VmProgramsTest, VsockcatForwardsGuestTcpToAHostEcho) {
  constexpr uint32_t kHostPort = 6500;
  constexpr int kTcpPort = 7500;
  constexpr int kClients = 8;
  constexpr size_t kBytes = 1 << 20;
  EchoServer echo(HostPath(kHostPort));
  ASSERT_TRUE(echo.ok());
  ASSERT_TRUE(vm().Spawn("vsockcat -v --forward tcp-listen:127.0.0.1:" + std::to_string(kTcpPort) +
                             " vsock://2:" + std::to_string(kHostPort) +
                             " & echo $! > /tmp/fwd.pid; wait",
                         "/tmp/fwd.log")
                  .ok());
  // Wait for the TCP listener (busybox netstat), inside the guest.
  auto listening = vm().Run("for i in $(seq 300); do netstat -ltn | grep -q '127.0.0.1:" +
                                std::to_string(kTcpPort) + " ' && exit 0; sleep 0.1; done; exit 1",
                            kGuestCommandTimeout);
  ASSERT_TRUE(listening.ok()) << listening.error().ToString();
  ASSERT_EQ(listening->exit_status, 0) << Diag("cat /tmp/fwd.log; netstat -ltn");

  // kClients socat TCP clients at once, each with its own random data.
  const std::string n = std::to_string(kClients);
  ASSERT_TRUE(vm().RunOk("for i in $(seq " + n + "); do head -c " + std::to_string(kBytes) +
                             " /dev/urandom > /tmp/fw_in_$i; done",
                         kGuestCommandTimeout)
                  .ok());
  auto start = Clock::now();
  auto run = vm().Run(
      "for i in $(seq " + n + "); do (socat -t 60 - TCP:127.0.0.1:" + std::to_string(kTcpPort) +
          " < /tmp/fw_in_$i > /tmp/fw_out_$i; echo \"client $i exit=$?\" > /tmp/fw_st_$i) & "
          "done; wait; for i in $(seq " +
          n +
          "); do cat /tmp/fw_st_$i; cmp /tmp/fw_in_$i /tmp/fw_out_$i && echo \"client $i same\"; "
          "done",
      kLong);
  ASSERT_TRUE(run.ok()) << run.error().ToString() << "\n" << DaemonLog();
  std::cout << "[ vm ] vsockcat --forward, " << kClients << " concurrent TCP clients x "
            << kBytes / 1024 << " KiB: " << SecondsSince(start) << " s (host echo peak "
            << echo.peak_open() << " open)\n";
  for (int i = 1; i <= kClients; ++i) {
    EXPECT_THAT(run->output, HasSubstr("client " + std::to_string(i) + " exit=0\n")) << run->output;
    EXPECT_THAT(run->output, HasSubstr("client " + std::to_string(i) + " same")) << run->output;
  }
  EXPECT_EQ(echo.accepted(), kClients);
  // The forwarder is still up after its connections ended; stop it.
  auto stop = vm().Run("kill $(cat /tmp/fwd.pid)", kGuestCommandTimeout);
  ASSERT_TRUE(stop.ok()) << stop.error().ToString();
  EXPECT_EQ(stop->exit_status, 0) << stop->output << "\n" << Diag("cat /tmp/fwd.log");
  GuestOk("rm -f /tmp/fw_in_* /tmp/fw_out_* /tmp/fw_st_*");
}

// ---------------------------------------------------------------------------------------
// 4. vsockperf in the guest against a host vsockperf server

class VsockperfServer {
 public:
  VsockperfServer(const std::string& uds_path, uint32_t port, const std::string& log)
      : path_(uds_path + "_" + std::to_string(port)) {
    start_ = proc_.Start(
        vsockd::testing::Guarded({vsockd::testing::BuiltBinary("src/tools/vsockperf/vsockperf"),
                                  "-s", "hvsock://" + uds_path + ":" + std::to_string(port)}),
        log);
  }
  // Started and listening on <uds-path>_<port>. Not just "the file exists": a previous
  // server's file may still be there until this one binds.
  bool Ready() {
    return start_.ok() && WaitFor([&] { return UnixListening(path_); }, std::chrono::seconds(30));
  }
  bool Running() { return proc_.Running(); }
  std::string Log() const { return proc_.Log(); }

 private:
  std::string path_;
  Subprocess proc_;
  Status start_;
};

constexpr uint32_t kPerfPort = 5201;

TEST_F(VmProgramsTest, VsockperfThroughputBothWays) {
  VsockperfServer server(daemon().uds_path(), kPerfPort, dir().File("vsockperf_tp.log"));
  ASSERT_TRUE(server.Ready()) << server.Log();
  constexpr uint64_t kBytes = 64ull << 20;
  for (bool reverse : {false, true}) {
    SCOPED_TRACE(reverse ? "host -> guest (-R)" : "guest -> host");
    auto start = Clock::now();
    auto r = vm().Run("vsockperf -c vsock://2:" + std::to_string(kPerfPort) +
                          " -n 64M -l 64K -i 0 --json" + (reverse ? " -R" : ""),
                      kLong);
    ASSERT_TRUE(r.ok()) << r.error().ToString() << "\n" << DaemonLog();
    const double secs = SecondsSince(start);
    ASSERT_EQ(r->exit_status, 0) << r->output << "\n" << server.Log() << "\n" << DaemonLog();
    size_t summary = r->output.find("\"summary\": ");
    ASSERT_NE(summary, std::string::npos) << r->output;
    size_t receiver = r->output.find("\"receiver\": {", summary);
    ASSERT_NE(receiver, std::string::npos) << r->output;
    auto bytes = JsonField(r->output, "bytes", receiver);
    auto seconds = JsonField(r->output, "seconds", receiver);
    auto bps = JsonField(r->output, "bits_per_second", receiver);
    ASSERT_TRUE(bytes && seconds && bps) << r->output;
    EXPECT_EQ(static_cast<uint64_t>(*bytes), kBytes) << r->output;
    EXPECT_GT(*bps, 0) << r->output;
    if (!reverse) {
      auto sent = JsonField(r->output, "bytes", r->output.find("\"sender\": {", summary));
      ASSERT_TRUE(sent) << r->output;
      EXPECT_EQ(static_cast<uint64_t>(*sent), kBytes) << r->output;
    }
    std::cout << "[ vm ] vsockperf " << (reverse ? "host -> guest (-R)" : "guest -> host")
              << " 64 MiB: receiver " << static_cast<uint64_t>(*bytes) << " bytes in " << *seconds
              << " s = " << *bps / 1e6 << " Mbit/s (command " << secs << " s)\n";
  }
  EXPECT_TRUE(server.Running()) << server.Log();
}

TEST_F(VmProgramsTest, VsockperfLatencyAndConnectRate) {
  VsockperfServer server(daemon().uds_path(), kPerfPort, dir().File("vsockperf_lat.log"));
  ASSERT_TRUE(server.Ready()) << server.Log();
  {
    auto r = vm().Run(
        "vsockperf -c vsock://2:" + std::to_string(kPerfPort) + " --latency --count 500 --json",
        kLong);
    ASSERT_TRUE(r.ok()) << r.error().ToString() << "\n" << DaemonLog();
    ASSERT_EQ(r->exit_status, 0) << r->output << "\n" << server.Log();
    size_t summary = r->output.find("\"summary\": ");
    ASSERT_NE(summary, std::string::npos) << r->output;
    auto trips = JsonField(r->output, "round_trips", summary);
    auto p50 = JsonField(r->output, "p50_us", summary);
    auto p99 = JsonField(r->output, "p99_us", summary);
    auto max = JsonField(r->output, "max_us", summary);
    ASSERT_TRUE(trips && p50 && p99 && max) << r->output;
    EXPECT_EQ(*trips, 500) << r->output;
    EXPECT_GT(*p50, 0) << r->output;
    EXPECT_LE(*p50, *p99) << r->output;
    EXPECT_LE(*p99, *max) << r->output;
    std::cout << "[ vm ] vsockperf --latency, 500 round trips of 64 bytes: p50 " << *p50
              << " us, p99 " << *p99 << " us, max " << *max << " us\n";
  }
  {
    auto r = vm().Run(
        "vsockperf -c vsock://2:" + std::to_string(kPerfPort) + " --connect-rate -t 2 --json",
        kLong);
    ASSERT_TRUE(r.ok()) << r.error().ToString() << "\n" << DaemonLog();
    ASSERT_EQ(r->exit_status, 0) << r->output << "\n" << server.Log();
    size_t summary = r->output.find("\"summary\": ");
    ASSERT_NE(summary, std::string::npos) << r->output;
    auto conns = JsonField(r->output, "connections", summary);
    auto rate = JsonField(r->output, "connections_per_second", summary);
    ASSERT_TRUE(conns && rate) << r->output;
    EXPECT_GT(*conns, 0) << r->output;
    EXPECT_GT(*rate, 0) << r->output;
    std::cout << "[ vm ] vsockperf --connect-rate 2 s: " << *conns << " connections, " << *rate
              << " conn/s\n";
  }
  EXPECT_TRUE(server.Running()) << server.Log();
}

}  // namespace
}  // namespace vsockd::vmtest
