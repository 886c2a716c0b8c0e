// FakeGuest: the driver side of a virtio-vsock device for tests, fuzzing and integration
// tests, without vhost-user: rx/tx rings built with virtio::DriverQueue in an anonymous
// memory arena, described to the device-side virtio::SplitQueues with
// GuestMemory::FromMapped, and handed straight to a virtio::VirtioDevice.
//
// It posts Linux-like rx buffers (6.1: a 44-byte header descriptor plus a separate data
// descriptor; 6.2+: one combined descriptor; or either behind an indirect table), sends tx
// packets the way Linux does (header and payload as two descriptors), collects what the
// device wrote and checks the used lengths the way a 6.1 guest relies on them.
//
// Callers: vsock tests, the vsock fuzzer, integration tests. Threading: one thread (the
// device's event loop thread: it calls the device directly).
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "base/event_fd.h"
#include "base/result.h"
#include "virtio/driver_queue.h"
#include "virtio/guest_memory.h"
#include "virtio/split_queue.h"
#include "virtio/virtio_device.h"
#include "vsock/packet.h"

namespace vsockd::vsock::testing {

enum class RxLayout {
  kSplit,     // 44-byte header descriptor + data descriptor (Linux 6.1)
  kCombined,  // one descriptor, header then data (Linux 6.2+)
  kIndirect,  // kSplit behind an indirect table (6.1 with INDIRECT_DESC)
};

struct FakeGuestOptions {
  uint64_t cid = 3;
  uint32_t queue_size = 128;
  bool event_idx = true;
  RxLayout rx_layout = RxLayout::kSplit;
  uint32_t rx_buf_size = kLinuxRxBufSize;  // data bytes per rx buffer
  bool tx_indirect = false;                // tx packets with payload behind an indirect table
  bool auto_refill = true;                 // CollectRx() re-posts the buffers it reaped
};

struct RxPacket {
  PacketHeader hdr;
  std::vector<uint8_t> payload;  // used_len - 44 bytes, as a 6.1 guest reads it
  uint32_t used_len = 0;
};

class FakeGuest {
 public:
  static Result<std::unique_ptr<FakeGuest>> Create(virtio::VirtioDevice* device,
                                                   FakeGuestOptions options = {});
  ~FakeGuest();

  // QueueStarted(0 and 1) on the device, as a transport does when the driver is up.
  void Start(bool driver_reset = false);
  // QueueStopped(0 and 1); the rings and buffers stay (a VM pause).
  void Stop();
  // Re-initialises both rings (indices back to 0, buffers forgotten), as a driver reset.
  Status ResetRings();

  // --- rx (device -> driver) ---
  // Posts up to `count` rx buffers (fewer if descriptors or slots run out); kicks the device
  // if it asked for kicks. Returns how many were posted.
  size_t PostRx(size_t count);
  size_t rx_posted() const { return rx_posted_; }
  // Reaps used rx buffers into rx_packets(); returns how many. With auto_refill, re-posts.
  size_t CollectRx();
  std::deque<RxPacket>& rx_packets() { return rx_packets_; }
  std::optional<RxPacket> PopRx();
  // Used elements that a 6.1 guest would drop or misread (len < 44, len > 44 + buffer,
  // len != 44 + hdr.len).
  uint64_t bad_rx_used_len() const { return bad_rx_used_len_; }
  // Used rx elements reaped so far (every rx buffer the device consumed).
  uint64_t rx_used_total() const { return rx_used_total_; }

  // --- tx (driver -> device) ---
  // A header with this guest's CID as source, host (2) as destination, type STREAM, op,
  // ports, len; buf_alloc/fwd_cnt from the arguments.
  PacketHeader Header(uint16_t op, uint32_t src_port, uint32_t dst_port, uint32_t len = 0,
                      uint32_t buf_alloc = 256 * 1024, uint32_t fwd_cnt = 0) const;
  // Queues one packet: header and payload in two readable descriptors (one if no payload).
  // With kick, publishes and kicks (QueueKicked(1)) if the device asked for it.
  Status Send(const PacketHeader& hdr, std::span<const uint8_t> payload = {}, bool kick = true);
  // Queues an arbitrary chain: readable parts (bytes copied as given), then writable sizes.
  Status SendChain(const std::vector<std::vector<uint8_t>>& readable,
                   const std::vector<uint32_t>& writable, bool kick = true);
  // Publishes queued tx chains and kicks if asked. `force` kicks even if suppressed.
  void KickTx(bool force = false);
  // Reaps used tx chains; returns how many. Any used length != 0 is counted.
  size_t ReapTx();
  size_t tx_outstanding() const { return tx_outstanding_; }
  uint64_t tx_used_nonzero() const { return tx_used_nonzero_; }
  uint64_t tx_returned() const { return tx_returned_; }

  virtio::SplitQueue& rx_queue() { return rx_dev_; }
  virtio::SplitQueue& tx_queue() { return tx_dev_; }
  virtio::DriverQueue& rx_driver() { return rx_drv_; }
  virtio::DriverQueue& tx_driver() { return tx_drv_; }
  uint64_t cid() const { return opts_.cid; }
  uint32_t queue_size() const { return opts_.queue_size; }

 private:
  struct Slot {
    uint8_t* host = nullptr;
    uint64_t gpa = 0;
  };
  FakeGuest(virtio::VirtioDevice* device, FakeGuestOptions options)
      : device_(device), opts_(options) {}
  Status Init();
  Status ConfigureDeviceQueues();
  uint64_t Gpa(const uint8_t* p) const { return base_gpa_ + static_cast<uint64_t>(p - base_); }
  bool PostOneRx();

  virtio::VirtioDevice* device_;
  FakeGuestOptions opts_;
  uint8_t* base_ = nullptr;
  size_t arena_size_ = 0;
  uint64_t base_gpa_ = 0x40000000;
  std::shared_ptr<virtio::GuestMemory> memory_;
  uint8_t* rx_ring_ = nullptr;
  uint8_t* tx_ring_ = nullptr;
  virtio::DriverQueue rx_drv_, tx_drv_;
  virtio::SplitQueue rx_dev_, tx_dev_;
  std::optional<EventFd> rx_call_, tx_call_;

  size_t rx_slot_size_ = 0;
  size_t tx_slot_size_ = 0;
  std::vector<Slot> rx_slots_, tx_slots_;
  std::vector<int> rx_free_, tx_free_;            // free slot indices
  std::vector<int> rx_head_slot_, tx_head_slot_;  // head -> slot (-1: none)
  size_t rx_posted_ = 0;
  size_t tx_outstanding_ = 0;
  std::deque<RxPacket> rx_packets_;
  uint64_t bad_rx_used_len_ = 0;
  uint64_t rx_used_total_ = 0;
  uint64_t tx_used_nonzero_ = 0;
  uint64_t tx_returned_ = 0;
};

}  // namespace vsockd::vsock::testing
