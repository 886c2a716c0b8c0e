// SplitQueue (device side) against DriverQueue (driver side) on the same memory, plus rings
// built by hand to be hostile.
#include "virtio/split_queue.h"

#include <endian.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "base/event_fd.h"
#include "virtio/driver_queue.h"

namespace vsockd::virtio {
namespace {

class SplitQueueTest : public ::testing::Test {
 protected:
  static constexpr uint64_t kGpa = 0x40000000;
  static constexpr size_t kMemSize = 4 << 20;
  static constexpr size_t kBufOff = 1 << 20;  // buffers and indirect tables live from here

  void SetUp() override {
    void* p = mmap(nullptr, kMemSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(p, MAP_FAILED);
    arena_ = static_cast<uint8_t*>(p);
    mem_ = MakeMemory(arena_);
    ASSERT_NE(mem_, nullptr);
  }
  void TearDown() override { munmap(arena_, kMemSize); }

  // One region: gpa kGpa, uva == this process's address (as in vguest).
  static std::shared_ptr<GuestMemory> MakeMemory(uint8_t* base, uint64_t uva = 0) {
    std::vector<MemoryRegion> regions = {
        {kGpa, kMemSize, uva ? uva : reinterpret_cast<uint64_t>(base), 0}};
    std::vector<uint8_t*> bases = {base};
    auto r = GuestMemory::FromMapped(regions, bases);
    return r.ok() ? r.value() : nullptr;
  }

  SplitQueue::Config ConfigFor(uint32_t size, bool event_idx, bool indirect) {
    return SplitQueue::Config{size,
                              driver_.desc_user_addr(),
                              driver_.avail_user_addr(),
                              driver_.used_user_addr(),
                              event_idx,
                              indirect};
  }

  void Init(uint32_t size, bool event_idx = false, bool indirect = false) {
    ASSERT_TRUE(driver_.Init(arena_, kGpa, size, event_idx).ok());
    Status st = queue_.Configure(mem_, ConfigFor(size, event_idx, indirect), 0);
    ASSERT_TRUE(st.ok()) << st.error().ToString();
  }

  static uint64_t Gpa(size_t off) { return kGpa + off; }
  uint8_t* Host(size_t off) { return arena_ + off; }

  static void SetDesc(vring_desc* table, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags,
                      uint16_t next = 0) {
    table[i].addr = htole64(addr);
    table[i].len = htole32(len);
    table[i].flags = htole16(flags);
    table[i].next = htole16(next);
  }
  void SetDesc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next = 0) {
    SetDesc(driver_.raw_desc(), i, addr, len, flags, next);
  }
  vring_desc* Table(size_t off) { return reinterpret_cast<vring_desc*>(Host(off)); }

  // Makes `head` available and pops it.
  PopResult PopRaw(uint16_t head) {
    driver_.PushAvailRaw(head);
    driver_.Publish();
    return queue_.Pop(&chain_);
  }

  // A raw chain must come back as a bad chain that can still be returned to the driver.
  void ExpectBadChain(uint16_t head) {
    ASSERT_EQ(PopRaw(head), PopResult::kBadChain);
    EXPECT_EQ(chain_.head, head);
    EXPECT_TRUE(chain_.readable.empty());
    EXPECT_TRUE(chain_.writable.empty());
    EXPECT_FALSE(queue_.broken());
    queue_.PushUsed(chain_.head, 0);
    auto used = driver_.PopUsed();
    ASSERT_TRUE(used.has_value());
    EXPECT_EQ(used->head, head);
    EXPECT_EQ(used->len, 0u);
  }

