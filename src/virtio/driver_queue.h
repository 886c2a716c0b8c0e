// DriverQueue: the driver side of a split virtqueue, for vguest (our virtual guest) and for
// tests that must build rings by hand, including malformed ones.
//
// Role: lays out the descriptor table and the avail/used rings inside memory the driver owns
// (vguest's memfd), adds buffers as chains of guest-physical segments, publishes them with
// kick suppression (EVENT_IDX avail_event, or VRING_USED_F_NO_NOTIFY), and reaps used
// elements with interrupt suppression (used_event, or VRING_AVAIL_F_NO_INTERRUPT).
// Threading: one thread (the driver's); the device runs concurrently on shared memory.
// The same barriers as SplitQueue apply from the other side.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "base/result.h"
#include "virtio/virtio_ring.h"

namespace vsockd::virtio {

struct Segment {
  uint64_t gpa = 0;  // guest-physical address
  uint32_t len = 0;
};

struct UsedElem {
  uint16_t head = 0;
  uint32_t len = 0;
};

class DriverQueue {
 public:
  // Bytes of driver memory a queue of `size` entries needs (desc table, avail, used,
  // with alignment padding between them).
  static size_t RingBytes(uint32_t size);

  // `area` is where the rings live in this process, `area_gpa` the same place as guest
  // physical address. `size` must be a power of two.
  Status Init(uint8_t* area, uint64_t area_gpa, uint32_t size, bool event_idx);

  uint32_t size() const { return size_; }
  // Addresses for VHOST_USER_SET_VRING_ADDR (in vguest, frontend-virtual == this process's
  // pointers) and their guest-physical twins.
  uint64_t desc_user_addr() const;
  uint64_t avail_user_addr() const;
  uint64_t used_user_addr() const;
  uint64_t desc_gpa() const { return desc_gpa_; }
  uint64_t avail_gpa() const { return desc_gpa_ + (avail_ - reinterpret_cast<uint8_t*>(desc_)); }
  uint64_t used_gpa() const { return desc_gpa_ + (used_ - reinterpret_cast<uint8_t*>(desc_)); }

  size_t free_descriptors() const { return free_count_; }

  // Adds one chain: `out` segments are device-readable, then `in` are device-writable.
  // Fails with ENOSPC when there are not enough free descriptors. The chain becomes visible
  // to the device only at Publish().
  Result<uint16_t> Add(std::span<const Segment> out, std::span<const Segment> in);
  // Adds one chain made of a single INDIRECT descriptor pointing at `table_host` (the same
  // place as guest-physical `table_gpa`, 16-byte aligned), into which the `out` then `in`
  // segments are written as a linked table. The caller keeps the table untouched until the
  // chain comes back in PopUsed(). Fails with EINVAL on an empty or too long chain.
  Result<uint16_t> AddIndirect(uint64_t table_gpa, vring_desc* table_host,
                               std::span<const Segment> out, std::span<const Segment> in);
  // Makes added chains visible (release-store of avail.idx). Returns true if the device
  // asked to be kicked for them.
  bool Publish();

  // Next used element, or nullopt. Frees the chain's descriptors. The device is trusted only
  // as far as memory safety: an element whose head is >= size() is skipped (with a log line);
  // one whose head is not an outstanding chain (a PushAvailRaw() head, a duplicate) is
  // returned without freeing anything.
  std::optional<UsedElem> PopUsed();
  // Interrupt suppression. EnableInterrupts() returns true if used elements arrived meanwhile.
  void DisableInterrupts();
  bool EnableInterrupts();

  // Raw access for tests that build hostile rings. PushAvailRaw() places `head` in the next
  // avail slot without any checks; Publish() then exposes it.
  vring_desc* raw_desc() { return desc_; }
  void PushAvailRaw(uint16_t head);
  // Sets avail.idx to any value (for "avail index jumped" tests).
  void SetAvailIdxRaw(uint16_t idx);
  // Current shadows, for tests.
  uint16_t avail_idx() const { return avail_idx_; }
  uint16_t last_used_idx() const { return last_used_idx_; }

 private:
  // Returns a chain's descriptors to the free list.
  void FreeChain(uint16_t head);
  // Takes `count` descriptors off the free list and fills them from out/in (NEXT-linked);
  // returns the first.
  uint16_t FillChain(std::span<const Segment> out, std::span<const Segment> in);

  uint32_t size_ = 0;
  bool event_idx_ = false;
  vring_desc* desc_ = nullptr;
  uint8_t* avail_ = nullptr;
  uint8_t* used_ = nullptr;
  uint64_t desc_gpa_ = 0;
  uint16_t avail_idx_ = 0;      // shadow of avail.idx including unpublished adds
  uint16_t published_idx_ = 0;  // avail.idx at the last Publish()
  uint16_t last_used_idx_ = 0;
  uint16_t free_head_ = 0;
  uint32_t free_count_ = 0;
  std::vector<uint16_t> chain_len_;  // per head: descriptors in the chain, to free them
};

}  // namespace vsockd::virtio
