// vsock::Address: where a vsock stream goes, in one text syntax shared by every tool.
//
// Three kinds of address:
//  - vsock: a kernel AF_VSOCK endpoint, CID + port (used inside a guest, or on a host with
//    the kernel's vhost-vsock).
//  - hybrid: vsockd's host side ("hybrid vsock", as Firecracker / Cloud Hypervisor /
//    Kata): the Unix socket PATH that vsockd serves (its --uds-path) and a port.
//      connect(hvsock://PATH:P): connect to PATH, handshake "CONNECT P\n" / "OK <n>\n";
//                                reaches guest port P.
//      listen(hvsock://PATH:P):  listen on the Unix socket "PATH_P"; accepts what guests
//                                connect to host (CID 2) port P.
//  - unix: a plain Unix stream socket PATH, no handshake (handy for tests and proxies).
//
// Text syntax (parse() accepts all of these; to_string() writes the first form of each):
//
//   vsock://CID:PORT     Kata's form. CID: a number 0..4294967295 or a name:
//                        `hypervisor` (0), `local` (1), `host` (2), `any` (4294967295 =
//                        VMADDR_CID_ANY). PORT: a number 0..4294967295 or `any`
//                        (4294967295 = VMADDR_PORT_ANY).
//   vsock:CID:PORT       systemd's form (ListenStream=vsock:2:1234), same fields.
//   CID:PORT             short form, e.g. `3:1024`, `host:1024`, `any:5000`.
//   PORT                 short form for listening: `5000` = vsock://any:5000.
//   hvsock://PATH:PORT   Kata's hybrid form. PATH may itself contain ':' (the port is what
//                        follows the last ':'); PORT is a number (not `any`).
//   unix:PATH            plain Unix socket (also accepted: unix://PATH).
//
// to_string() prints CIDs and ports as numbers, except VMADDR_CID_ANY and VMADDR_PORT_ANY,
// which it prints as `any`; parse(to_string(a)) == a for every address.
//
// Names are matched case-insensitively; no blanks are allowed anywhere. Parse errors say
// what is wrong, e.g.
//   vsock address 'vsock://3:abc': port 'abc' is not a number 0..4294967295 (or 'any')
//
// Threading: a plain value type.
#pragma once

#include <sys/socket.h>

#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

#include "vsock/config.h"

namespace vsock {

// Well-known CIDs and ports (the values of <linux/vm_sockets.h>).
inline constexpr uint32_t cid_hypervisor = 0;
inline constexpr uint32_t cid_local = 1;  // loopback (Linux 5.6+)
inline constexpr uint32_t cid_host = 2;
inline constexpr uint32_t cid_any = 0xFFFFFFFFu;   // VMADDR_CID_ANY
inline constexpr uint32_t port_any = 0xFFFFFFFFu;  // VMADDR_PORT_ANY

// The socket type: a byte stream (SOCK_STREAM) or whole messages (SOCK_SEQPACKET, see
// vsock/seqpacket.h).
enum class SocketType { stream, seqpacket };

class VSOCK_API Address {
 public:
  enum class Kind { vsock, hybrid, unix_socket };

  // vsock://any:any (a listener's "bind anything").
  Address() = default;

  static Address vsock(uint32_t cid, uint32_t port) { return Address(Kind::vsock, cid, port, {}); }
  // vsockd's hybrid socket `uds_path` (vsockd's --uds-path) and a port (see above).
  static Address hybrid(std::string uds_path, uint32_t port) {
    return Address(Kind::hybrid, 0, port, std::move(uds_path));
  }
  static Address unix_socket(std::string path) {
    return Address(Kind::unix_socket, 0, 0, std::move(path));
  }

  // Parses any form listed above. On failure returns nullopt, sets `ec` to
  // errc::invalid_address and, if `why` is given, stores a readable message naming the
  // text and the problem. On success clears `ec`.
  static std::optional<Address> parse(std::string_view text, std::error_code& ec,
                                      std::string* why = nullptr);

  // The canonical text (see above).
  std::string to_string() const;

  Kind kind() const { return kind_; }
  bool is_vsock() const { return kind_ == Kind::vsock; }
  bool is_hybrid() const { return kind_ == Kind::hybrid; }
  bool is_unix() const { return kind_ == Kind::unix_socket; }
  // vsock only (0 otherwise).
  uint32_t cid() const { return cid_; }
  // vsock and hybrid (0 for unix).
  uint32_t port() const { return port_; }
  // hybrid: vsockd's socket path; unix: the socket path; vsock: empty.
  const std::string& path() const { return path_; }

  // Hybrid only: the Unix socket vsockd connects to when a guest connects to host port
  // port(), "PATH_PORT". That is what listen(hvsock://PATH:PORT) listens on.
  std::string hybrid_listen_path() const;
  // The same for SEQPACKET (vsockd's convention, see vsock/seqpacket.h):
  // "PATH_PORT.seqpacket" is where guests' SEQPACKET connects to host port PORT arrive, and
  // "PATH.seqpacket" is vsockd's SEQPACKET socket for host -> guest connects.
  std::string hybrid_listen_path(SocketType type) const {
    return type == SocketType::seqpacket && is_hybrid() ? hybrid_listen_path() + ".seqpacket"
                                                        : hybrid_listen_path();
  }
  std::string hybrid_connect_path(SocketType type) const {
    return type == SocketType::seqpacket && is_hybrid() ? path_ + ".seqpacket" : path_;
  }

  // The socket address a connect() (or, for vsock and unix, a bind()) uses: a sockaddr_vm
  // for vsock, a sockaddr_un of path() for hybrid and unix (a leading '@' in the path names
  // the Linux abstract namespace). Returns its length, or 0 with `ec` set
  // (std::errc::filename_too_long, errc::invalid_address). For your own socket code.
  socklen_t to_sockaddr(sockaddr_storage& out, std::error_code& ec) const;

  // The inverse for AF_VSOCK and AF_UNIX addresses (an AF_UNIX one becomes unix:PATH).
  // nullopt with `ec` = std::errc::address_family_not_supported for other families, or
  // errc::invalid_address for a truncated or unnamed address.
  static std::optional<Address> from_sockaddr(const sockaddr* addr, socklen_t len,
                                              std::error_code& ec);

  friend bool operator==(const Address&, const Address&) = default;

 private:
  Address(Kind kind, uint32_t cid, uint32_t port, std::string path)
      : kind_(kind), cid_(cid), port_(port), path_(std::move(path)) {}

  Kind kind_ = Kind::vsock;
  uint32_t cid_ = cid_any;
  uint32_t port_ = port_any;
  std::string path_;
};

}  // namespace vsock