  uint8_t* arena_ = nullptr;
  std::shared_ptr<GuestMemory> mem_;
  DriverQueue driver_;
  SplitQueue queue_;
  DescChain chain_;
};

TEST_F(SplitQueueTest, RoundTripDirectChain) {
  Init(8);
  EXPECT_EQ(queue_.Pop(&chain_), PopResult::kEmpty);
  std::memcpy(Host(kBufOff), "hello", 5);
  std::memcpy(Host(kBufOff + 0x100), " world", 6);
  Segment out[] = {{Gpa(kBufOff), 5}, {Gpa(kBufOff + 0x100), 6}};
  Segment in[] = {{Gpa(kBufOff + 0x1000), 64}};
  auto head = driver_.Add(out, in);
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(driver_.free_descriptors(), 5u);
  EXPECT_EQ(queue_.AvailableCount(), 0u);  // not published yet
  EXPECT_TRUE(driver_.Publish());
  EXPECT_EQ(queue_.AvailableCount(), 1u);

  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  EXPECT_EQ(chain_.head, *head);
  ASSERT_EQ(chain_.readable.size(), 2u);
  EXPECT_EQ(chain_.readable[0].iov_base, Host(kBufOff));
  EXPECT_EQ(chain_.readable[0].iov_len, 5u);
  EXPECT_EQ(chain_.readable[1].iov_base, Host(kBufOff + 0x100));
  EXPECT_EQ(chain_.readable_bytes, 11u);
  ASSERT_EQ(chain_.writable.size(), 1u);
  EXPECT_EQ(chain_.writable[0].iov_base, Host(kBufOff + 0x1000));
  EXPECT_EQ(chain_.writable_bytes, 64u);
  EXPECT_EQ(queue_.last_avail_idx(), 1u);
  EXPECT_EQ(queue_.Pop(&chain_), PopResult::kEmpty);

  std::memcpy(chain_.writable[0].iov_base, "reply", 5);
  queue_.PushUsed(*head, 5);
  auto used = driver_.PopUsed();
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->head, *head);
  EXPECT_EQ(used->len, 5u);
  EXPECT_EQ(std::memcmp(Host(kBufOff + 0x1000), "reply", 5), 0);
  EXPECT_EQ(driver_.free_descriptors(), 8u);
  EXPECT_FALSE(driver_.PopUsed().has_value());
}

TEST_F(SplitQueueTest, DriverRunsOutOfDescriptors) {
  Init(4);
  Segment seg[] = {{Gpa(kBufOff), 1}, {Gpa(kBufOff), 1}, {Gpa(kBufOff), 1}};
  ASSERT_TRUE(driver_.Add(seg, {}).ok());
  auto r = driver_.Add(std::span<const Segment>(seg, 2), {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ENOSPC);
  EXPECT_TRUE(driver_.Add(std::span<const Segment>(seg, 1), {}).ok());
  EXPECT_EQ(driver_.free_descriptors(), 0u);
  EXPECT_FALSE(driver_.Add({}, {}).ok());
}

TEST_F(SplitQueueTest, IndicesWrapAroundU16) {
  // 70000 chains through a 4-entry queue: avail/used indices wrap past 65535, and the
  // driver's free list must survive chains of varying lengths being returned.
  Init(4, /*event_idx=*/true);
  for (uint32_t i = 0; i < 70000; ++i) {
    uint32_t n = 1 + i % 3;
    std::vector<Segment> out(n, Segment{Gpa(kBufOff + i % 512), 1 + i % 7});
    Segment in[] = {{Gpa(kBufOff + 0x1000), 16}};
    auto head = driver_.Add(std::span<const Segment>(out.data(), n - 1 + (i % 2)),
                            std::span<const Segment>(in, 1));
    ASSERT_TRUE(head.ok()) << i;
    driver_.Publish();
    ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk) << i;
    ASSERT_EQ(chain_.head, *head);
    ASSERT_EQ(chain_.readable.size(), n - 1 + (i % 2));
    queue_.PushUsed(chain_.head, i);
    auto used = driver_.PopUsed();
    ASSERT_TRUE(used.has_value());
    ASSERT_EQ(used->head, *head);
    ASSERT_EQ(used->len, i);
    ASSERT_EQ(driver_.free_descriptors(), 4u);
  }
  EXPECT_EQ(queue_.last_avail_idx(), static_cast<uint16_t>(70000));
}

TEST_F(SplitQueueTest, RoundTripIndirectChain) {
  Init(4, false, /*indirect=*/true);
  Segment out[] = {{Gpa(kBufOff), 44}, {Gpa(kBufOff + 0x100), 100}};
  Segment in[] = {{Gpa(kBufOff + 0x1000), 4096}, {Gpa(kBufOff + 0x2000), 10}};
  auto head = driver_.AddIndirect(Gpa(kBufOff + 0x10000), Table(kBufOff + 0x10000), out, in);
  ASSERT_TRUE(head.ok());
  EXPECT_EQ(driver_.free_descriptors(), 3u);
  driver_.Publish();
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  EXPECT_EQ(chain_.head, *head);
  ASSERT_EQ(chain_.readable.size(), 2u);
  ASSERT_EQ(chain_.writable.size(), 2u);
  EXPECT_EQ(chain_.readable_bytes, 144u);
  EXPECT_EQ(chain_.writable_bytes, 4106u);
  EXPECT_EQ(chain_.writable[1].iov_base, Host(kBufOff + 0x2000));
  queue_.PushUsed(*head, 4106);
  auto used = driver_.PopUsed();
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->len, 4106u);
  EXPECT_EQ(driver_.free_descriptors(), 4u);
}

TEST_F(SplitQueueTest, DirectDescriptorsBeforeIndirectTable) {
  Init(8, false, true);
  vring_desc* t = Table(kBufOff + 0x10000);
  SetDesc(t, 0, Gpa(kBufOff + 0x100), 8, VRING_DESC_F_NEXT, 1);
  SetDesc(t, 1, Gpa(kBufOff + 0x200), 16, VRING_DESC_F_WRITE);
  SetDesc(5, Gpa(kBufOff), 4, VRING_DESC_F_NEXT, 6);
  // WRITE on the table descriptor itself is ignored.
  SetDesc(6, Gpa(kBufOff + 0x10000), 32, VRING_DESC_F_INDIRECT | VRING_DESC_F_WRITE);
  ASSERT_EQ(PopRaw(5), PopResult::kOk);
  ASSERT_EQ(chain_.readable.size(), 2u);
  EXPECT_EQ(chain_.readable[0].iov_base, Host(kBufOff));
  EXPECT_EQ(chain_.readable[1].iov_base, Host(kBufOff + 0x100));
  ASSERT_EQ(chain_.writable.size(), 1u);
  EXPECT_EQ(chain_.writable_bytes, 16u);
}

