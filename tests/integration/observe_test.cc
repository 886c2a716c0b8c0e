// Looking at a running vsockd: vsockctl over the control socket (--control) and the
// Prometheus endpoint (--metrics-listen), against the real daemon carrying traffic from a
// virtual guest; the metrics text is checked with Prometheus's own promtool.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "base/unix_socket.h"
#include "tests/integration/echo_server.h"
#include "tests/integration/guest_util.h"
#include "tests/integration/harness.h"
#include "vguest/guest.h"

namespace vsockd::testing {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

class ObserveTest : public ::testing::Test {
 protected:
  void SetUp() override {
    daemon_ = std::make_unique<Daemon>(
        dir_, 3,
        std::vector<std::string>{"--control", Control(), "--metrics-listen",
                                 "unix:" + dir_.File("metrics"), "--max-connections", "77"});
    ASSERT_TRUE(daemon_->Start().ok()) << daemon_->Log();
    ASSERT_TRUE(WaitFor([&] { return UnixListening(dir_.File("metrics")); })) << daemon_->Log();
    vguest::GuestOptions options;
    options.socket_path = daemon_->socket_path();
    auto guest = loop_.Call([&] { return vguest::Guest::Attach(loop_.loop(), options); });
    ASSERT_TRUE(guest.ok()) << guest.error().ToString() << "\n" << daemon_->Log();
    guest_ = std::move(*guest);
  }
  void TearDown() override {
    loop_.Call([&] {
      driver_.reset();
      guest_.reset();
      return 0;
    });
    if (daemon_ && daemon_->Running()) {
      int status = daemon_->Stop();
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << daemon_->Log();
      EXPECT_FALSE(PathExists(Control())) << "the control socket is removed at exit";
    }
  }

  std::string Control() const { return dir_.File("control.sock"); }
  std::string Vsockctl(const std::string& args) const {
    return BuiltBinary("src/tools/vsockctl/vsockctl") + " --socket " + Control() + " " + args;
  }

  // Guest -> host echo of `bytes` through host port 9999; waits for all of it to come back.
  void Traffic(size_t bytes) {
    EchoServer echo(daemon_->uds_path() + "_9999");
    ASSERT_TRUE(echo.ok());
    std::promise<vguest::Stream*> connected;
    auto obs = std::make_shared<StreamObserver>();
    auto data = PatternBytes(bytes, 7);
    loop_.Call([&] {
      guest_->Connect(9999, [&, data](vguest::Stream* s, const Status& st) {
        if (st.ok()) {
          driver_ = std::make_unique<StreamDriver>(s, obs, data);
          driver_->Start();
        }
        connected.set_value(st.ok() ? s : nullptr);
      });
      return 0;
    });
    ASSERT_NE(connected.get_future().get(), nullptr) << daemon_->Log();
    ASSERT_TRUE(WaitFor([&] { return obs->eof.load(); }, 60s)) << daemon_->Log();
    EXPECT_EQ(obs->hash.load(), Fnv1a(data));
  }

  // GET /metrics over the Unix socket; the body, or "" on any failure.
  std::string Scrape() {
    auto fd = ConnectUnix(dir_.File("metrics"));
    if (!fd.ok()) return "";
    SetSocketTimeouts(fd->get(), 10s);
    const std::string req = "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
    if (::write(fd->get(), req.data(), req.size()) != static_cast<ssize_t>(req.size())) return "";
    std::string reply = ReadToEof(fd->get());
    if (reply.rfind("HTTP/1.1 200 OK\r\n", 0) != 0) return "";
    size_t body = reply.find("\r\n\r\n");
    return body == std::string::npos ? "" : reply.substr(body + 4);
  }

