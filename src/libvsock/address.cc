// vsock::Address: parsing, printing and sockaddr conversion (see vsock/address.h).
#include "vsock/address.h"

#include <linux/vm_sockets.h>
#include <sys/un.h>

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstring>

#include "libvsock/internal.h"
#include "vsock/error.h"

namespace vsock {
namespace {

constexpr std::string_view kForms =
    "expected vsock://CID:PORT, hvsock://PATH:PORT, CID:PORT, PORT or unix:PATH";

bool starts_with_nocase(std::string_view text, std::string_view prefix) {
  if (text.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(text[i])) != prefix[i]) return false;
  }
  return true;
}

bool equals_nocase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && starts_with_nocase(a, b);
}

// Decimal 0..4294967295, digits only.
std::optional<uint32_t> parse_u32(std::string_view s) {
  if (s.empty() || s.size() > 10) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (v > 0xFFFFFFFFull) return std::nullopt;
  return static_cast<uint32_t>(v);
}

// Collects the first error of a parse.
struct Parser {
  std::string_view text;
  std::error_code& ec;
  std::string* why;

  std::nullopt_t fail(const std::string& problem) {
    ec = errc::invalid_address;
    if (why != nullptr) *why = "vsock address '" + detail::printable(text) + "': " + problem;
    return std::nullopt;
  }

  std::optional<uint32_t> cid(std::string_view s) {
    if (equals_nocase(s, "any")) return cid_any;
    if (equals_nocase(s, "host")) return cid_host;
    if (equals_nocase(s, "local")) return cid_local;
    if (equals_nocase(s, "hypervisor")) return cid_hypervisor;
    if (auto v = parse_u32(s)) return v;
    if (s.empty()) return fail("the CID is missing");
    return fail("CID '" + detail::printable(s) +
                "' is not a number 0..4294967295 or one of any, host, local, hypervisor");
  }

  std::optional<uint32_t> port(std::string_view s, bool any_allowed) {
    if (any_allowed && equals_nocase(s, "any")) return port_any;
    if (auto v = parse_u32(s)) return v;
    if (s.empty()) return fail("the port is missing");
    return fail("port '" + detail::printable(s) + "' is not a number 0..4294967295" +
                (any_allowed ? " (or 'any')" : ""));
  }

  // "CID:PORT" (exactly one ':').
  std::optional<Address> cid_port(std::string_view rest, std::string_view form) {
    size_t colon = rest.find(':');
    if (colon == std::string_view::npos || rest.find(':', colon + 1) != std::string_view::npos) {
      return fail("expected " + std::string(form));
    }
    auto c = cid(rest.substr(0, colon));
    if (!c) return std::nullopt;
    auto p = port(rest.substr(colon + 1), true);
    if (!p) return std::nullopt;
    return Address::vsock(*c, *p);
  }

  std::optional<std::string> path(std::string_view s) {
    if (s.empty()) return fail("the path is empty");
    if (s.find('\0') != std::string_view::npos) return fail("the path contains a NUL byte");
    return std::string(s);
  }
};

std::string number_or_any(uint32_t v) { return v == 0xFFFFFFFFu ? "any" : std::to_string(v); }

}  // namespace

std::optional<Address> Address::parse(std::string_view text, std::error_code& ec,
                                      std::string* why) {
  ec.clear();
  Parser p{text, ec, why};
  if (text.empty()) return p.fail("empty address");
  for (char c : text) {
    if (std::isspace(static_cast<unsigned char>(c))) return p.fail("blanks are not allowed");
  }
  if (starts_with_nocase(text, "vsock://")) {
    return p.cid_port(text.substr(8), "vsock://CID:PORT");
  }
  if (starts_with_nocase(text, "hvsock://")) {
    std::string_view rest = text.substr(9);
    size_t colon = rest.rfind(':');
    if (colon == std::string_view::npos) return p.fail("expected hvsock://PATH:PORT");
    auto path = p.path(rest.substr(0, colon));
    if (!path) return std::nullopt;
    auto port = p.port(rest.substr(colon + 1), false);
    if (!port) return std::nullopt;
    return Address::hybrid(std::move(*path), *port);
  }
  if (starts_with_nocase(text, "unix://")) {
    auto path = p.path(text.substr(7));
    if (!path) return std::nullopt;
    return Address::unix_socket(std::move(*path));
  }
  if (starts_with_nocase(text, "unix:")) {
    auto path = p.path(text.substr(5));
    if (!path) return std::nullopt;
    return Address::unix_socket(std::move(*path));
  }
  if (starts_with_nocase(text, "vsock:")) return p.cid_port(text.substr(6), "vsock:CID:PORT");
  if (text.find("://") != std::string_view::npos) {
    return p.fail("unknown scheme; " + std::string(kForms));
  }
  if (text.find(':') != std::string_view::npos) return p.cid_port(text, "CID:PORT");
  // A port alone: listening on any CID.
  if (equals_nocase(text, "any")) return Address::vsock(cid_any, port_any);
  if (auto v = parse_u32(text)) return Address::vsock(cid_any, *v);
  if (!text.empty() &&
      std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return p.fail("port '" + detail::printable(text) + "' is not a number 0..4294967295");
  }
  return p.fail(std::string(kForms));
}

