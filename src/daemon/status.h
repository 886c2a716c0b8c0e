// A snapshot of what vsockd is doing: per VM, its configuration, its vhost-user session and
// its device's counters. What the control interface (vsockctl) and the metrics endpoint show.
//
// Role: plain values, copied out of each VM on its own worker thread (Daemon::Snapshot posts
// the copy there and waits), so the data path never takes a lock for them.
// Callers: Daemon::Snapshot (fills), daemon/control.cc (JSON), daemon/metrics.cc (Prometheus).
// Threading: plain values.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "vsock/device.h"
#include "vsock/limits.h"

namespace vsockd::daemon {

struct VmStatus {
  uint64_t cid = 0;
  std::string socket_path;
  std::string uds_path;
  std::string run_dir;
  std::vector<std::string> groups;
  size_t worker = 0;
  // vhost-user: a frontend attached now, sessions since start, what it negotiated.
  bool attached = false;
  uint64_t sessions = 0;
  uint64_t session_errors = 0;  // sessions ended by a bad frontend message
  uint64_t acked_features = 0;
  bool seqpacket = false;
  uint32_t rx_queue_size = 0;  // 0 while not set
  uint32_t tx_queue_size = 0;
  bool rx_running = false;
  bool tx_running = false;
  uint32_t buf_alloc = 0;
  vsock::VmBudget budget;
  vsock::AccessPolicy policy;
  vsock::DeviceStats stats;
  // Only in a snapshot taken with connections (vsockctl conns).
  std::vector<vsock::Device::ConnectionStatus> connections;
};

struct DaemonStatus {
  std::string version;
  double uptime_seconds = 0;
  size_t workers = 0;
  std::string config_path;
  uint64_t reloads = 0;
  uint64_t reload_failures = 0;
  std::vector<VmStatus> vms;
};

}  // namespace vsockd::daemon
