// vsockperf: unit tests of the wire protocol and the formatting, and smoke tests of the
// binary against the real vsockd in both directions (hybrid and vguest transports only:
// never AF_VSOCK here).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "base/unix_socket.h"
#include "tests/integration/harness.h"
#include "tools/vsockperf/protocol.h"
#include "tools/vsockperf/report.h"

namespace vsockd::vsockperf {
namespace {

using nlohmann::json;
using testing::BuiltBinary;
using testing::Daemon;
using testing::Guarded;
using testing::GuardedCommand;
using testing::PathExists;
using testing::ReadFile;
using testing::Subprocess;
using testing::TempDir;
using testing::UnixListening;
using testing::WaitFor;

// ---- protocol ------------------------------------------------------------------------------

TEST(ProtocolTest, HeaderRoundTrips) {
  TestHeader h;
  h.mode = Mode::kReceive;
  h.stream_id = 3;
  h.streams = 4;
  h.write_size = 65536;
  h.msg_size = 64;
  h.duration_ms = 1500;
  h.test_id = 0x0123456789abcdefull;
  auto b = EncodeHeader(h);
  auto d = DecodeHeader(b);
  ASSERT_TRUE(d.ok()) << d.error().ToString();
  EXPECT_EQ(d->mode, Mode::kReceive);
  EXPECT_EQ(d->stream_id, 3u);
  EXPECT_EQ(d->streams, 4u);
  EXPECT_EQ(d->write_size, 65536u);
  EXPECT_EQ(d->msg_size, 64u);
  EXPECT_EQ(d->duration_ms, 1500u);
  EXPECT_EQ(d->bytes, 0u);
  EXPECT_EQ(d->test_id, 0x0123456789abcdefull);
  // Little-endian on the wire whatever the host.
  EXPECT_EQ(b[0], 'V');
  EXPECT_EQ(b[3], 'F');
}

TEST(ProtocolTest, HeaderRejectsBadFields) {
  TestHeader good;
  auto b = EncodeHeader(good);
  ASSERT_TRUE(DecodeHeader(b).ok());
  EXPECT_FALSE(DecodeHeader(std::span(b).first(63)).ok());
  auto bad = b;
  bad[0] ^= 1;  // magic
  EXPECT_FALSE(DecodeHeader(bad).ok());
  bad = b;
  bad[4] = 9;  // version
  EXPECT_FALSE(DecodeHeader(bad).ok());
  bad = b;
  bad[6] = 4;  // mode
  EXPECT_FALSE(DecodeHeader(bad).ok());
  auto with = [](auto change) {
    TestHeader h;
    change(h);
    return DecodeHeader(EncodeHeader(h)).ok();
  };
  EXPECT_FALSE(with([](TestHeader& h) { h.streams = 0; }));
  EXPECT_FALSE(with([](TestHeader& h) { h.streams = kMaxStreams + 1; }));
  EXPECT_FALSE(with([](TestHeader& h) { h.stream_id = 0; }));
  EXPECT_FALSE(with([](TestHeader& h) { h.stream_id = 2; }));  // of 1
  EXPECT_FALSE(with([](TestHeader& h) { h.write_size = 0; }));
  EXPECT_FALSE(with([](TestHeader& h) { h.write_size = kMaxWriteSize + 1; }));
  // A receive test must be bounded by exactly one of duration and bytes.
  EXPECT_FALSE(with([](TestHeader& h) { h.mode = Mode::kReceive; }));
  EXPECT_FALSE(with([](TestHeader& h) {
    h.mode = Mode::kReceive;
    h.bytes = 1;
    h.duration_ms = 1;
  }));
  EXPECT_FALSE(with([](TestHeader& h) {
    h.mode = Mode::kReceive;
    h.duration_ms = 1ull << 40;
  }));
  EXPECT_TRUE(with([](TestHeader& h) {
    h.mode = Mode::kReceive;
    h.bytes = 1;
  }));
}

TEST(ProtocolTest, ResultRoundTripsAndChecksMagic) {
  auto b = EncodeResult({123456789012ull, 987654321ull});
  auto r = DecodeResult(b);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->bytes, 123456789012ull);
  EXPECT_EQ(r->nanos, 987654321ull);
  b[1] ^= 0xff;
  EXPECT_FALSE(DecodeResult(b).ok());
  EXPECT_FALSE(DecodeResult(std::span(b).first(31)).ok());
}

// ---- formatting ----------------------------------------------------------------------------

TEST(ReportTest, UnitsAsIperf) {
  EXPECT_EQ(FormatBytes(3.21 * (1ull << 30)), "3.21 GBytes");
  EXPECT_EQ(FormatBytes(512 * 1024), "512 KBytes");
  EXPECT_EQ(FormatBytes(64), "64.0 Bytes");
  EXPECT_EQ(FormatRate(27.6e9), "27.6 Gbits/sec");
  EXPECT_EQ(FormatRate(950e6), "950 Mbits/sec");
  EXPECT_EQ(FormatRate(0), "0.00 bits/sec");
  std::string line = IntervalLine(5, 0, 1, 3ull << 30);
  EXPECT_EQ(line.rfind("[  5]   0.00-1.00   sec", 0), 0u) << line;
  EXPECT_NE(line.find("3.00 GBytes"), std::string::npos) << line;
  EXPECT_NE(line.find("25.8 Gbits/sec"), std::string::npos) << line;
  EXPECT_EQ(IntervalLine(-1, 0, 1, 1, "sender").rfind("[SUM]", 0), 0u);
  EXPECT_NE(IntervalLine(-1, 0, 1, 1, "sender").find("sender"), std::string::npos);
}

TEST(ReportTest, ParseSize) {
  uint64_t v = 0;
  EXPECT_TRUE(ParseSize("65536", &v));
  EXPECT_EQ(v, 65536u);
  EXPECT_TRUE(ParseSize("64K", &v));
  EXPECT_EQ(v, 65536u);
  EXPECT_TRUE(ParseSize("64m", &v));
  EXPECT_EQ(v, 64ull << 20);
  EXPECT_TRUE(ParseSize("1G", &v));
  EXPECT_EQ(v, 1ull << 30);
  for (const char* bad :
       {"", "K", "-1", "1.5M", "12x", "99999999999999999999", "99999999999999T"}) {
    EXPECT_FALSE(ParseSize(bad, &v)) << bad;
  }
}

TEST(ReportTest, PercentilesAndJsonEscapes) {
  std::vector<double> s;
  for (int i = 100; i >= 1; --i) s.push_back(i);
  Percentiles p = ComputePercentiles(s);
  EXPECT_EQ(p.count, 100u);
  EXPECT_EQ(p.min_us, 1);
  EXPECT_EQ(p.p50_us, 51);
  EXPECT_EQ(p.p99_us, 100);
  EXPECT_EQ(p.max_us, 100);
  EXPECT_DOUBLE_EQ(p.mean_us, 50.5);
  std::vector<double> none;
  EXPECT_EQ(ComputePercentiles(none).count, 0u);
  EXPECT_EQ(JsonString("a\"b\\c\n\x01"), "\"a\\\"b\\\\c\\n\\u0001\"");
  EXPECT_EQ(JsonNumber(1.0 / 0.0), "0");
}

// ---- the binary ----------------------------------------------------------------------------

struct RunResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Shell command prefix: vsockperf under no_vsock_guard; VsockperfPath() for argv.
std::string Vsockperf() { return GuardedCommand("src/tools/vsockperf/vsockperf"); }
std::string VsockperfPath() { return BuiltBinary("src/tools/vsockperf/vsockperf"); }

// Runs vsockperf with `args` (a shell word list), with a generous timeout.
RunResult RunPerf(const TempDir& dir, const std::string& args) {
  RunResult r;
  std::string err = dir.File("client.err");
  std::string cmd = "timeout 120 " + Vsockperf() + " " + args + " 2>" + err;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.err = ReadFile(err);
  return r;
}

json ParseJson(const RunResult& r) {
  json j = json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(j.is_discarded()) << "not JSON:\n" << r.out << "\nstderr:\n" << r.err;
  return j;
}

// A vsockd and a vsockperf server: on the host (hybrid, guest -> host tests) or as the
// virtual guest (host -> guest tests). vsockd takes one vhost-user frontend: in the hybrid
// case the client is the guest, in the vguest case the server is.
class VsockperfTest : public ::testing::Test {
 protected:
  static constexpr uint32_t kPort = 5201;

