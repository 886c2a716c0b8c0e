// vsockd's command line: flags, defaults and validation, for one VM or several.
//
// Role: turns argv into a validated Options (or into the text to print and the exit code to
// use for --help, --version and bad flags). Kept apart from main() and from the wiring so it
// is unit-tested (daemon_options_test) and so integration tests can build Options directly.
// Flag names follow rust-vmm's vhost-device-vsock where they overlap (--guest-cid, --socket,
// --uds-path, --tx-buffer-size, --queue-size, --groups), so existing scripts carry over; so do
// its multi-VM forms: repeatable `--vm guest-cid=3,socket=...,uds-path=...,groups=a+b` and
// `--config FILE` (YAML, a `vms:` list of the same keys). Keys take '-' or '_'.
// Callers: vsockd's main(), tests. Threading: plain functions.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/log.h"
#include "base/result.h"
#include "host/unix_backend.h"
#include "vsock/limits.h"

namespace vsockd::daemon {

// One VM: its vhost-user socket, CID and host side.
struct VmOptions {
  std::string socket_path;  // vhost-user socket we listen on (QEMU's chardev path)
  uint64_t guest_cid = 3;
  std::string uds_path;  // hybrid host socket P (P_<port> for guest -> host); may be empty
  // with run_dir set.
  // Run directory shared with other vsockd instances and the AF_VSOCK shim (src/preload):
  // vsockd listens on "<run_dir>/cid_<guest_cid>" (same CONNECT/OK protocol as uds_path) and
  // a guest connect to host port X goes to "<run_dir>/host_X" when "<uds_path>_X" does not
  // exist (or uds_path is not set). Empty: off. Stored without trailing '/'.
  std::string run_dir;
  // Per-connection receive buffer, advertised to the guest as buf_alloc: how much guest data
  // may wait for a slow host reader. vhost-device-vsock's flag of the same name defaults to
  // 64 KiB; we default to 256 KiB, which keeps a 64 KiB-write stream from stalling on credit.
  uint32_t tx_buffer_size = 262144;
  // Largest virtqueue size the frontend may set (SET_VRING_NUM above it is refused).
  uint32_t queue_size = 1024;
  host::OkReply ok_reply = host::OkReply::kHostPort;
  // How long a connect may take in either direction: a host -> guest connect waiting for the
  // guest's RESPONSE, a guest -> host connect retrying a listener whose backlog is full.
  std::chrono::milliseconds connect_timeout{2000};
  // Sibling groups: VMs of this daemon that share a group reach each other by CID (guest <->
  // guest), as vhost-device-vsock's --groups (default: every VM in "default").
  std::vector<std::string> groups{"default"};
  // Offer SOCK_SEQPACKET (VIRTIO_VSOCK_F_SEQPACKET) and listen on the ".seqpacket" host
  // sockets. --no-seqpacket turns it off for every VM (a guest then sees a device without
  // the feature, as with vhost-device-vsock builds that predate it).
  bool seqpacket = true;
  vsock::VmBudget budget;
  vsock::AccessPolicy policy;
  // pcap=PATH (--pcap for the single VM): capture this VM's packets from start to exit
  // (vsock/capture.h; vsockctl capture for bounded captures of a running VM). Empty: off.
  std::string pcap;
  // Whether max-host-fds was given for this VM (or as a default): explicit budgets must fit
  // in the open-file limit as given; the others share what is left (daemon/fd_budget.h).
  bool max_host_fds_explicit = false;
};

// The whole daemon. Its VmOptions part is the single-VM form (--socket, --guest-cid, ...)
// and the defaults every --vm / --config VM starts from.
struct Options : VmOptions {
  // The VMs to serve. ParseCommandLine always fills it (one entry for the single-VM form);
  // when empty, Daemon::Create serves the VmOptions part alone.
  std::vector<VmOptions> vms;
  // Worker threads running the VMs (VM i on worker i % workers). 0: one per core, at most
  // one per VM.
  unsigned workers = 0;
  LogLevel log_level = LogLevel::kInfo;
  // --ready-fd: write "READY\n" to this descriptor once every socket listens, then close it
  // (daemon/readiness.h). -1: none.
  int ready_fd = -1;
  // --config FILE: `vms` came from it, and SIGHUP (Daemon::Reload) reads it again, with the
  // VmOptions part as every VM's defaults. Empty: --vm or the single-VM form (no reload).
  std::string config_path;
  // --control PATH: the control socket (daemon/control.h, vsockctl). Empty: off.
  std::string control_path;
  // --metrics-listen unix:PATH|ADDR:PORT: Prometheus metrics (daemon/metrics.h). Empty: off.
  std::string metrics_listen;
  // --keep-sessions: run under a session keeper (daemon/session_keeper.h) that holds every
  // vhost-user session, so vsockd can crash or be upgraded (SIGUSR2) without the VMs noticing.
  bool keep_sessions = false;
  // --keeper-fd N (internal): this process is the keeper's worker; N is its link.
  int keeper_fd = -1;
};

// What main() should do after parsing.
struct ParseOutcome {
  bool run = false;    // true: start the daemon with `options`
  int exit_code = 0;   // when !run: 0 for --help/--version, 2 for a usage error
  std::string output;  // when !run: text for stdout (exit 0) or stderr (exit 2)
  Options options;
};

// Parses argv (argv[0] is the program name). Never exits, never throws.
ParseOutcome ParseCommandLine(int argc, const char* const* argv);

// Parses a guest CID ("3", "4294967294") and checks it may be given to a guest: 0 (hypervisor),
// 1 (loopback), 2 (host) and 0xFFFFFFFF (VMADDR_CID_ANY) are reserved, and Linux's
// sockaddr_vm holds 32 bits.
Result<uint64_t> ParseGuestCid(std::string_view text);
Status ValidateGuestCid(uint64_t cid);

// One --vm value ("guest-cid=4,socket=/run/vm4.sock,uds-path=/run/vm4.vsock,groups=a+b"),
// starting from `defaults`. Keys: guest-cid, socket, uds-path, run-dir, tx-buffer-size,
// queue-size, ok-reply, connect-timeout-ms, groups, and the budget and policy keys of
// daemon/limit_keys.h ('_' works for '-'). The VM is validated
// alone (ValidateVm); duplicates across VMs are ValidateVms' job.
Result<VmOptions> ParseVmSpec(std::string_view spec, const VmOptions& defaults);

// A --config file's text: YAML with a `vms:` list of maps with the --vm keys (numbers may be
// YAML numbers; groups "a+b" or a YAML list; port lists a string or a YAML list; sibling
// rules strings or {cid, ports} maps), and an optional `defaults:` map of the keys that are
// not a VM's identity (every key but guest-cid, socket, uds-path), applied to every VM
// before its own. Errors name the file, the key and its line. `source` names the file.
Result<std::vector<VmOptions>> ParseConfigYaml(std::string_view text, const VmOptions& defaults,
                                               std::string_view source = "config");
Result<std::vector<VmOptions>> LoadConfigFile(const std::string& path, const VmOptions& defaults);

// Checks one VM (socket set, uds-path or run-dir set, CID allowed, sizes in range...) and a
// set of VMs (at least one; no CID, vhost-user socket or hybrid path used twice).
Status ValidateVm(const VmOptions& vm);
Status ValidateVms(const std::vector<VmOptions>& vms);

// "vsockd 0.1.0".
std::string VersionString();

}  // namespace vsockd::daemon
