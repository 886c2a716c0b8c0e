// The control protocol (control.h) and the metrics rendering (metrics.h) on a made-up status.
#include "daemon/control.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "daemon/metrics.h"

namespace vsockd::daemon {
namespace {

using nlohmann::json;

DaemonStatus TwoVms(bool with_connections = false) {
  DaemonStatus st;
  st.version = "vsockd 9.9";
  st.workers = 2;
  st.reloads = 3;
  st.reload_failures = 1;
  for (uint64_t cid : {3, 4}) {
    VmStatus vm;
    vm.cid = cid;
    vm.socket_path = "/run/vm" + std::to_string(cid) + ".sock";
    vm.uds_path = "/run/vm\"" + std::to_string(cid) + ".vsock";  // a quote to escape
    vm.attached = cid == 3;
    vm.sessions = cid;
    vm.rx_queue_size = 256;
    vm.tx_queue_size = 128;
    vm.stats.tx_packets = 10 * cid;
    vm.stats.tx_bytes = 1000 * cid;
    vm.stats.connections_active = cid;
    vm.stats.rst_by_reason[static_cast<size_t>(vsock::RstReason::kCloseTimeout)] = cid + 1;
    vm.stats.credit_stalls = 9;
    vm.stats.tx_kicks = 11;
    vm.session_errors = 1;
    vm.policy.host_ports = *vsock::PortSet::Parse("22,80");
    if (with_connections && cid == 3) {
      vsock::Device::ConnectionStatus c;
      c.info.guest_cid = 3;
      c.info.guest_port = 1025;
      c.info.host_port = 52;
      c.info.type = vsock::VIRTIO_VSOCK_TYPE_SEQPACKET;
      c.state = "established";
      c.bytes_from_guest = 5ull << 32;  // past u32: the device's own counters wrap
      c.bytes_to_guest = 7;
      c.buf_alloc = 262144;
      c.guest_credit = 1000;
      c.guest_shutdown = vsock::VIRTIO_VSOCK_SHUTDOWN_SEND;
      c.host_peer = "/run/vm3.vsock_52";
      vm.connections.push_back(c);
      c.info.guest_port = 80;
      c.info.host_port = 1u << 31;
      c.host_initiated = true;
      c.state = "connecting-guest";
      c.guest_shutdown = 0;
      vm.connections.push_back(c);
    }
    st.vms.push_back(vm);
  }
  return st;
}

ControlHooks Hooks(int* reloads, const Status& reload_result = OkStatus()) {
  return ControlHooks{[](bool with_connections) { return TwoVms(with_connections); },
                      [reloads, reload_result] {
                        ++*reloads;
                        return reload_result;
                      }};
}

json Ask(const std::string& line, const ControlHooks& hooks) {
  std::string answer = HandleControlRequest(line, hooks);
  EXPECT_EQ(answer.back(), '\n');
  EXPECT_EQ(answer.find('\n'), answer.size() - 1) << "one line per answer";
  return json::parse(answer);
}

TEST(ControlTest, VmsAndStats) {
  int reloads = 0;
  json vms = Ask(R"({"cmd":"vms"})", Hooks(&reloads));
  ASSERT_TRUE(vms["ok"].get<bool>()) << vms.dump();
  ASSERT_EQ(vms["vms"].size(), 2u);
  EXPECT_EQ(vms["vms"][0]["cid"], 3);
  EXPECT_EQ(vms["vms"][0]["attached"], true);
  EXPECT_EQ(vms["vms"][0]["queues"]["rx"]["size"], 256);
  EXPECT_EQ(vms["vms"][0]["policy"]["allow_host_ports"], "22,80");
  EXPECT_EQ(vms["vms"][1]["use"]["connections"], 4);

  json one = Ask(R"({"cmd":"stats","cid":4})", Hooks(&reloads));
  ASSERT_TRUE(one["ok"].get<bool>());
  ASSERT_EQ(one["vms"].size(), 1u);
  EXPECT_EQ(one["vms"][0]["tx_bytes"], 4000);
  EXPECT_EQ(one["reloads"], 3);
  EXPECT_EQ(one["vms"][0]["rst_by_reason"]["close_timeout"], 5);
  EXPECT_EQ(one["vms"][0]["credit_stalls"], 9);
  EXPECT_EQ(reloads, 0);
}

TEST(ControlTest, Conns) {
  int reloads = 0;
  json all = Ask(R"({"cmd":"conns"})", Hooks(&reloads));
  ASSERT_TRUE(all["ok"].get<bool>()) << all.dump();
  ASSERT_EQ(all["vms"].size(), 2u);
  ASSERT_EQ(all["vms"][0]["connections"].size(), 2u);
  EXPECT_TRUE(all["vms"][1]["connections"].empty());
  const json& c = all["vms"][0]["connections"][0];
  EXPECT_EQ(c["type"], "seqpacket");
  EXPECT_EQ(c["initiator"], "guest");
  EXPECT_EQ(c["guest_port"], 1025);
  EXPECT_EQ(c["peer_cid"], 2);
  EXPECT_EQ(c["peer_port"], 52);
  EXPECT_EQ(c["bytes_from_guest"], 5ull << 32);
  EXPECT_EQ(c["credit"]["guest_may_send"], 1000);
  EXPECT_EQ(c["guest_shutdown"], json::array({"send"}));
  EXPECT_EQ(c["host_peer"], "/run/vm3.vsock_52");
  EXPECT_EQ(all["vms"][0]["connections"][1]["initiator"], "peer");
  EXPECT_EQ(all["vms"][0]["connections"][1]["state"], "connecting-guest");

  json one = Ask(R"({"cmd":"conns","cid":4})", Hooks(&reloads));
  ASSERT_EQ(one["vms"].size(), 1u);
  EXPECT_EQ(one["vms"][0]["cid"], 4);
  EXPECT_FALSE(Ask(R"({"cmd":"conns","cid":5})", Hooks(&reloads))["ok"].get<bool>());
  // vms and stats do not ask for the connection lists.
  EXPECT_FALSE(Ask(R"({"cmd":"vms"})", Hooks(&reloads))["vms"][0].contains("connections"));
}

TEST(ControlTest, ReloadReportsItsOutcome) {
  int reloads = 0;
  EXPECT_TRUE(Ask(R"({"cmd":"reload"})", Hooks(&reloads))["ok"].get<bool>());
  json bad = Ask(R"({"cmd":"reload"})", Hooks(&reloads, MakeError(EINVAL, "bad file, line 3")));
  EXPECT_FALSE(bad["ok"].get<bool>());
  EXPECT_EQ(bad["error"], "bad file, line 3");
  EXPECT_EQ(reloads, 2);
}

TEST(ControlTest, UpgradeReportsItsOutcome) {
  int reloads = 0;
  ControlHooks hooks = Hooks(&reloads);
  EXPECT_FALSE(Ask(R"({"cmd":"upgrade"})", hooks)["ok"].get<bool>()) << "no upgrade hook";
  int upgrades = 0;
  hooks.upgrade = [&upgrades] {
    ++upgrades;
    return upgrades == 1 ? OkStatus() : MakeError(EPERM, "no keeper");
  };
  EXPECT_TRUE(Ask(R"({"cmd":"upgrade"})", hooks)["ok"].get<bool>());
  json bad = Ask(R"({"cmd":"upgrade"})", hooks);
  EXPECT_FALSE(bad["ok"].get<bool>());
  EXPECT_EQ(bad["error"], "no keeper");
  EXPECT_EQ(upgrades, 2);
}

TEST(ControlTest, BadRequestsGetAnErrorAnswer) {
  int reloads = 0;
  for (const char* line : {"", "nonsense", "[1,2]", R"({"cmd":5})", R"({"cmd":"explode"})",
                           R"({"cmd":"vms","cid":-1})", R"({"cmd":"vms","cid":99})", "{\"cmd\""}) {
    json answer = Ask(line, Hooks(&reloads));
    EXPECT_FALSE(answer["ok"].get<bool>()) << line;
    EXPECT_TRUE(answer["error"].is_string()) << line;
  }
  EXPECT_EQ(reloads, 0);
}

TEST(MetricsTest, ExpositionFormatWithOneFamilyEach) {
  std::string text = RenderMetrics(TwoVms());
  EXPECT_NE(text.find("# TYPE vsockd_packets_total counter\n"), std::string::npos) << text;
  EXPECT_NE(text.find("vsockd_packets_total{cid=\"4\",direction=\"guest_to_host\"} 40\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("vsockd_vm_attached{cid=\"3\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("vsockd_vm_attached{cid=\"4\"} 0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("uds_path=\"/run/vm\\\"3.vsock\""), std::string::npos) << "escaped quote";
  EXPECT_NE(text.find("vsockd_reload_failures_total 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("vsockd_connections_reset_total{cid=\"4\",reason=\"close_timeout\"} 5\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("vsockd_connections_reset_total{cid=\"4\",reason=\"closed\"} 0\n"),
            std::string::npos)
      << text;
  EXPECT_EQ(text.find("reason=\"none\""), std::string::npos) << "kNone is no RST";
  EXPECT_NE(text.find("vsockd_credit_stalls_total{cid=\"3\"} 9\n"), std::string::npos) << text;
  EXPECT_NE(
      text.find("vsockd_queue_notifications_total{cid=\"3\",queue=\"tx\",kind=\"kick\"} 11\n"),
      std::string::npos)
      << text;
  EXPECT_NE(text.find("vsockd_vhost_user_errors_total{cid=\"3\"} 1\n"), std::string::npos) << text;
  // Every family is declared once.
  size_t types = 0;
  for (size_t at = text.find("# TYPE vsockd_connections "); at != std::string::npos;
       at = text.find("# TYPE vsockd_connections ", at + 1)) {
    ++types;
  }
  EXPECT_EQ(types, 1u);
}

TEST(MetricsTest, HttpAnswersGetOfMetricsOnly) {
  auto render = [] { return std::string("x 1\n"); };
  std::string ok = HandleMetricsHttp("GET /metrics HTTP/1.1\r\nHost: a", render);
  EXPECT_EQ(ok.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << ok;
  EXPECT_NE(ok.find("Content-Length: 4\r\n"), std::string::npos) << ok;
  EXPECT_NE(ok.find("text/plain; version=0.0.4"), std::string::npos) << ok;
  EXPECT_EQ(ok.substr(ok.size() - 4), "x 1\n");
  std::string head = HandleMetricsHttp("HEAD /metrics HTTP/1.0", render);
  EXPECT_EQ(head.substr(head.size() - 4), "\r\n\r\n") << "no body for HEAD";
  EXPECT_EQ(HandleMetricsHttp("GET / HTTP/1.1", render).rfind("HTTP/1.1 404", 0), 0u);
  EXPECT_EQ(HandleMetricsHttp("POST /metrics HTTP/1.1", render).rfind("HTTP/1.1 405", 0), 0u);
  EXPECT_EQ(HandleMetricsHttp("garbage", render).rfind("HTTP/1.1 405", 0), 0u);
}

}  // namespace
}  // namespace vsockd::daemon
