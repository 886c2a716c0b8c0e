// GuestMemory: the frontend's memory table, mapped into this process, with bounds-checked
// translation of guest-physical addresses (descriptor buffers) and frontend-virtual
// addresses (ring locations from VHOST_USER_SET_VRING_ADDR).
//
// Callers: the vhost-user backend builds one per SET_MEM_TABLE; SplitQueue translates through
// it; vguest builds one over its own memfd. Threading: immutable after creation; share it
// with std::shared_ptr so a queue can keep the old table alive until it switches.
//
// Every translation validates [addr, addr+len) against the regions, with overflow checks.
// A range that straddles two regions that are adjacent in both address spaces is returned as
// several iovecs (q35 splits one memfd into several regions).
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "base/fd.h"
#include "base/result.h"

namespace vsockd::virtio {

// One VHOST_USER_SET_MEM_TABLE region (fields verbatim from the protocol).
struct MemoryRegion {
  uint64_t guest_phys_addr = 0;
  uint64_t memory_size = 0;
  uint64_t userspace_addr = 0;  // frontend's virtual address of the region
  uint64_t mmap_offset = 0;     // offset of the region within its fd
};

class GuestMemory {
 public:
  // Maps each region from its fd (fds[i] belongs to regions[i]); the fds are closed after
  // mapping. Fails on overlapping regions, zero sizes, overflowing ranges or mmap errors.
  static Result<std::shared_ptr<GuestMemory>> Map(std::span<const MemoryRegion> regions,
                                                  std::vector<Fd> fds);
  // Describes memory already mapped in this process (vguest, tests): region i starts at
  // host_bases[i]. Nothing is unmapped on destruction.
  static Result<std::shared_ptr<GuestMemory>> FromMapped(std::span<const MemoryRegion> regions,
                                                         std::span<uint8_t* const> host_bases);
  ~GuestMemory();
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;

  // Guest-physical range -> host pointer, only if it lies within one region; else nullptr.
  uint8_t* GpaToHost(uint64_t gpa, uint64_t len) const;
  // Guest-physical range -> iovecs appended to *out (may span adjacent regions).
  // Fails with EFAULT if any byte is outside guest memory.
  Status GpaToIovecs(uint64_t gpa, uint64_t len, std::vector<iovec>* out) const;
  // Frontend-virtual range -> host pointer within one region, else nullptr.
  uint8_t* UvaToHost(uint64_t uva, uint64_t len) const;

  size_t region_count() const { return regions_.size(); }
  // The largest table accepted (VHOST_USER_MAX_RAM_SLOTS in QEMU is 32; 8 without
  // CONFIGURE_MEM_SLOTS).
  static constexpr size_t kMaxRegions = 32;

 private:
  struct Mapped {
    MemoryRegion region;
    uint8_t* host = nullptr;   // start of the region (mmap base + mmap_offset)
    void* map_base = nullptr;  // what to munmap (nullptr when not owned)
    size_t map_len = 0;
  };
  GuestMemory() = default;
  // Validates the table (sizes, overflows, overlaps, count) and fills regions_/by_uva_ with
  // host pointers left null; the callers then fill in host/map_base.
  static Status Validate(std::span<const MemoryRegion> regions);
  // Region containing gpa (resp. uva), or nullptr. Binary search: the table is small and
  // immutable, and these run for every descriptor.
  const Mapped* FindGpa(uint64_t gpa) const;
  const Mapped* FindUva(uint64_t uva) const;

  std::vector<Mapped> regions_;   // sorted by guest_phys_addr
  std::vector<uint32_t> by_uva_;  // indices into regions_, sorted by userspace_addr
};

}  // namespace vsockd::virtio
