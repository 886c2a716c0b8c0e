// Device::Impl: the vsock muxer behind vsock::Device (device.h), shared by the files that
// implement it. See device.h for the guarantees and connection.h for the protocol primer.
//
// Flow of one epoll batch:
//   tx kick -> ProcessTx(): pop every tx chain, validate, dispatch; RW payloads become iovecs
//              into guest memory queued on their connection; at the end one writev per
//              connection (buffered bytes first), copy the rest into the connection buffer,
//              then return every chain (used len 0) and notify once.
//   anything that gives rx work (a reply, a control flag, host readability, fresh credit,
//   an rx kick) -> ScheduleRx(): RunRx() runs once, deferred to the end of the batch. It
//              sends queued RSTs, then serves a FIFO of connections: control packets, then
//              data read into as many rx buffers as credit allows (one readv into one
//              buffer, then, if it filled, one sized by FIONREAD).
//
// SEQPACKET (VIRTIO_VSOCK_F_SEQPACKET; Linux net/vmw_vsock/virtio_transport_common.c, 6.1):
//   A message is a run of RW packets of one connection; the packet carrying its last byte has
//   VIRTIO_VSOCK_SEQ_EOM, and also VIRTIO_VSOCK_SEQ_EOR when the sender passed MSG_EOR.
//   Credit is counted in bytes exactly as for streams.
//   guest -> host: a message whose fragments all arrive in one tx batch goes to the host
//     socket straight from guest memory; one begun in an earlier batch was copied into the
//     connection's buffer (its chains went back with that batch), and so are its later
//     fragments. At the end of each batch the complete messages go out in sendmmsg batches, one
//     record each (EOR cannot be passed on: AF_UNIX has no MSG_EOR, so what the host sees
//     is the boundary, not the EOR bit); whatever the host does not take then (and the
//     unfinished message) is copied into the buffer before the chains are returned. Linux's
//     sender refuses a message larger than our buf_alloc (EMSGSIZE) and sends fragments only
//     as credit allows, so a message always fits our buffer; a guest that exceeds credit is
//     reset as for streams. The host socket's SO_SNDBUF is raised so that a buf_alloc-sized
//     message fits; if sendmsg still says EMSGSIZE the connection is reset. A partial message
//     left when the guest sends SHUTDOWN(SEND) can never complete: it is dropped.
//   host -> guest: one recvmsg per message, straight into rx buffers popped for it (as many
//     as the connection's previous message needed, within credit), then a scratch area for
//     the rest, which waits in out_msg; sent as RW fragments (one per rx buffer, as credit
//     allows, as Linux's sender does), EOM on the last, never EOR (AF_UNIX recvmsg never
//     reports MSG_EOR). A message larger than min(the guest's buf_alloc, our buf_alloc)
//     cannot be delivered (a Linux receiver only hands out complete messages, so it would
//     wait forever for credit): the connection is reset (RST to the guest, host socket
//     closed); MSG_TRUNC gives its real size. Empty host messages are dropped (vsock has
//     none).
//   EOR between two guests (HostStream::message_flags, the sibling bridge): each record on
//     the host socket is the message plus one trailing byte of its VIRTIO_VSOCK_SEQ_* flags,
//     both ways, so guest B sees guest A's EOR (Linux 6.1 reports it as MSG_EOR; vsock_test
//     "SOCK_SEQPACKET msg bounds" checks it). The byte is not payload: credit and the size
//     limit count the message only.
//
// No rx chain is held across calls: every chain popped is pushed or un-popped before RunRx
// returns, so QueueStopped() (GET_VRING_BASE) always sees a consistent last_avail_idx.
//
// The implementation is one class, Device::Impl, split by job:
//   device.cc              the virtio::VirtioDevice calls, connects started by the host side
//   device_connections.cc  the connection table and each connection's life (set-up, host
//                          stream attach, half-close, linger, reset)
//   device_tx.cc           guest -> host: tx chains, packet validation and dispatch, stream
//                          writes to the host
//   device_rx.cc           host -> guest: rx scheduling, rx buffers, control packets, stream
//                          reads into rx buffers
//   device_seqpacket.cc    SEQPACKET framing both ways (message batches to the host, one
//                          recvmsg per host message into rx buffers)
// Callers: the device_*.cc files only. Threading: the device's loop thread.
#pragma once

