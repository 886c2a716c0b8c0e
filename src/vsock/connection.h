// vsock::Connection: the state of one guest <-> host stream connection (state machine,
// credit, half-close bits, pending control packets, the bounded buffer of guest bytes that
// a slow host reader has not taken yet).
//
// Callers: vsock::Device (device.cc) owns every Connection and does all I/O; this class only
// keeps state and answers questions about it ("how much may we send the guest?", "should we
// send a CREDIT_UPDATE?"), so the rules live in one place and are unit-tested alone.
// Threading: the device's event loop thread only.
//
// ---------------------------------------------------------------------------------------
// Protocol primer (virtio spec "Socket Device", Linux net/vmw_vsock/virtio_transport_common.c)
// ---------------------------------------------------------------------------------------
// Identity. A connection is (guest_cid, guest_port) <-> (peer_cid, peer_port). The peer is the
// host (2 = VMADDR_CID_HOST) or, with sibling routing, another VM's CID; ConnectionInfo calls
// it host_cid/host_port either way. There are no sequence numbers: a port pair may be reused
// right after an RST, so an RST frees the connection at once. The device keys connections by
// (guest_port, peer_cid, peer_port) (ConnKey).
//
// States (ours):
//   kConnectingHost   the guest sent REQUEST; HostBackend::ConnectToHost is in progress.
//                     ok -> send RESPONSE, kEstablished; error -> send RST, free.
//   kConnectingGuest  a host peer asked for the guest (ConnectToGuest); we send REQUEST and
//                     wait for RESPONSE (-> kEstablished) or RST (-> refused), bounded by
//                     connect_timeout.
//   kEstablished      data both ways (OP_RW), credit packets, SHUTDOWN half-closes.
//   kClosing          we sent SHUTDOWN(RCV|SEND) because the host peer is fully gone; the
//                     guest answers RST (then we free); after close_timeout we send RST
//                     ourselves and free.
//
// Who sends what:
//   guest REQUEST            -> we RESPONSE (or RST: refused / limit / duplicate)
//   guest RW                 -> payload to the host socket (writev straight from guest memory)
//   guest CREDIT_REQUEST     -> we CREDIT_UPDATE
//   guest SHUTDOWN(SEND)     -> after its buffered data reached the host: shutdown(SHUT_WR)
//   guest SHUTDOWN(RCV)      -> we stop reading the host and shutdown(SHUT_RD) it: an AF_UNIX
//                               peer's writes then fail with EPIPE (a sibling guest's device
//                               sees that and tells its guest SHUTDOWN(RCV))
//   both bits (sticky, OR-ed over packets) and nothing left to deliver -> close the host fd,
//                               RST, free (Linux does the same)
//   guest RST                -> close the host fd, free; never answered
//   host EOF (read 0)        -> after the data before it: SHUTDOWN(SEND) (half-close: the guest
//                               may keep sending)
//   host EPOLLHUP + EOF      -> SHUTDOWN(RCV|SEND), kClosing
//   host peer shutdown(SHUT_RD) (our write or a zero-length probe gets EPIPE while the peer
//                               still sends) -> SHUTDOWN(RCV): the guest's sends fail with
//                               EPIPE, as with a kernel peer; what it sent is discarded
//   host write error         -> RST, free
//   anything for an unknown connection, except RST -> RST (never reply to an RST)
//
// Credit (all counters are free-running u32, header bytes never count):
//   Each side advertises in EVERY packet buf_alloc (its receive buffer) and fwd_cnt (bytes its
//   consumer took). We update peer_buf_alloc/peer_fwd_cnt from every packet of the connection.
//   Towards the guest:  peer_free = (int64)peer_buf_alloc - (u32)(tx_cnt - peer_fwd_cnt),
//                       clamped at 0 (the signed clamp matters when the guest shrinks
//                       buf_alloc with bytes in flight); tx_cnt = payload bytes we sent.
//   From the guest:     rx_cnt = payload bytes received, fwd_cnt = bytes written to the host.
//                       buffered = rx_cnt - fwd_cnt <= buf_alloc. The guest may only send
//                       buf_alloc - (rx_cnt - last_fwd_cnt_sent) more bytes, where
//                       last_fwd_cnt_sent is the fwd_cnt in the last packet we sent it; a guest
//                       that sends more is misbehaving and gets its connection reset.
//   Unsolicited CREDIT_UPDATE: when the guest's view of our free space drops below
//   buf_alloc/2 and the real free space is larger than that view. Linux never sends
//   CREDIT_REQUEST, so without this a guest sender would stall forever. At most one is
//   pending per connection (a flag), and any packet we send (RW included) carries the fresh
//   fwd_cnt, so a pending update is dropped if data went out first: no update storms.
//
// Pending control packets are flags, never a queue: memory per connection stays bounded
// whatever the guest does. RSTs are not flags: the device frees the connection at once and
// puts the RST in its own bounded reply queue.
#pragma once

