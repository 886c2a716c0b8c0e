// SessionState: what a frontend has configured in a vhost-user session (features, memory
// table, each vring's size, addresses, index, enable state and eventfds), in a form another
// process can take over. It is how vsockd restarts under a running VM (issue 13): the
// frontend (QEMU) never reconnects a vhost-user-vsock device, so the session itself must
// outlive the process that serves it. The serving process hands each change of the state to
// a keeper (Backend::SetSessionObserver); a new process gets the last state back with the
// connection and resumes the session where the old one stopped (Backend::Resume).
//
// The state travels as bytes (Encode/Decode, a versioned little-endian layout) plus the
// descriptors it refers to by index: the memory regions' files first, then the rings'
// kick, call and err eventfds. Decode validates everything (counts, indices, sizes, flags):
// the bytes cross a process boundary.
//
// Callers: vhost_user::Backend (Snapshot/Resume), the daemon's session keeper, tests.
// Threading: plain values.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "base/result.h"
#include "vhost_user/protocol.h"
#include "virtio/guest_memory.h"

namespace vsockd::vhost_user {

struct SessionState {
  static constexpr int kNoFd = -1;

  struct Ring {
    uint32_t num = 0;  // 0: SET_VRING_NUM not received
    bool addr_set = false;
    vhost_vring_addr addr{};
    // Where a stopped ring resumes (its next avail index). A running ring resumes at its
    // used index instead (read from guest memory: see Backend::Resume).
    uint16_t base = 0;
    uint8_t enable = 0;  // 0 not set, 1 enabled, 2 disabled (SET_VRING_ENABLE)
    bool running = false;
    // Indices into the descriptor list, or kNoFd.
    int kick = kNoFd;
    int call = kNoFd;
    int err = kNoFd;
  };

  uint64_t acked_features = 0;
  bool features_set = false;
  uint64_t protocol_features = 0;
  // The memory table; regions[i]'s file is descriptor i.
  std::vector<virtio::MemoryRegion> regions;
  std::vector<Ring> rings;

  // How many descriptors the state refers to (the highest index + 1).
  size_t fd_count() const;
  std::vector<uint8_t> Encode() const;
  // EINVAL for anything malformed; `fds` is the number of descriptors that came with it.
  static Result<SessionState> Decode(std::span<const uint8_t> bytes, size_t fds);
};

}  // namespace vsockd::vhost_user
