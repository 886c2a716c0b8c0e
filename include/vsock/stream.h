// vsock::Stream (a connected stream socket), vsock::connect (blocking, with a timeout) and
// vsock::Connector (the same connect, non-blocking, driven from the caller's poll/epoll).
//
// One API for both sides of a VM:
//  - vsock://CID:PORT   kernel AF_VSOCK: socket(), SO_VM_SOCKETS_CONNECT_TIMEOUT, connect().
//                       A port nobody listens on makes Linux fail the connect with
//                       ECONNRESET; libvsock reports it as ECONNREFUSED (the same condition
//                       as a refused hybrid connect).
//  - hvsock://PATH:PORT vsockd's hybrid socket: connect to PATH, write "CONNECT PORT\n",
//                       read the reply line byte by byte (never past its '\n', so no payload
//                       behind it is lost): "OK ..." -> connected; "ERR <reason>" or a close
//                       -> errc::handshake_refused (the reason text goes to `why`); no
//                       complete line in time -> errc::handshake_timeout; anything else ->
//                       errc::bad_handshake_reply.
//  - unix:PATH          a plain Unix stream socket, no handshake.
// Whatever the transport, the result is a Stream owning a SOCK_STREAM fd (close-on-exec,
// blocking unless you ask otherwise), written with MSG_NOSIGNAL (no SIGPIPE: a write to a
// closed peer fails with EPIPE).
//
// Threading: a Stream or Connector is owned by one thread at a time, like the fd inside.
// Reads and writes on one Stream from two threads at once are as safe as they are on the fd.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>

#include "vsock/address.h"
#include "vsock/config.h"
#include "vsock/error.h"

namespace vsock {

enum class Shutdown { read, write, both };

class VSOCK_API Stream {
 public:
  Stream() = default;
  // Adopts `fd` (a connected stream socket; closed by the destructor). nonblocking()
  // reflects the fd's O_NONBLOCK flag.
  explicit Stream(int fd, Address local = {}, Address peer = {});
  ~Stream() { close(); }
  Stream(Stream&& other) noexcept;
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  bool is_open() const { return fd_ >= 0; }
  explicit operator bool() const { return is_open(); }
  // The fd, for your own poll/epoll (or setsockopt). Still owned by the Stream.
  int native_handle() const { return fd_; }
  // Gives up ownership of the fd (the Stream is then closed, the fd is not).
  int release();
  // Closes the fd (no error is reported: POSIX leaves the fd closed whatever close says).
  void close();

  // One read(): returns the bytes read, 0 at end of stream (ec clear). Errors: the
  // syscall's; on a non-blocking stream with nothing to read,
  // std::errc::operation_would_block; when a receive timeout expires, std::errc::timed_out.
  // EINTR is retried.
  size_t read_some(void* buf, size_t len, std::error_code& ec);
  // Reads until `len` bytes or the end of the stream; returns how many (less than `len`
  // only at the end of the stream or on error).
  size_t read(void* buf, size_t len, std::error_code& ec);
  // One send(); returns the bytes written (maybe fewer than len). Errors as read_some.
  size_t write_some(const void* buf, size_t len, std::error_code& ec);
  // Writes everything unless an error occurs; returns the bytes written. On a non-blocking
  // stream it stops with operation_would_block when the socket is full.
  size_t write_all(const void* buf, size_t len, std::error_code& ec);
  size_t write_all(std::string_view data, std::error_code& ec) {
    return write_all(data.data(), data.size(), ec);
  }

  // shutdown(2): Shutdown::write sends end-of-stream to the peer (half-close) while reads
  // go on.
  void shutdown(Shutdown how, std::error_code& ec);
  void set_nonblocking(bool on, std::error_code& ec);
  bool nonblocking() const { return nonblocking_; }
  // Timeouts for blocking reads and writes (SO_RCVTIMEO / SO_SNDTIMEO); zero = none.
  // A read or write that times out fails with std::errc::timed_out.
  void set_read_timeout(std::chrono::milliseconds timeout, std::error_code& ec);
  void set_write_timeout(std::chrono::milliseconds timeout, std::error_code& ec);

