// Device::Impl, guest -> host: every tx chain popped, validated and dispatched; RW payloads
// written to host streams from guest memory, one writev per connection per batch.
#include "vsock/device_impl.h"

namespace vsockd::vsock {

size_t Device::Impl::ReplyCap() const {
  size_t cap = txq_ != nullptr ? txq_->size() : 128;
  return std::max<size_t>(cap, 1);
}

void Device::Impl::ScheduleTx() {
  std::weak_ptr<bool> alive = alive_;
  loop_->Defer([this, alive] {
    if (!alive.expired()) ProcessTx();
  });
}

void Device::Impl::ProcessTx() {
  if (in_tx_ || txq_ == nullptr || !txq_->configured() || txq_->broken() || tx_blocked_) {
    return;
  }
  in_tx_ = true;
  virtio::SplitQueue* q = txq_;
  for (;;) {
    q->DisableKicks();
    bool broken = false;
    const size_t cap = ReplyCap();
    while (replies_.size() < cap && txq_ == q) {
      PopResult r = q->Pop(&tx_chain_);
      if (r == PopResult::kEmpty) break;
      if (r == PopResult::kBroken) {
        broken = true;
        break;
      }
      if (r == PopResult::kBadChain) {
        stats_.dropped_packets++;
        LOG_RATELIMITED(LogLevel::kWarn, "vsock cid {}: malformed tx descriptor chain",
                        opts_.guest_cid);
      } else {
        HandleTxChain(tx_chain_);
      }
      tx_used_.push_back(tx_chain_.head);
    }
    FlushTxBatch();
    if (txq_ != q) break;  // a callback stopped the device meanwhile: do not touch q
    for (uint16_t head : tx_used_) q->PushUsed(head, 0);
    tx_used_.clear();
    const uint64_t notified = q->notifications_sent();
    q->Notify();
    stats_.tx_interrupts += q->notifications_sent() - notified;
    if (broken) {
      if (!tx_broken_logged_) {
        LOG_WARN("vsock cid {}: tx queue is corrupt, no longer used", opts_.guest_cid);
        tx_broken_logged_ = true;
      }
      break;
    }
    if (replies_.size() >= cap) {
      // The spec's deadlock rule: keep replies bounded; resume when rx drains them.
      tx_blocked_ = true;
      break;
    }
    if (!q->EnableKicks()) break;
  }
  tx_used_.clear();
  in_tx_ = false;
  if (!replies_.empty()) ScheduleRx();
}

void Device::Impl::Drop(const char* why, const PacketHeader* hdr) {
  stats_.dropped_packets++;
  if (hdr != nullptr) {
    LOG_RATELIMITED(LogLevel::kWarn, "vsock cid {}: dropped tx packet ({}): {}", opts_.guest_cid,
                    why, DescribeHeader(*hdr));
  } else {
    LOG_RATELIMITED(LogLevel::kWarn, "vsock cid {}: dropped tx packet ({})", opts_.guest_cid, why);
  }
}

void Device::Impl::ReplyRst(const PacketHeader& h, RstReason why) {
  if (h.op == VIRTIO_VSOCK_OP_RST) return;
  ++stats_.rst_by_reason[static_cast<size_t>(why)];
  replies_.push_back(MakeRstReply(h));
}

void Device::Impl::Violation(Connection* conn, const PacketHeader& h, const char* why) {
  LOG_RATELIMITED(LogLevel::kWarn, "vsock cid {}: {} in state {}, resetting: {}", opts_.guest_cid,
                  why, ConnStateName(conn->state()), DescribeHeader(h));
  if (conn->state() == ConnState::kConnectingGuest) {
    FailGuestConnect(conn, ECONNRESET, RstReason::kProtocol);
  } else {
    FreeConnection(conn, RstReason::kProtocol);
  }
}

void Device::Impl::HandleTxChain(const DescChain& chain) {
  stats_.tx_packets++;
  if (chain.writable_bytes > 0) return Drop("writable descriptors in a tx chain", nullptr);
  if (chain.readable_bytes < kHeaderSize) return Drop("shorter than a header", nullptr);
  uint8_t raw[kHeaderSize];
  CopyFromIov(chain.readable, 0, raw, kHeaderSize);  // copied once: no TOCTOU
  const PacketHeader h = DecodeHeader(raw);
  if (h.len > kMaxPacketPayload) return Drop("len above 64 KiB", &h);
  if (h.len > chain.readable_bytes - kHeaderSize) return Drop("len beyond the chain", &h);
  if (capture_) Capture(h, chain.readable, kHeaderSize);  // what the guest sent, as it came
  if (h.src_cid != opts_.guest_cid) return Drop("spoofed src_cid", &h);
  // The destination may be the host or another VM: the backend decides whether that peer
  // exists and may be reached (an unknown or forbidden CID fails the connect: RST). CIDs
  // nobody can be (0, 1, our own, VMADDR_CID_ANY, above 32 bits) are refused here.
  if (!IsRoutablePeer(h.dst_cid) || !TypeAllowed(h.type) || h.op == VIRTIO_VSOCK_OP_INVALID ||
      h.op > VIRTIO_VSOCK_OP_CREDIT_REQUEST) {
    LOG_RATELIMITED(LogLevel::kWarn, "vsock cid {}: refused tx packet: {}", opts_.guest_cid,
                    DescribeHeader(h));
    ReplyRst(h, RstReason::kProtocol);
    return;
  }
  ConnKey key = Connection::MakeKey(h.src_port, h.dst_cid, h.dst_port);
  Connection* conn = Find(key);
  if (conn == nullptr) {
    if (h.op == VIRTIO_VSOCK_OP_REQUEST) return OpenFromGuest(h);
    LOG_DEBUG("vsock cid {}: packet for unknown connection: {}", opts_.guest_cid,
              DescribeHeader(h));
    ReplyRst(h, RstReason::kUnknownConnection);
    return;
  }
  // An RST ends the connection whatever its type says (the state switch below tells a
  // pending connect it was refused); any other packet of the wrong type is a violation.
  if (h.type != conn->info().type && h.op != VIRTIO_VSOCK_OP_RST) {
    return Violation(conn, h, "packet type differs from the connection's");
  }
  conn->UpdatePeerCredit(h);
  switch (conn->state()) {
    case ConnState::kConnectingHost:
      if (h.op == VIRTIO_VSOCK_OP_RST) return FreeConnection(conn, RstReason::kNone);
      if (h.op == VIRTIO_VSOCK_OP_CREDIT_UPDATE || h.op == VIRTIO_VSOCK_OP_CREDIT_REQUEST) {
        return;  // the RESPONSE will carry our credit
      }
      return Violation(conn, h, "unexpected packet while connecting");
    case ConnState::kConnectingGuest:
      if (h.op == VIRTIO_VSOCK_OP_RESPONSE && conn->request_sent) {
        return CompleteGuestConnect(conn);
      }
      if (h.op == VIRTIO_VSOCK_OP_RST) {
        LOG_DEBUG("vsock cid {}: guest port {} refused the connection", opts_.guest_cid,
                  h.src_port);
        return FailGuestConnect(conn, ECONNREFUSED, RstReason::kNone);
      }
      return Violation(conn, h, "unexpected packet while connecting to the guest");
    case ConnState::kClosing:
      if (h.op == VIRTIO_VSOCK_OP_RST) return FreeConnection(conn, RstReason::kNone);
      if (h.op == VIRTIO_VSOCK_OP_SHUTDOWN) {
        conn->AddPeerShutdown(h.flags);
        (void)MaybeFinishGuestSend(conn);  // both directions shut: RST now
      }
      return;  // waiting for the guest's RST; data and credit are moot
    case ConnState::kEstablished:
      break;
  }
  switch (h.op) {
    case VIRTIO_VSOCK_OP_RST:
      return FreeConnection(conn, RstReason::kNone);
    case VIRTIO_VSOCK_OP_REQUEST:
      return Violation(conn, h, "REQUEST for an existing connection");
    case VIRTIO_VSOCK_OP_RESPONSE:
      return Violation(conn, h, "unexpected RESPONSE");
    case VIRTIO_VSOCK_OP_RW:
      if (!HandleRw(conn, h, chain)) return;
      break;
    case VIRTIO_VSOCK_OP_CREDIT_UPDATE:
      break;  // credit already refreshed from the header
    case VIRTIO_VSOCK_OP_CREDIT_REQUEST:
      conn->pending_ctrl |= Connection::kCtrlCreditReply;
      break;
    case VIRTIO_VSOCK_OP_SHUTDOWN:
      // SHUTDOWN(RCV) becomes the host socket's shutdown(SHUT_RD): an AF_UNIX peer's sends
      // then fail with EPIPE, as a vsock peer's do after the kernel sees SHUTDOWN(RCV).
      if ((conn->AddPeerShutdown(h.flags) & VIRTIO_VSOCK_SHUTDOWN_RCV) != 0 &&
          conn->host_fd.valid() && !conn->host_not_socket) {
        ::shutdown(conn->host_fd.get(), SHUT_RD);
      }
      if (conn->guest_sends_no_more()) DropPartialMessage(conn);
      if (!MaybeFinishGuestSend(conn)) return;
      break;
  }
  MaybeQueueRx(conn);  // fresh credit may unblock host -> guest data
}

void Device::Impl::OpenFromGuest(const PacketHeader& h) {
  if (AdmitFromGuest(h) != Refusal::kNone) {
    ReplyRst(h, RstReason::kRefused);
    return;
  }
  ConnectionInfo info{opts_.guest_cid, h.src_port, h.dst_cid, h.dst_port, h.type};
  Connection* conn = AddConnection(info, ConnState::kConnectingHost);
  conn->UpdatePeerCredit(h);
  ConnKey key = conn->key();
  std::weak_ptr<bool> alive = alive_;
  conn->host_connect = backend_->ConnectToHost(info, [this, alive, key](Result<HostStream> result) {
    if (alive.expired()) return;
    OnHostConnected(key, std::move(result));
  });
}

void Device::Impl::CompleteGuestConnect(Connection* conn) {
  if (conn->timer != 0) {
    loop_->CancelTimer(conn->timer);
    conn->timer = 0;
  }
  GuestConnectDone done = TakeGuestConnect(conn);
  ConnKey key = conn->key();
  uint32_t host_port = conn->info().host_port;
  std::optional<HostStream> stream;
  if (done) stream = done(host_port);
  conn = Find(key);  // done() may have re-entered the device
  if (conn == nullptr || conn->state() != ConnState::kConnectingGuest) return;
  if (!stream || !AttachHost(conn, std::move(*stream))) {
    FreeConnection(conn, RstReason::kRefused);
    return;
  }
  conn->set_state(ConnState::kEstablished);
  LOG_DEBUG("vsock: established host port {} -> guest port {}", host_port, conn->info().guest_port);
  MaybeQueueRx(conn);
}

bool Device::Impl::HandleRw(Connection* conn, const PacketHeader& h, const DescChain& chain) {
  // An empty RW carries nothing, except an EOM that ends a seqpacket message.
  const bool ends_message =
      conn->seqpacket() && (h.flags & VIRTIO_VSOCK_SEQ_EOM) != 0 && conn->partial_bytes > 0;
  if (h.len == 0 && !ends_message) return true;
  if (conn->guest_sends_no_more()) {
    Drop("RW after SHUTDOWN(SEND)", &h);
    return true;
  }
  if (!conn->GuestMaySend(h.len)) {
    LOG_RATELIMITED(LogLevel::kWarn,
                    "vsock cid {}: guest exceeded its credit (buf_alloc {}, unforwarded {}), "
                    "resetting: {}",
                    opts_.guest_cid, conn->buf_alloc(), conn->Unforwarded(), DescribeHeader(h));
    FreeConnection(conn, RstReason::kProtocol);
    return false;
  }
  conn->OnReceivedFromGuest(h.len);
  stats_.tx_bytes += h.len;
  if (conn->host_stopped_reading) {
    // Sent before the guest saw our SHUTDOWN(RCV): nobody reads it; consumed, so credit holds.
    conn->OnForwardedToHost(h.len);
    return true;
  }
  if (conn->seqpacket()) {
    // A message begun in this batch stays in guest memory (pending_iov) until the batch's
    // flush; one begun in an earlier batch was copied, and so are its later fragments.
    if (conn->partial_bytes == 0) {
      conn->partial_direct = true;
      conn->partial_iov_begin = conn->pending_iov.size();
    }
    if (conn->partial_direct &&
        conn->pending_iov.size() - conn->partial_iov_begin + chain.readable.size() >= kMaxIov) {
      // A message in more pieces than one sendmsg takes (a guest's choice, not Linux's):
      // copy what this batch holds so far, in order, and this message's rest with it.
      BufferDirectMessages(conn, 0);
    }
    if (conn->partial_direct) {
      SliceIov(chain.readable, kHeaderSize, h.len, &conn->pending_iov, SIZE_MAX);
    } else {
      seq_slices_.clear();
      SliceIov(chain.readable, kHeaderSize, h.len, &seq_slices_, SIZE_MAX);
      for (const iovec& v : seq_slices_) conn->buffer.Append(v.iov_base, v.iov_len);
      stats_.buffered_bytes += h.len;
    }
    conn->partial_bytes += h.len;
    if ((h.flags & VIRTIO_VSOCK_SEQ_EOM) != 0) {
      conn->messages.push_back(Connection::GuestMessage{
          conn->partial_bytes, (h.flags & VIRTIO_VSOCK_SEQ_EOR) != 0, conn->partial_direct});
      conn->partial_bytes = 0;
      conn->partial_direct = false;
    }
    // Flushed at the end of the batch even without a complete message: a direct part must
    // be copied before the chains go back.
  } else {
    size_t got = SliceIov(chain.readable, kHeaderSize, h.len, &conn->pending_iov, SIZE_MAX);
    conn->pending_bytes += got;
  }
  if (!conn->in_flush_list) {
    conn->in_flush_list = true;
    flush_keys_.push_back(conn->key());
  }
  return true;
}

void Device::Impl::FlushTxBatch() {
  for (const ConnKey& key : flush_keys_) {
    Connection* conn = Find(key);
    if (conn == nullptr || !conn->in_flush_list) continue;
    conn->in_flush_list = false;
    FlushToHost(conn);
  }
  flush_keys_.clear();
}

bool Device::Impl::FlushToHost(Connection* conn) {
  if (conn->seqpacket()) return FlushMessagesToHost(conn);
  size_t written = 0;
  const size_t total = conn->buffer.size() + conn->pending_bytes;
  if (total > 0 && conn->host_writable && conn->host_fd.valid()) {
    write_iov_.clear();
    if (!conn->buffer.empty()) {
      write_iov_.push_back(iovec{const_cast<uint8_t*>(conn->buffer.data()), conn->buffer.size()});
    }
    write_iov_.insert(write_iov_.end(), conn->pending_iov.begin(), conn->pending_iov.end());
    size_t idx = 0;
    while (idx < write_iov_.size()) {
      size_t cnt = std::min(write_iov_.size() - idx, kMaxIov);
      size_t want = IovecBytes(&write_iov_[idx], cnt);
      ssize_t n = WriteHost(conn, &write_iov_[idx], cnt);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          conn->host_writable = false;
          break;
        }
        const int err = errno;
        if (HostStoppedReading(conn, err)) {
          OnHostStoppedReading(conn);  // discards this batch too
          return true;
        }
        LOG_DEBUG("vsock: host write for guest port {}: {}", conn->info().guest_port,
                  std::strerror(err));
        FreeConnection(conn, RstReason::kHostError);
        return false;
      }
      written += static_cast<size_t>(n);
      // Advance past what was written.
      size_t left = static_cast<size_t>(n);
      while (left > 0 && idx < write_iov_.size()) {
        iovec& v = write_iov_[idx];
        if (left >= v.iov_len) {
          left -= v.iov_len;
          ++idx;
        } else {
          v.iov_base = static_cast<uint8_t*>(v.iov_base) + left;
          v.iov_len -= left;
          left = 0;
        }
      }
      if (static_cast<size_t>(n) < want) {
        conn->host_writable = false;  // short write: the socket buffer is full
        break;
      }
    }
  }
  size_t from_buffer = std::min(written, conn->buffer.size());
  conn->buffer.Consume(from_buffer);
  stats_.buffered_bytes -= from_buffer;
  size_t skip = written - from_buffer;
  for (const iovec& v : conn->pending_iov) {
    if (skip >= v.iov_len) {
      skip -= v.iov_len;
      continue;
    }
    conn->buffer.Append(static_cast<const uint8_t*>(v.iov_base) + skip, v.iov_len - skip);
    stats_.buffered_bytes += v.iov_len - skip;
    skip = 0;
  }
  conn->pending_iov.clear();
  conn->pending_bytes = 0;
  if (written > 0) {
    conn->OnForwardedToHost(static_cast<uint32_t>(written));
    MaybeCreditUpdate(conn);
  }
  return MaybeFinishGuestSend(conn);
}

ssize_t Device::Impl::WriteHost(Connection* conn, const iovec* iov, size_t cnt) {
  if (!conn->host_not_socket) {
    msghdr msg{};
    msg.msg_iov = const_cast<iovec*>(iov);
    msg.msg_iovlen = cnt;
    // MSG_NOSIGNAL: a host peer that went away must give EPIPE, not kill the daemon.
    ssize_t n = ::sendmsg(conn->host_fd.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0 || errno != ENOTSOCK) return n;
    conn->host_not_socket = true;
  }
  return ::writev(conn->host_fd.get(), iov, static_cast<int>(cnt));
}

}  // namespace vsockd::vsock
