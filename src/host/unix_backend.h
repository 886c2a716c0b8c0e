// UnixBackend: the "hybrid vsock" host backend, bridging guest vsock connections to host
// AF_UNIX stream sockets the way Firecracker, Cloud Hypervisor, vhost-device-vsock and Kata's
// dialer expect.
//
// The convention (one Unix socket path P per VM, --uds-path):
//  - Guest -> host: a guest connects to CID 2 port X; we connect to the Unix socket "P_X"
//    (P, an underscore, X in decimal). If nobody listens there (ENOENT, ECONNREFUSED) the
//    connect fails and the device resets the guest. A listener whose backlog is full makes a
//    non-blocking AF_UNIX connect fail with EAGAIN: we retry with a short backoff (1 ms
//    doubling to 50 ms) until host_connect_timeout, then fail with ETIMEDOUT.
//  - Host -> guest: we listen on P. A host program connects and writes "CONNECT <port>\n"
//    (keyword in any case, decimal guest port). We ask the device to connect to that guest
//    port. When the guest accepts we write "OK <n>\n" and from then on the Unix stream is the
//    connection. <n> is the host-side port the device allocated for the connection
//    (OkReply::kHostPort, Firecracker / Cloud Hypervisor; their docs show "OK 1073741824")
//    or the guest port (OkReply::kGuestPort, vhost-device-vsock). Kata only checks that the
//    reply contains "OK".
//  - Unlike the peers, which just close the socket, every failure is reported with one line
//    starting "ERR " and then a close: malformed command, line too long, guest refused (RST),
//    guest did not answer, no full command within command_timeout, too many handshakes. ERR
//    lines never contain "ok" in any case (Kata would take them for success).
//  - The command may arrive split across many writes; bytes after the '\n' that arrived with
//    it are not lost (they become HostStream::prefix, sent to the guest first); bytes sent
//    later, before "OK" came back, simply wait in the socket.
//
// SEQPACKET (guest SOCK_SEQPACKET <-> host AF_UNIX SOCK_SEQPACKET; options.seqpacket, on by
// default). Stream and seqpacket services use different files, so both may exist for one
// port:
//  - Guest -> host: a SEQPACKET connect to host port X goes to the AF_UNIX SOCK_SEQPACKET
//    socket "P_X.seqpacket" (then, as for streams, each prefix + X + ".seqpacket", e.g.
//    "<run-dir>/host_X.seqpacket"). Every guest message is one message on that socket.
//  - Host -> guest: we also listen (SOCK_SEQPACKET) on "P.seqpacket" and on "<L>.seqpacket"
//    for each extra listener L (e.g. "<run-dir>/cid_<N>.seqpacket"). The host program sends
//    the message "CONNECT <port>\n" (one message, exactly that line) and receives the
//    message "OK <n>\n", or "ERR <reason>\n" and a close; from then on every message is one
//    vsock message. A first message that is not exactly one command line (longer than
//    max_command_line, no '\n', or bytes after it) gets ERR.
//  - Caller names are bound for seqpacket connects too (same form as for streams).
//
// Extensions (all optional; with only uds_path set the behaviour is exactly the above):
//  - More host -> guest listeners (listen_paths), each speaking the same CONNECT/OK protocol
//    as P. vsockd --run-dir DIR adds "DIR/cid_<guest CID>" so host programs (the AF_VSOCK shim)
//    find a VM by its CID.
//  - More guest -> host candidates (host_path_prefixes): a connect to host port X tries, in
//    order, "P_X" (when uds_path is set) and then prefix + X for each prefix; it moves on to
//    the next candidate only when a path does not exist (ENOENT). Any other failure (e.g.
//    ECONNREFUSED from a stale socket file) is final. vsockd --run-dir DIR adds the prefix
//    "DIR/host_", a listener shared by every VM (what the shim's bind+listen creates).
//  - Caller names: before connecting, our end of the AF_UNIX socket is bound to the abstract
//    name "\0vsockd/<instance>/<guest-cid>/<guest-port>/<host-port>" (see caller_name.h), so
//    the host side learns who calls with getpeername(). <instance> ("<pid>.<start time in ns,
//    hex>") keeps several vsockd processes apart. If the name is taken (EADDRINUSE: a previous
//    connection with the same four numbers still open) we connect unbound, logged at debug:
//    a name collision never fails a connect.
//
// Callers: vsock::Device calls ConnectToHost(); the daemon creates the backend, calls
// Start() to listen on P, and passes a GuestConnector (DeviceGuestConnector in production, a
// fake in tests) through which host-initiated connects reach the device.
// Threading: everything runs on the EventLoop given at construction; nothing blocks.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/event_loop.h"
#include "base/fd.h"
#include "base/result.h"
#include "vsock/host_backend.h"

