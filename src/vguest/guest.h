// vguest::Guest: a virtual guest that attaches to any vhost-user-vsock backend as the
// vhost-user frontend, as QEMU plus a Linux 6.1 guest would.
//
// Role: our test and benchmark driver. It negotiates like QEMU 7.2 (features, protocol
// features, GET_CONFIG for the CID, one memfd region, rings 0 = rx and 1 = tx with kick/call
// eventfds, SET_VRING_ENABLE), and plays the 6.1 virtio-vsock driver: rx buffers of a
// 44-byte header descriptor plus a 4096-byte data descriptor, behind one indirect descriptor
// when VIRTIO_RING_F_INDIRECT_DESC is negotiated (or one combined descriptor, as 6.2+),
// checked like 6.1 checks them; tx packets as a header descriptor plus a payload
// descriptor copied into a guest-memory slot; EVENT_IDX kick and interrupt suppression with
// one kick per loop batch; connection state and credit per Stream (vguest/stream.h).
// Callers: integration tests, the benchmark, the vguest CLI. It also offers raw access to
// build hostile tx chains and packets.
// Threading: everything runs on the EventLoop passed to Attach(); callbacks run there. Do
// not destroy the Guest from inside one of its callbacks.
//
// Device misbehaviour (bad used lengths, credit overruns, tx used len != 0, ...) never
// crashes the guest: it is counted in Stats, which tests assert on.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/event_fd.h"
#include "base/event_loop.h"
#include "base/fd.h"
#include "base/result.h"
#include "vguest/stream.h"
#include "virtio/driver_queue.h"
#include "vsock/packet.h"

namespace vsockd::vhost_user {
class Frontend;
}

namespace vsockd::vguest {

struct GuestOptions {
  std::string socket_path;
  uint32_t queue_size = 128;        // like QEMU (VHOST_VSOCK_QUEUE_SIZE)
  uint32_t rx_buf_size = 4096;      // data bytes per rx buffer (Linux 6.1)
  bool rx_combined_desc = false;    // true: one descriptor holding header + data (Linux 6.2+)
  uint32_t buf_alloc = 256 * 1024;  // our per-socket receive buffer (Linux default)
  bool event_idx = true;            // ack VIRTIO_RING_F_EVENT_IDX if offered
  // Ack VIRTIO_RING_F_INDIRECT_DESC if offered, as 6.1 does; then every chain of more than
  // one descriptor (rx buffers, tx data packets) is one indirect descriptor, as
  // virtqueue_add_split does, so a 128-entry ring holds 128 rx buffers instead of 64.
  bool indirect_desc = true;
  // Ack VIRTIO_VSOCK_F_SEQPACKET if offered (as 6.1 does); then SEQPACKET connects/listens work.
  bool seqpacket = true;
  size_t memory_bytes = 64 << 20;                   // memfd guest RAM size
  std::chrono::milliseconds connect_timeout{2000};  // vsock connect (Linux default)
  std::chrono::milliseconds close_timeout{8000};    // linger after Close (Linux default)
  // How long Attach retries while the backend's socket is missing or refusing (a daemon
  // that is still starting). 0: one attempt, like QEMU.
  std::chrono::milliseconds attach_timeout{0};
};

class Guest : private StreamHost {
 public:
  struct Stats {
    uint64_t rx_packets = 0;  // valid rx used elements processed
    uint64_t rx_bytes = 0;    // RW payload bytes received
    uint64_t tx_packets = 0;  // packets we put on tx
    uint64_t tx_bytes = 0;    // RW payload bytes sent
    uint64_t kicks = 0;       // kick eventfd writes (both queues)
    uint64_t interrupts = 0;  // call eventfd wakeups (both queues)
    // Device bugs (a correct device leaves them all 0):
    uint64_t rx_bad_len = 0;         // used len < 44 or > 44 + rx_buf_size: dropped (6.1 does)
    uint64_t rx_len_mismatch = 0;    // used len - 44 != hdr.len
    uint64_t rx_bad_head = 0;        // used id that is not an rx buffer we posted
    uint64_t rx_bad_dst_cid = 0;     // dst_cid != our CID (processed anyway, like Linux)
    uint64_t credit_violations = 0;  // RW payload beyond the credit we advertised
    uint64_t overrun_drops = 0;      // RW dropped: the stream's buffer was full
    uint64_t unexpected_ops = 0;     // ops that make no sense in the connection's state
    uint64_t tx_bad_used_len = 0;    // tx used len != 0
    uint64_t tx_bad_head = 0;        // tx used id that is not a chain we posted
    uint64_t vring_errors = 0;       // the backend signalled a vring err fd
    // Protocol traffic:
    uint64_t rst_sent = 0;
    uint64_t rst_received = 0;
    uint64_t bad_type_rx = 0;        // packets of a type other than STREAM (answered with RST)
    uint64_t control_dropped = 0;    // control packets dropped: our own tx backlog was full
    uint64_t streams_active = 0;     // connections (not yet ended)
    uint64_t rx_buffers_posted = 0;  // rx buffers the device holds right now
  };

