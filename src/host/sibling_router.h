// SiblingRouter and RoutingBackend: guest <-> guest ("sibling VM") connections between the VMs
// of one vsockd, the way vhost-device-vsock's groups work.
//
// Role: a guest REQUEST to a CID other than 2 reaches the device's HostBackend with
// ConnectionInfo.host_cid = that CID. RoutingBackend (one per VM) sends CID 2 to the VM's
// UnixBackend and anything else to the SiblingRouter (one per daemon), which allows the
// connect only when the target CID is a registered VM sharing at least one group with the
// caller; otherwise the connect fails (ECONNREFUSED) and the device RSTs the guest.
//
// Bridging: an AF_UNIX socketpair (SOCK_STREAM, or SOCK_SEQPACKET for a SEQPACKET connection,
// so that each device sees the host stream of its type and every message crosses the bridge
// as one record: guest A's message -> A's one sendmsg -> B's one recvmsg -> guest B's
// message; the HostStreams have message_flags set, so each record also carries the
// message's EOR bit, which AF_UNIX cannot). One end stays with the caller's (VM A's)
// PendingConnect; the other travels to VM B's thread (EventLoop::Post), where B's device is asked,
// through SiblingConnector::ConnectToGuestFrom, to connect to the wanted guest port with (A's CID,
// A's port) as the source guest B sees. When B's guest answers RESPONSE, B's device attaches
// its end and the result is posted back to A's thread, where A's device attaches the other
// end and sends RESPONSE to guest A. B refusing (RST), not answering (B's connect timeout) or
// being gone makes A's connect fail: RST to guest A. A giving up first (guest A's RST, or
// A's own bound) cancels B's pending connect on B's thread, so B's device drops it and resets
// guest B's half-open side at once instead of completing a connection nobody uses. From then on
// each device treats the socketpair end as an ordinary host stream: data, credit, half-close
// (shutdown(SHUT_WR) -> EOF -> SHUTDOWN) and teardown (one side's frontend going away closes its
// end: the other guest gets SHUTDOWN then RST) come for free, and neither VM's thread ever touches
// the other's device.
//
// Callers: the daemon registers every VM at start (Register) and unregisters it before
// destroying the VM; vsock::Device calls RoutingBackend::ConnectToHost.
// Threading: SiblingRouter's Register/Unregister/lookup are thread-safe (a mutex guards the
// table). A VM's SiblingConnector is only ever called on that VM's loop thread (calls are
// Posted there). RoutingBackend and its PendingConnects live on their VM's loop thread.
// Unregister(cid) must run on that VM's loop thread or while that loop is not running; after
// it, posted work for that VM finds it gone and fails the connect.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/event_loop.h"
#include "base/result.h"
#include "host/unix_backend.h"
#include "vsock/host_backend.h"

namespace vsockd::host {

// How a sibling connect reaches a VM's device (vsock::Device::ConnectToGuestFrom; see
// device.h for the contract). DeviceGuestConnector implements it; tests use fakes.
class SiblingConnector {
 public:
  virtual ~SiblingConnector() = default;
  // `type`: vsock::VIRTIO_VSOCK_TYPE_STREAM or _SEQPACKET (the caller's REQUEST type; the
  // stream `done` returns is a socket of the matching type).
  virtual Result<uint64_t> ConnectToGuestFrom(uint64_t peer_cid, uint32_t peer_port,
                                              uint32_t guest_port, uint16_t type,
                                              GuestConnector::Done done) = 0;
  virtual void CancelConnectToGuest(uint64_t id) = 0;
};

class SiblingRouter {
 public:
  SiblingRouter() = default;
  SiblingRouter(const SiblingRouter&) = delete;
  SiblingRouter& operator=(const SiblingRouter&) = delete;

  // Adds a VM: its CID, its groups (a VM reaches the VMs sharing at least one), the loop its
  // device runs on, and the connector to its device (used only on `loop`'s thread).
  // EEXIST if the CID is registered already, EINVAL for no groups.
  Status Register(uint64_t cid, std::vector<std::string> groups, EventLoop* loop,
                  SiblingConnector* connector);
  void Unregister(uint64_t cid);

  // Whether `from` may reach `to` (both registered, a group in common, not the same VM).
  bool MayConnect(uint64_t from, uint64_t to) const;

  // A guest of VM info.guest_cid connects to VM info.host_cid port info.host_port, with the
  // socket type info.type (STREAM or SEQPACKET; the target device refuses SEQPACKET when its
  // guest did not negotiate it, and the caller gets RST). Called on
  // the caller VM's loop (`loop`); `done` runs there, once, never inside this call, unless the
  // returned handle is destroyed first. `timeout` bounds the whole connect on the caller's
  // side (the target's own connect timeout normally answers first).
  std::unique_ptr<vsock::PendingConnect> Connect(EventLoop* loop, const vsock::ConnectionInfo& info,
                                                 std::chrono::milliseconds timeout,
                                                 vsock::HostBackend::ConnectDone done);

  // Sibling connects delivered to a target so far, and refused by the router (no such VM,
  // no common group). For tests and logs.
  uint64_t routed() const;
  uint64_t refused() const;

 private:
  struct Vm;
  std::shared_ptr<Vm> Find(uint64_t cid) const;             // mu_ held
  bool MayConnectLocked(uint64_t from, uint64_t to) const;  // mu_ held

  mutable std::mutex mu_;
  std::unordered_map<uint64_t, std::shared_ptr<Vm>> vms_;  // guarded by mu_
  uint64_t routed_ = 0;                                    // guarded by mu_
  uint64_t refused_ = 0;                                   // guarded by mu_
};

// One VM's HostBackend: CID 2 to `host`, every other CID to `router`.
// Threading: the VM's loop thread.
class RoutingBackend : public vsock::HostBackend {
 public:
  // `router` may be null (no sibling routing: other CIDs are refused). Both must outlive it.
  RoutingBackend(EventLoop* loop, vsock::HostBackend* host, SiblingRouter* router,
                 std::chrono::milliseconds sibling_timeout)
      : loop_(loop), host_(host), router_(router), sibling_timeout_(sibling_timeout) {}

  std::unique_ptr<vsock::PendingConnect> ConnectToHost(const vsock::ConnectionInfo& info,
                                                       ConnectDone done) override;

 private:
  EventLoop* loop_;
  vsock::HostBackend* host_;
  SiblingRouter* router_;
  std::chrono::milliseconds sibling_timeout_;
};

}  // namespace vsockd::host