namespace vsockd::host {

// What "OK <n>\n" carries.
enum class OkReply {
  kHostPort,   // the host-side port allocated for the connection (Firecracker, CH)
  kGuestPort,  // the guest port that was asked for (vhost-device-vsock)
};

struct UnixBackendOptions {
  std::string uds_path;  // P; may be empty when listen_paths or host_path_prefixes are set
  // Further host -> guest listeners with the CONNECT/OK protocol (e.g. "<run-dir>/cid_3").
  std::vector<std::string> listen_paths;
  // Guest -> host port X: after "P_X", try prefix + X for each of these (e.g.
  // "<run-dir>/host_"), moving on only when the path does not exist.
  std::vector<std::string> host_path_prefixes;
  // Bind guest -> host connects to their caller name (caller_name.h).
  bool bind_caller_name = true;
  // The <instance> part of caller names; empty: "<pid>.<CLOCK_REALTIME ns, hex>" at construction.
  std::string instance_id;
  OkReply ok_reply = OkReply::kHostPort;
  // SEQPACKET services: "<listener>.seqpacket" listeners and ".seqpacket" host paths (above).
  bool seqpacket = true;
  // Guest -> host: how long to keep retrying a connect to a listener whose backlog is full.
  std::chrono::milliseconds host_connect_timeout{2000};
  // Host -> guest: how long a client may take to send its complete command line.
  std::chrono::milliseconds command_timeout{5000};
  size_t max_command_line = 64;
  // Clients between accept() and the end of their handshake; more get "ERR" and a close.
  size_t max_handshakes = 1024;
  int listen_backlog = 128;
};

// How host-initiated connects reach the device. Mirrors vsock::Device's ConnectToGuest /
// CancelConnectToGuest (see device.h for the full contract) so the handshake can be tested
// without a device.
class GuestConnector {
 public:
  virtual ~GuestConnector() = default;
  // Called once: Ok(host_port) when the guest accepted (return the stream to attach, or
  // nullopt to abandon), or an error (ECONNREFUSED: refused, ETIMEDOUT: no answer,
  // ECONNRESET: device gone); the return value is then ignored.
  using Done = std::function<std::optional<vsock::HostStream>(Result<uint32_t>)>;
  virtual Result<uint64_t> ConnectToGuest(uint32_t guest_port, Done done) = 0;
  // Abandons a pending connect; `done` is not called afterwards.
  virtual void CancelConnectToGuest(uint64_t id) = 0;
  // The same with a socket type (vsock::VIRTIO_VSOCK_TYPE_*). The default supports STREAM
  // only (EPROTONOSUPPORT otherwise), so connectors that predate SEQPACKET keep working.
  virtual Result<uint64_t> ConnectToGuestOfType(uint32_t guest_port, uint16_t type, Done done);
};

class UnixBackend : public vsock::HostBackend {
 public:
  // `connector` must outlive the backend (or be usable until the backend's destructor has run:
  // the destructor cancels pending connects through it).
  UnixBackend(EventLoop* loop, GuestConnector* connector, UnixBackendOptions options);
  ~UnixBackend() override;
  UnixBackend(const UnixBackend&) = delete;
  UnixBackend& operator=(const UnixBackend&) = delete;

  // Listens on options.uds_path and every options.listen_paths entry (replacing stale socket
  // files). Host -> guest connects are refused by the kernel until this is called; guest ->
  // host connects work without it. On failure nothing stays listening.
  Status Start();
  // Stops listening, closes every client still in its handshake (cancelling its connect) and
  // removes the socket files that are still the ones we created. Idempotent; the destructor
  // calls it.
  void Shutdown();

  // vsock::HostBackend
  std::unique_ptr<vsock::PendingConnect> ConnectToHost(const vsock::ConnectionInfo& info,
                                                       ConnectDone done) override;

  const UnixBackendOptions& options() const { return options_; }
  // The first path a guest connect to `port` tries ("P_<port>" when uds_path is set).
  std::string HostPortPath(uint32_t port, uint16_t type = vsock::VIRTIO_VSOCK_TYPE_STREAM) const;
  // Every path a guest connect to `port` of socket `type` tries, in order.
  std::vector<std::string> HostPortPaths(uint32_t port,
                                         uint16_t type = vsock::VIRTIO_VSOCK_TYPE_STREAM) const;
  // Every path we listen on (after Start()), stream ones then seqpacket ones.
  std::vector<std::string> ListenPaths() const;
  // The abstract name (without its NUL) a guest -> host connect binds to.
  std::string CallerNameFor(const vsock::ConnectionInfo& info) const;
  const std::string& instance_id() const { return instance_id_; }
  // Clients currently in their handshake (reading the command or waiting for the guest).
  size_t handshakes() const { return clients_.size(); }

 private:
  struct Client;
  struct Listener {
    std::string path;
    bool seqpacket = false;  // SOCK_SEQPACKET listener (".seqpacket")
    Fd fd;
    // Identity of the socket file we created, so Shutdown() never unlinks a successor's.
    dev_t dev = 0;
    ino_t ino = 0;
    bool has_identity = false;
    bool accept_paused = false;
    EventLoop::TimerId accept_resume_timer = 0;
  };
  void OnListenReadable(Listener* listener);
  void OnClientEvent(uint64_t id, uint32_t events);
  void OnCommandComplete(uint64_t id);
  std::optional<vsock::HostStream> OnGuestAnswer(uint64_t id, Result<uint32_t> result);
  void OnCommandTimeout(uint64_t id);
  // Writes "ERR <reason>\n" (best effort) and closes the client.
  void FailClient(uint64_t id, std::string_view reason);
  // Forgets the client: loop registration, timer, pending guest connect; closes its fd.
  void DropClient(uint64_t id);

  EventLoop* loop_;
  GuestConnector* connector_;
  UnixBackendOptions options_;
  std::string instance_id_;
  // unique_ptr: the loop callbacks hold Listener pointers.
  std::vector<std::unique_ptr<Listener>> listeners_;
  uint64_t next_client_id_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Client>> clients_;
};

}  // namespace vsockd::host