#include <endian.h>
#include <limits.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <memory>
#include <unordered_map>
#include <vector>

#include "base/log.h"
#include "base/unix_socket.h"
#include "virtio/virtio_ring.h"
#include "vsock/admission.h"
#include "vsock/connection.h"
#include "vsock/device.h"
#include "vsock/packet.h"

namespace vsockd::vsock {

class Device::Impl {
  using DescChain = virtio::DescChain;
  using PopResult = virtio::PopResult;

  static constexpr uint32_t kRxQueue = 0;
  static constexpr uint32_t kTxQueue = 1;
  // Host-side ports for host-initiated connections, as Firecracker: [2^30, 2^31).
  static constexpr uint32_t kHostPortFirst = 1u << 30;
  static constexpr uint32_t kHostPortEnd = 1u << 31;
  // Fairness: what one connection may send the guest per turn before the next one is served.
  // A whole Linux buf_alloc (256 KiB of 4 KiB buffers): a stream that waits for credit then
  // gets everything it may send in one readv and the guest one interrupt per credit window;
  // 128 KiB turns cost the guest a second wakeup per window (host->guest 64 KiB: 0.56x -> 0.66x
  // of raw AF_UNIX, same run).
  static constexpr uint32_t kTurnBytes = 256 * 1024;
  static constexpr size_t kTurnChains = 64;
  static constexpr size_t kMaxIov = IOV_MAX;
  // Guest -> host SEQPACKET messages per sendmmsg.
  static constexpr size_t kMaxMessageBatch = 64;
  // How long the host peer of a vanished guest gets to read the bytes we still hold for it.
  static constexpr std::chrono::seconds kLingerTimeout{10};

  // Copies up to n bytes starting at byte `offset` of the iovec stream into out.
  static size_t CopyFromIov(const std::vector<iovec>& iov, size_t offset, uint8_t* out, size_t n) {
    size_t done = 0;
    for (const iovec& v : iov) {
      if (done == n) break;
      if (offset >= v.iov_len) {
        offset -= v.iov_len;
        continue;
      }
      size_t take = std::min(v.iov_len - offset, n - done);
      std::memcpy(out + done, static_cast<const uint8_t*>(v.iov_base) + offset, take);
      done += take;
      offset = 0;
    }
    return done;
  }

  static size_t CopyToIov(const std::vector<iovec>& iov, size_t offset, const uint8_t* in,
                          size_t n) {
    size_t done = 0;
    for (const iovec& v : iov) {
      if (done == n) break;
      if (offset >= v.iov_len) {
        offset -= v.iov_len;
        continue;
      }
      size_t take = std::min(v.iov_len - offset, n - done);
      std::memcpy(static_cast<uint8_t*>(v.iov_base) + offset, in + done, take);
      done += take;
      offset = 0;
    }
    return done;
  }

  // The byte at `offset` of the stream (offset < its total length).
  static uint8_t ByteAt(const std::vector<iovec>& iov, size_t offset) {
    for (const iovec& v : iov) {
      if (offset < v.iov_len) return static_cast<const uint8_t*>(v.iov_base)[offset];
      offset -= v.iov_len;
    }
    return 0;
  }

