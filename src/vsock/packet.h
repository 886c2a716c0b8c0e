// The virtio-vsock packet header (virtio spec "Socket Device", Linux uapi
// <linux/virtio_vsock.h>): 44 bytes, packed, little-endian, followed by `len` payload bytes.
//
// Callers: the vsock device (parses guest tx, builds guest rx), vguest (the other side),
// fuzz targets. Threading: pure functions.
//
// Decode copies the header out of guest memory exactly once into a host-order struct, so a
// guest rewriting the buffer concurrently cannot change what was validated (no TOCTOU).
#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace vsockd::vsock {

// Feature bits (device-specific).
inline constexpr int VIRTIO_VSOCK_F_STREAM = 0;
inline constexpr int VIRTIO_VSOCK_F_SEQPACKET = 1;

inline constexpr uint16_t VIRTIO_VSOCK_TYPE_STREAM = 1;
inline constexpr uint16_t VIRTIO_VSOCK_TYPE_SEQPACKET = 2;

inline constexpr uint16_t VIRTIO_VSOCK_OP_INVALID = 0;
inline constexpr uint16_t VIRTIO_VSOCK_OP_REQUEST = 1;
inline constexpr uint16_t VIRTIO_VSOCK_OP_RESPONSE = 2;
inline constexpr uint16_t VIRTIO_VSOCK_OP_RST = 3;
inline constexpr uint16_t VIRTIO_VSOCK_OP_SHUTDOWN = 4;
inline constexpr uint16_t VIRTIO_VSOCK_OP_RW = 5;
inline constexpr uint16_t VIRTIO_VSOCK_OP_CREDIT_UPDATE = 6;
inline constexpr uint16_t VIRTIO_VSOCK_OP_CREDIT_REQUEST = 7;

inline constexpr uint32_t VIRTIO_VSOCK_SHUTDOWN_RCV = 1;
inline constexpr uint32_t VIRTIO_VSOCK_SHUTDOWN_SEND = 2;

inline constexpr uint32_t VIRTIO_VSOCK_SEQ_EOM = 1;
inline constexpr uint32_t VIRTIO_VSOCK_SEQ_EOR = 2;

// Well-known CIDs (<linux/vm_sockets.h>).
inline constexpr uint64_t VMADDR_CID_HYPERVISOR = 0;
inline constexpr uint64_t VMADDR_CID_LOCAL = 1;
inline constexpr uint64_t VMADDR_CID_HOST = 2;
inline constexpr uint64_t VMADDR_CID_ANY = 0xFFFFFFFF;

inline constexpr size_t kHeaderSize = 44;
// Largest payload a driver sends in one packet (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
inline constexpr uint32_t kMaxPacketPayload = 64 * 1024;
// rx buffer data size a Linux 6.1 guest posts (VIRTIO_VSOCK_DEFAULT_RX_BUF_SIZE).
inline constexpr uint32_t kLinuxRxBufSize = 4096;

// Host-order view of virtio_vsock_hdr.
struct PacketHeader {
  uint64_t src_cid = 0;
  uint64_t dst_cid = 0;
  uint32_t src_port = 0;
  uint32_t dst_port = 0;
  uint32_t len = 0;
  uint16_t type = 0;
  uint16_t op = 0;
  uint32_t flags = 0;
  uint32_t buf_alloc = 0;
  uint32_t fwd_cnt = 0;
};

// Encodes into exactly kHeaderSize bytes.
void EncodeHeader(const PacketHeader& hdr, uint8_t out[kHeaderSize]);
PacketHeader DecodeHeader(const uint8_t in[kHeaderSize]);

// "RW 3:1025 -> 2:9999 len=4096 ..." for logs.
std::string DescribeHeader(const PacketHeader& hdr);
const char* OpName(uint16_t op);

// Credit a sender may still use (virtio spec, "Buffer Space Management"): the peer's
// buf_alloc minus the bytes in flight. The subtraction of the free-running counters is u32
// wrap-around; the result is clamped at 0, so a peer that shrinks buf_alloc while bytes are in
// flight yields 0, not a huge u32 (the underflow Linux fixed in virtio_transport_get_credit,
// Dec 2025).
inline uint32_t PeerCredit(uint32_t peer_buf_alloc, uint32_t tx_cnt, uint32_t peer_fwd_cnt) {
  int64_t in_flight = static_cast<uint32_t>(tx_cnt - peer_fwd_cnt);
  int64_t free = static_cast<int64_t>(peer_buf_alloc) - in_flight;
  return free > 0 ? static_cast<uint32_t>(free) : 0;
}

// The RST answering `to` (addresses swapped, type echoed, credit fields 0). Callers must not
// answer an RST with an RST: it could reset a new connection reusing the port pair.
inline PacketHeader MakeRstReply(const PacketHeader& to) {
  PacketHeader r;
  r.src_cid = to.dst_cid;
  r.src_port = to.dst_port;
  r.dst_cid = to.src_cid;
  r.dst_port = to.src_port;
  r.type = to.type;
  r.op = VIRTIO_VSOCK_OP_RST;
  return r;
}

// A CID a VM may be given: not 0, 1, 2, VMADDR_CID_ANY, nor above 32 bits.
inline bool IsValidGuestCid(uint64_t cid) { return cid > VMADDR_CID_HOST && cid < VMADDR_CID_ANY; }

}  // namespace vsockd::vsock
