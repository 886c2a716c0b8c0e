#include "daemon/control.h"

#include <nlohmann/json.hpp>

namespace vsockd::daemon {
namespace {

using nlohmann::json;

json PortsJson(const vsock::PortSet& set) { return set.ToString(); }

json VmJson(const VmStatus& vm) {
  json siblings = json::array();
  for (const auto& rule : vm.policy.siblings) siblings.push_back(rule.ToString());
  return json{
      {"cid", vm.cid},
      {"socket", vm.socket_path},
      {"uds_path", vm.uds_path},
      {"run_dir", vm.run_dir},
      {"groups", vm.groups},
      {"worker", vm.worker},
      {"attached", vm.attached},
      {"sessions", vm.sessions},
      {"acked_features", vm.acked_features},
      {"seqpacket", vm.seqpacket},
      {"queues",
       {{"rx", {{"size", vm.rx_queue_size}, {"running", vm.rx_running}}},
        {"tx", {{"size", vm.tx_queue_size}, {"running", vm.tx_running}}}}},
      {"buf_alloc", vm.buf_alloc},
      {"budget",
       {{"max_connections", vm.budget.max_connections},
        {"max_buffered_bytes", vm.budget.max_buffered_bytes},
        {"max_host_fds", vm.budget.max_host_fds},
        {"connect_rate", vm.budget.connect_rate},
        {"connect_burst", vm.budget.connect_burst}}},
      {"policy",
       {{"allow_host_ports", PortsJson(vm.policy.host_ports)},
        {"allow_guest_ports", PortsJson(vm.policy.guest_ports)},
        {"allow_siblings", siblings}}},
      {"use",
       {{"connections", vm.stats.connections_active}, {"buffered_bytes", vm.stats.buffered_bytes}}},
  };
}

json RstJson(const vsock::DeviceStats& s) {
  json out = json::object();
  for (size_t r = 1; r < vsock::kRstReasons; ++r) {
    out[vsock::RstReasonName(static_cast<vsock::RstReason>(r))] = s.rst_by_reason[r];
  }
  return out;
}

json StatsJson(const VmStatus& vm) {
  const vsock::DeviceStats& s = vm.stats;
  return json{{"cid", vm.cid},
              {"attached", vm.attached},
              {"tx_packets", s.tx_packets},
              {"rx_packets", s.rx_packets},
              {"tx_bytes", s.tx_bytes},
              {"rx_bytes", s.rx_bytes},
              {"dropped_packets", s.dropped_packets},
              {"rst_sent", s.rst_sent},
              {"rst_by_reason", RstJson(s)},
              {"credit_stalls", s.credit_stalls},
              {"kicks", {{"rx", s.rx_kicks}, {"tx", s.tx_kicks}}},
              {"interrupts", {{"rx", s.rx_interrupts}, {"tx", s.tx_interrupts}}},
              {"vhost_user_errors", vm.session_errors},
              {"connections_opened", s.connections_opened},
              {"connections_active", s.connections_active},
              {"buffered_bytes", s.buffered_bytes},
              {"credit_committed", s.credit_committed},
              {"refused",
               {{"max_connections", s.refused_max_connections},
                {"max_host_fds", s.refused_max_host_fds},
                {"connect_rate", s.refused_connect_rate},
                {"allow_host_ports", s.refused_allow_host_ports},
                {"allow_guest_ports", s.refused_allow_guest_ports},
                {"allow_siblings", s.refused_allow_siblings}}}};
}

json ShutdownJson(uint32_t flags) {
  json bits = json::array();
  if (flags & vsock::VIRTIO_VSOCK_SHUTDOWN_RCV) bits.push_back("rcv");
  if (flags & vsock::VIRTIO_VSOCK_SHUTDOWN_SEND) bits.push_back("send");
  return bits;
}

json ConnsJson(const VmStatus& vm) {
  json list = json::array();
  for (const vsock::Device::ConnectionStatus& c : vm.connections) {
    list.push_back(json{
        {"type", c.info.type == vsock::VIRTIO_VSOCK_TYPE_SEQPACKET ? "seqpacket" : "stream"},
        {"initiator", c.host_initiated ? "peer" : "guest"},
        {"guest_port", c.info.guest_port},
        {"peer_cid", c.info.host_cid},
        {"peer_port", c.info.host_port},
        {"state", c.state},
        {"bytes_from_guest", c.bytes_from_guest},
        {"bytes_to_guest", c.bytes_to_guest},
        {"buffered", c.buffered},
        {"credit",
         {{"buf_alloc", c.buf_alloc},
          {"guest_may_send", c.guest_credit},
          {"guest_buf_alloc", c.peer_buf_alloc},
          {"we_may_send", c.peer_credit}}},
        {"guest_shutdown", ShutdownJson(c.guest_shutdown)},
        {"age_seconds", c.age_seconds},
        {"host_local", c.host_local},
        {"host_peer", c.host_peer},
    });
  }
  return json{{"cid", vm.cid}, {"uds_path", vm.uds_path}, {"connections", list}};
}

std::string Answer(const json& j) { return j.dump() + "\n"; }
std::string Fail(const std::string& why) { return Answer(json{{"ok", false}, {"error", why}}); }

}  // namespace

std::string HandleControlRequest(std::string_view line, const ControlHooks& hooks) {
  json req = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (req.is_discarded() || !req.is_object()) {
    return Fail("not a JSON object (send {\"cmd\": \"vms\"} and a newline)");
  }
  auto cmd_it = req.find("cmd");
  if (cmd_it == req.end() || !cmd_it->is_string()) return Fail("missing \"cmd\"");
  const std::string cmd = cmd_it->get<std::string>();
  bool one_vm = false;
  uint64_t cid = 0;
  if (auto c = req.find("cid"); c != req.end()) {
    if (!c->is_number_unsigned()) return Fail("\"cid\" must be a CID number");
    one_vm = true;
    cid = c->get<uint64_t>();
  }
  if (cmd == "version") {
    DaemonStatus st = hooks.snapshot(false);
    return Answer(json{{"ok", true}, {"version", st.version}});
  }
  if (cmd == "vms" || cmd == "stats" || cmd == "conns") {
    DaemonStatus st = hooks.snapshot(cmd == "conns");
    json list = json::array();
    for (const VmStatus& vm : st.vms) {
      if (one_vm && vm.cid != cid) continue;
      list.push_back(cmd == "vms" ? VmJson(vm) : cmd == "stats" ? StatsJson(vm) : ConnsJson(vm));
    }
    if (one_vm && list.empty()) return Fail("no VM with CID " + std::to_string(cid));
    json out{{"ok", true}, {"vms", list}};
    if (cmd == "stats") {
      out["uptime_seconds"] = st.uptime_seconds;
      out["workers"] = st.workers;
      out["reloads"] = st.reloads;
      out["reload_failures"] = st.reload_failures;
    }
    return Answer(out);
  }
  if (cmd == "capture") {
    if (!one_vm) return Fail("capture needs \"cid\"");
    const std::string action = req.value("action", "");
    vsock::CaptureOptions opts;
    if (action == "start") {
      opts.path = req.value("path", "");
      if (opts.path.empty()) return Fail("capture start needs \"path\"");
      for (const char* field : {"snaplen", "max_bytes", "max_packets"}) {
        if (req.contains(field) && !req[field].is_number_unsigned()) {
          return Fail(std::string("\"") + field + "\" must be a number");
        }
      }
      opts.snaplen = req.value("snaplen", 0u);
      opts.max_bytes = req.value("max_bytes", uint64_t{0});
      opts.max_packets = req.value("max_packets", uint64_t{0});
    } else if (action != "stop" && action != "status") {
      return Fail("capture \"action\" is start, stop or status");
    }
    if (!hooks.capture) return Fail("capture is not available");
    auto st = hooks.capture(cid, action, opts);
    if (!st.ok()) return Fail(st.error().ToString());
    return Answer(json{{"ok", true},
                       {"running", st->running},
                       {"full", st->full},
                       {"packets", st->packets},
                       {"bytes", st->bytes},
                       {"path", st->path}});
  }
  if (cmd == "reload") {
    Status s = hooks.reload();
    if (!s.ok()) return Fail(s.error().context);
    return Answer(json{{"ok", true}});
  }
  if (cmd == "upgrade") {
    if (!hooks.upgrade) return Fail("upgrade is not available here");
    Status s = hooks.upgrade();
    if (!s.ok()) return Fail(s.error().context);
    return Answer(json{{"ok", true}});
  }
  return Fail("unknown command '" + cmd +
              "' (version, vms, stats, conns, reload, capture, upgrade)");
}

}  // namespace vsockd::daemon
