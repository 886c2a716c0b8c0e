// vhost-user wire protocol: request IDs, header flags, feature bits and payload layouts, as
// in QEMU's docs/interop/vhost-user.rst (names verbatim). All integers are host-native
// endian; payload structs are packed exactly as on the wire.
//
// Callers: the message codec, the Backend (device side) and the Frontend (vguest, tests).
// Threading: constants and plain structs only.
#pragma once

#include <cstddef>
#include <cstdint>

namespace vsockd::vhost_user {

// Front-end -> back-end requests (the "front-end message types" table).
enum VhostUserRequest : uint32_t {
  VHOST_USER_NONE = 0,
  VHOST_USER_GET_FEATURES = 1,
  VHOST_USER_SET_FEATURES = 2,
  VHOST_USER_SET_OWNER = 3,
  VHOST_USER_RESET_OWNER = 4,
  VHOST_USER_SET_MEM_TABLE = 5,
  VHOST_USER_SET_LOG_BASE = 6,
  VHOST_USER_SET_LOG_FD = 7,
  VHOST_USER_SET_VRING_NUM = 8,
  VHOST_USER_SET_VRING_ADDR = 9,
  VHOST_USER_SET_VRING_BASE = 10,
  VHOST_USER_GET_VRING_BASE = 11,
  VHOST_USER_SET_VRING_KICK = 12,
  VHOST_USER_SET_VRING_CALL = 13,
  VHOST_USER_SET_VRING_ERR = 14,
  VHOST_USER_GET_PROTOCOL_FEATURES = 15,
  VHOST_USER_SET_PROTOCOL_FEATURES = 16,
  VHOST_USER_GET_QUEUE_NUM = 17,
  VHOST_USER_SET_VRING_ENABLE = 18,
  VHOST_USER_SEND_RARP = 19,
  VHOST_USER_NET_SET_MTU = 20,
  VHOST_USER_SET_SLAVE_REQ_FD = 21,  // renamed SET_BACKEND_REQ_FD in later specs
  VHOST_USER_IOTLB_MSG = 22,
  VHOST_USER_SET_VRING_ENDIAN = 23,
  VHOST_USER_GET_CONFIG = 24,
  VHOST_USER_SET_CONFIG = 25,
  VHOST_USER_CREATE_CRYPTO_SESSION = 26,
  VHOST_USER_CLOSE_CRYPTO_SESSION = 27,
  VHOST_USER_POSTCOPY_ADVISE = 28,
  VHOST_USER_POSTCOPY_LISTEN = 29,
  VHOST_USER_POSTCOPY_END = 30,
  VHOST_USER_GET_INFLIGHT_FD = 31,
  VHOST_USER_SET_INFLIGHT_FD = 32,
  VHOST_USER_GPU_SET_SOCKET = 33,
  VHOST_USER_RESET_DEVICE = 34,
  VHOST_USER_VRING_KICK = 35,
  VHOST_USER_GET_MAX_MEM_SLOTS = 36,
  VHOST_USER_ADD_MEM_REG = 37,
  VHOST_USER_REM_MEM_REG = 38,
  VHOST_USER_SET_STATUS = 39,
  VHOST_USER_GET_STATUS = 40,
  VHOST_USER_MAX = 41,  // one past the last ID we know
};

// "VHOST_USER_GET_FEATURES" etc., or "VHOST_USER_UNKNOWN" for IDs we do not know.
const char* RequestName(uint32_t request);

// Header `flags`: bits 0-1 version (must be 1), bit 2 reply, bit 3 need-reply, rest reserved.
inline constexpr uint32_t VHOST_USER_VERSION_MASK = 0x3;
inline constexpr uint32_t VHOST_USER_VERSION = 0x1;
inline constexpr uint32_t VHOST_USER_REPLY_MASK = 0x4;
inline constexpr uint32_t VHOST_USER_NEED_REPLY_MASK = 0x8;
inline constexpr uint32_t VHOST_USER_KNOWN_FLAGS =
    VHOST_USER_VERSION_MASK | VHOST_USER_REPLY_MASK | VHOST_USER_NEED_REPLY_MASK;
// What a back-end reply carries, exactly (QEMU rejects anything else, even an echoed
// NEED_REPLY bit).
inline constexpr uint32_t kBackendReplyFlags = VHOST_USER_VERSION | VHOST_USER_REPLY_MASK;

// Virtio feature bit (in GET/SET_FEATURES) that gates GET/SET_PROTOCOL_FEATURES and makes
// rings start disabled.
inline constexpr int VHOST_USER_F_PROTOCOL_FEATURES = 30;
// Virtio feature bit for dirty logging (we never offer it).
inline constexpr int VHOST_F_LOG_ALL = 26;

// Protocol feature bits (GET/SET_PROTOCOL_FEATURES).
inline constexpr int VHOST_USER_PROTOCOL_F_MQ = 0;
inline constexpr int VHOST_USER_PROTOCOL_F_LOG_SHMFD = 1;
inline constexpr int VHOST_USER_PROTOCOL_F_RARP = 2;
inline constexpr int VHOST_USER_PROTOCOL_F_REPLY_ACK = 3;
inline constexpr int VHOST_USER_PROTOCOL_F_NET_MTU = 4;
inline constexpr int VHOST_USER_PROTOCOL_F_SLAVE_REQ = 5;
inline constexpr int VHOST_USER_PROTOCOL_F_CROSS_ENDIAN = 6;
inline constexpr int VHOST_USER_PROTOCOL_F_CRYPTO_SESSION = 7;
inline constexpr int VHOST_USER_PROTOCOL_F_PAGEFAULT = 8;
inline constexpr int VHOST_USER_PROTOCOL_F_CONFIG = 9;
inline constexpr int VHOST_USER_PROTOCOL_F_SLAVE_SEND_FD = 10;
inline constexpr int VHOST_USER_PROTOCOL_F_HOST_NOTIFIER = 11;
inline constexpr int VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD = 12;
inline constexpr int VHOST_USER_PROTOCOL_F_RESET_DEVICE = 13;
inline constexpr int VHOST_USER_PROTOCOL_F_INBAND_NOTIFICATIONS = 14;
inline constexpr int VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS = 15;
inline constexpr int VHOST_USER_PROTOCOL_F_STATUS = 16;

// SET_VRING_KICK/CALL/ERR u64 payload: bits 0-7 vring index, bit 8 "no fd" (poll instead).
inline constexpr uint64_t VHOST_USER_VRING_IDX_MASK = 0xff;
inline constexpr uint64_t VHOST_USER_VRING_NOFD_MASK = 0x100;

// vhost_vring_addr.flags bit 0: log used-ring writes (dirty logging; never negotiated here).
inline constexpr uint32_t VHOST_VRING_F_LOG = 0;

// Limits. A message payload never exceeds kMaxPayloadSize (rust-vmm's cap; QEMU's largest
// payload is a few hundred bytes). At most 8 memory regions travel in SET_MEM_TABLE without
// CONFIGURE_MEM_SLOTS, and at most 8 fds in one message.
inline constexpr size_t kHeaderSize = 12;
inline constexpr uint32_t kMaxPayloadSize = 4096;
inline constexpr uint32_t VHOST_MEMORY_BASELINE_NREGIONS = 8;
inline constexpr uint32_t VHOST_USER_MAX_CONFIG_SIZE = 256;
inline constexpr size_t kMaxFds = 8;

#pragma pack(push, 1)

struct VhostUserHeader {
  uint32_t request;
  uint32_t flags;
  uint32_t size;  // payload bytes that follow
};
static_assert(sizeof(VhostUserHeader) == kHeaderSize);

// SET_VRING_NUM, SET_VRING_BASE, GET_VRING_BASE (and its reply), SET_VRING_ENABLE.
struct vhost_vring_state {
  uint32_t index;
  uint32_t num;
};
static_assert(sizeof(vhost_vring_state) == 8);

// SET_VRING_ADDR. Field order is desc, used, avail (not desc, avail, used).
struct vhost_vring_addr {
  uint32_t index;
  uint32_t flags;
  uint64_t desc_user_addr;
  uint64_t used_user_addr;
  uint64_t avail_user_addr;
  uint64_t log_guest_addr;  // guest-physical used ring, only for dirty logging
};
static_assert(sizeof(vhost_vring_addr) == 40);

struct VhostUserMemoryRegion {
  uint64_t guest_phys_addr;
  uint64_t memory_size;
  uint64_t userspace_addr;
  uint64_t mmap_offset;
};
static_assert(sizeof(VhostUserMemoryRegion) == 32);

// SET_MEM_TABLE: this header followed by `nregions` VhostUserMemoryRegion (one fd each).
struct VhostUserMemoryHeader {
  uint32_t nregions;
  uint32_t padding;
};
static_assert(sizeof(VhostUserMemoryHeader) == 8);

struct VhostUserMemory {
  uint32_t nregions;
  uint32_t padding;
  VhostUserMemoryRegion regions[VHOST_MEMORY_BASELINE_NREGIONS];
};
static_assert(sizeof(VhostUserMemory) == 8 + 32 * 8);

// ADD_MEM_REG / REM_MEM_REG.
struct VhostUserMemRegMsg {
  uint64_t padding;
  VhostUserMemoryRegion region;
};
static_assert(sizeof(VhostUserMemRegMsg) == 40);

// SET_LOG_BASE.
struct VhostUserLog {
  uint64_t mmap_size;
  uint64_t mmap_offset;
};
static_assert(sizeof(VhostUserLog) == 16);

// GET_CONFIG / SET_CONFIG: the 12-byte header, then `size` bytes of config space. On the
// wire only 12 + size bytes travel; `payload` is sized for the largest config.
struct VhostUserConfig {
  uint32_t offset;
  uint32_t size;
  uint32_t flags;  // 0 = writable field, 1 = live migration
  uint8_t payload[VHOST_USER_MAX_CONFIG_SIZE];
};
inline constexpr uint32_t kConfigHeaderSize = 12;
static_assert(sizeof(VhostUserConfig) == kConfigHeaderSize + VHOST_USER_MAX_CONFIG_SIZE);

#pragma pack(pop)

}  // namespace vsockd::vhost_user