  // Raw guest memory for hostile tests: host pointer, guest-physical address, length.
  struct Buffer {
    uint8_t* host = nullptr;
    uint64_t gpa = 0;
    size_t len = 0;
  };

  // Connects to the backend and negotiates like QEMU 7.2 (VERSION_1 required, PROTOCOL_
  // FEATURES, protocol features CONFIG|REPLY_ACK|MQ as offered, CONFIG required), reads the
  // CID with GET_CONFIG, sets up memory and rings 0 (rx) and 1 (tx), posts rx buffers,
  // enables the rings and registers the call fds in `loop`. Must run on the loop thread.
  static Result<std::unique_ptr<Guest>> Attach(EventLoop* loop, const GuestOptions& options);
  // Detaches: closes the vhost-user socket (the backend sees the frontend go away). No
  // callbacks run.
  ~Guest() override;
  Guest(const Guest&) = delete;
  Guest& operator=(const Guest&) = delete;

  uint64_t cid() const { return cid_; }
  uint64_t acked_features() const { return acked_features_; }
  uint64_t device_features() const { return device_features_; }
  uint64_t protocol_features() const { return protocol_features_; }
  // False once the backend closed the vhost-user connection (all streams were reset).
  bool attached() const { return !gone_; }
  bool seqpacket_negotiated() const {
    return (acked_features_ & (uint64_t{1} << vsock::VIRTIO_VSOCK_F_SEQPACKET)) != 0;
  }

  // Guest -> `dst_cid` connect from an ephemeral port (random start >= 1024, increasing).
  // on_done(stream, status) runs once: ok on RESPONSE, ECONNRESET on RST, ETIMEDOUT after
  // connect_timeout, ENOTCONN when the backend is gone, ESOCKTNOSUPPORT for SEQPACKET when
  // the feature was not negotiated. Never runs inside Connect(). `type` is
  // VIRTIO_VSOCK_TYPE_STREAM or VIRTIO_VSOCK_TYPE_SEQPACKET (message semantics: see Stream).
  Stream* Connect(uint32_t port, std::function<void(Stream*, Status)> on_done,
                  uint64_t dst_cid = vsock::VMADDR_CID_HOST,
                  uint16_t type = vsock::VIRTIO_VSOCK_TYPE_STREAM);
  // Accepts peer -> guest connections of `type` on `port` (REQUEST -> RESPONSE). A REQUEST to
  // a port nobody listens on (or of another type) gets RST, as in Linux. EADDRINUSE if
  // already listening; ESOCKTNOSUPPORT for SEQPACKET without the feature.
  Status Listen(uint32_t port, std::function<void(Stream*)> on_accept,
                uint16_t type = vsock::VIRTIO_VSOCK_TYPE_STREAM);
  void Unlisten(uint32_t port);