  void SetUp() override { ASSERT_TRUE(daemon_.Start().ok()) << daemon_.Log(); }
  void TearDown() override {
    if (server_.pid() > 0) {
      int status = server_.Stop(SIGTERM);
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "server did not stop cleanly:\n"
                                                                 << server_.Log();
    }
  }

  void StartHostServer() {
    ASSERT_TRUE(
        server_
            .Start(Guarded({VsockperfPath(), "-s",
                            "hvsock://" + daemon_.uds_path() + ":" + std::to_string(kPort)}),
                   dir_.File("server.log"))
            .ok());
    ASSERT_TRUE(WaitFor([&] {
      return UnixListening(daemon_.uds_path() + "_" + std::to_string(kPort));
    })) << server_.Log();
  }
  void StartGuestServer() {
    ASSERT_TRUE(server_
                    .Start(Guarded({VsockperfPath(), "-s", "--vguest",
                                    daemon_.socket_path() + ":" + std::to_string(kPort)}),
                           dir_.File("server.log"))
                    .ok());
    ASSERT_TRUE(WaitFor([&] {
      return server_.Log().find("Server listening") != std::string::npos;
    })) << server_.Log();
  }
  // Client args for each direction.
  std::string GuestClient() const {
    return "-c --vguest " + daemon_.socket_path() + ":" + std::to_string(kPort);
  }
  std::string HostClient() const {
    return "-c hvsock://" + daemon_.uds_path() + ":" + std::to_string(kPort);
  }