#include <sys/uio.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/event_loop.h"
#include "base/fd.h"
#include "vsock/host_backend.h"
#include "vsock/packet.h"

namespace vsockd::vsock {

// FIFO of bytes with amortised O(1) append/consume (guest data a slow host has not taken).
class ByteQueue {
 public:
  size_t size() const { return data_.size() - head_; }
  size_t capacity() const { return data_.capacity(); }
  bool empty() const { return size() == 0; }
  const uint8_t* data() const { return data_.data() + head_; }
  void Append(const void* p, size_t n);
  void Consume(size_t n);
  // Drops the last n bytes (an incomplete seqpacket message that can never complete).
  void DropTail(size_t n) { data_.resize(data_.size() - std::min(n, size())); }
  void Clear() {
    data_.clear();
    data_.shrink_to_fit();
    head_ = 0;
  }

 private:
  std::vector<uint8_t> data_;
  size_t head_ = 0;
};

// A connection's key within one device: our guest's port and the peer's address.
struct ConnKey {
  uint32_t guest_port = 0;
  uint32_t peer_port = 0;
  uint64_t peer_cid = 0;
  bool operator==(const ConnKey&) const = default;
};

struct ConnKeyHash {
  size_t operator()(const ConnKey& k) const {
    // murmur3 finalizer over the packed fields: ports are small and correlated.
    uint64_t x = (static_cast<uint64_t>(k.guest_port) << 32) | k.peer_port;
    x ^= k.peer_cid * 0x9e3779b97f4a7c15ULL;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return static_cast<size_t>(x);
  }
};

enum class ConnState { kConnectingHost, kConnectingGuest, kEstablished, kClosing };
const char* ConnStateName(ConnState state);

class Connection {
 public:
  // Pending control packets (bits of pending_ctrl).
  static constexpr uint32_t kCtrlRequest = 1;       // REQUEST to the guest (host-initiated)
  static constexpr uint32_t kCtrlResponse = 2;      // RESPONSE to the guest's REQUEST
  static constexpr uint32_t kCtrlShutdown = 4;      // SHUTDOWN with shutdown_to_send
  static constexpr uint32_t kCtrlCreditUpdate = 8;  // proactive CREDIT_UPDATE (re-checked)
  static constexpr uint32_t kCtrlCreditReply = 16;  // CREDIT_UPDATE answering CREDIT_REQUEST

  Connection(const ConnectionInfo& info, ConnState state, uint32_t buf_alloc)
      : info_(info),
        state_(state),
        host_initiated_(state == ConnState::kConnectingGuest),
        opened_(std::chrono::steady_clock::now()),
        buf_alloc_(buf_alloc) {}

  static ConnKey MakeKey(uint32_t guest_port, uint64_t peer_cid, uint32_t peer_port) {
    return ConnKey{guest_port, peer_port, peer_cid};
  }
  ConnKey key() const { return MakeKey(info_.guest_port, info_.host_cid, info_.host_port); }
  const ConnectionInfo& info() const { return info_; }
  ConnState state() const { return state_; }
  bool seqpacket() const { return info_.type == VIRTIO_VSOCK_TYPE_SEQPACKET; }
  void set_state(ConnState s) { state_ = s; }

  // --- Credit -------------------------------------------------------------------------
  // Takes buf_alloc/fwd_cnt from any packet of this connection.
  void UpdatePeerCredit(const PacketHeader& hdr) {
    peer_buf_alloc_ = hdr.buf_alloc;
    peer_fwd_cnt_ = hdr.fwd_cnt;
  }
  // Bytes we may still send the guest.
  uint32_t PeerFree() const { return PeerCredit(peer_buf_alloc_, tx_cnt_, peer_fwd_cnt_); }
  void OnSentToGuest(uint32_t n) {
    tx_cnt_ += n;
    bytes_to_guest_ += n;
  }

