#include "vguest/stream.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "base/log.h"

namespace vsockd::vguest {

using namespace vsockd::vsock;  // NOLINT(google-build-using-namespace): op names verbatim

namespace {

constexpr uint32_t kShutdownBoth = VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND;

// Linux 6.1 sends CREDIT_UPDATE after a read once the peer may see less than 64 KiB
// (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE) of free space. With a small buf_alloc that would mean an
// update after every read, so scale the threshold down to a quarter of the buffer (which is
// exactly 64 KiB for the 256 KiB default).
uint32_t CreditUpdateThreshold(uint32_t buf_alloc) {
  return std::max<uint32_t>(1, std::min<uint32_t>(kMaxPacketPayload, buf_alloc / 4));
}

}  // namespace

Stream::Stream(StreamHost* host, const StreamConfig& config) : host_(host), config_(config) {}

Stream::~Stream() {
  if (timer_ != 0) host_->CancelTimer(timer_);
}

uint32_t Stream::peer_credit() const {
  return vsock::PeerCredit(peer_buf_alloc_, tx_cnt_, peer_fwd_cnt_);
}

PacketHeader Stream::MakeHeader(uint16_t op, uint32_t len, uint32_t flags) {
  PacketHeader hdr;
  hdr.src_cid = host_->local_cid();
  hdr.dst_cid = config_.peer_cid;
  hdr.src_port = config_.local_port;
  hdr.dst_port = config_.peer_port;
  hdr.len = len;
  hdr.type = config_.type;
  hdr.op = op;
  hdr.flags = flags;
  hdr.buf_alloc = config_.buf_alloc;
  hdr.fwd_cnt = fwd_cnt_;
  // Every packet tells the peer our fwd_cnt (virtio_transport_inc_tx_pkt).
  last_fwd_cnt_sent_ = fwd_cnt_;
  return hdr;
}

void Stream::SendOp(uint16_t op, uint32_t flags) { host_->SendControl(MakeHeader(op, 0, flags)); }

void Stream::SendRst() { SendOp(VIRTIO_VSOCK_OP_RST); }

void Stream::StartConnect(std::function<void(Stream*, Status)> on_done) {
  on_connect_done_ = std::move(on_done);
  state_ = State::kConnecting;
  SendOp(VIRTIO_VSOCK_OP_REQUEST);
  timer_ = host_->AddTimer(config_.connect_timeout, [this] {
    timer_ = 0;
    if (state_ != State::kConnecting) return;
    // Linux sends nothing on a connect timeout; a late RESPONSE meets an unknown socket
    // and is answered with RST.
    Finish(MakeError(ETIMEDOUT, "connect to {}:{}", config_.peer_cid, config_.peer_port));
  });
}

void Stream::Accept(const PacketHeader& request) {
  peer_buf_alloc_ = request.buf_alloc;
  peer_fwd_cnt_ = request.fwd_cnt;
  state_ = State::kEstablished;
  SendOp(VIRTIO_VSOCK_OP_RESPONSE);
}

size_t Stream::Write(const void* data, size_t len) {
  if (seqpacket()) {
    // One call, one message (all or nothing).
    auto st = WriteMessage(std::span<const uint8_t>(static_cast<const uint8_t*>(data), len));
    return st.ok() ? len : 0;
  }
  if (state_ != State::kEstablished || app_closed_ ||
      ((shutdown_sent_ | shutdown_deferred_) & VIRTIO_VSOCK_SHUTDOWN_SEND) ||
      (peer_shutdown_ & VIRTIO_VSOCK_SHUTDOWN_RCV)) {
    return 0;
  }
  size_t taken = SendRw(static_cast<const uint8_t*>(data), len, 0);
  if (taken < len) write_blocked_ = true;
  return taken;
}

size_t Stream::SendRw(const uint8_t* data, size_t len, uint32_t last_flags) {
  size_t sent = 0;
  while (sent < len) {
    uint32_t credit = peer_credit();
    if (credit == 0) break;  // a packet with a fresher fwd_cnt will unblock us
    size_t room = host_->TxRoom();
    if (room == 0) {
      if (!waiting_tx_room_) {
        waiting_tx_room_ = true;
        host_->WaitForTxRoom(this);
      }
      break;
    }
    size_t n = std::min(
        {len - sent, static_cast<size_t>(credit), room, static_cast<size_t>(kMaxPacketPayload)});
    uint32_t flags = sent + n == len ? last_flags : 0;
    PacketHeader hdr = MakeHeader(VIRTIO_VSOCK_OP_RW, static_cast<uint32_t>(n), flags);
    tx_cnt_ += static_cast<uint32_t>(n);
    host_->SendData(hdr, std::span<const uint8_t>(data + sent, n));
    sent += n;
  }
  return sent;
}

Status Stream::WriteMessage(std::span<const uint8_t> message, bool eor) {
  if (!seqpacket()) return MakeError(EINVAL, "port {}: not a SEQPACKET socket", local_port());
  if (state_ != State::kEstablished || app_closed_) {
    return MakeError(ENOTCONN, "port {}: not connected", local_port());
  }
  if (((shutdown_sent_ | shutdown_deferred_) & VIRTIO_VSOCK_SHUTDOWN_SEND) ||
      (peer_shutdown_ & VIRTIO_VSOCK_SHUTDOWN_RCV)) {
    return MakeError(EPIPE, "port {}: sending is shut down", local_port());
  }
  if (message_backlog() > 0) {
    write_blocked_ = true;
    return MakeError(EAGAIN, "port {}: previous message still going out", local_port());
  }
  // virtio_transport_seqpacket_enqueue(): a message must fit the peer's receive buffer.
  if (message.size() > peer_buf_alloc_) {
    return MakeError(EMSGSIZE, "port {}: message of {} bytes, peer buf_alloc {}", local_port(),
                     message.size(), peer_buf_alloc_);
  }
  if (message.empty()) return OkStatus();
  out_msg_.assign(message.begin(), message.end());
  out_msg_off_ = 0;
  out_eor_ = eor;
  ContinueMessage();
  if (message_backlog() > 0) write_blocked_ = true;
  return OkStatus();
}

void Stream::ContinueMessage() {
  if (state_ != State::kEstablished || app_closed_) return;
  // EOM (and EOR) only on the message's last fragment.
  const uint32_t last = VIRTIO_VSOCK_SEQ_EOM | (out_eor_ ? VIRTIO_VSOCK_SEQ_EOR : 0);
  out_msg_off_ += SendRw(out_msg_.data() + out_msg_off_, out_msg_.size() - out_msg_off_, last);
  if (out_msg_off_ == out_msg_.size() && !out_msg_.empty()) {
    out_msg_.clear();
    out_msg_off_ = 0;
    if (shutdown_deferred_ != 0) {
      uint32_t bits = std::exchange(shutdown_deferred_, 0u);
      shutdown_sent_ |= bits;
      SendOp(VIRTIO_VSOCK_OP_SHUTDOWN, bits);
    }
  }
}

void Stream::DeliverMessage(std::vector<uint8_t> message, uint32_t flags) {
  if (on_message) on_message(message, flags & (VIRTIO_VSOCK_SEQ_EOM | VIRTIO_VSOCK_SEQ_EOR));
  fwd_cnt_ += static_cast<uint32_t>(message.size());
  // virtio_transport_seqpacket_do_dequeue() sends a credit update after every message.
  if (state_ == State::kEstablished) SendOp(VIRTIO_VSOCK_OP_CREDIT_UPDATE);
}

void Stream::Shutdown(bool no_more_receive, bool no_more_send) {
  uint32_t bits = (no_more_receive ? VIRTIO_VSOCK_SHUTDOWN_RCV : 0) |
                  (no_more_send ? VIRTIO_VSOCK_SHUTDOWN_SEND : 0);
  uint32_t fresh = bits & ~(shutdown_sent_ | shutdown_deferred_);
  if (fresh == 0 || state_ != State::kEstablished) return;
  if ((fresh & VIRTIO_VSOCK_SHUTDOWN_SEND) && message_backlog() > 0) {
    // The message being sent goes out whole first: SHUTDOWN(SEND) follows its EOM.
    shutdown_deferred_ |= fresh;
    return;
  }
  shutdown_sent_ |= fresh;
  SendOp(VIRTIO_VSOCK_OP_SHUTDOWN, fresh);
}

void Stream::Close() {
  if (app_closed_) return;
  app_closed_ = true;
  on_data = nullptr;
  on_eof = nullptr;
  on_writable = nullptr;
  on_closed = nullptr;
  on_connect_done_ = nullptr;
  pending_rx_.clear();
  pending_msgs_.clear();
  pending_rx_bytes_ = 0;
  switch (state_) {
    case State::kEstablished:
      // virtio_transport_close(): SHUTDOWN(RCV|SEND) unless both were sent, then linger
      // until the peer's RST.
      if (shutdown_sent_ != kShutdownBoth) {
        shutdown_sent_ = kShutdownBoth;
        SendOp(VIRTIO_VSOCK_OP_SHUTDOWN, kShutdownBoth);
      }
      state_ = State::kClosing;
      timer_ = host_->AddTimer(config_.close_timeout, [this] {
        timer_ = 0;
        if (state_ != State::kClosing) return;
        SendRst();
        Finish(MakeError(ETIMEDOUT, "close of port {}: no RST from the peer", local_port()));
      });
      return;
    case State::kIdle:
    case State::kConnecting:
      // Closing a connecting socket sends nothing in Linux either.
      Finish(MakeError(ECONNABORTED, "closed while connecting"));
      return;
    case State::kClosing:
      return;
    case State::kClosed:
      host_->Release(this);
      return;
  }
}

void Stream::PauseReading() { paused_ = true; }

void Stream::ResumeReading() {
  if (!paused_) return;
  paused_ = false;
  // Inside an on_data callback the delivery loop below (further up the stack) continues.
  if (delivering_) return;
  DeliverPending();
}

void Stream::DeliverPending() {
  delivering_ = true;
  while (!paused_ && !pending_msgs_.empty() && state_ == State::kEstablished && !app_closed_) {
    auto [msg, flags] = std::move(pending_msgs_.front());
    pending_msgs_.pop_front();
    pending_rx_bytes_ -= msg.size();
    DeliverMessage(std::move(msg), flags);
  }
  size_t consumed = 0;
  while (!paused_ && !pending_rx_.empty() && state_ == State::kEstablished && !app_closed_) {
    std::vector<uint8_t> chunk = std::move(pending_rx_.front());
    pending_rx_.pop_front();
    pending_rx_bytes_ -= chunk.size();
    if (on_data) on_data(chunk);
    consumed += chunk.size();
    fwd_cnt_ += static_cast<uint32_t>(chunk.size());
  }
  delivering_ = false;
  if (consumed > 0) MaybeSendCreditUpdate();
  MaybeFinishAfterPeerShutdown();
}

void Stream::Consumed(size_t bytes) {
  fwd_cnt_ += static_cast<uint32_t>(bytes);
  MaybeSendCreditUpdate();
}

void Stream::MaybeSendCreditUpdate() {
  if (state_ != State::kEstablished) return;
  // virtio_transport_stream_do_dequeue(): free space the peer may see.
  uint32_t unannounced = fwd_cnt_ - last_fwd_cnt_sent_;
  int64_t peer_view = static_cast<int64_t>(config_.buf_alloc) - unannounced;
  if (peer_view < CreditUpdateThreshold(config_.buf_alloc)) {
    SendOp(VIRTIO_VSOCK_OP_CREDIT_UPDATE);
  }
}

void Stream::Receive(std::span<const uint8_t> payload) {
  if (payload.empty()) return;  // Linux never sends one; take the credit fields, ignore it
  uint32_t len = static_cast<uint32_t>(payload.size());
  // The peer knew at most last_fwd_cnt_sent_, so it may have at most buf_alloc in flight
  // beyond it. More is a device that ignores our credit.
  uint64_t in_flight = static_cast<uint32_t>(rx_cnt_ - last_fwd_cnt_sent_) + uint64_t{len};
  if (in_flight > config_.buf_alloc) {
    host_->CountDeviceBug(StreamHost::DeviceBug::kCreditViolation);
  }
  rx_cnt_ += len;
  if (shutdown_sent_ & VIRTIO_VSOCK_SHUTDOWN_RCV) return;  // we said we would not read
  if (paused_ || !pending_rx_.empty() || delivering_) {
    // 6.1: rx_bytes + len > buf_alloc => the packet is silently dropped.
    if (pending_rx_bytes_ + len > config_.buf_alloc) {
      LOG_RATELIMITED(LogLevel::kWarn, "port {}: device overran our buffer, {} bytes dropped",
                      local_port(), len);
      host_->CountDeviceBug(StreamHost::DeviceBug::kOverrunDrop);
      return;
    }
    pending_rx_.emplace_back(payload.begin(), payload.end());
    pending_rx_bytes_ += len;
    return;
  }
  if (on_data) on_data(payload);
  Consumed(len);
}

void Stream::ReceiveMessagePart(uint32_t flags, std::span<const uint8_t> payload) {
  const bool eom = (flags & VIRTIO_VSOCK_SEQ_EOM) != 0;
  if (payload.empty() && !(eom && !rx_msg_.empty())) return;
  uint32_t len = static_cast<uint32_t>(payload.size());
  uint64_t in_flight = static_cast<uint32_t>(rx_cnt_ - last_fwd_cnt_sent_) + uint64_t{len};
  if (in_flight > config_.buf_alloc) {
    host_->CountDeviceBug(StreamHost::DeviceBug::kCreditViolation);
  }
  rx_cnt_ += len;
  if (shutdown_sent_ & VIRTIO_VSOCK_SHUTDOWN_RCV) return;
  if (pending_rx_bytes_ + rx_msg_.size() + len > config_.buf_alloc) {
    LOG_RATELIMITED(LogLevel::kWarn, "port {}: device overran our buffer, {} bytes dropped",
                    local_port(), len);
    host_->CountDeviceBug(StreamHost::DeviceBug::kOverrunDrop);
    return;
  }
  rx_msg_.insert(rx_msg_.end(), payload.begin(), payload.end());
  if (!eom) return;
  std::vector<uint8_t> msg = std::move(rx_msg_);
  rx_msg_.clear();
  if (paused_ || !pending_msgs_.empty() || delivering_) {
    pending_rx_bytes_ += msg.size();
    pending_msgs_.emplace_back(std::move(msg), flags);
    return;
  }
  DeliverMessage(std::move(msg), flags);
}

void Stream::MaybeFinishAfterPeerShutdown() {
  if (state_ != State::kEstablished || app_closed_) return;
  if ((peer_shutdown_ & VIRTIO_VSOCK_SHUTDOWN_SEND) && pending_rx_.empty() &&
      pending_msgs_.empty() && !paused_ && !eof_delivered_) {
    eof_delivered_ = true;
    if (on_eof) on_eof();
    if (state_ != State::kEstablished || app_closed_) return;
  }
  // Both bits and nothing left to read: Linux answers RST and closes the socket.
  if (peer_shutdown_ == kShutdownBoth && pending_rx_.empty() && pending_msgs_.empty()) {
    SendRst();
    Finish(OkStatus());
  }
}

void Stream::MaybeNotifyWritable() {
  if (seqpacket()) {
    ContinueMessage();
    if (!write_blocked_ || message_backlog() > 0 || state_ != State::kEstablished || app_closed_)
      return;
    write_blocked_ = false;
    if (on_writable) on_writable();
    return;
  }
  if (!write_blocked_ || state_ != State::kEstablished || app_closed_) return;
  if (peer_credit() == 0) return;
  if (host_->TxRoom() == 0) {
    if (!waiting_tx_room_) {
      waiting_tx_room_ = true;
      host_->WaitForTxRoom(this);
    }
    return;
  }
  write_blocked_ = false;
  if (on_writable) on_writable();
}

void Stream::OnTxRoom() {
  waiting_tx_room_ = false;
  MaybeNotifyWritable();
}

void Stream::OnPacket(const PacketHeader& hdr, std::span<const uint8_t> payload) {
  // virtio_transport_space_update(): credit from every packet.
  peer_buf_alloc_ = hdr.buf_alloc;
  peer_fwd_cnt_ = hdr.fwd_cnt;

  switch (state_) {
    case State::kIdle:
    case State::kClosed:
      return;

    case State::kConnecting:
      switch (hdr.op) {
        case VIRTIO_VSOCK_OP_RESPONSE: {
          state_ = State::kEstablished;
          if (timer_ != 0) {
            host_->CancelTimer(timer_);
            timer_ = 0;
          }
          auto done = std::move(on_connect_done_);
          on_connect_done_ = nullptr;
          if (done) done(this, OkStatus());
          return;
        }
        case VIRTIO_VSOCK_OP_INVALID:
          return;
        case VIRTIO_VSOCK_OP_RST:
          Finish(MakeError(ECONNRESET, "connect to {}:{}: reset by peer", config_.peer_cid,
                           config_.peer_port));
          return;
        default:
          // virtio_transport_recv_connecting(): EPROTO, and reset the peer.
          host_->CountDeviceBug(StreamHost::DeviceBug::kUnexpectedOp);
          SendRst();
          Finish(MakeError(EPROTO, "connect to {}:{}: unexpected {} while connecting",
                           config_.peer_cid, config_.peer_port, OpName(hdr.op)));
          return;
      }

    case State::kEstablished:
      switch (hdr.op) {
        case VIRTIO_VSOCK_OP_RW:
          if (seqpacket()) {
            ReceiveMessagePart(hdr.flags, payload);
          } else {
            Receive(payload);
          }
          break;
        case VIRTIO_VSOCK_OP_CREDIT_UPDATE:
          break;  // the credit fields were taken above
        case VIRTIO_VSOCK_OP_CREDIT_REQUEST:
          SendOp(VIRTIO_VSOCK_OP_CREDIT_UPDATE);
          break;
        case VIRTIO_VSOCK_OP_SHUTDOWN:
          peer_shutdown_ |= hdr.flags & kShutdownBoth;
          if (!delivering_) MaybeFinishAfterPeerShutdown();
          break;
        case VIRTIO_VSOCK_OP_RST: {
          // A reset after both directions were shut down is how a clean close ends.
          bool clean = (peer_shutdown_ & VIRTIO_VSOCK_SHUTDOWN_SEND) &&
                       (shutdown_sent_ & VIRTIO_VSOCK_SHUTDOWN_SEND) && pending_rx_.empty();
          Finish(clean ? OkStatus()
                       : MakeError(ECONNRESET, "port {}: connection reset by peer", local_port()));
          return;
        }
        default:
          // Linux ignores other ops on an established socket.
          host_->CountDeviceBug(StreamHost::DeviceBug::kUnexpectedOp);
          break;
      }
      MaybeNotifyWritable();
      return;

    case State::kClosing:
      switch (hdr.op) {
        case VIRTIO_VSOCK_OP_RST:
          Finish(OkStatus());
          return;
        case VIRTIO_VSOCK_OP_SHUTDOWN:
          peer_shutdown_ |= hdr.flags & kShutdownBoth;
          if (peer_shutdown_ == kShutdownBoth) {
            SendRst();
            Finish(OkStatus());
          }
          return;
        case VIRTIO_VSOCK_OP_CREDIT_REQUEST:
          SendOp(VIRTIO_VSOCK_OP_CREDIT_UPDATE);
          return;
        case VIRTIO_VSOCK_OP_RW:
          rx_cnt_ += static_cast<uint32_t>(payload.size());  // nobody reads it any more
          return;
        default:
          return;
      }
  }
}

void Stream::ResetLocally(Error error) {
  if (state_ == State::kClosed || state_ == State::kIdle) return;
  Finish(std::move(error));
}

void Stream::Finish(Status status) {
  State was = state_;
  state_ = State::kClosed;
  if (timer_ != 0) {
    host_->CancelTimer(timer_);
    timer_ = 0;
  }
  pending_rx_.clear();
  pending_msgs_.clear();
  rx_msg_.clear();
  out_msg_.clear();
  out_msg_off_ = 0;
  pending_rx_bytes_ = 0;
  host_->ConnectionEnded(this);
  if (app_closed_) {
    host_->Release(this);
    return;
  }
  if (was == State::kConnecting) {
    auto done = std::move(on_connect_done_);
    on_connect_done_ = nullptr;
    if (done) done(this, std::move(status));
    return;
  }
  if (on_closed) on_closed(std::move(status));
}

}  // namespace vsockd::vguest
