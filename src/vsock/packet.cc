#include "vsock/packet.h"

#include <endian.h>
#include <fmt/format.h>

#include <cstring>

namespace vsockd::vsock {
namespace {

template <typename T>
void Put(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof v);
}
template <typename T>
T Get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace

void EncodeHeader(const PacketHeader& h, uint8_t out[kHeaderSize]) {
  Put(out + 0, htole64(h.src_cid));
  Put(out + 8, htole64(h.dst_cid));
  Put(out + 16, htole32(h.src_port));
  Put(out + 20, htole32(h.dst_port));
  Put(out + 24, htole32(h.len));
  Put(out + 28, htole16(h.type));
  Put(out + 30, htole16(h.op));
  Put(out + 32, htole32(h.flags));
  Put(out + 36, htole32(h.buf_alloc));
  Put(out + 40, htole32(h.fwd_cnt));
}

PacketHeader DecodeHeader(const uint8_t in[kHeaderSize]) {
  PacketHeader h;
  h.src_cid = le64toh(Get<uint64_t>(in + 0));
  h.dst_cid = le64toh(Get<uint64_t>(in + 8));
  h.src_port = le32toh(Get<uint32_t>(in + 16));
  h.dst_port = le32toh(Get<uint32_t>(in + 20));
  h.len = le32toh(Get<uint32_t>(in + 24));
  h.type = le16toh(Get<uint16_t>(in + 28));
  h.op = le16toh(Get<uint16_t>(in + 30));
  h.flags = le32toh(Get<uint32_t>(in + 32));
  h.buf_alloc = le32toh(Get<uint32_t>(in + 36));
  h.fwd_cnt = le32toh(Get<uint32_t>(in + 40));
  return h;
}

const char* OpName(uint16_t op) {
  switch (op) {
    case VIRTIO_VSOCK_OP_INVALID:
      return "INVALID";
    case VIRTIO_VSOCK_OP_REQUEST:
      return "REQUEST";
    case VIRTIO_VSOCK_OP_RESPONSE:
      return "RESPONSE";
    case VIRTIO_VSOCK_OP_RST:
      return "RST";
    case VIRTIO_VSOCK_OP_SHUTDOWN:
      return "SHUTDOWN";
    case VIRTIO_VSOCK_OP_RW:
      return "RW";
    case VIRTIO_VSOCK_OP_CREDIT_UPDATE:
      return "CREDIT_UPDATE";
    case VIRTIO_VSOCK_OP_CREDIT_REQUEST:
      return "CREDIT_REQUEST";
    default:
      return "UNKNOWN";
  }
}

std::string DescribeHeader(const PacketHeader& h) {
  return fmt::format("{}({}) {}:{} -> {}:{} type={} len={} flags={:#x} buf_alloc={} fwd_cnt={}",
                     OpName(h.op), h.op, h.src_cid, h.src_port, h.dst_cid, h.dst_port, h.type,
                     h.len, h.flags, h.buf_alloc, h.fwd_cnt);
}

}  // namespace vsockd::vsock