std::string Address::to_string() const {
  switch (kind_) {
    case Kind::vsock:
      return "vsock://" + number_or_any(cid_) + ":" + number_or_any(port_);
    case Kind::hybrid:
      return "hvsock://" + path_ + ":" + std::to_string(port_);
    case Kind::unix_socket:
      // "unix://" is stripped by parse(), so a path that itself starts with "//" needs it.
      return (path_.starts_with("//") ? "unix://" : "unix:") + path_;
  }
  return {};
}

std::string Address::hybrid_listen_path() const {
  if (kind_ != Kind::hybrid) return {};
  return path_ + "_" + std::to_string(port_);
}

socklen_t Address::to_sockaddr(sockaddr_storage& out, std::error_code& ec) const {
  ec.clear();
  std::memset(&out, 0, sizeof out);
  if (kind_ == Kind::vsock) {
    auto* vm = reinterpret_cast<sockaddr_vm*>(&out);
    vm->svm_family = AF_VSOCK;
    vm->svm_cid = cid_;
    vm->svm_port = port_;
    return sizeof(sockaddr_vm);
  }
  auto* un = reinterpret_cast<sockaddr_un*>(&out);
  un->sun_family = AF_UNIX;
  if (path_.empty() || path_.find('\0') != std::string::npos) {
    ec = errc::invalid_address;
    return 0;
  }
  if (path_[0] == '@') {  // Linux abstract namespace: a leading NUL, no terminator
    if (path_.size() > sizeof(un->sun_path)) {
      ec = std::make_error_code(std::errc::filename_too_long);
      return 0;
    }
    std::memcpy(un->sun_path + 1, path_.data() + 1, path_.size() - 1);
    return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path_.size());
  }
  if (path_.size() >= sizeof(un->sun_path)) {
    ec = std::make_error_code(std::errc::filename_too_long);
    return 0;
  }
  std::memcpy(un->sun_path, path_.data(), path_.size());
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path_.size() + 1);
}

std::optional<Address> Address::from_sockaddr(const sockaddr* addr, socklen_t len,
                                              std::error_code& ec) {
  ec.clear();
  if (addr == nullptr || len < static_cast<socklen_t>(sizeof(sa_family_t))) {
    ec = errc::invalid_address;
    return std::nullopt;
  }
  if (addr->sa_family == AF_VSOCK) {
    if (len < static_cast<socklen_t>(sizeof(sockaddr_vm))) {
      ec = errc::invalid_address;
      return std::nullopt;
    }
    sockaddr_vm vm;
    std::memcpy(&vm, addr, sizeof vm);
    return Address::vsock(vm.svm_cid, vm.svm_port);
  }
  if (addr->sa_family == AF_UNIX) {
    const auto* un = reinterpret_cast<const sockaddr_un*>(addr);
    size_t n = std::min(static_cast<size_t>(len), sizeof(sockaddr_un));
    size_t base = offsetof(sockaddr_un, sun_path);
    if (n <= base) {  // unnamed (an unbound client)
      ec = errc::invalid_address;
      return std::nullopt;
    }
    const char* p = un->sun_path;
    size_t plen = n - base;
    if (p[0] == '\0') {
      // Built by append, not "@" + std::string(...): g++ 12 at -O3 reports a false
      // -Wrestrict on the operator+ form.
      std::string name(1, '@');
      name.append(p + 1, plen - 1);
      return Address::unix_socket(name);
    }
    return Address::unix_socket(std::string(p, strnlen(p, plen)));
  }
  ec = std::make_error_code(std::errc::address_family_not_supported);
  return std::nullopt;
}

}  // namespace vsock
