#include "daemon/metrics.h"

#include <fmt/format.h>

#include <vector>

namespace vsockd::daemon {
namespace {

// One metric family: HELP and TYPE once, then a sample per VM (or one for the daemon).
class Family {
 public:
  Family(std::string* out, const char* name, const char* type, const char* help)
      : out_(out), name_(name) {
    fmt::format_to(std::back_inserter(*out_), "# HELP {} {}\n# TYPE {} {}\n", name, help, name,
                   type);
  }
  void Sample(const std::string& labels, double value) {
    fmt::format_to(std::back_inserter(*out_), "{}{}{} {}\n", name_, labels.empty() ? "" : "{",
                   labels.empty() ? labels : labels + "}", value);
  }
  void Sample(const std::string& labels, uint64_t value) {
    fmt::format_to(std::back_inserter(*out_), "{}{}{} {}\n", name_, labels.empty() ? "" : "{",
                   labels.empty() ? labels : labels + "}", value);
  }

 private:
  std::string* out_;
  const char* name_;
};

// A label value escaped as the exposition format wants (\\, \", \n).
std::string Escape(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string Cid(const VmStatus& vm) { return fmt::format("cid=\"{}\"", vm.cid); }

}  // namespace

std::string RenderMetrics(const DaemonStatus& status) {
  std::string out;
  {
    Family f(&out, "vsockd_build_info", "gauge", "vsockd's version (always 1).");
    f.Sample(fmt::format("version=\"{}\"", Escape(status.version)), uint64_t{1});
  }
  Family(&out, "vsockd_uptime_seconds", "gauge", "Seconds since vsockd started.")
      .Sample("", status.uptime_seconds);
  Family(&out, "vsockd_workers", "gauge", "Worker threads serving the VMs.")
      .Sample("", static_cast<uint64_t>(status.workers));
  Family(&out, "vsockd_vms", "gauge", "VMs configured.")
      .Sample("", static_cast<uint64_t>(status.vms.size()));
  Family(&out, "vsockd_reloads_total", "counter", "Configuration reloads asked for (SIGHUP).")
      .Sample("", status.reloads);
  Family(&out, "vsockd_reload_failures_total", "counter",
         "Reloads that failed (a bad file changes nothing).")
      .Sample("", status.reload_failures);

  const std::vector<VmStatus>& vms = status.vms;
  {
    Family f(&out, "vsockd_vm_info", "gauge", "A VM served by vsockd (always 1), by CID.");
    for (const auto& vm : vms) {
      f.Sample(fmt::format("{},socket=\"{}\",uds_path=\"{}\"", Cid(vm), Escape(vm.socket_path),
                           Escape(vm.uds_path)),
               uint64_t{1});
    }
  }
  auto per_vm = [&](const char* name, const char* type, const char* help, auto value) {
    Family f(&out, name, type, help);
    for (const auto& vm : vms) f.Sample(Cid(vm), static_cast<uint64_t>(value(vm)));
  };
  per_vm("vsockd_vm_attached", "gauge", "Whether a vhost-user frontend (QEMU) is attached.",
         [](const VmStatus& vm) { return vm.attached ? 1 : 0; });
  per_vm("vsockd_vhost_user_sessions_total", "counter",
         "vhost-user sessions (frontends attached) since start.",
         [](const VmStatus& vm) { return vm.sessions; });
  per_vm("vsockd_vhost_user_errors_total", "counter",
         "vhost-user sessions ended by a malformed or impossible frontend message.",
         [](const VmStatus& vm) { return vm.session_errors; });
  {
    Family f(&out, "vsockd_queue_notifications_total", "counter",
             "Queue notifications: kicks from the guest, interrupts to it.");
    for (const auto& vm : vms) {
      f.Sample(Cid(vm) + ",queue=\"rx\",kind=\"kick\"", vm.stats.rx_kicks);
      f.Sample(Cid(vm) + ",queue=\"tx\",kind=\"kick\"", vm.stats.tx_kicks);
      f.Sample(Cid(vm) + ",queue=\"rx\",kind=\"interrupt\"", vm.stats.rx_interrupts);
      f.Sample(Cid(vm) + ",queue=\"tx\",kind=\"interrupt\"", vm.stats.tx_interrupts);
    }
  }
  {
    Family f(&out, "vsockd_queue_size", "gauge", "Virtqueue size the frontend set (0: unset).");
    for (const auto& vm : vms) {
      f.Sample(Cid(vm) + ",queue=\"rx\"", uint64_t{vm.rx_queue_size});
      f.Sample(Cid(vm) + ",queue=\"tx\"", uint64_t{vm.tx_queue_size});
    }
  }
  {
    Family f(&out, "vsockd_packets_total", "counter", "virtio-vsock packets, by direction.");
    for (const auto& vm : vms) {
      f.Sample(Cid(vm) + ",direction=\"guest_to_host\"", vm.stats.tx_packets);
      f.Sample(Cid(vm) + ",direction=\"host_to_guest\"", vm.stats.rx_packets);
    }
  }
  {
    Family f(&out, "vsockd_payload_bytes_total", "counter", "Payload bytes carried, by direction.");
    for (const auto& vm : vms) {
      f.Sample(Cid(vm) + ",direction=\"guest_to_host\"", vm.stats.tx_bytes);
      f.Sample(Cid(vm) + ",direction=\"host_to_guest\"", vm.stats.rx_bytes);
    }
  }
  per_vm("vsockd_dropped_packets_total", "counter", "Invalid guest packets dropped.",
         [](const VmStatus& vm) { return vm.stats.dropped_packets; });
  per_vm("vsockd_rst_sent_total", "counter", "RST packets sent to the guest.",
         [](const VmStatus& vm) { return vm.stats.rst_sent; });
  {
    Family f(&out, "vsockd_connections_reset_total", "counter",
             "Connections ended or refused with an RST to the guest, by reason.");
    for (const auto& vm : vms) {
      for (size_t r = 1; r < vsock::kRstReasons; ++r) {
        f.Sample(fmt::format("{},reason=\"{}\"", Cid(vm),
                             vsock::RstReasonName(static_cast<vsock::RstReason>(r))),
                 vm.stats.rst_by_reason[r]);
      }
    }
  }
  per_vm("vsockd_credit_stalls_total", "counter",
         "Times a connection had host data for the guest and no credit left to send it.",
         [](const VmStatus& vm) { return vm.stats.credit_stalls; });
  per_vm("vsockd_connections_opened_total", "counter", "Connections established.",
         [](const VmStatus& vm) { return vm.stats.connections_opened; });
  per_vm("vsockd_connections", "gauge", "Connections open now.",
         [](const VmStatus& vm) { return vm.stats.connections_active; });
  per_vm("vsockd_buffered_bytes", "gauge", "Guest data waiting in vsockd for slow host readers.",
         [](const VmStatus& vm) { return vm.stats.buffered_bytes; });
  per_vm("vsockd_credit_committed_bytes", "gauge",
         "Sum of the buf_alloc credit advertised to the guest (bounds buffered bytes).",
         [](const VmStatus& vm) { return vm.stats.credit_committed; });
  {
    Family f(&out, "vsockd_connections_refused_total", "counter",
             "Connections refused, by the budget or policy key that refused them.");
    for (const auto& vm : vms) {
      const vsock::DeviceStats& s = vm.stats;
      const std::pair<const char*, uint64_t> reasons[] = {
          {"max_connections", s.refused_max_connections},
          {"max_host_fds", s.refused_max_host_fds},
          {"connect_rate", s.refused_connect_rate},
          {"allow_host_ports", s.refused_allow_host_ports},
          {"allow_guest_ports", s.refused_allow_guest_ports},
          {"allow_siblings", s.refused_allow_siblings}};
      for (const auto& [reason, n] : reasons) {
        f.Sample(fmt::format("{},reason=\"{}\"", Cid(vm), reason), n);
      }
    }
  }
  {
    Family f(&out, "vsockd_budget_limit", "gauge", "A VM's budget, by kind.");
    for (const auto& vm : vms) {
      f.Sample(Cid(vm) + ",budget=\"connections\"", uint64_t{vm.budget.max_connections});
      f.Sample(Cid(vm) + ",budget=\"buffered_bytes\"", vm.budget.max_buffered_bytes);
      f.Sample(Cid(vm) + ",budget=\"host_fds\"", uint64_t{vm.budget.max_host_fds});
      f.Sample(Cid(vm) + ",budget=\"connect_rate\"", uint64_t{vm.budget.connect_rate});
    }
  }
  return out;
}

std::string HandleMetricsHttp(std::string_view request,
                              const std::function<std::string()>& render) {
  std::string_view line = request.substr(0, request.find("\r\n"));
  auto reply = [](const char* status, const std::string& type, const std::string& body, bool head) {
    return fmt::format(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        status, type, body.size(), head ? std::string() : body);
  };
  const bool get = line.rfind("GET ", 0) == 0;
  const bool head = line.rfind("HEAD ", 0) == 0;
  if (!get && !head) return reply("405 Method Not Allowed", "text/plain", "GET /metrics\n", false);
  std::string_view target = line.substr(line.find(' ') + 1);
  target = target.substr(0, target.find(' '));
  if (target != "/metrics" && target.rfind("/metrics?", 0) != 0) {
    return reply("404 Not Found", "text/plain", "vsockd serves /metrics\n", head);
  }
  return reply("200 OK", "text/plain; version=0.0.4; charset=utf-8", render(), head);
}

}  // namespace vsockd::daemon
