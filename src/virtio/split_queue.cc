#include "virtio/split_queue.h"

#include <endian.h>

#include <atomic>
#include <cstring>

#include "base/event_fd.h"
#include "base/log.h"

namespace vsockd::virtio {

namespace {

// Ring field offsets (split ring layout, virtio spec 2.7).
constexpr size_t kFlagsOff = 0;
constexpr size_t kIdxOff = 2;
constexpr size_t kRingOff = 4;

// 16-bit ring fields shared with the driver: single-copy atomic accesses (the fields are
// 2-aligned, checked at Configure), ordering comes from the explicit fences.
inline uint16_t LoadLe16(const uint8_t* p) {
  return le16toh(__atomic_load_n(reinterpret_cast<const uint16_t*>(p), __ATOMIC_RELAXED));
}
inline void StoreLe16(uint8_t* p, uint16_t v) {
  __atomic_store_n(reinterpret_cast<uint16_t*>(p), htole16(v), __ATOMIC_RELAXED);
}

// A descriptor copied out of guest memory once, so the driver cannot change it between our
// checks and our use (TOCTOU).
struct Desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
inline Desc LoadDesc(const uint8_t* table, uint32_t index) {
  vring_desc raw;
  std::memcpy(&raw, table + 16ull * index, sizeof raw);
  return Desc{le64toh(raw.addr), le32toh(raw.len), le16toh(raw.flags), le16toh(raw.next)};
}

size_t AvailBytes(const SplitQueue::Config& c) {
  return AvailRingBytes(c.size) - (c.event_idx ? 0 : 2);
}
size_t UsedBytes(const SplitQueue::Config& c) {
  return UsedRingBytes(c.size) - (c.event_idx ? 0 : 2);
}

}  // namespace

Status SplitQueue::TranslateRings(const GuestMemory& memory) {
  uint8_t* desc = memory.UvaToHost(config_.desc_addr, DescTableBytes(config_.size));
  uint8_t* avail = memory.UvaToHost(config_.avail_addr, AvailBytes(config_));
  uint8_t* used = memory.UvaToHost(config_.used_addr, UsedBytes(config_));
  if (desc == nullptr) {
    return MakeError(EFAULT, "descriptor table {:#x} (+{}) is not in guest memory",
                     config_.desc_addr, DescTableBytes(config_.size));
  }
  if (avail == nullptr) {
    return MakeError(EFAULT, "avail ring {:#x} (+{}) is not in guest memory", config_.avail_addr,
                     AvailBytes(config_));
  }
  if (used == nullptr) {
    return MakeError(EFAULT, "used ring {:#x} (+{}) is not in guest memory", config_.used_addr,
                     UsedBytes(config_));
  }
  // The idx/event fields are accessed atomically, which needs natural alignment in *our*
  // address space too (a region whose mmap_offset is odd would break it).
  if (reinterpret_cast<uintptr_t>(avail) % 2 != 0 || reinterpret_cast<uintptr_t>(used) % 4 != 0) {
    return MakeError(EINVAL, "ring addresses are misaligned in the mapped memory");
  }
  desc_ = reinterpret_cast<vring_desc*>(desc);
  avail_ = avail;
  used_ = used;
  return OkStatus();
}

Status SplitQueue::Configure(std::shared_ptr<const GuestMemory> memory, const Config& config,
                             uint16_t last_avail_idx) {
  // SET_VRING_CALL may come before the ring is configured: keep the call fd.
  int call_fd = call_fd_;
  Reset();
  call_fd_ = call_fd;
  if (memory == nullptr) return MakeError(EINVAL, "queue configured without a memory table");
  if (config.size == 0 || config.size > kMaxQueueSize || (config.size & (config.size - 1)) != 0) {
    return MakeError(EINVAL, "queue size {} is not a power of two in 1..{}", config.size,
                     kMaxQueueSize);
  }
  if (config.desc_addr % 16 != 0 || config.avail_addr % 2 != 0 || config.used_addr % 4 != 0) {
    return MakeError(EINVAL, "misaligned ring addresses desc={:#x} avail={:#x} used={:#x}",
                     config.desc_addr, config.avail_addr, config.used_addr);
  }
  config_ = config;
  Status st = TranslateRings(*memory);
  if (!st.ok()) {
    config_ = Config{};
    return st;
  }
  memory_ = std::move(memory);
  last_avail_idx_ = last_avail_idx;
  shadow_avail_idx_ = last_avail_idx;
  used_idx_ = LoadLe16(used_ + kIdxOff);
  signalled_used_ = used_idx_;
  pushed_since_notify_ = false;
  configured_ = true;
  // Start with kicks enabled: a previous device instance may have left avail_event behind
  // or NO_NOTIFY set, and the driver would then never kick us. (avail.idx is not judged
  // here: the first AvailableCount()/Pop() does that.)
  WriteKicksEnabled();
  return OkStatus();
}

void SplitQueue::ResumeAtUsedIndex() {
  if (!configured_) return;
  last_avail_idx_ = used_idx_;
  shadow_avail_idx_ = used_idx_;
  WriteKicksEnabled();  // avail_event follows the index we now wait at
}

Status SplitQueue::Remap(std::shared_ptr<const GuestMemory> memory) {
  if (memory == nullptr) return MakeError(EINVAL, "remap without a memory table");
  if (!configured_) {
    memory_ = std::move(memory);
    return OkStatus();
  }
  Status st = TranslateRings(*memory);
  if (!st.ok()) {
    // The rings are not in the new table: stop using them (the old table may be unmapped as
    // soon as we drop it), but keep the indices for GET_VRING_BASE.
    configured_ = false;
    desc_ = nullptr;
    avail_ = used_ = nullptr;
    memory_ = std::move(memory);
    return st;
  }
  memory_ = std::move(memory);
  return OkStatus();
}

void SplitQueue::Reset() {
  memory_.reset();
  config_ = Config{};
  configured_ = false;
  broken_ = false;
  desc_ = nullptr;
  avail_ = used_ = nullptr;
  last_avail_idx_ = shadow_avail_idx_ = 0;
  used_idx_ = signalled_used_ = 0;
  pushed_since_notify_ = false;
  call_fd_ = -1;
  notifications_sent_ = 0;
}

bool SplitQueue::RefreshAvailIdx() {
  uint16_t idx = LoadLe16(avail_ + kIdxOff);
  // Ring entries and descriptors are read after avail.idx (pairs with the driver's release).
  std::atomic_thread_fence(std::memory_order_acquire);
  if (static_cast<uint16_t>(idx - last_avail_idx_) > config_.size) {
    broken_ = true;
    LOG_RATELIMITED(LogLevel::kWarn,
                    "virtqueue broken: avail.idx {} is more than the queue size {} past {}", idx,
                    config_.size, last_avail_idx_);
    return false;
  }
  shadow_avail_idx_ = idx;
  return true;
}

uint16_t SplitQueue::AvailableCount() {
  if (!configured_ || broken_) return 0;
  if (!RefreshAvailIdx()) return 0;
  return static_cast<uint16_t>(shadow_avail_idx_ - last_avail_idx_);
}

PopResult SplitQueue::Pop(DescChain* chain) {
  chain->Clear();
  if (broken_) return PopResult::kBroken;
  if (!configured_) return PopResult::kEmpty;
  if (shadow_avail_idx_ == last_avail_idx_) {
    if (!RefreshAvailIdx()) return PopResult::kBroken;
    if (shadow_avail_idx_ == last_avail_idx_) return PopResult::kEmpty;
  }
  const uint32_t mask = config_.size - 1;
  uint16_t head = LoadLe16(avail_ + kRingOff + 2u * (last_avail_idx_ & mask));
  if (head >= config_.size) {
    broken_ = true;
    LOG_RATELIMITED(LogLevel::kWarn, "virtqueue broken: avail ring head {} >= queue size {}", head,
                    config_.size);
    return PopResult::kBroken;
  }
  ++last_avail_idx_;
  chain->head = head;
  PopResult r = WalkChain(head, chain);
  if (r != PopResult::kOk) {
    chain->Clear();
    chain->head = head;
  }
  return r;
}

PopResult SplitQueue::WalkChain(uint16_t head, DescChain* chain) {
  const uint8_t* table = reinterpret_cast<const uint8_t*>(desc_);
  uint32_t table_size = config_.size;
  uint32_t index = head;
  uint32_t budget = config_.size;  // descriptors left before we call it a loop
  bool indirect = false;
  bool writable_seen = false;
  uint64_t total = 0;
  const char* why = nullptr;

  for (;;) {
    if (index >= table_size) {
      why = "next index out of range";
      break;
    }
    if (budget-- == 0) {
      why = "chain longer than its table (loop)";
      break;
    }
    Desc d = LoadDesc(table, index);
    if (d.flags & VRING_DESC_F_INDIRECT) {
      if (!config_.indirect) {
        why = "indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC";
        break;
      }
      if (indirect) {
        why = "nested indirect descriptor";
        break;
      }
      if (d.flags & VRING_DESC_F_NEXT) {
        why = "indirect descriptor with NEXT";
        break;
      }
      if (d.len == 0 || d.len % 16 != 0 || d.len / 16 > kMaxQueueSize) {
        why = "bad indirect table length";
        break;
      }
      const uint8_t* t = memory_->GpaToHost(d.addr, d.len);
      if (t == nullptr) {
        why = "indirect table outside guest memory";
        break;
      }
      table = t;
      table_size = d.len / 16;
      budget = table_size;
      index = 0;
      indirect = true;
      continue;
    }
    const bool writable = (d.flags & VRING_DESC_F_WRITE) != 0;
    if (!writable && writable_seen) {
      why = "readable descriptor after a writable one";
      break;
    }
    writable_seen |= writable;
    total += d.len;  // cannot overflow: bounded by kMaxChainBytes before each addition
    if (total > kMaxChainBytes) {
      why = "chain too long in bytes";
      break;
    }
    if (d.len != 0) {
      std::vector<iovec>* out = writable ? &chain->writable : &chain->readable;
      if (!memory_->GpaToIovecs(d.addr, d.len, out).ok()) {
        why = "buffer outside guest memory";
        break;
      }
      (writable ? chain->writable_bytes : chain->readable_bytes) += d.len;
    }
    if (!(d.flags & VRING_DESC_F_NEXT)) return PopResult::kOk;
    index = d.next;
  }
  LOG_RATELIMITED(LogLevel::kWarn, "virtqueue: dropping bad chain (head {}): {}", head, why);
  return PopResult::kBadChain;
}

void SplitQueue::Unpop(uint16_t count) {
  last_avail_idx_ = static_cast<uint16_t>(last_avail_idx_ - count);
}

void SplitQueue::PushUsed(uint16_t head, uint32_t len) {
  if (!configured_ || broken_) return;
  uint8_t* elem = used_ + kRingOff + 8u * (used_idx_ & (config_.size - 1));
  vring_used_elem e{htole32(head), htole32(len)};
  std::memcpy(elem, &e, sizeof e);
  // The element (and the buffers it describes) before the index (pairs with the driver's
  // acquire after reading used.idx).
  std::atomic_thread_fence(std::memory_order_release);
  ++used_idx_;
  StoreLe16(used_ + kIdxOff, used_idx_);
  pushed_since_notify_ = true;
}

void SplitQueue::Notify() {
  if (!configured_ || broken_ || !pushed_since_notify_) return;
  // used.idx store -> used_event/flags load: store->load needs a full fence.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  bool need;
  if (config_.event_idx) {
    uint16_t used_event = LoadLe16(avail_ + kRingOff + 2u * config_.size);
    need = VringNeedEvent(used_event, used_idx_, signalled_used_);
  } else {
    need = !(LoadLe16(avail_ + kFlagsOff) & VRING_AVAIL_F_NO_INTERRUPT);
  }
  signalled_used_ = used_idx_;
  pushed_since_notify_ = false;
  if (!need) return;
  ++notifications_sent_;
  if (call_fd_ >= 0) SignalEventFd(call_fd_);
}

void SplitQueue::DisableKicks() {
  if (!configured_ || broken_) return;
  // With EVENT_IDX, not advancing avail_event is enough: the driver only kicks when it
  // publishes past it, and it stays behind while we process.
  if (!config_.event_idx) {
    StoreLe16(used_ + kFlagsOff, LoadLe16(used_ + kFlagsOff) | VRING_USED_F_NO_NOTIFY);
  }
}

void SplitQueue::WriteKicksEnabled() {
  if (config_.event_idx) {
    StoreLe16(used_ + kRingOff + 8u * config_.size, last_avail_idx_);
  } else {
    StoreLe16(used_ + kFlagsOff,
              static_cast<uint16_t>(LoadLe16(used_ + kFlagsOff) & ~VRING_USED_F_NO_NOTIFY));
  }
}

bool SplitQueue::EnableKicks() {
  if (!configured_ || broken_) return false;
  WriteKicksEnabled();
  // Enable -> re-read avail.idx: store->load, full fence, or a kick can be lost.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return AvailableCount() > 0;
}

}  // namespace vsockd::virtio