  // Appends iovecs covering [offset, offset + n) of the stream, at most max_entries of them.
  // Returns the bytes covered (less than n when the stream or the entry budget ends).
  static size_t SliceIov(const std::vector<iovec>& iov, size_t offset, size_t n,
                         std::vector<iovec>* out, size_t max_entries) {
    size_t done = 0;
    for (const iovec& v : iov) {
      if (done == n || max_entries == 0) break;
      if (offset >= v.iov_len) {
        offset -= v.iov_len;
        continue;
      }
      size_t take = std::min(v.iov_len - offset, n - done);
      if (take > 0) {
        out->push_back(iovec{static_cast<uint8_t*>(v.iov_base) + offset, take});
        --max_entries;
        done += take;
      }
      offset = 0;
    }
    return done;
  }

 public:
  Impl(EventLoop* loop, HostBackend* backend, DeviceOptions options)
      : loop_(loop),
        backend_(backend),
        opts_(std::move(options)),
        admission_(opts_.budget, opts_.policy, opts_.buf_alloc) {
    rx_pool_.resize(kTurnChains);
    rx_caps_.resize(kTurnChains);
  }

  ~Impl() {
    destroying_ = true;
    ResetAll(/*notify_connects=*/false);
    for (auto& [fd, linger] : lingers_) {
      loop_->Remove(fd);
      if (linger->timer != 0) loop_->CancelTimer(linger->timer);
    }
  }

  uint64_t DeviceFeatures() const;
  bool ReadConfig(uint32_t offset, std::span<uint8_t> out) const;

  void SetAckedFeatures(uint64_t features) { acked_features_ = features; }

  bool seqpacket_negotiated() const;

  // A type a connection may have: STREAM, or SEQPACKET once negotiated.
  bool TypeAllowed(uint16_t type) const;
  void QueueStarted(uint32_t index, virtio::SplitQueue* queue, bool driver_reset);
  void QueueStopped(uint32_t index);
  void QueueKicked(uint32_t index);
  void FrontendGone();
  Result<uint64_t> ConnectToGuest(uint32_t guest_port, GuestConnectDone done, uint16_t type);

  Result<uint64_t> ConnectToGuestFrom(uint64_t peer_cid, uint32_t peer_port, uint32_t guest_port,
                                      GuestConnectDone done, uint16_t type);
  Result<uint64_t> StartGuestConnect(const ConnectionInfo& info, GuestConnectDone done);

  // A CID our guest may talk to: the host, or another VM (the backend decides which exist).
  bool IsRoutablePeer(uint64_t cid) const;
  void CancelConnectToGuest(uint64_t id);
  void SetConnectionObserver(Device::ConnectionObserver observer) {
    conn_observer_ = std::move(observer);
  }
  void ResetGuestConnections(std::span<const ConnectionInfo> connections);

  uint64_t guest_cid() const { return opts_.guest_cid; }
  const DeviceStats& stats() const;
  std::vector<Device::ConnectionStatus> Connections() const;
  void UpdateLimits(const VmBudget& budget, const AccessPolicy& policy);
  Status StartCapture(const CaptureOptions& options);
  CaptureStatus capture_status() const;
  Result<CaptureStatus> StopCapture();

 private:
  struct GuestConnect {
    ConnKey key;
    GuestConnectDone done;
  };
  enum class Served { kDone, kStarved, kFreed };

  // ---------------------------------------------------------------------------------------
  // Connections
  // ---------------------------------------------------------------------------------------
  // Admission (vsock/admission.h) of a connection the guest asks for / one to the guest; a
  // refusal is logged (rate-limited, naming the VM and the key) and counted there.
  Refusal AdmitFromGuest(const PacketHeader& h);
  Refusal AdmitToGuest(uint32_t guest_port, bool from_sibling);
  Admission::Usage Usage() const;
  // The buf_alloc of `conn`'s next header (admission.h: toward the configured size, within
  // the VM's budget, never taking back more credit than the header returns).
  void RefreshCredit(Connection* conn);
  // Returns freed buffer memory to the system once enough has been freed (malloc_trim),
  // deferred to the end of the batch.
  void MaybeTrimMemory(uint64_t freed);
  Connection* Find(const ConnKey& key);
  Connection* AddConnection(const ConnectionInfo& info, ConnState state);
  void CloseHost(Connection* conn);