  // A guest driver reset: stop the rings (ENABLE 0, GET_VRING_BASE), reset every stream
  // locally (ECONNRESET, no packets, as Linux), then start again at index 0 with new ring
  // addresses.
  Status ResetDriver();
  // VM stop / cont: stop the rings, then restart them at the same addresses and indices
  // (QEMU's start sequence again: SET_FEATURES, SET_MEM_TABLE, the vring messages).
  // Streams survive; writes meanwhile return 0 and control packets wait.
  Status Pause();
  Status Resume();
  bool running() const { return running_; }

  // Packets of ours the device has not consumed yet (tx chains not returned as used, plus
  // control packets still waiting for tx room).
  size_t tx_backlog() const {
    // Every chain of ours holds one header slot until the device returns it.
    return options_.queue_size - tx_hdr_free_.size() + pending_control_.size();
  }
  // Publishes and kicks what is queued, then calls `done` once the device has consumed all
  // of it (tx_backlog() == 0), the backend went away, or `timeout` passed. A guest about to
  // detach calls this first, as a kernel keeps sending a closed socket's data: without it
  // the last packets may never reach the device. `done` runs from the loop, never inside.
  void Drain(std::chrono::milliseconds timeout, std::function<void()> done);

  Stats stats() const;

  // ---- Raw access for hostile-guest tests ----
  // Guest memory that nothing else uses (never freed). len 0 / host nullptr when exhausted.
  Buffer AllocRaw(size_t len);
  // The tx ring itself: add any chain (or write any descriptor) and KickTx(). Used elements
  // for chains the Guest did not build are collected for TakeRawTxUsed().
  virtio::DriverQueue& raw_tx_queue();
  // Publishes what was added to tx and kicks (always).
  void KickTx();
  std::vector<virtio::UsedElem> TakeRawTxUsed();
  // Sends a packet with the header fields exactly as given (src_cid, len, op, ...) and the
  // payload as given, bypassing every check (header descriptor + one payload descriptor).
  void SendRawPacket(const vsock::PacketHeader& hdr, std::span<const uint8_t> payload);
  // Every packet the device delivered, in order, if set (tests that look at raw traffic).
  std::function<void(const vsock::PacketHeader&, std::span<const uint8_t>)> on_rx_packet;

 private:
  struct Ring {
    virtio::DriverQueue queue;
    uint8_t* area[2] = {nullptr, nullptr};  // two ring areas: a driver reset switches
    uint64_t area_gpa[2] = {0, 0};
    int current = 0;
    std::optional<EventFd> kick, call, err;
    uint32_t base = 0;  // where GET_VRING_BASE said the device stopped
  };
  struct RxSlot {
    uint8_t* hdr = nullptr;  // separate-descriptor mode: header buffer
    uint64_t hdr_gpa = 0;
    virtio::vring_desc* table = nullptr;  // indirect mode: this buffer's 2-entry table
    uint64_t table_gpa = 0;
    uint8_t* data = nullptr;  // data buffer (combined mode: header + data)
    uint64_t data_gpa = 0;
  };
  struct TxChain {
    int32_t hdr_slot = -1;      // -1: not ours
    int32_t payload_slot = -1;  // -1: header only (or raw payload)
  };
  struct ConnKey {
    uint32_t local_port;
    uint64_t peer_cid;
    uint32_t peer_port;
    bool operator<(const ConnKey& o) const {
      if (local_port != o.local_port) return local_port < o.local_port;
      if (peer_cid != o.peer_cid) return peer_cid < o.peer_cid;
      return peer_port < o.peer_port;
    }
  };

