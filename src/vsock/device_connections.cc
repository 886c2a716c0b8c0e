// Device::Impl: the connection table and each connection's life: set-up both ways, the
// host stream attached, half-close, closing, lingering for a vanished guest, reset.
#include <malloc.h>

#include <algorithm>
#include <tuple>

#include "base/unix_socket.h"
#include "vsock/device_impl.h"

namespace vsockd::vsock {

std::vector<Device::ConnectionStatus> Device::Impl::Connections() const {
  std::vector<Device::ConnectionStatus> out;
  out.reserve(conns_.size());
  const auto now = std::chrono::steady_clock::now();
  for (const auto& [key, conn] : conns_) {
    Device::ConnectionStatus c;
    c.info = conn->info();
    c.host_initiated = conn->host_initiated();
    c.state = ConnStateName(conn->state());
    c.bytes_from_guest = conn->bytes_from_guest();
    c.bytes_to_guest = conn->bytes_to_guest();
    c.buffered = conn->Unforwarded();
    c.buf_alloc = conn->buf_alloc();
    c.guest_credit = conn->GuestViewFree();
    c.peer_buf_alloc = conn->peer_buf_alloc();
    c.peer_credit = conn->PeerFree();
    c.guest_shutdown = conn->peer_shutdown();
    c.age_seconds = std::chrono::duration<double>(now - conn->opened()).count();
    if (conn->host_fd.valid()) {
      c.host_local = UnixSocketName(conn->host_fd.get(), /*peer=*/false);
      c.host_peer = UnixSocketName(conn->host_fd.get(), /*peer=*/true);
    }
    out.push_back(std::move(c));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return std::tie(a.info.guest_port, a.info.host_cid, a.info.host_port) <
           std::tie(b.info.guest_port, b.info.host_cid, b.info.host_port);
  });
  return out;
}

Connection* Device::Impl::Find(const ConnKey& key) {
  auto it = conns_.find(key);
  return it == conns_.end() ? nullptr : it->second.get();
}

Admission::Usage Device::Impl::Usage() const {
  // Every connection holds (or is about to hold) one host socket; lingering ones still do.
  return Admission::Usage{conns_.size(), conns_.size() + lingers_.size()};
}

Refusal Device::Impl::AdmitFromGuest(const PacketHeader& h) {
  Refusal r = admission_.AdmitFromGuest(h.dst_cid, h.dst_port, Usage(), EventLoop::Clock::now());
  if (r != Refusal::kNone) {
    LOG_RATELIMITED(LogLevel::kWarn, "vsock cid {}: refused guest port {} -> {}:{}: {} ({})",
                    opts_.guest_cid, h.src_port, h.dst_cid, h.dst_port, RefusalKey(r),
                    IsPolicyRefusal(r) ? "policy" : "budget");
  }
  return r;
}

Refusal Device::Impl::AdmitToGuest(uint32_t guest_port, bool from_sibling) {
  Refusal r = admission_.AdmitToGuest(guest_port, from_sibling, Usage(), EventLoop::Clock::now());
  if (r != Refusal::kNone) {
    LOG_RATELIMITED(LogLevel::kWarn, "vsock cid {}: refused a {} connect to guest port {}: {} ({})",
                    opts_.guest_cid, from_sibling ? "sibling" : "host", guest_port, RefusalKey(r),
                    IsPolicyRefusal(r) ? "policy" : "budget");
  }
  return r;
}

void Device::Impl::RefreshCredit(Connection* conn) {
  const uint32_t returned = conn->fwd_cnt() - conn->last_fwd_cnt_sent();
  conn->set_buf_alloc(admission_.BufAlloc(conn->buf_alloc(), returned, conns_.size()));
}

void Device::Impl::MaybeTrimMemory(uint64_t freed) {
  // glibc keeps freed heap memory for reuse; after a hostile guest's buffers are gone we
  // want the pages back (RSS near its baseline), without trimming on every close.
  constexpr uint64_t kTrimAfter = 2u << 20;
  freed_since_trim_ += freed;
  if (freed_since_trim_ < kTrimAfter || trim_scheduled_ || destroying_) return;
  trim_scheduled_ = true;
  std::weak_ptr<bool> alive = alive_;
  loop_->Defer([this, alive] {
    if (alive.expired()) return;
    trim_scheduled_ = false;
    freed_since_trim_ = 0;
    ::malloc_trim(0);
  });
}