  // The frontend went away (the VM is gone) holding a connection whose bytes we
  // accepted (the guest's credit was spent on them) but the host socket had no room for.
  // A kernel would still deliver what sits in the host socket's receive queue, so we keep
  // the host fd for a while and write those bytes, then close: the host peer reads
  // everything the guest sent, then EOF. Bounded by kLingerTimeout and by the connection's
  // buffer (at most its buf_alloc), and at most max_connections lingers. A driver reset
  // does not linger: the guest could repeat it at will to pin host fds.
  void LingerHost(Connection* conn);
  void WriteLinger(int fd);
  void EndLinger(int fd);
  void DropGuestData(Connection* conn);

  // A PendingConnect may be the object whose callback is running: destroy it later.
  void DestroyPendingConnect(Connection* conn);

  // Frees the connection now; unless rst is RstReason::kNone, an RST goes to the guest
  // (bounded reply queue: at most one per connection on top of the tx-driven ones), counted
  // under its reason.
  void FreeConnection(Connection* conn, RstReason rst);

  // linger: deliver what we buffered for host peers (LingerHost); only when the frontend
  // went away, never on a driver reset, which the guest can repeat at will.
  void ResetAll(bool notify_connects, bool linger = false);
  void FailGuestConnect(Connection* conn, int code, RstReason rst);
  // Detaches a host-started connect's callback from the table (empty if none is pending).
  GuestConnectDone TakeGuestConnect(Connection* conn);
  bool AttachHost(Connection* conn, HostStream stream);
  void OnHostConnected(ConnKey key, Result<HostStream> result);
  void OnHostEvent(ConnKey key, uint32_t events);
  void QueueShutdown(Connection* conn, uint32_t flags);

  // We sent (or queued) SHUTDOWN(RCV|SEND): the host side is gone; wait for the guest's RST.
  void EnterClosing(Connection* conn);
  void StartCloseTimer(Connection* conn);
  void OnHostEof(Connection* conn);
  // Whether the host peer did shutdown(SHUT_RD): `write_errno` is the errno of a failed write
  // (0: probe with a zero-length send, stream sockets only). EPIPE while the peer has not
  // hung up (it may still send) is that, and nothing else is.
  bool HostStoppedReading(Connection* conn, int write_errno);
  // The host peer stopped reading: SHUTDOWN(RCV) to the guest, its unwritten data discarded
  // (counted as forwarded, so credit and budgets stay exact). Idempotent.
  void OnHostStoppedReading(Connection* conn);
  void MaybeQueueRx(Connection* conn);
  void MaybeCreditUpdate(Connection* conn);

  // After the guest's SHUTDOWN: half-close the host once its data is there; free the
  // connection when the guest closed both ways. Returns false if the connection was freed.
  bool MaybeFinishGuestSend(Connection* conn);

  // ---------------------------------------------------------------------------------------
  // Guest -> host (tx)
  // ---------------------------------------------------------------------------------------
  size_t ReplyCap() const;
  void ScheduleTx();
  void ProcessTx();
  void Drop(const char* why, const PacketHeader* hdr);

  // RST for a packet that has no connection (src/dst swapped, type echoed). Never for an RST.
  void ReplyRst(const PacketHeader& h, RstReason why);

  // A protocol violation on a known connection: RST it.
  void Violation(Connection* conn, const PacketHeader& h, const char* why);
  void HandleTxChain(const DescChain& chain);
  void OpenFromGuest(const PacketHeader& h);
  void CompleteGuestConnect(Connection* conn);

  // Returns false if the connection was freed.
  bool HandleRw(Connection* conn, const PacketHeader& h, const DescChain& chain);
  void FlushTxBatch();

