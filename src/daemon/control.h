// vsockd's control protocol: one JSON object per line each way, over the Unix socket of
// `--control PATH` (off by default; the socket file is created mode 0600, so only vsockd's
// own user, usually root, may use it). vsockctl is its client; docs/CONTROL.md documents it.
//
// Requests: {"cmd": "version" | "vms" | "stats" | "conns" | "reload"} (an optional "cid": N
// narrows vms/stats/conns to one VM), and {"cmd": "capture", "cid": N, "action": "start" | "stop" |
// "status"} (start takes "path", and optionally "snaplen", "max_bytes", "max_packets"). Every
// answer has "ok": true plus the command's fields, or "ok": false and "error": "why". Unknown
// commands and malformed lines get an error answer; the connection stays usable. Callers:
// daemon/daemon.cc (HandleControlRequest with the daemon's hooks), vsockctl (the JSON field names).
// Threading: the control loop's thread.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "base/result.h"
#include "daemon/status.h"

namespace vsockd::daemon {

struct ControlHooks {
  // with_connections: fill VmStatus::connections too (vsockctl conns).
  std::function<DaemonStatus(bool with_connections)> snapshot;
  std::function<Status()> reload;
  // action "start" (with options), "stop" or "status" of VM cid's packet capture.
  std::function<Result<vsock::Device::CaptureStatus>(uint64_t cid, const std::string& action,
                                                     const vsock::CaptureOptions& options)>
      capture;
  // Starts the vsockd binary again under the session keeper (--keep-sessions), keeping the
  // VMs' sessions (daemon/session_keeper.h); an error without a keeper. May be empty.
  std::function<Status()> upgrade;
};

// Answers one request line (without its '\n'); the answer ends with '\n'.
std::string HandleControlRequest(std::string_view line, const ControlHooks& hooks);

}  // namespace vsockd::daemon
