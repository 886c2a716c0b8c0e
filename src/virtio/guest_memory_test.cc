#include "virtio/guest_memory.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <vector>

namespace vsockd::virtio {
namespace {

// Host backing for FromMapped tests: plain heap buffers are enough, nothing maps them.
struct Arena {
  explicit Arena(size_t n) : bytes(n) {}
  uint8_t* at(size_t off) { return bytes.data() + off; }
  std::vector<uint8_t> bytes;
};

std::shared_ptr<GuestMemory> MakeMem(const std::vector<MemoryRegion>& regions,
                                     const std::vector<uint8_t*>& bases) {
  auto r = GuestMemory::FromMapped(regions, bases);
  EXPECT_TRUE(r.ok()) << r.error().ToString();
  return r.ok() ? r.value() : nullptr;
}

TEST(GuestMemoryTest, SingleRegionBounds) {
  Arena a(0x1000);
  auto mem = MakeMem({{0x10000, 0x1000, 0x7f0000000000, 0}}, {a.at(0)});
  ASSERT_NE(mem, nullptr);
  EXPECT_EQ(mem->region_count(), 1u);
  EXPECT_EQ(mem->GpaToHost(0x10000, 0x1000), a.at(0));
  EXPECT_EQ(mem->GpaToHost(0x10ff0, 0x10), a.at(0xff0));
  EXPECT_EQ(mem->GpaToHost(0x10ff0, 0x11), nullptr);  // one byte past the end
  EXPECT_EQ(mem->GpaToHost(0x11000, 0), nullptr);     // first byte after the region
  EXPECT_EQ(mem->GpaToHost(0xffff, 1), nullptr);      // just below
  EXPECT_EQ(mem->GpaToHost(0x10000, 0), a.at(0));
  EXPECT_EQ(mem->GpaToHost(0, 1), nullptr);
  EXPECT_EQ(mem->GpaToHost(UINT64_MAX, 1), nullptr);
  EXPECT_EQ(mem->GpaToHost(0x10010, UINT64_MAX), nullptr);  // len overflow

  EXPECT_EQ(mem->UvaToHost(0x7f0000000000, 0x1000), a.at(0));
  EXPECT_EQ(mem->UvaToHost(0x7f0000000800, 0x800), a.at(0x800));
  EXPECT_EQ(mem->UvaToHost(0x7f0000000800, 0x801), nullptr);
  EXPECT_EQ(mem->UvaToHost(0x10000, 1), nullptr);  // a gpa is not a uva
  EXPECT_EQ(mem->UvaToHost(0x7effffffffff, 2), nullptr);
}

TEST(GuestMemoryTest, IovecsSingleRegion) {
  Arena a(0x1000);
  auto mem = MakeMem({{0x10000, 0x1000, 0x1000000, 0}}, {a.at(0)});
  std::vector<iovec> iov;
  ASSERT_TRUE(mem->GpaToIovecs(0x10100, 0x20, &iov).ok());
  ASSERT_EQ(iov.size(), 1u);
  EXPECT_EQ(iov[0].iov_base, a.at(0x100));
  EXPECT_EQ(iov[0].iov_len, 0x20u);

  // Appends rather than replaces.
  ASSERT_TRUE(mem->GpaToIovecs(0x10000, 0x1000, &iov).ok());
  EXPECT_EQ(iov.size(), 2u);
}

TEST(GuestMemoryTest, ZeroLengthIsOkWithoutIovecEvenOutside) {
  Arena a(0x1000);
  auto mem = MakeMem({{0x10000, 0x1000, 0x1000000, 0}}, {a.at(0)});
  std::vector<iovec> iov;
  EXPECT_TRUE(mem->GpaToIovecs(0x10000, 0, &iov).ok());
  EXPECT_TRUE(mem->GpaToIovecs(0xdead0000, 0, &iov).ok());
  EXPECT_TRUE(iov.empty());
}

TEST(GuestMemoryTest, StraddlingAdjacentRegionsGivesSeveralIovecs) {
  // Three regions adjacent in gpa but with unrelated host bases and uvas (as q35 splits one
  // memfd), listed out of order.
  Arena a(0x3000);
  std::vector<MemoryRegion> regions = {
      {0x3000, 0x1000, 0x900000, 0},
      {0x1000, 0x1000, 0x500000, 0},
      {0x2000, 0x1000, 0x700000, 0},
  };
  auto mem = MakeMem(regions, {a.at(0x2000), a.at(0), a.at(0x1000)});
  ASSERT_NE(mem, nullptr);
  std::vector<iovec> iov;
  ASSERT_TRUE(mem->GpaToIovecs(0x1f00, 0x1200, &iov).ok());
  ASSERT_EQ(iov.size(), 3u);
  EXPECT_EQ(iov[0].iov_base, a.at(0xf00));
  EXPECT_EQ(iov[0].iov_len, 0x100u);
  EXPECT_EQ(iov[1].iov_base, a.at(0x1000));
  EXPECT_EQ(iov[1].iov_len, 0x1000u);
  EXPECT_EQ(iov[2].iov_base, a.at(0x2000));
  EXPECT_EQ(iov[2].iov_len, 0x100u);
  // A single pointer cannot describe a straddling range.
  EXPECT_EQ(mem->GpaToHost(0x1f00, 0x200), nullptr);
  EXPECT_EQ(mem->GpaToHost(0x1f00, 0x100), a.at(0xf00));
  // Whole span exactly, and one byte more.
  iov.clear();
  EXPECT_TRUE(mem->GpaToIovecs(0x1000, 0x3000, &iov).ok());
  EXPECT_EQ(iov.size(), 3u);
  iov.clear();
  EXPECT_EQ(mem->GpaToIovecs(0x1000, 0x3001, &iov).error().code, EFAULT);
  EXPECT_TRUE(iov.empty());
  // Uva lookups go through the uva order, not the gpa order.
  EXPECT_EQ(mem->UvaToHost(0x900010, 4), a.at(0x2010));
  EXPECT_EQ(mem->UvaToHost(0x500ffc, 4), a.at(0xffc));
  EXPECT_EQ(mem->UvaToHost(0x500ffc, 8), nullptr);  // uva space is not contiguous here
}

TEST(GuestMemoryTest, GapFailsWithEfaultAndLeavesOutputUntouched) {
  Arena a(0x2000);
  auto mem = MakeMem({{0x1000, 0x1000, 0x100000, 0}, {0x3000, 0x1000, 0x200000, 0}},
                     {a.at(0), a.at(0x1000)});
  std::vector<iovec> iov = {iovec{nullptr, 7}};
  Status st = mem->GpaToIovecs(0x1f00, 0x1200, &iov);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, EFAULT);
  ASSERT_EQ(iov.size(), 1u);  // the partial first chunk was rolled back
  EXPECT_EQ(iov[0].iov_len, 7u);
  EXPECT_EQ(mem->GpaToIovecs(0x2000, 1, &iov).error().code, EFAULT);           // in the gap
  EXPECT_EQ(mem->GpaToIovecs(0x500, 1, &iov).error().code, EFAULT);            // below everything
  EXPECT_EQ(mem->GpaToIovecs(0x4000, 1, &iov).error().code, EFAULT);           // above everything
  EXPECT_EQ(mem->GpaToIovecs(UINT64_MAX - 4, 16, &iov).error().code, EFAULT);  // overflow
  EXPECT_EQ(mem->GpaToIovecs(0x1000, UINT64_MAX, &iov).error().code, EFAULT);
}

TEST(GuestMemoryTest, RejectsBadTables) {
  Arena a(0x4000);
  auto bad = [&](std::vector<MemoryRegion> regions) {
    std::vector<uint8_t*> bases(regions.size(), a.at(0));
    return !GuestMemory::FromMapped(regions, bases).ok();
  };
  EXPECT_TRUE(bad({{0x1000, 0, 0x100000, 0}}));                       // zero size
  EXPECT_TRUE(bad({{UINT64_MAX - 0xfff, 0x1000, 0x100000, 0}}));      // gpa end = 2^64
  EXPECT_TRUE(bad({{0x1000, 0x1000, UINT64_MAX - 0x10, 0}}));         // uva overflow
  EXPECT_TRUE(bad({{0x1000, 0x1000, 0x100000, UINT64_MAX - 0x10}}));  // offset overflow
  EXPECT_TRUE(bad({{0x1000, 0x2000, 0x100000, 0}, {0x2000, 0x1000, 0x900000, 0}}));  // gpa
  EXPECT_TRUE(bad({{0x1000, 0x1000, 0x100000, 0}, {0x8000, 0x1000, 0x100fff, 0}}));  // uva
  EXPECT_TRUE(bad({{0x1000, 0x1000, 0x100000, 0}, {0x1000, 0x1000, 0x200000, 0}}));  // same
  // Just-fitting cases are fine.
  EXPECT_FALSE(bad({{UINT64_MAX - 0x1000, 0x1000, 0x100000, 0}}));
  EXPECT_FALSE(bad({{0x1000, 0x1000, 0x100000, 0}, {0x2000, 0x1000, 0x101000, 0}}));
  EXPECT_FALSE(bad({}));  // an empty table translates nothing, but is a table

  // Counts: bases must match, at most kMaxRegions.
  std::vector<MemoryRegion> one = {{0x1000, 0x1000, 0x100000, 0}};
  std::vector<uint8_t*> none;
  EXPECT_FALSE(GuestMemory::FromMapped(one, none).ok());
  std::vector<uint8_t*> null_base = {nullptr};
  EXPECT_FALSE(GuestMemory::FromMapped(one, null_base).ok());
  std::vector<MemoryRegion> many;
  for (uint64_t i = 0; i <= GuestMemory::kMaxRegions; ++i) {
    many.push_back({i * 0x1000, 0x1000, 0x100000 + i * 0x1000, 0});
  }
  EXPECT_TRUE(bad(many));
  many.pop_back();
  EXPECT_FALSE(bad(many));
}

TEST(GuestMemoryTest, ThirtyTwoRegionsAllFound) {
  Arena a(32 * 0x100);
  std::vector<MemoryRegion> regions;
  std::vector<uint8_t*> bases;
  // Descending gpa, ascending uva, gaps between regions in both spaces.
  for (uint64_t i = 0; i < 32; ++i) {
    regions.push_back({(32 - i) * 0x10000, 0x100, 0x40000000 + i * 0x1000, 0});
    bases.push_back(a.at(i * 0x100));
  }
  auto mem = MakeMem(regions, bases);
  ASSERT_NE(mem, nullptr);
  for (uint64_t i = 0; i < 32; ++i) {
    EXPECT_EQ(mem->GpaToHost((32 - i) * 0x10000 + 0x80, 0x80), a.at(i * 0x100 + 0x80));
    EXPECT_EQ(mem->GpaToHost((32 - i) * 0x10000 + 0x100, 1), nullptr);
    EXPECT_EQ(mem->UvaToHost(0x40000000 + i * 0x1000 + 0xff, 1), a.at(i * 0x100 + 0xff));
    EXPECT_EQ(mem->UvaToHost(0x40000000 + i * 0x1000 + 0x100, 1), nullptr);
  }
}

int MakeMemfd(size_t size) {
  int fd = memfd_create("guest_memory_test", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, static_cast<off_t>(size)) != 0) return -1;
  return fd;
}

