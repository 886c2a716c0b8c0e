// Internal helpers shared by libvsock's sources (not installed): errno -> std::error_code,
// EINTR-safe syscalls, Unix-socket listening.
//
// Callers: src/libvsock/*.cc only. Threading: stateless functions.
#pragma once

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <string>
#include <string_view>
#include <system_error>

#include "vsock/address.h"
#include "vsock/stream.h"

namespace vsock::detail {

inline std::error_code sys_error(int e) { return {e, std::system_category()}; }
inline std::error_code last_error() { return sys_error(errno); }
// Errors of a read/write: EAGAIN on a blocking socket can only be SO_RCVTIMEO/SO_SNDTIMEO.
inline std::error_code io_error(int e, bool nonblocking) {
  if ((e == EAGAIN || e == EWOULDBLOCK) && !nonblocking) return sys_error(ETIMEDOUT);
  return sys_error(e);
}

// Replaces control and non-ASCII bytes by '?' and cuts at `max` bytes, so that text from a
// peer or a user can be quoted in a message safely.
std::string printable(std::string_view text, size_t max = 120);

// Caps a caller's timeout so that now() + timeout cannot overflow (a year is "forever").
inline std::chrono::milliseconds cap_timeout(std::chrono::milliseconds t) {
  return std::min(t, std::chrono::milliseconds(std::chrono::hours(24 * 365)));
}

// Sets or clears O_NONBLOCK.
std::error_code set_nonblocking(int fd, bool on);

// vsock::connect for either socket type (a SEQPACKET fd comes back inside the Stream).
Stream connect_typed(const Address& address, SocketType type, std::chrono::milliseconds timeout,
                     std::error_code& ec, std::string* why);

}  // namespace vsock::detail
