// vsock::Device: a transport-agnostic virtio-vsock device that terminates the guest's
// stream connections and bridges each one to a host stream socket.
//
// Role: implements virtio::VirtioDevice for queue 0 (rx, device -> driver) and queue 1 (tx,
// driver -> device). The vhost-user backend drives it; it never includes vhost_user, so it is
// tested with rings built by virtio::DriverQueue.
// Threading: everything runs on the EventLoop passed in; no locks.
//
// What it guarantees (details in device.cc and connection.h):
//  - every tx chain is returned to the guest (used len 0), valid or not;
//  - guest input is validated before use (src_cid anti-spoofing, type, op, len vs bytes
//    present, 64 KiB cap);
//  - routing: a guest REQUEST to dst_cid 2 (the host) or to any other valid guest CID goes to
//    the HostBackend with ConnectionInfo.host_cid = dst_cid, and the backend decides (the
//    daemon's router sends sibling CIDs to the other VM, or refuses -> RST); dst_cid 0, 1,
//    our own CID, VMADDR_CID_ANY or above 32 bits gets RST here. Connections are keyed by
//    (guest port, peer CID, peer port); a bad packet is dropped with a rate-limited log line, a bad
//    connection is reset, the device keeps serving the others;
//  - RST answers packets for unknown connections and refused connects, never an RST;
//  - per-connection credit: never sends the guest more than its buf_alloc allows, and sends
//    CREDIT_UPDATE on its own when the guest's view of our free space runs low;
//  - half-close both ways (SHUTDOWN SEND <-> shutdown(SHUT_WR) / EOF);
//  - bounded memory per connection (at most buf_alloc of guest data buffered for a slow host
//    reader; host data is read straight into guest rx buffers, only as credit allows) and per
//    VM (DeviceOptions.budget: connections, host fds, connect rate, and the sum of the
//    buf_allocs advertised within max_buffered_bytes; vsock/admission.h);
//  - access policy (DeviceOptions.policy): host ports, guest ports and sibling CIDs/ports a
//    connection may use; refused connects get RST (guest) or EACCES (ConnectToGuest);
//  - SEQPACKET (VIRTIO_VSOCK_F_SEQPACKET, offered unless DeviceOptions.offer_seqpacket is
//    false): a guest REQUEST of type SEQPACKET is accepted only when the guest acked the
//    feature (else RST, type echoed); each guest message (RW fragments up to EOM) reaches the
//    host SOCK_SEQPACKET socket as one record, each host recvmsg reaches the guest as one
//    message (RW fragments, EOM on the last). The rules (sizes, truncation, EOR) are in
//    device.cc's "SEQPACKET" comment;
//  - coalescing: consecutive RW packets of a connection go to the host in one writev, and
//    host data is read with few readvs (a probe into one buffer, then one sized by FIONREAD)
//    across as many rx buffers as credit allows.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>

#include "base/event_loop.h"
#include "base/result.h"
#include "virtio/virtio_device.h"
#include "vsock/capture.h"
#include "vsock/host_backend.h"
#include "vsock/limits.h"
#include "vsock/packet.h"