  // The addresses recorded when the stream was made. vsock: from getsockname/getpeername.
  // Hybrid (connect): peer = hvsock://PATH:PORT; local = vsock://any:any (the convention
  // does not say). Hybrid (accept): local = hvsock://PATH:PORT of the listener; peer =
  // vsock://GUEST-CID:GUEST-PORT from vsockd's caller name, else vsock://any:any. Unix: unix:PATH
  // where the socket has a name, else vsock://any:any.
  const Address& local_address() const { return local_; }
  const Address& peer_address() const { return peer_; }

 private:
  int fd_ = -1;
  bool nonblocking_ = false;
  Address local_, peer_;
};

// Connects to `address` (vsock, hybrid or unix: see above), waiting at most `timeout` for
// the connection and, for hybrid, its handshake (zero or negative: no limit of ours; the
// kernel's vsock connect timeout, 2 s by default, still applies unless a timeout is given).
// Returns an open blocking Stream, or a closed one with `ec` set; `why` (optional) gets a
// readable explanation of a failure, including the text of a hybrid "ERR" reply.
// Timeouts: std::errc::timed_out for the connect itself, errc::handshake_timeout for the
// hybrid reply.
VSOCK_API Stream connect(const Address& address, std::chrono::milliseconds timeout,
                         std::error_code& ec, std::string* why = nullptr);

// Non-blocking connect for an event loop:
//
//   vsock::Connector c;
//   c.start(addr, ec);                      // never blocks
//   while (!ec && !c.done()) {
//     pollfd p{c.native_handle(), c.events(), 0};
//     ::poll(&p, 1, remaining_ms);          // or your epoll: re-arm with c.events() each step
//     if (timed out) { ec = c.timeout_error(); break; }
//     c.step(ec);                           // reads/writes what is ready, never blocks
//   }
//   if (!ec) vsock::Stream s = c.take_stream();   // still non-blocking, for your loop
//
// The fd stays the same from start() to take_stream() (register it once with epoll and
// modify its events); events() may change after each step(). Timing is the caller's.
class VSOCK_API Connector {
 public:
  Connector();
  ~Connector();
  Connector(Connector&&) noexcept;
  Connector& operator=(Connector&&) noexcept;
  Connector(const Connector&) = delete;
  Connector& operator=(const Connector&) = delete;

  // Starts connecting (any previous attempt is dropped). Fails at once (ec set) for a bad
  // address or a socket error; otherwise the attempt is under way, or already done().
  // For vsock, a positive `vsock_connect_timeout` is set as SO_VM_SOCKETS_CONNECT_TIMEOUT
  // (the kernel gives up after 2 s by default, even for a non-blocking connect).
  void start(const Address& address, std::error_code& ec,
             std::chrono::milliseconds vsock_connect_timeout = std::chrono::milliseconds(0));
  // The same for either socket type. SocketType::seqpacket: a SOCK_SEQPACKET socket; hybrid
  // goes to "PATH.seqpacket" and the CONNECT / OK handshake is one message each way (see
  // vsock/seqpacket.h). take_stream() then holds the SEQPACKET fd: wrap it with
  // vsock::SeqpacketSocket(c.take_stream()).
  void start(const Address& address, SocketType type, std::error_code& ec,
             std::chrono::milliseconds vsock_connect_timeout = std::chrono::milliseconds(0));
  // Advances once the fd is ready (a spurious call is harmless). On failure `ec` is set,
  // the attempt is over and reason() explains it.
  void step(std::error_code& ec);
  // True once connected: take_stream() may be called.
  bool done() const;
  // The fd to watch (-1 when idle or failed).
  int native_handle() const;
  // poll() events to wait for: POLLIN or POLLOUT (for epoll: EPOLLIN / EPOLLOUT, the same
  // bit values).
  short events() const;
  // The error to report when the caller's own deadline passes before done():
  // std::errc::timed_out while the socket connects, errc::handshake_timeout while waiting for
  // the hybrid reply.
  std::error_code timeout_error() const;
  // A readable explanation of the last failure (with a hybrid ERR reply's text).
  const std::string& reason() const;
  // The connected stream, left non-blocking (set_nonblocking(false) for blocking calls).
  // The Connector becomes idle.
  Stream take_stream();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace vsock
