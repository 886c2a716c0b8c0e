// Device::Impl, SEQPACKET framing both ways: complete guest messages to the host in
// sendmmsg batches (copied only when they span batches or the host is full), and each host
// message read with one recvmsg into rx buffers (the rules: device_impl.h "SEQPACKET").
#include "vsock/device_impl.h"

namespace vsockd::vsock {

bool Device::Impl::FlushMessagesToHost(Connection* conn) {
  uint32_t written = 0;
  size_t iov_done = 0;  // pending_iov entries of the direct messages sent
  while (!conn->messages.empty() && conn->host_writable && conn->host_fd.valid()) {
    const size_t count = std::min(conn->messages.size(), kMaxMessageBatch);
    mmsg_.assign(count, mmsghdr{});
    mmsg_iov_.clear();
    size_t buffer_off = 0;
    size_t direct_iov = iov_done;
    for (size_t i = 0; i < count; ++i) {
      const Connection::GuestMessage& m = conn->messages[i];
      if (m.direct) {
        for (size_t left = m.len; left > 0; ++direct_iov) {
          mmsg_iov_.push_back(conn->pending_iov[direct_iov]);
          left -= conn->pending_iov[direct_iov].iov_len;
        }
      } else {
        mmsg_iov_.push_back(iovec{const_cast<uint8_t*>(conn->buffer.data()) + buffer_off, m.len});
        buffer_off += m.len;
      }
      // With host_msg_flags the record ends with the message's flags byte.
      if (conn->host_msg_flags) {
        mmsg_trailer_[i] = static_cast<uint8_t>(MessageEndFlags(m.eor));
        mmsg_iov_.push_back(iovec{&mmsg_trailer_[i], 1});
      }
      mmsg_[i].msg_len = static_cast<unsigned>(mmsg_iov_.size());  // end index, for now
    }
    for (size_t i = 0, begin = 0; i < count; ++i) {
      const size_t end = mmsg_[i].msg_len;
      mmsg_[i].msg_hdr.msg_iov = mmsg_iov_.data() + begin;
      mmsg_[i].msg_hdr.msg_iovlen = end - begin;
      mmsg_[i].msg_len = 0;
      begin = end;
    }
    // No MSG_EOR: AF_UNIX ignores it (EOR crosses sibling bridges in the trailer byte).
    int sent = ::sendmmsg(conn->host_fd.get(), mmsg_.data(), static_cast<unsigned>(count),
                          MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent < 0 && errno == EINTR) continue;
    if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      conn->host_writable = false;
      break;
    }
    if (sent < 0 && HostStoppedReading(conn, errno)) {
      OnHostStoppedReading(conn);  // SHUTDOWN(RCV) to the guest; these messages are discarded
      return true;
    }
    // A later message's error is not reported (sendmmsg): the next call starts with it.
    for (int i = 0; i < std::max(sent, 1); ++i) {
      const Connection::GuestMessage m = conn->messages.front();
      const size_t record = m.len + (conn->host_msg_flags ? 1 : 0);
      if (sent < 0 || mmsg_[i].msg_len != record) {
        LOG_RATELIMITED(LogLevel::kWarn,
                        "vsock cid {}: guest port {}: host refused a {}-byte message ({}), "
                        "resetting",
                        opts_.guest_cid, conn->info().guest_port, m.len,
                        sent < 0 ? std::strerror(errno) : "short write");
        FreeConnection(conn, RstReason::kHostError);
        return false;
      }
      if (m.direct) {
        for (size_t left = m.len; left > 0; ++iov_done) {
          left -= conn->pending_iov[iov_done].iov_len;
        }
      } else {
        conn->buffer.Consume(m.len);
        stats_.buffered_bytes -= m.len;
      }
      conn->messages.pop_front();
      written += m.len;
    }
  }
  BufferDirectMessages(conn, iov_done);
  if (written > 0) {
    conn->OnForwardedToHost(written);
    MaybeCreditUpdate(conn);
  }
  return MaybeFinishGuestSend(conn);
}

void Device::Impl::BufferDirectMessages(Connection* conn, size_t from) {
  for (size_t i = from; i < conn->pending_iov.size(); ++i) {
    const iovec& v = conn->pending_iov[i];
    conn->buffer.Append(v.iov_base, v.iov_len);
    stats_.buffered_bytes += v.iov_len;
  }
  conn->pending_iov.clear();
  for (Connection::GuestMessage& m : conn->messages) m.direct = false;
  conn->partial_direct = false;
}

void Device::Impl::DropPartialMessage(Connection* conn) {
  if (!conn->seqpacket() || conn->partial_bytes == 0) return;
  LOG_DEBUG("vsock cid {}: guest port {}: dropping {} bytes of an unfinished message",
            opts_.guest_cid, conn->info().guest_port, conn->partial_bytes);
  if (conn->partial_direct) {
    conn->pending_iov.resize(conn->partial_iov_begin);
    conn->partial_direct = false;
  } else {
    conn->buffer.DropTail(conn->partial_bytes);
    stats_.buffered_bytes -= conn->partial_bytes;
  }
  conn->OnForwardedToHost(conn->partial_bytes);
  conn->partial_bytes = 0;
}

