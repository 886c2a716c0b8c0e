// PacketCapture: virtio-vsock packets written as a pcap file that Wireshark and tshark decode
// (LINKTYPE_VSOCK, 271: each record is the vsockmon header the kernel's vsockmon device
// writes, then the 44-byte virtio_vsock_hdr, then the payload).
//
// Role: the kernel's vsockmon only sees kernel transports; a userspace device has to write
// its own capture. The device hands every packet it takes from or gives to the guest to a
// capture while one is active (Device::SetCapture), so nothing is spent when none is.
// Bounds: a snap length (payload bytes kept per packet) and a limit in bytes and in packets,
// after which the capture stops itself (full()); writes are buffered (64 KiB) and flushed
// when the buffer fills and at Close/destruction, so a capture costs one write() per ~64 KiB.
// Callers: vsock::Device (Record), the daemon (opens and closes captures), tests.
// Threading: one thread (the device's loop).
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/result.h"
#include "vsock/packet.h"

namespace vsockd::vsock {

inline constexpr uint32_t kLinktypeVsock = 271;

struct CaptureOptions {
  std::string path;
  // Payload bytes kept per packet (the headers are always whole); 0: all of it.
  uint32_t snaplen = 0;
  // Stop after this many bytes written to the file / packets recorded; 0: no limit.
  uint64_t max_bytes = 0;
  uint64_t max_packets = 0;
};

class PacketCapture {
 public:
  // Creates (truncates) the file, mode 0600, and writes the pcap header.
  static Result<std::unique_ptr<PacketCapture>> Open(const CaptureOptions& options);
  ~PacketCapture();
  PacketCapture(const PacketCapture&) = delete;
  PacketCapture& operator=(const PacketCapture&) = delete;

  // Records one packet: its header and `payload` (the hdr.len payload bytes, wherever they
  // are: guest memory or our buffers). Does nothing once full().
  void Record(const PacketHeader& hdr, std::span<const iovec> payload);
  void Record(const PacketHeader& hdr, std::span<const uint8_t> payload) {
    iovec v{const_cast<uint8_t*>(payload.data()), payload.size()};
    Record(hdr, std::span<const iovec>(&v, payload.empty() ? 0 : 1));
  }

  // Writes what is buffered; the error of the first failed write, if any (the capture is
  // then full: a capture never blocks or fails the data path).
  Status Flush();
  Status Close() { return Flush(); }

  bool full() const { return full_; }
  uint64_t packets() const { return packets_; }
  uint64_t bytes() const { return bytes_; }
  const CaptureOptions& options() const { return options_; }

 private:
  PacketCapture(Fd fd, CaptureOptions options);
  void Append(const void* data, size_t len);

  Fd fd_;
  CaptureOptions options_;
  std::vector<uint8_t> buf_;
  uint64_t packets_ = 0;
  uint64_t bytes_ = 0;
  bool full_ = false;
  Error write_error_;
};

// The vsockmon op of a virtio-vsock op (what Wireshark shows as the packet's kind).
uint16_t VsockmonOp(uint16_t virtio_op);

}  // namespace vsockd::vsock
