// Device::Impl: the vsock muxer. See device.h for the guarantees and connection.h for the
// protocol primer; this file is the data path.
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
#include "vsock/device.h"

#include <endian.h>
#include <limits.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <unordered_map>
#include <vector>

#include "base/log.h"
#include "base/unix_socket.h"
#include "virtio/virtio_ring.h"
#include "vsock/connection.h"
#include "vsock/packet.h"

namespace vsockd::vsock {
namespace {

using virtio::DescChain;
using virtio::PopResult;

constexpr uint32_t kRxQueue = 0;
constexpr uint32_t kTxQueue = 1;
// Host-side ports for host-initiated connections, as Firecracker: [2^30, 2^31).
constexpr uint32_t kHostPortFirst = 1u << 30;
constexpr uint32_t kHostPortEnd = 1u << 31;
// Fairness: what one connection may send the guest per turn before the next one is served.
// A whole Linux buf_alloc (256 KiB of 4 KiB buffers): a stream that waits for credit then
// gets everything it may send in one readv and the guest one interrupt per credit window;
// 128 KiB turns cost the guest a second wakeup per window (host->guest 64 KiB: 0.56x -> 0.66x
// of raw AF_UNIX, same run).
constexpr uint32_t kTurnBytes = 256 * 1024;
constexpr size_t kTurnChains = 64;
constexpr size_t kMaxIov = IOV_MAX;
// Guest -> host SEQPACKET messages per sendmmsg.
constexpr size_t kMaxMessageBatch = 64;
// How long the host peer of a vanished guest gets to read the bytes we still hold for it.
constexpr std::chrono::seconds kLingerTimeout{10};

// Copies up to n bytes starting at byte `offset` of the iovec stream into out.
size_t CopyFromIov(const std::vector<iovec>& iov, size_t offset, uint8_t* out, size_t n) {
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

size_t CopyToIov(const std::vector<iovec>& iov, size_t offset, const uint8_t* in, size_t n) {
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
uint8_t ByteAt(const std::vector<iovec>& iov, size_t offset) {
  for (const iovec& v : iov) {
    if (offset < v.iov_len) return static_cast<const uint8_t*>(v.iov_base)[offset];
    offset -= v.iov_len;
  }
  return 0;
}

// Appends iovecs covering [offset, offset + n) of the stream, at most max_entries of them.
// Returns the bytes covered (less than n when the stream or the entry budget ends).
size_t SliceIov(const std::vector<iovec>& iov, size_t offset, size_t n, std::vector<iovec>* out,
                size_t max_entries) {
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

}  // namespace

class Device::Impl {
 public:
  Impl(EventLoop* loop, HostBackend* backend, DeviceOptions options)
      : loop_(loop), backend_(backend), opts_(options) {
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

  uint64_t DeviceFeatures() const {
    uint64_t f = 1ull << virtio::VIRTIO_F_VERSION_1;
    if (opts_.offer_event_idx) f |= 1ull << virtio::VIRTIO_RING_F_EVENT_IDX;
    if (opts_.offer_indirect) f |= 1ull << virtio::VIRTIO_RING_F_INDIRECT_DESC;
    if (opts_.offer_seqpacket) f |= 1ull << VIRTIO_VSOCK_F_SEQPACKET;
    return f;
  }

  bool ReadConfig(uint32_t offset, std::span<uint8_t> out) const {
    uint8_t config[8];
    uint64_t cid = htole64(opts_.guest_cid);
    std::memcpy(config, &cid, sizeof cid);
    if (offset > sizeof config || out.size() > sizeof config - offset) return false;
    std::memcpy(out.data(), config + offset, out.size());
    return true;
  }

  void SetAckedFeatures(uint64_t features) { acked_features_ = features; }

  bool seqpacket_negotiated() const {
    return opts_.offer_seqpacket && (acked_features_ & (1ull << VIRTIO_VSOCK_F_SEQPACKET)) != 0;
  }

  // A type a connection may have: STREAM, or SEQPACKET once negotiated.
  bool TypeAllowed(uint16_t type) const {
    return type == VIRTIO_VSOCK_TYPE_STREAM ||
           (type == VIRTIO_VSOCK_TYPE_SEQPACKET && seqpacket_negotiated());
  }

  void QueueStarted(uint32_t index, virtio::SplitQueue* queue, bool driver_reset) {
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

  void QueueStopped(uint32_t index) {
    // Nothing is held across calls (see the file comment), so there is nothing to return.
    if (index == kRxQueue) rxq_ = nullptr;
    if (index == kTxQueue) {
      txq_ = nullptr;
      tx_blocked_ = false;
    }
  }

  void QueueKicked(uint32_t index) {
    if (index == kTxQueue) {
      ProcessTx();
    } else if (index == kRxQueue) {
      ScheduleRx();
    }
  }

  void FrontendGone() {
    ResetAll(/*notify_connects=*/true, /*linger=*/true);
    rxq_ = nullptr;
    txq_ = nullptr;
    acked_features_ = 0;
    tx_blocked_ = false;
  }

  Result<uint64_t> ConnectToGuest(uint32_t guest_port, GuestConnectDone done, uint16_t type) {
    if (!TypeAllowed(type)) {
      return MakeError(EPROTONOSUPPORT, "vsock cid {}: socket type {} not negotiated",
                       opts_.guest_cid, type);
    }
    if (conns_.size() >= opts_.max_connections) {
      return MakeError(EAGAIN, "vsock cid {}: connection limit ({}) reached", opts_.guest_cid,
                       opts_.max_connections);
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

  Result<uint64_t> ConnectToGuestFrom(uint64_t peer_cid, uint32_t peer_port, uint32_t guest_port,
                                      GuestConnectDone done, uint16_t type) {
    if (!TypeAllowed(type)) {
      return MakeError(EPROTONOSUPPORT, "vsock cid {}: socket type {} not negotiated",
                       opts_.guest_cid, type);
    }
    if (!IsValidGuestCid(peer_cid) || peer_cid == opts_.guest_cid) {
      return MakeError(EINVAL, "vsock cid {}: {} cannot be a sibling peer CID", opts_.guest_cid,
                       peer_cid);
    }
    if (conns_.size() >= opts_.max_connections) {
      return MakeError(EAGAIN, "vsock cid {}: connection limit ({}) reached", opts_.guest_cid,
                       opts_.max_connections);
    }
    if (conns_.count(Connection::MakeKey(guest_port, peer_cid, peer_port)) != 0) {
      return MakeError(EADDRINUSE, "vsock cid {}: {}:{} -> guest port {} already exists",
                       opts_.guest_cid, peer_cid, peer_port, guest_port);
    }
    return StartGuestConnect(ConnectionInfo{opts_.guest_cid, guest_port, peer_cid, peer_port, type},
                             std::move(done));
  }

  Result<uint64_t> StartGuestConnect(const ConnectionInfo& info, GuestConnectDone done) {
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
      FailGuestConnect(c, ETIMEDOUT, /*send_rst=*/false);
    });
    conn->pending_ctrl |= Connection::kCtrlRequest;
    MaybeQueueRx(conn);
    return id;
  }

  // A CID our guest may talk to: the host, or another VM (the backend decides which exist).
  bool IsRoutablePeer(uint64_t cid) const {
    return cid == VMADDR_CID_HOST || (IsValidGuestCid(cid) && cid != opts_.guest_cid);
  }

  void CancelConnectToGuest(uint64_t id) {
    auto it = guest_connects_.find(id);
    if (it == guest_connects_.end()) return;
    ConnKey key = it->second.key;
    guest_connects_.erase(it);
    Connection* conn = Find(key);
    if (conn == nullptr || conn->guest_connect_id != id) return;
    conn->guest_connect_id = 0;
    // The guest may already be accepting: tell it the connection is gone.
    FreeConnection(conn, /*send_rst=*/conn->request_sent);
  }

  uint64_t guest_cid() const { return opts_.guest_cid; }
  const DeviceStats& stats() const { return stats_; }

 private:
  struct GuestConnect {
    ConnKey key;
    GuestConnectDone done;
  };
  enum class Served { kDone, kStarved, kFreed };

  // ---------------------------------------------------------------------------------------
  // Connections
  // ---------------------------------------------------------------------------------------
  Connection* Find(const ConnKey& key) {
    auto it = conns_.find(key);
    return it == conns_.end() ? nullptr : it->second.get();
  }

  Connection* AddConnection(const ConnectionInfo& info, ConnState state) {
    auto conn = std::make_unique<Connection>(info, state, opts_.buf_alloc);
    Connection* c = conn.get();
    conns_[c->key()] = std::move(conn);
    stats_.connections_opened++;
    stats_.connections_active = conns_.size();
    LOG_DEBUG("vsock: open {}:{} <-> {}:{} ({})", info.guest_cid, info.guest_port, info.host_cid,
              info.host_port, ConnStateName(state));
    return c;
  }

  void CloseHost(Connection* conn) {
    if (conn->host_registered) {
      loop_->Remove(conn->host_fd.get());
      conn->host_registered = false;
    }
    conn->host_fd.Reset();
  }

  // The frontend went away (the VM is gone) holding a connection whose bytes we
  // accepted (the guest's credit was spent on them) but the host socket had no room for.
  // A kernel would still deliver what sits in the host socket's receive queue, so we keep
  // the host fd for a while and write those bytes, then close: the host peer reads
  // everything the guest sent, then EOF. Bounded by kLingerTimeout and by the connection's
  // buffer (at most its buf_alloc), and at most max_connections lingers. A driver reset
  // does not linger: the guest could repeat it at will to pin host fds.
  void LingerHost(Connection* conn) {
    // A seqpacket buffer holds messages, not a byte stream: not worth lingering for (the
    // guest is gone; its queued messages are dropped with the connection).
    if (!conn->host_fd.valid() || conn->buffer.empty() || conn->seqpacket()) return;
    if (lingers_.size() >= opts_.max_connections) return;  // bounded like connections
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
    lingers_[fd] = std::move(linger);
    WriteLinger(fd);
  }

  void WriteLinger(int fd) {
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

  void EndLinger(int fd) {
    auto it = lingers_.find(fd);
    if (it == lingers_.end()) return;
    loop_->Remove(fd);
    if (it->second->timer != 0) loop_->CancelTimer(it->second->timer);
    lingers_.erase(it);  // closes the fd: the host peer sees EOF
  }

  void DropGuestData(Connection* conn) {
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

  // A PendingConnect may be the object whose callback is running: destroy it later.
  void DestroyPendingConnect(Connection* conn) {
    if (!conn->host_connect) return;
    if (destroying_) {
      conn->host_connect.reset();
      return;
    }
    std::shared_ptr<PendingConnect> p(std::move(conn->host_connect));
    loop_->Defer([p] {});
  }

  // Frees the connection now; with send_rst, an RST goes to the guest (bounded reply queue:
  // at most one per connection on top of the tx-driven ones).
  void FreeConnection(Connection* conn, bool send_rst) {
    LOG_DEBUG("vsock: close {}:{} <-> {}:{} ({}){}", conn->info().guest_cid,
              conn->info().guest_port, conn->info().host_cid, conn->info().host_port,
              ConnStateName(conn->state()), send_rst ? ", RST" : "");
    if (send_rst) {
      replies_.push_back(conn->MakeHeader(VIRTIO_VSOCK_OP_RST, 0, 0));
      ScheduleRx();
    }
    if (conn->guest_connect_id != 0) guest_connects_.erase(conn->guest_connect_id);
    if (conn->timer != 0) loop_->CancelTimer(conn->timer);
    CloseHost(conn);
    DestroyPendingConnect(conn);
    DropGuestData(conn);
    conns_.erase(conn->key());
    stats_.connections_active = conns_.size();
  }

  // linger: deliver what we buffered for host peers (LingerHost); only when the frontend
  // went away, never on a driver reset, which the guest can repeat at will.
  void ResetAll(bool notify_connects, bool linger = false) {
    std::vector<GuestConnectDone> dones;
    for (auto& [id, gc] : guest_connects_) {
      if (gc.done) dones.push_back(std::move(gc.done));
    }
    guest_connects_.clear();
    for (auto& [key, conn] : conns_) {
      if (conn->timer != 0) loop_->CancelTimer(conn->timer);
      if (linger && !destroying_) LingerHost(conn.get());
      CloseHost(conn.get());
      DestroyPendingConnect(conn.get());
    }
    conns_.clear();
    replies_.clear();
    rx_fifo_.clear();
    flush_keys_.clear();
    stats_.buffered_bytes = 0;
    stats_.connections_active = 0;
    if (notify_connects) {
      for (auto& done : dones) done(MakeError(ECONNRESET, "vsock device reset"));
    }
  }

  void FailGuestConnect(Connection* conn, int code, bool send_rst) {
    GuestConnectDone done;
    auto it = guest_connects_.find(conn->guest_connect_id);
    if (it != guest_connects_.end()) {
      done = std::move(it->second.done);
      guest_connects_.erase(it);
    }
    conn->guest_connect_id = 0;
    uint32_t port = conn->info().guest_port;
    FreeConnection(conn, send_rst);
    if (done) done(MakeError(code, "connect to guest port {}", port));
  }

  bool AttachHost(Connection* conn, HostStream stream) {
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

  void OnHostConnected(ConnKey key, Result<HostStream> result) {
    Connection* conn = Find(key);
    if (conn == nullptr || conn->state() != ConnState::kConnectingHost) return;
    DestroyPendingConnect(conn);
    if (!result.ok()) {
      LOG_DEBUG("vsock: guest {} -> host port {}: {}", conn->info().guest_port,
                conn->info().host_port, result.error().ToString());
      FreeConnection(conn, /*send_rst=*/true);
      return;
    }
    if (!AttachHost(conn, std::move(result).value())) {
      FreeConnection(conn, /*send_rst=*/true);
      return;
    }
    conn->set_state(ConnState::kEstablished);
    conn->pending_ctrl |= Connection::kCtrlResponse;
    MaybeQueueRx(conn);
  }

  void OnHostEvent(ConnKey key, uint32_t events) {
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
    if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
      conn->host_writable = true;
      if (!conn->buffer.empty() && conn->state() == ConnState::kEstablished) {
        if (!FlushToHost(conn)) return;
      }
    }
    MaybeQueueRx(conn);
  }

  void QueueShutdown(Connection* conn, uint32_t flags) {
    conn->shutdown_to_send |= flags;
    conn->pending_ctrl |= Connection::kCtrlShutdown;
  }

  // We sent (or queued) SHUTDOWN(RCV|SEND): the host side is gone; wait for the guest's RST.
  void EnterClosing(Connection* conn) {
    conn->set_state(ConnState::kClosing);
    CloseHost(conn);
    DropGuestData(conn);
    conn->pending_ctrl &= ~(Connection::kCtrlCreditUpdate | Connection::kCtrlCreditReply);
    StartCloseTimer(conn);
  }

  void StartCloseTimer(Connection* conn) {
    if (conn->timer != 0) return;
    ConnKey key = conn->key();
    std::weak_ptr<bool> alive = alive_;
    conn->timer = loop_->AddTimer(opts_.close_timeout, [this, alive, key] {
      if (alive.expired()) return;
      Connection* c = Find(key);
      if (c == nullptr) return;
      c->timer = 0;
      LOG_DEBUG("vsock: close timeout for guest port {}", c->info().guest_port);
      FreeConnection(c, /*send_rst=*/true);
    });
  }

  void OnHostEof(Connection* conn) {
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

  void MaybeQueueRx(Connection* conn) {
    if (conn->in_rx_queue || !conn->WantsRx()) return;
    conn->in_rx_queue = true;
    rx_fifo_.push_back(conn->key());
    ScheduleRx();
  }

  void MaybeCreditUpdate(Connection* conn) {
    if (conn->state() != ConnState::kEstablished) return;
    if ((conn->pending_ctrl & Connection::kCtrlCreditUpdate) || !conn->NeedsCreditUpdate()) return;
    conn->pending_ctrl |= Connection::kCtrlCreditUpdate;
    MaybeQueueRx(conn);
  }

  // After the guest's SHUTDOWN: half-close the host once its data is there; free the
  // connection when the guest closed both ways. Returns false if the connection was freed.
  bool MaybeFinishGuestSend(Connection* conn) {
    if (conn->state() == ConnState::kClosing && conn->guest_fully_shut()) {
      // We already shut down (the host went away) and waited for the guest's RST; its own
      // SHUTDOWN of both directions (it closed meanwhile) ends it now, as the kernel's host
      // side does: a Linux guest that closes waits for our RST (up to 8 s) before it frees
      // the socket.
      FreeConnection(conn, /*send_rst=*/true);
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
      FreeConnection(conn, /*send_rst=*/true);
      return false;
    }
    if (!conn->host_shut_wr && conn->host_fd.valid()) {
      ::shutdown(conn->host_fd.get(), SHUT_WR);
      conn->host_shut_wr = true;
    }
    return true;
  }

  // ---------------------------------------------------------------------------------------
  // Guest -> host (tx)
  // ---------------------------------------------------------------------------------------
  size_t ReplyCap() const {
    size_t cap = txq_ != nullptr ? txq_->size() : 128;
    return std::max<size_t>(cap, 1);
  }

  void ScheduleTx() {
    std::weak_ptr<bool> alive = alive_;
    loop_->Defer([this, alive] {
      if (!alive.expired()) ProcessTx();
    });
  }

  void ProcessTx() {
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
      q->Notify();
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

  void Drop(const char* why, const PacketHeader* hdr) {
    stats_.dropped_packets++;
    if (hdr != nullptr) {
      LOG_RATELIMITED(LogLevel::kWarn, "vsock cid {}: dropped tx packet ({}): {}", opts_.guest_cid,
                      why, DescribeHeader(*hdr));
    } else {
      LOG_RATELIMITED(LogLevel::kWarn, "vsock cid {}: dropped tx packet ({})", opts_.guest_cid,
                      why);
    }
  }

  // RST for a packet that has no connection (src/dst swapped, type echoed). Never for an RST.
  void ReplyRst(const PacketHeader& h) {
    if (h.op == VIRTIO_VSOCK_OP_RST) return;
    replies_.push_back(MakeRstReply(h));
  }

  // A protocol violation on a known connection: RST it.
  void Violation(Connection* conn, const PacketHeader& h, const char* why) {
    LOG_RATELIMITED(LogLevel::kWarn, "vsock cid {}: {} in state {}, resetting: {}", opts_.guest_cid,
                    why, ConnStateName(conn->state()), DescribeHeader(h));
    if (conn->state() == ConnState::kConnectingGuest) {
      FailGuestConnect(conn, ECONNRESET, /*send_rst=*/true);
    } else {
      FreeConnection(conn, /*send_rst=*/true);
    }
  }

  void HandleTxChain(const DescChain& chain) {
    stats_.tx_packets++;
    if (chain.writable_bytes > 0) return Drop("writable descriptors in a tx chain", nullptr);
    if (chain.readable_bytes < kHeaderSize) return Drop("shorter than a header", nullptr);
    uint8_t raw[kHeaderSize];
    CopyFromIov(chain.readable, 0, raw, kHeaderSize);  // copied once: no TOCTOU
    const PacketHeader h = DecodeHeader(raw);
    if (h.len > kMaxPacketPayload) return Drop("len above 64 KiB", &h);
    if (h.len > chain.readable_bytes - kHeaderSize) return Drop("len beyond the chain", &h);
    if (h.src_cid != opts_.guest_cid) return Drop("spoofed src_cid", &h);
    // The destination may be the host or another VM: the backend decides whether that peer
    // exists and may be reached (an unknown or forbidden CID fails the connect: RST). CIDs
    // nobody can be (0, 1, our own, VMADDR_CID_ANY, above 32 bits) are refused here.
    if (!IsRoutablePeer(h.dst_cid) || !TypeAllowed(h.type) || h.op == VIRTIO_VSOCK_OP_INVALID ||
        h.op > VIRTIO_VSOCK_OP_CREDIT_REQUEST) {
      LOG_RATELIMITED(LogLevel::kWarn, "vsock cid {}: refused tx packet: {}", opts_.guest_cid,
                      DescribeHeader(h));
      ReplyRst(h);
      return;
    }
    ConnKey key = Connection::MakeKey(h.src_port, h.dst_cid, h.dst_port);
    Connection* conn = Find(key);
    if (conn == nullptr) {
      if (h.op == VIRTIO_VSOCK_OP_REQUEST) return OpenFromGuest(h);
      LOG_DEBUG("vsock cid {}: packet for unknown connection: {}", opts_.guest_cid,
                DescribeHeader(h));
      ReplyRst(h);
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
        if (h.op == VIRTIO_VSOCK_OP_RST) return FreeConnection(conn, false);
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
          return FailGuestConnect(conn, ECONNREFUSED, /*send_rst=*/false);
        }
        return Violation(conn, h, "unexpected packet while connecting to the guest");
      case ConnState::kClosing:
        if (h.op == VIRTIO_VSOCK_OP_RST) return FreeConnection(conn, false);
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
        return FreeConnection(conn, false);
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
        conn->AddPeerShutdown(h.flags);
        if (conn->guest_sends_no_more()) DropPartialMessage(conn);
        if (!MaybeFinishGuestSend(conn)) return;
        break;
    }
    MaybeQueueRx(conn);  // fresh credit may unblock host -> guest data
  }

  void OpenFromGuest(const PacketHeader& h) {
    if (conns_.size() >= opts_.max_connections) {
      LOG_RATELIMITED(LogLevel::kWarn, "vsock cid {}: connection limit {} reached, refusing {}",
                      opts_.guest_cid, opts_.max_connections, DescribeHeader(h));
      ReplyRst(h);
      return;
    }
    ConnectionInfo info{opts_.guest_cid, h.src_port, h.dst_cid, h.dst_port, h.type};
    Connection* conn = AddConnection(info, ConnState::kConnectingHost);
    conn->UpdatePeerCredit(h);
    ConnKey key = conn->key();
    std::weak_ptr<bool> alive = alive_;
    conn->host_connect =
        backend_->ConnectToHost(info, [this, alive, key](Result<HostStream> result) {
          if (alive.expired()) return;
          OnHostConnected(key, std::move(result));
        });
  }

  void CompleteGuestConnect(Connection* conn) {
    if (conn->timer != 0) {
      loop_->CancelTimer(conn->timer);
      conn->timer = 0;
    }
    GuestConnectDone done;
    auto it = guest_connects_.find(conn->guest_connect_id);
    if (it != guest_connects_.end()) {
      done = std::move(it->second.done);
      guest_connects_.erase(it);
    }
    conn->guest_connect_id = 0;
    ConnKey key = conn->key();
    uint32_t host_port = conn->info().host_port;
    std::optional<HostStream> stream;
    if (done) stream = done(host_port);
    conn = Find(key);  // done() may have re-entered the device
    if (conn == nullptr || conn->state() != ConnState::kConnectingGuest) return;
    if (!stream || !AttachHost(conn, std::move(*stream))) {
      FreeConnection(conn, /*send_rst=*/true);
      return;
    }
    conn->set_state(ConnState::kEstablished);
    LOG_DEBUG("vsock: established host port {} -> guest port {}", host_port,
              conn->info().guest_port);
    MaybeQueueRx(conn);
  }

  // Returns false if the connection was freed.
  bool HandleRw(Connection* conn, const PacketHeader& h, const DescChain& chain) {
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
      FreeConnection(conn, /*send_rst=*/true);
      return false;
    }
    conn->OnReceivedFromGuest(h.len);
    stats_.tx_bytes += h.len;
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

  void FlushTxBatch() {
    for (const ConnKey& key : flush_keys_) {
      Connection* conn = Find(key);
      if (conn == nullptr || !conn->in_flush_list) continue;
      conn->in_flush_list = false;
      FlushToHost(conn);
    }
    flush_keys_.clear();
  }

  // One writev of (buffer, then this batch's iovecs); what the host did not take is copied
  // into the buffer. Returns false if the connection was freed (host write error).
  bool FlushToHost(Connection* conn) {
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
          LOG_DEBUG("vsock: host write for guest port {}: {}", conn->info().guest_port,
                    std::strerror(errno));
          FreeConnection(conn, /*send_rst=*/true);
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

  // Seqpacket: complete messages go to the host in sendmmsg batches, each message one record
  // (all or nothing on AF_UNIX SOCK_SEQPACKET). A message is sent from the connection's buffer
  // if it was copied there, else straight from guest memory (pending_iov: every fragment in
  // this tx batch). What is left when the host stops taking them is copied into the buffer
  // before the batch's chains go back. Returns false if the connection was freed.
  bool FlushMessagesToHost(Connection* conn) {
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
          FreeConnection(conn, /*send_rst=*/true);
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

  // Copies what is still in guest memory (pending_iov from `from`: unsent direct messages,
  // then the direct part of the message being assembled) into the buffer, in order, so the
  // chains can go back.
  void BufferDirectMessages(Connection* conn, size_t from) {
    for (size_t i = from; i < conn->pending_iov.size(); ++i) {
      const iovec& v = conn->pending_iov[i];
      conn->buffer.Append(v.iov_base, v.iov_len);
      stats_.buffered_bytes += v.iov_len;
    }
    conn->pending_iov.clear();
    for (Connection::GuestMessage& m : conn->messages) m.direct = false;
    conn->partial_direct = false;
  }

  // The guest will send no more: a message without its EOM never completes. Its bytes count
  // as consumed so credit stays consistent.
  void DropPartialMessage(Connection* conn) {
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

  ssize_t WriteHost(Connection* conn, const iovec* iov, size_t cnt) {
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

  // ---------------------------------------------------------------------------------------
  // Host -> guest (rx)
  // ---------------------------------------------------------------------------------------
  void ScheduleRx() {
    if (rx_scheduled_) return;
    rx_scheduled_ = true;
    std::weak_ptr<bool> alive = alive_;
    loop_->Defer([this, alive] {
      if (alive.expired()) return;
      rx_scheduled_ = false;
      RunRx();
    });
  }

  bool RxUsable() {
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

  void RunRx() {
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
    q->Notify();
    if (tx_blocked_ && replies_.size() < ReplyCap()) {
      tx_blocked_ = false;
      ProcessTx();
    }
  }

  // Pops the next rx chain a packet can go into: writable only, at least `min_writable`
  // bytes. An unusable chain is returned empty, unless `popped` chains are already popped
  // and not pushed: then it is un-popped and kEmpty returned (handled first next turn), so
  // those stay the most recent pops and Unpop stays exact. kBroken: the queue is unusable
  // (logged once); nothing popped may be touched.
  PopResult PopUsableRx(DescChain* chain, size_t min_writable, size_t popped = 0) {
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

  // One chain for a packet popped alone (control packets, a message's later fragments).
  bool PopRxChain(DescChain* chain, size_t min_writable = kHeaderSize) {
    return PopUsableRx(chain, min_writable) == PopResult::kOk;
  }

  // Pops rx_pool_[n] for a read into its data area (a header and at least one payload byte
  // fit) and appends iovecs for up to `room` bytes of it to rx_iov_, which stays within
  // `iov_limit` entries; rx_caps_[n] = the bytes they cover. kEmpty also when rx_iov_ is full.
  PopResult PopRxForRead(size_t n, size_t room, size_t iov_limit) {
    if (rx_iov_.size() >= iov_limit) return PopResult::kEmpty;
    DescChain& ch = rx_pool_[n];
    PopResult r = PopUsableRx(&ch, kHeaderSize + 1, n);
    if (r != PopResult::kOk) return r;
    size_t cap = std::min<size_t>({ch.writable_bytes - kHeaderSize, kMaxPacketPayload, room});
    rx_caps_[n] = SliceIov(ch.writable, kHeaderSize, cap, &rx_iov_, iov_limit - rx_iov_.size());
    return r;
  }

  // After a read of `got` bytes into rx_pool_[0, n) (rx_caps_ each): sends the filled chains
  // as RW packets, the last with `last_flags`, and un-pops the rest (the most recent pops).
  // Returns how many were sent.
  size_t SendReadChains(Connection* conn, size_t n, size_t got, uint32_t last_flags) {
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

  void SendRw(Connection* conn, const DescChain& ch, size_t len, uint32_t flags) {
    uint32_t n = static_cast<uint32_t>(len);
    WriteHeader(ch, conn->MakeHeader(VIRTIO_VSOCK_OP_RW, flags, n), n);
    conn->OnSentToGuest(n);
    stats_.rx_bytes += n;
  }

  void WriteHeader(const DescChain& chain, const PacketHeader& h, uint32_t payload) {
    uint8_t raw[kHeaderSize];
    EncodeHeader(h, raw);
    CopyToIov(chain.writable, 0, raw, kHeaderSize);
    rxq_->PushUsed(chain.head, static_cast<uint32_t>(kHeaderSize + payload));
    stats_.rx_packets++;
  }

  bool SendControl(Connection* conn, uint16_t op, uint32_t flags) {
    if (!PopRxChain(&rx_pool_[0])) return false;
    // The header is made only once a buffer is in hand: it records fwd_cnt as sent.
    WriteHeader(rx_pool_[0], conn->MakeHeader(op, flags, 0), 0);
    return true;
  }

  Served Serve(Connection* conn) {
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

  // Pops as many rx chains as credit and the turn allow, fills their data areas with readv (or
  // from the stream prefix), writes each header and returns the unused chains.
  // Unless the connection is streaming (below), the first readv goes into one rx buffer: a small
  // message (the interactive case) then costs one chain walk instead of kTurnChains walks that
  // would mostly be un-popped again (measured on the 64-byte round trip). Only if that buffer fills
  // up does FIONREAD tell how many more chains to pop for a second readv, so bulk data pays two
  // more syscalls per turn (up to kTurnBytes) and no chain is walked for nothing.
  Served SendData(Connection* conn) {
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
      FreeConnection(conn, /*send_rst=*/true);
      return Served::kFreed;
    }
    if (read_error != 0) conn->host_readable = false;
    conn->rx_streaming = got_total > 0 && got_total == cap_total;
    SendReadChains(conn, n, got_total, 0);
    // After the data it follows: the SHUTDOWN is sent once these headers are out.
    if (eof) OnHostEof(conn);
    return Served::kDone;
  }

  // Seqpacket host -> guest: sends the rest of out_msg, then reads host messages straight
  // into rx buffers, as credit, the ring and the turn allow. Each packet carries one message's
  // bytes; the one with its last byte gets EOM.
  Served SendMessages(Connection* conn) {
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

  static uint32_t MessageEndFlags(bool eor) {
    return VIRTIO_VSOCK_SEQ_EOM | (eor ? VIRTIO_VSOCK_SEQ_EOR : 0);
  }

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
                              Served* served) {
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
          FreeConnection(conn, /*send_rst=*/true);
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
        FreeConnection(conn, /*send_rst=*/true);
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

  EventLoop* loop_;
  HostBackend* backend_;
  DeviceOptions opts_;
  DeviceStats stats_;
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
  };
  std::unordered_map<int, std::unique_ptr<Linger>> lingers_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // for deferred callbacks

  std::unordered_map<ConnKey, std::unique_ptr<Connection>, ConnKeyHash> conns_;
  std::deque<ConnKey> rx_fifo_;       // connections with something for the guest
  std::deque<PacketHeader> replies_;  // RSTs waiting for rx buffers
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

Device::Device(EventLoop* loop, HostBackend* backend, DeviceOptions options)
    : impl_(std::make_unique<Impl>(loop, backend, options)) {}
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
const DeviceStats& Device::stats() const { return impl_->stats(); }

}  // namespace vsockd::vsock
