// vsock::Device: the virtio::VirtioDevice calls and the connects the host side starts
// (ConnectToGuest, ConnectToGuestFrom). The data path is in device_*.cc (device_impl.h).
#include "vsock/device_impl.h"

namespace vsockd::vsock {

uint64_t Device::Impl::DeviceFeatures() const {
  uint64_t f = 1ull << virtio::VIRTIO_F_VERSION_1;
  if (opts_.offer_event_idx) f |= 1ull << virtio::VIRTIO_RING_F_EVENT_IDX;
  if (opts_.offer_indirect) f |= 1ull << virtio::VIRTIO_RING_F_INDIRECT_DESC;
  if (opts_.offer_seqpacket) f |= 1ull << VIRTIO_VSOCK_F_SEQPACKET;
  return f;
}

bool Device::Impl::ReadConfig(uint32_t offset, std::span<uint8_t> out) const {
  uint8_t config[8];
  uint64_t cid = htole64(opts_.guest_cid);
  std::memcpy(config, &cid, sizeof cid);
  if (offset > sizeof config || out.size() > sizeof config - offset) return false;
  std::memcpy(out.data(), config + offset, out.size());
  return true;
}

bool Device::Impl::seqpacket_negotiated() const {
  return opts_.offer_seqpacket && (acked_features_ & (1ull << VIRTIO_VSOCK_F_SEQPACKET)) != 0;
}

bool Device::Impl::TypeAllowed(uint16_t type) const {
  return type == VIRTIO_VSOCK_TYPE_STREAM ||
         (type == VIRTIO_VSOCK_TYPE_SEQPACKET && seqpacket_negotiated());
}

void Device::Impl::QueueStarted(uint32_t index, virtio::SplitQueue* queue, bool driver_reset) {
  if (driver_reset) {
    LOG_DEBUG("vsock cid {}: guest driver reset, dropping {} connections", opts_.guest_cid,
              conns_.size());
    ResetAll(/*notify_connects=*/true);
  }
  if (index == kRxQueue) {
    rxq_ = queue;
    rx_broken_logged_ = false;
    ScheduleRx();
  } else if (index == kTxQueue) {
    txq_ = queue;
    tx_broken_logged_ = false;
    tx_blocked_ = false;
    ScheduleTx();
  }
}

void Device::Impl::QueueStopped(uint32_t index) {
  // Nothing is held across calls (see the file comment), so there is nothing to return.
  if (index == kRxQueue) rxq_ = nullptr;
  if (index == kTxQueue) {
    txq_ = nullptr;
    tx_blocked_ = false;
  }
}

void Device::Impl::QueueKicked(uint32_t index) {
  if (index == kTxQueue) {
    ++stats_.tx_kicks;
    ProcessTx();
  } else if (index == kRxQueue) {
    ++stats_.rx_kicks;
    ScheduleRx();
  }
}

void Device::Impl::FrontendGone() {
  ResetAll(/*notify_connects=*/true, /*linger=*/true);
  rxq_ = nullptr;
  txq_ = nullptr;
  acked_features_ = 0;
  tx_blocked_ = false;
}

Result<uint64_t> Device::Impl::ConnectToGuest(uint32_t guest_port, GuestConnectDone done,
                                              uint16_t type) {
  if (!TypeAllowed(type)) {
    return MakeError(EPROTONOSUPPORT, "vsock cid {}: socket type {} not negotiated",
                     opts_.guest_cid, type);
  }
  if (Refusal r = AdmitToGuest(guest_port, /*from_sibling=*/false); r != Refusal::kNone) {
    return MakeError(IsPolicyRefusal(r) ? EACCES : EAGAIN, "guest port {} refused by {}",
                     guest_port, RefusalKey(r));
  }
  // At most conns_.size() ports can collide, so this ends.
  uint32_t host_port = 0;
  for (size_t tries = 0; tries <= conns_.size(); ++tries) {
    uint32_t p = next_host_port_++;
    if (next_host_port_ >= kHostPortEnd) next_host_port_ = kHostPortFirst;
    if (conns_.count(Connection::MakeKey(guest_port, VMADDR_CID_HOST, p)) == 0) {
      host_port = p;
      break;
    }
  }
  if (host_port == 0)
    return MakeError(EADDRINUSE, "no free host port for guest port {}", guest_port);
  return StartGuestConnect(
      ConnectionInfo{opts_.guest_cid, guest_port, VMADDR_CID_HOST, host_port, type},
      std::move(done));
}

Result<uint64_t> Device::Impl::ConnectToGuestFrom(uint64_t peer_cid, uint32_t peer_port,
                                                  uint32_t guest_port, GuestConnectDone done,
                                                  uint16_t type) {
  if (!TypeAllowed(type)) {
    return MakeError(EPROTONOSUPPORT, "vsock cid {}: socket type {} not negotiated",
                     opts_.guest_cid, type);
  }
  if (!IsValidGuestCid(peer_cid) || peer_cid == opts_.guest_cid) {
    return MakeError(EINVAL, "vsock cid {}: {} cannot be a sibling peer CID", opts_.guest_cid,
                     peer_cid);
  }
  if (conns_.count(Connection::MakeKey(guest_port, peer_cid, peer_port)) != 0) {
    return MakeError(EADDRINUSE, "vsock cid {}: {}:{} -> guest port {} already exists",
                     opts_.guest_cid, peer_cid, peer_port, guest_port);
  }
  if (Refusal r = AdmitToGuest(guest_port, /*from_sibling=*/true); r != Refusal::kNone) {
    return MakeError(EAGAIN, "vsock cid {}: guest port {} refused by {}", opts_.guest_cid,
                     guest_port, RefusalKey(r));
  }
  return StartGuestConnect(ConnectionInfo{opts_.guest_cid, guest_port, peer_cid, peer_port, type},
                           std::move(done));
}

Result<uint64_t> Device::Impl::StartGuestConnect(const ConnectionInfo& info,
                                                 GuestConnectDone done) {
  Connection* conn = AddConnection(info, ConnState::kConnectingGuest);
  uint64_t id = next_connect_id_++;
  ConnKey key = conn->key();
  conn->guest_connect_id = id;
  guest_connects_[id] = GuestConnect{key, std::move(done)};
  std::weak_ptr<bool> alive = alive_;
  conn->timer = loop_->AddTimer(opts_.connect_timeout, [this, alive, key, id] {
    if (alive.expired()) return;
    Connection* c = Find(key);
    if (c == nullptr || c->guest_connect_id != id) return;
    c->timer = 0;
    LOG_DEBUG("vsock cid {}: connect to guest port {} timed out", opts_.guest_cid,
              c->info().guest_port);
    FailGuestConnect(c, ETIMEDOUT, RstReason::kNone);
  });
  conn->pending_ctrl |= Connection::kCtrlRequest;
  MaybeQueueRx(conn);
  return id;
}

bool Device::Impl::IsRoutablePeer(uint64_t cid) const {
  return cid == VMADDR_CID_HOST || (IsValidGuestCid(cid) && cid != opts_.guest_cid);
}

void Device::Impl::CancelConnectToGuest(uint64_t id) {
  auto it = guest_connects_.find(id);
  if (it == guest_connects_.end()) return;
  ConnKey key = it->second.key;
  guest_connects_.erase(it);
  Connection* conn = Find(key);
  if (conn == nullptr || conn->guest_connect_id != id) return;
  conn->guest_connect_id = 0;
  // The guest may already be accepting: tell it the connection is gone.
  // The host peer gave up: a guest that heard our REQUEST hears the end.
  FreeConnection(conn, conn->request_sent ? RstReason::kClosed : RstReason::kNone);
}

Device::Device(EventLoop* loop, HostBackend* backend, DeviceOptions options)
    : impl_(std::make_unique<Impl>(loop, backend, std::move(options))) {}
Device::~Device() = default;

uint64_t Device::DeviceFeatures() const { return impl_->DeviceFeatures(); }
bool Device::ReadConfig(uint32_t offset, std::span<uint8_t> out) const {
  return impl_->ReadConfig(offset, out);
}
void Device::SetAckedFeatures(uint64_t features) { impl_->SetAckedFeatures(features); }
void Device::QueueStarted(uint32_t index, virtio::SplitQueue* queue, bool driver_reset) {
  impl_->QueueStarted(index, queue, driver_reset);
}
void Device::QueueStopped(uint32_t index) { impl_->QueueStopped(index); }
void Device::QueueKicked(uint32_t index) { impl_->QueueKicked(index); }
void Device::FrontendGone() { impl_->FrontendGone(); }
Result<uint64_t> Device::ConnectToGuest(uint32_t guest_port, GuestConnectDone done, uint16_t type) {
  return impl_->ConnectToGuest(guest_port, std::move(done), type);
}
Result<uint64_t> Device::ConnectToGuestFrom(uint64_t peer_cid, uint32_t peer_port,
                                            uint32_t guest_port, GuestConnectDone done,
                                            uint16_t type) {
  return impl_->ConnectToGuestFrom(peer_cid, peer_port, guest_port, std::move(done), type);
}
bool Device::seqpacket_negotiated() const { return impl_->seqpacket_negotiated(); }
void Device::CancelConnectToGuest(uint64_t id) { impl_->CancelConnectToGuest(id); }
uint64_t Device::guest_cid() const { return impl_->guest_cid(); }
void Device::UpdateLimits(const VmBudget& budget, const AccessPolicy& policy) {
  impl_->UpdateLimits(budget, policy);
}

const DeviceStats& Device::Impl::stats() const {
  stats_.credit_committed = admission_.committed();
  stats_.refused_max_connections = admission_.refused(Refusal::kConnections);
  stats_.refused_max_host_fds = admission_.refused(Refusal::kHostFds);
  stats_.refused_connect_rate = admission_.refused(Refusal::kConnectRate);
  stats_.refused_allow_host_ports = admission_.refused(Refusal::kHostPort);
  stats_.refused_allow_guest_ports = admission_.refused(Refusal::kGuestPort);
  stats_.refused_allow_siblings = admission_.refused(Refusal::kSibling);
  return stats_;
}

Status Device::StartCapture(const CaptureOptions& options) { return impl_->StartCapture(options); }
Device::CaptureStatus Device::capture_status() const { return impl_->capture_status(); }
Result<Device::CaptureStatus> Device::StopCapture() { return impl_->StopCapture(); }

Status Device::Impl::StartCapture(const CaptureOptions& options) {
  if (capture_) {
    return MakeError(EBUSY, "vsock cid {}: a capture to '{}' is running", opts_.guest_cid,
                     capture_->options().path);
  }
  auto capture = PacketCapture::Open(options);
  if (!capture.ok()) return capture.take_error();
  capture_ = std::move(*capture);
  LOG_INFO("vsock cid {}: capturing packets to '{}'", opts_.guest_cid, options.path);
  return OkStatus();
}

Device::CaptureStatus Device::Impl::capture_status() const {
  CaptureStatus st;
  if (!capture_) return st;
  st.running = true;
  st.full = capture_->full();
  st.packets = capture_->packets();
  st.bytes = capture_->bytes();
  st.path = capture_->options().path;
  return st;
}

Result<Device::CaptureStatus> Device::Impl::StopCapture() {
  if (!capture_) return MakeError(ENOENT, "vsock cid {}: no capture is running", opts_.guest_cid);
  CaptureStatus st = capture_status();
  st.running = false;
  Status flushed = capture_->Close();
  capture_.reset();
  LOG_INFO("vsock cid {}: capture to '{}' stopped: {} packets, {} bytes", opts_.guest_cid, st.path,
           st.packets, st.bytes);
  if (!flushed.ok()) return flushed.take_error();
  return st;
}

void Device::Impl::Capture(const PacketHeader& h, const std::vector<iovec>& iov, size_t offset) {
  capture_iov_.clear();
  if (h.len > 0) SliceIov(iov, offset, h.len, &capture_iov_, kMaxIov);
  capture_->Record(h, std::span<const iovec>(capture_iov_));
}

void Device::Impl::UpdateLimits(const VmBudget& budget, const AccessPolicy& policy) {
  opts_.budget = budget;
  opts_.policy = policy;
  admission_.Update(budget, policy);
}
const DeviceStats& Device::stats() const { return impl_->stats(); }

void Device::SetConnectionObserver(ConnectionObserver observer) {
  impl_->SetConnectionObserver(std::move(observer));
}

void Device::ResetGuestConnections(std::span<const ConnectionInfo> connections) {
  impl_->ResetGuestConnections(connections);
}

std::vector<Device::ConnectionStatus> Device::Connections() const { return impl_->Connections(); }

const char* RstReasonName(RstReason reason) {
  switch (reason) {
    case RstReason::kNone:
      return "none";
    case RstReason::kClosed:
      return "closed";
    case RstReason::kRefused:
      return "refused";
    case RstReason::kHostError:
      return "host_error";
    case RstReason::kCloseTimeout:
      return "close_timeout";
    case RstReason::kProtocol:
      return "protocol";
    case RstReason::kUnknownConnection:
      return "unknown_connection";
    case RstReason::kRestarted:
      return "restarted";
  }
  return "?";
}

}  // namespace vsockd::vsock
