// vsock::SeqpacketSocket and vsock::connect_seqpacket (see vsock/seqpacket.h).
#include "vsock/seqpacket.h"

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>

#include "libvsock/internal.h"

namespace vsock {
size_t SeqpacketSocket::send(const void* buf, size_t len, bool eor, std::error_code& ec) {
  ec.clear();
  if (!is_open()) {
    ec = detail::sys_error(EBADF);
    return 0;
  }
  const int flags = MSG_NOSIGNAL | (eor ? MSG_EOR : 0);
  while (true) {
    ssize_t n = ::send(native_handle(), buf, len, flags);
    if (n >= 0) return static_cast<size_t>(n);
    if (errno == EINTR) continue;
    ec = detail::io_error(errno, nonblocking());
    return 0;
  }
}

Message SeqpacketSocket::receive(void* buf, size_t len, std::error_code& ec) {
  ec.clear();
  Message m;
  if (!is_open()) {
    ec = detail::sys_error(EBADF);
    return m;
  }
  iovec iov{buf, len};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  while (true) {
    // MSG_TRUNC in flags: AF_UNIX and AF_VSOCK SEQPACKET return the message's real length.
    ssize_t n = ::recvmsg(native_handle(), &msg, MSG_TRUNC);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ec = detail::io_error(errno, nonblocking());
      return m;
    }
    m.full_size = static_cast<size_t>(n);
    m.size = std::min(m.full_size, len);
    m.truncated = (msg.msg_flags & MSG_TRUNC) != 0 || m.full_size > len;
    m.eor = (msg.msg_flags & MSG_EOR) != 0;
    m.end_of_stream = n == 0;
    return m;
  }
}

std::string SeqpacketSocket::receive(size_t max, std::error_code& ec, Message* info) {
  std::string out(max, '\0');
  Message m = receive(out.data(), out.size(), ec);
  out.resize(ec ? 0 : m.size);
  if (info != nullptr) *info = m;
  return out;
}

SeqpacketSocket connect_seqpacket(const Address& address, std::chrono::milliseconds timeout,
                                  std::error_code& ec, std::string* why) {
  return SeqpacketSocket(detail::connect_typed(address, SocketType::seqpacket, timeout, ec, why));
}

}  // namespace vsock
