#include "vhost_user/session_state.h"

#include <algorithm>

#include "base/byte_codec.h"

namespace vsockd::vhost_user {
namespace {

// "VSKS", then a version: a new process of another vsockd version may read the state of an
// older one (an upgrade), so the layout only ever grows behind a new version.
constexpr uint32_t kMagic = 0x534b5356;
constexpr uint32_t kVersion = 1;
// More vrings than any vhost-user index can name (8 bits), more regions than the protocol
// carries in one SET_MEM_TABLE.
constexpr uint32_t kMaxRings = VHOST_USER_VRING_IDX_MASK + 1;
constexpr uint32_t kMaxRegions = VHOST_MEMORY_BASELINE_NREGIONS;

// A ring's descriptor index as encoded: 0 for none, else index + 1.
uint32_t EncodeFd(int fd) { return fd < 0 ? 0 : static_cast<uint32_t>(fd) + 1; }

}  // namespace

size_t SessionState::fd_count() const {
  size_t n = regions.size();
  for (const Ring& r : rings) {
    for (int fd : {r.kick, r.call, r.err}) {
      if (fd >= 0) n = std::max(n, static_cast<size_t>(fd) + 1);
    }
  }
  return n;
}

std::vector<uint8_t> SessionState::Encode() const {
  ByteWriter w;
  w.Put(kMagic);
  w.Put(kVersion);
  w.Put(acked_features);
  w.Put(static_cast<uint8_t>(features_set ? 1 : 0));
  w.Put(protocol_features);
  w.Put(static_cast<uint32_t>(regions.size()));
  for (const auto& r : regions) {
    w.Put(r.guest_phys_addr);
    w.Put(r.memory_size);
    w.Put(r.userspace_addr);
    w.Put(r.mmap_offset);
  }
  w.Put(static_cast<uint32_t>(rings.size()));
  for (const Ring& r : rings) {
    w.Put(r.num);
    w.Put(static_cast<uint8_t>(r.addr_set ? 1 : 0));
    w.Put(r.addr.index);
    w.Put(r.addr.flags);
    w.Put(r.addr.desc_user_addr);
    w.Put(r.addr.used_user_addr);
    w.Put(r.addr.avail_user_addr);
    w.Put(r.addr.log_guest_addr);
    w.Put(r.base);
    w.Put(r.enable);
    w.Put(static_cast<uint8_t>(r.running ? 1 : 0));
    w.Put(EncodeFd(r.kick));
    w.Put(EncodeFd(r.call));
    w.Put(EncodeFd(r.err));
  }
  return w.Take();
}

Result<SessionState> SessionState::Decode(std::span<const uint8_t> bytes, size_t fds) {
  ByteReader r(bytes);
  SessionState s;
  uint32_t magic = 0, version = 0, nregions = 0, nrings = 0;
  uint8_t features_set = 0;
  if (!r.Get(&magic) || magic != kMagic) return MakeError(EINVAL, "not a vhost-user session state");
  if (!r.Get(&version) || version != kVersion) {
    return MakeError(EINVAL, "session state version {} (this vsockd reads {})", version, kVersion);
  }
  if (!r.Get(&s.acked_features) || !r.Get(&features_set) || features_set > 1 ||
      !r.Get(&s.protocol_features) || !r.Get(&nregions)) {
    return MakeError(EINVAL, "session state: truncated or bad header");
  }
  s.features_set = features_set == 1;
  if (nregions > kMaxRegions || nregions > fds) {
    return MakeError(EINVAL, "session state: {} memory regions with {} descriptors", nregions, fds);
  }
  s.regions.resize(nregions);
  for (auto& m : s.regions) {
    if (!r.Get(&m.guest_phys_addr) || !r.Get(&m.memory_size) || !r.Get(&m.userspace_addr) ||
        !r.Get(&m.mmap_offset)) {
      return MakeError(EINVAL, "session state: truncated memory table");
    }
  }
  if (!r.Get(&nrings) || nrings > kMaxRings) {
    return MakeError(EINVAL, "session state: bad ring count");
  }
  s.rings.resize(nrings);
  for (Ring& ring : s.rings) {
    uint8_t addr_set = 0, running = 0;
    uint32_t kick = 0, call = 0, err = 0;
    if (!r.Get(&ring.num) || !r.Get(&addr_set) || !r.Get(&ring.addr.index) ||
        !r.Get(&ring.addr.flags) || !r.Get(&ring.addr.desc_user_addr) ||
        !r.Get(&ring.addr.used_user_addr) || !r.Get(&ring.addr.avail_user_addr) ||
        !r.Get(&ring.addr.log_guest_addr) || !r.Get(&ring.base) || !r.Get(&ring.enable) ||
        !r.Get(&running) || !r.Get(&kick) || !r.Get(&call) || !r.Get(&err)) {
      return MakeError(EINVAL, "session state: truncated ring");
    }
    if (addr_set > 1 || running > 1 || ring.enable > 2) {
      return MakeError(EINVAL, "session state: bad ring flags");
    }
    ring.addr_set = addr_set == 1;
    ring.running = running == 1;
    // A ring's eventfds come after the memory files, each used once at most.
    int* slots[] = {&ring.kick, &ring.call, &ring.err};
    uint32_t encoded[] = {kick, call, err};
    for (int i = 0; i < 3; ++i) {
      if (encoded[i] == 0) continue;
      const uint32_t index = encoded[i] - 1;
      if (index < nregions || index >= fds) {
        return MakeError(EINVAL, "session state: ring descriptor {} out of range", index);
      }
      *slots[i] = static_cast<int>(index);
    }
  }
  if (!r.done()) return MakeError(EINVAL, "session state: trailing bytes");
  std::vector<bool> used(fds, false);
  for (size_t i = 0; i < nregions; ++i) used[i] = true;
  for (const Ring& ring : s.rings) {
    for (int fd : {ring.kick, ring.call, ring.err}) {
      if (fd < 0) continue;
      if (used[static_cast<size_t>(fd)]) {
        return MakeError(EINVAL, "session state: descriptor {} used twice", fd);
      }
      used[static_cast<size_t>(fd)] = true;
    }
  }
  return s;
}

}  // namespace vsockd::vhost_user
