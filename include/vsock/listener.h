// vsock::Listener: a listening stream socket, and vsock::listen to make one.
//
// What listen() does for each kind of address:
//  - vsock://CID:PORT   AF_VSOCK socket, bind(CID, PORT), listen(). CID is usually `any`;
//                       PORT `any` lets the kernel pick one (see local_address()).
//                       Accepted peers carry their CID and port.
//  - hvsock://PATH:PORT the host side of guest -> host connections through vsockd: a Unix
//                       socket listening on "PATH_PORT", which is where vsockd (started
//                       with --uds-path PATH) connects when a guest connects to host
//                       (CID 2) port PORT. vsockd names its end of each such connection
//                       after the calling guest, so accepted streams have peer_address()
//                       vsock://GUEST-CID:GUEST-PORT; a peer that is not vsockd (or an
//                       older hybrid device) shows as vsock://any:any.
//  - unix:PATH          a Unix socket listening on PATH.
// For Unix paths, a stale socket file that nobody listens on any more is replaced; a path
// where a live listener answers fails with std::errc::address_in_use (found out by
// connecting to it: that listener sees one connection that closes at once). The socket
// file is removed again when the Listener closes, unless it was replaced meanwhile.
//
// SocketType::seqpacket (vsock/seqpacket.h): an AF_VSOCK / AF_UNIX SOCK_SEQPACKET listener;
// hybrid listens on "PATH_PORT.seqpacket" (vsockd's SEQPACKET convention); accept with
// accept_seqpacket().
//
// Threading: owned by one thread at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <system_error>

#include "vsock/address.h"
#include "vsock/config.h"
#include "vsock/seqpacket.h"
#include "vsock/stream.h"

namespace vsock {

class VSOCK_API Listener {
 public:
  Listener() = default;
  ~Listener() { close(); }
  Listener(Listener&& other) noexcept;
  Listener& operator=(Listener&& other) noexcept;
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  bool is_open() const { return fd_ >= 0; }
  explicit operator bool() const { return is_open(); }
  // The listening fd, for your own poll/epoll (readable = a connection is waiting).
  int native_handle() const { return fd_; }
  // The bound address (for vsock with port `any`, the port the kernel chose).
  const Address& local_address() const { return local_; }
  // Closes the socket (and removes the Unix socket file this Listener created).
  void close();

  // Accepts one connection. Blocking listener: waits for one. Non-blocking listener:
  // std::errc::operation_would_block when none is waiting. EINTR and ECONNABORTED are
  // retried. The Stream is blocking and close-on-exec.
  Stream accept(std::error_code& ec);
  // Waits at most `timeout` (poll) for a connection: std::errc::timed_out if none came.
  Stream accept(std::chrono::milliseconds timeout, std::error_code& ec);
  // For a SocketType::seqpacket Listener: the same, as a SeqpacketSocket
  // (std::errc::invalid_argument on a stream Listener).
  SeqpacketSocket accept_seqpacket(std::error_code& ec) {
    if (!is_seqpacket(ec)) return {};
    return SeqpacketSocket(accept(ec));
  }
  SeqpacketSocket accept_seqpacket(std::chrono::milliseconds timeout, std::error_code& ec) {
    if (!is_seqpacket(ec)) return {};
    return SeqpacketSocket(accept(timeout, ec));
  }
  SocketType type() const { return type_; }
  void set_nonblocking(bool on, std::error_code& ec);

 private:
  bool is_seqpacket(std::error_code& ec) const {
    if (type_ == SocketType::seqpacket) return true;
    ec = std::make_error_code(std::errc::invalid_argument);
    return false;
  }
  friend VSOCK_API Listener listen(const Address&, SocketType, std::error_code&, int);
  int fd_ = -1;
  bool nonblocking_ = false;
  SocketType type_ = SocketType::stream;
  Address local_;
  std::string unlink_path_;     // the socket file we created, removed on close
  uint64_t dev_ = 0, ino_ = 0;  // its identity, so close() never removes someone else's
};

// Listens on `address` (see above) with the given backlog. A closed Listener and `ec` set
// on failure: errc::invalid_address for an address that cannot be listened on (a hybrid
// port `any`), else the syscall's error.
VSOCK_API Listener listen(const Address& address, SocketType type, std::error_code& ec,
                          int backlog = 128);
inline Listener listen(const Address& address, std::error_code& ec, int backlog = 128) {
  return listen(address, SocketType::stream, ec, backlog);
}

}  // namespace vsock