  Guest(EventLoop* loop, const GuestOptions& options);
  Status Setup();
  Status SetupMemory();
  Status StartRings(bool reset_indices);
  Status StopRings();
  void InitQueues(bool fresh);
  void FillRx();
  void KickIfNeeded(Ring& ring, bool need);
  void OnCall(int index);
  void OnErr(int index);
  void OnSocketEvent(uint32_t events);
  void BackendGone(const std::string& why);
  void ProcessRx();
  void HandleRxElem(const virtio::UsedElem& e);
  void Dispatch(const vsock::PacketHeader& hdr, std::span<const uint8_t> payload);
  void ReplyRst(const vsock::PacketHeader& to);
  void ReapTx();
  void FlushPendingControl();
  void NotifyTxWaiters();
  void UpdateTxInterrupts();
  void CheckDrained();
  void ScheduleFlush();
  void FlushTx();
  bool PutControl(const vsock::PacketHeader& hdr);
  uint32_t AllocEphemeralPort();
  void ResetAllStreams(int code, const std::string& why);
  void Defer(std::function<void()> fn);
  void* Bump(size_t len, size_t align, uint64_t* gpa);

  // StreamHost
  uint64_t local_cid() const override { return cid_; }
  void SendControl(const vsock::PacketHeader& hdr) override;
  size_t TxRoom() override;
  void SendData(const vsock::PacketHeader& hdr, std::span<const uint8_t> payload) override;
  void WaitForTxRoom(Stream* stream) override;
  uint64_t AddTimer(std::chrono::milliseconds delay, std::function<void()> callback) override;
  void CancelTimer(uint64_t id) override;
  void ConnectionEnded(Stream* stream) override;
  void Release(Stream* stream) override;
  void CountDeviceBug(DeviceBug bug) override;

  EventLoop* loop_;
  GuestOptions options_;
  std::unique_ptr<vhost_user::Frontend> frontend_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // for deferred callbacks
  uint64_t cid_ = 0;
  uint64_t device_features_ = 0;
  uint64_t acked_features_ = 0;
  uint64_t protocol_features_ = 0;
  bool event_idx_ = false;
  bool indirect_ = false;
  bool running_ = false;
  bool gone_ = false;
  bool registered_ = false;

  // Guest memory: one memfd mapped at mem_, guest-physical kGpaBase.
  Fd memfd_;
  uint8_t* mem_ = nullptr;
  size_t mem_size_ = 0;
  size_t bump_ = 0;

  Ring rx_, tx_;
  std::vector<RxSlot> rx_slots_;
  std::vector<uint32_t> rx_free_;
  std::vector<int32_t> rx_head_slot_;  // rx head -> slot, -1 if not posted
  uint32_t rx_posted_ = 0;
  uint32_t rx_max_posted_ = 0;
  bool rx_stalled_ = false;
  uint64_t epoch_ = 0;  // bumped by every queue (re)initialisation  // stopped reading rx: our
                        // reply backlog is full (as 6.1)

  uint8_t* tx_hdr_area_ = nullptr;  // one 64-byte header slot per descriptor
  uint64_t tx_hdr_gpa_ = 0;
  virtio::vring_desc* tx_tables_ = nullptr;  // indirect mode: a 2-entry table per header slot
  uint64_t tx_tables_gpa_ = 0;
  uint8_t* tx_payload_area_ = nullptr;  // 64 KiB payload slots
  uint64_t tx_payload_gpa_ = 0;
  std::vector<uint32_t> tx_hdr_free_;
  std::vector<uint32_t> tx_payload_free_;
  std::vector<TxChain> tx_chains_;  // by head
  std::deque<vsock::PacketHeader> pending_control_;
  std::vector<Stream*> tx_waiters_;
  std::vector<virtio::UsedElem> raw_tx_used_;
  bool raw_tx_ = false;
  bool flush_scheduled_ = false;
  std::function<void()> drain_done_;
  uint64_t drain_timer_ = 0;

  std::map<ConnKey, Stream*> connections_;
  std::unordered_map<Stream*, std::unique_ptr<Stream>> streams_;
  std::map<uint32_t, std::function<void(Stream*)>> listeners_;
  std::map<uint32_t, uint16_t> listener_types_;
  uint32_t next_port_ = 0;

  Stats stats_;
};

}  // namespace vsockd::vguest