TEST(GuestMemoryTest, MapsSharedRegionsWithUnalignedOffsetsAndClosesFds) {
  constexpr size_t kSize = 64 * 1024;
  int fd = MakeMemfd(kSize);
  ASSERT_GE(fd, 0);
  int fd2 = dup(fd);
  ASSERT_GE(fd2, 0);
  int check = dup(fd);  // ours, to look at the file independently
  ASSERT_GE(check, 0);

  // One memfd as two regions; the second starts at an odd, unaligned offset.
  std::vector<MemoryRegion> regions = {
      {0x0, 0x8000, 0x7f0000000000, 0},
      {0x100000, 0x1000, 0x7f0000100000, 0x8123},
  };
  std::vector<Fd> fds;
  fds.emplace_back(fd);
  fds.emplace_back(fd2);
  auto r = GuestMemory::Map(regions, std::move(fds));
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  auto mem = r.value();
  // The fds were closed after mapping.
  EXPECT_EQ(fcntl(fd, F_GETFD), -1);
  EXPECT_EQ(fcntl(fd2, F_GETFD), -1);

  uint8_t* p = mem->GpaToHost(0x100010, 4);
  ASSERT_NE(p, nullptr);
  const uint8_t abcd[4] = {'a', 'b', 'c', 'd'};
  std::memcpy(p, abcd, sizeof abcd);
  char buf[4] = {};
  ASSERT_EQ(pread(check, buf, 4, 0x8123 + 0x10), 4);
  EXPECT_EQ(std::memcmp(buf, "abcd", 4), 0);  // MAP_SHARED, offset applied by us

  ASSERT_EQ(pwrite(check, "wxyz", 4, 0x100), 4);
  uint8_t* q = mem->UvaToHost(0x7f0000000100, 4);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(std::memcmp(q, "wxyz", 4), 0);
  close(check);
}

TEST(GuestMemoryTest, MapRejectsMismatchedOrInvalidFds) {
  std::vector<MemoryRegion> regions = {{0x0, 0x1000, 0x100000, 0}};
  EXPECT_FALSE(GuestMemory::Map(regions, {}).ok());
  std::vector<Fd> fds;
  fds.emplace_back(-1);
  EXPECT_FALSE(GuestMemory::Map(regions, std::move(fds)).ok());
  // An fd that cannot be mapped.
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  std::vector<Fd> pfds;
  pfds.emplace_back(pipefd[0]);
  EXPECT_FALSE(GuestMemory::Map(regions, std::move(pfds)).ok());
  close(pipefd[1]);
}

}  // namespace
}  // namespace vsockd::virtio
