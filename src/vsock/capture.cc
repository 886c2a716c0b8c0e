#include "vsock/capture.h"

#include <fcntl.h>
#include <linux/vsockmon.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "base/log.h"

namespace vsockd::vsock {
namespace {

constexpr size_t kBufferSize = 64 * 1024;
constexpr size_t kVsockmonHeaderSize = sizeof(af_vsockmon_hdr);
static_assert(kVsockmonHeaderSize == 32, "af_vsockmon_hdr is 32 bytes on the wire");

// pcap's file header (microsecond timestamps) and record header, little-endian as we write
// them on x86 (readers take either byte order from the magic).
struct PcapFileHeader {
  uint32_t magic = 0xa1b2c3d4;
  uint16_t version_major = 2;
  uint16_t version_minor = 4;
  int32_t thiszone = 0;
  uint32_t sigfigs = 0;
  uint32_t snaplen = 0;
  uint32_t linktype = kLinktypeVsock;
};
struct PcapRecordHeader {
  uint32_t ts_sec;
  uint32_t ts_usec;
  uint32_t incl_len;
  uint32_t orig_len;
};

template <typename T>
void PutLe(uint8_t* out, T value) {
  for (size_t i = 0; i < sizeof(T); ++i) out[i] = static_cast<uint8_t>(value >> (8 * i));
}

}  // namespace

uint16_t VsockmonOp(uint16_t virtio_op) {
  switch (virtio_op) {
    case VIRTIO_VSOCK_OP_REQUEST:
    case VIRTIO_VSOCK_OP_RESPONSE:
      return AF_VSOCK_OP_CONNECT;
    case VIRTIO_VSOCK_OP_RST:
    case VIRTIO_VSOCK_OP_SHUTDOWN:
      return AF_VSOCK_OP_DISCONNECT;
    case VIRTIO_VSOCK_OP_RW:
      return AF_VSOCK_OP_PAYLOAD;
    case VIRTIO_VSOCK_OP_CREDIT_UPDATE:
    case VIRTIO_VSOCK_OP_CREDIT_REQUEST:
      return AF_VSOCK_OP_CONTROL;
    default:
      return AF_VSOCK_OP_UNKNOWN;
  }
}

Result<std::unique_ptr<PacketCapture>> PacketCapture::Open(const CaptureOptions& options) {
  Fd fd(::open(options.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return ErrnoError("capture file '{}'", options.path);
  std::unique_ptr<PacketCapture> capture(new PacketCapture(std::move(fd), options));
  PcapFileHeader header;
  // The snap length pcap readers expect covers a record's whole data.
  header.snaplen = static_cast<uint32_t>(
      kVsockmonHeaderSize + kHeaderSize +
      (options.snaplen == 0 ? kMaxPacketPayload : std::min(options.snaplen, kMaxPacketPayload)));
  capture->Append(&header, sizeof header);
  VSOCKD_RETURN_IF_ERROR(capture->Flush());
  return capture;
}

PacketCapture::PacketCapture(Fd fd, CaptureOptions options)
    : fd_(std::move(fd)), options_(std::move(options)) {
  buf_.reserve(kBufferSize);
}

PacketCapture::~PacketCapture() { (void)Flush(); }

void PacketCapture::Append(const void* data, size_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  buf_.insert(buf_.end(), p, p + len);
  bytes_ += len;
}

void PacketCapture::Record(const PacketHeader& hdr, std::span<const iovec> payload) {
  if (full_) return;
  size_t payload_len = 0;
  for (const iovec& v : payload) payload_len += v.iov_len;
  payload_len = std::min<size_t>(payload_len, hdr.len);
  size_t kept = payload_len;
  if (options_.snaplen != 0) kept = std::min<size_t>(kept, options_.snaplen);
  const size_t record = kVsockmonHeaderSize + kHeaderSize + kept;
  if ((options_.max_bytes != 0 &&
       bytes_ + sizeof(PcapRecordHeader) + record > options_.max_bytes) ||
      (options_.max_packets != 0 && packets_ >= options_.max_packets)) {
    full_ = true;
    (void)Flush();
    return;
  }
  if (buf_.size() + sizeof(PcapRecordHeader) + record > kBufferSize) {
    if (!Flush().ok()) return;
  }
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  PcapRecordHeader rec{static_cast<uint32_t>(now.tv_sec), static_cast<uint32_t>(now.tv_nsec / 1000),
                       static_cast<uint32_t>(record),
                       static_cast<uint32_t>(kVsockmonHeaderSize + kHeaderSize + payload_len)};
  Append(&rec, sizeof rec);
  uint8_t mon[kVsockmonHeaderSize] = {};
  PutLe<uint64_t>(mon + 0, hdr.src_cid);
  PutLe<uint64_t>(mon + 8, hdr.dst_cid);
  PutLe<uint32_t>(mon + 16, hdr.src_port);
  PutLe<uint32_t>(mon + 20, hdr.dst_port);
  PutLe<uint16_t>(mon + 24, VsockmonOp(hdr.op));
  PutLe<uint16_t>(mon + 26, AF_VSOCK_TRANSPORT_VIRTIO);
  PutLe<uint16_t>(mon + 28, static_cast<uint16_t>(kHeaderSize));
  Append(mon, sizeof mon);
  uint8_t wire[kHeaderSize];
  EncodeHeader(hdr, wire);
  Append(wire, sizeof wire);
  size_t left = kept;
  for (const iovec& v : payload) {
    if (left == 0) break;
    size_t n = std::min(left, v.iov_len);
    Append(v.iov_base, n);
    left -= n;
  }
  ++packets_;
}

Status PacketCapture::Flush() {
  if (write_error_.code != 0) return write_error_;
  size_t off = 0;
  while (off < buf_.size()) {
    ssize_t n = ::write(fd_.get(), buf_.data() + off, buf_.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      write_error_ = ErrnoError("capture file '{}'", options_.path);
      LOG_WARN("{}: capture stopped", write_error_.ToString());
      full_ = true;
      buf_.clear();
      return write_error_;
    }
    off += static_cast<size_t>(n);
  }
  buf_.clear();
  return OkStatus();
}

}  // namespace vsockd::vsock
