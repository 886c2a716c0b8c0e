// Parser for the hybrid vsock handshake line a host program sends: "CONNECT <port>\n".
//
// Role: the pure, socket-free half of the host -> guest handshake, so it can be unit-tested
// and fuzzed on its own. UnixBackend feeds it whatever each non-blocking read returned.
// Threading: plain values, no shared state.
//
// What it accepts (compatible with Firecracker / Cloud Hypervisor / vhost-device-vsock, but
// stricter about junk and robust where they are not):
//  - the keyword CONNECT in any case, then a decimal port 0..4294967295 (digits only: no
//    sign, no hex, no trailing junk), separated by spaces or tabs, leading/trailing blanks
//    allowed, a trailing '\r' tolerated (telnet/netcat -C clients);
//  - the line may arrive split across any number of reads (Firecracker drops those);
//  - bytes after the '\n' that came in the same read are kept: they are the first payload
//    bytes for the guest (vhost-device-vsock's buffered reader can lose them);
//  - a line longer than the cap (without its '\n') is an error as soon as the cap is passed,
//    so a client can never make us buffer more than cap + one read.
// Error texts never echo client input and never contain the letters "ok" in any case:
// Kata's dialer treats any reply containing "OK" as success.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "base/result.h"

namespace vsockd::host {

// Longest command line accepted, without the '\n' ("CONNECT 4294967295\r" is 19 bytes).
inline constexpr size_t kDefaultMaxCommandLine = 64;

// Parses one complete line, without its '\n'. The error's context is safe to send to the
// client after "ERR ".
Result<uint32_t> ParseConnectLine(std::string_view line);

// Accumulates reads until a full line is there, then parses it.
class ConnectCommandReader {
 public:
  enum class State { kNeedMore, kComplete, kError };

  explicit ConnectCommandReader(size_t max_line = kDefaultMaxCommandLine) : max_line_(max_line) {}

  // Feeds the bytes of one read. Once kComplete, further bytes are appended to the prefix;
  // once kError, they are ignored.
  State Append(std::string_view bytes);

  State state() const { return state_; }
  // Valid once kComplete.
  uint32_t port() const { return port_; }
  // Bytes that followed the '\n' (payload for the guest). Moves them out.
  std::string TakePrefix() { return std::move(prefix_); }
  const std::string& prefix() const { return prefix_; }
  // Valid once kError: a reason safe to send after "ERR ".
  const std::string& error() const { return error_; }
  // Bytes of an incomplete line buffered so far.
  size_t buffered() const { return line_.size(); }

 private:
  size_t max_line_;
  State state_ = State::kNeedMore;
  std::string line_;
  std::string prefix_;
  std::string error_;
  uint32_t port_ = 0;
};

// Builds "ERR <reason>\n", defusing any "ok" (any case) in the reason so that no ERR line can
// ever look like success to a substring-matching client (Kata's dialer).
std::string MakeErrLine(std::string_view reason);

// True if `text` contains "ok" in any case.
bool ContainsOk(std::string_view text);

}  // namespace vsockd::host
