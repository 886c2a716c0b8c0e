// libFuzzer target for the device side of a split virtqueue: the input is a hostile guest.
//
// Layout of the input: an 11-byte header (queue size; flags: event_idx, indirect, misaligned
// rings, kicks disabled, resume at the used index; last_avail_idx; ring offsets; unpop count)
// followed by the contents of 64 KiB of guest memory (zero-padded), which holds the rings,
// descriptors, indirect tables and buffers all at once. Guest memory is two regions adjacent
// in guest-physical space (so buffers may straddle them) but not in frontend-virtual space.
// The device pops until empty or broken, reads every readable byte, writes every writable
// byte (possibly over the rings themselves, as a racing guest would), and pushes the chains
// back. ASan/UBSan catch any access outside the 64 KiB.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "base/log.h"
#include "virtio/guest_memory.h"
#include "virtio/split_queue.h"

namespace {

using vsockd::virtio::DescChain;
using vsockd::virtio::GuestMemory;
using vsockd::virtio::MemoryRegion;
using vsockd::virtio::PopResult;
using vsockd::virtio::SplitQueue;

constexpr size_t kMemSize = 64 * 1024;
constexpr size_t kSplit = 60 * 1024;  // region 0 is [0, kSplit), region 1 the rest
constexpr uint64_t kGpa = 0x10000;
constexpr uint64_t kUva0 = 0x7f0000000000;
constexpr uint64_t kUva1 = 0x7f0000100000;
constexpr size_t kHeader = 11;

alignas(4096) uint8_t g_memory[kMemSize];
volatile uint8_t g_sink;

uint64_t OffsetToUva(size_t off) { return off < kSplit ? kUva0 + off : kUva1 + (off - kSplit); }

// Every iovec must lie inside guest memory; its ends are touched so the sanitizers see any
// mistake in the bounds (touching every byte would make big chains too slow to fuzz).
size_t CheckIovecs(const std::vector<iovec>& iovs, bool write, uint8_t value) {
  size_t bytes = 0;
  for (const iovec& v : iovs) {
    uint8_t* p = static_cast<uint8_t*>(v.iov_base);
    if (v.iov_len == 0 || p < g_memory || v.iov_len > kMemSize ||
        p + v.iov_len > g_memory + kMemSize) {
      __builtin_trap();
    }
    if (write) {
      p[0] = value;
      p[v.iov_len - 1] = value;
    } else {
      g_sink = static_cast<uint8_t>(g_sink + p[0] + p[v.iov_len - 1]);
    }
    bytes += v.iov_len;
  }
  return bytes;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  vsockd::SetLogLevel(vsockd::LogLevel::kOff);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kHeader) return 0;
  const uint32_t queue_size = 1u << (data[0] % 11);  // 1..1024
  const uint8_t flags = data[1];
  const uint16_t last_avail = static_cast<uint16_t>(data[2] | data[3] << 8);
  // Ring offsets in 16-byte units (bit 2 of flags keeps the low bits, to test misalignment).
  auto ring_off = [&](uint8_t lo, uint8_t hi, size_t align) {
    size_t off = (static_cast<size_t>(lo) | static_cast<size_t>(hi) << 8) % kMemSize;
    return (flags & 4) ? off : off / align * align;
  };
  const size_t desc_off = ring_off(data[4], data[5], 16);
  const size_t avail_off = ring_off(data[6], data[7], 2);
  const size_t used_off = ring_off(data[8], data[9], 4);
  const uint8_t unpop = data[10];

  std::memset(g_memory, 0, kMemSize);
  std::memcpy(g_memory, data + kHeader, std::min(size - kHeader, kMemSize));

  std::vector<MemoryRegion> regions = {
      {kGpa, kSplit, kUva0, 0},
      {kGpa + kSplit, kMemSize - kSplit, kUva1, 0},
  };
  std::vector<uint8_t*> bases = {g_memory, g_memory + kSplit};
  auto mem = GuestMemory::FromMapped(regions, bases);
  if (!mem.ok()) __builtin_trap();

  SplitQueue queue;
  SplitQueue::Config config;
  config.size = queue_size;
  config.desc_addr = OffsetToUva(desc_off);
  config.avail_addr = OffsetToUva(avail_off);
  config.used_addr = OffsetToUva(used_off);
  config.event_idx = flags & 1;
  config.indirect = flags & 2;
  if (!queue.Configure(mem.value(), config, last_avail).ok()) return 0;
  // Bit 4: a restarted vsockd taking the ring over at the used index the guest's memory holds.
  if (flags & 16) queue.ResumeAtUsedIndex();

  DescChain chain;
  for (int phase = 0; phase < 2; ++phase) {
    if (flags & 8) queue.DisableKicks();
    uint16_t popped = 0;
    for (int i = 0; i < 2048; ++i) {
      PopResult r = queue.Pop(&chain);
      if (r == PopResult::kEmpty || r == PopResult::kBroken) break;
      ++popped;
      if (r == PopResult::kBadChain) {
        if (!chain.readable.empty() || !chain.writable.empty()) __builtin_trap();
        queue.PushUsed(chain.head, 0);
        continue;
      }
      if (chain.head >= queue_size) __builtin_trap();
      if (CheckIovecs(chain.readable, false, 0) != chain.readable_bytes) __builtin_trap();
      if (CheckIovecs(chain.writable, true, static_cast<uint8_t>(i)) != chain.writable_bytes) {
        __builtin_trap();
      }
      queue.PushUsed(chain.head, static_cast<uint32_t>(chain.writable_bytes));
    }
    queue.Notify();
    queue.EnableKicks();
    (void)queue.AvailableCount();
    // Second phase: rewind some chains (as a device that parked rx buffers would).
    queue.Unpop(static_cast<uint16_t>(std::min<uint16_t>(popped, unpop)));
  }
  return 0;
}
