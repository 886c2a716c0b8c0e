// Caller names: how vsockd tells a host listener which guest is calling.
//
// Role: when vsockd connects to a host Unix socket for a guest (guest -> host), it first binds
// its end of the AF_UNIX socket to an abstract name of the form
//
//   "\0vsockd/<instance>/<guest-cid>/<guest-port>/<host-port>"
//
// (decimal numbers; <instance> is unique to one vsockd process: "<pid>.<start time, hex ns>",
// no '/' in it). The host side reads it with getpeername() on the accepted socket (or
// accept()'s address) and so learns the guest's CID and port without any change to the hybrid
// byte stream: a listener that ignores the name sees exactly what it saw before. The AF_VSOCK
// shim (src/preload) turns it into the sockaddr_vm that accept() and getpeername() report.
// Only vsockd's own connects carry such a name; any other peer has none (ParseCallerName
// fails).
//
// Callers: host::UnixBackend (format), the preload shim (parse), tests.
// Threading: pure functions, no state, no allocation in the parser. Header-only on purpose:
// the shim includes it without linking any vsockd library.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace vsockd::host {

inline constexpr std::string_view kCallerNamePrefix = "vsockd/";

struct CallerName {
  std::string_view instance;  // points into the parsed name
  uint64_t guest_cid = 0;
  uint32_t guest_port = 0;
  uint32_t host_port = 0;
};

// The abstract name (without its leading NUL byte).
inline std::string FormatCallerName(std::string_view instance, uint64_t guest_cid,
                                    uint32_t guest_port, uint32_t host_port) {
  std::string out(kCallerNamePrefix);
  out.append(instance);
  out += '/';
  out += std::to_string(guest_cid);
  out += '/';
  out += std::to_string(guest_port);
  out += '/';
  out += std::to_string(host_port);
  return out;
}

namespace caller_name_detail {
// Parses a decimal number up to `max` from the front of `s`, ending at '/' or the end.
inline bool ParseNumber(std::string_view* s, uint64_t max, uint64_t* out) {
  uint64_t v = 0;
  size_t i = 0;
  for (; i < s->size() && (*s)[i] != '/'; ++i) {
    char c = (*s)[i];
    if (c < '0' || c > '9' || i >= 10) return false;  // at most 10 digits (u32 / CID)
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (i == 0 || v > max) return false;
  *out = v;
  s->remove_prefix(i);
  return true;
}
}  // namespace caller_name_detail

// Parses an abstract name (without the leading NUL). False if it is not a caller name.
inline bool ParseCallerName(std::string_view name, CallerName* out) {
  using caller_name_detail::ParseNumber;
  if (name.substr(0, kCallerNamePrefix.size()) != kCallerNamePrefix) return false;
  name.remove_prefix(kCallerNamePrefix.size());
  size_t slash = name.find('/');
  if (slash == 0 || slash == std::string_view::npos) return false;
  CallerName r;
  r.instance = name.substr(0, slash);
  name.remove_prefix(slash + 1);
  uint64_t cid, gport, hport;
  if (!ParseNumber(&name, 0xFFFFFFFFull, &cid) || name.empty() || name[0] != '/') return false;
  name.remove_prefix(1);
  if (!ParseNumber(&name, 0xFFFFFFFFull, &gport) || name.empty() || name[0] != '/') return false;
  name.remove_prefix(1);
  if (!ParseNumber(&name, 0xFFFFFFFFull, &hport) || !name.empty()) return false;
  r.guest_cid = cid;
  r.guest_port = static_cast<uint32_t>(gport);
  r.host_port = static_cast<uint32_t>(hport);
  *out = r;
  return true;
}

// Parses a peer address as getpeername()/accept() return it for an AF_UNIX socket.
inline bool ParseCallerAddress(const sockaddr_un* addr, socklen_t len, CallerName* out) {
  constexpr socklen_t kPathOffset = offsetof(sockaddr_un, sun_path);
  if (addr == nullptr || len <= kPathOffset || len > sizeof(sockaddr_un)) return false;
  if (addr->sun_family != AF_UNIX || addr->sun_path[0] != '\0') return false;  // not abstract
  return ParseCallerName(
      std::string_view(addr->sun_path + 1, static_cast<size_t>(len - kPathOffset - 1)), out);
}

}  // namespace vsockd::host
