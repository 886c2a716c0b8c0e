// libvsock errors: every fallible call reports a std::error_code through an out-parameter
// (the library never throws).
//
// Two kinds of codes reach the caller:
//  - system errors from the syscalls, as std::system_category() codes (errno values):
//    compare them with std::errc, e.g. `ec == std::errc::connection_refused`;
//  - libvsock's own codes, vsock::errc in vsock::error_category(), for what is not a
//    syscall failure: a malformed address, a hybrid handshake that the guest refused, that
//    timed out, or whose reply made no sense.
// Each vsock::errc maps to the closest std::errc condition, so portable checks work for
// both transports: a hybrid connect the guest refused compares equal to
// std::errc::connection_refused, exactly like a refused AF_VSOCK connect (ECONNRESET from
// the kernel is also reported that way by vsock::connect, see vsock/stream.h).
//
//   std::error_code ec;
//   vsock::Stream s = vsock::connect(addr, std::chrono::seconds(2), ec);
//   if (ec == std::errc::connection_refused) { ... nobody listens on that port ... }
//   if (ec == vsock::errc::handshake_timeout) { ... the hybrid device did not answer ... }
//   if (ec) std::cerr << ec.message() << "\n";
//
// Threading: the category is a stateless singleton, safe from any thread.
#pragma once

#include <string>
#include <system_error>

#include "vsock/config.h"

namespace vsock {

enum class errc {
  // The address text or value is not valid for this operation (bad syntax, a port out of
  // range, connecting to port "any", ...). Condition: std::errc::invalid_argument.
  invalid_address = 1,
  // Hybrid handshake: the device answered "ERR <reason>" or closed the connection without
  // a reply: the guest refused the connection or nothing listens on that guest port.
  // Condition: std::errc::connection_refused.
  handshake_refused,
  // Hybrid handshake: no complete reply line within the timeout.
  // Condition: std::errc::timed_out.
  handshake_timeout,
  // Hybrid handshake: the reply line is neither "OK ..." nor "ERR ...", or it is too long.
  // Condition: std::errc::protocol_error.
  bad_handshake_reply,
};

// The category of vsock::errc codes; its name() is "vsock".
VSOCK_API const std::error_category& error_category() noexcept;

// Found by argument-dependent lookup: lets `std::error_code ec = vsock::errc::...` and
// `ec == vsock::errc::...` compile.
inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), error_category()};
}

}  // namespace vsock

template <>
struct std::is_error_code_enum<vsock::errc> : std::true_type {};
