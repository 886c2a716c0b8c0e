// vguest::Stream: one guest-side virtio-vsock stream connection, with the connection state
// machine and credit flow control of the Linux 6.1 driver (net/vmw_vsock/
// virtio_transport_common.c), written as a socket-like API for tests and benchmarks.
//
// Role: the application (a test, the benchmark, the vguest CLI) writes bytes and gets
// callbacks; the Stream turns that into REQUEST/RESPONSE/RW/SHUTDOWN/RST/CREDIT_* packets and
// reacts to the device's packets. It knows nothing about rings: it talks to its owner through
// StreamHost, which vguest::Guest implements over the tx/rx virtqueues and which tests fake.
// Threading: the owner's event loop thread only; callbacks run on it.
//
// Lifetime: the owner (Guest) owns every Stream. The application releases one with Close();
// after Close() it gets no more callbacks and must not touch the pointer again. Streams the
// application never closes (a failed connect, a reset peer) stay allocated, inert, until the
// Guest goes away, like an fd nobody closed.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <span>
#include <vector>

#include "base/result.h"
#include "vsock/packet.h"

namespace vsockd::vguest {

class Stream;

// What a Stream needs from the guest that owns it.
class StreamHost {
 public:
  // Device misbehaviour a Stream detects (the owner counts them in its stats).
  enum class DeviceBug {
    kCreditViolation,  // RW payload beyond the credit we advertised
    kOverrunDrop,      // RW payload dropped: our receive buffer was full (6.1 drops too)
    kUnexpectedOp,     // an op that makes no sense in the connection's state
  };

  virtual ~StreamHost() = default;
  virtual uint64_t local_cid() const = 0;
  // Queues a header-only packet for the device. Never fails: if tx is full it waits, in
  // order, ahead of any later RW packet.
  virtual void SendControl(const vsock::PacketHeader& hdr) = 0;
  // Payload bytes the next RW packet may carry given tx descriptors and buffers right now
  // (0: tx is full, or control packets are waiting).
  virtual size_t TxRoom() = 0;
  // Sends one RW packet; payload.size() <= TxRoom().
  virtual void SendData(const vsock::PacketHeader& hdr, std::span<const uint8_t> payload) = 0;
  // Asks for Stream::OnTxRoom() once tx room appears.
  virtual void WaitForTxRoom(Stream* stream) = 0;
  virtual uint64_t AddTimer(std::chrono::milliseconds delay, std::function<void()> callback) = 0;
  virtual void CancelTimer(uint64_t id) = 0;
  // The connection is over: forget its addresses (the port pair may be reused at once).
  virtual void ConnectionEnded(Stream* stream) = 0;
  // The application closed the stream and the connection is over: free it later (never
  // from inside this call: the Stream is still on the stack).
  virtual void Release(Stream* stream) = 0;
  virtual void CountDeviceBug(DeviceBug bug) = 0;
};

struct StreamConfig {
  uint32_t local_port = 0;
  uint64_t peer_cid = vsock::VMADDR_CID_HOST;
  uint32_t peer_port = 0;
  uint32_t buf_alloc = 256 * 1024;  // our receive buffer, advertised in every packet
  uint16_t type = vsock::VIRTIO_VSOCK_TYPE_STREAM;  // or VIRTIO_VSOCK_TYPE_SEQPACKET
  std::chrono::milliseconds connect_timeout{2000};
  std::chrono::milliseconds close_timeout{8000};  // Linux VSOCK_CLOSE_TIMEOUT
};

class Stream {
 public:
  enum class State {
    kIdle,         // created, nothing sent yet
    kConnecting,   // REQUEST sent, waiting for RESPONSE (Linux SYN_SENT)
    kEstablished,  // data may flow (subject to shutdown bits)
    kClosing,      // the app closed: SHUTDOWN(RCV|SEND) sent, waiting for the peer's RST
    kClosed,       // over; the addresses are free
  };

  // Internal: created by Guest (or by tests with a fake host).
  Stream(StreamHost* host, const StreamConfig& config);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  uint32_t local_port() const { return config_.local_port; }
  uint32_t peer_port() const { return config_.peer_port; }
  uint64_t peer_cid() const { return config_.peer_cid; }
  State state() const { return state_; }
  uint16_t type() const { return config_.type; }
  bool seqpacket() const { return config_.type == vsock::VIRTIO_VSOCK_TYPE_SEQPACKET; }

  // Like send(2) on a non-blocking socket: takes up to `len` bytes as RW packets of at most
  // 64 KiB, bounded by the peer's credit and by tx room. Returns the bytes taken; when that is
  // less than `len`, on_writable fires once more fits. 0 also after Shutdown(_, true), on a
  // connection that is not established, or after Close().
  size_t Write(const void* data, size_t len);
  // SEQPACKET only (Linux 6.1 virtio_transport_seqpacket_enqueue): queues one message, sent
  // as RW packets of at most 64 KiB as credit and tx room allow, VIRTIO_VSOCK_SEQ_EOM on the
  // last (and VIRTIO_VSOCK_SEQ_EOR with eor, as MSG_EOR). EMSGSIZE when larger than the
  // peer's buf_alloc (Linux's limit), EAGAIN while the previous message is still going out
  // (on_writable fires when it is done), ENOTCONN / EPIPE / EINVAL as send(2) would.
  // Empty messages are accepted and send nothing (Linux sends nothing either).
  Status WriteMessage(std::span<const uint8_t> message, bool eor = false);
  // Bytes of the message being sent that are not out yet.
  size_t message_backlog() const { return out_msg_.size() - out_msg_off_; }
  // SHUTDOWN with the RCV and/or SEND bits (sticky; bits already sent are not resent).
  void Shutdown(bool no_more_receive, bool no_more_send);
  // Like close(2): SHUTDOWN(RCV|SEND), then the connection lingers until the peer's RST (or
  // close_timeout, then we send RST). No callbacks after this; the pointer becomes invalid.
  void Close();
  // Stop/restart consuming: while paused, received data is kept (at most buf_alloc) and
  // fwd_cnt does not advance, so the peer runs out of credit. Resume delivers it.
  void PauseReading();
  void ResumeReading();
  bool reading_paused() const { return paused_; }

