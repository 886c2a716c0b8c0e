// SplitQueue: the device side of one split virtqueue living in guest memory.
//
// Role: pops descriptor chains the driver made available, hands them out as bounds-checked
// host iovecs, publishes used elements, and implements notification suppression in both
// directions (VIRTIO_F_EVENT_IDX, or the flags when it is not negotiated).
// Callers: the vhost-user backend configures it (SET_VRING_NUM/ADDR/BASE, SET_MEM_TABLE,
// SET_VRING_CALL); a VirtioDevice (vsock) pops and pushes. Threading: one thread (the
// device's event loop); it shares memory with the driver, which runs concurrently.
//
// Memory ordering (the driver is another CPU): an acquire fence after reading avail.idx
// before reading ring entries/descriptors; a release fence before publishing used.idx; a
// full fence between publishing used.idx and reading used_event/flags (store->load
// ordering), and between re-enabling kicks and re-reading avail.idx.
//
// Untrusted input: head indices, `next` links, descriptor addresses and lengths, indirect
// tables and avail.idx jumps are all validated. A chain that is malformed is reported as
// kBadChain with its head (the caller returns it with length 0, so the driver does not leak
// it); a ring that is corrupt as a whole (avail.idx moved by more than the queue size, a
// head out of range) marks the queue broken and it is not walked again until reconfigured.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "base/result.h"
#include "virtio/guest_memory.h"
#include "virtio/virtio_ring.h"

namespace vsockd::virtio {

// A popped descriptor chain, translated. Reuse one object across pops to avoid allocation.
struct DescChain {
  uint16_t head = 0;
  std::vector<iovec> readable;  // device-readable bytes, in chain order
  std::vector<iovec> writable;  // device-writable bytes, in chain order
  size_t readable_bytes = 0;
  size_t writable_bytes = 0;

  void Clear() {
    readable.clear();
    writable.clear();
    readable_bytes = writable_bytes = 0;
  }
};

enum class PopResult {
  kOk,        // *chain is valid
  kEmpty,     // nothing available
  kBadChain,  // chain->head is set; the chain is unusable: PushUsed(head, 0) it
  kBroken,    // the ring is corrupt; the queue is now broken()
};

class SplitQueue {
 public:
  struct Config {
    uint32_t size = 0;       // SET_VRING_NUM: power of two, 1..kMaxQueueSize
    uint64_t desc_addr = 0;  // frontend-virtual addresses (SET_VRING_ADDR)
    uint64_t avail_addr = 0;
    uint64_t used_addr = 0;
    bool event_idx = false;  // VIRTIO_RING_F_EVENT_IDX negotiated
    bool indirect = false;   // VIRTIO_RING_F_INDIRECT_DESC negotiated
  };

  // Validates the config and translates the ring addresses through `memory`.
  // `last_avail_idx` comes from SET_VRING_BASE; the used index is read from the ring.
  // The queue starts with kicks enabled (avail_event = last_avail_idx, or NO_NOTIFY clear).
  Status Configure(std::shared_ptr<const GuestMemory> memory, const Config& config,
                   uint16_t last_avail_idx);
  // Re-translates the rings after a new SET_MEM_TABLE (same addresses, new mapping).
  Status Remap(std::shared_ptr<const GuestMemory> memory);
  // Forgets everything (not configured, not broken, no call fd). Configure() keeps the call
  // fd, since SET_VRING_CALL may arrive before the ring addresses.
  void Reset();
  // After Configure(): continue from the used index in guest memory (what the device
  // completed) instead of the given last_avail_idx. For a new process taking over a running
  // ring (vsockd restarted under a VM): chains the old process took but never completed are
  // taken again, completed ones are not, as long as chains complete in the order they were
  // taken (vsockd's device does: an rx chain it cannot fill is un-popped, never held).
  void ResumeAtUsedIndex();

  bool configured() const { return configured_; }
  bool broken() const { return broken_; }
  uint32_t size() const { return config_.size; }
  uint16_t last_avail_idx() const { return last_avail_idx_; }
  const std::shared_ptr<const GuestMemory>& memory() const { return memory_; }

  // Number of chains the driver has made available and we have not popped.
  // Returns 0 (and marks the queue broken) if avail.idx is beyond what is possible.
  uint16_t AvailableCount();
  PopResult Pop(DescChain* chain);
  // Un-pops the last `count` popped chains that were not pushed (e.g. an rx buffer popped
  // before learning there was nothing to write into it).
  void Unpop(uint16_t count = 1);
  // Writes a used element and publishes used.idx (release).
  void PushUsed(uint16_t head, uint32_t len);

  // Driver -> device notifications. DisableKicks() while processing; EnableKicks() after,
  // which returns true if more chains arrived meanwhile (process them, then enable again).
  // With EVENT_IDX, EnableKicks() is what moves avail_event: a device that drains the queue
  // without calling it gets no further kicks until avail.idx wraps around to it.
  void DisableKicks();
  bool EnableKicks();

  // Device -> driver notification. The call fd is owned by the transport (vhost-user).
  void SetCallFd(int fd) { call_fd_ = fd; }
  // Signals the call fd if anything was pushed since the last Notify() and the driver's
  // suppression settings (used_event, or VRING_AVAIL_F_NO_INTERRUPT) ask for it.
  void Notify();
  // Counters for tests and metrics. notifications_sent counts the interrupts the driver asked
  // for (the call fd is written for each when one is set).
  uint64_t notifications_sent() const { return notifications_sent_; }

  // Upper bound on the bytes of one chain; a chain claiming more is kBadChain. It keeps byte
  // counts far from overflow and a hostile chain from pinning unbounded work on us.
  static constexpr uint64_t kMaxChainBytes = 1ull << 30;

 private:
  PopResult WalkChain(uint16_t head, DescChain* chain);
  // Translates the three ring areas of config_ through `memory` into desc_/avail_/used_.
  Status TranslateRings(const GuestMemory& memory);
  // Loads avail.idx (then an acquire fence) into shadow_avail_idx_; false (and the queue is
  // marked broken) if it moved by more than the queue size.
  bool RefreshAvailIdx();
  // Writes avail_event = last_avail_idx_ (EVENT_IDX) or clears VRING_USED_F_NO_NOTIFY.
  void WriteKicksEnabled();

  std::shared_ptr<const GuestMemory> memory_;
  Config config_;
  bool configured_ = false;
  bool broken_ = false;
  vring_desc* desc_ = nullptr;  // host pointers into guest memory
  uint8_t* avail_ = nullptr;    // flags, idx, ring[size], used_event
  uint8_t* used_ = nullptr;     // flags, idx, ring[size], avail_event
  uint16_t last_avail_idx_ = 0;
  uint16_t shadow_avail_idx_ = 0;  // avail.idx as last read; avoids a re-read per Pop()
  uint16_t used_idx_ = 0;          // our shadow of used.idx
  uint16_t signalled_used_ = 0;    // used.idx at the last Notify()
  bool pushed_since_notify_ = false;
  int call_fd_ = -1;
  uint64_t notifications_sent_ = 0;
};

}  // namespace vsockd::virtio
