#include "virtio/guest_memory.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>

namespace vsockd::virtio {

namespace {

// End of [start, start + size) as an exclusive bound; false if it does not fit in u64.
bool RangeEnd(uint64_t start, uint64_t size, uint64_t* end) {
  return !__builtin_add_overflow(start, size, end);
}

}  // namespace

Status GuestMemory::Validate(std::span<const MemoryRegion> regions) {
  if (regions.size() > kMaxRegions) {
    return MakeError(E2BIG, "memory table has {} regions (max {})", regions.size(), kMaxRegions);
  }
  for (size_t i = 0; i < regions.size(); ++i) {
    const MemoryRegion& r = regions[i];
    uint64_t end;
    if (r.memory_size == 0) return MakeError(EINVAL, "memory region {} has size 0", i);
    if (!RangeEnd(r.guest_phys_addr, r.memory_size, &end)) {
      return MakeError(EINVAL, "memory region {}: gpa {:#x} + size {:#x} overflows", i,
                       r.guest_phys_addr, r.memory_size);
    }
    if (!RangeEnd(r.userspace_addr, r.memory_size, &end)) {
      return MakeError(EINVAL, "memory region {}: uva {:#x} + size {:#x} overflows", i,
                       r.userspace_addr, r.memory_size);
    }
    if (!RangeEnd(r.mmap_offset, r.memory_size, &end) || end > SIZE_MAX) {
      return MakeError(EINVAL, "memory region {}: mmap_offset {:#x} + size {:#x} overflows", i,
                       r.mmap_offset, r.memory_size);
    }
  }
  // Overlaps: sort by each address space and compare neighbours (ends cannot overflow now).
  std::vector<const MemoryRegion*> sorted;
  sorted.reserve(regions.size());
  for (const MemoryRegion& r : regions) sorted.push_back(&r);
  std::sort(sorted.begin(), sorted.end(),
            [](auto* a, auto* b) { return a->guest_phys_addr < b->guest_phys_addr; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i - 1]->guest_phys_addr + sorted[i - 1]->memory_size > sorted[i]->guest_phys_addr) {
      return MakeError(EINVAL, "memory regions overlap in guest-physical space at {:#x}",
                       sorted[i]->guest_phys_addr);
    }
  }
  std::sort(sorted.begin(), sorted.end(),
            [](auto* a, auto* b) { return a->userspace_addr < b->userspace_addr; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i - 1]->userspace_addr + sorted[i - 1]->memory_size > sorted[i]->userspace_addr) {
      return MakeError(EINVAL, "memory regions overlap in frontend-virtual space at {:#x}",
                       sorted[i]->userspace_addr);
    }
  }
  return OkStatus();
}

Result<std::shared_ptr<GuestMemory>> GuestMemory::Map(std::span<const MemoryRegion> regions,
                                                      std::vector<Fd> fds) {
  if (fds.size() != regions.size()) {
    return MakeError(EINVAL, "memory table has {} regions but {} fds", regions.size(), fds.size());
  }
  VSOCKD_RETURN_IF_ERROR(Validate(regions));
  std::shared_ptr<GuestMemory> mem(new GuestMemory());
  mem->regions_.reserve(regions.size());
  for (size_t i = 0; i < regions.size(); ++i) {
    const MemoryRegion& r = regions[i];
    if (!fds[i].valid()) return MakeError(EBADF, "memory region {} has no fd", i);
    // Map from offset 0 and add mmap_offset ourselves: the offset need not be page aligned.
    size_t map_len = static_cast<size_t>(r.memory_size + r.mmap_offset);
    void* base = ::mmap(nullptr, map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
                        fds[i].get(), 0);
    if (base == MAP_FAILED) {
      // Regions mapped so far are unmapped by ~GuestMemory.
      return ErrnoError("mmap memory region {} (gpa {:#x}, size {:#x}, offset {:#x})", i,
                        r.guest_phys_addr, r.memory_size, r.mmap_offset);
    }
    Mapped m;
    m.region = r;
    m.host = static_cast<uint8_t*>(base) + r.mmap_offset;
    m.map_base = base;
    m.map_len = map_len;
    mem->regions_.push_back(m);
  }
  fds.clear();  // the mappings keep the memory; the fds are no longer needed
  std::sort(mem->regions_.begin(), mem->regions_.end(), [](const Mapped& a, const Mapped& b) {
    return a.region.guest_phys_addr < b.region.guest_phys_addr;
  });
  mem->by_uva_.resize(mem->regions_.size());
  for (uint32_t i = 0; i < mem->by_uva_.size(); ++i) mem->by_uva_[i] = i;
  std::sort(mem->by_uva_.begin(), mem->by_uva_.end(), [&](uint32_t a, uint32_t b) {
    return mem->regions_[a].region.userspace_addr < mem->regions_[b].region.userspace_addr;
  });
  return mem;
}