Connection* Device::Impl::AddConnection(const ConnectionInfo& info, ConnState state) {
  auto conn = std::make_unique<Connection>(info, state, admission_.OpenBufAlloc(conns_.size()));
  Connection* c = conn.get();
  conns_[c->key()] = std::move(conn);
  stats_.connections_opened++;
  stats_.connections_active = conns_.size();
  LOG_DEBUG("vsock: open {}:{} <-> {}:{} ({})", info.guest_cid, info.guest_port, info.host_cid,
            info.host_port, ConnStateName(state));
  if (conn_observer_) conn_observer_(info, /*opened=*/true);
  return c;
}

void Device::Impl::CloseHost(Connection* conn) {
  if (conn->host_registered) {
    loop_->Remove(conn->host_fd.get());
    conn->host_registered = false;
  }
  conn->host_fd.Reset();
}

void Device::Impl::LingerHost(Connection* conn) {
  // A seqpacket buffer holds messages, not a byte stream: not worth lingering for (the
  // guest is gone; its queued messages are dropped with the connection).
  if (!conn->host_fd.valid() || conn->buffer.empty() || conn->seqpacket()) return;
  if (lingers_.size() >= opts_.budget.max_connections) return;  // bounded like connections
  if (conn->host_registered) {
    loop_->Remove(conn->host_fd.get());
    conn->host_registered = false;
  }
  auto linger = std::make_unique<Linger>();
  linger->fd = std::move(conn->host_fd);
  linger->not_socket = conn->host_not_socket;
  linger->bytes = std::move(conn->buffer);
  stats_.buffered_bytes -= linger->bytes.size();
  conn->buffer.Clear();
  int fd = linger->fd.get();
  LOG_DEBUG(
      "vsock cid {}: guest gone, delivering {} buffered bytes of guest port {} to the "
      "host",
      opts_.guest_cid, linger->bytes.size(), conn->info().guest_port);
  std::weak_ptr<bool> alive = alive_;
  auto st = loop_->Add(fd, EPOLLOUT | EPOLLET, [this, alive, fd](uint32_t) {
    if (alive.expired()) return;
    WriteLinger(fd);
  });
  if (!st.ok()) return;  // the fd closes with `linger`
  linger->timer = loop_->AddTimer(kLingerTimeout, [this, alive, fd] {
    if (alive.expired()) return;
    auto it = lingers_.find(fd);
    if (it == lingers_.end()) return;
    it->second->timer = 0;
    LOG_DEBUG("vsock cid {}: host peer did not take {} bytes in time, closing", opts_.guest_cid,
              it->second->bytes.size());
    EndLinger(fd);
  });
  linger->held = linger->bytes.size();
  admission_.Hold(linger->held);  // still counted in the VM's buffered budget
  lingers_[fd] = std::move(linger);
  WriteLinger(fd);
}

