#include "vsock/testing/fake_guest.h"

#include <sys/mman.h>

#include <cstring>
#include <utility>

namespace vsockd::vsock::testing {
namespace {

constexpr size_t kRxDataOff = 128;  // data area of an rx slot; header at 0 (split) or 84
constexpr size_t kTxTableOff = 64;  // indirect table of a tx slot
constexpr size_t kTxDataOff = 128;
constexpr size_t kTxDataMax = kMaxPacketPayload + 1024;

size_t RoundUp(size_t v, size_t a) { return (v + a - 1) / a * a; }

// Fake guests come and go by the thousand (the fuzz target makes one per input), and mapping a
// fresh arena each time, faulting its pages in and unmapping it (a TLB flush on every CPU)
// took about a third of a fuzz run. Each thread keeps the last arena it released for its next
// guest of the same size. The rings are reset on reuse; slots are always written (by the guest
// for tx, by the device for rx) before they are read within the lengths written.
class ArenaCache {
 public:
  ~ArenaCache() { Drop(); }
  void* Take(size_t size) {
    if (base_ == nullptr || size_ != size) return nullptr;
    return std::exchange(base_, nullptr);
  }
  void Give(void* base, size_t size) {
    Drop();
    base_ = base;
    size_ = size;
  }

 private:
  void Drop() {
    if (base_ != nullptr) ::munmap(base_, size_);
    base_ = nullptr;
  }
  void* base_ = nullptr;
  size_t size_ = 0;
};

thread_local ArenaCache arena_cache;

}  // namespace

Result<std::unique_ptr<FakeGuest>> FakeGuest::Create(virtio::VirtioDevice* device,
                                                     FakeGuestOptions options) {
  std::unique_ptr<FakeGuest> g(new FakeGuest(device, options));
  VSOCKD_RETURN_IF_ERROR(g->Init());
  return g;
}

FakeGuest::~FakeGuest() {
  if (base_ != nullptr) arena_cache.Give(base_, arena_size_);
}

Status FakeGuest::Init() {
  const uint32_t qs = opts_.queue_size;
  const size_t ring = RoundUp(virtio::DriverQueue::RingBytes(qs), 4096);
  rx_slot_size_ = RoundUp(kRxDataOff + opts_.rx_buf_size, 64);
  tx_slot_size_ = RoundUp(kTxDataOff + kTxDataMax, 64);
  arena_size_ = 2 * ring + qs * rx_slot_size_ + qs * tx_slot_size_;
  void* p = arena_cache.Take(arena_size_);
  if (p == nullptr) {
    p = ::mmap(nullptr, arena_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return ErrnoError("mmap fake guest arena");
  }
  base_ = static_cast<uint8_t*>(p);

  virtio::MemoryRegion region{base_gpa_, arena_size_, reinterpret_cast<uint64_t>(base_), 0};
  uint8_t* bases[1] = {base_};
  auto mem = virtio::GuestMemory::FromMapped(std::span<const virtio::MemoryRegion>(&region, 1),
                                             std::span<uint8_t* const>(bases, 1));
  if (!mem.ok()) return mem.take_error();
  memory_ = std::move(mem).value();

  rx_ring_ = base_;
  tx_ring_ = base_ + ring;
  uint8_t* slots = base_ + 2 * ring;
  for (uint32_t i = 0; i < qs; ++i) {
    uint8_t* s = slots + i * rx_slot_size_;
    rx_slots_.push_back(Slot{s, Gpa(s)});
  }
  slots += qs * rx_slot_size_;
  for (uint32_t i = 0; i < qs; ++i) {
    uint8_t* s = slots + i * tx_slot_size_;
    tx_slots_.push_back(Slot{s, Gpa(s)});
  }
  auto rc = EventFd::Create();
  if (!rc.ok()) return rc.take_error();
  rx_call_.emplace(std::move(rc).value());
  auto tc = EventFd::Create();
  if (!tc.ok()) return tc.take_error();
  tx_call_.emplace(std::move(tc).value());
  return ResetRings();
}

Status FakeGuest::ResetRings() {
  const uint32_t qs = opts_.queue_size;
  VSOCKD_RETURN_IF_ERROR(rx_drv_.Init(rx_ring_, Gpa(rx_ring_), qs, opts_.event_idx));
  VSOCKD_RETURN_IF_ERROR(tx_drv_.Init(tx_ring_, Gpa(tx_ring_), qs, opts_.event_idx));
  rx_free_.clear();
  tx_free_.clear();
  for (int i = static_cast<int>(qs) - 1; i >= 0; --i) {
    rx_free_.push_back(i);
    tx_free_.push_back(i);
  }
  rx_head_slot_.assign(qs, -1);
  tx_head_slot_.assign(qs, -1);
  rx_posted_ = 0;
  tx_outstanding_ = 0;
  rx_used_total_ = 0;
  return ConfigureDeviceQueues();
}

Status FakeGuest::ConfigureDeviceQueues() {
  auto config = [&](virtio::DriverQueue& d) {
    virtio::SplitQueue::Config c;
    c.size = opts_.queue_size;
    c.desc_addr = d.desc_user_addr();
    c.avail_addr = d.avail_user_addr();
    c.used_addr = d.used_user_addr();
    c.event_idx = opts_.event_idx;
    c.indirect = true;
    return c;
  };
  rx_dev_.Reset();
  tx_dev_.Reset();
  VSOCKD_RETURN_IF_ERROR(rx_dev_.Configure(memory_, config(rx_drv_), 0));
  VSOCKD_RETURN_IF_ERROR(tx_dev_.Configure(memory_, config(tx_drv_), 0));
  rx_dev_.SetCallFd(rx_call_->get());
  tx_dev_.SetCallFd(tx_call_->get());
  return OkStatus();
}

void FakeGuest::Start(bool driver_reset) {
  device_->QueueStarted(0, &rx_dev_, driver_reset);
  device_->QueueStarted(1, &tx_dev_, driver_reset);
}

void FakeGuest::Stop() {
  device_->QueueStopped(0);
  device_->QueueStopped(1);
}

bool FakeGuest::PostOneRx() {
  if (rx_free_.empty()) return false;
  int slot = rx_free_.back();
  const Slot& s = rx_slots_[slot];
  Result<uint16_t> head = MakeError(ENOSPC, "");
  virtio::Segment hdr{s.gpa, static_cast<uint32_t>(kHeaderSize)};
  virtio::Segment data{s.gpa + kRxDataOff, opts_.rx_buf_size};
  switch (opts_.rx_layout) {
    case RxLayout::kSplit: {
      virtio::Segment in[2] = {hdr, data};
      head = rx_drv_.Add({}, in);
      break;
    }
    case RxLayout::kCombined: {
      virtio::Segment in[1] = {{s.gpa + kRxDataOff - kHeaderSize,
                                static_cast<uint32_t>(kHeaderSize) + opts_.rx_buf_size}};
      head = rx_drv_.Add({}, in);
      break;
    }
    case RxLayout::kIndirect: {
      virtio::Segment in[2] = {hdr, data};
      // The table sits between the header and the data areas (offset 64, 32 bytes).
      head = rx_drv_.AddIndirect(s.gpa + 64, reinterpret_cast<virtio::vring_desc*>(s.host + 64), {},
                                 in);
      break;
    }
  }
  if (!head.ok()) return false;
  rx_free_.pop_back();
  rx_head_slot_[*head] = slot;
  ++rx_posted_;
  return true;
}

size_t FakeGuest::PostRx(size_t count) {
  size_t n = 0;
  while (n < count && PostOneRx()) ++n;
  if (rx_drv_.Publish()) device_->QueueKicked(0);
  return n;
}

size_t FakeGuest::CollectRx() {
  size_t n = 0;
  size_t repost = 0;
  while (auto used = rx_drv_.PopUsed()) {
    ++rx_used_total_;
    int slot = rx_head_slot_[used->head];
    if (slot < 0) {
      ++bad_rx_used_len_;
      continue;
    }
    rx_head_slot_[used->head] = -1;
    --rx_posted_;
    ++n;
    const Slot& s = rx_slots_[slot];
    const uint8_t* hdr_area =
        opts_.rx_layout == RxLayout::kCombined ? s.host + kRxDataOff - kHeaderSize : s.host;
    if (used->len < kHeaderSize || used->len > kHeaderSize + opts_.rx_buf_size) {
      ++bad_rx_used_len_;
    } else {
      RxPacket pkt;
      pkt.hdr = DecodeHeader(hdr_area);
      pkt.used_len = used->len;
      if (pkt.hdr.len != used->len - kHeaderSize) ++bad_rx_used_len_;
      pkt.payload.assign(s.host + kRxDataOff, s.host + kRxDataOff + (used->len - kHeaderSize));
      rx_packets_.push_back(std::move(pkt));
    }
    rx_free_.push_back(slot);
    ++repost;
  }
  if (opts_.auto_refill && repost > 0) PostRx(repost);
  return n;
}

std::optional<RxPacket> FakeGuest::PopRx() {
  if (rx_packets_.empty()) CollectRx();
  if (rx_packets_.empty()) return std::nullopt;
  RxPacket p = std::move(rx_packets_.front());
  rx_packets_.pop_front();
  return p;
}

PacketHeader FakeGuest::Header(uint16_t op, uint32_t src_port, uint32_t dst_port, uint32_t len,
                               uint32_t buf_alloc, uint32_t fwd_cnt) const {
  PacketHeader h;
  h.src_cid = opts_.cid;
  h.dst_cid = VMADDR_CID_HOST;
  h.src_port = src_port;
  h.dst_port = dst_port;
  h.len = len;
  h.type = VIRTIO_VSOCK_TYPE_STREAM;
  h.op = op;
  h.buf_alloc = buf_alloc;
  h.fwd_cnt = fwd_cnt;
  return h;
}

Status FakeGuest::Send(const PacketHeader& hdr, std::span<const uint8_t> payload, bool kick) {
  if (payload.size() > kTxDataMax) return MakeError(EINVAL, "payload too large");
  ReapTx();
  if (tx_free_.empty()) return MakeError(ENOSPC, "no free tx slot");
  int slot = tx_free_.back();
  const Slot& s = tx_slots_[slot];
  EncodeHeader(hdr, s.host);
  if (!payload.empty()) std::memcpy(s.host + kTxDataOff, payload.data(), payload.size());
  virtio::Segment out[2] = {{s.gpa, static_cast<uint32_t>(kHeaderSize)},
                            {s.gpa + kTxDataOff, static_cast<uint32_t>(payload.size())}};
  size_t nseg = payload.empty() ? 1 : 2;
  Result<uint16_t> head =
      opts_.tx_indirect && nseg == 2
          ? tx_drv_.AddIndirect(s.gpa + kTxTableOff,
                                reinterpret_cast<virtio::vring_desc*>(s.host + kTxTableOff),
                                std::span<const virtio::Segment>(out, nseg), {})
          : tx_drv_.Add(std::span<const virtio::Segment>(out, nseg), {});
  if (!head.ok()) return head.take_error();
  tx_free_.pop_back();
  tx_head_slot_[*head] = slot;
  ++tx_outstanding_;
  if (kick) KickTx();
  return OkStatus();
}

Status FakeGuest::SendChain(const std::vector<std::vector<uint8_t>>& readable,
                            const std::vector<uint32_t>& writable, bool kick) {
  ReapTx();
  if (tx_free_.empty()) return MakeError(ENOSPC, "no free tx slot");
  int slot = tx_free_.back();
  const Slot& s = tx_slots_[slot];
  std::vector<virtio::Segment> out, in;
  size_t off = kTxDataOff;
  for (const auto& part : readable) {
    if (off + part.size() > tx_slot_size_) return MakeError(EINVAL, "chain too large");
    std::memcpy(s.host + off, part.data(), part.size());
    out.push_back({s.gpa + off, static_cast<uint32_t>(part.size())});
    off = RoundUp(off + part.size() + 1, 16);
  }
  for (uint32_t len : writable) {
    if (off + len > tx_slot_size_) return MakeError(EINVAL, "chain too large");
    in.push_back({s.gpa + off, len});
    off = RoundUp(off + len + 1, 16);
  }
  auto head = tx_drv_.Add(out, in);
  if (!head.ok()) return head.take_error();
  tx_free_.pop_back();
  tx_head_slot_[*head] = slot;
  ++tx_outstanding_;
  if (kick) KickTx();
  return OkStatus();
}

void FakeGuest::KickTx(bool force) {
  bool want = tx_drv_.Publish();
  if (want || force) device_->QueueKicked(1);
}

size_t FakeGuest::ReapTx() {
  size_t n = 0;
  while (auto used = tx_drv_.PopUsed()) {
    ++n;
    ++tx_returned_;
    if (used->len != 0) ++tx_used_nonzero_;
    int slot = tx_head_slot_[used->head];
    if (slot >= 0) {
      tx_head_slot_[used->head] = -1;
      tx_free_.push_back(slot);
      --tx_outstanding_;
    }
  }
  return n;
}

}  // namespace vsockd::vsock::testing