namespace vsockd::vsock {

struct DeviceOptions {
  uint64_t guest_cid = 3;
  // Our receive buffer per connection, advertised to the guest as buf_alloc: how much guest
  // data may wait for a slow host reader (vhost-device-vsock's --tx-buffer-size).
  uint32_t buf_alloc = 256 * 1024;
  // How long a host -> guest connect waits for the guest's RESPONSE (Linux uses 2 s).
  std::chrono::milliseconds connect_timeout{2000};
  // How long a connection we shut down waits for the guest's RST (Linux: 8 s).
  std::chrono::milliseconds close_timeout{8000};
  // What this VM may take and whom it may reach (vsock/admission.h enforces them): a
  // connection over budget or against policy is refused (RST to the guest, an error to the
  // host side), a log line names the VM and the key, and a counter counts it.
  VmBudget budget;
  AccessPolicy policy;
  // Offer VIRTIO_RING_F_INDIRECT_DESC / VIRTIO_RING_F_EVENT_IDX.
  bool offer_indirect = true;
  bool offer_event_idx = true;
  // Offer VIRTIO_VSOCK_F_SEQPACKET (message sockets; needs a backend that bridges them to
  // SOCK_SEQPACKET host sockets, as host::UnixBackend does).
  bool offer_seqpacket = true;
};

// Why the device sent a guest an RST (DeviceStats::rst_by_reason, metrics label "reason").
enum class RstReason : uint8_t {
  kNone,               // no RST
  kClosed,             // the normal end: both sides are done (Linux ends connections so too)
  kRefused,            // a connect refused: host service unreachable, budget or policy
  kHostError,          // the host socket failed (read or write error, an oversized message)
  kCloseTimeout,       // the guest did not answer our SHUTDOWN within close_timeout
  kProtocol,           // the guest broke the protocol (credit exceeded, bad type or address)
  kUnknownConnection,  // a packet for a connection that does not exist
  kRestarted,          // open before vsockd restarted under the VM (ResetGuestConnections)
};
inline constexpr size_t kRstReasons = 8;
// "closed", "refused", "host_error", "close_timeout", "protocol", "unknown_connection",
// "restarted".
const char* RstReasonName(RstReason reason);

struct DeviceStats {
  uint64_t tx_packets = 0;       // guest -> device packets
  uint64_t rx_packets = 0;       // device -> guest packets
  uint64_t tx_bytes = 0;         // payload bytes guest -> host
  uint64_t rx_bytes = 0;         // payload bytes host -> guest
  uint64_t dropped_packets = 0;  // invalid guest packets dropped
  uint64_t rst_sent = 0;
  std::array<uint64_t, kRstReasons> rst_by_reason{};  // RSTs queued, by RstReason (kNone: 0)
  // Queue notifications: the guest's kicks of each queue, and our interrupts (used-buffer
  // notifications) to it.
  uint64_t rx_kicks = 0;
  uint64_t tx_kicks = 0;
  uint64_t rx_interrupts = 0;
  uint64_t tx_interrupts = 0;
  // Times a connection had host data for the guest and no credit left to send it (the
  // guest's reader is slower than the host's writer).
  uint64_t credit_stalls = 0;
  uint64_t connections_opened = 0;
  uint64_t connections_active = 0;
  uint64_t buffered_bytes = 0;    // guest data waiting for slow host readers, all connections
  uint64_t credit_committed = 0;  // sum of the buf_allocs advertised (bounds buffered_bytes)
  // Connections refused, by the budget or policy key that refused them.
  uint64_t refused_max_connections = 0;
  uint64_t refused_max_host_fds = 0;
  uint64_t refused_connect_rate = 0;
  uint64_t refused_allow_host_ports = 0;
  uint64_t refused_allow_guest_ports = 0;
  uint64_t refused_allow_siblings = 0;
};

class Device : public virtio::VirtioDevice {
 public:
  Device(EventLoop* loop, HostBackend* backend, DeviceOptions options);
  ~Device() override;

  // virtio::VirtioDevice
  uint64_t DeviceFeatures() const override;
  uint32_t NumQueues() const override { return 2; }
  bool ReadConfig(uint32_t offset, std::span<uint8_t> out) const override;
  void SetAckedFeatures(uint64_t features) override;
  void QueueStarted(uint32_t index, virtio::SplitQueue* queue, bool driver_reset) override;
  void QueueStopped(uint32_t index) override;
  void QueueKicked(uint32_t index) override;
  void FrontendGone() override;

