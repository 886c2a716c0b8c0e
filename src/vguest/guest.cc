#include "vguest/guest.h"

#include <endian.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "base/log.h"
#include "vhost_user/frontend.h"
#include "vhost_user/protocol.h"
#include "virtio/virtio_ring.h"

namespace vsockd::vguest {

using namespace vsockd::vsock;  // NOLINT(google-build-using-namespace): op names verbatim
using vhost_user::Frontend;
using vhost_user::VHOST_USER_F_PROTOCOL_FEATURES;
using vhost_user::VHOST_USER_PROTOCOL_F_CONFIG;
using vhost_user::VHOST_USER_PROTOCOL_F_MQ;
using vhost_user::VHOST_USER_PROTOCOL_F_REPLY_ACK;
using vhost_user::vhost_vring_addr;
using virtio::Segment;

namespace {

constexpr uint32_t kRxQueue = 0;
constexpr uint32_t kTxQueue = 1;
// Guest-physical base of our one region: not 0, so a device that confuses guest-physical
// addresses with offsets or frontend-virtual addresses fails loudly.
constexpr uint64_t kGpaBase = 0x40000000;
constexpr size_t kHdrSlot = 64;
constexpr size_t kPayloadSlot = kMaxPacketPayload;
// Payload slots: one per two tx descriptors, capped (each is 64 KiB of guest memory).
constexpr uint32_t kMaxPayloadSlots = 128;

uint64_t Bit(int n) { return uint64_t{1} << n; }

size_t AlignUp(size_t v, size_t a) { return (v + a - 1) / a * a; }

}  // namespace

Guest::Guest(EventLoop* loop, const GuestOptions& options) : loop_(loop), options_(options) {}

Result<std::unique_ptr<Guest>> Guest::Attach(EventLoop* loop, const GuestOptions& options) {
  const uint32_t qs = options.queue_size;
  if (qs < 2 || qs > virtio::kMaxQueueSize || (qs & (qs - 1)) != 0) {
    return MakeError(EINVAL, "queue size {} is not a power of two in 2..{}", qs,
                     virtio::kMaxQueueSize);
  }
  if (options.rx_buf_size == 0 || options.rx_buf_size > kMaxPacketPayload) {
    return MakeError(EINVAL, "rx buffer size {} is not in 1..{}", options.rx_buf_size,
                     kMaxPacketPayload);
  }
  if (options.buf_alloc == 0) return MakeError(EINVAL, "buf_alloc must not be 0");
  std::unique_ptr<Guest> guest(new Guest(loop, options));
  Status st = guest->Setup();
  if (!st.ok()) return st.take_error();
  return guest;
}

Guest::~Guest() {
  *alive_ = false;
  if (registered_) {
    loop_->Remove(rx_.call->get());
    loop_->Remove(tx_.call->get());
    loop_->Remove(rx_.err->get());
    loop_->Remove(tx_.err->get());
    if (!gone_) loop_->Remove(frontend_->fd());
  }
  // Streams go silently (their timers are cancelled by their destructors).
  connections_.clear();
  tx_waiters_.clear();
  streams_.clear();
  frontend_.reset();  // closes the socket: the backend sees the frontend go away
  if (mem_ != nullptr) ::munmap(mem_, mem_size_);
}

void* Guest::Bump(size_t len, size_t align, uint64_t* gpa) {
  size_t off = AlignUp(bump_, align);
  if (off > mem_size_ || len > mem_size_ - off) return nullptr;
  bump_ = off + len;
  if (gpa != nullptr) *gpa = kGpaBase + off;
  return mem_ + off;
}

Status Guest::SetupMemory() {
  mem_size_ = AlignUp(options_.memory_bytes, 4096);
  int fd = ::memfd_create("vguest-ram", MFD_CLOEXEC);
  if (fd < 0) return ErrnoError("memfd_create");
  memfd_.Reset(fd);
  if (::ftruncate(fd, static_cast<off_t>(mem_size_)) < 0) {
    return ErrnoError("ftruncate guest memory to {} bytes", mem_size_);
  }
  void* p = ::mmap(nullptr, mem_size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return ErrnoError("mmap guest memory ({} bytes)", mem_size_);
  mem_ = static_cast<uint8_t*>(p);

  const uint32_t qs = options_.queue_size;
  const size_t ring_bytes = virtio::DriverQueue::RingBytes(qs);
  for (Ring* r : {&rx_, &tx_}) {
    for (int i = 0; i < 2; ++i) {
      r->area[i] = static_cast<uint8_t*>(Bump(ring_bytes, 4096, &r->area_gpa[i]));
    }
  }
  // rx buffers: enough for a full ring of one-descriptor buffers.
  rx_slots_.resize(qs);
  const size_t data_len = AlignUp(kHeaderSize + options_.rx_buf_size, 64);
  for (uint32_t i = 0; i < qs; ++i) {
    RxSlot& s = rx_slots_[i];
    s.hdr = static_cast<uint8_t*>(Bump(kHdrSlot, 64, &s.hdr_gpa));
    s.data = static_cast<uint8_t*>(Bump(data_len, 64, &s.data_gpa));
    s.table =
        static_cast<virtio::vring_desc*>(Bump(2 * sizeof(virtio::vring_desc), 16, &s.table_gpa));
  }
  const uint32_t payload_slots = std::min(qs / 2, kMaxPayloadSlots);
  tx_hdr_area_ = static_cast<uint8_t*>(Bump(kHdrSlot * qs, 64, &tx_hdr_gpa_));
  tx_tables_ = static_cast<virtio::vring_desc*>(
      Bump(2 * sizeof(virtio::vring_desc) * qs, 16, &tx_tables_gpa_));
  tx_payload_area_ =
      static_cast<uint8_t*>(Bump(kPayloadSlot * payload_slots, 4096, &tx_payload_gpa_));
  if (tx_payload_area_ == nullptr || rx_slots_.back().table == nullptr || tx_tables_ == nullptr) {
    return MakeError(ENOMEM, "guest memory of {} bytes is too small for queue size {}", mem_size_,
                     qs);
  }
  return OkStatus();
}

void Guest::InitQueues(bool fresh) {
  const uint32_t qs = options_.queue_size;
  ++epoch_;
  for (Ring* r : {&rx_, &tx_}) {
    if (fresh) r->current ^= 1;
    // Init cannot fail: the size and the alignment were checked.
    (void)r->queue.Init(r->area[r->current], r->area_gpa[r->current], qs, event_idx_);
    r->base = 0;
  }
  rx_free_.clear();
  for (uint32_t i = qs; i > 0; --i) rx_free_.push_back(i - 1);
  rx_head_slot_.assign(qs, -1);
  rx_posted_ = 0;
  rx_max_posted_ = 0;
  rx_stalled_ = false;
  tx_hdr_free_.clear();
  for (uint32_t i = qs; i > 0; --i) tx_hdr_free_.push_back(i - 1);
  tx_payload_free_.clear();
  for (uint32_t i = std::min(qs / 2, kMaxPayloadSlots); i > 0; --i) {
    tx_payload_free_.push_back(i - 1);
  }
  tx_chains_.assign(qs, TxChain{});
  pending_control_.clear();
}

Status Guest::Setup() {
  // Event fds first: nothing below can fail half-way with fds registered.
  for (Ring* r : {&rx_, &tx_}) {
    auto kick = EventFd::Create();
    auto call = EventFd::Create();
    auto err = EventFd::Create();
    if (!kick.ok()) return kick.take_error();
    if (!call.ok()) return call.take_error();
    if (!err.ok()) return err.take_error();
    r->kick.emplace(std::move(*kick));
    r->call.emplace(std::move(*call));
    r->err.emplace(std::move(*err));
  }
  VSOCKD_RETURN_IF_ERROR(SetupMemory());

  auto fe = Frontend::Connect(options_.socket_path, options_.attach_timeout);
  if (!fe.ok()) {
    return MakeError(fe.error().code, "attach to vhost-user backend {}: {}", options_.socket_path,
                     fe.error().context);
  }
  frontend_ = std::make_unique<Frontend>(std::move(*fe));
  auto wrap = [this](const char* what, const Error& e) {
    return MakeError(e.code == 0 ? EPROTO : e.code, "vhost-user {} with {}: {}", what,
                     options_.socket_path, e.context);
  };

  // Realize (QEMU vhost_dev_init order).
  auto features = frontend_->GetFeatures();
  if (!features.ok()) return wrap("GET_FEATURES", features.error());
  device_features_ = *features;
  if (!(device_features_ & Bit(virtio::VIRTIO_F_VERSION_1))) {
    return MakeError(EPROTONOSUPPORT,
                     "backend {} does not offer VIRTIO_F_VERSION_1 (features {:#x}); "
                     "vhost-user-vsock is modern-only",
                     options_.socket_path, device_features_);
  }
  if (!(device_features_ & Bit(VHOST_USER_F_PROTOCOL_FEATURES))) {
    return MakeError(EPROTONOSUPPORT,
                     "backend {} does not offer VHOST_USER_F_PROTOCOL_FEATURES, so no "
                     "GET_CONFIG for the CID",
                     options_.socket_path);
  }
  auto proto = frontend_->GetProtocolFeatures();
  if (!proto.ok()) return wrap("GET_PROTOCOL_FEATURES", proto.error());
  const uint64_t wanted = Bit(VHOST_USER_PROTOCOL_F_MQ) | Bit(VHOST_USER_PROTOCOL_F_REPLY_ACK) |
                          Bit(VHOST_USER_PROTOCOL_F_CONFIG);
  protocol_features_ = *proto & wanted;
  if (!(protocol_features_ & Bit(VHOST_USER_PROTOCOL_F_CONFIG))) {
    return MakeError(EPROTONOSUPPORT,
                     "backend {} does not offer VHOST_USER_PROTOCOL_F_CONFIG (QEMU: "
                     "expecting VHOST_USER_PROTOCOL_F_CONFIG)",
                     options_.socket_path);
  }
  Status st = frontend_->SetProtocolFeatures(protocol_features_);
  if (!st.ok()) return wrap("SET_PROTOCOL_FEATURES", st.error());
  if (protocol_features_ & Bit(VHOST_USER_PROTOCOL_F_MQ)) {
    auto qn = frontend_->GetQueueNum();
    if (!qn.ok()) return wrap("GET_QUEUE_NUM", qn.error());
    LOG_DEBUG("backend reports {} queues", *qn);
  }
  st = frontend_->SetOwner();
  if (!st.ok()) return wrap("SET_OWNER", st.error());
  features = frontend_->GetFeatures();
  if (!features.ok()) return wrap("GET_FEATURES", features.error());
  for (uint32_t i : {kRxQueue, kTxQueue}) {
    Ring& r = i == kRxQueue ? rx_ : tx_;
    st = frontend_->SetVringCall(i, r.call->get());
    if (!st.ok()) return wrap("SET_VRING_CALL", st.error());
    st = frontend_->SetVringErr(i, r.err->get());
    if (!st.ok()) return wrap("SET_VRING_ERR", st.error());
  }
  auto config = frontend_->GetConfig(0, 8);
  if (!config.ok()) return wrap("GET_CONFIG", config.error());
  uint64_t cid_le = 0;
  std::memcpy(&cid_le, config->data(), 8);
  cid_ = le64toh(cid_le);
  if (!IsValidGuestCid(cid_)) {
    return MakeError(EPROTO, "backend {} gave guest CID {}, which is reserved or too large",
                     options_.socket_path, cid_);
  }

  // Driver probe: what the guest acks.
  acked_features_ = Bit(virtio::VIRTIO_F_VERSION_1) | Bit(VHOST_USER_F_PROTOCOL_FEATURES);
  if (options_.event_idx && (device_features_ & Bit(virtio::VIRTIO_RING_F_EVENT_IDX))) {
    acked_features_ |= Bit(virtio::VIRTIO_RING_F_EVENT_IDX);
  }
  event_idx_ = (acked_features_ & Bit(virtio::VIRTIO_RING_F_EVENT_IDX)) != 0;
  // 6.1 acks VIRTIO_VSOCK_F_SEQPACKET when the device offers it.
  if (options_.seqpacket && (device_features_ & Bit(VIRTIO_VSOCK_F_SEQPACKET))) {
    acked_features_ |= Bit(VIRTIO_VSOCK_F_SEQPACKET);
  }
  if (options_.indirect_desc && (device_features_ & Bit(virtio::VIRTIO_RING_F_INDIRECT_DESC))) {
    acked_features_ |= Bit(virtio::VIRTIO_RING_F_INDIRECT_DESC);
  }
  indirect_ = (acked_features_ & Bit(virtio::VIRTIO_RING_F_INDIRECT_DESC)) != 0;
  // rx buffers are posted before DRIVER_OK, as virtio_vsock_probe does.
  rx_.current = 1;
  tx_.current = 1;
  InitQueues(/*fresh=*/true);
  FillRx();

  VSOCKD_RETURN_IF_ERROR(StartRings(/*reset_indices=*/true));

  auto reg = [&](int fd, std::function<void()> fn) {
    return loop_->Add(fd, EPOLLIN, [fn = std::move(fn)](uint32_t) { fn(); });
  };
  // Call fds are edge-triggered: every device signal is a new edge, so no interrupt is lost
  // and the counter need not be read back (one syscall less per interrupt, on the round-trip
  // path). An interrupt is an edge, as a real MSI is.
  for (uint32_t i : {kRxQueue, kTxQueue}) {
    Ring& r = i == kRxQueue ? rx_ : tx_;
    VSOCKD_RETURN_IF_ERROR(loop_->Add(r.call->get(), EPOLLIN | EPOLLET, [this, i](uint32_t) {
      ++stats_.interrupts;
      OnCall(static_cast<int>(i));
    }));
  }
  VSOCKD_RETURN_IF_ERROR(reg(rx_.err->get(), [this] { OnErr(kRxQueue); }));
  VSOCKD_RETURN_IF_ERROR(reg(tx_.err->get(), [this] { OnErr(kTxQueue); }));
  VSOCKD_RETURN_IF_ERROR(loop_->Add(frontend_->fd(), EPOLLIN | EPOLLRDHUP,
                                    [this](uint32_t ev) { OnSocketEvent(ev); }));
  registered_ = true;
  std::random_device rd;
  next_port_ = 1024 + rd() % (0x7fffffffu - 1024);
  LOG_INFO("attached to {}: cid {}, features {:#x} (acked {:#x}), protocol features {:#x}",
           options_.socket_path, cid_, device_features_, acked_features_, protocol_features_);
  // Anything the device produced before we registered (it may already have answered).
  Defer([this] {
    OnCall(kRxQueue);
    OnCall(kTxQueue);
  });
  return OkStatus();
}

Status Guest::StartRings(bool reset_indices) {
  auto wrap = [this](const char* what, const Error& e) {
    return MakeError(e.code == 0 ? EPROTO : e.code, "vhost-user {} with {}: {}", what,
                     options_.socket_path, e.context);
  };
  // vhost_dev_start: features, memory table, then each ring, then enable.
  Status st = frontend_->SetFeatures(acked_features_);
  if (!st.ok()) return wrap("SET_FEATURES", st.error());
  virtio::MemoryRegion region;
  region.guest_phys_addr = kGpaBase;
  region.memory_size = mem_size_;
  region.userspace_addr = reinterpret_cast<uint64_t>(mem_);
  region.mmap_offset = 0;
  int fd = memfd_.get();
  st = frontend_->SetMemTable(std::span<const virtio::MemoryRegion>(&region, 1),
                              std::span<const int>(&fd, 1));
  if (!st.ok()) return wrap("SET_MEM_TABLE", st.error());
  for (uint32_t i : {kRxQueue, kTxQueue}) {
    Ring& r = i == kRxQueue ? rx_ : tx_;
    st = frontend_->SetVringNum(i, options_.queue_size);
    if (!st.ok()) return wrap("SET_VRING_NUM", st.error());
    st = frontend_->SetVringBase(i, reset_indices ? 0 : r.base);
    if (!st.ok()) return wrap("SET_VRING_BASE", st.error());
    vhost_vring_addr addr{};
    addr.index = i;
    addr.flags = 0;
    addr.desc_user_addr = r.queue.desc_user_addr();
    addr.used_user_addr = r.queue.used_user_addr();
    addr.avail_user_addr = r.queue.avail_user_addr();
    addr.log_guest_addr = kGpaBase + (addr.used_user_addr - reinterpret_cast<uint64_t>(mem_));
    st = frontend_->SetVringAddr(addr);
    if (!st.ok()) return wrap("SET_VRING_ADDR", st.error());
    st = frontend_->SetVringKick(i, r.kick->get());
    if (!st.ok()) return wrap("SET_VRING_KICK", st.error());
    st = frontend_->SetVringCall(i, r.call->get());
    if (!st.ok()) return wrap("SET_VRING_CALL", st.error());
  }
  for (uint32_t i : {kRxQueue, kTxQueue}) {
    st = frontend_->SetVringEnable(i, true);
    if (!st.ok()) return wrap("SET_VRING_ENABLE", st.error());
  }
  running_ = true;
  // Kick both: the device may have missed work published while it was stopped.
  KickIfNeeded(rx_, true);
  KickIfNeeded(tx_, true);
  return OkStatus();
}

Status Guest::StopRings() {
  if (gone_) return MakeError(ENOTCONN, "vhost-user backend {} is gone", options_.socket_path);
  running_ = false;
  for (uint32_t i : {kRxQueue, kTxQueue}) {
    Status st = frontend_->SetVringEnable(i, false);
    if (!st.ok()) return MakeError(st.error().code, "SET_VRING_ENABLE 0: {}", st.error().context);
  }
  for (uint32_t i : {kRxQueue, kTxQueue}) {
    auto base = frontend_->GetVringBase(i);
    if (!base.ok()) {
      return MakeError(base.error().code, "GET_VRING_BASE {}: {}", i, base.error().context);
    }
    (i == kRxQueue ? rx_ : tx_).base = *base;
  }
  return OkStatus();
}

Status Guest::Pause() {
  if (!running_) return MakeError(EINVAL, "guest is not running");
  return StopRings();
}

Status Guest::Resume() {
  if (gone_) return MakeError(ENOTCONN, "vhost-user backend {} is gone", options_.socket_path);
  if (running_) return MakeError(EINVAL, "guest is already running");
  VSOCKD_RETURN_IF_ERROR(StartRings(/*reset_indices=*/false));
  OnCall(kRxQueue);
  OnCall(kTxQueue);
  return OkStatus();
}

Status Guest::ResetDriver() {
  if (running_) VSOCKD_RETURN_IF_ERROR(StopRings());
  if (gone_) return MakeError(ENOTCONN, "vhost-user backend {} is gone", options_.socket_path);
  ResetAllStreams(ECONNRESET, "guest driver reset");
  InitQueues(/*fresh=*/true);
  FillRx();
  VSOCKD_RETURN_IF_ERROR(StartRings(/*reset_indices=*/true));
  return OkStatus();
}

void Guest::ResetAllStreams(int code, const std::string& why) {
  std::vector<Stream*> all;
  all.reserve(connections_.size());
  for (auto& [key, s] : connections_) all.push_back(s);
  for (Stream* s : all) {
    // Each may release others through callbacks; check it is still there.
    if (streams_.count(s) != 0) s->ResetLocally(MakeError(code, "{}", why));
  }
  connections_.clear();
}

void Guest::Defer(std::function<void()> fn) {
  std::weak_ptr<bool> alive = alive_;
  loop_->Defer([alive, fn = std::move(fn)] {
    auto a = alive.lock();
    if (a && *a) fn();
  });
}

void Guest::KickIfNeeded(Ring& ring, bool need) {
  if (!need || !running_) return;
  ring.kick->Signal();
  ++stats_.kicks;
}

// ---------------------------------------------------------------------------------------
// rx

void Guest::FillRx() {
  const bool combined = options_.rx_combined_desc;
  const uint32_t data_cap = static_cast<uint32_t>(kHeaderSize + options_.rx_buf_size);
  while (!rx_free_.empty()) {
    size_t need = combined || indirect_ ? 1 : 2;
    if (rx_.queue.free_descriptors() < need) break;
    uint32_t slot = rx_free_.back();
    const RxSlot& s = rx_slots_[slot];
    // No placeholder error: formatting one per re-posted buffer showed up in profiles.
    Segment combined_in[1] = {{s.data_gpa, data_cap}};
    Segment split_in[2] = {{s.hdr_gpa, static_cast<uint32_t>(kHeaderSize)},
                           {s.data_gpa, options_.rx_buf_size}};
    // The slot's table is free: the slot is not posted.
    Result<uint16_t> head = combined    ? rx_.queue.Add({}, combined_in)
                            : indirect_ ? rx_.queue.AddIndirect(s.table_gpa, s.table, {}, split_in)
                                        : rx_.queue.Add({}, split_in);
    if (!head.ok()) break;
    rx_free_.pop_back();
    rx_head_slot_[*head] = static_cast<int32_t>(slot);
    ++rx_posted_;
  }
  rx_max_posted_ = std::max(rx_max_posted_, rx_posted_);
  KickIfNeeded(rx_, rx_.queue.Publish());
}

void Guest::OnCall(int index) {
  if (!running_ || gone_) return;
  if (index == static_cast<int>(kTxQueue)) {
    ReapTx();
    FlushPendingControl();
    NotifyTxWaiters();
    UpdateTxInterrupts();
    // Replies drained: rx may go on.
    if (rx_stalled_) ProcessRx();
    CheckDrained();
    return;
  }
  ProcessRx();
}

void Guest::Drain(std::chrono::milliseconds timeout, std::function<void()> done) {
  if (drain_timer_ != 0) loop_->CancelTimer(drain_timer_);
  drain_timer_ = 0;
  if (drain_done_) {
    // A second Drain replaces the first: both callbacks run when the backlog is gone.
    done = [first = std::move(drain_done_), second = std::move(done)] {
      first();
      second();
    };
  }
  drain_done_ = std::move(done);
  if (running_ && !gone_) {
    FlushPendingControl();
    FlushTx();
    std::weak_ptr<bool> alive = alive_;
    drain_timer_ = loop_->AddTimer(timeout, [this, alive] {
      if (alive.expired()) return;
      drain_timer_ = 0;
      LOG_WARN("vguest: {} packets not consumed by the device after the drain timeout",
               tx_backlog());
      auto cb = std::move(drain_done_);
      drain_done_ = nullptr;
      UpdateTxInterrupts();
      if (cb) cb();
    });
    UpdateTxInterrupts();
  }
  Defer([this] { CheckDrained(); });
}

void Guest::CheckDrained() {
  if (!drain_done_) return;
  if (running_ && !gone_) {
    ReapTx();
    if (tx_backlog() != 0 || flush_scheduled_) return;
  }
  if (drain_timer_ != 0) loop_->CancelTimer(drain_timer_);
  drain_timer_ = 0;
  auto cb = std::move(drain_done_);
  drain_done_ = nullptr;
  UpdateTxInterrupts();
  cb();
}

void Guest::ProcessRx() {
  // virtio_transport_rx_work: disable callbacks, drain, re-enable and re-check.
  rx_stalled_ = false;
  do {
    rx_.queue.DisableInterrupts();
    while (true) {
      // 6.1 stops reading rx while its reply backlog is as large as the rx ring
      // (virtio_transport_more_replies), until the device drains tx.
      if (pending_control_.size() >= options_.queue_size) {
        rx_stalled_ = true;
        UpdateTxInterrupts();
        break;
      }
      auto e = rx_.queue.PopUsed();
      if (!e) break;
      HandleRxElem(*e);
      if (!running_) break;  // a callback paused or reset the guest
    }
    if (rx_stalled_ || !running_) break;
  } while (rx_.queue.EnableInterrupts());
  // virtio_transport_rx_work: refill once fewer than half of the most ever posted remain.
  if (running_ && (rx_posted_ < rx_max_posted_ / 2 || rx_posted_ == 0)) FillRx();
}

void Guest::HandleRxElem(const virtio::UsedElem& e) {
  if (e.head >= rx_head_slot_.size() || rx_head_slot_[e.head] < 0) {
    ++stats_.rx_bad_head;
    LOG_RATELIMITED(LogLevel::kWarn, "vguest: device returned rx head {} we did not post", e.head);
    return;
  }
  uint32_t slot = static_cast<uint32_t>(rx_head_slot_[e.head]);
  rx_head_slot_[e.head] = -1;
  --rx_posted_;
  const RxSlot& s = rx_slots_[slot];
  // virtio_vsock_rx_done checks of 6.1: the used length must hold a header and fit.
  if (e.len < kHeaderSize || e.len > kHeaderSize + options_.rx_buf_size) {
    ++stats_.rx_bad_len;
    LOG_RATELIMITED(LogLevel::kWarn, "vguest: rx used len {} outside [{}, {}], dropped", e.len,
                    kHeaderSize, kHeaderSize + options_.rx_buf_size);
    rx_free_.push_back(slot);
    return;
  }
  const uint8_t* hdr_bytes = options_.rx_combined_desc ? s.data : s.hdr;
  const uint8_t* payload = options_.rx_combined_desc ? s.data + kHeaderSize : s.data;
  PacketHeader hdr = DecodeHeader(hdr_bytes);
  // 6.1 takes the payload length from the used length; count devices that disagree.
  uint32_t len = e.len - static_cast<uint32_t>(kHeaderSize);
  if (len != hdr.len) {
    ++stats_.rx_len_mismatch;
    LOG_RATELIMITED(LogLevel::kWarn, "vguest: rx used len {} but header len {} ({})", e.len,
                    hdr.len, DescribeHeader(hdr));
  }
  ++stats_.rx_packets;
  if (hdr.op == VIRTIO_VSOCK_OP_RW) stats_.rx_bytes += len;
  std::span<const uint8_t> data(payload, len);
  const uint64_t epoch = epoch_;
  if (on_rx_packet) on_rx_packet(hdr, data);
  Dispatch(hdr, data);
  // A callback that reset the driver already made every slot free again.
  if (epoch == epoch_) rx_free_.push_back(slot);
}

void Guest::Dispatch(const PacketHeader& hdr, std::span<const uint8_t> payload) {
  if (hdr.op == VIRTIO_VSOCK_OP_RST) ++stats_.rst_received;
  if (hdr.dst_cid != cid_) {
    ++stats_.rx_bad_dst_cid;
    LOG_RATELIMITED(LogLevel::kWarn, "vguest: packet for cid {}, we are {}: {}", hdr.dst_cid, cid_,
                    DescribeHeader(hdr));
  }
  if (hdr.type != VIRTIO_VSOCK_TYPE_STREAM &&
      (hdr.type != VIRTIO_VSOCK_TYPE_SEQPACKET || !seqpacket_negotiated())) {
    ++stats_.bad_type_rx;
    ReplyRst(hdr);
    return;
  }
  auto it = connections_.find(ConnKey{hdr.dst_port, hdr.src_cid, hdr.src_port});
  if (it != connections_.end()) {
    if (hdr.type != it->second->type()) {
      // Linux: a packet whose type is not the socket's gets RST.
      ++stats_.bad_type_rx;
      ReplyRst(hdr);
      return;
    }
    it->second->OnPacket(hdr, payload);
    return;
  }
  auto lit = listeners_.find(hdr.dst_port);
  if (lit != listeners_.end() && hdr.op == VIRTIO_VSOCK_OP_REQUEST &&
      listener_types_[hdr.dst_port] == hdr.type) {
    StreamConfig cfg;
    cfg.type = hdr.type;
    cfg.local_port = hdr.dst_port;
    cfg.peer_cid = hdr.src_cid;
    cfg.peer_port = hdr.src_port;
    cfg.buf_alloc = options_.buf_alloc;
    cfg.connect_timeout = options_.connect_timeout;
    cfg.close_timeout = options_.close_timeout;
    StreamHost* host = this;
    auto owned = std::make_unique<Stream>(host, cfg);
    Stream* s = owned.get();
    streams_.emplace(s, std::move(owned));
    connections_[ConnKey{cfg.local_port, cfg.peer_cid, cfg.peer_port}] = s;
    s->Accept(hdr);
    auto on_accept = lit->second;  // a copy: the callback may Unlisten
    if (on_accept) on_accept(s);
    return;
  }
  // No socket (or a listener and not a REQUEST): RST, never in answer to an RST.
  ReplyRst(hdr);
}

void Guest::ReplyRst(const PacketHeader& to) {
  if (to.op == VIRTIO_VSOCK_OP_RST) return;
  SendControl(vsock::MakeRstReply(to));
}

// ---------------------------------------------------------------------------------------
// tx

size_t Guest::TxRoom() {
  if (!running_ || gone_ || !pending_control_.empty()) return 0;
  const size_t need = indirect_ ? 1 : 2;
  if (tx_payload_free_.empty() || tx_hdr_free_.empty() || tx_.queue.free_descriptors() < need) {
    // Reclaim what the device returned meanwhile: reading the used ring costs no syscall.
    ReapTx();
    if (tx_payload_free_.empty() || tx_hdr_free_.empty() || tx_.queue.free_descriptors() < need) {
      return 0;
    }
  }
  return kPayloadSlot;
}

void Guest::SendData(const PacketHeader& hdr, std::span<const uint8_t> payload) {
  uint32_t hslot = tx_hdr_free_.back();
  uint32_t pslot = tx_payload_free_.back();
  uint8_t* hdr_host = tx_hdr_area_ + size_t{hslot} * kHdrSlot;
  uint8_t* pay_host = tx_payload_area_ + size_t{pslot} * kPayloadSlot;
  EncodeHeader(hdr, hdr_host);
  std::memcpy(pay_host, payload.data(), payload.size());
  Segment out[2] = {
      {tx_hdr_gpa_ + uint64_t{hslot} * kHdrSlot, static_cast<uint32_t>(kHeaderSize)},
      {tx_payload_gpa_ + uint64_t{pslot} * kPayloadSlot, static_cast<uint32_t>(payload.size())}};
  // A header slot is in at most one chain, so its table is free too.
  auto head = indirect_ ? tx_.queue.AddIndirect(
                              tx_tables_gpa_ + 2 * sizeof(virtio::vring_desc) * uint64_t{hslot},
                              tx_tables_ + 2 * size_t{hslot}, out, {})
                        : tx_.queue.Add(out, {});
  if (!head.ok()) {  // cannot happen after TxRoom(); keep the slots
    LOG_ERROR("vguest: tx add failed: {}", head.error().ToString());
    return;
  }
  tx_hdr_free_.pop_back();
  tx_payload_free_.pop_back();
  tx_chains_[*head] = TxChain{static_cast<int32_t>(hslot), static_cast<int32_t>(pslot)};
  ++stats_.tx_packets;
  stats_.tx_bytes += payload.size();
  ScheduleFlush();
}

bool Guest::PutControl(const PacketHeader& hdr) {
  if (!running_ || gone_ || tx_hdr_free_.empty() || tx_.queue.free_descriptors() < 1) {
    ReapTx();
    if (!running_ || gone_ || tx_hdr_free_.empty() || tx_.queue.free_descriptors() < 1) {
      return false;
    }
  }
  uint32_t hslot = tx_hdr_free_.back();
  EncodeHeader(hdr, tx_hdr_area_ + size_t{hslot} * kHdrSlot);
  Segment out[1] = {{tx_hdr_gpa_ + uint64_t{hslot} * kHdrSlot, static_cast<uint32_t>(kHeaderSize)}};
  auto head = tx_.queue.Add(out, {});
  if (!head.ok()) return false;
  tx_hdr_free_.pop_back();
  tx_chains_[*head] = TxChain{static_cast<int32_t>(hslot), -1};
  ++stats_.tx_packets;
  if (hdr.op == VIRTIO_VSOCK_OP_RST) ++stats_.rst_sent;
  ScheduleFlush();
  return true;
}

void Guest::SendControl(const PacketHeader& hdr) {
  if (gone_) return;
  if (pending_control_.empty() && PutControl(hdr)) return;
  // Bounded: a device that never drains tx must not make us grow without limit.
  if (pending_control_.size() >= 16u * options_.queue_size) {
    ++stats_.control_dropped;
    return;
  }
  pending_control_.push_back(hdr);
  UpdateTxInterrupts();
}

void Guest::FlushPendingControl() {
  while (!pending_control_.empty() && PutControl(pending_control_.front())) {
    pending_control_.pop_front();
  }
}

void Guest::WaitForTxRoom(Stream* stream) {
  if (std::find(tx_waiters_.begin(), tx_waiters_.end(), stream) == tx_waiters_.end()) {
    tx_waiters_.push_back(stream);
  }
  UpdateTxInterrupts();
}

void Guest::NotifyTxWaiters() {
  if (tx_waiters_.empty() || TxRoom() == 0) return;
  std::vector<Stream*> waiters;
  waiters.swap(tx_waiters_);
  for (Stream* s : waiters) {
    // Released streams were removed from tx_waiters_; a callback may release later ones.
    if (streams_.count(s) != 0) s->OnTxRoom();
  }
}

void Guest::ReapTx() {
  while (auto e = tx_.queue.PopUsed()) {
    if (e->head >= tx_chains_.size() || tx_chains_[e->head].hdr_slot < 0) {
      if (raw_tx_) {
        raw_tx_used_.push_back(*e);
      } else {
        ++stats_.tx_bad_head;
      }
      continue;
    }
    TxChain& c = tx_chains_[e->head];
    if (e->len != 0) {
      ++stats_.tx_bad_used_len;
      LOG_RATELIMITED(LogLevel::kWarn, "vguest: tx used len {} (must be 0)", e->len);
    }
    tx_hdr_free_.push_back(static_cast<uint32_t>(c.hdr_slot));
    if (c.payload_slot >= 0) tx_payload_free_.push_back(static_cast<uint32_t>(c.payload_slot));
    c = TxChain{};
  }
}

void Guest::UpdateTxInterrupts() {
  if (!running_) return;
  // We only need tx interrupts while someone waits for tx room, replies are backed up, or
  // a raw test looks at tx used elements; otherwise tx is reaped lazily when room runs out,
  // which spares the device a call per batch.
  bool want = !tx_waiters_.empty() || !pending_control_.empty() || rx_stalled_ || raw_tx_ ||
              drain_done_ != nullptr;
  if (!want) {
    tx_.queue.DisableInterrupts();
    return;
  }
  if (tx_.queue.EnableInterrupts()) {
    Defer([this] { OnCall(kTxQueue); });
  }
}

void Guest::ScheduleFlush() {
  if (flush_scheduled_) return;
  flush_scheduled_ = true;
  Defer([this] { FlushTx(); });
}

void Guest::FlushTx() {
  flush_scheduled_ = false;
  if (!running_) return;
  KickIfNeeded(tx_, tx_.queue.Publish());
}

// ---------------------------------------------------------------------------------------
// Events

void Guest::OnErr(int index) {
  Ring& r = index == static_cast<int>(kRxQueue) ? rx_ : tx_;
  if (r.err->Drain()) {
    ++stats_.vring_errors;
    LOG_RATELIMITED(LogLevel::kWarn, "vguest: backend signalled an error on vring {}", index);
  }
}

void Guest::OnSocketEvent(uint32_t events) {
  uint8_t byte;
  ssize_t n = ::recv(frontend_->fd(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n > 0) {
    // The backend never speaks first on this channel: read and drop what it sent.
    auto msg = vhost_user::ReadMessage(frontend_->fd());
    if (msg.ok()) {
      LOG_WARN("vguest: unexpected message {} from the backend",
               vhost_user::RequestName(msg->request));
      return;
    }
    BackendGone(msg.error().ToString());
    return;
  }
  if (n < 0 && (errno == EAGAIN || errno == EINTR) && !(events & (EPOLLHUP | EPOLLERR))) return;
  BackendGone(n == 0 ? "the backend closed the connection" : "socket error");
}

void Guest::BackendGone(const std::string& why) {
  if (gone_) return;
  LOG_WARN("vguest: vhost-user backend {} went away: {}", options_.socket_path, why);
  gone_ = true;
  running_ = false;
  loop_->Remove(frontend_->fd());
  pending_control_.clear();
  ResetAllStreams(ECONNRESET, "vhost-user backend went away");
  if (drain_done_) Defer([this] { CheckDrained(); });
}

// ---------------------------------------------------------------------------------------
// Connections

uint32_t Guest::AllocEphemeralPort() {
  // Linux: a random start above the reserved ports, then increasing, skipping used ones.
  for (uint32_t tries = 0; tries < 1u << 20; ++tries) {
    uint32_t port = next_port_++;
    if (next_port_ == 0xffffffffu || next_port_ < 1024) next_port_ = 1024;
    if (listeners_.count(port) != 0) continue;
    auto it = connections_.lower_bound(ConnKey{port, 0, 0});
    if (it != connections_.end() && it->first.local_port == port) continue;
    return port;
  }
  return 0;
}

Stream* Guest::Connect(uint32_t port, std::function<void(Stream*, Status)> on_done,
                       uint64_t dst_cid, uint16_t type) {
  StreamConfig cfg;
  cfg.type = type;
  cfg.local_port = AllocEphemeralPort();
  cfg.peer_cid = dst_cid;
  cfg.peer_port = port;
  cfg.buf_alloc = options_.buf_alloc;
  cfg.connect_timeout = options_.connect_timeout;
  cfg.close_timeout = options_.close_timeout;
  StreamHost* host = this;
  auto owned = std::make_unique<Stream>(host, cfg);
  Stream* s = owned.get();
  streams_.emplace(s, std::move(owned));
  const bool type_ok = type == VIRTIO_VSOCK_TYPE_STREAM ||
                       (type == VIRTIO_VSOCK_TYPE_SEQPACKET && seqpacket_negotiated());
  if (gone_ || cfg.local_port == 0 || !type_ok) {
    // Report asynchronously, as a connect that fails at once would (Linux: ESOCKTNOSUPPORT
    // for a seqpacket socket without the feature).
    int code = gone_ ? ENOTCONN : !type_ok ? ESOCKTNOSUPPORT : EADDRNOTAVAIL;
    Defer([s, code, on_done = std::move(on_done), this] {
      if (streams_.count(s) == 0 || s->state() != Stream::State::kIdle) return;
      on_done(s, MakeError(code, "connect to {}:{}", s->peer_cid(), s->peer_port()));
    });
    return s;
  }
  connections_[ConnKey{cfg.local_port, cfg.peer_cid, cfg.peer_port}] = s;
  s->StartConnect(std::move(on_done));
  return s;
}

Status Guest::Listen(uint32_t port, std::function<void(Stream*)> on_accept, uint16_t type) {
  if (listeners_.count(port) != 0) return MakeError(EADDRINUSE, "guest port {}", port);
  if (type != VIRTIO_VSOCK_TYPE_STREAM &&
      (type != VIRTIO_VSOCK_TYPE_SEQPACKET || !seqpacket_negotiated())) {
    return MakeError(ESOCKTNOSUPPORT, "guest port {}: socket type {} not negotiated", port, type);
  }
  listeners_[port] = std::move(on_accept);
  listener_types_[port] = type;
  return OkStatus();
}

void Guest::Unlisten(uint32_t port) {
  listeners_.erase(port);
  listener_types_.erase(port);
}

// StreamHost

uint64_t Guest::AddTimer(std::chrono::milliseconds delay, std::function<void()> callback) {
  return loop_->AddTimer(delay, std::move(callback));
}

void Guest::CancelTimer(uint64_t id) { loop_->CancelTimer(id); }

void Guest::ConnectionEnded(Stream* stream) {
  auto it =
      connections_.find(ConnKey{stream->local_port(), stream->peer_cid(), stream->peer_port()});
  if (it != connections_.end() && it->second == stream) connections_.erase(it);
  tx_waiters_.erase(std::remove(tx_waiters_.begin(), tx_waiters_.end(), stream), tx_waiters_.end());
}

void Guest::Release(Stream* stream) {
  ConnectionEnded(stream);
  Defer([this, stream] { streams_.erase(stream); });
}

void Guest::CountDeviceBug(DeviceBug bug) {
  switch (bug) {
    case DeviceBug::kCreditViolation:
      ++stats_.credit_violations;
      break;
    case DeviceBug::kOverrunDrop:
      ++stats_.overrun_drops;
      break;
    case DeviceBug::kUnexpectedOp:
      ++stats_.unexpected_ops;
      break;
  }
}

Guest::Stats Guest::stats() const {
  Stats s = stats_;
  s.streams_active = connections_.size();
  s.rx_buffers_posted = rx_posted_;
  return s;
}

// ---------------------------------------------------------------------------------------
// Raw access

Guest::Buffer Guest::AllocRaw(size_t len) {
  uint64_t gpa = 0;
  auto* p = static_cast<uint8_t*>(Bump(len, 64, &gpa));
  if (p == nullptr) return Buffer{};
  return Buffer{p, gpa, len};
}

virtio::DriverQueue& Guest::raw_tx_queue() {
  if (!raw_tx_) {
    raw_tx_ = true;
    UpdateTxInterrupts();
  }
  return tx_.queue;
}

void Guest::KickTx() {
  raw_tx_ = true;
  tx_.queue.Publish();
  UpdateTxInterrupts();
  if (running_) {
    tx_.kick->Signal();
    ++stats_.kicks;
  }
}

std::vector<virtio::UsedElem> Guest::TakeRawTxUsed() {
  ReapTx();
  std::vector<virtio::UsedElem> out;
  out.swap(raw_tx_used_);
  return out;
}

void Guest::SendRawPacket(const PacketHeader& hdr, std::span<const uint8_t> payload) {
  raw_tx_ = true;
  if (payload.size() <= kPayloadSlot && !tx_hdr_free_.empty() && !tx_payload_free_.empty() &&
      tx_.queue.free_descriptors() >= 2) {
    // The ordinary slots (freed when the device returns the chain), header as given.
    if (payload.empty()) {
      if (PutControl(hdr)) KickTx();
      return;
    }
    SendData(hdr, payload);
    KickTx();
    return;
  }
  // Beyond the pool: memory of its own (never freed; raw tests send few such packets).
  Buffer hb = AllocRaw(kHeaderSize);
  Buffer pb;
  if (!payload.empty()) pb = AllocRaw(payload.size());
  if (hb.host == nullptr || (!payload.empty() && pb.host == nullptr)) {
    LOG_ERROR("vguest: out of raw guest memory for a {}-byte packet", payload.size());
    return;
  }
  EncodeHeader(hdr, hb.host);
  if (pb.host != nullptr) std::memcpy(pb.host, payload.data(), payload.size());
  Segment out[2] = {{hb.gpa, static_cast<uint32_t>(kHeaderSize)},
                    {pb.gpa, static_cast<uint32_t>(payload.size())}};
  auto head = tx_.queue.Add(std::span<const Segment>(out, payload.empty() ? 1 : 2), {});
  if (!head.ok()) {
    LOG_ERROR("vguest: raw packet: {}", head.error().ToString());
    return;
  }
  ++stats_.tx_packets;
  KickTx();
}

}  // namespace vsockd::vguest