  // One writev of (buffer, then this batch's iovecs); what the host did not take is copied
  // into the buffer. Returns false if the connection was freed (host write error).
  bool FlushToHost(Connection* conn);

  // Seqpacket: complete messages go to the host in sendmmsg batches, each message one record
  // (all or nothing on AF_UNIX SOCK_SEQPACKET). A message is sent from the connection's buffer
  // if it was copied there, else straight from guest memory (pending_iov: every fragment in
  // this tx batch). What is left when the host stops taking them is copied into the buffer
  // before the batch's chains go back. Returns false if the connection was freed.
  bool FlushMessagesToHost(Connection* conn);

  // Copies what is still in guest memory (pending_iov from `from`: unsent direct messages,
  // then the direct part of the message being assembled) into the buffer, in order, so the
  // chains can go back.
  void BufferDirectMessages(Connection* conn, size_t from);

  // The guest will send no more: a message without its EOM never completes. Its bytes count
  // as consumed so credit stays consistent.
  void DropPartialMessage(Connection* conn);
  ssize_t WriteHost(Connection* conn, const iovec* iov, size_t cnt);

  // ---------------------------------------------------------------------------------------
  // Host -> guest (rx)
  // ---------------------------------------------------------------------------------------
  void ScheduleRx();
  bool RxUsable();
  void RunRx();

  // Pops the next rx chain a packet can go into: writable only, at least `min_writable`
  // bytes. An unusable chain is returned empty, unless `popped` chains are already popped
  // and not pushed: then it is un-popped and kEmpty returned (handled first next turn), so
  // those stay the most recent pops and Unpop stays exact. kBroken: the queue is unusable
  // (logged once); nothing popped may be touched.
  PopResult PopUsableRx(DescChain* chain, size_t min_writable, size_t popped = 0);

  // One chain for a packet popped alone (control packets, a message's later fragments).
  bool PopRxChain(DescChain* chain, size_t min_writable = kHeaderSize);

  // Pops rx_pool_[n] for a read into its data area (a header and at least one payload byte
  // fit) and appends iovecs for up to `room` bytes of it to rx_iov_, which stays within
  // `iov_limit` entries; rx_caps_[n] = the bytes they cover. kEmpty also when rx_iov_ is full.
  PopResult PopRxForRead(size_t n, size_t room, size_t iov_limit);

  // After a read of `got` bytes into rx_pool_[0, n) (rx_caps_ each): sends the filled chains
  // as RW packets, the last with `last_flags`, and un-pops the rest (the most recent pops).
  // Returns how many were sent.
  size_t SendReadChains(Connection* conn, size_t n, size_t got, uint32_t last_flags);
  void SendRw(Connection* conn, const DescChain& ch, size_t len, uint32_t flags);
  void WriteHeader(const DescChain& chain, const PacketHeader& h, uint32_t payload);
  bool SendControl(Connection* conn, uint16_t op, uint32_t flags);
  Served Serve(Connection* conn);

  // Pops as many rx chains as credit and the turn allow, fills their data areas with readv (or
  // from the stream prefix), writes each header and returns the unused chains.
  // Unless the connection is streaming (below), the first readv goes into one rx buffer: a small
  // message (the interactive case) then costs one chain walk instead of kTurnChains walks that
  // would mostly be un-popped again (measured on the 64-byte round trip). Only if that buffer fills
  // up does FIONREAD tell how many more chains to pop for a second readv, so bulk data pays two
  // more syscalls per turn (up to kTurnBytes) and no chain is walked for nothing.
  Served SendData(Connection* conn);

  // Seqpacket host -> guest: sends the rest of out_msg, then reads host messages straight
  // into rx buffers, as credit, the ring and the turn allow. Each packet carries one message's
  // bytes; the one with its last byte gets EOM.
  Served SendMessages(Connection* conn);
  static uint32_t MessageEndFlags(bool eor);