  TempDir dir_;
  std::unique_ptr<Daemon> daemon_;
  LoopThread loop_;
  std::unique_ptr<vguest::Guest> guest_;
  std::unique_ptr<StreamDriver> driver_;
  vguest::Stream* guest_out_ = nullptr;  // owned by guest_
};

TEST_F(ObserveTest, VsockctlShowsTheVmAndItsTraffic) {
  struct stat st;
  ASSERT_EQ(::stat(Control().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "the control socket is for vsockd's user only";

  Traffic(1 << 20);
  auto r = RunCommand(Vsockctl("--json stats"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  json stats = json::parse(r.output);
  ASSERT_EQ(stats["vms"].size(), 1u) << r.output;
  EXPECT_EQ(stats["vms"][0]["cid"], 3);
  EXPECT_GE(stats["vms"][0]["tx_bytes"].get<uint64_t>(), 1u << 20) << r.output;
  EXPECT_GE(stats["vms"][0]["rx_bytes"].get<uint64_t>(), 1u << 20) << r.output;
  EXPECT_GE(stats["vms"][0]["connections_opened"].get<uint64_t>(), 1u) << r.output;

  r = RunCommand(Vsockctl("vms"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("ATTACHED"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("yes"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("/77"), std::string::npos) << "the budget in use/limit\n" << r.output;
  EXPECT_NE(r.output.find(daemon_->socket_path()), std::string::npos) << r.output;

  r = RunCommand(Vsockctl("--json vms 3"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  json vms = json::parse(r.output);
  EXPECT_EQ(vms["vms"][0]["attached"], true);
  EXPECT_GT(vms["vms"][0]["queues"]["rx"]["size"].get<uint32_t>(), 0u);
  EXPECT_EQ(vms["vms"][0]["budget"]["max_connections"], 77);

  // Errors: a CID that is not served, a reload without --config, a missing socket.
  r = RunCommand(Vsockctl("vms 9"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("no VM with CID 9"), std::string::npos) << r.output;
  r = RunCommand(Vsockctl("reload"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("--config"), std::string::npos) << r.output;
  r = RunCommand(BuiltBinary("src/tools/vsockctl/vsockctl") + " --socket " + dir_.File("nothing") +
                 " stats");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("--control"), std::string::npos) << r.output;
}

// vsockctl conns lists both kinds of connection with their addresses, bytes each way, state
// and the host socket each is bridged to.
TEST_F(ObserveTest, VsockctlConnsListsOpenConnections) {
  // Guest -> host port 9998: a host service that accepts and keeps the connection open.
  auto service = ListenUnix(daemon_->uds_path() + "_9998", 8, /*nonblocking=*/false);
  ASSERT_TRUE(service.ok()) << service.error().ToString();
  std::atomic<uint32_t> guest_port{0};
  loop_.Call([&] {
    guest_->Connect(9998, [&](vguest::Stream* s, const Status& st) {
      if (!st.ok()) return;
      s->Write("hello", 5);
      guest_port = s->local_port();
      guest_out_ = s;
    });
    return 0;
  });
  Fd accepted(::accept(service->get(), nullptr, nullptr));
  ASSERT_TRUE(accepted.valid());
  char five[5];
  ASSERT_EQ(::recv(accepted.get(), five, 5, MSG_WAITALL), 5);
  // Host -> guest port 5001 through the hybrid socket, 3 bytes the other way.
  ASSERT_TRUE(loop_.Call([&] { return guest_->Listen(5001, [](vguest::Stream*) {}); }).ok());
  auto host = HybridConnect(daemon_->uds_path(), 5001);
  ASSERT_TRUE(host.ok()) << host.error().ToString() << "\n" << daemon_->Log();
  ASSERT_EQ(::write(host->get(), "abc", 3), 3);

  json conns;
  ASSERT_TRUE(WaitFor([&] {
    auto r = RunCommand(Vsockctl("--json conns 3"));
    if (r.exit_code != 0) return false;
    conns = json::parse(r.output);
    const json& list = conns["vms"][0]["connections"];
    if (list.size() != 2) return false;
    uint64_t from = 0;
    uint64_t to = 0;
    for (const json& c : list) {
      from += c["bytes_from_guest"].get<uint64_t>();
      to += c["bytes_to_guest"].get<uint64_t>();
    }
    return from == 5 && to == 3;
  })) << conns.dump(2)
      << "\n"
      << daemon_->Log();
  // Sorted by guest port; the guest's ephemeral port may sort either side of 5001.
  const json& list = conns["vms"][0]["connections"];
  const json& out = list[0]["peer_port"] == 9998 ? list[0] : list[1];
  const json& in = list[0]["peer_port"] == 9998 ? list[1] : list[0];
  EXPECT_EQ(out["initiator"], "guest");
  EXPECT_EQ(out["type"], "stream");
  EXPECT_EQ(out["guest_port"], guest_port.load());
  EXPECT_EQ(out["peer_cid"], 2);
  EXPECT_EQ(out["state"], "established");
  EXPECT_EQ(out["bytes_from_guest"], 5);
  EXPECT_EQ(out["bytes_to_guest"], 0);
  EXPECT_EQ(out["host_peer"], daemon_->uds_path() + "_9998");
  EXPECT_GT(out["credit"]["buf_alloc"].get<uint32_t>(), 0u);
  EXPECT_GE(out["age_seconds"].get<double>(), 0.0);
  EXPECT_EQ(in["initiator"], "peer");
  EXPECT_EQ(in["guest_port"], 5001);
  EXPECT_EQ(in["bytes_to_guest"], 3);
  EXPECT_EQ(in["host_local"], daemon_->uds_path());

  auto r = RunCommand(Vsockctl("conns"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("GUEST-PORT"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(daemon_->uds_path() + "_9998"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("2 connections"), std::string::npos) << r.output;

  // The guest half-closes its connection: the state shows the SHUTDOWN bit it sent.
  loop_.Call([&] {
    guest_out_->Shutdown(/*no_more_receive=*/false, /*no_more_send=*/true);
    return 0;
  });
  ASSERT_TRUE(WaitFor([&] {
    auto r2 = RunCommand(Vsockctl("--json conns 3"));
    if (r2.exit_code != 0) return false;
    const json answer = json::parse(r2.output);  // outlives the loop (a temporary would not)
    for (const json& c : answer["vms"][0]["connections"]) {
      if (c["peer_port"] == 9998) return c["guest_shutdown"] == json::array({"send"});
    }
    return false;
  })) << daemon_->Log();
  char byte;
  EXPECT_EQ(::recv(accepted.get(), &byte, 1, 0), 0) << "the host service sees EOF";
}

TEST_F(ObserveTest, MetricsCountTheTrafficAndPassPromtool) {
  Traffic(1 << 20);
  std::string text = Scrape();
  ASSERT_FALSE(text.empty()) << daemon_->Log();
  const std::string key = "vsockd_payload_bytes_total{cid=\"3\",direction=\"guest_to_host\"} ";
  size_t at = text.find(key);
  ASSERT_NE(at, std::string::npos) << text;
  EXPECT_GE(std::stoull(text.substr(at + key.size())), 1u << 20) << text;
  EXPECT_NE(text.find("vsockd_vm_attached{cid=\"3\"} 1"), std::string::npos) << text;
  EXPECT_NE(text.find("vsockd_budget_limit{cid=\"3\",budget=\"connections\"} 77"),
            std::string::npos)
      << text;

  auto tool = RunCommand(SourceFile("scripts/promtool.sh"));
  if (tool.exit_code != 0) {
    if (std::getenv("VSOCKD_REQUIRE_PROMTOOL") != nullptr) FAIL() << tool.output;
    GTEST_SKIP() << "no promtool: " << tool.output;
  }
  const std::string file = dir_.File("metrics.txt");
  std::ofstream(file) << text;
  std::string promtool = tool.output.substr(0, tool.output.find('\n'));
  auto check = RunCommand(promtool + " check metrics < " + file);
  EXPECT_EQ(check.exit_code, 0) << check.output << "\n" << text;
}

TEST_F(ObserveTest, MetricsOverTcpLoopback) {
  Subprocess other;
  TempDir dir;
  // Port 0 would hide the port; pick one from the ephemeral range and retry on a clash.
  for (int port = 39000 + static_cast<int>(::getpid() % 1000), tries = 0; tries < 20;
       ++port, ++tries) {
    const std::string endpoint = "127.0.0.1:" + std::to_string(port);
    ASSERT_TRUE(other
                    .Start({BuiltBinary("src/daemon/vsockd"), "--socket", dir.File("s"),
                            "--uds-path", dir.File("u"), "--metrics-listen", endpoint},
                           dir.File("log"))
                    .ok());
    if (!WaitFor([&] { return UnixListening(dir.File("s")) || !other.Running(); })) continue;
    if (!other.Running()) continue;  // the port was taken
    auto r = RunCommand(ShellLine({"bash", "-c",
                                   "exec 3<>/dev/tcp/127.0.0.1/" + std::to_string(port) +
                                       " && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3"
                                       " && cat <&3"}));
    EXPECT_NE(r.output.find("HTTP/1.1 200 OK"), std::string::npos) << r.output << other.Log();
    EXPECT_NE(r.output.find("vsockd_vms 1"), std::string::npos) << r.output;
    EXPECT_EQ(other.Stop(), 0);
    return;
  }
  FAIL() << "no free loopback port";
}

// vsockctl capture of a known transfer, decoded by Wireshark's tshark: CIDs, ports, ops
// (vsockmon and virtio) and the payload bytes both ways.
TEST_F(ObserveTest, CaptureOfAKnownTransferDecodesWithTshark) {
  if (RunCommand("tshark --version").exit_code != 0) {
    if (std::getenv("VSOCKD_REQUIRE_TSHARK") != nullptr) FAIL() << "tshark is not installed";
    GTEST_SKIP() << "tshark is not installed";
  }
  const std::string pcap = dir_.File("known.pcap");
  Subprocess capture;
  ASSERT_TRUE(capture
                  .Start({BuiltBinary("src/tools/vsockctl/vsockctl"), "--socket", Control(),
                          "capture", "3", "-w", pcap, "--seconds", "60"},
                         dir_.File("capture.log"))
                  .ok());
  ASSERT_TRUE(WaitFor([&] { return PathExists(pcap); })) << capture.Log() << daemon_->Log();
  Traffic(16);  // 16 pattern bytes to host port 9999, echoed back
  EXPECT_EQ(capture.Stop(SIGINT), 0) << capture.Log();
  EXPECT_NE(capture.Log().find("packets"), std::string::npos) << capture.Log();

  auto data = PatternBytes(16, 7);
  std::string hex;
  for (uint8_t b : data) hex += fmt::format("{:02x}", b);
  auto r = RunCommand("tshark -r " + pcap +
                      " -T fields -E separator=, -e vsock.src_cid -e vsock.dst_cid"
                      " -e vsock.dst_port -e vsock.op -e vsock.virtio.op -e vsock.payload");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("3,2,9999,1,1,"), std::string::npos) << "the REQUEST\n" << r.output;
  EXPECT_NE(r.output.find("3,2,9999,4,5," + hex), std::string::npos) << "guest -> host\n"
                                                                     << r.output;
  EXPECT_NE(r.output.find("2,3,"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(",4,5," + hex), std::string::npos) << "the echo, host -> guest\n"
                                                             << r.output;
}

}  // namespace
}  // namespace vsockd::testing
