// vsockperf's wire protocol: the fixed-size records exchanged on each test connection.
//
// Role: every test connection (a data stream of a throughput test, the latency stream, each
// connection of a connect-rate test) starts with one 64-byte TestHeader from the client, so
// each connection describes itself and the server needs no separate control channel. In a
// forward throughput test the server answers the client's EOF with one 32-byte ResultRecord
// (what it received, timed by the receiver). Callers: vsockperf's client and server.
// Threading: plain values and pure functions.
//
// The server is reachable by any guest or host program: Decode* validate every field and
// reject anything out of range (the connection is then dropped).
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>

#include "base/result.h"

namespace vsockd::vsockperf {

inline constexpr uint32_t kHeaderMagic = 0x46505356;  // "VSPF" little-endian
inline constexpr uint32_t kResultMagic = 0x52505356;  // "VSPR"
inline constexpr uint16_t kProtocolVersion = 1;
inline constexpr size_t kHeaderSize = 64;
inline constexpr size_t kResultSize = 32;
inline constexpr uint32_t kMaxWriteSize = 16u << 20;
inline constexpr uint32_t kMaxStreams = 128;

enum class Mode : uint8_t {
  kSend = 0,     // client -> server data; the server sinks and answers a ResultRecord
  kReceive = 1,  // -R: server -> client data until duration_ms or bytes
  kEcho = 2,     // --latency: the server echoes everything until EOF
  kConnect = 3,  // --connect-rate: the server answers one byte and closes
};

std::string ModeName(Mode mode);

struct TestHeader {
  Mode mode = Mode::kSend;
  uint32_t stream_id = 1;  // 1-based
  uint32_t streams = 1;
  uint32_t write_size = 128 * 1024;
  uint32_t msg_size = 0;     // echo: message size (informational)
  uint64_t duration_ms = 0;  // receive: send for this long (0: by bytes)
  uint64_t bytes = 0;        // receive: send this many bytes (0: by duration)
  uint64_t test_id = 0;      // random per client run, shown in the server's output
};

struct ResultRecord {
  uint64_t bytes = 0;  // payload bytes received (header excluded)
  uint64_t nanos = 0;  // receiver's time from the first payload byte to EOF
};

std::array<uint8_t, kHeaderSize> EncodeHeader(const TestHeader& h);
// EINVAL with a readable reason for a bad magic, version, mode or field.
Result<TestHeader> DecodeHeader(std::span<const uint8_t> bytes);

std::array<uint8_t, kResultSize> EncodeResult(const ResultRecord& r);
Result<ResultRecord> DecodeResult(std::span<const uint8_t> bytes);

}  // namespace vsockd::vsockperf