  // Seqpacket host -> guest: reads the next host message with one recvmsg whose buffers are
  // rx buffers popped for it (at most max_chains, within credit), then a scratch area for what
  // does not fit them, which goes to out_msg and follows as later packets. So a message that
  // fits the rx buffers and credit costs one syscall and one copy (kernel to guest memory);
  // the 6.1 driver's receiver reassembles fragments the same way whatever their sizes.
  // How many buffers to pop: enough for the connection's previous message (at least one), so
  // small messages walk one chain and a run of equal messages lands whole.
  // Adds what went out to *chains / *bytes. False: nothing more to send now (*served: kDone
  // when drained or at EOF, kStarved when no rx buffer is available, kFreed when the
  // connection was reset).
  bool ReadHostMessageToGuest(Connection* conn, size_t max_chains, size_t* chains, size_t* bytes,
                              Served* served);
  EventLoop* loop_;
  HostBackend* backend_;
  DeviceOptions opts_;
  mutable DeviceStats stats_;  // refusal and credit figures filled in by stats()
  Admission admission_;
  // The running capture (null: none) and the payload slice of the packet being recorded.
  std::unique_ptr<PacketCapture> capture_;
  std::vector<iovec> capture_iov_;
  // Records a packet whose payload is bytes [offset, offset + h.len) of `iov`.
  void Capture(const PacketHeader& h, const std::vector<iovec>& iov, size_t offset);
  // Bytes of connection buffers freed since the last malloc_trim (MaybeTrimMemory).
  uint64_t freed_since_trim_ = 0;
  bool trim_scheduled_ = false;
  uint64_t acked_features_ = 0;
  virtio::SplitQueue* rxq_ = nullptr;
  virtio::SplitQueue* txq_ = nullptr;
  bool rx_broken_logged_ = false;
  bool tx_broken_logged_ = false;
  bool tx_blocked_ = false;  // replies_ full: tx waits for rx to drain them
  bool rx_scheduled_ = false;
  bool in_tx_ = false;
  bool destroying_ = false;
  // Host fds still delivering what a vanished guest sent (LingerHost), by fd.
  struct Linger {
    Fd fd;
    ByteQueue bytes;
    bool not_socket = false;
    uint64_t timer = 0;
    uint64_t held = 0;  // bytes counted in the VM's budget (Admission::Hold) until it ends
  };
  std::unordered_map<int, std::unique_ptr<Linger>> lingers_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // for deferred callbacks

  std::unordered_map<ConnKey, std::unique_ptr<Connection>, ConnKeyHash> conns_;
  std::deque<ConnKey> rx_fifo_;       // connections with something for the guest
  std::deque<PacketHeader> replies_;  // RSTs waiting for rx buffers
  Device::ConnectionObserver conn_observer_;
  std::unordered_map<uint64_t, GuestConnect> guest_connects_;
  uint64_t next_connect_id_ = 1;
  uint32_t next_host_port_ = kHostPortFirst;

  // Scratch reused across batches (no allocation on the data path once warm).
  DescChain tx_chain_;
  std::vector<uint16_t> tx_used_;
  std::vector<ConnKey> flush_keys_;
  std::vector<iovec> write_iov_;
  std::vector<DescChain> rx_pool_;
  std::vector<size_t> rx_caps_;
  std::vector<iovec> rx_iov_;
  std::vector<iovec> seq_slices_;  // a SEQPACKET fragment's payload in guest memory
  // Guest -> host SEQPACKET: one sendmmsg batch (FlushMessagesToHost).
  std::vector<mmsghdr> mmsg_;
  std::vector<iovec> mmsg_iov_;
  uint8_t mmsg_trailer_[kMaxMessageBatch] = {};
  // Host -> guest SEQPACKET: where a message's bytes beyond its rx buffers land (see
  // ReadHostMessageToGuest); sized on first use to the largest deliverable message + 2.
  std::vector<uint8_t> msg_scratch_;
};

}  // namespace vsockd::vsock