  TempDir dir_;
  Daemon daemon_{dir_, 3, {"--log-level", "warn"}};
  Subprocess server_;
};

void ExpectThroughput(const json& j, uint64_t bytes, bool reverse) {
  ASSERT_TRUE(j.contains("summary")) << j.dump();
  const json& s = j["summary"];
  EXPECT_EQ(j["test"]["mode"], "throughput");
  EXPECT_EQ(j["test"]["reverse"], reverse);
  EXPECT_EQ(s["receiver"]["bytes"].get<uint64_t>(), bytes);
  EXPECT_GT(s["receiver"]["seconds"].get<double>(), 0);
  EXPECT_GT(s["receiver"]["bits_per_second"].get<double>(), 0);
  if (reverse) {
    EXPECT_TRUE(s["sender"].is_null());
  } else {
    EXPECT_EQ(s["sender"]["bytes"].get<uint64_t>(), bytes);
  }
}

TEST_F(VsockperfTest, GuestToHost64M) {
  StartHostServer();
  auto r = RunPerf(dir_, GuestClient() + " -n 64M -l 64K --json");
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out << daemon_.Log();
  json j = ParseJson(r);
  ExpectThroughput(j, 64ull << 20, false);
  EXPECT_EQ(j["test"]["transport"], "vguest");
  EXPECT_EQ(j["test"]["write_size"], 65536);
  // The server printed its receiver line.
  EXPECT_NE(server_.Log().find("receiver"), std::string::npos) << server_.Log();
}

TEST_F(VsockperfTest, HostToGuest64M) {
  StartGuestServer();
  auto r = RunPerf(dir_, HostClient() + " -n 64M --json");
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out << server_.Log();
  json j = ParseJson(r);
  ExpectThroughput(j, 64ull << 20, false);
  EXPECT_EQ(j["test"]["transport"], "hybrid");
}

TEST_F(VsockperfTest, ReverseBothWays) {
  StartHostServer();
  auto r = RunPerf(dir_, GuestClient() + " -R -n 32M --json");
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out << server_.Log();
  ExpectThroughput(ParseJson(r), 32ull << 20, true);
  EXPECT_NE(server_.Log().find("sender"), std::string::npos) << server_.Log();
}

TEST_F(VsockperfTest, ReverseHostToGuestServer) {
  StartGuestServer();
  auto r = RunPerf(dir_, HostClient() + " -R -n 32M --json");
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out << server_.Log();
  ExpectThroughput(ParseJson(r), 32ull << 20, true);
}

TEST_F(VsockperfTest, FourParallelStreams) {
  StartHostServer();
  auto r = RunPerf(dir_, GuestClient() + " -P 4 -n 64M --json");
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out << server_.Log();
  json j = ParseJson(r);
  ExpectThroughput(j, 64ull << 20, false);
  EXPECT_EQ(j["test"]["streams"], 4);
  ASSERT_EQ(j["summary"]["streams"].size(), 4u);
  for (const json& s : j["summary"]["streams"]) {
    EXPECT_EQ(s["receiver"]["bytes"].get<uint64_t>(), 16ull << 20) << s.dump();
  }
  // One receiver line per stream on the server.
  for (const char* tag : {"stream 1/4", "stream 2/4", "stream 3/4", "stream 4/4"}) {
    EXPECT_NE(server_.Log().find(tag), std::string::npos) << tag << server_.Log();
  }
}

TEST_F(VsockperfTest, TimedRunHasIntervalsInHumanAndJson) {
  StartGuestServer();
  auto r = RunPerf(dir_, HostClient() + " -t 1.5 -i 0.5");
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("[  1]   0.00-0.5"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("sec"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("sender"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("receiver"), std::string::npos) << r.out;
  r = RunPerf(dir_, HostClient() + " -t 1.5 -i 0.5 -P 2 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  json j = ParseJson(r);
  ASSERT_GE(j["intervals"].size(), 2u) << r.out;
  uint64_t sum = 0;
  for (const json& i : j["intervals"]) {
    EXPECT_LT(i["start"].get<double>(), i["end"].get<double>());
    EXPECT_EQ(i["streams"].size(), 2u);
    sum += i["bytes"].get<uint64_t>();
  }
  EXPECT_GT(sum, 0u);
  EXPECT_LE(sum, j["summary"]["sender"]["bytes"].get<uint64_t>());
  EXPECT_EQ(j["summary"]["sender"]["bytes"], j["summary"]["receiver"]["bytes"]);
}

TEST_F(VsockperfTest, Latency) {
  StartHostServer();
  auto r = RunPerf(dir_, GuestClient() + " --latency --size 64 --count 2000 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out << server_.Log();
  json j = ParseJson(r);
  const json& s = j["summary"];
  EXPECT_EQ(j["test"]["mode"], "latency");
  EXPECT_EQ(s["round_trips"], 2000);
  EXPECT_GT(s["p50_us"].get<double>(), 0);
  EXPECT_LE(s["p50_us"].get<double>(), s["p99_us"].get<double>());
  EXPECT_LE(s["p99_us"].get<double>(), s["max_us"].get<double>());
}

TEST_F(VsockperfTest, LatencyHostToGuestHuman) {
  StartGuestServer();
  auto r = RunPerf(dir_, HostClient() + " --latency --count 500");
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out << server_.Log();
  EXPECT_NE(r.out.find("500 round trips of 64 bytes"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("p99"), std::string::npos) << r.out;
}

TEST_F(VsockperfTest, ConnectRate) {
  StartHostServer();
  auto r = RunPerf(dir_, GuestClient() + " --connect-rate --count 300 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out << server_.Log();
  json j = ParseJson(r);
  EXPECT_EQ(j["test"]["mode"], "connect_rate");
  EXPECT_EQ(j["summary"]["connections"], 300);
  EXPECT_GT(j["summary"]["connections_per_second"].get<double>(), 0);
}

TEST_F(VsockperfTest, ConnectRateHostToGuest) {
  StartGuestServer();
  auto r = RunPerf(dir_, HostClient() + " --connect-rate --count 300");
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out << server_.Log();
  EXPECT_NE(r.out.find("300 connections"), std::string::npos) << r.out;
}

TEST_F(VsockperfTest, RefusedIsExit1) {
  // No server and no guest attached: vsockd refuses the hybrid connect.
  auto r = RunPerf(dir_, HostClient() + " -t 1");
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("refused"), std::string::npos) << r.err;
  // Guest -> host port where nothing listens: RST.
  r = RunPerf(dir_, GuestClient() + " -t 1");
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("vsockperf:"), std::string::npos) << r.err;
}

// The server survives clients that are not vsockperf and keeps serving real ones.
TEST(VsockperfServerTest, DropsBadHeadersAndKeepsServing) {
  TempDir dir;
  Subprocess server;
  std::string path = dir.File("perf.sock");
  ASSERT_TRUE(
      server.Start(Guarded({VsockperfPath(), "-s", "unix:" + path}), dir.File("server.log")).ok());
  ASSERT_TRUE(WaitFor([&] { return UnixListening(path); })) << server.Log();
  {
    auto fd = ConnectUnix(path);
    ASSERT_TRUE(fd.ok());
    std::string junk(64, 'x');
    ASSERT_TRUE(WriteAll(fd->get(), junk.data(), junk.size()).ok());
    char c;
    EXPECT_EQ(::read(fd->get(), &c, 1), 0);  // dropped: EOF, no answer
  }
  {
    // A reverse test asking for "forever" is refused too.
    TestHeader h;
    h.mode = Mode::kReceive;
    auto b = EncodeHeader(h);
    auto fd = ConnectUnix(path);
    ASSERT_TRUE(fd.ok());
    ASSERT_TRUE(WriteAll(fd->get(), b.data(), b.size()).ok());
    char c;
    EXPECT_EQ(::read(fd->get(), &c, 1), 0);
  }
  auto r = RunPerf(dir, "-c unix:" + path + " -n 8M --json");
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out << server.Log();
  EXPECT_EQ(ParseJson(r)["summary"]["receiver"]["bytes"], 8ull << 20);
  EXPECT_NE(server.Log().find("bad magic"), std::string::npos) << server.Log();
  int status = server.Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << server.Log();
}

// --seqpacket: a server on the hybrid SEQPACKET name "<uds>_PORT.seqpacket" (where vsockd
// sends guests' SEQPACKET connects), reached directly as unix: by a --seqpacket client.
TEST(VsockperfSeqpacketTest, ThroughputReverseAndLatencyOverSeqpacket) {
  TempDir dir;
  Subprocess server;
  const std::string uds = dir.File("vm.vsock");
  ASSERT_TRUE(
      server
          .Start(Guarded({VsockperfPath(), "--seqpacket", "-s", "hvsock://" + uds + ":7300"}),
                 dir.File("server.log"))
          .ok());
  const std::string path = uds + "_7300.seqpacket";
  ASSERT_TRUE(WaitFor([&] { return UnixListening(path); })) << server.Log();
  EXPECT_FALSE(PathExists(uds + "_7300"));
  auto r = RunPerf(dir, "--seqpacket -c unix:" + path + " -n 8M -l 64K --json");
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out << server.Log();
  EXPECT_EQ(ParseJson(r)["summary"]["receiver"]["bytes"], 8ull << 20);
  r = RunPerf(dir, "--seqpacket -c unix:" + path + " -n 4M -l 100K -R --json");
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out << server.Log();
  EXPECT_EQ(ParseJson(r)["summary"]["receiver"]["bytes"], 4ull << 20);
  r = RunPerf(dir, "--seqpacket -c unix:" + path + " --latency --count 50 --size 1000");
  EXPECT_EQ(r.exit_code, 0) << r.err << r.out << server.Log();
  // A stream client finds no stream socket there.
  r = RunPerf(dir, "-c unix:" + path + " -n 1M");
  EXPECT_EQ(r.exit_code, 1) << r.err << r.out;
  int status = server.Stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << server.Log();
  r = RunPerf(dir, "--seqpacket -c unix:/x -l 256K");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("at most 128K"), std::string::npos) << r.err;
}

TEST(VsockperfCliTest, BadArgumentsExit2WithAMessage) {
  TempDir dir;
  // None of these gets as far as opening a socket (and none may: no AF_VSOCK here).
  struct Case {
    const char* args;
    const char* message;
  } cases[] = {
      {"", "exactly one of -s"},
      {"-s unix:/x -c unix:/y", "exactly one of -s"},
      {"-c", "needs an ADDRESS"},
      {"-c hvsock:///x:abc", "abc"},
      {"-c vsock://any:5201", "give a CID and a port"},
      {"-c unix:/x -t 1 -n 1M", "-t and -n"},
      {"-c unix:/x -n lots", "-n 'lots'"},
      {"-c unix:/x -l 0", "-l '0'"},
      {"-c unix:/x -l 32M", "-l '32M'"},
      {"-c unix:/x -P 0", "-P"},
      {"-c unix:/x -P 129", "-P"},
      {"-c unix:/x -t 0", "-t"},
      {"-c unix:/x --latency -R", "-R and -P"},
      {"-c unix:/x --latency --connect-rate", "exclude each other"},
      {"-c unix:/x --count 5", "--count is for"},
      {"-c unix:/x --latency --size 0", "--size"},
      {"-c abc --vguest /x", "takes a port"},
      {"-s --vguest :5201", "vhost-user socket path"},
      {"-c unix:/x --no-such-flag", "no-such-flag"},
  };
  for (const Case& c : cases) {
    auto r = RunPerf(dir, c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.out << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << "\n" << r.err;
  }
  auto r = RunPerf(dir, "--help");
  EXPECT_EQ(r.exit_code, 0);
  for (const char* flag : {"--vguest", "--latency", "--connect-rate", "--json", "-R"}) {
    EXPECT_NE(r.out.find(flag), std::string::npos) << flag;
  }
}

}  // namespace
}  // namespace vsockd::vsockperf
