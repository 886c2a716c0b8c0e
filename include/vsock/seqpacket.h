// vsock::SeqpacketSocket (a connected SOCK_SEQPACKET socket: whole messages, boundaries
// kept) and vsock::connect_seqpacket. Listening: vsock::listen(address, SocketType::seqpacket,
// ...) and Listener::accept_seqpacket (vsock/listener.h); non-blocking connects:
// Connector::start(address, SocketType::seqpacket, ...) + take_seqpacket (vsock/stream.h).
//
// One API for both sides of a VM, as for streams:
//  - vsock://CID:PORT   kernel AF_VSOCK SOCK_SEQPACKET (Linux 5.14+ in the guest).
//  - hvsock://PATH:PORT vsockd's hybrid SEQPACKET convention (src/host/unix_backend.h):
//                       connect: an AF_UNIX SOCK_SEQPACKET socket to "PATH.seqpacket", the
//                       message "CONNECT PORT\n", the reply message "OK <n>\n" (or "ERR
//                       <reason>\n" -> errc::handshake_refused); listen: "PATH_PORT.seqpacket",
//                       where vsockd connects when a guest SEQPACKET-connects to host port
//                       PORT. Then every message is one vsock message.
//  - unix:PATH          a plain AF_UNIX SOCK_SEQPACKET socket, no handshake.
//
// Messages: send() sends one message (all or nothing: EMSGSIZE when it can never fit).
// receive() returns one message: what fits in the caller's buffer, the rest of that message
// is discarded (as recv(2) does), and the result says so (truncated, with full_size the
// message's real length, like MSG_TRUNC). EOR: on AF_VSOCK, send(..., eor=true) sets MSG_EOR
// and receive() reports the peer's MSG_EOR (kernel semantics). AF_UNIX (hybrid, unix) keeps
// message boundaries but carries no EOR bit, so there eor is never reported (vsockd does not
// set VIRTIO_VSOCK_SEQ_EOR on messages from the host either). An empty message cannot be
// told from the end of the connection by size alone (recv returns 0 for both); receive()
// sets end_of_stream for either, so do not send empty messages.
//
// Threading: owned by one thread at a time, like the fd inside.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <system_error>

#include "vsock/address.h"
#include "vsock/config.h"
#include "vsock/stream.h"

namespace vsock {

// What receive() got.
struct Message {
  size_t size = 0;             // bytes stored in the caller's buffer
  size_t full_size = 0;        // the message's length (> size when truncated)
  bool truncated = false;      // MSG_TRUNC: the buffer was too small, the rest is gone
  bool eor = false;            // MSG_EOR: the sender marked the end of a record (AF_VSOCK only)
  bool end_of_stream = false;  // 0 bytes and no message: the peer shut down / closed
};

class VSOCK_API SeqpacketSocket {
 public:
  SeqpacketSocket() = default;
  // Adopts a connected SOCK_SEQPACKET fd (closed by the destructor).
  explicit SeqpacketSocket(int fd, Address local = {}, Address peer = {})
      : s_(fd, std::move(local), std::move(peer)) {}
  // Adopts the fd inside a Stream (e.g. from Listener::accept on a seqpacket Listener).
  explicit SeqpacketSocket(Stream&& s) : s_(std::move(s)) {}

  bool is_open() const { return s_.is_open(); }
  explicit operator bool() const { return is_open(); }
  int native_handle() const { return s_.native_handle(); }
  int release() { return s_.release(); }
  void close() { s_.close(); }

  // Sends one message (MSG_NOSIGNAL; MSG_EOR when `eor`). Returns its size. Errors: the
  // syscall's (EMSGSIZE: larger than the socket can ever take; EPIPE: the peer is gone);
  // operation_would_block on a non-blocking socket without room; timed_out after a
  // write timeout. EINTR is retried.
  size_t send(const void* buf, size_t len, bool eor, std::error_code& ec);
  size_t send(std::string_view msg, bool eor, std::error_code& ec) {
    return send(msg.data(), msg.size(), eor, ec);
  }
  size_t send(std::string_view msg, std::error_code& ec) { return send(msg, false, ec); }
  // Receives one message into buf (see Message). Errors as Stream::read_some.
  Message receive(void* buf, size_t len, std::error_code& ec);
  // Receives one message of any size up to `max` bytes into a string (truncated beyond).
  std::string receive(size_t max, std::error_code& ec, Message* info = nullptr);

  void shutdown(Shutdown how, std::error_code& ec) { s_.shutdown(how, ec); }
  void set_nonblocking(bool on, std::error_code& ec) { s_.set_nonblocking(on, ec); }
  bool nonblocking() const { return s_.nonblocking(); }
  void set_read_timeout(std::chrono::milliseconds t, std::error_code& ec) {
    s_.set_read_timeout(t, ec);
  }
  void set_write_timeout(std::chrono::milliseconds t, std::error_code& ec) {
    s_.set_write_timeout(t, ec);
  }
  // As Stream's (vsock/stream.h).
  const Address& local_address() const { return s_.local_address(); }
  const Address& peer_address() const { return s_.peer_address(); }

 private:
  Stream s_;  // the fd and its bookkeeping; only the I/O differs
};

// Connects a SEQPACKET socket to `address` (see above); timeout, errors and `why` as
// vsock::connect.
VSOCK_API SeqpacketSocket connect_seqpacket(const Address& address,
                                            std::chrono::milliseconds timeout, std::error_code& ec,
                                            std::string* why = nullptr);

}  // namespace vsock