  // True if accepting `len` more guest bytes stays within the credit we advertised.
  bool GuestMaySend(uint32_t len) const {
    uint64_t used = static_cast<uint32_t>(rx_cnt_ - last_fwd_cnt_sent_);
    return used + len <= buf_alloc_;
  }
  void OnReceivedFromGuest(uint32_t n) {
    rx_cnt_ += n;
    bytes_from_guest_ += n;
  }
  void OnForwardedToHost(uint32_t n) { fwd_cnt_ += n; }
  // Guest bytes received and not yet written to the host (pending iovecs + buffer).
  uint32_t Unforwarded() const { return rx_cnt_ - fwd_cnt_; }
  // Free space as the guest last saw it, and as it really is.
  uint32_t GuestViewFree() const {
    uint32_t used = rx_cnt_ - last_fwd_cnt_sent_;
    return used >= buf_alloc_ ? 0 : buf_alloc_ - used;
  }
  uint32_t ActualFree() const {
    uint32_t used = Unforwarded();
    return used >= buf_alloc_ ? 0 : buf_alloc_ - used;
  }
  bool NeedsCreditUpdate() const {
    uint32_t view = GuestViewFree();
    return view < buf_alloc_ / 2 && ActualFree() > view;
  }

  // A header from us to the guest with our credit fields; records fwd_cnt as sent.
  PacketHeader MakeHeader(uint16_t op, uint32_t flags, uint32_t len) {
    PacketHeader h;
    h.src_cid = info_.host_cid;
    h.src_port = info_.host_port;
    h.dst_cid = info_.guest_cid;
    h.dst_port = info_.guest_port;
    h.len = len;
    h.type = info_.type;
    h.op = op;
    h.flags = flags;
    h.buf_alloc = buf_alloc_;
    h.fwd_cnt = fwd_cnt_;
    last_fwd_cnt_sent_ = fwd_cnt_;
    return h;
  }

  uint32_t buf_alloc() const { return buf_alloc_; }
  // The buf_alloc of our next headers (vsock::Admission decides it; never below what the
  // guest may already have in flight, see admission.h).
  void set_buf_alloc(uint32_t b) { buf_alloc_ = b; }
  uint32_t peer_buf_alloc() const { return peer_buf_alloc_; }
  uint32_t peer_fwd_cnt() const { return peer_fwd_cnt_; }
  uint32_t tx_cnt() const { return tx_cnt_; }
  uint32_t rx_cnt() const { return rx_cnt_; }
  uint32_t fwd_cnt() const { return fwd_cnt_; }
  uint32_t last_fwd_cnt_sent() const { return last_fwd_cnt_sent_; }
  // Payload bytes each way since the connection opened (the u32 counters above wrap).
  uint64_t bytes_to_guest() const { return bytes_to_guest_; }
  uint64_t bytes_from_guest() const { return bytes_from_guest_; }
  // Who opened it (a host peer, or a sibling VM: the device sent REQUEST) and when.
  bool host_initiated() const { return host_initiated_; }
  std::chrono::steady_clock::time_point opened() const { return opened_; }

  // --- Shutdown -----------------------------------------------------------------------
  // ORs the guest's SHUTDOWN flags (sticky); returns the bits that are new.
  uint32_t AddPeerShutdown(uint32_t flags) {
    flags &= VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND;
    uint32_t added = flags & ~peer_shutdown_;
    peer_shutdown_ |= flags;
    return added;
  }
  uint32_t peer_shutdown() const { return peer_shutdown_; }
  bool guest_sends_no_more() const { return (peer_shutdown_ & VIRTIO_VSOCK_SHUTDOWN_SEND) != 0; }
  bool guest_receives_no_more() const { return (peer_shutdown_ & VIRTIO_VSOCK_SHUTDOWN_RCV) != 0; }
  bool guest_fully_shut() const {
    return peer_shutdown_ == (VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND);
  }

  // Nothing of the guest's data is waiting to reach the host.
  bool guest_data_drained() const { return pending_iov.empty() && buffer.empty(); }

  // Whether rx processing has something to do for this connection right now.
  bool WantsRx() const {
    if (pending_ctrl != 0) return true;
    if (state_ != ConnState::kEstablished) return false;
    if (prefix_pending() || out_msg_pending() || HostReadWanted()) return PeerFree() > 0;
    return false;
  }
  // Host data is ready for the guest but the guest's credit is spent.
  bool WaitsForGuestCredit() const {
    return state_ == ConnState::kEstablished &&
           (prefix_pending() || out_msg_pending() || HostReadWanted()) && PeerFree() == 0;
  }
  bool prefix_pending() const { return prefix_off < prefix.size(); }
  bool out_msg_pending() const { return out_msg_off < out_msg.size(); }
  bool HostReadWanted() const {
    return host_fd.valid() && host_readable && !host_eof && !guest_receives_no_more();
  }