auto Device::Impl::SendMessages(Connection* conn) -> Served {
  size_t chains = 0;
  size_t bytes = 0;
  while (chains < kTurnChains && bytes < kTurnBytes) {
    if (!conn->out_msg_pending()) {
      if (!conn->HostReadWanted() || conn->PeerFree() == 0) break;
      Served served;
      if (!ReadHostMessageToGuest(conn, kTurnChains - chains, &chains, &bytes, &served)) {
        return served;
      }
      continue;
    }
    uint32_t credit = conn->PeerFree();
    if (credit == 0) break;
    DescChain& ch = rx_pool_[0];
    // A buffer with room for the header and at least one payload byte.
    if (!PopRxChain(&ch, kHeaderSize + 1)) return Served::kStarved;
    size_t left = conn->out_msg.size() - conn->out_msg_off;
    size_t len = std::min<size_t>(
        {ch.writable_bytes - kHeaderSize, kMaxPacketPayload, static_cast<size_t>(credit), left});
    CopyToIov(ch.writable, kHeaderSize, conn->out_msg.data() + conn->out_msg_off, len);
    conn->out_msg_off += len;
    const bool last = !conn->out_msg_pending();
    SendRw(conn, ch, len, last ? MessageEndFlags(conn->out_msg_eor) : 0);
    ++chains;
    bytes += len;
    if (last) {
      conn->out_msg.clear();
      conn->out_msg_off = 0;
    }
  }
  return Served::kDone;
}

uint32_t Device::Impl::MessageEndFlags(bool eor) {
  return VIRTIO_VSOCK_SEQ_EOM | (eor ? VIRTIO_VSOCK_SEQ_EOR : 0);
}

bool Device::Impl::ReadHostMessageToGuest(Connection* conn, size_t max_chains, size_t* chains,
                                          size_t* bytes, Served* served) {
  *served = Served::kDone;
  const uint64_t limit = std::min(conn->peer_buf_alloc(), opts_.buf_alloc);
  // The flags trailer is not payload (and a record of just a trailer is an empty message:
  // dropped below).
  const size_t trailer = conn->host_msg_flags ? 1 : 0;
  const size_t credit = conn->PeerFree();
  const size_t most = std::max<size_t>(1, std::min<size_t>(credit, limit));
  const size_t want = std::clamp<size_t>(conn->last_host_msg_len, 1, most);
  for (;;) {
    size_t n = 0;
    size_t cap_total = 0;
    rx_iov_.clear();
    bool broken = false;
    while (n < max_chains && cap_total < want) {
      // One iovec stays free for the scratch area.
      PopResult r = PopRxForRead(n, credit - cap_total, kMaxIov - 1);
      if (r == PopResult::kEmpty) break;
      if (r == PopResult::kBroken) {
        broken = true;
        break;
      }
      cap_total += rx_caps_[n];
      ++n;
    }
    if (n == 0 || broken) {
      *served = Served::kStarved;  // the message stays in the host socket until buffers come
      return false;
    }
    // Room for the largest message that may be delivered, its trailer, and one byte more so
    // that a larger one shows up (MSG_TRUNC also reports its real size).
    const size_t scratch = static_cast<size_t>(limit) + trailer + 1;
    if (msg_scratch_.size() < scratch) msg_scratch_.resize(scratch);
    rx_iov_.push_back(iovec{msg_scratch_.data(), scratch});
    msghdr msg{};
    msg.msg_iov = rx_iov_.data();
    msg.msg_iovlen = rx_iov_.size();
    ssize_t got;
    do {
      got = ::recvmsg(conn->host_fd.get(), &msg, MSG_DONTWAIT | MSG_TRUNC);
    } while (got < 0 && errno == EINTR);
    if (got <= 0) {
      rxq_->Unpop(static_cast<uint16_t>(n));
      if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          conn->host_readable = false;
          return false;
        }
        LOG_DEBUG("vsock: host read for guest port {}: {}", conn->info().guest_port,
                  std::strerror(errno));
        FreeConnection(conn, RstReason::kHostError);
        *served = Served::kFreed;
        return false;
      }
      // EOF, or an empty message (which vsock cannot carry). Once the peer shut down
      // (RDHUP) treat it as EOF; before, the empty message is consumed: look again while
      // bytes are queued.
      if (conn->host_rdhup) {
        OnHostEof(conn);
        return false;
      }
      int queued = 0;
      if (::ioctl(conn->host_fd.get(), FIONREAD, &queued) == 0 && queued > 0) continue;
      conn->host_readable = false;
      return false;
    }
    const size_t size = static_cast<size_t>(got);
    if (size - trailer > limit || (msg.msg_flags & MSG_TRUNC) != 0) {
      rxq_->Unpop(static_cast<uint16_t>(n));
      LOG_RATELIMITED(LogLevel::kWarn,
                      "vsock cid {}: guest port {}: host message of {} bytes exceeds the "
                      "limit {} (guest buf_alloc {}, ours {}), resetting",
                      opts_.guest_cid, conn->info().guest_port, size - trailer, limit,
                      conn->peer_buf_alloc(), opts_.buf_alloc);
      FreeConnection(conn, RstReason::kHostError);
      *served = Served::kFreed;
      return false;
    }
    bool eor = false;
    if (trailer != 0) {
      uint8_t flags =
          size - 1 < cap_total ? ByteAt(rx_iov_, size - 1) : msg_scratch_[size - 1 - cap_total];
      eor = (flags & VIRTIO_VSOCK_SEQ_EOR) != 0;
    }
    const size_t payload = size - trailer;
    if (payload == 0) {
      rxq_->Unpop(static_cast<uint16_t>(n));
      continue;  // a record of just the trailer: an empty message, dropped
    }
    conn->last_host_msg_len = payload;
    const size_t in_rx = std::min(payload, cap_total);
    const size_t rest = payload - in_rx;
    if (rest > 0) {
      conn->out_msg.assign(msg_scratch_.data(), msg_scratch_.data() + rest);
      conn->out_msg_off = 0;
      conn->out_msg_eor = eor;
    }
    *chains += SendReadChains(conn, n, in_rx, rest == 0 ? MessageEndFlags(eor) : 0);
    *bytes += in_rx;
    return true;
  }
}

}  // namespace vsockd::vsock