  // Data in order. The bytes count as consumed (fwd_cnt advances) when the callback returns.
  // STREAM only.
  std::function<void(std::span<const uint8_t>)> on_data;
  // SEQPACKET only: one whole message (fragments up to EOM reassembled) and the flags of its
  // last packet (VIRTIO_VSOCK_SEQ_EOM, and VIRTIO_VSOCK_SEQ_EOR if the sender set it). It
  // counts as consumed when the callback returns; like Linux we then send CREDIT_UPDATE (a
  // sender blocked on a partly-sent message would otherwise wait forever).
  std::function<void(std::span<const uint8_t>, uint32_t flags)> on_message;
  // The peer sent SHUTDOWN(SEND) and everything before it was delivered.
  std::function<void()> on_eof;
  // Write() returned less than asked and now more fits.
  std::function<void()> on_writable;
  // The connection ended: ok when it finished cleanly (both directions shut down), else
  // ECONNRESET (peer reset), ETIMEDOUT (close), or the reason of a local reset.
  std::function<void(Status)> on_closed;

  // Counters for tests.
  uint32_t fwd_cnt() const { return fwd_cnt_; }
  uint32_t tx_cnt() const { return tx_cnt_; }
  uint32_t peer_credit() const;  // what we may still send
  size_t buffered_rx_bytes() const { return pending_rx_bytes_; }
  uint32_t peer_shutdown() const { return peer_shutdown_; }
  uint32_t shutdown_sent() const { return shutdown_sent_; }

  // ---- Driven by the owner (Guest) ----
  // Guest -> peer connect: sends REQUEST and arms connect_timeout. on_done runs once, unless
  // the application closes the stream first.
  void StartConnect(std::function<void(Stream*, Status)> on_done);
  // Peer -> guest connect: takes the peer's credit from its REQUEST and answers RESPONSE.
  void Accept(const vsock::PacketHeader& request);
  // A packet of this connection (already matched by addresses, type checked).
  void OnPacket(const vsock::PacketHeader& hdr, std::span<const uint8_t> payload);
  // Tx room appeared after WaitForTxRoom().
  void OnTxRoom();
  // The transport is gone or the driver was reset: end the connection without sending
  // anything (what Linux does on a transport reset), reporting `error`.
  void ResetLocally(Error error);

 private:
  vsock::PacketHeader MakeHeader(uint16_t op, uint32_t len = 0, uint32_t flags = 0);
  void SendOp(uint16_t op, uint32_t flags = 0);
  void SendRst();
  void Receive(std::span<const uint8_t> payload);
  void ReceiveMessagePart(uint32_t flags, std::span<const uint8_t> payload);
  void Consumed(size_t bytes);
  void MaybeSendCreditUpdate();
  void DeliverPending();
  void MaybeFinishAfterPeerShutdown();
  void MaybeNotifyWritable();
  void ContinueMessage();
  // RW packets of `data` as far as credit and tx room allow; `last_flags` (EOM/EOR) go on
  // the packet that ends `data`. Returns the bytes sent.
  size_t SendRw(const uint8_t* data, size_t len, uint32_t last_flags);
  void DeliverMessage(std::vector<uint8_t> message, uint32_t flags);
  void Finish(Status status);

  StreamHost* host_;
  StreamConfig config_;
  State state_ = State::kIdle;
  bool app_closed_ = false;
  bool paused_ = false;
  bool delivering_ = false;
  bool eof_delivered_ = false;
  bool write_blocked_ = false;
  bool waiting_tx_room_ = false;

  // Credit (u32 free-running counters, wrap-around arithmetic).
  uint32_t fwd_cnt_ = 0;            // payload bytes the app consumed
  uint32_t last_fwd_cnt_sent_ = 0;  // fwd_cnt in the last packet we sent
  uint32_t rx_cnt_ = 0;             // payload bytes received
  uint32_t tx_cnt_ = 0;             // payload bytes sent
  uint32_t peer_buf_alloc_ = 0;
  uint32_t peer_fwd_cnt_ = 0;

  uint32_t shutdown_sent_ = 0;      // VIRTIO_VSOCK_SHUTDOWN_* bits we sent
  uint32_t shutdown_deferred_ = 0;  // bits to send once the outgoing message is out
  uint32_t peer_shutdown_ = 0;      // bits the peer sent (sticky)

  // SEQPACKET: the message going out, and the one being reassembled.
  std::vector<uint8_t> out_msg_;
  size_t out_msg_off_ = 0;
  bool out_eor_ = false;
  std::vector<uint8_t> rx_msg_;
  // SEQPACKET while paused: whole messages with their flags.
  std::deque<std::pair<std::vector<uint8_t>, uint32_t>> pending_msgs_;

  std::deque<std::vector<uint8_t>> pending_rx_;  // received while paused
  size_t pending_rx_bytes_ = 0;

  std::function<void(Stream*, Status)> on_connect_done_;
  uint64_t timer_ = 0;  // connect or close timeout; 0 = none
};

}  // namespace vsockd::vguest