TEST_F(SplitQueueTest, ZeroLengthDescriptorsAreSkipped) {
  Init(8);
  SetDesc(0, Gpa(kBufOff), 0, VRING_DESC_F_NEXT, 1);
  SetDesc(1, Gpa(kBufOff), 4, VRING_DESC_F_NEXT, 2);
  SetDesc(2, 0xdeadbeef000, 0, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 3);  // unmapped but empty
  SetDesc(3, Gpa(kBufOff + 64), 4, VRING_DESC_F_WRITE);
  ASSERT_EQ(PopRaw(0), PopResult::kOk);
  EXPECT_EQ(chain_.readable.size(), 1u);
  EXPECT_EQ(chain_.writable.size(), 1u);
  EXPECT_EQ(chain_.readable_bytes + chain_.writable_bytes, 8u);
}

TEST_F(SplitQueueTest, BufferStraddlingRegionsBecomesTwoIovecs) {
  // Two regions adjacent in gpa but far apart in this process: the chain's buffer straddles.
  void* p = mmap(nullptr, 0x2000, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  uint8_t* extra = static_cast<uint8_t*>(p);
  std::vector<MemoryRegion> regions = {
      {kGpa, kMemSize, reinterpret_cast<uint64_t>(arena_), 0},
      {kGpa + kMemSize, 0x2000, reinterpret_cast<uint64_t>(extra), 0}};
  std::vector<uint8_t*> bases = {arena_, extra};
  auto mem = GuestMemory::FromMapped(regions, bases);
  ASSERT_TRUE(mem.ok());
  ASSERT_TRUE(driver_.Init(arena_, kGpa, 4, false).ok());
  ASSERT_TRUE(queue_.Configure(mem.value(), ConfigFor(4, false, false), 0).ok());
  Segment in[] = {{Gpa(kMemSize - 10), 20}};
  ASSERT_TRUE(driver_.Add({}, in).ok());
  driver_.Publish();
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  ASSERT_EQ(chain_.writable.size(), 2u);
  EXPECT_EQ(chain_.writable[0].iov_base, Host(kMemSize - 10));
  EXPECT_EQ(chain_.writable[0].iov_len, 10u);
  EXPECT_EQ(chain_.writable[1].iov_base, extra);
  EXPECT_EQ(chain_.writable[1].iov_len, 10u);
  // Past the second region: bad.
  Segment in2[] = {{Gpa(kMemSize + 0x2000 - 4), 5}};
  ASSERT_TRUE(driver_.Add({}, in2).ok());
  driver_.Publish();
  EXPECT_EQ(queue_.Pop(&chain_), PopResult::kBadChain);
  queue_.Reset();
  munmap(p, 0x2000);
}

// ---- Hostile chains: each is kBadChain, the queue keeps working. ----

TEST_F(SplitQueueTest, DirectLoopsAreBadChains) {
  Init(8);
  SetDesc(0, Gpa(kBufOff), 1, VRING_DESC_F_NEXT, 0);  // self loop
  ExpectBadChain(0);
  SetDesc(1, Gpa(kBufOff), 1, VRING_DESC_F_NEXT, 2);
  SetDesc(2, Gpa(kBufOff), 1, VRING_DESC_F_NEXT, 3);
  SetDesc(3, Gpa(kBufOff), 1, VRING_DESC_F_NEXT, 1);
  ExpectBadChain(1);
  // Zero-length descriptors in a loop cost no bytes but still end the walk.
  SetDesc(4, Gpa(kBufOff), 0, VRING_DESC_F_NEXT, 5);
  SetDesc(5, Gpa(kBufOff), 0, VRING_DESC_F_NEXT, 4);
  ExpectBadChain(4);
  // A chain using every descriptor exactly once is fine.
  for (uint16_t i = 0; i < 8; ++i) {
    SetDesc(i, Gpa(kBufOff), 1, i < 7 ? VRING_DESC_F_NEXT : 0, static_cast<uint16_t>(i + 1));
  }
  ASSERT_EQ(PopRaw(0), PopResult::kOk);
  EXPECT_EQ(chain_.readable_bytes, 8u);
}

TEST_F(SplitQueueTest, NextOutOfRangeIsBadChain) {
  Init(8);
  SetDesc(0, Gpa(kBufOff), 1, VRING_DESC_F_NEXT, 8);
  ExpectBadChain(0);
  SetDesc(0, Gpa(kBufOff), 1, VRING_DESC_F_NEXT, 0xffff);
  ExpectBadChain(0);
}

TEST_F(SplitQueueTest, AddressesOutsideMemoryAreBadChains) {
  Init(8);
  SetDesc(0, Gpa(0) - 1, 2, 0);  // starts just below memory
  ExpectBadChain(0);
  SetDesc(0, Gpa(kMemSize) - 4, 5, VRING_DESC_F_WRITE);  // runs one byte past the end
  ExpectBadChain(0);
  SetDesc(0, UINT64_MAX - 8, 0x100, 0);  // addr + len overflows
  ExpectBadChain(0);
  SetDesc(0, 0, 1, 0);
  ExpectBadChain(0);
  // The second descriptor is bad: nothing of the first leaks out.
  SetDesc(0, Gpa(kBufOff), 16, VRING_DESC_F_NEXT, 1);
  SetDesc(1, 0x1000, 16, VRING_DESC_F_WRITE);
  ExpectBadChain(0);
  SetDesc(0, Gpa(kMemSize) - 4, 4, VRING_DESC_F_WRITE);  // exactly the last bytes: fine
  EXPECT_EQ(PopRaw(0), PopResult::kOk);
}

TEST_F(SplitQueueTest, ReadableAfterWritableIsBadChain) {
  Init(8);
  SetDesc(0, Gpa(kBufOff), 4, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1);
  SetDesc(1, Gpa(kBufOff), 4, 0);
  ExpectBadChain(0);
  SetDesc(1, Gpa(kBufOff), 0, 0);  // even an empty one breaks the order
  ExpectBadChain(0);
}

TEST_F(SplitQueueTest, ChainBytesAreCapped) {
  // A large PROT_NONE reservation as a second region: translation never touches it.
  const size_t big = (1ull << 30) + (1ull << 29);
  void* p = mmap(nullptr, big, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  const uint64_t big_gpa = 0x100000000ull;
  std::vector<MemoryRegion> regions = {{kGpa, kMemSize, reinterpret_cast<uint64_t>(arena_), 0},
                                       {big_gpa, big, reinterpret_cast<uint64_t>(p), 0}};
  std::vector<uint8_t*> bases = {arena_, static_cast<uint8_t*>(p)};
  auto mem = GuestMemory::FromMapped(regions, bases);
  ASSERT_TRUE(mem.ok());
  ASSERT_TRUE(driver_.Init(arena_, kGpa, 4, false).ok());
  ASSERT_TRUE(queue_.Configure(mem.value(), ConfigFor(4, false, false), 0).ok());
  SetDesc(0, big_gpa, 0x30000000, VRING_DESC_F_WRITE);  // 768 MiB: allowed
  ASSERT_EQ(PopRaw(0), PopResult::kOk);
  EXPECT_EQ(chain_.writable_bytes, 0x30000000u);
  SetDesc(0, big_gpa, 0x30000000, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1);
  SetDesc(1, big_gpa + 0x30000000, 0x30000000, VRING_DESC_F_WRITE);  // 1.5 GiB in all
  ExpectBadChain(0);
  queue_.Reset();
  munmap(p, big);
}

TEST_F(SplitQueueTest, IndirectWithoutFeatureIsBadChain) {
  Init(8, false, /*indirect=*/false);
  SetDesc(Table(kBufOff + 0x10000), 0, Gpa(kBufOff), 4, 0);
  SetDesc(0, Gpa(kBufOff + 0x10000), 16, VRING_DESC_F_INDIRECT);
  ExpectBadChain(0);
}

TEST_F(SplitQueueTest, MalformedIndirectTablesAreBadChains) {
  Init(8, false, true);
  const size_t toff = kBufOff + 0x10000;
  vring_desc* t = Table(toff);
  SetDesc(t, 0, Gpa(kBufOff), 4, VRING_DESC_F_NEXT, 1);
  SetDesc(t, 1, Gpa(kBufOff), 4, 0);

  SetDesc(0, Gpa(toff), 32, VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT, 1);  // INDIRECT+NEXT
  SetDesc(1, Gpa(kBufOff), 4, 0);
  ExpectBadChain(0);
  SetDesc(0, Gpa(toff), 24, VRING_DESC_F_INDIRECT);  // not a multiple of 16
  ExpectBadChain(0);
  SetDesc(0, Gpa(toff), 0, VRING_DESC_F_INDIRECT);  // empty table
  ExpectBadChain(0);
  SetDesc(0, Gpa(kMemSize) - 16, 32, VRING_DESC_F_INDIRECT);  // table runs out of memory
  ExpectBadChain(0);
  SetDesc(0, Gpa(toff), 32, VRING_DESC_F_INDIRECT);  // the good one, for contrast
  ASSERT_EQ(PopRaw(0), PopResult::kOk);
  EXPECT_EQ(chain_.readable_bytes, 8u);

  // next beyond the table (the ring has 8 entries, the table only 2).
  SetDesc(t, 1, Gpa(kBufOff), 4, VRING_DESC_F_NEXT, 2);
  ExpectBadChain(0);
  // Loop inside the table.
  SetDesc(t, 1, Gpa(kBufOff), 4, VRING_DESC_F_NEXT, 0);
  ExpectBadChain(0);
  // Nested indirect.
  SetDesc(t, 1, Gpa(toff), 32, VRING_DESC_F_INDIRECT);
  ExpectBadChain(0);
  // Readable after writable inside the table.
  SetDesc(t, 0, Gpa(kBufOff), 4, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 1);
  SetDesc(t, 1, Gpa(kBufOff), 4, 0);
  ExpectBadChain(0);
  // Readable inside the table after a writable direct descriptor before it.
  SetDesc(t, 0, Gpa(kBufOff), 4, 0);
  SetDesc(2, Gpa(kBufOff), 4, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 3);
  SetDesc(3, Gpa(toff), 16, VRING_DESC_F_INDIRECT);
  ExpectBadChain(2);
}

TEST_F(SplitQueueTest, LargeIndirectTableLongerThanRingIsFine) {
  // The ring has 4 entries, the table 64: the loop bound is the table's, not the ring's.
  Init(4, false, true);
  const size_t toff = kBufOff + 0x10000;
  std::vector<Segment> out(64, Segment{Gpa(kBufOff), 2});
  ASSERT_TRUE(driver_.AddIndirect(Gpa(toff), Table(toff), out, {}).ok());
  driver_.Publish();
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  EXPECT_EQ(chain_.readable.size(), 64u);
  EXPECT_EQ(chain_.readable_bytes, 128u);
}

// ---- Ring-level corruption: the queue is broken. ----

TEST_F(SplitQueueTest, AvailIdxJumpBreaksQueue) {
  Init(8);
  driver_.SetAvailIdxRaw(8);  // exactly a full ring is possible
  EXPECT_EQ(queue_.AvailableCount(), 8u);
  EXPECT_FALSE(queue_.broken());
  driver_.SetAvailIdxRaw(9);
  EXPECT_EQ(queue_.AvailableCount(), 0u);
  EXPECT_TRUE(queue_.broken());
  EXPECT_EQ(queue_.Pop(&chain_), PopResult::kBroken);
  EXPECT_FALSE(queue_.EnableKicks());
  // Nothing is written to a broken ring.
  queue_.PushUsed(0, 0);
  EXPECT_FALSE(driver_.PopUsed().has_value());
  // Reconfiguring clears it.
  driver_.SetAvailIdxRaw(0);
  ASSERT_TRUE(queue_.Configure(mem_, ConfigFor(8, false, false), 0).ok());
  EXPECT_FALSE(queue_.broken());
  EXPECT_EQ(queue_.Pop(&chain_), PopResult::kEmpty);
}

TEST_F(SplitQueueTest, AvailIdxBehindBreaksQueueOnPop) {
  Init(8);
  driver_.SetAvailIdxRaw(0xffff);  // "moved backwards": 65535 chains ahead
  EXPECT_EQ(queue_.Pop(&chain_), PopResult::kBroken);
  EXPECT_TRUE(queue_.broken());
}

TEST_F(SplitQueueTest, HeadOutOfRangeBreaksQueue) {
  Init(8);
  SetDesc(0, Gpa(kBufOff), 1, 0);
  EXPECT_EQ(PopRaw(8), PopResult::kBroken);
  EXPECT_TRUE(queue_.broken());
  EXPECT_EQ(PopRaw(0), PopResult::kBroken);  // stays broken
}

// ---- Unpop, Configure, Remap ----

TEST_F(SplitQueueTest, UnpopReturnsTheSameChains) {
  Init(8);
  Segment in[] = {{Gpa(kBufOff), 4}};
  uint16_t heads[3];
  for (auto& h : heads) {
    auto r = driver_.Add({}, in);
    ASSERT_TRUE(r.ok());
    h = *r;
  }
  driver_.Publish();
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  EXPECT_EQ(chain_.head, heads[0]);
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  EXPECT_EQ(queue_.AvailableCount(), 0u);
  queue_.Unpop(2);
  EXPECT_EQ(queue_.last_avail_idx(), 1u);
  EXPECT_EQ(queue_.AvailableCount(), 2u);
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  EXPECT_EQ(chain_.head, heads[1]);
  queue_.Unpop();
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  EXPECT_EQ(chain_.head, heads[1]);
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  EXPECT_EQ(chain_.head, heads[2]);
  EXPECT_EQ(queue_.Pop(&chain_), PopResult::kEmpty);
}

TEST_F(SplitQueueTest, ConfigureValidates) {
  ASSERT_TRUE(driver_.Init(arena_, kGpa, 8, false).ok());
  auto bad = [&](SplitQueue::Config c, const std::shared_ptr<GuestMemory>& m) {
    Status st = queue_.Configure(m, c, 0);
    return !st.ok() && !queue_.configured();
  };
  SplitQueue::Config c = ConfigFor(8, false, false);
  EXPECT_TRUE(bad(c, nullptr));
  for (uint32_t size : {0u, 3u, 12u, 65536u, 1u << 31}) {
    SplitQueue::Config s = c;
    s.size = size;
    EXPECT_TRUE(bad(s, mem_)) << size;
  }
  SplitQueue::Config m = c;
  m.desc_addr += 8;
  EXPECT_TRUE(bad(m, mem_));
  m = c;
  m.avail_addr += 1;
  EXPECT_TRUE(bad(m, mem_));
  m = c;
  m.used_addr += 2;
  EXPECT_TRUE(bad(m, mem_));
  m = c;
  m.used_addr = reinterpret_cast<uint64_t>(arena_) + kMemSize - 64;  // ring runs off the end
  EXPECT_TRUE(bad(m, mem_));
  m = c;
  m.desc_addr = kGpa;  // a gpa, not a uva
  EXPECT_TRUE(bad(m, mem_));
  // With event_idx, the used ring needs 2 more bytes for avail_event.
  m = c;
  m.used_addr = reinterpret_cast<uint64_t>(arena_) + kMemSize - UsedRingBytes(8) + 2;
  EXPECT_FALSE(bad(m, mem_));
  m.event_idx = true;
  EXPECT_TRUE(bad(m, mem_));
  // Size 1 and the largest size are fine.
  c.size = 1;
  EXPECT_FALSE(bad(c, mem_));
  ASSERT_TRUE(driver_.Init(arena_, kGpa, kMaxQueueSize, true).ok());
  EXPECT_FALSE(bad(ConfigFor(kMaxQueueSize, true, true), mem_));
}

TEST_F(SplitQueueTest, ConfigureResumesFromRingAndBase) {
  ASSERT_TRUE(driver_.Init(arena_, kGpa, 8, false).ok());
  // Pretend a previous device instance used 5 chains and the driver made 6 available.
  Segment in[] = {{Gpa(kBufOff), 4}};
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(driver_.Add({}, in).ok());
  driver_.Publish();
  SplitQueue first;
  ASSERT_TRUE(first.Configure(mem_, ConfigFor(8, false, false), 0).ok());
  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(first.Pop(&chain_), PopResult::kOk);
    first.PushUsed(chain_.head, 0);
  }
  // New instance resumes at last_avail_idx 5 (SET_VRING_BASE) and reads used.idx = 5.
  ASSERT_TRUE(queue_.Configure(mem_, ConfigFor(8, false, false), first.last_avail_idx()).ok());
  EXPECT_EQ(queue_.AvailableCount(), 1u);
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  EXPECT_EQ(chain_.head, 5u);
  queue_.PushUsed(chain_.head, 0);
  int got = 0;
  while (driver_.PopUsed()) ++got;
  EXPECT_EQ(got, 6);  // the new push landed in slot 5, after the old ones
  EXPECT_EQ(driver_.free_descriptors(), 8u);
}

TEST_F(SplitQueueTest, RemapSwitchesToTheNewMapping) {
  // One memfd mapped twice: the driver writes through view A, the device starts on a table
  // over A and is remapped to a table over B, with the same uvas.
  constexpr size_t kSize = kMemSize;
  int fd = memfd_create("split_queue_test", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, kSize), 0);
  auto* a = static_cast<uint8_t*>(mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  auto* b = static_cast<uint8_t*>(mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  close(fd);
  ASSERT_NE(a, MAP_FAILED);
  ASSERT_NE(b, MAP_FAILED);
  const uint64_t uva = reinterpret_cast<uint64_t>(a);
  auto mem_a = MakeMemory(a, uva);
  auto mem_b = MakeMemory(b, uva);
  ASSERT_TRUE(driver_.Init(a, kGpa, 8, true).ok());
  ASSERT_TRUE(queue_.Configure(mem_a, ConfigFor(8, true, false), 0).ok());
  Segment in[] = {{Gpa(kBufOff), 4}};
  ASSERT_TRUE(driver_.Add({}, in).ok());
  ASSERT_TRUE(driver_.Add({}, in).ok());
  driver_.Publish();
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  EXPECT_EQ(chain_.writable[0].iov_base, a + kBufOff);

  ASSERT_TRUE(queue_.Remap(mem_b).ok());
  EXPECT_EQ(queue_.memory(), mem_b);
  mem_a.reset();  // the queue no longer needs the old table
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  EXPECT_EQ(chain_.writable[0].iov_base, b + kBufOff);
  queue_.PushUsed(0, 1);
  queue_.PushUsed(1, 2);
  EXPECT_TRUE(driver_.PopUsed().has_value());  // written through B, seen through A
  EXPECT_TRUE(driver_.PopUsed().has_value());

  // A table without the rings: the queue stops using them.
  std::vector<uint8_t> elsewhere(4096);
  std::vector<MemoryRegion> c_regions = {{kGpa, elsewhere.size(), 0x1000, 0}};
  std::vector<uint8_t*> c_bases = {elsewhere.data()};
  auto mem_c = GuestMemory::FromMapped(c_regions, c_bases).value();
  EXPECT_FALSE(queue_.Remap(mem_c).ok());
  EXPECT_FALSE(queue_.configured());
  EXPECT_EQ(queue_.Pop(&chain_), PopResult::kEmpty);
  EXPECT_EQ(queue_.last_avail_idx(), 2u);  // still there for GET_VRING_BASE
  queue_.Reset();
  munmap(a, kSize);
  munmap(b, kSize);
}

// ---- Notification suppression ----

TEST_F(SplitQueueTest, KickSuppressionWithFlags) {
  Init(8, /*event_idx=*/false);
  Segment in[] = {{Gpa(kBufOff), 4}};
  ASSERT_TRUE(driver_.Add({}, in).ok());
  EXPECT_TRUE(driver_.Publish());
  EXPECT_FALSE(driver_.Publish());  // nothing new: no kick
  queue_.DisableKicks();
  ASSERT_TRUE(driver_.Add({}, in).ok());
  EXPECT_FALSE(driver_.Publish());
  EXPECT_TRUE(queue_.EnableKicks());  // two chains are waiting
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  EXPECT_FALSE(queue_.EnableKicks());
  ASSERT_TRUE(driver_.Add({}, in).ok());
  EXPECT_TRUE(driver_.Publish());
}

TEST_F(SplitQueueTest, KickSuppressionWithEventIdx) {
  Init(8, /*event_idx=*/true);
  Segment in[] = {{Gpa(kBufOff), 4}};
  ASSERT_TRUE(driver_.Add({}, in).ok());
  EXPECT_TRUE(driver_.Publish());  // avail_event 0: the first chain kicks
  queue_.DisableKicks();
  ASSERT_TRUE(driver_.Add({}, in).ok());
  EXPECT_FALSE(driver_.Publish());  // avail_event stayed at 0: no kick for the second
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  EXPECT_TRUE(queue_.EnableKicks());  // one still waiting
  ASSERT_TRUE(driver_.Add({}, in).ok());
  EXPECT_FALSE(driver_.Publish());  // avail_event = 1, already passed: no kick
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  EXPECT_FALSE(queue_.EnableKicks());  // avail_event = 3
  ASSERT_TRUE(driver_.Add({}, in).ok());
  ASSERT_TRUE(driver_.Add({}, in).ok());
  EXPECT_TRUE(driver_.Publish());  // 3 -> 5 crosses avail_event
  // The flag is never used under EVENT_IDX.
  queue_.DisableKicks();
  // NOLINTNEXTLINE(performance-no-int-to-ptr): the ring address is a pointer in this process.
  EXPECT_EQ(le16toh(*reinterpret_cast<uint16_t*>(driver_.used_user_addr())), 0u);
}

TEST_F(SplitQueueTest, ConfigureEnablesKicksLeftDisabledByAPreviousDevice) {
  for (bool event_idx : {false, true}) {
    ASSERT_TRUE(driver_.Init(arena_, kGpa, 8, event_idx).ok());
    Segment in[] = {{Gpa(kBufOff), 4}};
    SplitQueue old_device;
    ASSERT_TRUE(old_device.Configure(mem_, ConfigFor(8, event_idx, false), 0).ok());
    old_device.DisableKicks();
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(driver_.Add({}, in).ok());
      driver_.Publish();
      ASSERT_EQ(old_device.Pop(&chain_), PopResult::kOk);
      old_device.PushUsed(chain_.head, 0);
    }
    ASSERT_TRUE(driver_.Add({}, in).ok());
    EXPECT_FALSE(driver_.Publish()) << event_idx;  // the old device is not listening
    ASSERT_EQ(old_device.Pop(&chain_), PopResult::kOk);
    old_device.PushUsed(chain_.head, 0);
    // The new instance resumes at 4 and must be kicked for the next chain.
    ASSERT_TRUE(queue_.Configure(mem_, ConfigFor(8, event_idx, false), 4).ok());
    ASSERT_TRUE(driver_.Add({}, in).ok());
    EXPECT_TRUE(driver_.Publish()) << event_idx;
    EXPECT_EQ(queue_.AvailableCount(), 1u);
    while (driver_.PopUsed()) {
    }
  }
}

class CallFd {
 public:
  CallFd() : fd_(EventFd::Create(true).value()) {}
  int get() const { return fd_.get(); }
  bool Signalled() const { return fd_.Drain(); }

 private:
  EventFd fd_;
};

TEST_F(SplitQueueTest, CallSuppressionWithFlags) {
  Init(8, false);
  CallFd call;
  queue_.SetCallFd(call.get());
  Segment in[] = {{Gpa(kBufOff), 4}};
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(driver_.Add({}, in).ok());
  driver_.Publish();

  queue_.Notify();  // nothing pushed yet
  EXPECT_FALSE(call.Signalled());
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  queue_.PushUsed(chain_.head, 0);
  queue_.Notify();
  EXPECT_TRUE(call.Signalled());
  queue_.Notify();  // nothing new since
  EXPECT_FALSE(call.Signalled());

  driver_.DisableInterrupts();
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  queue_.PushUsed(chain_.head, 0);
  queue_.Notify();
  EXPECT_FALSE(call.Signalled());
  EXPECT_EQ(queue_.notifications_sent(), 1u);

  EXPECT_TRUE(driver_.EnableInterrupts());  // one used element arrived meanwhile
  while (driver_.PopUsed()) {
  }
  EXPECT_FALSE(driver_.EnableInterrupts());
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  queue_.PushUsed(chain_.head, 0);
  queue_.Notify();
  EXPECT_TRUE(call.Signalled());
  EXPECT_EQ(queue_.notifications_sent(), 2u);
}

TEST_F(SplitQueueTest, CallSuppressionWithEventIdx) {
  Init(8, true);
  CallFd call;
  queue_.SetCallFd(call.get());
  Segment in[] = {{Gpa(kBufOff), 4}};
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(driver_.Add({}, in).ok());
  driver_.Publish();
  EXPECT_FALSE(driver_.EnableInterrupts());  // used_event = 0

  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  queue_.PushUsed(chain_.head, 0);
  queue_.Notify();  // used 0 -> 1 crosses used_event 0
  EXPECT_TRUE(call.Signalled());

  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  queue_.PushUsed(chain_.head, 0);
  queue_.Notify();  // 1 -> 2 does not: the driver has not re-armed
  EXPECT_FALSE(call.Signalled());

  // The avail flag is ignored under EVENT_IDX: re-arming goes through used_event.
  EXPECT_TRUE(driver_.EnableInterrupts());  // two already there
  ASSERT_TRUE(driver_.PopUsed().has_value());
  ASSERT_TRUE(driver_.PopUsed().has_value());
  EXPECT_FALSE(driver_.EnableInterrupts());  // used_event = 2
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  queue_.PushUsed(chain_.head, 0);
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  queue_.PushUsed(chain_.head, 0);
  queue_.Notify();  // 2 -> 4 crosses 2: one signal for the batch
  EXPECT_TRUE(call.Signalled());

  driver_.DisableInterrupts();
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  queue_.PushUsed(chain_.head, 0);
  queue_.Notify();
  EXPECT_FALSE(call.Signalled());
  EXPECT_EQ(queue_.notifications_sent(), 2u);
}

TEST_F(SplitQueueTest, CallFdSurvivesConfigureButNotReset) {
  CallFd call;
  queue_.SetCallFd(call.get());  // SET_VRING_CALL before the addresses
  Init(4);
  Segment in[] = {{Gpa(kBufOff), 4}};
  ASSERT_TRUE(driver_.Add({}, in).ok());
  driver_.Publish();
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  queue_.PushUsed(chain_.head, 0);
  queue_.Notify();
  EXPECT_TRUE(call.Signalled());
  queue_.Reset();
  EXPECT_FALSE(queue_.configured());
  ASSERT_TRUE(queue_.Configure(mem_, ConfigFor(4, false, false), 1).ok());
  ASSERT_TRUE(driver_.Add({}, in).ok());
  driver_.Publish();
  ASSERT_EQ(queue_.Pop(&chain_), PopResult::kOk);
  queue_.PushUsed(chain_.head, 0);
  queue_.Notify();
  EXPECT_FALSE(call.Signalled());
  EXPECT_EQ(queue_.notifications_sent(), 1u);  // asked for, but no fd to write
}

// Driver and device on two threads: data written by each side is seen by the other in order
// (exercises the fences; a failure shows as a wrong payload or a lost chain).
TEST_F(SplitQueueTest, ConcurrentDriverAndDevice) {
  Init(64, true);
  constexpr uint32_t kChains = 50000;
  std::atomic<bool> failed{false};
  std::thread device([&] {
    DescChain c;
    uint32_t seen = 0;
    while (seen < kChains && !failed) {
      PopResult r = queue_.Pop(&c);
      if (r == PopResult::kEmpty) {
        std::this_thread::yield();
        continue;
      }
      if (r != PopResult::kOk || c.readable.size() != 1 || c.writable.size() != 1) {
        failed = true;
        break;
      }
      uint32_t v;
      std::memcpy(&v, c.readable[0].iov_base, 4);
      if (v != seen) {
        failed = true;
        break;
      }
      v = ~v;
      std::memcpy(c.writable[0].iov_base, &v, 4);
      queue_.PushUsed(c.head, 4);
      queue_.Notify();
      ++seen;
    }
  });
  uint32_t sent = 0, received = 0;
  std::vector<uint32_t> value_of_head(64);
  while (received < kChains && !failed) {
    bool progress = false;
    while (sent < kChains && driver_.free_descriptors() >= 2) {
      // Each chain has its own 8-byte slot: 4 bytes out, 4 bytes in.
      size_t off = kBufOff + 8 * (sent % 64);
      std::memcpy(Host(off), &sent, 4);
      Segment out[] = {{Gpa(off), 4}};
      Segment in[] = {{Gpa(off + 4), 4}};
      auto h = driver_.Add(out, in);
      if (!h.ok()) {
        failed = true;
        break;
      }
      value_of_head[*h] = sent;
      ++sent;
      driver_.Publish();
      progress = true;
    }
    while (auto u = driver_.PopUsed()) {
      uint32_t expect = ~value_of_head[u->head];
      uint32_t got;
      std::memcpy(&got, Host(kBufOff + 8 * (value_of_head[u->head] % 64) + 4), 4);
      if (got != expect || u->len != 4) failed = true;
      ++received;
      progress = true;
    }
    if (!progress) std::this_thread::yield();
  }
  device.join();
  EXPECT_FALSE(failed);
  EXPECT_EQ(received, kChains);
}

}  // namespace
}  // namespace vsockd::virtio