void Device::Impl::WriteLinger(int fd) {
  auto it = lingers_.find(fd);
  if (it == lingers_.end()) return;
  Linger& l = *it->second;
  while (!l.bytes.empty()) {
    ssize_t n = l.not_socket
                    ? ::write(fd, l.bytes.data(), l.bytes.size())
                    : ::send(fd, l.bytes.data(), l.bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      l.bytes.Consume(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    break;  // the host peer is gone: nothing more to deliver
  }
  EndLinger(fd);
}

void Device::Impl::EndLinger(int fd) {
  auto it = lingers_.find(fd);
  if (it == lingers_.end()) return;
  loop_->Remove(fd);
  if (it->second->timer != 0) loop_->CancelTimer(it->second->timer);
  admission_.Release(it->second->held);
  MaybeTrimMemory(it->second->held);
  lingers_.erase(it);  // closes the fd: the host peer sees EOF
}

void Device::Impl::DropGuestData(Connection* conn) {
  MaybeTrimMemory(conn->buffer.capacity() + conn->out_msg.capacity());
  stats_.buffered_bytes -= conn->buffer.size();
  conn->buffer.Clear();
  conn->pending_iov.clear();
  conn->pending_bytes = 0;
  conn->in_flush_list = false;
  conn->messages.clear();
  conn->partial_bytes = 0;
  conn->partial_direct = false;
  conn->out_msg.clear();
  conn->out_msg.shrink_to_fit();
  conn->out_msg_off = 0;
}

void Device::Impl::DestroyPendingConnect(Connection* conn) {
  if (!conn->host_connect) return;
  if (destroying_) {
    conn->host_connect.reset();
    return;
  }
  std::shared_ptr<PendingConnect> p(std::move(conn->host_connect));
  loop_->Defer([p] {});
}

void Device::Impl::FreeConnection(Connection* conn, RstReason rst) {
  LOG_DEBUG("vsock: close {}:{} <-> {}:{} ({}){}{}", conn->info().guest_cid,
            conn->info().guest_port, conn->info().host_cid, conn->info().host_port,
            ConnStateName(conn->state()), rst != RstReason::kNone ? ", RST: " : "",
            rst != RstReason::kNone ? RstReasonName(rst) : "");
  if (rst != RstReason::kNone) {
    ++stats_.rst_by_reason[static_cast<size_t>(rst)];
    replies_.push_back(conn->MakeHeader(VIRTIO_VSOCK_OP_RST, 0, 0));
    ScheduleRx();
  }
  if (conn_observer_) conn_observer_(conn->info(), /*opened=*/false);
  admission_.Closed(conn->buf_alloc());
  if (conn->guest_connect_id != 0) guest_connects_.erase(conn->guest_connect_id);
  if (conn->timer != 0) loop_->CancelTimer(conn->timer);
  CloseHost(conn);
  DestroyPendingConnect(conn);
  DropGuestData(conn);
  conns_.erase(conn->key());
  stats_.connections_active = conns_.size();
}

void Device::Impl::ResetAll(bool notify_connects, bool linger) {
  std::vector<GuestConnectDone> dones;
  for (auto& [id, gc] : guest_connects_) {
    if (gc.done) dones.push_back(std::move(gc.done));
  }
  guest_connects_.clear();
  uint64_t freed = 0;
  for (auto& [key, conn] : conns_) {
    if (conn->timer != 0) loop_->CancelTimer(conn->timer);
    if (linger && !destroying_) LingerHost(conn.get());
    CloseHost(conn.get());
    DestroyPendingConnect(conn.get());
    // Not while the device is destroyed: the observer may be gone already, and a keeper
    // learns of the end from the session's end.
    if (conn_observer_ && !destroying_) conn_observer_(conn->info(), /*opened=*/false);
    admission_.Closed(conn->buf_alloc());
    freed += conn->buffer.capacity() + conn->out_msg.capacity();
  }
  conns_.clear();
  replies_.clear();
  rx_fifo_.clear();
  flush_keys_.clear();
  stats_.buffered_bytes = 0;
  stats_.connections_active = 0;
  MaybeTrimMemory(freed);
  if (notify_connects) {
    for (auto& done : dones) done(MakeError(ECONNRESET, "vsock device reset"));
  }
}

Device::GuestConnectDone Device::Impl::TakeGuestConnect(Connection* conn) {
  GuestConnectDone done;
  auto it = guest_connects_.find(conn->guest_connect_id);
  if (it != guest_connects_.end()) {
    done = std::move(it->second.done);
    guest_connects_.erase(it);
  }
  conn->guest_connect_id = 0;
  return done;
}

void Device::Impl::FailGuestConnect(Connection* conn, int code, RstReason rst) {
  GuestConnectDone done = TakeGuestConnect(conn);
  uint32_t port = conn->info().guest_port;
  FreeConnection(conn, rst);
  if (done) done(MakeError(code, "connect to guest port {}", port));
}

bool Device::Impl::AttachHost(Connection* conn, HostStream stream) {
  if (!stream.fd.valid()) return false;
  auto st = SetNonBlocking(stream.fd.get());
  if (!st.ok()) {
    LOG_WARN("vsock: host stream: {}", st.error().ToString());
    return false;
  }
  // Not a socket (a pipe, -1): a byte stream too.
  const int type = SocketType(stream.fd.get());
  conn->host_records = type >= 0 && type != SOCK_STREAM;
  if (conn->seqpacket()) {
    // Message boundaries need a message socket on the host side too.
    if (type != SOCK_SEQPACKET) {
      LOG_WARN("vsock: host side of a SEQPACKET connection is not a SOCK_SEQPACKET socket");
      return false;
    }
    // AF_UNIX refuses (EMSGSIZE) a message larger than its send buffer: make room for the
    // largest message the guest may send, buf_alloc (the kernel doubles the value, capped
    // by net.core.wmem_max).
    int sndbuf = static_cast<int>(std::min<uint32_t>(opts_.buf_alloc, INT_MAX / 2 - 4096)) + 4096;
    (void)::setsockopt(stream.fd.get(), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  }
  conn->host_msg_flags = conn->seqpacket() && stream.message_flags;
  conn->host_fd = std::move(stream.fd);
  conn->prefix = std::move(stream.prefix);
  conn->prefix_off = 0;
  conn->host_readable = false;  // the registration reports what is already readable
  conn->host_writable = true;
  ConnKey key = conn->key();
  st = loop_->Add(conn->host_fd.get(), EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                  [this, key](uint32_t events) { OnHostEvent(key, events); });
  if (!st.ok()) {
    LOG_WARN("vsock: host stream: {}", st.error().ToString());
    conn->host_fd.Reset();
    return false;
  }
  conn->host_registered = true;
  return true;
}

void Device::Impl::OnHostConnected(ConnKey key, Result<HostStream> result) {
  Connection* conn = Find(key);
  if (conn == nullptr || conn->state() != ConnState::kConnectingHost) return;
  DestroyPendingConnect(conn);
  if (!result.ok()) {
    LOG_DEBUG("vsock: guest {} -> host port {}: {}", conn->info().guest_port,
              conn->info().host_port, result.error().ToString());
    FreeConnection(conn, RstReason::kRefused);
    return;
  }
  if (!AttachHost(conn, std::move(result).value())) {
    FreeConnection(conn, RstReason::kRefused);
    return;
  }
  conn->set_state(ConnState::kEstablished);
  conn->pending_ctrl |= Connection::kCtrlResponse;
  MaybeQueueRx(conn);
}

void Device::Impl::OnHostEvent(ConnKey key, uint32_t events) {
  Connection* conn = Find(key);
  if (conn == nullptr || !conn->host_fd.valid()) return;
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) conn->host_readable = true;
  if (events & (EPOLLRDHUP | EPOLLHUP)) conn->host_rdhup = true;
  if (events & EPOLLHUP) {
    conn->host_hup = true;
    // EOF was already forwarded as a half-close; now the peer stopped reading too.
    if (conn->host_eof && conn->state() == ConnState::kEstablished) {
      QueueShutdown(conn, VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND);
      EnterClosing(conn);
      MaybeQueueRx(conn);
      return;
    }
  }
  // A writable-only wakeup with nothing to write: AF_UNIX wakes us this way when the peer
  // does shutdown(SHUT_RD), which sets no poll bit of ours. Ask with a zero-length send, so the
  // guest learns it before it sends (vsock_test "SOCK_STREAM SHUT_RD" between two guests).
  // Stream only: on SOCK_SEQPACKET a zero-length send is an empty record.
  if ((events & (EPOLLOUT | EPOLLIN | EPOLLHUP | EPOLLERR)) == EPOLLOUT &&
      conn->state() == ConnState::kEstablished && !conn->host_stopped_reading &&
      !conn->host_records && !conn->host_not_socket && conn->buffer.empty() &&
      conn->pending_bytes == 0 && !conn->guest_sends_no_more() && HostStoppedReading(conn, 0)) {
    OnHostStoppedReading(conn);
  }
  if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
    conn->host_writable = true;
    if (!conn->buffer.empty() && conn->state() == ConnState::kEstablished) {
      if (!FlushToHost(conn)) return;
    }
  }
  MaybeQueueRx(conn);
}

void Device::Impl::QueueShutdown(Connection* conn, uint32_t flags) {
  conn->shutdown_to_send |= flags;
  conn->pending_ctrl |= Connection::kCtrlShutdown;
}

void Device::Impl::EnterClosing(Connection* conn) {
  conn->set_state(ConnState::kClosing);
  CloseHost(conn);
  DropGuestData(conn);
  conn->pending_ctrl &= ~(Connection::kCtrlCreditUpdate | Connection::kCtrlCreditReply);
  StartCloseTimer(conn);
}

void Device::Impl::StartCloseTimer(Connection* conn) {
  if (conn->timer != 0) return;
  ConnKey key = conn->key();
  std::weak_ptr<bool> alive = alive_;
  conn->timer = loop_->AddTimer(opts_.close_timeout, [this, alive, key] {
    if (alive.expired()) return;
    Connection* c = Find(key);
    if (c == nullptr) return;
    c->timer = 0;
    LOG_DEBUG("vsock: close timeout for guest port {}", c->info().guest_port);
    FreeConnection(c, RstReason::kCloseTimeout);
  });
}

void Device::Impl::OnHostEof(Connection* conn) {
  conn->host_eof = true;
  conn->host_readable = false;
  if (!conn->host_hup && conn->host_fd.valid()) {
    // The peer may have closed (not just shut its write side) after the event that made
    // us read: its EPOLLHUP is still queued. Ask the socket now, so that a peer's close()
    // reaches the guest as one SHUTDOWN(RCV|SEND), as a kernel peer's would.
    pollfd p{conn->host_fd.get(), 0, 0};
    if (::poll(&p, 1, 0) == 1 && (p.revents & POLLHUP) != 0) conn->host_hup = true;
  }
  if (conn->host_hup) {
    QueueShutdown(conn, VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND);
    EnterClosing(conn);
  } else {
    QueueShutdown(conn, VIRTIO_VSOCK_SHUTDOWN_SEND);
  }
}

void Device::Impl::ResetGuestConnections(std::span<const ConnectionInfo> connections) {
  size_t n = 0;
  for (const ConnectionInfo& c : connections) {
    if (Find(Connection::MakeKey(c.guest_port, c.host_cid, c.host_port)) != nullptr) continue;
    // The RST answering a packet of that connection from the guest.
    PacketHeader from_guest;
    from_guest.src_cid = opts_.guest_cid;
    from_guest.src_port = c.guest_port;
    from_guest.dst_cid = c.host_cid;
    from_guest.dst_port = c.host_port;
    from_guest.type = c.type;
    from_guest.op = VIRTIO_VSOCK_OP_RW;
    ReplyRst(from_guest, RstReason::kRestarted);
    ++n;
  }
  if (n == 0) return;
  LOG_INFO("vsock cid {}: resetting {} connections opened before the restart", opts_.guest_cid, n);
  ScheduleRx();
}

bool Device::Impl::HostStoppedReading(Connection* conn, int write_errno) {
  if (write_errno == 0) {
    msghdr empty{};
    if (::sendmsg(conn->host_fd.get(), &empty, MSG_NOSIGNAL | MSG_DONTWAIT) == 0) return false;
    write_errno = errno;
  }
  if (write_errno != EPIPE) return false;
  // POLLHUP: both directions are shut on our end, i.e. the peer closed (or shut both ways):
  // the connection ends the usual way (EOF, then SHUTDOWN(RCV|SEND) or RST).
  pollfd p{conn->host_fd.get(), 0, 0};
  return ::poll(&p, 1, 0) >= 0 && (p.revents & POLLHUP) == 0;
}

void Device::Impl::OnHostStoppedReading(Connection* conn) {
  if (conn->host_stopped_reading) return;
  conn->host_stopped_reading = true;
  LOG_DEBUG("vsock cid {}: guest port {}: the host peer stopped reading (SHUT_RD)", opts_.guest_cid,
            conn->info().guest_port);
  const uint32_t discarded = conn->Unforwarded();
  DropGuestData(conn);
  conn->OnForwardedToHost(discarded);
  QueueShutdown(conn, VIRTIO_VSOCK_SHUTDOWN_RCV);
  MaybeQueueRx(conn);
}

void Device::Impl::MaybeQueueRx(Connection* conn) {
  if (conn->in_rx_queue) return;
  if (!conn->WantsRx()) {
    if (!conn->credit_stalled && conn->WaitsForGuestCredit()) {
      conn->credit_stalled = true;
      ++stats_.credit_stalls;
    }
    return;
  }
  conn->credit_stalled = false;
  conn->in_rx_queue = true;
  rx_fifo_.push_back(conn->key());
  ScheduleRx();
}

void Device::Impl::MaybeCreditUpdate(Connection* conn) {
  if (conn->state() != ConnState::kEstablished) return;
  if ((conn->pending_ctrl & Connection::kCtrlCreditUpdate) || !conn->NeedsCreditUpdate()) return;
  conn->pending_ctrl |= Connection::kCtrlCreditUpdate;
  MaybeQueueRx(conn);
}

bool Device::Impl::MaybeFinishGuestSend(Connection* conn) {
  if (conn->state() == ConnState::kClosing && conn->guest_fully_shut()) {
    // We already shut down (the host went away) and waited for the guest's RST; its own
    // SHUTDOWN of both directions (it closed meanwhile) ends it now, as the kernel's host
    // side does: a Linux guest that closes waits for our RST (up to 8 s) before it frees
    // the socket.
    FreeConnection(conn, RstReason::kClosed);
    return false;
  }
  if (conn->state() != ConnState::kEstablished || !conn->guest_sends_no_more()) return true;
  if (!conn->guest_data_drained()) {
    // A host that never reads must not pin the connection forever.
    if (conn->guest_fully_shut()) StartCloseTimer(conn);
    return true;
  }
  // A guest that shut both ways at once (close()) has its host peer see both at once: the
  // close below, with no shutdown(SHUT_WR) first. A peer served by another thread (a
  // sibling VM's device) could otherwise see EOF alone in between and tell its guest
  // SHUTDOWN(SEND) while that guest may still send (vsock_test "SOCK_STREAM client
  // close" between two guests expects EPIPE once it sees the peer's close).
  if (conn->guest_fully_shut()) {
    FreeConnection(conn, RstReason::kClosed);
    return false;
  }
  if (!conn->host_shut_wr && conn->host_fd.valid()) {
    ::shutdown(conn->host_fd.get(), SHUT_WR);
    conn->host_shut_wr = true;
  }
  return true;
}

}  // namespace vsockd::vsock
