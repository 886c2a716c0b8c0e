// The session keeper: how vsockd restarts under running VMs (`vsockd --keep-sessions`).
//
// Why: QEMU's vhost-user-vsock device never reconnects. If the process serving its session
// dies, the guest's vsock device is dead until the VM restarts. So the session must outlive
// that process: the socket QEMU is connected to, the guest memory files, the rings' eventfds
// and where each ring stands.
//
// How: `vsockd --keep-sessions` starts as a small keeper process that runs the real daemon
// (the worker: the same binary, with --keeper-fd) and holds, for every VM, a copy of what the
// worker tells it over a SOCK_SEQPACKET link:
//   - SESSION: the vhost-user session state (vhost_user::SessionState) after every change,
//     with the frontend's connection and the descriptors the state names (SCM_RIGHTS);
//   - SESSION_END: the frontend went away (the copy is dropped);
//   - CONN_OPEN / CONN_CLOSE: each guest connection the device opens and frees.
// Holding a copy of the connection is what keeps QEMU from seeing the worker die. When the
// worker dies (crash, kill -9), the keeper starts a new one and sends it every kept session
// and the connections that were open, then DONE; the new worker resumes each session
// (vhost_user::Backend::Resume: rings restart at their used index) and RSTs those connections
// in the guest (vsock::Device::ResetGuestConnections): their host sides died with the old
// worker, which closed them (the host peers saw EOF). New connections work as soon as the new
// worker listens again.
//
// Upgrade: SIGUSR2 to the keeper is passed to the worker, which lets go of its sessions
// (Backend::Release: nothing ends for QEMU) and exits with kExitHandover; the keeper then starts
// the binary at the path it was started from (a package upgrade replaced it) as the new worker.
// SIGTERM/SIGINT go to the worker, and the keeper exits with it; SIGHUP goes to the worker
// (reload). A worker that keeps crashing (kMaxCrashes within kCrashWindow) ends the keeper.
//
// Callers: main() (RunKeeper, KeeperLink), the daemon's VMs (KeeperLink). Threading: a
// KeeperLink's Send* may be called from any worker thread (one sendmsg per message on a
// SOCK_SEQPACKET socket is atomic); RunKeeper is a process's main loop.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/result.h"
#include "vhost_user/session_state.h"
#include "vsock/host_backend.h"

namespace vsockd::vhost_user {
class Backend;
}

namespace vsockd::daemon {

// The worker's exit status after a handover (SIGUSR2): start the new binary.
inline constexpr int kExitHandover = 75;
inline constexpr int kMaxCrashes = 5;
inline constexpr std::chrono::seconds kCrashWindow{30};

// One VM's session as the keeper hands it to a new worker.
struct KeptSession {
  Fd connection;
  vhost_user::SessionState state;
  std::vector<Fd> fds;                             // what state's indices name
  std::vector<vsock::ConnectionInfo> connections;  // open when the old worker went away
};
using KeptSessions = std::map<uint64_t, KeptSession>;  // by guest CID

// The worker's end of the link.
class KeeperLink {
 public:
  explicit KeeperLink(Fd fd) : fd_(std::move(fd)) {}

  // Reads what the keeper sends at start (sessions, connections) up to DONE.
  Result<KeptSessions> ReceiveKept();
  // The VM's session changed (or ended: !backend.connected()).
  void SendSession(uint64_t cid, const vhost_user::Backend& backend);
  void SendConnection(uint64_t cid, const vsock::ConnectionInfo& info, bool opened);

 private:
  void Send(uint32_t type, uint64_t cid, const std::vector<uint8_t>& payload,
            const std::vector<int>& fds);
  Fd fd_;
};

// The keeper's main loop: runs `argv` (this process's arguments; the worker gets them plus
// --keeper-fd) until the worker exits for good. Returns the process's exit status.
// `ready_fd` (--ready-fd, or -1) is closed once the first worker has it.
int RunKeeper(int argc, char** argv, int ready_fd);

}  // namespace vsockd::daemon
