#include "tools/vsockperf/protocol.h"

namespace vsockd::vsockperf {
namespace {

// Explicit little-endian (de)serialisation: client and server may run on different machines.
void Put16(uint8_t* p, uint16_t v) {
  for (int i = 0; i < 2; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void Put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void Put64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint16_t Get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t Get32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
uint64_t Get64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Layout (offsets in bytes): 0 magic u32, 4 version u16, 6 mode u8, 7 reserved u8,
// 8 stream_id u32, 12 streams u32, 16 write_size u32, 20 msg_size u32, 24 duration_ms u64,
// 32 bytes u64, 40 test_id u64, 48..63 reserved (zero).
constexpr uint64_t kMaxDurationMs = 24ull * 3600 * 1000;

}  // namespace

std::string ModeName(Mode mode) {
  switch (mode) {
    case Mode::kSend:
      return "send";
    case Mode::kReceive:
      return "receive";
    case Mode::kEcho:
      return "echo";
    case Mode::kConnect:
      return "connect";
  }
  return "unknown";
}

std::array<uint8_t, kHeaderSize> EncodeHeader(const TestHeader& h) {
  std::array<uint8_t, kHeaderSize> b{};
  Put32(&b[0], kHeaderMagic);
  Put16(&b[4], kProtocolVersion);
  b[6] = static_cast<uint8_t>(h.mode);
  Put32(&b[8], h.stream_id);
  Put32(&b[12], h.streams);
  Put32(&b[16], h.write_size);
  Put32(&b[20], h.msg_size);
  Put64(&b[24], h.duration_ms);
  Put64(&b[32], h.bytes);
  Put64(&b[40], h.test_id);
  return b;
}

Result<TestHeader> DecodeHeader(std::span<const uint8_t> b) {
  if (b.size() < kHeaderSize) return MakeError(EINVAL, "test header: {} bytes", b.size());
  if (Get32(&b[0]) != kHeaderMagic) {
    return MakeError(EINVAL, "test header: bad magic 0x{:08x} (not a vsockperf client?)",
                     Get32(&b[0]));
  }
  if (uint16_t v = Get16(&b[4]); v != kProtocolVersion) {
    return MakeError(EINVAL, "test header: protocol version {} (we speak {})", v, kProtocolVersion);
  }
  TestHeader h;
  if (b[6] > static_cast<uint8_t>(Mode::kConnect)) {
    return MakeError(EINVAL, "test header: unknown mode {}", b[6]);
  }
  h.mode = static_cast<Mode>(b[6]);
  h.stream_id = Get32(&b[8]);
  h.streams = Get32(&b[12]);
  h.write_size = Get32(&b[16]);
  h.msg_size = Get32(&b[20]);
  h.duration_ms = Get64(&b[24]);
  h.bytes = Get64(&b[32]);
  h.test_id = Get64(&b[40]);
  if (h.streams == 0 || h.streams > kMaxStreams || h.stream_id == 0 || h.stream_id > h.streams) {
    return MakeError(EINVAL, "test header: stream {} of {} (1..{} streams)", h.stream_id, h.streams,
                     kMaxStreams);
  }
  if (h.write_size == 0 || h.write_size > kMaxWriteSize) {
    return MakeError(EINVAL, "test header: write size {} (1..{})", h.write_size, kMaxWriteSize);
  }
  if (h.msg_size > kMaxWriteSize) {
    return MakeError(EINVAL, "test header: message size {} (0..{})", h.msg_size, kMaxWriteSize);
  }
  if (h.mode == Mode::kReceive) {
    // The server sends on the client's word: bound it so a client cannot ask for forever.
    if ((h.duration_ms == 0) == (h.bytes == 0)) {
      return MakeError(EINVAL, "test header: receive test needs exactly one of duration/bytes");
    }
    if (h.duration_ms > kMaxDurationMs) {
      return MakeError(EINVAL, "test header: duration {} ms (at most {})", h.duration_ms,
                       kMaxDurationMs);
    }
  }
  return h;
}

std::array<uint8_t, kResultSize> EncodeResult(const ResultRecord& r) {
  std::array<uint8_t, kResultSize> b{};
  Put32(&b[0], kResultMagic);
  Put64(&b[8], r.bytes);
  Put64(&b[16], r.nanos);
  return b;
}

Result<ResultRecord> DecodeResult(std::span<const uint8_t> b) {
  if (b.size() < kResultSize) return MakeError(EPROTO, "result record: {} bytes", b.size());
  if (Get32(&b[0]) != kResultMagic) {
    return MakeError(EPROTO, "result record: bad magic 0x{:08x}", Get32(&b[0]));
  }
  return ResultRecord{Get64(&b[8]), Get64(&b[16])};
}

}  // namespace vsockd::vsockperf
