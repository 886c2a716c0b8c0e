// HostBackend: how the vsock device reaches host services, and the stream it gets back.
//
// Role: the device terminates virtio-vsock connections; each one is bridged to a connected
// host stream socket (AF_UNIX for the hybrid convention, later TCP). The backend knows how to
// establish that stream; once established, the device itself pumps bytes between the stream
// and the rings (readv into guest rx buffers, writev from guest tx buffers), so every
// backend gets the same data path, credit handling and half-close.
// Callers: vsock::Device calls ConnectToHost(); host backends (src/host) implement it and
// call Device::ConnectToGuest() for host-initiated connections.
// Threading: the device's event loop thread only.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "base/fd.h"
#include "base/result.h"
#include "vsock/packet.h"

namespace vsockd::vsock {

// Who is on each end of a guest connection.
struct ConnectionInfo {
  uint64_t guest_cid = 0;
  uint32_t guest_port = 0;
  uint64_t host_cid = 2;  // VMADDR_CID_HOST (sibling VMs later)
  uint32_t host_port = 0;
  // VIRTIO_VSOCK_TYPE_STREAM or VIRTIO_VSOCK_TYPE_SEQPACKET (only when the guest negotiated
  // VIRTIO_VSOCK_F_SEQPACKET). A backend must bridge a SEQPACKET connection to a
  // SOCK_SEQPACKET socket: the device keeps message boundaries by doing one sendmsg per
  // guest message and one recvmsg per host message.
  uint16_t type = VIRTIO_VSOCK_TYPE_STREAM;
};

// A host stream ready to carry a connection's bytes.
struct HostStream {
  Fd fd;               // connected stream socket (SOCK_SEQPACKET for a SEQPACKET connection);
                       // the device makes it non-blocking
  std::string prefix;  // bytes already read from fd that belong to the guest, sent first
                       // (hybrid: payload that followed "CONNECT <port>\n" in one write)
  // SEQPACKET only: every record on fd, both ways, ends with one byte of the message's
  // VIRTIO_VSOCK_SEQ_* flags (EOR). Set by host::SiblingRouter for its device <-> device
  // bridge, where the peer guest must see MSG_EOR and AF_UNIX cannot carry it; plain host
  // peers see bare messages.
  bool message_flags = false;
};

// Destroying it cancels the connect; the callback is then never called.
class PendingConnect {
 public:
  virtual ~PendingConnect() = default;
};

class HostBackend {
 public:
  virtual ~HostBackend() = default;

  using ConnectDone = std::function<void(Result<HostStream>)>;

  // A guest asked to connect to host port info.host_port. Must never block the event loop.
  // Calls `done` exactly once, from the event loop and never from inside this call, unless
  // the returned handle is destroyed first. An error's code tells the device what to do:
  // any failure (ECONNREFUSED, ENOENT, ETIMEDOUT...) makes the device RST the guest.
  virtual std::unique_ptr<PendingConnect> ConnectToHost(const ConnectionInfo& info,
                                                        ConnectDone done) = 0;
};

}  // namespace vsockd::vsock
