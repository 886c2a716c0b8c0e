#include "virtio/driver_queue.h"

#include <endian.h>

#include <atomic>
#include <cstring>

#include "base/log.h"

namespace vsockd::virtio {

namespace {

constexpr size_t kFlagsOff = 0;
constexpr size_t kIdxOff = 2;
constexpr size_t kRingOff = 4;
// The used ring is device-written and the rest driver-written: putting it on its own page
// (the legacy layout) keeps the two sides off each other's cache lines.
constexpr size_t kUsedAlign = 4096;

inline uint16_t LoadLe16(const uint8_t* p) {
  return le16toh(__atomic_load_n(reinterpret_cast<const uint16_t*>(p), __ATOMIC_RELAXED));
}
inline void StoreLe16(uint8_t* p, uint16_t v) {
  __atomic_store_n(reinterpret_cast<uint16_t*>(p), htole16(v), __ATOMIC_RELAXED);
}

size_t UsedOffset(uint32_t size) {
  size_t end_of_avail = DescTableBytes(size) + AvailRingBytes(size);
  return (end_of_avail + kUsedAlign - 1) / kUsedAlign * kUsedAlign;
}

void WriteDesc(vring_desc* d, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
  d->addr = htole64(addr);
  d->len = htole32(len);
  d->flags = htole16(flags);
  d->next = htole16(next);
}

}  // namespace

size_t DriverQueue::RingBytes(uint32_t size) { return UsedOffset(size) + UsedRingBytes(size); }

Status DriverQueue::Init(uint8_t* area, uint64_t area_gpa, uint32_t size, bool event_idx) {
  if (size == 0 || size > kMaxQueueSize || (size & (size - 1)) != 0) {
    return MakeError(EINVAL, "queue size {} is not a power of two in 1..{}", size, kMaxQueueSize);
  }
  if (area == nullptr || reinterpret_cast<uintptr_t>(area) % 16 != 0 || area_gpa % 16 != 0) {
    return MakeError(EINVAL, "ring area must be 16-byte aligned");
  }
  std::memset(area, 0, RingBytes(size));
  size_ = size;
  event_idx_ = event_idx;
  desc_ = reinterpret_cast<vring_desc*>(area);
  avail_ = area + DescTableBytes(size);
  used_ = area + UsedOffset(size);
  desc_gpa_ = area_gpa;
  avail_idx_ = published_idx_ = last_used_idx_ = 0;
  // Free list threaded through `next`; Add() takes runs of it, whose links become the chain's.
  for (uint32_t i = 0; i < size; ++i) {
    desc_[i].next = htole16(static_cast<uint16_t>(i + 1 < size ? i + 1 : 0));
  }
  free_head_ = 0;
  free_count_ = size;
  chain_len_.assign(size, 0);
  return OkStatus();
}

uint64_t DriverQueue::desc_user_addr() const { return reinterpret_cast<uint64_t>(desc_); }
uint64_t DriverQueue::avail_user_addr() const { return reinterpret_cast<uint64_t>(avail_); }
uint64_t DriverQueue::used_user_addr() const { return reinterpret_cast<uint64_t>(used_); }

uint16_t DriverQueue::FillChain(std::span<const Segment> out, std::span<const Segment> in) {
  const size_t total = out.size() + in.size();
  uint16_t head = free_head_;
  uint16_t cur = head;
  for (size_t i = 0; i < total; ++i) {
    const bool is_in = i >= out.size();
    const Segment& seg = is_in ? in[i - out.size()] : out[i];
    const bool last = i + 1 == total;
    // Keep the free-list link: it is exactly the next descriptor of this chain.
    uint16_t next = le16toh(desc_[cur].next) & (size_ - 1);
    WriteDesc(
        &desc_[cur], seg.gpa, seg.len,
        static_cast<uint16_t>((is_in ? VRING_DESC_F_WRITE : 0) | (last ? 0 : VRING_DESC_F_NEXT)),
        next);
    cur = next;
  }
  free_head_ = cur;
  free_count_ -= static_cast<uint32_t>(total);
  chain_len_[head] = static_cast<uint16_t>(total);
  return head;
}

Result<uint16_t> DriverQueue::Add(std::span<const Segment> out, std::span<const Segment> in) {
  const size_t total = out.size() + in.size();
  if (desc_ == nullptr) return MakeError(EINVAL, "driver queue not initialised");
  if (total == 0) return MakeError(EINVAL, "empty chain");
  if (total > free_count_) {
    return MakeError(ENOSPC, "chain of {} descriptors, {} free", total, free_count_);
  }
  uint16_t head = FillChain(out, in);
  StoreLe16(avail_ + kRingOff + 2u * (avail_idx_ & (size_ - 1)), head);
  ++avail_idx_;
  return head;
}

Result<uint16_t> DriverQueue::AddIndirect(uint64_t table_gpa, vring_desc* table_host,
                                          std::span<const Segment> out,
                                          std::span<const Segment> in) {
  const size_t total = out.size() + in.size();
  if (desc_ == nullptr) return MakeError(EINVAL, "driver queue not initialised");
  if (total == 0 || total > kMaxQueueSize) {
    return MakeError(EINVAL, "indirect chain of {} descriptors", total);
  }
  if (free_count_ == 0) return MakeError(ENOSPC, "no free descriptor");
  for (size_t i = 0; i < total; ++i) {
    const bool is_in = i >= out.size();
    const Segment& seg = is_in ? in[i - out.size()] : out[i];
    const bool last = i + 1 == total;
    WriteDesc(
        &table_host[i], seg.gpa, seg.len,
        static_cast<uint16_t>((is_in ? VRING_DESC_F_WRITE : 0) | (last ? 0 : VRING_DESC_F_NEXT)),
        static_cast<uint16_t>(last ? 0 : i + 1));
  }
  Segment table{table_gpa, static_cast<uint32_t>(total * sizeof(vring_desc))};
  uint16_t head = FillChain(std::span<const Segment>(&table, 1), {});
  desc_[head].flags = htole16(VRING_DESC_F_INDIRECT);
  StoreLe16(avail_ + kRingOff + 2u * (avail_idx_ & (size_ - 1)), head);
  ++avail_idx_;
  return head;
}

bool DriverQueue::Publish() {
  if (desc_ == nullptr || avail_idx_ == published_idx_) return false;
  // Ring entries and descriptors before the index (pairs with the device's acquire).
  std::atomic_thread_fence(std::memory_order_release);
  StoreLe16(avail_ + kIdxOff, avail_idx_);
  // avail.idx store -> avail_event/flags load.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  uint16_t old_idx = published_idx_;
  published_idx_ = avail_idx_;
  if (event_idx_) {
    uint16_t avail_event = LoadLe16(used_ + kRingOff + 8u * size_);
    return VringNeedEvent(avail_event, avail_idx_, old_idx);
  }
  return !(LoadLe16(used_ + kFlagsOff) & VRING_USED_F_NO_NOTIFY);
}

void DriverQueue::FreeChain(uint16_t head) {
  uint16_t n = chain_len_[head];
  uint16_t last = head;
  for (uint16_t i = 1; i < n; ++i) last = le16toh(desc_[last].next) & (size_ - 1);
  desc_[last].next = htole16(free_head_);
  free_head_ = head;
  free_count_ += n;
  chain_len_[head] = 0;
}

std::optional<UsedElem> DriverQueue::PopUsed() {
  if (desc_ == nullptr) return std::nullopt;
  for (;;) {
    uint16_t used_idx = LoadLe16(used_ + kIdxOff);
    if (used_idx == last_used_idx_) return std::nullopt;
    // The element and the buffers it describes after the index (pairs with the device's
    // release).
    std::atomic_thread_fence(std::memory_order_acquire);
    vring_used_elem e;
    std::memcpy(&e, used_ + kRingOff + 8u * (last_used_idx_ & (size_ - 1)), sizeof e);
    ++last_used_idx_;
    uint32_t id = le32toh(e.id);
    if (id >= size_) {
      LOG_RATELIMITED(LogLevel::kWarn, "virtqueue driver: device returned head {} >= size {}", id,
                      size_);
      continue;
    }
    if (chain_len_[id] != 0) FreeChain(static_cast<uint16_t>(id));
    return UsedElem{static_cast<uint16_t>(id), le32toh(e.len)};
  }
}

void DriverQueue::DisableInterrupts() {
  if (desc_ == nullptr) return;
  if (event_idx_) {
    // "Tell me when used.idx passes last_used - 1": already passed, so no interrupt until
    // EnableInterrupts() moves it (the flag is ignored under EVENT_IDX).
    StoreLe16(avail_ + kRingOff + 2u * size_, static_cast<uint16_t>(last_used_idx_ - 1));
  } else {
    StoreLe16(avail_ + kFlagsOff, LoadLe16(avail_ + kFlagsOff) | VRING_AVAIL_F_NO_INTERRUPT);
  }
}

bool DriverQueue::EnableInterrupts() {
  if (desc_ == nullptr) return false;
  if (event_idx_) {
    StoreLe16(avail_ + kRingOff + 2u * size_, last_used_idx_);
  } else {
    StoreLe16(avail_ + kFlagsOff,
              static_cast<uint16_t>(LoadLe16(avail_ + kFlagsOff) & ~VRING_AVAIL_F_NO_INTERRUPT));
  }
  // Enable -> re-read used.idx: store->load, full fence, or an interrupt can be lost.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return LoadLe16(used_ + kIdxOff) != last_used_idx_;
}

void DriverQueue::PushAvailRaw(uint16_t head) {
  StoreLe16(avail_ + kRingOff + 2u * (avail_idx_ & (size_ - 1)), head);
  ++avail_idx_;
}

void DriverQueue::SetAvailIdxRaw(uint16_t idx) {
  std::atomic_thread_fence(std::memory_order_release);
  StoreLe16(avail_ + kIdxOff, idx);
  avail_idx_ = published_idx_ = idx;
}

}  // namespace vsockd::virtio
