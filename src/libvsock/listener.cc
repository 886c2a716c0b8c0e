// vsock::Listener and vsock::listen (see vsock/listener.h).
#include "vsock/listener.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <utility>

#include "host/caller_name.h"  // header-only: compiled in, not installed
#include "libvsock/internal.h"

namespace vsock {
namespace {

// True if something accepts connections at the Unix socket `addr` (a live listener).
bool unix_path_is_live(const sockaddr_storage& addr, socklen_t len, int type) {
  int probe = ::socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (probe < 0) return true;  // cannot tell: do not remove anything
  int r = ::connect(probe, reinterpret_cast<const sockaddr*>(&addr), len);
  int e = errno;
  ::close(probe);
  // EAGAIN: a live listener with a full backlog.
  return r == 0 || (e != ECONNREFUSED && e != ENOENT);
}

}  // namespace

Listener::Listener(Listener&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      nonblocking_(other.nonblocking_),
      type_(other.type_),
      local_(std::move(other.local_)),
      unlink_path_(std::exchange(other.unlink_path_, {})),
      dev_(other.dev_),
      ino_(other.ino_) {}

Listener& Listener::operator=(Listener&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = std::exchange(other.fd_, -1);
    nonblocking_ = other.nonblocking_;
    type_ = other.type_;
    local_ = std::move(other.local_);
    unlink_path_ = std::exchange(other.unlink_path_, {});
    dev_ = other.dev_;
    ino_ = other.ino_;
  }
  return *this;
}

void Listener::close() {
  if (fd_ < 0) return;
  ::close(std::exchange(fd_, -1));
  if (!unlink_path_.empty()) {
    // Only our own socket file: someone may have replaced it since.
    struct stat st;
    if (::lstat(unlink_path_.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == dev_ &&
        st.st_ino == ino_) {
      ::unlink(unlink_path_.c_str());
    }
    unlink_path_.clear();
  }
}

void Listener::set_nonblocking(bool on, std::error_code& ec) {
  ec = fd_ < 0 ? detail::sys_error(EBADF) : detail::set_nonblocking(fd_, on);
  if (!ec) nonblocking_ = on;
}

Stream Listener::accept(std::error_code& ec) {
  ec.clear();
  if (fd_ < 0) {
    ec = detail::sys_error(EBADF);
    return {};
  }
  sockaddr_storage ss{};
  socklen_t len;
  int fd;
  while (true) {
    len = sizeof ss;
    fd = ::accept4(fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC);
    if (fd >= 0) break;
    if (errno == EINTR || errno == ECONNABORTED) continue;
    ec = detail::last_error();
    return {};
  }
  Address local = local_, peer;  // peer stays vsock://any:any when unknown
  std::error_code ignored;
  if (local_.is_vsock()) {
    if (auto p = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len, ignored)) {
      peer = *p;
    }
    sockaddr_storage me{};
    socklen_t mlen = sizeof me;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&me), &mlen) == 0) {
      if (auto l = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&me), mlen, ignored)) {
        local = *l;
      }
    }
  } else if (local_.is_unix()) {
    if (auto p = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len, ignored)) {
      peer = *p;
    }
  } else if (local_.is_hybrid()) {
    // vsockd binds its end to an abstract name carrying the guest's CID and port.
    vsockd::host::CallerName caller;
    if (vsockd::host::ParseCallerAddress(reinterpret_cast<const sockaddr_un*>(&ss), len, &caller)) {
      peer = Address::vsock(static_cast<uint32_t>(caller.guest_cid), caller.guest_port);
    }
  }
  return Stream(fd, std::move(local), std::move(peer));
}

Stream Listener::accept(std::chrono::milliseconds timeout, std::error_code& ec) {
  using Clock = std::chrono::steady_clock;
  ec.clear();
  if (fd_ < 0) {
    ec = detail::sys_error(EBADF);
    return {};
  }
  const auto deadline = Clock::now() + detail::cap_timeout(timeout);
  while (true) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() < 0) left = std::chrono::milliseconds(0);
    pollfd p{fd_, POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1 << 30)));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      ec = detail::last_error();
      return {};
    }
    if (r == 0) {
      ec = detail::sys_error(ETIMEDOUT);
      return {};
    }
    return accept(ec);
  }
}

Listener listen(const Address& address, SocketType type, std::error_code& ec, int backlog) {
  ec.clear();
  Listener l;
  Address bind_address = address;
  if (address.is_hybrid()) {
    if (address.port() == port_any) {
      ec = errc::invalid_address;
      return {};
    }
    bind_address = Address::unix_socket(address.hybrid_listen_path(type));
  }
  sockaddr_storage ss;
  socklen_t len = bind_address.to_sockaddr(ss, ec);
  if (ec) return {};
  int family = address.is_vsock() ? AF_VSOCK : AF_UNIX;
  const int sock_type = type == SocketType::seqpacket ? SOCK_SEQPACKET : SOCK_STREAM;
  int fd = ::socket(family, sock_type | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ec = detail::last_error();
    return {};
  }
  l.fd_ = fd;
  l.type_ = type;
  int r = ::bind(fd, reinterpret_cast<sockaddr*>(&ss), len);
  const bool file_path = family == AF_UNIX && bind_address.path()[0] != '@';
  if (r < 0 && errno == EADDRINUSE && file_path && !unix_path_is_live(ss, len, sock_type)) {
    // A stale socket file left by a listener that is gone.
    ::unlink(bind_address.path().c_str());
    r = ::bind(fd, reinterpret_cast<sockaddr*>(&ss), len);
  }
  if (r < 0) {
    ec = detail::last_error();
    return {};
  }
  if (file_path) {
    struct stat st;
    if (::stat(bind_address.path().c_str(), &st) == 0) {
      l.unlink_path_ = bind_address.path();
      l.dev_ = st.st_dev;
      l.ino_ = st.st_ino;
    }
  }
  if (::listen(fd, backlog) < 0) {
    ec = detail::last_error();
    return {};  // `l` closes and removes the file
  }
  l.local_ = address;
  if (address.is_vsock()) {
    sockaddr_storage me{};
    socklen_t mlen = sizeof me;
    std::error_code ignored;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&me), &mlen) == 0) {
      if (auto a = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&me), mlen, ignored)) {
        l.local_ = *a;
      }
    }
  }
  return l;
}

}  // namespace vsock
