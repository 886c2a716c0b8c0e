// VirtioDevice: what a transport (the vhost-user backend) drives, and what a device (vsock)
// implements. The device never sees vhost-user: it only sees feature bits, config space and
// SplitQueues that start, get kicked and stop.
//
// Threading: every call comes from the transport's event loop thread.
#pragma once

#include <cstdint>
#include <span>

#include "virtio/split_queue.h"

namespace vsockd::virtio {

class VirtioDevice {
 public:
  virtual ~VirtioDevice() = default;

  // Feature bits the device offers: device-specific bits plus the ring features it handles
  // (VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC) and VIRTIO_F_VERSION_1.
  virtual uint64_t DeviceFeatures() const = 0;
  // Number of queues the transport hands to the device (vsock: rx=0 and tx=1; the event
  // queue stays with the VMM under vhost-user).
  virtual uint32_t NumQueues() const = 0;
  // Largest queue size the device accepts (SET_VRING_NUM above it is refused).
  virtual uint32_t MaxQueueSize() const { return 1024; }

  // Copies config space [offset, offset + out.size()) into out; false if out of range.
  virtual bool ReadConfig(uint32_t offset, std::span<uint8_t> out) const = 0;

  // The driver's acked features (a subset of DeviceFeatures(), validated by the transport).
  virtual void SetAckedFeatures(uint64_t features) = 0;

  // The queue is configured, has a kick source and is enabled: the device may use it.
  // `driver_reset` is true when the driver re-initialised the queue since it last ran (new
  // ring addresses, or indices restarted at 0), i.e. the guest driver was reset or reloaded
  // and every connection it had is gone; false on the first start and after a VM pause
  // (same rings, indices continuing).
  virtual void QueueStarted(uint32_t index, SplitQueue* queue, bool driver_reset) = 0;
  // The queue is being stopped (SET_VRING_ENABLE 0, GET_VRING_BASE): the device must stop
  // touching it and must not hold popped chains. Connections survive: a stop is also what a
  // VM pause looks like.
  virtual void QueueStopped(uint32_t index) = 0;
  // The driver kicked this (started) queue.
  virtual void QueueKicked(uint32_t index) = 0;
  // The frontend disconnected: drop every connection of this device (host peers learn it
  // at once), forget negotiated state, and be ready for a new frontend.
  virtual void FrontendGone() = 0;
};

}  // namespace vsockd::virtio