Result<std::shared_ptr<GuestMemory>> GuestMemory::FromMapped(std::span<const MemoryRegion> regions,
                                                             std::span<uint8_t* const> host_bases) {
  if (host_bases.size() != regions.size()) {
    return MakeError(EINVAL, "memory table has {} regions but {} host bases", regions.size(),
                     host_bases.size());
  }
  VSOCKD_RETURN_IF_ERROR(Validate(regions));
  std::shared_ptr<GuestMemory> mem(new GuestMemory());
  for (size_t i = 0; i < regions.size(); ++i) {
    uintptr_t end;
    if (host_bases[i] == nullptr ||
        __builtin_add_overflow(reinterpret_cast<uintptr_t>(host_bases[i]), regions[i].memory_size,
                               &end)) {
      return MakeError(EINVAL, "memory region {}: bad host base", i);
    }
    Mapped m;
    m.region = regions[i];
    m.host = host_bases[i];
    mem->regions_.push_back(m);
  }
  std::sort(mem->regions_.begin(), mem->regions_.end(), [](const Mapped& a, const Mapped& b) {
    return a.region.guest_phys_addr < b.region.guest_phys_addr;
  });
  mem->by_uva_.resize(mem->regions_.size());
  for (uint32_t i = 0; i < mem->by_uva_.size(); ++i) mem->by_uva_[i] = i;
  std::sort(mem->by_uva_.begin(), mem->by_uva_.end(), [&](uint32_t a, uint32_t b) {
    return mem->regions_[a].region.userspace_addr < mem->regions_[b].region.userspace_addr;
  });
  return mem;
}

GuestMemory::~GuestMemory() {
  for (const Mapped& m : regions_) {
    if (m.map_base != nullptr) ::munmap(m.map_base, m.map_len);
  }
}

const GuestMemory::Mapped* GuestMemory::FindGpa(uint64_t gpa) const {
  // First region starting after gpa; the candidate is the one before it.
  auto it =
      std::upper_bound(regions_.begin(), regions_.end(), gpa,
                       [](uint64_t a, const Mapped& m) { return a < m.region.guest_phys_addr; });
  if (it == regions_.begin()) return nullptr;
  const Mapped* m = &*(it - 1);
  if (gpa - m->region.guest_phys_addr >= m->region.memory_size) return nullptr;
  return m;
}

const GuestMemory::Mapped* GuestMemory::FindUva(uint64_t uva) const {
  auto it = std::upper_bound(by_uva_.begin(), by_uva_.end(), uva, [this](uint64_t a, uint32_t i) {
    return a < regions_[i].region.userspace_addr;
  });
  if (it == by_uva_.begin()) return nullptr;
  const Mapped* m = &regions_[*(it - 1)];
  if (uva - m->region.userspace_addr >= m->region.memory_size) return nullptr;
  return m;
}

uint8_t* GuestMemory::GpaToHost(uint64_t gpa, uint64_t len) const {
  const Mapped* m = FindGpa(gpa);
  if (m == nullptr) return nullptr;
  uint64_t off = gpa - m->region.guest_phys_addr;
  if (len > m->region.memory_size - off) return nullptr;
  return m->host + off;
}

uint8_t* GuestMemory::UvaToHost(uint64_t uva, uint64_t len) const {
  const Mapped* m = FindUva(uva);
  if (m == nullptr) return nullptr;
  uint64_t off = uva - m->region.userspace_addr;
  if (len > m->region.memory_size - off) return nullptr;
  return m->host + off;
}

Status GuestMemory::GpaToIovecs(uint64_t gpa, uint64_t len, std::vector<iovec>* out) const {
  if (len == 0) return OkStatus();
  uint64_t end;
  if (!RangeEnd(gpa, len, &end)) {
    return MakeError(EFAULT, "guest range {:#x}+{:#x} overflows", gpa, len);
  }
  const size_t original = out->size();
  uint64_t cur = gpa;
  uint64_t left = len;
  while (left > 0) {
    const Mapped* m = FindGpa(cur);
    if (m == nullptr) {
      out->resize(original);
      return MakeError(EFAULT, "guest range {:#x}+{:#x}: {:#x} is not in guest memory", gpa, len,
                       cur);
    }
    uint64_t off = cur - m->region.guest_phys_addr;
    uint64_t chunk = std::min(left, m->region.memory_size - off);
    out->push_back(iovec{m->host + off, static_cast<size_t>(chunk)});
    cur += chunk;
    left -= chunk;
  }
  return OkStatus();
}

}  // namespace vsockd::virtio
