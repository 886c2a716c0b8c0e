// Split-virtqueue layout and feature bits, as in the virtio spec ("Split Virtqueues") and
// Linux's uapi <linux/virtio_ring.h>. All ring fields are little-endian in guest memory.
//
// Callers: the device-side SplitQueue, the driver-side DriverQueue (vguest), fuzz targets.
#pragma once

#include <cstddef>
#include <cstdint>

namespace vsockd::virtio {

// Generic feature bits (virtio spec, "Reserved Feature Bits").
inline constexpr int VIRTIO_F_NOTIFY_ON_EMPTY = 24;
inline constexpr int VIRTIO_RING_F_INDIRECT_DESC = 28;
inline constexpr int VIRTIO_RING_F_EVENT_IDX = 29;
inline constexpr int VIRTIO_F_VERSION_1 = 32;

inline constexpr uint16_t VRING_DESC_F_NEXT = 1;
inline constexpr uint16_t VRING_DESC_F_WRITE = 2;
inline constexpr uint16_t VRING_DESC_F_INDIRECT = 4;
inline constexpr uint16_t VRING_AVAIL_F_NO_INTERRUPT = 1;
inline constexpr uint16_t VRING_USED_F_NO_NOTIFY = 1;

// Largest queue size the spec allows; we accept powers of two up to this.
inline constexpr uint32_t kMaxQueueSize = 32768;

struct vring_desc {
  uint64_t addr;  // guest-physical
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(vring_desc) == 16);

struct vring_used_elem {
  uint32_t id;
  uint32_t len;
};
static_assert(sizeof(vring_used_elem) == 8);

// Byte sizes of the three parts for a queue of `num` entries (event fields included).
inline constexpr size_t DescTableBytes(uint32_t num) { return 16ull * num; }
inline constexpr size_t AvailRingBytes(uint32_t num) { return 6 + 2ull * num; }
inline constexpr size_t UsedRingBytes(uint32_t num) { return 6 + 8ull * num; }

// vring_need_event from the spec: should an event be sent when moving from old_idx to
// new_idx, given the other side asked to hear about event_idx?
inline bool VringNeedEvent(uint16_t event_idx, uint16_t new_idx, uint16_t old_idx) {
  return static_cast<uint16_t>(new_idx - event_idx - 1) < static_cast<uint16_t>(new_idx - old_idx);
}

}  // namespace vsockd::virtio
