#include "base/unix_socket.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstddef>
#include <cstring>

namespace vsockd {

Result<socklen_t> MakeUnixAddress(const std::string& path, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (path.empty()) return MakeError(EINVAL, "empty unix socket path");
  if (path.size() >= sizeof addr->sun_path) {
    return MakeError(ENAMETOOLONG, "unix socket path '{}' is longer than {} bytes", path,
                     sizeof addr->sun_path - 1);
  }
  std::memcpy(addr->sun_path, path.data(), path.size());
  if (path[0] == '@') {
    addr->sun_path[0] = '\0';  // abstract namespace: the length, not a NUL, ends the name
    return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  }
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
}

Result<Fd> ListenUnix(const std::string& path, int backlog, bool nonblocking, int type) {
  sockaddr_un addr;
  auto len = MakeUnixAddress(path, &addr);
  if (!len.ok()) return len.take_error();
  int flags = type | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0);
  Fd fd(::socket(AF_UNIX, flags, 0));
  if (!fd) return ErrnoError("socket(AF_UNIX)");
  if (path[0] != '@') {
    // Replace a stale socket (left by a crashed run); refuse to clobber anything else.
    struct stat st;
    if (::lstat(path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) {
        return MakeError(EEXIST, "'{}' exists and is not a socket", path);
      }
      ::unlink(path.c_str());
    }
  }
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), *len) < 0) {
    return ErrnoError("bind '{}'", path);
  }
  if (::listen(fd.get(), backlog) < 0) return ErrnoError("listen '{}'", path);
  return fd;
}

int SocketType(int fd) {
  int type = -1;
  socklen_t len = sizeof type;
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) return -1;
  return type;
}

std::string UnixSocketName(int fd, bool peer) {
  sockaddr_un addr{};
  socklen_t len = sizeof addr;
  auto* sa = reinterpret_cast<sockaddr*>(&addr);
  if ((peer ? ::getpeername(fd, sa, &len) : ::getsockname(fd, sa, &len)) != 0) return "";
  if (addr.sun_family != AF_UNIX || len <= offsetof(sockaddr_un, sun_path)) return "";
  const size_t n = std::min<size_t>(len - offsetof(sockaddr_un, sun_path), sizeof addr.sun_path);
  if (addr.sun_path[0] == '\0') {
    // Built by append: g++ 12 at -O3 warns falsely (-Wrestrict) about "@" + std::string.
    std::string name;
    if (n > 1) name.append(1, '@').append(addr.sun_path + 1, n - 1);
    return name;
  }
  return std::string(addr.sun_path, strnlen(addr.sun_path, n));
}

Result<Fd> ConnectUnix(const std::string& path, bool nonblocking, int type) {
  sockaddr_un addr;
  auto len = MakeUnixAddress(path, &addr);
  if (!len.ok()) return len.take_error();
  int flags = type | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0);
  Fd fd(::socket(AF_UNIX, flags, 0));
  if (!fd) return ErrnoError("socket(AF_UNIX)");
  int rc;
  do {
    rc = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), *len);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) return ErrnoError("connect '{}'", path);
  return fd;
}

Status SendWithFds(int sock, const void* data, size_t len, std::span<const int> fds) {
  if (fds.size() > 8) return MakeError(EINVAL, "too many fds to send ({})", fds.size());
  const auto* p = static_cast<const uint8_t*>(data);
  size_t sent = 0;
  bool fds_sent = fds.empty();
  while (sent < len || !fds_sent) {
    iovec iov{const_cast<uint8_t*>(p + sent), len - sent};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(8 * sizeof(int))];
    if (!fds_sent) {
      std::memset(control, 0, sizeof control);
      msg.msg_control = control;
      msg.msg_controllen = CMSG_SPACE(fds.size() * sizeof(int));
      cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
      cmsg->cmsg_level = SOL_SOCKET;
      cmsg->cmsg_type = SCM_RIGHTS;
      cmsg->cmsg_len = CMSG_LEN(fds.size() * sizeof(int));
      std::memcpy(CMSG_DATA(cmsg), fds.data(), fds.size() * sizeof(int));
    }
    ssize_t n = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("sendmsg");
    }
    fds_sent = true;
    sent += static_cast<size_t>(n);
  }
  return OkStatus();
}

Result<size_t> RecvWithFds(int sock, void* data, size_t len, std::vector<Fd>* fds, size_t max_fds) {
  iovec iov{data, len};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  // Room for more than we accept, so a frontend sending too many fds is detected (and its
  // fds closed) instead of silently truncated into MSG_CTRUNC leaks.
  alignas(cmsghdr) char control[CMSG_SPACE(32 * sizeof(int))];
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return ErrnoError("recvmsg");
  bool too_many = false;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      Fd owned(fd);
      if (fds->size() < max_fds) {
        fds->push_back(std::move(owned));
      } else {
        too_many = true;  // `owned` closes it
      }
    }
  }
  if (too_many || (msg.msg_flags & MSG_CTRUNC) != 0) {
    return MakeError(EBADMSG, "too many file descriptors in one message");
  }
  return static_cast<size_t>(n);
}

}  // namespace vsockd
