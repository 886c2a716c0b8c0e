// Device::Impl, host -> guest: rx scheduling (a FIFO of connections with work, fair turns),
// rx buffers, control packets, and stream data read straight into rx buffers within credit.
#include "vsock/device_impl.h"

namespace vsockd::vsock {

using virtio::PopResult;

void Device::Impl::ScheduleRx() {
  if (rx_scheduled_) return;
  rx_scheduled_ = true;
  std::weak_ptr<bool> alive = alive_;
  loop_->Defer([this, alive] {
    if (alive.expired()) return;
    rx_scheduled_ = false;
    RunRx();
  });
}

bool Device::Impl::RxUsable() {
  if (rxq_ == nullptr || !rxq_->configured()) return false;
  if (rxq_->broken()) {
    if (!rx_broken_logged_) {
      LOG_WARN("vsock cid {}: rx queue is corrupt, no longer used", opts_.guest_cid);
      rx_broken_logged_ = true;
    }
    return false;
  }
  return true;
}

void Device::Impl::RunRx() {
  if (!RxUsable()) return;
  virtio::SplitQueue* q = rxq_;
  bool starved = false;
  for (;;) {
    starved = false;
    while (!replies_.empty()) {
      if (!PopRxChain(&rx_pool_[0])) {
        starved = true;
        break;
      }
      WriteHeader(rx_pool_[0], replies_.front(), 0);
      replies_.pop_front();
      stats_.rst_sent++;
    }
    // One pass over the connections waiting now; a connection that still has work after
    // its turn goes to the back (and another pass is scheduled).
    size_t turns = rx_fifo_.size();
    while (!starved && turns-- > 0 && !rx_fifo_.empty() && rxq_ == q && RxUsable()) {
      ConnKey key = rx_fifo_.front();
      rx_fifo_.pop_front();
      Connection* conn = Find(key);
      if (conn == nullptr || !conn->in_rx_queue) continue;
      conn->in_rx_queue = false;
      Served r = Serve(conn);
      if (r == Served::kFreed) continue;
      if (r == Served::kStarved) {
        starved = true;
        conn->in_rx_queue = true;
        rx_fifo_.push_front(key);
        break;
      }
      MaybeQueueRx(conn);
    }
    if (rxq_ != q || !RxUsable()) return;
    if (starved && q->EnableKicks()) continue;  // buffers arrived meanwhile: go on
    break;
  }
  // Kicks are only useful while we wait for buffers.
  if (!starved) q->DisableKicks();
  const uint64_t notified = q->notifications_sent();
  q->Notify();
  stats_.rx_interrupts += q->notifications_sent() - notified;
  if (tx_blocked_ && replies_.size() < ReplyCap()) {
    tx_blocked_ = false;
    ProcessTx();
  }
}

PopResult Device::Impl::PopUsableRx(DescChain* chain, size_t min_writable, size_t popped) {
  for (;;) {
    PopResult r = rxq_->Pop(chain);
    if (r == PopResult::kEmpty) return r;
    if (r == PopResult::kBroken) {
      RxUsable();
      return r;
    }
    if (r == PopResult::kOk && chain->readable_bytes == 0 &&
        chain->writable_bytes >= min_writable) {
      return PopResult::kOk;
    }
    if (popped > 0) {
      rxq_->Unpop(1);
      return PopResult::kEmpty;
    }
    LOG_RATELIMITED(LogLevel::kWarn, "vsock cid {}: unusable rx buffer returned empty",
                    opts_.guest_cid);
    rxq_->PushUsed(chain->head, 0);
  }
}

bool Device::Impl::PopRxChain(DescChain* chain, size_t min_writable) {
  return PopUsableRx(chain, min_writable) == PopResult::kOk;
}

PopResult Device::Impl::PopRxForRead(size_t n, size_t room, size_t iov_limit) {
  if (rx_iov_.size() >= iov_limit) return PopResult::kEmpty;
  DescChain& ch = rx_pool_[n];
  PopResult r = PopUsableRx(&ch, kHeaderSize + 1, n);
  if (r != PopResult::kOk) return r;
  size_t cap = std::min<size_t>({ch.writable_bytes - kHeaderSize, kMaxPacketPayload, room});
  rx_caps_[n] = SliceIov(ch.writable, kHeaderSize, cap, &rx_iov_, iov_limit - rx_iov_.size());
  return r;
}

size_t Device::Impl::SendReadChains(Connection* conn, size_t n, size_t got, uint32_t last_flags) {
  size_t used = 0;
  for (size_t left = got; used < n && left > 0; ++used) left -= std::min(left, rx_caps_[used]);
  if (used < n) rxq_->Unpop(static_cast<uint16_t>(n - used));
  size_t left = got;
  for (size_t i = 0; i < used; ++i) {
    size_t len = std::min(left, rx_caps_[i]);
    left -= len;
    SendRw(conn, rx_pool_[i], len, i + 1 == used ? last_flags : 0);
  }
  return used;
}

void Device::Impl::SendRw(Connection* conn, const DescChain& ch, size_t len, uint32_t flags) {
  uint32_t n = static_cast<uint32_t>(len);
  RefreshCredit(conn);
  WriteHeader(ch, conn->MakeHeader(VIRTIO_VSOCK_OP_RW, flags, n), n);
  conn->OnSentToGuest(n);
  stats_.rx_bytes += n;
}

void Device::Impl::WriteHeader(const DescChain& chain, const PacketHeader& h, uint32_t payload) {
  uint8_t raw[kHeaderSize];
  EncodeHeader(h, raw);
  CopyToIov(chain.writable, 0, raw, kHeaderSize);
  if (capture_) Capture(h, chain.writable, kHeaderSize);  // the payload is in place already
  rxq_->PushUsed(chain.head, static_cast<uint32_t>(kHeaderSize + payload));
  stats_.rx_packets++;
}

bool Device::Impl::SendControl(Connection* conn, uint16_t op, uint32_t flags) {
  if (!PopRxChain(&rx_pool_[0])) return false;
  // The header is made only once a buffer is in hand: it records fwd_cnt as sent.
  RefreshCredit(conn);
  WriteHeader(rx_pool_[0], conn->MakeHeader(op, flags, 0), 0);
  return true;
}

auto Device::Impl::Serve(Connection* conn) -> Served {
  if (conn->pending_ctrl & Connection::kCtrlRequest) {
    if (!SendControl(conn, VIRTIO_VSOCK_OP_REQUEST, 0)) return Served::kStarved;
    conn->pending_ctrl &= ~Connection::kCtrlRequest;
    conn->request_sent = true;
  }
  if (conn->pending_ctrl & Connection::kCtrlResponse) {
    if (!SendControl(conn, VIRTIO_VSOCK_OP_RESPONSE, 0)) return Served::kStarved;
    conn->pending_ctrl &= ~Connection::kCtrlResponse;
  }
  if (conn->state() == ConnState::kEstablished && conn->PeerFree() > 0 &&
      (conn->prefix_pending() || conn->out_msg_pending() || conn->HostReadWanted())) {
    Served r = conn->seqpacket() ? SendMessages(conn) : SendData(conn);
    if (r != Served::kDone) return r;
  }
  if (conn->pending_ctrl & Connection::kCtrlShutdown) {
    if (!SendControl(conn, VIRTIO_VSOCK_OP_SHUTDOWN, conn->shutdown_to_send)) {
      return Served::kStarved;
    }
    conn->pending_ctrl &= ~Connection::kCtrlShutdown;
  }
  constexpr uint32_t kCredit = Connection::kCtrlCreditUpdate | Connection::kCtrlCreditReply;
  if (conn->pending_ctrl & kCredit) {
    // A proactive update is dropped if data packets already carried the fresh fwd_cnt.
    bool send = (conn->pending_ctrl & Connection::kCtrlCreditReply) || conn->NeedsCreditUpdate();
    if (send && !SendControl(conn, VIRTIO_VSOCK_OP_CREDIT_UPDATE, 0)) return Served::kStarved;
    conn->pending_ctrl &= ~kCredit;
  }
  return Served::kDone;
}

auto Device::Impl::SendData(Connection* conn) -> Served {
  const size_t budget = std::min<size_t>(conn->PeerFree(), kTurnBytes);
  const bool from_prefix = conn->prefix_pending();
  // A record socket (SOCK_SEQPACKET) must be read in one readv: a record read in pieces
  // loses its tail.
  const bool one_read = from_prefix || conn->host_records;
  // A stream whose last read filled every buffer it was given is streaming: it skips the
  // probe and reads its whole turn at once (one readv instead of readv + FIONREAD + readv;
  // host->guest 64 KiB +3% in the one-cpu benchmark). A short read ends streaming.
  const bool whole_turn = one_read || conn->rx_streaming;
  size_t want = whole_turn ? kTurnChains : 1;  // chains to have popped after this round
  size_t want_bytes = SIZE_MAX;                // stop popping once this round holds this
  size_t n = 0;                                // chains popped: rx_pool_[0, n)
  size_t cap_total = 0;                        // their data capacity
  size_t got_total = 0;                        // bytes placed in them
  bool more = true;                            // the ring may have usable chains left
  int read_error = 0;                          // errno of a failed read (0: none)
  bool eof = false;
  while (more) {
    const size_t first = n;
    rx_iov_.clear();
    size_t cap_round = 0;
    while (n < want && cap_total < budget && cap_round < want_bytes) {
      PopResult r = PopRxForRead(n, budget - cap_total, kMaxIov);
      if (r == PopResult::kEmpty) {
        more = false;
        break;
      }
      if (r == PopResult::kBroken) return Served::kStarved;  // nothing popped may be touched
      cap_total += rx_caps_[n];
      cap_round += rx_caps_[n];
      ++n;
    }
    if (n == first) break;

    ssize_t got;
    if (from_prefix) {
      size_t avail = conn->prefix.size() - conn->prefix_off;
      size_t take = std::min(avail, cap_round);
      CopyToIov(rx_iov_, 0,
                reinterpret_cast<const uint8_t*>(conn->prefix.data()) + conn->prefix_off, take);
      conn->prefix_off += take;
      if (!conn->prefix_pending()) {
        conn->prefix.clear();
        conn->prefix.shrink_to_fit();
        conn->prefix_off = 0;
      }
      got = static_cast<ssize_t>(take);
    } else {
      do {
        got = ::readv(conn->host_fd.get(), rx_iov_.data(), static_cast<int>(rx_iov_.size()));
      } while (got < 0 && errno == EINTR);
    }
    if (got <= 0) {
      if (got < 0) read_error = errno;
      eof = got == 0;
      rxq_->Unpop(static_cast<uint16_t>(n - first));
      n = first;
      break;
    }
    got_total += static_cast<size_t>(got);
    if (static_cast<size_t>(got) < cap_round) {
      if (!from_prefix && !conn->host_rdhup) {
        // Stream socket drained; the next edge re-arms us. After RDHUP no edge will come:
        // stay readable so the next read sees the EOF.
        conn->host_readable = false;
      }
      break;
    }
    if (one_read || cap_total >= budget || n >= kTurnChains) break;
    int queued = 0;
    if (::ioctl(conn->host_fd.get(), FIONREAD, &queued) == 0) {
      if (queued <= 0) {
        // Drained exactly; as after a short read (after RDHUP, the next read sees EOF).
        if (!conn->host_rdhup) conn->host_readable = false;
        break;
      }
      want_bytes = static_cast<size_t>(queued);
    }
    want = kTurnChains;
  }
  if (n == 0 && got_total == 0 && read_error == 0 && !eof) return Served::kStarved;

  if (read_error != 0 && read_error != EAGAIN && read_error != EWOULDBLOCK) {
    rxq_->Unpop(static_cast<uint16_t>(n));
    LOG_DEBUG("vsock: host read for guest port {}: {}", conn->info().guest_port,
              std::strerror(read_error));
    FreeConnection(conn, RstReason::kHostError);
    return Served::kFreed;
  }
  if (read_error != 0) conn->host_readable = false;
  conn->rx_streaming = got_total > 0 && got_total == cap_total;
  SendReadChains(conn, n, got_total, 0);
  // After the data it follows: the SHUTDOWN is sent once these headers are out.
  if (eof) OnHostEof(conn);
  return Served::kDone;
}

}  // namespace vsockd::vsock