  // Host -> guest connect (hybrid "CONNECT <port>"). Sends REQUEST to guest_port (queued
  // until the guest's rx queue runs, within connect_timeout). `done` runs once:
  //  - with the host-side port we allocated when the guest answers RESPONSE; it returns the
  //    stream to attach (after, say, writing "OK <port>\n" to it), or nullopt to abandon
  //    (the device then resets the guest side);
  //  - with an error when the guest refuses (ECONNREFUSED), does not answer (ETIMEDOUT) or
  //    the device goes away (ECONNRESET); its return value is then ignored.
  // `type` VIRTIO_VSOCK_TYPE_SEQPACKET needs the feature negotiated (EPROTONOSUPPORT
  // otherwise, and for any other type) and a SOCK_SEQPACKET stream from `done`.
  using GuestConnectDone = std::function<std::optional<HostStream>(Result<uint32_t>)>;
  Result<uint64_t> ConnectToGuest(uint32_t guest_port, GuestConnectDone done,
                                  uint16_t type = VIRTIO_VSOCK_TYPE_STREAM);
  // The same for a peer other than the host (a sibling VM, routed by the daemon): the guest
  // sees a REQUEST from (peer_cid, peer_port), and `done` gets Ok(peer_port). EINVAL for a
  // peer_cid that is not a valid guest CID or is our own, EADDRINUSE when that connection
  // already exists, EAGAIN at the connection limit. Cancel with CancelConnectToGuest.
  Result<uint64_t> ConnectToGuestFrom(uint64_t peer_cid, uint32_t peer_port, uint32_t guest_port,
                                      GuestConnectDone done,
                                      uint16_t type = VIRTIO_VSOCK_TYPE_STREAM);
  // Whether the guest acked VIRTIO_VSOCK_F_SEQPACKET (and we offered it).
  bool seqpacket_negotiated() const;
  // Abandons a pending ConnectToGuest (the host peer went away); `done` is not called.
  void CancelConnectToGuest(uint64_t id);

  // Told of every connection the device opens (opened true) and frees (false), so that a
  // keeper can list what the guest may believe open if this process dies (vsockd restarting
  // under the VM). Called on the loop's thread; must not call back into the device.
  using ConnectionObserver = std::function<void(const ConnectionInfo& info, bool opened)>;
  void SetConnectionObserver(ConnectionObserver observer);
  // After a restart: the connections the previous process had open with this guest get an
  // RST (reason kRestarted) as soon as the rx queue has buffers, so none of them hangs in the
  // guest (their host sides died with that process). Connections this device has open are
  // left alone.
  void ResetGuestConnections(std::span<const ConnectionInfo> connections);

  uint64_t guest_cid() const;
  const DeviceStats& stats() const;

  // One open connection as `vsockctl conns` shows it (a copy; the table is not touched).
  struct ConnectionStatus {
    ConnectionInfo info;          // guest and peer addresses, type
    bool host_initiated = false;  // the peer (host program or sibling) opened it
    const char* state = "";       // ConnStateName
    uint64_t bytes_from_guest = 0;
    uint64_t bytes_to_guest = 0;
    uint32_t buffered = 0;        // guest bytes not yet taken by the host peer
    uint32_t buf_alloc = 0;       // what we advertise
    uint32_t guest_credit = 0;    // what the guest may still send (as it last heard)
    uint32_t peer_buf_alloc = 0;  // what the guest advertises
    uint32_t peer_credit = 0;     // what we may still send the guest
    uint32_t guest_shutdown = 0;  // VIRTIO_VSOCK_SHUTDOWN_* the guest sent
    double age_seconds = 0;
    // The host socket's two ends (getsockname/getpeername; Unix paths): a guest connecting
    // to host port P shows <uds_path>_P as its peer, a hybrid CONNECT <uds_path> as its local
    // address. Empty for unnamed ends (sibling bridges) and while connecting.
    std::string host_local;
    std::string host_peer;
  };
  // On the device's thread (daemon: Daemon::Snapshot posts it there). Sorted by guest port.
  std::vector<ConnectionStatus> Connections() const;

  // New budgets and policy (a reload): connections opened from now on are admitted with
  // them; open connections keep going.
  void UpdateLimits(const VmBudget& budget, const AccessPolicy& policy);

  // Packet capture (vsock/capture.h): every packet taken from or given to the guest from now
  // on, until StopCapture or the capture's bounds. EBUSY while one runs. Costs one branch per
  // packet when none runs.
  Status StartCapture(const CaptureOptions& options);
  struct CaptureStatus {
    bool running = false;
    bool full = false;  // a bound was reached: nothing more is recorded
    uint64_t packets = 0;
    uint64_t bytes = 0;
    std::string path;
  };
  CaptureStatus capture_status() const;
  // Flushes and closes the file; its final status (running false). ENOENT when none runs.
  Result<CaptureStatus> StopCapture();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace vsockd::vsock