  // --- Fields the device drives (public on purpose: Connection is the device's record) --
  Fd host_fd;
  bool host_registered = false;  // host_fd is in the event loop
  bool host_readable = false;    // edge-triggered readiness, cleared on EAGAIN/short read
  bool host_writable = true;
  bool host_eof = false;              // read returned 0
  bool host_rdhup = false;            // EPOLLRDHUP/HUP seen: a read returns 0 once data is drained
  bool host_hup = false;              // EPOLLHUP: the host peer closed both directions
  bool host_shut_wr = false;          // we did shutdown(SHUT_WR) after the guest's SHUTDOWN(SEND)
  bool host_stopped_reading = false;  // the host peer did shutdown(SHUT_RD): guest data dropped
  bool host_not_socket = false;       // sendmsg gave ENOTSOCK (a pipe, in tests): use writev
  bool host_records = false;          // SOCK_SEQPACKET (or DGRAM): one readv per record
  std::string prefix;                 // host bytes already read (HostStream::prefix), sent first
  size_t prefix_off = 0;

  uint32_t pending_ctrl = 0;
  uint32_t shutdown_to_send = 0;
  bool request_sent = false;  // kConnectingGuest: REQUEST is on the rx ring

  // Guest -> host data of the current tx batch (iovecs into guest memory, valid until the
  // batch's chains are returned), and what the host did not take (copied).
  std::vector<iovec> pending_iov;
  size_t pending_bytes = 0;
  bool in_flush_list = false;
  ByteQueue buffer;

  bool in_rx_queue = false;
  bool credit_stalled = false;  // counted in DeviceStats::credit_stalls until credit returns
  bool rx_streaming = false;    // the last host read filled every rx buffer it was given

  // --- SEQPACKET (see device.cc, "SEQPACKET") ------------------------------------------
  // Guest -> host: the complete messages, oldest first, then `partial_bytes` of the message
  // being assembled (its fragments so far, before EOM). A message is either copied into
  // `buffer` or, while the tx batch that carried all of it is being handled, "direct": its
  // bytes are pending_iov entries (guest memory). Copied messages come first, in buffer order.
  struct GuestMessage {
    uint32_t len = 0;
    bool eor = false;     // the guest's last fragment carried VIRTIO_VSOCK_SEQ_EOR
    bool direct = false;  // in pending_iov, not buffer
  };
  std::deque<GuestMessage> messages;
  uint32_t partial_bytes = 0;
  bool partial_direct = false;   // the message being assembled is in pending_iov ...
  size_t partial_iov_begin = 0;  // ... from this entry
  // Host -> guest: the message read from the host socket and not sent in full yet; bytes
  // [out_msg_off, size) are still to go, the packet carrying the last one gets EOM.
  std::vector<uint8_t> out_msg;
  size_t out_msg_off = 0;
  bool out_msg_eor = false;      // out_msg's last packet also gets VIRTIO_VSOCK_SEQ_EOR
  size_t last_host_msg_len = 0;  // the previous host message's size: rx buffers to pop next
  // HostStream::message_flags: host records carry a trailing flags byte (both ways).
  bool host_msg_flags = false;

  std::unique_ptr<PendingConnect> host_connect;  // kConnectingHost
  uint64_t guest_connect_id = 0;                 // kConnectingGuest (0: none)
  EventLoop::TimerId timer = 0;                  // connect or close timeout (0: none)

 private:
  ConnectionInfo info_;
  ConnState state_;
  bool host_initiated_;
  std::chrono::steady_clock::time_point opened_;
  uint64_t bytes_to_guest_ = 0;
  uint64_t bytes_from_guest_ = 0;

  uint32_t buf_alloc_;
  uint32_t peer_buf_alloc_ = 0;
  uint32_t peer_fwd_cnt_ = 0;
  uint32_t tx_cnt_ = 0;
  uint32_t rx_cnt_ = 0;
  uint32_t fwd_cnt_ = 0;
  uint32_t last_fwd_cnt_sent_ = 0;
  uint32_t peer_shutdown_ = 0;
};

}  // namespace vsockd::vsock
