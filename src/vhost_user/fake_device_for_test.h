// FakeDevice: a tiny virtio::VirtioDevice for the vhost-user tests and fuzzer. It offers
// EVENT_IDX, has two queues (rx, tx) and an 8-byte config space (le64 guest CID), and
// records every call the transport makes as a line of text ("start 0 reset=0", "kick 1",
// "stop 0", "gone", ...).
//
// Threading: the Backend calls it on its loop thread while a test thread reads the record;
// a mutex and condition variable make WaitFor() the test's only synchronisation.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "virtio/virtio_device.h"
#include "virtio/virtio_ring.h"

namespace vsockd::vhost_user::testing {

class FakeDevice : public virtio::VirtioDevice {
 public:
  explicit FakeDevice(uint64_t cid = 3) : cid_(cid) {}

  uint64_t DeviceFeatures() const override {
    return (1ull << virtio::VIRTIO_RING_F_EVENT_IDX) | (1ull << virtio::VIRTIO_F_VERSION_1);
  }
  uint32_t NumQueues() const override { return 2; }
  uint32_t MaxQueueSize() const override { return 256; }

  bool ReadConfig(uint32_t offset, std::span<uint8_t> out) const override {
    uint8_t config[8];
    for (int i = 0; i < 8; ++i) config[i] = static_cast<uint8_t>(cid_ >> (8 * i));  // le64
    if (uint64_t{offset} + out.size() > sizeof config) return false;
    if (!out.empty()) std::memcpy(out.data(), config + offset, out.size());
    Record("config " + std::to_string(offset) + " " + std::to_string(out.size()));
    return true;
  }
  void SetAckedFeatures(uint64_t features) override {
    acked_ = features;
    Record("features " + std::to_string(features));
  }
  void QueueStarted(uint32_t index, virtio::SplitQueue* queue, bool driver_reset) override {
    if (index < 2) queues_[index] = queue;
    if (on_start) on_start(index, queue);
    Record("start " + std::to_string(index) + " reset=" + (driver_reset ? "1" : "0"));
  }
  void QueueStopped(uint32_t index) override {
    if (index < 2) queues_[index] = nullptr;
    Record("stop " + std::to_string(index));
  }
  void QueueKicked(uint32_t index) override { Record("kick " + std::to_string(index)); }
  void FrontendGone() override { Record("gone"); }

  // Snapshot of the record.
  std::vector<std::string> events() const {
    std::lock_guard lock(mu_);
    return events_;
  }
  void ClearEvents() {
    std::lock_guard lock(mu_);
    events_.clear();
  }
  size_t Count(const std::string& event) const {
    std::lock_guard lock(mu_);
    size_t n = 0;
    for (const auto& e : events_) n += (e == event);
    return n;
  }
  // Waits (bounded) until `event` has been recorded at least `times` times.
  bool WaitFor(const std::string& event, size_t times = 1,
               std::chrono::milliseconds timeout = std::chrono::seconds(20)) const {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] {
      size_t n = 0;
      for (const auto& e : events_) n += (e == event);
      return n >= times;
    });
  }
  // Waits (bounded) until some recorded event starts with `prefix`.
  bool WaitForPrefix(const std::string& prefix,
                     std::chrono::milliseconds timeout = std::chrono::seconds(20)) const {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] {
      for (const auto& e : events_) {
        if (e.rfind(prefix, 0) == 0) return true;
      }
      return false;
    });
  }

  uint64_t acked() const { return acked_; }
  // Optional hook run (on the backend's thread) when a queue starts; the fuzzer uses it to
  // walk the ring.
  std::function<void(uint32_t, virtio::SplitQueue*)> on_start;
  bool record_enabled = true;

 private:
  void Record(std::string event) const {
    if (!record_enabled) return;
    {
      std::lock_guard lock(mu_);
      events_.push_back(std::move(event));
    }
    cv_.notify_all();
  }

  uint64_t cid_;
  std::atomic<uint64_t> acked_{0};
  virtio::SplitQueue* queues_[2] = {nullptr, nullptr};
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  mutable std::vector<std::string> events_;
};

}  // namespace vsockd::vhost_user::testing
